"""
``twistd edgeproxy --check`` reporting what loads but is wrong (edgeproxy.app.checks):
unused clusters, uncovered names, certificates near expiry, expectations; and
``--strict``.  Real subprocesses with timeouts.

Tests marked ``xfail(strict=True, reason="wired by the lead")`` need
``edgeproxy.app.checks.run_semantic_check`` called from ``checks.run_check`` (and the
``--strict`` option); unmark them once it is.
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import pytest
import trustme

from tests.certutil import days, write_cert
from tests.e2e.test_check import GOOD_A, GOOD_B, check

HEADER = "from edgeproxy.config import Cluster, Route, Split, VirtualHost\n"

# Loads fine; with the fixture's certificates, four warnings: an unused cluster,
# a name no certificate covers, a certificate that expires in 5 days, and no
# default certificate.  Its expectations all hold.
WARNINGS_ONLY = HEADER + (
    "api = Cluster('api', endpoints=['127.0.0.1:9001'])\n"
    "web = Cluster('web', endpoints=['127.0.0.1:9002'])\n"
    "spare = Cluster('spare', endpoints=['127.0.0.1:9003'])\n"
    "\n"
    "virtual_hosts = [\n"
    "    VirtualHost(\n"
    "        ['shop.example', 'www.shop.example', 'uncovered.example'],\n"
    "        routes=[Route('/api/', api), Route('/', web)],\n"
    "    ),\n"
    "]\n"
    "\n"
    "expectations = [\n"
    "    ('https://shop.example/api/x', 'api'),\n"
    "    ('https://www.shop.example/', 'web'),\n"
    "    ('http://shop.example/api/x', 'redirect'),\n"
    "]\n"
)

FAILED_EXPECTATION = HEADER + (
    "api = Cluster('api', endpoints=['127.0.0.1:9001'])\n"
    "web = Cluster('web', endpoints=['127.0.0.1:9002'])\n"
    "virtual_hosts = [\n"
    "    VirtualHost('shop.example', routes=[Route('/api/', api), Route('/', web)]),\n"
    "]\n"
    "expectations = [\n"
    "    ('https://shop.example/api/x', 'api'),\n"
    "    ('https://shop.example/api', 'api'),\n"
    "]\n"
)


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@pytest.fixture
def warnings_only(tmp_path: Path, ca: trustme.CA) -> tuple[Path, Path]:
    sites = tmp_path / "sites"
    sites.mkdir()
    (sites / "10-shop.py").write_text(WARNINGS_ONLY)
    certs = tmp_path / "certs"
    write_cert(
        str(certs),
        "shop",
        ca,
        "shop.example",
        "*.shop.example",
        not_before=now() - days(85),
        not_after=now() + days(5.5),
    )
    return sites, certs


def line(path: Path, text: str) -> int:
    found = [n for n, row in enumerate(path.read_text().splitlines(), 1) if text in row]
    assert len(found) == 1, (text, found)
    return found[0]


def expected_warnings(sites: Path, certs: Path) -> list[str]:
    """A regular expression per warning line that WARNINGS_ONLY must produce."""
    site = sites / "10-shop.py"
    cert = certs / "shop.pem"
    return [
        rf"^warning: {re.escape(str(site))}:{line(site, 'spare =')}: "
        r"cluster 'spare' .*is not used by any route$",
        rf"^warning: {re.escape(str(site))}:{line(site, 'uncovered.example')}: "
        r".*no certificate covers 'uncovered\.example'",
        rf"^warning: {re.escape(str(cert))}: certificate expires in 5 days",
        rf"^warning: {re.escape(str(certs))}: no default certificate \(default\.pem, or "
        r"default\.crt \+ default\.key\): clients that send no server name .* are refused "
        r"in the TLS handshake; see 'The default certificate' in docs/certificates\.md$",
    ]


def test_warnings_only_exits_0(warnings_only: tuple[Path, Path], tmp_path: Path) -> None:
    sites, certs = warnings_only
    result = check(sites, certs, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "configuration OK" in result.stdout
    assert "error:" not in result.stderr


def test_warnings_are_printed(warnings_only: tuple[Path, Path], tmp_path: Path) -> None:
    sites, certs = warnings_only
    result = check(sites, certs, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "configuration OK" in result.stdout
    warnings = [row for row in result.stderr.splitlines() if row.startswith("warning: ")]
    for pattern in expected_warnings(sites, certs):
        assert len([w for w in warnings if re.search(pattern, w)]) == 1, (pattern, result.stderr)
    assert len(warnings) == 4, result.stderr
    assert "error:" not in result.stderr
    assert result.stderr.splitlines()[-1] == "edgeproxy: 0 errors, 4 warnings"


def test_strict_fails_on_warnings(warnings_only: tuple[Path, Path], tmp_path: Path) -> None:
    sites, certs = warnings_only
    result = check(sites, certs, "--strict", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    warnings = [row for row in result.stderr.splitlines() if row.startswith("warning: ")]
    for pattern in expected_warnings(sites, certs):
        assert len([w for w in warnings if re.search(pattern, w)]) == 1, (pattern, result.stderr)


def test_strict_passes_a_clean_configuration(good: tuple[Path, Path], tmp_path: Path) -> None:
    sites, certs = good
    result = check(sites, certs, "--strict", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    assert "configuration OK" in result.stdout


def test_failed_expectation_exits_1(tmp_path: Path, ca: trustme.CA) -> None:
    sites = tmp_path / "sites"
    sites.mkdir()
    site = sites / "shop.py"
    site.write_text(FAILED_EXPECTATION)
    certs = tmp_path / "certs"
    write_cert(str(certs), "shop", ca, "shop.example")
    result = check(sites, certs, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [row for row in result.stderr.splitlines() if row.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    where = str(site) + ":" + str(line(site, "'https://shop.example/api',"))
    assert errors[0].startswith(
        f"error: {where}: expectation 'https://shop.example/api' -> 'api' failed: "
        "it goes to cluster 'web' (route '/' of virtual host 'shop.example')"
    ), errors[0]


def test_badly_shaped_expectations_exit_1(tmp_path: Path, ca: trustme.CA) -> None:
    # A load error (configload), so reported whether or not the checks are wired.
    sites = tmp_path / "sites"
    sites.mkdir()
    site = sites / "shop.py"
    site.write_text(GOOD_B + "expectations = [('https://blog.example/',)]\n")
    certs = tmp_path / "certs"
    write_cert(str(certs), "blog", ca, "blog.example")
    result = check(sites, certs, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(
        rf"^error: {re.escape(str(site))}:{line(site, 'expectations =')}: "
        r"expectations\[0\] must be a \(url, cluster name\) tuple",
        result.stderr,
        re.M,
    ), result.stderr


@pytest.fixture
def good(tmp_path: Path, ca: trustme.CA) -> tuple[Path, Path]:
    """test_check's good configuration, plus expectations that hold."""
    sites = tmp_path / "sites"
    sites.mkdir()
    (sites / "10-shop.py").write_text(
        GOOD_A + "expectations = [\n"
        "    ('https://shop.example/api/users', 'api'),\n"
        "    ('https://www.shop.example/', 'web-v2'),\n"
        "    ('https://admin.example/x', 'api'),\n"
        "    ('http://admin.example/x', 'redirect'),\n"
        "]\n"
    )
    (sites / "20-blog.py").write_text(GOOD_B)
    certs = tmp_path / "certs"
    write_cert(str(certs), "default", ca, "shop.example", "*.shop.example")
    write_cert(str(certs), "blog", ca, "blog.example", layout="crtkey")
    write_cert(str(certs), "admin", ca, "admin.example", layout="certbot")
    return sites, certs


