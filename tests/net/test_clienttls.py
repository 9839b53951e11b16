"""
``edgeproxy.net.clienttls.ClientTLS``: the connection creators of a cluster's
``upstream_tls``, driven through real handshakes over memory BIOs against a
pyOpenSSL server: the name verified (DNS or IP, or ``server_name``), SNI
only for a DNS name, a client certificate presented, the session resumed on
the next connection, and ``verify=False`` accepting anything.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import trustme
from OpenSSL import SSL
from OpenSSL._util import lib
from service_identity import VerificationError
from twisted.python.failure import Failure

from edgeproxy.net.clienttls import ClientTLS


class _Protocol:
    """What Twisted's verify callback reports a bad name to."""

    def __init__(self) -> None:
        self.failed: Failure | None = None
        # (Twisted looks for ALPN protocols on the wrapped factory.)
        self.factory = SimpleNamespace(wrappedFactory=object())

    def failVerification(self, reason: Failure) -> None:
        self.failed = reason


class _Server:
    def __init__(self, ca: trustme.CA, *names: str, client_ca: trustme.CA | None = None) -> None:
        self.context = SSL.Context(SSL.TLS_SERVER_METHOD)
        leaf = ca.issue_cert(*names)
        for blob in [leaf.private_key_and_cert_chain_pem]:
            with blob.tempfile() as path:
                self.context.use_certificate_chain_file(path)
                self.context.use_privatekey_file(path)
        self.context.set_session_id(b"edgeproxy-test")
        self.sni: list[bytes | None] = []
        self.context.set_tlsext_servername_callback(
            lambda conn: self.sni.append(conn.get_servername())
        )
        if client_ca is not None:
            with client_ca.cert_pem.tempfile() as path:
                self.context.load_verify_locations(path)
            self.context.set_verify(
                SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *args: bool(args[-1])
            )

    def handshake(self, client: SSL.Connection) -> SSL.Connection:
        server = SSL.Connection(self.context, None)
        server.set_accept_state()
        client.set_connect_state()
        for _ in range(20):
            for one in (client, server):
                try:
                    one.do_handshake()
                except SSL.WantReadError:
                    pass
            _pump(client, server)
            try:
                # TLS 1.3: the tickets come after the handshake.
                client.recv(1)
            except SSL.WantReadError:
                pass
            if server.get_peer_finished() is not None and client.get_peer_finished():
                _pump(client, server)
                try:
                    client.recv(1)
                except SSL.WantReadError:
                    pass
                return server
        raise AssertionError("no handshake")


def _pump(a: SSL.Connection, b: SSL.Connection) -> None:
    for src, dst in ((a, b), (b, a)):
        try:
            data = src.bio_read(65536)
        except SSL.WantReadError:
            continue
        dst.bio_write(data)


def _reused(connection: SSL.Connection) -> int:
    # (pyOpenSSL has no session_reused; the server's side says.)
    return int(lib.SSL_session_reused(connection._ssl))  # type: ignore[attr-defined]


def _connect(tls: ClientTLS, host: str, protocol: Any = None) -> SSL.Connection:
    return tls.creator_for(host, 443).clientConnectionForTLS(protocol or _Protocol())


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def test_a_dns_name_is_verified_and_sent(ca: trustme.CA) -> None:
    server = _Server(ca, "backend.test")
    protocol = _Protocol()
    server.handshake(_connect(ClientTLS(ca_pem=ca.cert_pem.bytes()), "backend.test", protocol))
    assert server.sni == [b"backend.test"]
    assert protocol.failed is None


def test_an_ip_literal_is_verified_as_an_ip_and_not_sent(ca: trustme.CA) -> None:
    server = _Server(ca, "127.0.0.1")
    protocol = _Protocol()
    server.handshake(_connect(ClientTLS(ca_pem=ca.cert_pem.bytes()), "127.0.0.1", protocol))
    assert server.sni == [None]
    assert protocol.failed is None


