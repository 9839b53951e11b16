"""
421 Misdirected Request on the downstream channel, in memory: what the
channel learns from the TLS layer once per connection, and the per-request
host check against it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from edgeproxy.config import Cluster, Route, VirtualHost
from edgeproxy.proxy.h1channel import ProxyChannel
from tests.memproxy import make_config, proxy_factory

APP = Cluster("app", endpoints=["10.0.0.1:80"])
BLOG = Cluster("blog", endpoints=["10.0.0.2:80"])


class _Context:
    def __init__(self, names: object) -> None:
        self._names = names

    def get_app_data(self) -> object:
        return self._names


class _Handle:
    """What the channel reads of the pyOpenSSL connection after the handshake."""

    def __init__(self, server_name: bytes | None, names: object) -> None:
        self._server_name = server_name
        self._context = _Context(names)

    def get_servername(self) -> bytes | None:
        return self._server_name

    def get_context(self) -> _Context:
        return self._context

    def get_protocol_version_name(self) -> str:
        return "TLSv1.3"


class _TLSTransport(StringTransport):
    def __init__(self, handle: _Handle | None) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "192.0.2.9", 5555))
        self._handle = handle

    def getHandle(self) -> _Handle | None:
        return self._handle


class Harness:
    def __init__(self, server_name: bytes | None, names: object, *, tls: bool = True) -> None:
        self.reactor = MemoryReactorClock()
        config = make_config(
            VirtualHost(["app.example", "www.app.example"], routes=[Route("/", APP)]),
            VirtualHost(["blog.example", "*.blog.example"], routes=[Route("/", BLOG)]),
        )
        self.factory, _ = proxy_factory(self.reactor, config, tls=tls)
        self.channel: ProxyChannel = self.factory.buildProtocol(None)
        self.client = _TLSTransport(_Handle(server_name, names) if tls else None)
        self.channel.makeConnection(self.client)
        if tls:
            self.channel.handshakeCompleted()

    def status(self, host: bytes, target: bytes = b"/") -> bytes:
        """Send one request; the status line of what came back (nothing: forwarded)."""
        self.client.clear()
        self.channel.dataReceived(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, host))
        return self.client.value().split(b"\r\n", 1)[0]

    def upstreams(self) -> list[str]:
        return [f"{host}:{port}" for host, port, *_ in self.reactor.tcpClients]


def _names(*names: str) -> frozenset[str]:
    return frozenset(names)


def test_request_for_a_host_the_certificate_does_not_cover_is_421() -> None:
    h = Harness(b"app.example", _names("app.example"))
    assert h.status(b"blog.example") == b"HTTP/1.1 421 Misdirected Request"
    body = h.client.value().split(b"\r\n\r\n", 1)[1]
    assert body == b"421 misdirected request\n"
    assert h.upstreams() == []
    assert not h.client.disconnecting  # the connection stays open for app.example


def test_the_connection_goes_on_serving_the_covered_host() -> None:
    h = Harness(b"app.example", _names("app.example"))
    assert h.status(b"blog.example") == b"HTTP/1.1 421 Misdirected Request"
    assert h.status(b"App.Example.:443") == b""  # forwarded, waiting for upstream
    assert h.upstreams() == ["10.0.0.1:80"]


def test_absolute_form_authority_is_checked() -> None:
    h = Harness(b"app.example", _names("app.example"))
    status = h.status(b"blog.example", target=b"http://blog.example/")
    assert status == b"HTTP/1.1 421 Misdirected Request"


def test_covered_check_comes_before_the_virtual_host_lookup() -> None:
    # An unknown host on a connection for app.example is misdirected, not 404:
    # which sites exist is nobody's business on someone else's certificate.
    h = Harness(b"app.example", _names("app.example"))
    assert h.status(b"nowhere.example") == b"HTTP/1.1 421 Misdirected Request"


def test_wildcard_and_san_list_cover_their_names() -> None:
    h = Harness(b"a.blog.example", _names("*.blog.example", "www.app.example"))
    assert h.status(b"b.blog.example") == b""
    h = Harness(b"a.blog.example", _names("*.blog.example", "www.app.example"))
    assert h.status(b"www.app.example") == b""
    h = Harness(b"a.blog.example", _names("*.blog.example", "www.app.example"))
    assert h.status(b"blog.example") == b"HTTP/1.1 421 Misdirected Request"
    assert h.status(b"x.y.blog.example") == b"HTTP/1.1 421 Misdirected Request"


def test_handshake_remembers_the_certificate_once() -> None:
    h = Harness(b"WWW.App.Example", _names("www.app.example", "app.example"))
    assert h.channel.certificate_names == {"www.app.example", "app.example"}
    # The SNI name itself is the first host expected: no check for it.
    assert h.channel.covered_host == "www.app.example"
    assert h.status(b"app.example") == b""
    assert h.channel.covered_host == "app.example"


def test_the_sni_name_given_the_default_certificate_is_served_but_no_other() -> None:
    # No certificate for app.example: the client got the default one and went on
    # (curl -k).  The site it named is not misdirected; a new connection would
    # fare no better.  Any other host is checked against the default's names.
    h = Harness(b"app.example", _names("default.example"))
    assert h.status(b"blog.example") == b"HTTP/1.1 421 Misdirected Request"
    assert h.status(b"default.example") == b"HTTP/1.1 404 Not Found"
    assert h.status(b"app.example") == b""  # forwarded
    assert h.upstreams() == ["10.0.0.1:80"]


def test_no_sni_is_not_checked() -> None:
    # A client without SNI got the default certificate without naming a site:
    # it is routed by Host, as nginx and Apache do.
    h = Harness(None, _names("default.example"))
    assert h.channel.certificate_names is None
    assert h.status(b"blog.example") == b""


def test_plain_http_is_never_421() -> None:
    h = Harness(None, None, tls=False)
    assert h.channel.certificate_names is None
    assert h.status(b"app.example").startswith(b"HTTP/1.1 308")


def test_connection_without_our_certificate_is_not_checked() -> None:
    # SNI but no names on the context (the bootstrap context: cannot complete
    # a handshake in practice); nothing to check against.
    h = Harness(b"app.example", None)
    assert h.channel.certificate_names is None
    assert h.status(b"blog.example") == b""


def test_misdirected_request_is_logged_with_its_status() -> None:
    h = Harness(b"app.example", _names("app.example"))
    logged: list[Any] = []
    h.factory.access_log.log_request = lambda request, duration: logged.append(request)
    h.status(b"blog.example")
    assert [(r.record.status, type(r.error).__name__) for r in logged] == [(421, "MisdirectedRequest")]
