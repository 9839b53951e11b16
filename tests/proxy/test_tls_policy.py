"""The per virtual host TLS policy on the downstream channel, in memory: a
request whose host's policy its connection's handshake did not meet gets 421
(another name in SNI, a version too low, no verified client certificate), and
the verified client subject goes upstream in the configured header, never the
one the client sent."""

from __future__ import annotations

import trustme
from cryptography import x509
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from edgeproxy.config import Cluster, Route, VirtualHost
from edgeproxy.config.load import LoadedConfig
from edgeproxy.config.routing import RoutingTable
from edgeproxy.config.tlspolicy import TLSPolicy, parse_client_ca
from edgeproxy.proxy.h1channel import ProxyChannel
from edgeproxy.tls.certificates import PolicyNames
from tests.memproxy import accept_upstream, proxy_factory

APP = Cluster("app", endpoints=["10.0.0.1:80"])
CLIENTS = trustme.CA()
CA = parse_client_ca("/etc/clients.pem", CLIENTS.cert_pem.bytes())
OTHER_CA = parse_client_ca("/etc/other.pem", trustme.CA().cert_pem.bytes())
NAMES = frozenset({"*.example"})
ALICE = x509.load_pem_x509_certificate(
    CLIENTS.issue_cert("alice@example", common_name="alice", organization_name="Example")
    .cert_chain_pems[0]
    .bytes()
)


def _config() -> LoadedConfig:
    vhosts = (
        VirtualHost(["plain.example"], routes=[Route("/", APP)]),
        VirtualHost(["modern.example"], routes=[Route("/", APP)], min_tls_version="1.3"),
        VirtualHost(
            ["mtls.example"],
            routes=[Route("/", APP)],
            client_ca="/etc/clients.pem",
            client_subject_header="X-Client-Subject",
        ),
        VirtualHost(["other.example"], routes=[Route("/", APP)], client_ca="/etc/other.pem"),
        VirtualHost(
            ["strict.example"],
            routes=[Route("/", APP)],
            client_ca="/etc/clients.pem",
            min_tls_version="1.3",
        ),
    )
    return LoadedConfig(
        virtual_hosts=vhosts,
        files=("test.py",),
        clusters={"app": APP},
        routing=RoutingTable.from_virtual_hosts(
            vhosts, {"/etc/clients.pem": CA, "/etc/other.pem": OTHER_CA}
        ),
    )


class _Context:
    def __init__(self, data: object) -> None:
        self._data = data

    def get_app_data(self) -> object:
        return self._data


class _Handle:
    """The pyOpenSSL connection, as the channel reads it after the handshake."""

    def __init__(
        self, server_name: bytes, policy: TLSPolicy | None, version: str, peer: object
    ) -> None:
        self._server_name = server_name
        self._context = _Context(NAMES if policy is None else PolicyNames(NAMES, policy))
        self._version = version
        self._peer = peer

    def get_servername(self) -> bytes:
        return self._server_name

    def get_context(self) -> _Context:
        return self._context

    def get_protocol_version_name(self) -> str:
        return self._version

    def get_peer_certificate(self, *, as_cryptography: bool) -> object:
        return self._peer


class _TLSTransport(StringTransport):
    def __init__(self, handle: _Handle) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "192.0.2.9", 5555))
        self._handle = handle

    def getHandle(self) -> _Handle:
        return self._handle


class Harness:
    def __init__(
        self,
        server_name: bytes,
        policy: TLSPolicy | None,
        version: str = "TLSv1.3",
        peer: object = None,
    ) -> None:
        self.reactor = MemoryReactorClock()
        self.factory, _ = proxy_factory(self.reactor, _config(), tls=True)
        self.channel: ProxyChannel = self.factory.buildProtocol(None)
        self.client = _TLSTransport(_Handle(server_name, policy, version, peer))
        self.channel.makeConnection(self.client)
        self.channel.handshakeCompleted()

    def status(self, host: bytes, extra: bytes = b"") -> bytes:
        """Send one request; the status line of what came back (nothing: forwarded)."""
        self.client.clear()
        self.channel.dataReceived(b"GET / HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (host, extra))
        return self.client.value().split(b"\r\n", 1)[0]

    def upstream_request(self) -> bytes:
        _, transport, _ = accept_upstream(self.reactor)
        return transport.value()


MISDIRECTED = b"HTTP/1.1 421 Misdirected Request"
MTLS = TLSPolicy(client_ca=CA)


def test_a_host_with_a_policy_needs_a_handshake_that_met_it() -> None:
    # SNI plain.example (no policy), Host of a client_ca host: never served.
    h = Harness(b"plain.example", None)
    assert h.status(b"mtls.example") == MISDIRECTED
    assert h.status(b"other.example") == MISDIRECTED
    # A version policy is met by the negotiated version itself.
    assert h.status(b"modern.example") == b""


def test_a_lower_version_does_not_meet_min_tls_version() -> None:
    h = Harness(b"plain.example", None, version="TLSv1.2")
    assert h.status(b"modern.example") == MISDIRECTED
    assert h.status(b"plain.example") == b""


def test_a_verified_client_reaches_the_hosts_of_its_ca_only() -> None:
    h = Harness(b"mtls.example", MTLS, peer=ALICE)
    assert h.channel.client_subject is not None
    assert h.status(b"other.example") == MISDIRECTED  # another CA
    assert h.status(b"strict.example") == b""  # the same CA, and TLS 1.3
    h = Harness(b"mtls.example", MTLS, version="TLSv1.2", peer=ALICE)
    assert h.status(b"strict.example") == MISDIRECTED
    assert h.status(b"plain.example") == b""  # no policy: nothing to meet


def test_the_verified_subject_goes_upstream_and_the_clients_never() -> None:
    h = Harness(b"mtls.example", MTLS, peer=ALICE)
    assert (
        h.status(b"mtls.example", b"X-Client-Subject: CN=mallory\r\nx-client-subject: a\r\n") == b""
    )
    sent = h.upstream_request()
    assert b"mallory" not in sent and b"x-client-subject: a" not in sent
    lines = [line for line in sent.split(b"\r\n") if line.lower().startswith(b"x-client-subject:")]
    assert len(lines) == 1
    assert lines[0].startswith(b"X-Client-Subject: CN=alice,OU=")
    assert lines[0].endswith(b",O=Example")


def test_a_host_without_the_header_passes_a_client_sent_one_on() -> None:
    h = Harness(b"plain.example", None)
    assert h.status(b"plain.example", b"X-Client-Subject: CN=whoever\r\n") == b""
    assert b"X-Client-Subject: CN=whoever\r\n" in h.upstream_request()


def test_a_client_ca_connection_without_a_certificate_is_cut() -> None:
    # Not reachable through OpenSSL (the handshake requires one); if it ever
    # were, nothing is served.
    h = Harness(b"mtls.example", MTLS, peer=None)
    assert h.client.disconnecting or h.client.disconnected
    assert h.channel.client_subject is None
