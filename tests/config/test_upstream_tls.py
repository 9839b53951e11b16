"""``Cluster(upstream_tls=UpstreamTLS(...))``: the arguments, the loader
(relative paths from the configuration file's directory, the files read when
it loads, a bad one a problem naming the file and its line), and
``--check``'s warning for ``verify=False``."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import trustme

from edgeproxy.app.checks import check_upstream_tls
from edgeproxy.config import Cluster, UpstreamTLS
from edgeproxy.config.load import inspect_config, load_config
from edgeproxy.config.upstreamtls import UpstreamTLSError, check_client_pem, load_upstream_tls
from edgeproxy.core.errors import ConfigError


def test_defaults_verify_against_the_system_store() -> None:
    tls = UpstreamTLS()
    assert (tls.ca_file, tls.server_name, tls.client_cert, tls.verify) == (None, None, None, True)
    assert Cluster("app", endpoints=["127.0.0.1:1"]).upstream_tls is None


@pytest.mark.parametrize(
    ("kwargs", "kind"),
    [
        ({"ca_file": 3}, TypeError),
        ({"ca_file": ""}, ValueError),
        ({"client_cert": b"x.pem"}, TypeError),
        ({"server_name": "not a name"}, ValueError),
        ({"server_name": "[::1]"}, ValueError),
        ({"server_name": 1}, TypeError),
        ({"verify": "no"}, TypeError),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object], kind: type[Exception]) -> None:
    with pytest.raises(kind):
        UpstreamTLS(**kwargs)  # type: ignore[arg-type]


def test_upstream_tls_must_be_an_upstream_tls() -> None:
    with pytest.raises(TypeError, match="UpstreamTLS"):
        Cluster("app", endpoints=["127.0.0.1:1"], upstream_tls="internal-ca.pem")  # type: ignore[arg-type]


def test_server_name_may_be_an_ip_literal() -> None:
    assert UpstreamTLS(server_name="10.0.0.5").server_name == "10.0.0.5"
    assert UpstreamTLS(server_name="::1").server_name == "::1"


SITE = """
from edgeproxy.config import Cluster, Route, UpstreamTLS, VirtualHost

app = Cluster(
    "app",
    endpoints=["127.0.0.1:9443"],
    upstream_tls=UpstreamTLS(
        ca_file={ca!r},
        client_cert={client!r},
    ),
)
virtual_hosts = [VirtualHost(["a.test"], routes=[Route("/", app)])]
"""


def _site(path: Path, ca: str, client: str | None = None) -> Path:
    path.write_text(textwrap.dedent(SITE.format(ca=ca, client=client)))
    return path


def test_relative_files_are_read_from_the_config_directory(tmp_path: Path) -> None:
    ca = trustme.CA()
    (tmp_path / "pki").mkdir()
    ca.cert_pem.write_to_path(str(tmp_path / "pki" / "ca.pem"))
    ca.issue_cert("edgeproxy").private_key_and_cert_chain_pem.write_to_path(
        str(tmp_path / "pki" / "client.pem")
    )
    config = load_config(str(_site(tmp_path / "site.py", "pki/ca.pem", "pki/client.pem")))
    files = config.upstream_tls["app"]
    assert files.settings.ca_file == str(tmp_path / "pki" / "ca.pem")
    assert files.settings.client_cert == str(tmp_path / "pki" / "client.pem")
    assert files.ca_pem == ca.cert_pem.bytes()
    assert files.client_pem is not None and b"PRIVATE KEY" in files.client_pem
    # The configuration keeps what the user wrote.
    assert config.clusters["app"].upstream_tls == UpstreamTLS(
        ca_file="pki/ca.pem", client_cert="pki/client.pem"
    )


def test_a_file_that_cannot_be_read_is_a_problem_naming_it(tmp_path: Path) -> None:
    site = _site(tmp_path / "site.py", "missing-ca.pem")
    with pytest.raises(ConfigError) as info:
        load_config(str(site))
    [problem] = info.value.problems
    assert problem.path == str(site)
    assert problem.line == 8  # the line of "missing-ca.pem"
    assert "cluster 'app'" in problem.message
    assert "ca_file" in problem.message and "missing-ca.pem" in problem.message
    assert "cannot read" in problem.message


def test_a_ca_file_without_certificates_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    _, problems = inspect_config(str(_site(tmp_path / "site.py", "ca.pem")))
    assert [p.message for p in problems] == [
        f"cluster 'app': upstream_tls ca_file {tmp_path / 'ca.pem'}: no PEM certificate found"
    ]


def test_client_cert_needs_its_key_first_and_matching(tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf, other = ca.issue_cert("a"), ca.issue_cert("b")
    chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
    with pytest.raises(UpstreamTLSError, match="no private keys found"):
        check_client_pem("c.pem", chain)
    with pytest.raises(UpstreamTLSError, match="not the private key's"):
        check_client_pem("c.pem", other.private_key_pem.bytes() + chain)
    good = check_client_pem("c.pem", chain + leaf.private_key_pem.bytes())
    assert good.startswith(b"-----BEGIN") and b"PRIVATE KEY" in good.split(b"\n")[0]
    assert good.count(b"BEGIN CERTIFICATE") == len(leaf.cert_chain_pems)


def test_files_are_equal_when_their_contents_are(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    settings = UpstreamTLS(ca_file=str(tmp_path / "ca.pem"))
    first = load_upstream_tls(settings)
    assert load_upstream_tls(settings) == first
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    assert load_upstream_tls(settings) != first


def test_check_warns_about_verify_false(tmp_path: Path) -> None:
    site = tmp_path / "site.py"
    site.write_text(
        "from edgeproxy.config import Cluster, Route, UpstreamTLS, VirtualHost\n"
        "app = Cluster('app', endpoints=['127.0.0.1:9'], upstream_tls=UpstreamTLS(verify=False))\n"
        "safe = Cluster('safe', endpoints=['127.0.0.1:9'], upstream_tls=UpstreamTLS())\n"
        "virtual_hosts = [VirtualHost(['a.test'], routes=[Route('/', app), Route('/s', safe)])]\n"
    )
    report = check_upstream_tls(load_config(str(site)))
    assert report.errors == ()
    [warning] = report.warnings
    assert warning.path == str(site)
    assert "cluster 'app'" in warning.message and "verify=False" in warning.message