def test_server_name_replaces_the_host(ca: trustme.CA) -> None:
    server = _Server(ca, "backend.test")
    tls = ClientTLS(ca_pem=ca.cert_pem.bytes(), server_name="backend.test")
    protocol = _Protocol()
    server.handshake(_connect(tls, "127.0.0.1", protocol))
    assert server.sni == [b"backend.test"]
    assert protocol.failed is None


def test_a_wrong_name_fails_verification(ca: trustme.CA) -> None:
    server = _Server(ca, "backend.test")
    protocol = _Protocol()
    with pytest.raises(SSL.Error):
        server.handshake(_connect(ClientTLS(ca_pem=ca.cert_pem.bytes()), "other.test", protocol))
    assert protocol.failed is not None and protocol.failed.check(VerificationError)


def test_a_wrong_ca_fails_the_handshake(ca: trustme.CA) -> None:
    server = _Server(trustme.CA(), "backend.test")
    with pytest.raises(SSL.Error, match="certificate verify failed"):
        server.handshake(_connect(ClientTLS(ca_pem=ca.cert_pem.bytes()), "backend.test"))


def test_verify_false_accepts_any_certificate_and_still_sends_sni(ca: trustme.CA) -> None:
    server = _Server(trustme.CA(), "elsewhere.test")
    server.handshake(_connect(ClientTLS(verify=False), "backend.test"))
    assert server.sni == [b"backend.test"]


def test_the_client_certificate_is_presented(ca: trustme.CA) -> None:
    clients = trustme.CA()
    server = _Server(ca, "backend.test", client_ca=clients)
    pem = clients.issue_cert("edgeproxy").private_key_and_cert_chain_pem.bytes()
    tls = ClientTLS(ca_pem=ca.cert_pem.bytes(), client_pem=pem)
    accepted = server.handshake(_connect(tls, "backend.test"))
    peer = accepted.get_peer_certificate()
    assert peer is not None
    with pytest.raises(SSL.Error):
        server.handshake(_connect(ClientTLS(ca_pem=ca.cert_pem.bytes()), "backend.test"))


@pytest.mark.parametrize("version", [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION])
def test_the_next_connection_resumes_the_session(ca: trustme.CA, version: int) -> None:
    server = _Server(ca, "backend.test")
    server.context.set_max_proto_version(version)
    tls = ClientTLS(ca_pem=ca.cert_pem.bytes())
    first = _connect(tls, "backend.test")
    assert _reused(server.handshake(first)) == 0
    tls.remember("backend.test", 443, first)
    second = _connect(tls, "backend.test")
    assert _reused(server.handshake(second)) == 1
    # Another endpoint has a session of its own (none yet).
    third = tls.creator_for("backend.test", 8443).clientConnectionForTLS(_Protocol())
    assert _reused(server.handshake(third)) == 0
    # A failed handshake's endpoint starts afresh.
    tls.forget("backend.test", 443)
    assert _reused(server.handshake(_connect(tls, "backend.test"))) == 0


def test_creators_are_kept_per_endpoint(ca: trustme.CA) -> None:
    tls = ClientTLS(ca_pem=ca.cert_pem.bytes())
    assert tls.creator_for("a.test", 1) is tls.creator_for("a.test", 1)
    assert tls.creator_for("a.test", 1) is not tls.creator_for("a.test", 2)
    # Health checks: the same verification, never a resumed session.
    assert tls.checking_creator_for("a.test", 1) is not tls.creator_for("a.test", 1)


def test_an_address_of_a_name_is_verified_against_the_name(ca: trustme.CA) -> None:
    """DNS-discovered endpoints: the address resolved from a name is held to
    the name (and sends it in SNI)."""
    server = _Server(ca, "app.internal")
    tls = ClientTLS(ca_pem=ca.cert_pem.bytes())
    tls.name_endpoint("10.0.0.7", 443, "app.internal")
    protocol = _Protocol()
    server.handshake(tls.creator_for("10.0.0.7", 443).clientConnectionForTLS(protocol))
    assert server.sni == [b"app.internal"]
    assert protocol.failed is None
    assert tls.name_for("10.0.0.7", 443) == "app.internal"
    assert tls.name_for("10.0.0.8", 443) == "10.0.0.8"
