"""``VirtualHost(min_tls_version=, client_ca=, client_subject_header=)``: the
arguments, the loader (relative paths, the CA file read once, a bad one a
problem naming it), the routing table's per-name policy, and ``--check``."""

from __future__ import annotations

import io
import os
import textwrap
from pathlib import Path

import pytest
import trustme

from edgeproxy.app.checks import run_check
from edgeproxy.config import Cluster, Route, VirtualHost
from edgeproxy.config.load import load_config
from edgeproxy.config.routing import RoutingTable
from edgeproxy.config.settings import Settings
from edgeproxy.config.tlspolicy import (
    ClientCA,
    ClientCAError,
    TLSPolicy,
    load_client_ca,
    parse_client_ca,
)
from edgeproxy.core.errors import ConfigError

APP = Cluster("app", endpoints=["127.0.0.1:9000"])
ROUTES = [Route("/", APP)]


def test_defaults_ask_for_nothing() -> None:
    vhost = VirtualHost(["a.example"], routes=ROUTES)
    assert (vhost.min_tls_version, vhost.client_ca, vhost.client_subject_header) == (
        None,
        None,
        None,
    )
    assert RoutingTable.from_virtual_hosts([vhost]).tls_policy_for("a.example") is None
    assert not RoutingTable.from_virtual_hosts([vhost]).has_client_ca


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_min_tls_version_values(version: str) -> None:
    assert VirtualHost(["a.example"], routes=ROUTES, min_tls_version=version).min_tls_version == (
        version
    )


@pytest.mark.parametrize("version", ["1.1", "1.0", "TLSv1.3", 1.3, ""])
def test_min_tls_version_refuses_others(version: object) -> None:
    with pytest.raises(ValueError, match="min_tls_version"):
        VirtualHost(["a.example"], routes=ROUTES, min_tls_version=version)  # type: ignore[arg-type]


def test_client_ca_must_be_a_path() -> None:
    with pytest.raises(TypeError, match="client_ca"):
        VirtualHost(["a.example"], routes=ROUTES, client_ca=b"ca.pem")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="client_ca"):
        VirtualHost(["a.example"], routes=ROUTES, client_ca="")


def test_subject_header_needs_client_ca() -> None:
    with pytest.raises(ValueError, match="needs client_ca"):
        VirtualHost(["a.example"], routes=ROUTES, client_subject_header="X-Client-Subject")


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("X Client", ValueError),
        ("", ValueError),
        ("X-Forwarded-For", ValueError),
        ("host", ValueError),
        (b"X-Client", TypeError),
    ],
)
def test_subject_header_must_be_a_header_we_do_not_write(name: object, error: type) -> None:
    with pytest.raises(error, match="client_subject_header"):
        VirtualHost(
            ["a.example"],
            routes=ROUTES,
            client_ca="/ca.pem",
            client_subject_header=name,  # type: ignore[arg-type]
        )


def _site(tmp_path: Path, body: str, name: str = "site.py") -> str:
    path = tmp_path / name
    path.write_text(
        "from edgeproxy.config import Cluster, Route, VirtualHost\n"
        'app = Cluster("app", endpoints=["127.0.0.1:9000"])\n' + textwrap.dedent(body)
    )
    return str(path)


def test_relative_client_ca_is_relative_to_the_config_file(tmp_path: Path) -> None:
    ca = trustme.CA()
    (tmp_path / "sites").mkdir()
    (tmp_path / "pki").mkdir()
    ca.cert_pem.write_to_path(str(tmp_path / "pki" / "clients.pem"))
    _site(
        tmp_path / "sites",
        """
        virtual_hosts = [
            VirtualHost(["mtls.example"], routes=[Route("/", app)],
                        client_ca="../pki/clients.pem", min_tls_version="1.3",
                        client_subject_header="X-Client-Subject"),
            VirtualHost(["plain.example"], routes=[Route("/", app)]),
        ]
        """,
    )
    # Loaded from elsewhere: the working directory does not matter.
    config = load_config(str(tmp_path / "sites"))
    expected = os.path.join(str(tmp_path), "pki", "clients.pem")
    assert config.virtual_hosts[0].client_ca == expected
    policy = config.routing.tls_policy_for("mtls.example")
    assert policy == TLSPolicy("1.3", load_client_ca(expected))
    assert policy is not None and policy.client_ca is not None
    assert len(policy.client_ca.certificates) == 1
    table = config.routing.find_virtual_host("mtls.example")
    assert table is not None and table.client_subject_header == b"X-Client-Subject"
    assert config.routing.tls_policy_for("plain.example") is None


def test_a_missing_client_ca_is_a_problem_naming_file_and_line(tmp_path: Path) -> None:
    site = _site(
        tmp_path,
        """
        virtual_hosts = [
            VirtualHost(["mtls.example"], routes=[Route("/", app)],
                        client_ca="missing.pem"),
        ]
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config(site)
    (problem,) = info.value.problems
    assert problem.path == site and problem.line == 6
    assert str(tmp_path / "missing.pem") in problem.message
    assert "cannot read" in problem.message and "'mtls.example'" in problem.message


def test_a_file_with_no_certificate_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    site = _site(
        tmp_path,
        """
        virtual_hosts = [VirtualHost(["m.example"], routes=[Route("/", app)], client_ca="ca.pem")]
        """,
    )
    with pytest.raises(ConfigError, match="no PEM certificate found"):
        load_config(site)


def test_parse_client_ca() -> None:
    one, two = trustme.CA(), trustme.CA()
    both = parse_client_ca("/x.pem", one.cert_pem.bytes() + b"\n" + two.cert_pem.bytes())
    assert len(both.certificates) == 2
    with pytest.raises(ClientCAError, match=r"/x\.pem: cannot parse"):
        parse_client_ca("/x.pem", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----")


def test_a_client_ca_the_table_was_not_given_verifies_nobody() -> None:
    vhost = VirtualHost(["m.example"], routes=ROUTES, client_ca="/nowhere.pem")
    table = RoutingTable.from_virtual_hosts([vhost])
    assert table.tls_policy_for("m.example") == TLSPolicy(None, ClientCA("/nowhere.pem", ()))
    assert table.has_client_ca


def test_wildcard_names_carry_the_policy() -> None:
    vhost = VirtualHost(["*.m.example"], routes=ROUTES, min_tls_version="1.3")
    table = RoutingTable.from_virtual_hosts([vhost])
    assert table.tls_policy_for("a.m.example") == TLSPolicy("1.3")
    assert table.tls_policy_for("m.example") is None


def test_check_reports_a_missing_client_ca(tmp_path: Path) -> None:
    site = _site(
        tmp_path,
        """
        virtual_hosts = [
            VirtualHost(["mtls.example"], routes=[Route("/", app)], client_ca="gone.pem"),
        ]
        """,
    )
    (tmp_path / "certs").mkdir()
    out, err = io.StringIO(), io.StringIO()
    code = run_check(Settings(config=site, certs=str(tmp_path / "certs")), out, err)
    assert code == 1
    assert f"client_ca {tmp_path / 'gone.pem'}: cannot read" in err.getvalue()


def test_client_ca_and_plain_http_do_not_mix() -> None:
    with pytest.raises(ValueError, match="plain_http=True, but client_ca"):
        VirtualHost(
            ["m.example"], routes=[Route("/open/", APP, plain_http=True)], client_ca="/ca.pem"
        )
    # min_tls_version says nothing about plain http, which it leaves alone.
    VirtualHost(["m.example"], routes=[Route("/", APP, plain_http=True)], min_tls_version="1.3")
