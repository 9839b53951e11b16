"""
WebSocket and other upgrades through the channel, the forwarder and the
upstream pool, in memory (``tests/proxy/test_h1channel.Conn``): what goes
upstream, the 101 and the splice, what a refused or plain answer does to the
connection, the lease held while the tunnel is open, how the tunnel's end is
logged.  The splice itself is in ``test_tunnel.py``; through the real
``twistd`` with a real WebSocket client and server, ``tests/e2e/test_websocket.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent
from twisted.python.failure import Failure

from edgeproxy.config import Cluster, Limits, Route
from edgeproxy.config.settings import Settings
from tests.proxy.test_h1channel import (
    WEB,
    Conn,
    Upstream,
    log_events,
    logged_errors,
    ok,
    request,
)

__all__ = ["log_events"]  # a fixture, used by name

ONE = Cluster("one", endpoints=["10.0.0.2:80"], limits=Limits(max_requests=1))
ROUTES = [
    Route("/", WEB),
    Route("/nows/", WEB, websocket=False),
    Route("/one/", ONE),
]
WS_HEADERS = (
    b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)
SWITCHED = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)
IDLE = 50.0


def ws_request(target: bytes = b"/chat", headers: bytes = WS_HEADERS) -> bytes:
    return request(target=target, headers=headers)


def conn(**kwargs: Any) -> Conn:
    return Conn(routes=ROUTES, settings=Settings(tunnel_idle_timeout=IDLE), **kwargs)


def switched(c: Conn, rest: bytes = b"") -> Upstream:
    """Send a WebSocket request and have the upstream switch."""
    c.send(ws_request())
    up = c.respond(SWITCHED + rest)
    return up


def access(events: list[LogEvent]) -> list[Any]:
    return [e["access"] for e in events if "access" in e]


def in_flight(c: Conn, cluster: str = "web") -> int:
    runtime = c.factory.pipeline.plan.snapshot.clusters[cluster]
    count: int = runtime.counters.in_flight
    return count


@pytest.fixture
def events() -> Iterator[list[LogEvent]]:
    yield from log_events.__wrapped__()  # type: ignore[attr-defined]


def test_an_upgrade_request_is_forwarded_with_its_upgrade_headers() -> None:
    c = conn()
    c.send(ws_request())
    [sent] = c.upstream_requests()
    assert sent.header(b"connection") == b"Upgrade"
    assert sent.header(b"upgrade") == b"websocket"
    assert sent.header(b"sec-websocket-key") == b"dGhlIHNhbXBsZSBub25jZQ=="
    assert sent.header(b"content-length") is None


def test_only_h2c_offered_goes_on_as_a_plain_request() -> None:
    c = conn()
    c.send(request(target=b"/x", headers=b"Connection: Upgrade, HTTP2-Settings\r\n"
                   b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n"))
    [sent] = c.upstream_requests()
    assert sent.header(b"upgrade") is None
    assert sent.header(b"http2-settings") is None
    c.respond(ok(b"plain"))
    [response] = c.responses()
    assert (response.status, response.body) == (200, b"plain")


def test_h2c_is_dropped_from_an_offer_with_other_protocols() -> None:
    c = conn()
    c.send(ws_request(headers=b"Connection: upgrade\r\nUpgrade: h2c, websocket\r\n"))
    [sent] = c.upstream_requests()
    assert sent.header(b"upgrade") == b"websocket"


def test_a_101_splices_the_two_connections() -> None:
    c = conn()
    c.send(ws_request() + b"\x81\x05early")  # a client that did not wait
    up = c.respond(SWITCHED + b"\x81\x02hi")
    out = c.out()
    head, _, after = out.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 101 Switching Protocols"
    assert b"Upgrade: websocket" in lines and b"Connection: Upgrade" in lines
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in lines
    assert any(line.startswith(b"X-Request-Id: ") for line in lines)
    assert not any(line.lower().startswith(b"content-length") for line in lines)
    assert after == b"\x81\x02hi"
    assert up.transport.value().endswith(b"\r\n\r\n\x81\x05early")
    # Then both ways, as is; nothing is parsed as HTTP any more.
    c.send(b"GET / HTTP/1.1\r\n\r\n")
    assert up.transport.value().endswith(b"GET / HTTP/1.1\r\n\r\n")
    up.protocol.dataReceived(b"HTTP/1.1 200 OK\r\n\r\n")
    assert c.out().endswith(b"HTTP/1.1 200 OK\r\n\r\n")
    assert not c.closing


def test_the_upgraded_connection_leaves_the_pool_and_holds_its_lease() -> None:
    c = conn()
    up = switched(c)
    assert in_flight(c) == 1
    c.advance(IDLE / 2)  # no keep-alive or response timer fires meanwhile
    assert in_flight(c) == 1 and not c.closing
    c.client_gone()
    assert up.transport.disconnecting
    up.protocol.connectionLost(Failure(ConnectionDone()))
    assert in_flight(c) == 0
    pool = c.factory.pipeline.forwarder.upstream
    assert pool.idle_connections("10.0.0.1:80") == 0


def test_an_open_tunnel_counts_against_max_requests() -> None:
    c = conn()
    c.send(ws_request(target=b"/one/ws"))
    up = c.respond(SWITCHED)
    # A second client connection to the same proxy.
    second = c.factory.buildProtocol(None)
    transport = StringTransport()
    second.makeConnection(transport)
    second.dataReceived(request(target=b"/one/x"))
    assert transport.value().startswith(b"HTTP/1.1 503 ")
    assert b"X-Edgeproxy-Limit: max_requests" in transport.value()
    up.protocol.connectionLost(Failure(ConnectionDone()))
    c.protocol.connectionLost(Failure(ConnectionDone()))
    assert in_flight(c, "one") == 0


def test_a_non_101_answer_is_relayed_and_the_connection_goes_on(
    events: list[LogEvent],
) -> None:
    c = conn()
    c.send(ws_request() + request(target=b"/next"))
    c.respond(ok(b"no websocket here", status=b"400 Bad Request"))
    c.respond(ok(b"next"))
    responses = c.responses()
    assert [r.status for r in responses] == [400, 200]
    assert [r.start[1] for r in c.upstream_requests()] == [b"/chat", b"/next"]
    assert not c.closing
    assert [r.status for r in access(events)] == [400, 200]


def test_a_route_with_websocket_false_answers_403(events: list[LogEvent]) -> None:
    c = conn()
    c.send(ws_request(target=b"/nows/chat") + request(target=b"/next"))
    c.respond(ok(b"next"))
    assert [r.status for r in c.responses()] == [403, 200]
    assert [r.start[1] for r in c.upstream_requests()] == [b"/next"]
    assert not c.closing
    refused = access(events)[0]
    assert (refused.outcome, refused.reason) == ("rejected", "upgrade_refused")


def test_an_upgrade_request_with_a_body_is_still_refused() -> None:
    c = conn()
    c.send(request(b"POST", b"/chat", headers=WS_HEADERS + b"Content-Length: 2\r\n", body=b"hi"))
    assert c.attempts == 0
    assert c.responses()[0].status == 400
    assert c.closing


def test_an_upgrade_request_with_content_length_0_has_no_body_and_goes_on() -> None:
    c = conn()
    c.send(ws_request(headers=WS_HEADERS + b"Content-Length: 0\r\n"))
    assert c.attempts == 1
    c.respond(SWITCHED)
    assert c.out().startswith(b"HTTP/1.1 101 ")


def test_bytes_after_a_pipelined_upgrade_request_wait_for_its_101() -> None:
    """A request, then an upgrade request and the first frame, in one read:
    the frame is not parsed as HTTP when the first answer is done, but goes
    up the tunnel once the 101 comes."""
    c = conn()
    early = b"\x81\x05hello"
    c.send(request(target=b"/first") + ws_request() + early)
    c.respond(ok(b"one"))
    assert not c.closing
    up = c.respond(SWITCHED)
    assert c.out().count(b"HTTP/1.1 101 ") == 1
    assert up.transport.value().endswith(b"\r\n\r\n" + early)
    # Nothing was parsed from the frame: one 200, one 101, no 400.
    assert c.out().count(b"HTTP/1.1 ") == 2


def test_a_101_to_a_plain_request_is_a_bad_gateway() -> None:
    c = conn()
    c.send(request(target=b"/plain"))
    c.respond(SWITCHED)
    assert c.responses()[0].status == 502


def test_a_101_without_upgrade_is_a_bad_gateway() -> None:
    c = conn()
    c.send(ws_request())
    c.respond(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n")
    assert c.responses()[0].status == 502


def test_the_tunnel_is_logged_when_it_closes(events: list[LogEvent]) -> None:
    c = conn()
    up = switched(c, rest=b"12345")
    c.send(b"abc")
    assert access(events) == []
    c.client_gone()
    up.protocol.connectionLost(Failure(ConnectionDone()))
    [record] = access(events)
    assert (record.status, record.upstream_status, record.outcome, record.reason) == (
        101, 101, "ok", None
    )
    assert record.bytes == 5
    assert logged_errors(events) == []


def test_an_upstream_that_fails_mid_tunnel_is_logged_as_truncated(events: list[LogEvent]) -> None:
    c = conn()
    up = switched(c)
    up.protocol.connectionLost(Failure(ConnectionLost("reset")))
    assert c.closing
    c.protocol.connectionLost(Failure(ConnectionDone()))
    [record] = access(events)
    assert (record.outcome, record.reason) == ("upstream_error", "truncated")
    assert in_flight(c) == 0


def test_an_idle_tunnel_is_closed_and_logged(events: list[LogEvent]) -> None:
    c = conn()
    up = switched(c)
    c.advance(IDLE - 1)
    c.send(b"still here")
    c.advance(IDLE - 1)
    assert not c.closing
    c.advance(1)
    assert c.closing and up.transport.disconnecting
    c.protocol.connectionLost(Failure(ConnectionDone()))
    up.protocol.connectionLost(Failure(ConnectionDone()))
    [record] = access(events)
    assert (record.outcome, record.reason) == ("client_timeout", "idle_timeout")


def test_a_client_gone_before_the_101_closes_the_upstream() -> None:
    c = conn()
    c.send(ws_request())
    up = c.connect()[0]
    c.client_gone()
    assert up.transport.disconnecting
    assert in_flight(c) == 0


def test_a_draining_proxy_leaves_a_tunnel_open() -> None:
    c = conn()
    switched(c)
    c.factory.connections.drain()
    assert not c.closing
    c.factory.connections.abort_all()
