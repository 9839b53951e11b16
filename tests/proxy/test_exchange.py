"""
The downstream request, the forwarder, the upstream pool and the relay,
driven in memory: a ``MemoryReactorClock`` stands in for the network and
``StringTransport`` for both sockets, so every step is deterministic.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.error import ConnectionRefusedError, TimeoutError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from edgeproxy.config import Cluster, Route, Split, VirtualHost
from edgeproxy.proxy.exchange import split_target
from tests.memproxy import (
    accept_upstream,
    connect_client,
    make_config,
    proxy_factory,
    refuse_upstream,
)

API = Cluster("api", endpoints=["10.0.0.1:80", "10.0.0.2:80"], response_timeout=7.0)
WEB = Cluster("web", endpoints=["10.0.0.3:80"])


class Harness:
    def __init__(self, tls: bool = True) -> None:
        self.reactor = MemoryReactorClock()
        config = make_config(
            VirtualHost(
                ["shop.example"],
                routes=[
                    Route("/api/", API, strip_prefix=True),
                    Route("/small/", WEB, max_body_size=10),
                    Route("/", Split({WEB: 1})),
                ],
            )
        )
        self.factory, self.pipeline = proxy_factory(self.reactor, config, tls=tls)
        self.channel, self.client = connect_client(self.factory)

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    def connect_upstream(self, index: int = -1) -> tuple[Any, StringTransport, str]:
        return accept_upstream(self.reactor, index)

    def fail_connect(self, reason: Exception, index: int = -1) -> None:
        refuse_upstream(self.reactor, index, reason)


def test_split_target() -> None:
    assert split_target(b"/a?b") == (None, b"/a?b")
    assert split_target(b"http://h:1/p?q") == (b"h:1", b"/p?q")
    assert split_target(b"HTTPS://h?q") == (b"h", b"/?q")
    assert split_target(b"*") is None
    assert split_target(b"http://user@h/") is None
    assert split_target(b"ftp://h/") is None


def test_forwards_request_and_relays_response() -> None:
    h = Harness()
    h.send(b"GET /api/items?x=1 HTTP/1.1\r\nHost: shop.example\r\nX-Dup: 1\r\nX-Dup: 2\r\n\r\n")
    upstream, up, address = h.connect_upstream()
    assert address == "10.0.0.1:80"
    sent = up.value()
    assert sent.startswith(b"GET /items?x=1 HTTP/1.1\r\n")
    assert b"X-Forwarded-For: 192.0.2.9\r\n" in sent
    assert b"X-Forwarded-Proto: https\r\n" in sent
    assert b"Host: shop.example\r\n" in sent
    assert sent.count(b"X-Dup:") == 2
    upstream.dataReceived(b"HTTP/1.1 201 Made\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello")
    out = h.client.value()
    assert out.startswith(b"HTTP/1.1 201 Made\r\n")
    assert b"Content-Length: 5\r\n" in out
    assert b"Transfer-Encoding" not in out
    assert out.endswith(b"\r\n\r\nhello")


def test_unknown_host_and_path_are_404_without_upstream() -> None:
    h = Harness()
    h.send(b"GET / HTTP/1.1\r\nHost: other.example\r\n\r\n")
    assert h.client.value().startswith(b"HTTP/1.1 404")
    assert h.reactor.tcpClients == []


def test_connect_refused_is_retried_on_the_other_endpoint_then_502() -> None:
    h = Harness()
    h.send(b"POST /api/x HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 2\r\n\r\nhi")
    h.fail_connect(ConnectionRefusedError())
    assert h.reactor.tcpClients[-1][:2] == ("10.0.0.2", 80)
    h.fail_connect(ConnectionRefusedError())
    out = h.client.value()
    assert out.startswith(b"HTTP/1.1 502 Bad Gateway")
    assert b"10.0.0" not in out
    assert len(h.reactor.tcpClients) == 2


def test_connect_timeout_is_504_after_retry() -> None:
    h = Harness()
    h.send(b"GET /api/x HTTP/1.1\r\nHost: shop.example\r\n\r\n")
    h.fail_connect(TimeoutError())
    h.fail_connect(TimeoutError())
    assert h.client.value().startswith(b"HTTP/1.1 504")


def test_response_timeout_is_retried_once_then_504_on_the_clock() -> None:
    h = Harness()
    h.send(b"GET /api/x HTTP/1.1\r\nHost: shop.example\r\n\r\n")
    _, up, first = h.connect_upstream()
    h.reactor.advance(6.9)
    assert h.client.value() == b""
    h.reactor.advance(0.2)
    # GET is idempotent: one retry on the other endpoint, with its own deadline.
    # The timed-out connection is aborted (StringTransport.abortConnection sets
    # disconnected), not closed gracefully behind a response still coming.
    assert up.disconnected  # type: ignore[attr-defined]
    _, up2, second = h.connect_upstream()
    assert {first, second} == {"10.0.0.1:80", "10.0.0.2:80"}
    assert h.client.value() == b""
    h.reactor.advance(7.1)
    assert h.client.value().startswith(b"HTTP/1.1 504 Gateway Time-out")


def test_response_timeout_of_post_is_not_retried() -> None:
    h = Harness()
    h.send(b"POST /api/x HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 1\r\n\r\nx")
    h.connect_upstream()
    h.reactor.advance(7.1)
    assert h.client.value().startswith(b"HTTP/1.1 504 Gateway Time-out")
    assert len(h.reactor.tcpClients) == 1


def test_body_over_limit_is_413_before_reading_it() -> None:
    h = Harness()
    h.send(
        b"POST /small/x HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 11\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    out = h.client.value()
    assert out.startswith(b"HTTP/1.1 413 Request Entity Too Large\r\n")
    assert b"100 Continue" not in out
    assert h.reactor.tcpClients == []
    h.send(b"x" * 11)
    assert h.client.disconnecting


def test_chunked_body_over_limit_is_413() -> None:
    h = Harness()
    h.send(b"POST /small/x HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: chunked\r\n\r\n")
    h.send(b"6\r\nabcdef\r\n")
    assert h.client.value() == b""
    h.send(b"6\r\nabcdef\r\n")
    assert h.client.value().startswith(b"HTTP/1.1 413")
    assert h.reactor.tcpClients == []


def test_plain_listener_redirects_with_https_port() -> None:
    h = Harness(tls=False)
    h.send(b"GET /a/b?c=d HTTP/1.1\r\nHost: Shop.Example:8080\r\n\r\n")
    out = h.client.value()
    assert out.startswith(b"HTTP/1.1 308")
    assert b"\r\nLocation: https://shop.example:8443/a/b?c=d\r\n" in out
    assert h.reactor.tcpClients == []


def test_slow_client_pauses_upstream() -> None:
    h = Harness()
    h.send(b"GET /api/big HTTP/1.1\r\nHost: shop.example\r\n\r\n")
    upstream, up, _ = h.connect_upstream()
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"a" * 10)
    # The client's socket buffer is full: its transport pauses the channel.
    h.channel.pauseProducing()
    assert up.producerState == "paused"
    h.channel.resumeProducing()
    assert up.producerState == "producing"


def test_client_gone_cancels_pending_upstream_request() -> None:
    h = Harness()
    h.send(b"GET /api/x HTTP/1.1\r\nHost: shop.example\r\n\r\n")
    _, up, _ = h.connect_upstream()
    h.channel.connectionLost(Failure(ConnectionRefusedError()))
    assert up.disconnected  # type: ignore[attr-defined]  # aborted, not loseConnection


def test_client_gone_mid_body_stops_upstream() -> None:
    h = Harness()
    h.send(b"GET /api/big HTTP/1.1\r\nHost: shop.example\r\n\r\n")
    upstream, up, _ = h.connect_upstream()
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"a" * 10)
    h.channel.connectionLost(Failure(ConnectionRefusedError()))
    # stopProducing on a TCP transport closes it; StringTransport records it.
    assert up.producerState == "stopped"


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /api/x HTTP/1.1\r\n\r\n",
        b"GET /api/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: shop.example\r\n\r\n",
        b"GET /api/x HTTP/1.1\r\nHost: bad host\r\n\r\n",
    ],
)
def test_bad_requests_are_400_and_close(raw: bytes) -> None:
    h = Harness()
    h.send(raw)
    out = h.client.value()
    assert out.startswith(b"HTTP/1.1 400")
    assert b"Connection: close" in out
    assert h.reactor.tcpClients == []


def test_header_values_with_control_bytes_are_refused_before_routing() -> None:
    # twisted.web refuses NUL and bare CR in header values itself; forward.py
    # drops such values too, in case a parser change ever lets one through.
    h = Harness()
    h.send(b"GET /api/x HTTP/1.1\r\nHost: shop.example\r\nX-Bad: a\x00b\r\nX-Cr: a\rb\r\n\r\n")
    assert h.client.value().startswith(b"HTTP/1.1 400")
    assert h.reactor.tcpClients == []
