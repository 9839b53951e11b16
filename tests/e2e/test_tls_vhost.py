"""
TLS per virtual host through the real ``twistd edgeproxy``, on both TLS
layers: ``min_tls_version`` refuses a lower client for its name only;
``client_ca`` refuses a client without a certificate or with one from another
CA, and passes the verified subject upstream in ``client_subject_header``
(whatever the client sent in that header is gone); a reload that changes
``client_ca`` holds new connections to the new CA, and one whose CA file is
broken is rejected while the old configuration keeps serving; a client of an
intermediate CA resumes its session, and a session from another name gets a
full handshake.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.e2e.conftest import check_tls_layer, write_config
from tests.e2e.harness import BackendServer, ProxyProcess, https_connection, request

CONFIG = """
from edgeproxy.config import Cluster, Route, VirtualHost

app = Cluster("app", endpoints=["{app}"])
virtual_hosts = [
    VirtualHost(["shop.test"], routes=[Route("/", app)]),
    VirtualHost(["modern.test"], routes=[Route("/", app)], min_tls_version="1.3"),
    VirtualHost(
        ["mtls.test"],
        routes=[Route("/", app)],
        client_ca="{client_ca}",
        client_subject_header="X-Client-Subject",
    ),
]
"""

TLS12 = ssl.TLSVersion.TLSv1_2
TLS13 = ssl.TLSVersion.TLSv1_3


def _client(
    server_ca: trustme.CA,
    *,
    maximum: ssl.TLSVersion | None = None,
    cert_from: trustme.CA | None = None,
    cn: str = "alice",
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    server_ca.configure_trust(ctx)
    if maximum is not None:
        ctx.maximum_version = maximum
    if cert_from is not None:
        cert_from.issue_cert(
            f"{cn}@example.test", common_name=cn, organization_name="Example"
        ).configure_cert(ctx)
    return ctx


def _get(
    port: int,
    name: str,
    ctx: ssl.SSLContext,
    host: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    conn = https_connection(port, name, ctx, timeout=5.0)
    try:
        response, body = request(conn, "GET", "/", host or name, headers=headers)
        return response.status, body
    finally:
        conn.close()


def _refused(port: int, name: str, ctx: ssl.SSLContext) -> str:
    """The client's error for a handshake the proxy refuses (with TLS 1.3 a
    client certificate is judged after the client's side is done, so the
    refusal can reach it with its first read)."""
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)) as info:
        _get(port, name, ctx)
    return str(info.value)


def _backend_headers(body: bytes) -> list[list[str]]:
    headers: list[list[str]] = json.loads(body)["headers"]
    return headers


@pytest.fixture(scope="module")
def clients() -> trustme.CA:
    return trustme.CA(organization_name="Clients")


def _write_certs(directory: Path, ca: trustme.CA) -> Path:
    directory.mkdir()
    leaf = ca.issue_cert("shop.test", "modern.test", "mtls.test")
    # The default certificate too: a client without SNI gets it.
    leaf.private_key_and_cert_chain_pem.write_to_path(str(directory / "default.pem"))
    return directory


@pytest.fixture(scope="module")
def proxy(
    tmp_path_factory: pytest.TempPathFactory,
    ca: trustme.CA,
    clients: trustme.CA,
    backend: BackendServer,
    tls_layer: tuple[str, ...],
) -> Iterator[ProxyProcess]:
    tmp = tmp_path_factory.mktemp("tls-vhost")
    (tmp / "sites").mkdir()
    (tmp / "pki").mkdir()
    clients.cert_pem.write_to_path(str(tmp / "pki" / "clients.pem"))
    # Relative to the configuration file, not to twistd's working directory.
    config = write_config(
        tmp / "sites" / "site.py",
        CONFIG.format(app=backend.address, client_ca="../pki/clients.pem"),
    )
    process = ProxyProcess(tmp, config, _write_certs(tmp / "certs", ca), tls_layer).start()
    try:
        check_tls_layer(process, tls_layer)
        yield process
    finally:
        process.stop()


def test_min_tls_version_refuses_a_lower_client_for_that_name_only(
    proxy: ProxyProcess, ca: trustme.CA
) -> None:
    port = proxy.ports["https"]
    error = _refused(port, "modern.test", _client(ca, maximum=TLS12))
    assert "PROTOCOL_VERSION" in error.upper().replace(" ", "_")
    # The same client, another name on the same listener.
    assert _get(port, "shop.test", _client(ca, maximum=TLS12))[0] == 200
    # A TLS 1.3 client to the 1.3-only name.
    assert _get(port, "modern.test", _client(ca, maximum=TLS13))[0] == 200


@pytest.mark.parametrize("version", [TLS12, TLS13], ids=["tls1.2", "tls1.3"])
def test_client_ca_refuses_no_certificate_and_another_cas(
    proxy: ProxyProcess, ca: trustme.CA, version: ssl.TLSVersion
) -> None:
    port = proxy.ports["https"]
    _refused(port, "mtls.test", _client(ca, maximum=version))
    error = _refused(port, "mtls.test", _client(ca, maximum=version, cert_from=trustme.CA()))
    assert "UNKNOWN_CA" in error.upper().replace(" ", "_") or "unknown ca" in error
    # Other names on the listener ask for no certificate.
    assert _get(port, "shop.test", _client(ca, maximum=version))[0] == 200


@pytest.mark.parametrize("version", [TLS12, TLS13], ids=["tls1.2", "tls1.3"])
def test_a_verified_client_is_served_and_its_subject_goes_upstream(
    proxy: ProxyProcess, ca: trustme.CA, clients: trustme.CA, version: ssl.TLSVersion
) -> None:
    port = proxy.ports["https"]
    ctx = _client(ca, maximum=version, cert_from=clients)
    status, body = _get(port, "mtls.test", ctx, headers={"X-Client-Subject": "CN=mallory,O=Forged"})
    assert status == 200
    subjects = [v for k, v in _backend_headers(body) if k.lower() == "x-client-subject"]
    assert len(subjects) == 1
    assert subjects[0].startswith("CN=alice,OU=") and subjects[0].endswith(",O=Example")


def test_a_client_sent_subject_header_passes_where_none_is_configured(
    proxy: ProxyProcess, ca: trustme.CA
) -> None:
    status, body = _get(
        proxy.ports["https"], "shop.test", _client(ca), headers={"X-Client-Subject": "CN=x"}
    )
    assert status == 200
    assert ["X-Client-Subject", "CN=x"] in _backend_headers(body)


def test_another_name_in_sni_does_not_reach_the_client_ca_host(
    proxy: ProxyProcess, ca: trustme.CA
) -> None:
    # One certificate covers both names; the handshake for shop.test asked for
    # no client certificate, so a request for mtls.test on it is misdirected.
    status, _ = _get(proxy.ports["https"], "shop.test", _client(ca), host="mtls.test")
    assert status == 421
    # Nor does one without SNI (given the default certificate).
    conn = https_connection(proxy.ports["https"], None, _no_sni(ca), timeout=5.0)
    try:
        assert request(conn, "GET", "/", "mtls.test")[0].status == 421
        assert request(conn, "GET", "/", "shop.test")[0].status == 200
    finally:
        conn.close()


def _exchange(
    port: int, name: str, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> tuple[int, bytes, ssl.SSLSession | None, bool]:
    """One request on a new connection that offers ``session``: the status,
    the body, the connection's session and whether it resumed the one offered.
    Closed with close_notify both ways (OpenSSL drops a session from its
    cache when a connection ends without)."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5.0)

    def connect() -> None:
        sock = socket.create_connection(("127.0.0.1", port), 5.0)
        conn.sock = ctx.wrap_socket(sock, server_hostname=name, session=session)

    conn.connect = connect  # type: ignore[method-assign]
    try:
        response, body = request(conn, "GET", "/", name)
        tls = conn.sock
        assert isinstance(tls, ssl.SSLSocket)
        result = response.status, body, tls.session, tls.session_reused
        tls.unwrap()
        return result
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("version", "tickets"),
    [(TLS12, True), (TLS12, False), (TLS13, True)],
    ids=["tls1.2-ticket", "tls1.2-session-id", "tls1.3"],
)
def test_a_client_of_an_intermediate_ca_resumes_its_session(
    proxy: ProxyProcess,
    ca: trustme.CA,
    clients: trustme.CA,
    version: ssl.TLSVersion,
    tickets: bool,
) -> None:
    # client_ca holds the root; the client sends its leaf and the intermediate.
    port = proxy.ports["https"]
    ctx = _client(ca, maximum=version, cert_from=clients.create_child_ca())
    if not tickets:
        ctx.options |= ssl.OP_NO_TICKET
    status, body, session, reused = _exchange(port, "mtls.test", ctx)
    assert status == 200 and not reused
    subjects = [v for k, v in _backend_headers(body) if k.lower() == "x-client-subject"]
    status, body, _, reused = _exchange(port, "mtls.test", ctx, session)
    assert status == 200 and reused
    assert [v for k, v in _backend_headers(body) if k.lower() == "x-client-subject"] == subjects