def test_load_errors_cross_checks_and_warnings_in_one_pass(tmp_path: Path, ca: trustme.CA) -> None:
    sites = tmp_path / "sites"
    sites.mkdir()
    broken = sites / "10-broken.py"
    broken.write_text(HEADER + "api = Cluster('api', endpoints=[port])\n")
    shop = sites / "20-shop.py"
    shop.write_text(
        HEADER + "web = Cluster('web', endpoints=['127.0.0.1:9002'])\n"
        "spare = Cluster('spare', endpoints=['127.0.0.1:9003'])\n"
        "virtual_hosts = [VirtualHost(['shop.example'], routes=[Route('/', web)])]\n"
    )
    again = sites / "30-again.py"
    again.write_text(
        HEADER + "other = Cluster('other', endpoints=['127.0.0.1:9004'])\n"
        "virtual_hosts = [VirtualHost(['shop.example'], routes=[Route('/', other)])]\n"
    )
    certs = tmp_path / "certs"
    write_cert(str(certs), "default", ca, "shop.example")
    result = check(sites, certs, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: {broken}:2: NameError: name 'port' is not defined",
        f"error: {again}:3: hostname 'shop.example' is claimed by two virtual hosts: here and "
        f"in {shop}:4",
        f"warning: {shop}:3: cluster 'spare' (module-level 'spare') is not used by any route",
        "edgeproxy: 2 errors, 1 warning",
    ], result.stderr
