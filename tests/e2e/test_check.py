"""
``twistd edgeproxy --check``, startup with a broken configuration, ``--help``
and plugin discovery, all through real subprocesses with timeouts.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.certutil import write_cert, write_key_mismatch, write_raw
from tests.e2e.harness import TWISTD, free_port

TIMEOUT = 20.0

GOOD_A = """\
from edgeproxy.config import Cluster, Endpoint, Route, Split, VirtualHost

api = Cluster("api", endpoints=["127.0.0.1:9001", "127.0.0.1:9002"])
web_v1 = Cluster("web-v1", endpoints=["127.0.0.1:9003"])
web_v2 = Cluster("web-v2", endpoints=[Endpoint("127.0.0.1", 9004)])

virtual_hosts = [
    VirtualHost(
        ["shop.example", "*.shop.example"],
        routes=[Route("/api/", api), Route("/", Split({web_v1: 90, web_v2: 10}))],
    ),
    VirtualHost(["admin.example"], routes=[Route("/", api)]),
]
"""

GOOD_B = """\
from edgeproxy.config import Cluster, Route, VirtualHost

blog = Cluster("blog", endpoints=["127.0.0.1:9005"])
virtual_hosts = [VirtualHost(["blog.example"], routes=[Route("/", blog)])]
"""

# Each broken file, what must be reported about it, and on which line (None: no line).
BROKEN = {
    "a_raises.py": (
        "from edgeproxy.config import Cluster\nsettings = {}\ntimeout = settings['timeout']\n",
        3,
        "KeyError: 'timeout'",
    ),
    "b_no_vhosts.py": (
        "from edgeproxy.config import Cluster\n"
        "api = Cluster('b-api', endpoints=['127.0.0.1:9001'])\n",
        None,
        "defines no virtual_hosts",
    ),
    "c_claim.py": (
        "from edgeproxy.config import Cluster, Route, VirtualHost\n"
        "c = Cluster('c', endpoints=['127.0.0.1:9001'])\n"
        "virtual_hosts = [VirtualHost(['dup.example'], routes=[Route('/', c)])]\n",
        None,  # the first claim is fine; the problem is reported on the second
        None,
    ),
    "d_claim_again.py": (
        "from edgeproxy.config import Cluster, Route, VirtualHost\n"
        "d = Cluster('d', endpoints=['127.0.0.1:9002'])\n"
        "\n"
        "virtual_hosts = [VirtualHost(['other.example', 'DUP.example'], routes=[Route('/', d)])]\n",
        4,
        "hostname 'dup.example' is claimed by two virtual hosts",
    ),
    "e_empty_cluster.py": (
        "from edgeproxy.config import Cluster, Route, VirtualHost\n"
        "\n"
        "empty = Cluster('empty', endpoints=[])\n"
        "virtual_hosts = [VirtualHost(['empty.example'], routes=[Route('/', empty)])]\n",
        3,
        "ValueError: a cluster needs at least one endpoint",
    ),
    "f_negative_weight.py": (
        "from edgeproxy.config import Cluster, Route, Split, VirtualHost\n"
        "f1 = Cluster('f1', endpoints=['127.0.0.1:9001'])\n"
        "f2 = Cluster('f2', endpoints=['127.0.0.1:9002'])\n"
        "split = Split({f1: 100, f2: -1})\n",
        4,
        "Split weight for 'f2' must be a finite number >= 0",
    ),
    "g_zero_weights.py": (
        "from edgeproxy.config import Cluster, Route, Split, VirtualHost\n"
        "g1 = Cluster('g1', endpoints=['127.0.0.1:9001'])\n"
        "g2 = Cluster('g2', endpoints=['127.0.0.1:9002'])\n"
        "\n"
        "split = Split({g1: 0, g2: 0})\n",
        5,
        "all weights are zero",
    ),
    "h_dup_prefix.py": (
        "from edgeproxy.config import Cluster, Route, VirtualHost\n"
        "h = Cluster('h', endpoints=['127.0.0.1:9001'])\n"
        "virtual_hosts = [\n"
        "    VirtualHost(\n"
        "        ['prefix.example'],\n"
        "        routes=[Route('/api/', h), Route('/', h), Route('/api/', h)],\n"
        "    ),\n"
        "]\n",
        5,
        "has two routes for prefix '/api/'",
    ),
}


def twistd(*args: str, cwd: Path, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TWISTD, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )


def check(config: Path, certs: Path, *extra: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return twistd(
        "edgeproxy", "--check", "--config", str(config), "--certs", str(certs), *extra, cwd=cwd
    )


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> tuple[Path, Path]:
    """A good config directory (2 files) and a certificate directory (3 certificates)."""
    tmp = tmp_path_factory.mktemp("check-good")
    sites = tmp / "sites"
    sites.mkdir()
    (sites / "10-shop.py").write_text(GOOD_A)
    (sites / "20-blog.py").write_text(GOOD_B)
    (sites / "_helpers.py").write_text("raise RuntimeError('never loaded: starts with _')\n")
    (sites / "README.md").write_text("not a config file\n")
    certs = tmp / "certs"
    write_cert(str(certs), "default", ca, "shop.example", "*.shop.example")
    write_cert(str(certs), "blog", ca, "blog.example", layout="crtkey")
    write_cert(str(certs), "admin", ca, "admin.example", layout="certbot")
    return sites, certs


@pytest.fixture(scope="module")
def broken_sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sites = tmp_path_factory.mktemp("check-broken") / "sites"
    sites.mkdir()
    for name, (text, _, _) in BROKEN.items():
        (sites / name).write_text(text)
    return sites


def test_good_config_and_certs(good: tuple[Path, Path], tmp_path: Path) -> None:
    sites, certs = good
    result = check(sites, certs, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    summary = lines[0]
    for count in (
        "2 files",
        "3 virtual hosts",
        "4 routes",
        "4 clusters",
        "5 endpoints",
        "3 certificates",
    ):
        assert count in summary, summary


def expected_problems(sites: Path) -> list[tuple[str, str]]:
    """(where, message fragment) for every problem in BROKEN."""
    result = []
    for name, (_, line, fragment) in BROKEN.items():
        if fragment is None:
            continue
        where = str(sites / name) + (f":{line}" if line is not None else "")
        result.append((where, fragment))
    return result


def test_every_config_problem_reported_in_one_run(
    broken_sites: Path, good: tuple[Path, Path], tmp_path: Path
) -> None:
    _, certs = good
    result = check(broken_sites, certs, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    expected = expected_problems(broken_sites)
    for where, fragment in expected:
        matching = [line for line in errors if f"error: {where}: " in line and fragment in line]
        assert len(matching) == 1, f"{where}: {fragment!r} not reported once in:\n{result.stderr}"
    # The duplicate hostname names the other file (and the line) too.
    claim = next(line for line in errors if "d_claim_again.py" in line)
    assert f"{broken_sites / 'c_claim.py'}:3" in claim, claim
    assert len(errors) == len(expected), result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert result.stderr.splitlines()[-1] == (
        f"edgeproxy: {len(expected)} errors, {len(warnings)} warnings"
    ), result.stderr
    # Nothing is reported against the files that are fine on their own.
    assert not [line for line in errors if line.startswith(f"error: {broken_sites / 'c_claim.py'}")]


def test_broken_certificates(good: tuple[Path, Path], tmp_path: Path, ca: trustme.CA) -> None:
    sites, _ = good
    certs = tmp_path / "certs"
    write_cert(str(certs), "default", ca, "shop.example")
    garbage = write_raw(
        str(certs / "garbage.pem"),
        b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    )
    mismatch = write_key_mismatch(str(certs), "mismatch", ca, "mismatch.example")
    orphan = write_raw(str(certs / "orphan.key"), b"")
    result = check(sites, certs, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == ""
    for path, fragment in (
        (garbage, "cannot parse a certificate"),
        (mismatch, "does not match"),
        (orphan, "without a certificate"),
    ):
        assert re.search(rf"^error: {re.escape(path)}: .*{fragment}", result.stderr, re.M), (
            path,
            result.stderr,
        )
    assert re.search(r"^edgeproxy: 3 errors, \d+ warnings?$", result.stderr, re.M), result.stderr


def test_missing_certificate_directory(good: tuple[Path, Path], tmp_path: Path) -> None:
    sites, _ = good
    missing = tmp_path / "no-such-certs"
    result = check(sites, missing, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"error: {missing}: " in result.stderr


@pytest.fixture
def held_ports() -> Iterator[list[int]]:
    """Three loopback ports this test listens on itself."""
    socks = []
    for _ in range(3):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        socks.append(s)
    try:
        yield [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def test_check_starts_nothing(
    good: tuple[Path, Path], tmp_path: Path, held_ports: list[int]
) -> None:
    sites, certs = good
    https, http, admin = held_ports
    start = time.monotonic()
    # Not -n and no --pidfile: if twistd got as far as starting, it would
    # daemonize, write twistd.pid and twistd.log here, and fail to listen.
    result = check(
        sites,
        certs,
        "--https",
        f"tcp:{https}:interface=127.0.0.1",
        "--http",
        f"tcp:{http}:interface=127.0.0.1",
        "--admin",
        f"tcp:{admin}:interface=127.0.0.1",
        cwd=tmp_path,
    )
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stdout + result.stderr
    assert "configuration OK" in result.stdout
    assert "in use" not in result.stdout + result.stderr
    assert elapsed < 10, f"--check took {elapsed:.1f}s"
    assert sorted(os.listdir(tmp_path)) == [], "--check left files behind"


def test_broken_config_stops_startup_before_listening(
    broken_sites: Path, good: tuple[Path, Path], tmp_path: Path
) -> None:
    _, certs = good
    https, http, admin = free_port(), free_port(), free_port()
    result = twistd(
        "--pidfile=",
        "-n",
        "edgeproxy",
        "--config",
        str(broken_sites),
        "--certs",
        str(certs),
        "--https",
        f"tcp:{https}:interface=127.0.0.1",
        "--http",
        f"tcp:{http}:interface=127.0.0.1",
        "--admin",
        f"tcp:{admin}:interface=127.0.0.1",
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "configuration errors" in output
    for where, fragment in expected_problems(broken_sites):
        assert f"{where}: " in output and fragment in output, (where, fragment, output)
    assert "listener on" not in output, output
    for port in (https, http, admin):
        with (
            pytest.raises(ConnectionRefusedError),
            socket.create_connection(("127.0.0.1", port), 2.0),
        ):
            pass


def option_blocks(help_text: str) -> dict[str, str]:
    """``--name`` -> its help text with whitespace collapsed."""
    blocks: dict[str, str] = {}
    current = None
    for line in help_text.splitlines():
        match = re.match(r"\s+(?:-\w, )?--([\w-]+)", line)
        if match:
            current = match.group(1)
            blocks[current] = ""
        elif not line.strip() or not line.startswith(" "):
            current = None
        if current is not None:
            blocks[current] += " " + line.strip()
    return {name: " ".join(text.split()) for name, text in blocks.items()}


def test_help_lists_every_option_with_its_default(tmp_path: Path) -> None:
    result = twistd("edgeproxy", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    blocks = option_blocks(result.stdout)
    defaults = {
        "config": "[default: sites]",
        "certs": "[default: certs]",
        "https": "[default: tcp:8443]",
        "http": "[default: tcp:8080]",
        "admin": "[default: tcp:9901:interface=127.0.0.1]",
        "max-body-size": "[default: 67108864]",
    }
    for option, default in defaults.items():
        assert option in blocks, f"--{option} missing from:\n{result.stdout}"
        assert default in blocks[option], f"--{option}: {blocks[option]}"
    assert "check" in blocks and "exit" in blocks["check"], blocks.get("check")


def test_help_text_has_no_stray_whitespace(tmp_path: Path) -> None:
    result = twistd("edgeproxy", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    for line in result.stdout.splitlines():
        text = line.strip()
        if text.startswith("-"):
            # "--name=   description": the gap after the option is the column layout.
            text = re.sub(r"^\S+\s+", "", text)
        assert not re.search(r"\S {3,}\S", text), line


def test_plugin_is_discoverable(tmp_path: Path) -> None:
    # In a fresh interpreter outside the source tree: the installed package's plugin.
    code = (
        "from twisted.application.service import IServiceMaker\n"
        "from twisted.plugin import getPlugins\n"
        "found = [p for p in getPlugins(IServiceMaker) if p.tapname == 'edgeproxy']\n"
        "assert len(found) == 1, found\n"
        "import edgeproxy.app.tap\n"
        "assert found[0].options is edgeproxy.app.tap.Options\n"
        "print('ok', found[0].description)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok ")


def test_version_is_edgeproxys(tmp_path: Path) -> None:
    result = twistd("edgeproxy", "--version", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    from edgeproxy import __version__

    assert result.stdout.startswith(f"edgeproxy {__version__} (Twisted "), result.stdout
    assert "Twisted version:" not in result.stdout
