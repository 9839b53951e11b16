"""Tests for edgeproxy.app.tap: the version and the admin paths ``--help`` and the
docs list, which must match what the admin listener serves."""

from __future__ import annotations

import ipaddress
import re
import types
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

import edgeproxy
from edgeproxy.app.options import Options, version_text
from edgeproxy.core.connlimits import AcceptLimits
from edgeproxy.core.protocol import HTTPLimits
from edgeproxy.ops.admin import admin_site
from edgeproxy.ops.metrics import Metrics

DOCS = Path(__file__).resolve().parents[2] / "docs"


def served_paths() -> set[str]:
    """The paths of the admin resource tree that answer, as a client spells them."""
    proxy = types.SimpleNamespace(reactor=MemoryReactorClock(), metrics=Metrics())
    site = admin_site(cast(Any, proxy))
    paths = set()
    for name, child in site.resource.children.items():
        path = "/" + name.decode("ascii")
        if child.children:  # a directory: only its leaves answer
            paths.update(f"{path}/{leaf.decode('ascii')}" for leaf in child.children)
        else:
            paths.add(path)
    return paths


def test_the_admin_tree_serves_the_page_and_the_probes() -> None:
    assert served_paths() == {"/", "/healthz", "/readyz", "/status", "/metrics", "/cache/purge"}


def test_admin_help_lists_every_served_path() -> None:
    help_text = " ".join(str(Options()).split())
    match = re.search(r"--admin=\s*Admin listener endpoint \(([^)]*)\)", help_text)
    assert match is not None, help_text
    listed = set(re.findall(r"/(?:[a-z]+(?:/[a-z]+)*)?", match.group(1)))
    assert listed == served_paths()


def test_operations_doc_lists_every_served_path() -> None:
    text = (DOCS / "operations.md").read_text()
    section = text.split("## Admin listener", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `(/(?:[a-z]+(?:/[a-z]+)*)?)` \|", section, re.M))
    assert listed == served_paths()


def test_version_text_names_edgeproxy_twisted_and_python() -> None:
    text = version_text()
    assert re.fullmatch(r"edgeproxy \S+ \(Twisted \S+, Python \d+\.\d+\.\d+\S*\)", text), text
    assert text.startswith(f"edgeproxy {metadata.version('edgeproxy')} ")


def test_package_version_matches_the_distribution() -> None:
    assert edgeproxy.__version__ == metadata.version("edgeproxy")


def test_version_option_prints_edgeproxys_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        Options().parseOptions(["--version"])
    assert raised.value.code == 0
    assert capsys.readouterr().out == version_text() + "\n"


def test_the_request_head_limits_are_options() -> None:
    options = Options()
    options.parseOptions(
        ["--max-request-line", "100", "--max-header-bytes", "2000", "--max-headers", "20"]
    )
    limits = options["settings"].http_limits
    assert (limits.max_request_line, limits.max_request_head_bytes, limits.max_request_headers) == (
        100,
        2000,
        20,
    )
    assert limits.spool_in_memory == 100_000  # the others keep their defaults
    defaults = Options()
    defaults.parseOptions([])
    assert defaults["settings"].http_limits == HTTPLimits()
    with pytest.raises(usage.UsageError):
        Options().parseOptions(["--max-headers", "0"])


def test_the_client_deadlines_are_options() -> None:
    options = Options()
    options.parseOptions(["--header-timeout", "5", "--body-timeout", "7.5", "--body-min-rate", "0"])
    settings = options["settings"]
    assert (settings.header_timeout, settings.body_timeout, settings.body_min_rate) == (5, 7.5, 0)
    defaults = Options()
    defaults.parseOptions([])
    settings = defaults["settings"]
    assert (settings.header_timeout, settings.body_timeout, settings.body_min_rate) == (
        30.0,
        30.0,
        1024,
    )
    for wrong in (["--header-timeout", "0"], ["--body-timeout", "-1"], ["--body-min-rate", "-1"]):
        with pytest.raises(usage.UsageError):
            Options().parseOptions(wrong)


def test_the_tunnel_idle_timeout_is_an_option() -> None:
    options = Options()
    options.parseOptions(["--tunnel-idle-timeout", "3600"])
    assert options["settings"].tunnel_idle_timeout == 3600.0
    defaults = Options()
    defaults.parseOptions([])
    assert defaults["settings"].tunnel_idle_timeout == 300.0
    with pytest.raises(usage.UsageError):
        Options().parseOptions(["--tunnel-idle-timeout", "0"])


def test_the_accept_limits_are_options() -> None:
    options = Options()
    options.parseOptions(
        [
            "--max-connections", "500",
            "--max-connections-per-client", "20",
            "--max-connection-rate-per-client", "2.5:10",
            "--deny", "192.0.2.0/24",
            "--deny", "2001:db8::1",
        ]
    )  # fmt: skip
    limits = options["settings"].accept_limits
    assert limits == AcceptLimits(
        max_connections=500,
        max_per_client=20,
        rate=2.5,
        burst=10,
        deny=(ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::1/128")),
    )
    defaults = Options()
    defaults.parseOptions([])
    assert defaults["settings"].accept_limits == AcceptLimits()
    assert AcceptLimits() == AcceptLimits(max_connections=10_000, max_per_client=1_000, rate=0.0)
    trusting = Options()
    trusting.parseOptions(["--trusted-source", "10.0.0.0/8"])
    assert trusting["settings"].accept_limits.exempt == (ipaddress.ip_network("10.0.0.0/8"),)
    off = Options()
    off.parseOptions(["--max-connection-rate-per-client", "0"])
    assert off["settings"].accept_limits == AcceptLimits()
    # The burst defaults to a second's worth.
    rate_only = Options()
    rate_only.parseOptions(["--max-connection-rate-per-client", "2.5"])
    assert (rate_only["settings"].accept_limits.rate, rate_only["settings"].accept_limits.burst) == (
        2.5,
        3,
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--max-connections", "-1"],
        ["--max-connections-per-client", "x"],
        ["--max-connection-rate-per-client", "-1"],
        ["--max-connection-rate-per-client", "nan"],
        ["--max-connection-rate-per-client", "5:0"],
        ["--max-connection-rate-per-client", "5:1.5"],
        ["--deny", "300.0.0.0/8"],
    ],
)
def test_bad_accept_limits_are_usage_errors(args: list[str]) -> None:
    with pytest.raises(usage.UsageError):
        Options().parseOptions(args)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("127.0.0.1:53", ("127.0.0.1", 53)), ("[::1]:5353", ("::1", 5353))],
)
def test_resolver_is_an_address_and_port(value: str, expected: tuple[str, int]) -> None:
    options = Options()
    options.parseOptions(["--resolver", value])
    assert options["settings"].resolver == expected


def test_resolver_defaults_to_the_system_configuration() -> None:
    options = Options()
    options.parseOptions([])
    assert options["settings"].resolver is None


@pytest.mark.parametrize("value", ["dns.example:53", "127.0.0.1", "127.0.0.1:0", ":53", "::1:53"])
def test_bad_resolvers_are_usage_errors(value: str) -> None:
    with pytest.raises(usage.UsageError):
        Options().parseOptions(["--resolver", value])