@pytest.mark.parametrize("version", [TLS12, TLS13], ids=["tls1.2", "tls1.3"])
def test_a_session_from_another_name_gets_a_full_handshake(
    proxy: ProxyProcess, ca: trustme.CA, clients: trustme.CA, version: ssl.TLSVersion
) -> None:
    port = proxy.ports["https"]
    ctx = _client(ca, maximum=version, cert_from=clients)
    status, _, session, _ = _exchange(port, "shop.test", ctx)
    assert status == 200
    status, _, _, reused = _exchange(port, "mtls.test", ctx, session)
    assert status == 200 and not reused
    # Without a certificate, that full handshake is refused.
    bare = _client(ca, maximum=version)
    session = _exchange(port, "shop.test", bare)[2]
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        _exchange(port, "mtls.test", bare, session)


def _no_sni(ca: trustme.CA) -> ssl.SSLContext:
    ctx = _client(ca)
    ctx.check_hostname = False
    return ctx


def test_reload_changes_the_client_ca_for_new_connections(
    tmp_path: Path, ca: trustme.CA, backend: BackendServer
) -> None:
    first, second = trustme.CA(), trustme.CA()
    first.cert_pem.write_to_path(str(tmp_path / "first.pem"))
    second.cert_pem.write_to_path(str(tmp_path / "second.pem"))
    config = write_config(
        tmp_path / "site.py", CONFIG.format(app=backend.address, client_ca="first.pem")
    )
    process = ProxyProcess(tmp_path, config, _write_certs(tmp_path / "certs", ca)).start()
    try:
        port = process.ports["https"]
        assert _get(port, "mtls.test", _client(ca, cert_from=first))[0] == 200
        _refused(port, "mtls.test", _client(ca, cert_from=second))
        # A connection made before the reload, verified against the first CA.
        kept = https_connection(port, "mtls.test", _client(ca, cert_from=first), timeout=5.0)
        assert request(kept, "GET", "/", "mtls.test")[0].status == 200

        write_config(config, CONFIG.format(app=backend.address, client_ca="second.pem"))
        mark = len(process.output)
        assert process.process is not None
        process.process.send_signal(signal.SIGHUP)
        process.wait_for_output(r"configuration reloaded", start=mark)
        assert _get(port, "mtls.test", _client(ca, cert_from=second))[0] == 200
        _refused(port, "mtls.test", _client(ca, cert_from=first))
        # Its next request is held to the new CA too: misdirected, so the
        # client reconnects (a CA taken out stops serving at once).
        assert request(kept, "GET", "/", "mtls.test")[0].status == 421
        kept.close()

        # A client CA that cannot be read: rejected, the running one stays.
        write_config(config, CONFIG.format(app=backend.address, client_ca="missing.pem"))
        mark = len(process.output)
        process.process.send_signal(signal.SIGHUP)
        line = process.wait_for_output(r"reload rejected", start=mark)
        assert "missing.pem" in line and "cannot read" in line
        assert _get(port, "mtls.test", _client(ca, cert_from=second))[0] == 200
    finally:
        process.stop()
