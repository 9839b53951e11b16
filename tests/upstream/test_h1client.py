"""
The lean HTTP/1.1 upstream client (``edgeproxy.upstream.h1client`` behind
``UpstreamClient``), driven in memory: ``MemoryReactorClock`` for the network
and the clock, ``StringTransport`` for each upstream socket.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import (
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
    TimeoutError,
)
from twisted.internet.interfaces import IHostnameResolver, IReactorPluggableNameResolver
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH
from zope.interface import implementer

from edgeproxy.config import Endpoint
from edgeproxy.core.errors import (
    UpstreamConnectFailed,
    UpstreamConnectTimeout,
    UpstreamResponseFailed,
    UpstreamTimeout,
)
from edgeproxy.core.protocol import HTTPLimits
from edgeproxy.upstream.h1client import BodySink, BodySource, UpstreamClient

EP = Endpoint("10.0.0.1", 8080)
OTHER = Endpoint("10.0.0.2", 80)
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
# The defaults the client runs with (edgeproxy.core.protocol.HTTPLimits).
BODY_CHUNK = HTTPLimits().upstream_body_chunk
MAX_HEAD_BYTES = HTTPLimits().max_response_head_bytes


class Collector(Protocol):
    """A body protocol that records what it gets."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.reason: Failure | None = None
        self.made = False

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        assert self.reason is None, "connectionLost twice"
        self.reason = reason

    @property
    def body(self) -> bytes:
        return b"".join(self.data)


class Upstream:
    def __init__(self, protocol: Any, transport: StringTransport, address: tuple[str, int]):
        self.protocol = protocol
        self.transport = transport
        self.address = address

    def sent(self) -> bytes:
        return self.transport.value()

    def respond(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def lose(self, reason: Exception | None = None) -> None:
        self.protocol.connectionLost(Failure(reason or ConnectionDone()))

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting or self.transport.disconnected)

    @property
    def state(self) -> str:
        """``"open"``, ``"closed"`` (loseConnection: what was written goes out
        first) or ``"aborted"`` (abortConnection: at once)."""
        if self.transport.disconnected:
            return "aborted"
        return "closed" if self.transport.disconnecting else "open"


class Rig:
    def __init__(self, **kwargs: Any) -> None:
        self.reactor = MemoryReactorClock()
        self.client = UpstreamClient(self.reactor, **kwargs)

    def request(
        self,
        method: bytes = b"GET",
        target: bytes = b"/x",
        headers: dict[bytes, list[bytes]] | None = None,
        body: Any = None,
        body_length: int | None = None,
        endpoint: Endpoint = EP,
        connect_timeout: float = 5.0,
        response_timeout: float = 30.0,
    ) -> Deferred[Any]:
        h = Headers({b"Host": [b"shop.example"]} if headers is None else headers)
        if isinstance(body, bytes):
            body_length = len(body)
            body = io.BytesIO(body)
        return self.client.request(
            endpoint,
            method,
            target,
            h,
            body,
            body_length,
            connect_timeout=connect_timeout,
            response_timeout=response_timeout,
        )

    @property
    def connections(self) -> int:
        return len(self.reactor.tcpClients)

    def accept(self, index: int = -1) -> Upstream:
        host, port, factory, _timeout, _bind = self.reactor.tcpClients[index]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return Upstream(protocol, transport, (host, port))

    def refuse(self, reason: Exception, index: int = -1) -> None:
        factory = self.reactor.tcpClients[index][2]
        factory.clientConnectionFailed(None, Failure(reason))

    def idle(self, endpoint: Endpoint = EP) -> int:
        return self.client.idle_connections(endpoint)

    def begin(self, *args: Any, **kwargs: Any) -> tuple[Deferred[Any], Upstream]:
        """A request (``request``'s arguments) and the connection it opened."""
        d = self.request(*args, **kwargs)
        return d, self.accept()


def started(**kwargs: Any) -> tuple[Rig, Deferred[Any], Upstream]:
    """A ``Rig(**kwargs)`` with a GET sent on a connection of its own."""
    rig = Rig(**kwargs)
    return (rig, *rig.begin())


def result(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "no result yet"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def failure(d: Deferred[Any]) -> Failure:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out and isinstance(out[0], Failure), out
    return out[0]


def no_result(d: Deferred[Any]) -> None:
    out: list[Any] = []

    def seen(r: Any) -> Any:
        out.append(r)
        return r

    d.addBoth(seen)
    assert not out, out


def fetch(rig: Rig, up: Upstream, d: Deferred[Any], data: bytes) -> tuple[Any, Collector]:
    up.respond(data)
    response = result(d)
    body = Collector()
    response.deliverBody(body)
    return response, body


# -- the request on the wire ----------------------------------------------------------


def test_request_line_and_headers_in_order_with_repeats() -> None:
    rig = Rig()
    rig.request(
        b"GET",
        b"/a/b?c=d",
        {b"Host": [b"shop.example"], b"X-Dup": [b"1", b"2"], b"Accept": [b"*/*"]},
    )
    up = rig.accept()
    assert up.address == ("10.0.0.1", 8080)
    assert up.sent() == (
        b"GET /a/b?c=d HTTP/1.1\r\nHost: shop.example\r\nX-Dup: 1\r\nX-Dup: 2\r\n"
        b"Accept: */*\r\n\r\n"
    )


def test_host_is_the_endpoint_when_the_headers_have_none() -> None:
    rig = Rig()
    rig.request(headers={})
    assert rig.accept().sent() == b"GET /x HTTP/1.1\r\nHost: 10.0.0.1:8080\r\n\r\n"
    rig.request(headers={}, endpoint=OTHER)
    assert b"\r\nHost: 10.0.0.2\r\n" in rig.accept().sent()


def test_host_like_headers_are_not_host_and_host_is_found_in_any_case() -> None:
    rig = Rig()
    rig.request(headers={b"X-Host": [b"a"], b"X-Forwarded-Host": [b"host: b"]})
    assert rig.accept().sent() == (
        b"GET /x HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nX-Host: a\r\nX-Forwarded-Host: host: b\r\n\r\n"
    )
    # As (name, value) pairs, names keep the case the client gave them.
    rig.client.request(
        EP,
        b"GET",
        b"/x",
        [(b"Accept", b"*/*"), (b"hOsT", b"shop.example")],
        None,
        None,
        connect_timeout=5.0,
        response_timeout=30.0,
    )
    assert rig.accept().sent() == (b"GET /x HTTP/1.1\r\nAccept: */*\r\nhOsT: shop.example\r\n\r\n")


def test_small_body_goes_with_the_head_with_content_length_never_chunked() -> None:
    rig = Rig()
    rig.request(b"POST", body=b"pay me")
    sent = rig.accept().sent()
    assert sent == (b"POST /x HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 6\r\n\r\npay me")
    assert b"Transfer-Encoding" not in sent


@pytest.mark.parametrize("method", [b"POST", b"PUT"])
def test_post_and_put_without_body_send_content_length_zero(method: bytes) -> None:
    rig = Rig()
    rig.request(method)
    assert rig.accept().sent().endswith(b"\r\nContent-Length: 0\r\n\r\n")


def test_get_without_body_sends_no_content_length() -> None:
    rig = Rig()
    rig.request(b"GET")
    assert b"Content-Length" not in rig.accept().sent()


def test_invalid_method_or_target_is_refused() -> None:
    rig = Rig()
    with pytest.raises(ValueError):
        rig.request(b"GE T")
    with pytest.raises(ValueError):
        rig.request(b"GET", b"/x HTTP/1.1\r\nX-Evil: 1")
    assert rig.connections == 0


def test_upstream_socket_has_no_delay() -> None:
    rig = Rig()
    rig.request()
    host, port, factory, timeout, _ = rig.reactor.tcpClients[-1]
    assert timeout == 5.0
    protocol = factory.buildProtocol(IPv4Address("TCP", host, port))

    class NoDelayTransport(StringTransport):
        no_delay: bool | None = None

        def setTcpNoDelay(self, enabled: bool) -> None:
            self.no_delay = enabled

    transport = NoDelayTransport()
    protocol.makeConnection(transport)
    assert transport.no_delay is True


# -- large request bodies stream from their file -----------------------------------------


class CountingFile(io.RawIOBase):
    """A ``size``-byte file of ``b"z"`` that records how much was read."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.pos = 0
        self.read_total = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.size + offset
        return self.pos

    def read(self, n: int = -1) -> bytes:
        n = self.size - self.pos if n < 0 else min(n, self.size - self.pos)
        self.pos += n
        self.read_total += n
        return b"z" * n


def test_large_body_is_read_a_chunk_at_a_time_as_the_socket_drains() -> None:
    rig = Rig()
    size = 10 * 1024 * 1024 + 5
    body = CountingFile(size)
    d, up = rig.begin(b"PUT", body=body, body_length=size)
    assert up.sent().endswith(b"\r\nContent-Length: %d\r\n\r\n" % size)
    producer = up.transport.producer
    assert producer is not None and not up.transport.streaming
    assert body.read_total == 0
    # The socket asks for more each time its buffer drains.
    producer.resumeProducing()
    assert body.read_total == BODY_CHUNK
    up.transport.clear()
    while up.transport.producer is not None:
        producer.resumeProducing()
        assert len(up.transport.value()) <= BODY_CHUNK
        up.transport.clear()
    assert body.read_total == size
    response, collected = fetch(rig, up, d, OK)
    assert collected.body == b"hi"
    assert rig.idle() == 1


def test_answer_before_the_body_is_written_stops_the_body_and_closes() -> None:
    rig = Rig()
    size = 4 * BODY_CHUNK
    body = CountingFile(size)
    d, up = rig.begin(b"POST", body=body, body_length=size)
    up.transport.producer.resumeProducing()
    up.respond(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
    assert result(d).code == 413
    assert up.transport.producer is None
    assert body.read_total == BODY_CHUNK
    assert up.state == "closed"
    assert rig.idle() == 0


def test_body_shorter_than_announced_fails_without_reuse() -> None:
    rig = Rig()
    d, up = rig.begin(b"POST", body=io.BytesIO(b"abc"), body_length=5)
    assert failure(d).check(UpstreamConnectFailed)
    assert up.state == "aborted"


class PushedBody(BodySource):
    """A streamed body the test pushes by hand."""

    def __init__(self, length: int | None) -> None:
        self.length = length
        self.sink: BodySink | None = None
        self.stopped = False

    def connect(self, sink: BodySink) -> None:
        self.sink = sink

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self.stopped = True
        self.sink = None


@pytest.mark.parametrize(("pushed", "why"), [(b"abc", "short"), (b"abcdefgh", "long")])
def test_a_streamed_body_that_breaks_its_content_length_fails_without_reuse(
    pushed: bytes, why: str
) -> None:
    """The backstop behind the client's framing checks: a streamed body
    shorter or longer than the Content-Length sent never leaves a pooled
    connection out of step (the excess, or the next request, would be read
    as the rest of this one)."""
    rig = Rig()
    source = PushedBody(5)
    d, up = rig.begin(b"POST", body=source, body_length=5)
    assert source.sink is not None
    source.sink.data(pushed)
    if why == "short":
        assert source.sink is not None
        source.sink.end()
    assert failure(d).check(UpstreamResponseFailed)
    assert up.state == "aborted"
    assert source.stopped
    assert not up.sent().endswith(b"abcdefgh")
    assert rig.idle() == 0


# -- pooling -------------------------------------------------------------------------------


def test_sequential_requests_reuse_one_connection() -> None:
    rig = Rig()
    up = None
    for i in range(5):
        d = rig.request(target=b"/%d" % i)
        if up is None:
            up = rig.accept()
        assert up.sent().startswith(b"GET /%d " % i)
        up.transport.clear()
        _, body = fetch(rig, up, d, OK)
        assert body.body == b"hi"
        assert body.reason is not None and body.reason.check(ResponseDone)
        assert rig.idle() == 1
    assert rig.connections == 1


def test_endpoints_have_pools_of_their_own() -> None:
    rig = Rig()
    d = rig.request()
    fetch(rig, rig.accept(), d, OK)
    rig.request(endpoint=OTHER)
    assert rig.connections == 2
    assert rig.reactor.tcpClients[-1][:2] == ("10.0.0.2", 80)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nConnection: x-a, Close\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi",
    ],
)
def test_no_reuse_after_close_or_http10(answer: bytes) -> None:
    rig, d, up = started()
    _, body = fetch(rig, up, d, answer)
    assert body.body == b"hi"
    assert body.reason is not None and body.reason.check(ResponseDone)
    assert up.state == "closed"
    assert rig.idle() == 0
    rig.request()
    assert rig.connections == 2


def test_connection_is_reused_only_after_the_complete_body() -> None:
    rig, d, up = started()
    _, body = fetch(rig, up, d, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    assert rig.idle() == 0
    rig.request(target=b"/second")
    assert rig.connections == 2
    up.respond(b"defghij")
    assert body.body == b"abcdefghij"
    assert body.reason is not None and body.reason.check(ResponseDone)
    assert rig.idle() == 1


def test_at_most_max_idle_per_endpoint_are_kept() -> None:
    rig = Rig(max_idle_per_endpoint=2)
    pending = [rig.request() for _ in range(3)]
    ups = [rig.accept(i) for i in range(3)]
    for up, d in zip(ups, pending, strict=True):
        fetch(rig, up, d, OK)
    assert rig.idle() == 2
    # The oldest idle one was closed.
    assert [up.state for up in ups] == ["closed", "open", "open"]


def test_idle_connections_close_after_idle_timeout() -> None:
    rig, d, up = started(idle_timeout=50.0)
    fetch(rig, up, d, OK)
    rig.reactor.advance(49)
    assert not up.closed and rig.idle() == 1
    rig.reactor.advance(1)
    assert up.state == "closed" and rig.idle() == 0
    rig.request()
    assert rig.connections == 2


def test_idle_timeout_counts_from_the_last_use() -> None:
    rig, d, up = started(idle_timeout=50.0)
    fetch(rig, up, d, OK)
    rig.reactor.advance(40)
    d = rig.request()
    fetch(rig, up, d, OK)
    rig.reactor.advance(40)
    assert not up.closed and rig.idle() == 1
    rig.reactor.advance(10)
    assert up.state == "closed"


@pytest.mark.parametrize("event", ["eof", "data"])
def test_idle_connection_that_closes_or_talks_is_dropped(event: str) -> None:
    rig, d, up = started()
    fetch(rig, up, d, OK)
    assert rig.idle() == 1
    if event == "eof":
        up.lose()
    else:
        up.respond(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
        assert up.state == "aborted"
    assert rig.idle() == 0
    rig.request()
    assert rig.connections == 2


def test_close_closes_idle_connections() -> None:
    rig, d, up = started()
    fetch(rig, up, d, OK)
    closed = rig.client.close()
    assert up.state == "closed"
    no_result(closed)
    up.lose()
    assert result(closed) is None


# -- response bodies -----------------------------------------------------------------------


def test_content_length_body_across_reads() -> None:
    rig, d, up = started()
    up.respond(b"HTTP/1.1 200 OK\r\nContent-Le")
    no_result(d)
    up.respond(b"ngth: 6\r\nX-A: b\r\n\r\nab")
    response = result(d)
    assert (response.code, response.phrase, response.length) == (200, b"OK", 6)
    assert response.version == (b"HTTP", 1, 1)
    assert response.headers.getRawHeaders(b"x-a") == [b"b"]
    assert not response.headers.hasHeader(b"content-length")
    body = Collector()
    response.deliverBody(body)
    assert body.made and body.body == b"ab" and body.reason is None
    up.respond(b"cd")
    up.respond(b"ef")
    assert body.body == b"abcdef"
    assert body.reason is not None and body.reason.check(ResponseDone)


def test_chunked_body_is_dechunked() -> None:
    rig, d, up = started()
    response, body = fetch(
        rig,
        up,
        d,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4;ext=1\r\nde",
    )
    assert response.length is UNKNOWN_LENGTH
    assert not response.headers.hasHeader(b"transfer-encoding")
    up.respond(b"fg\r\n0\r\nX-Trailer: t\r\n\r\n")
    assert body.body == b"abcdefg"
    assert body.reason is not None and body.reason.check(ResponseDone)
    assert rig.idle() == 1


def test_close_delimited_body_ends_in_potential_data_loss() -> None:
    rig, d, up = started()
    response, body = fetch(rig, up, d, b"HTTP/1.1 200 OK\r\n\r\nsome")
    assert response.length is UNKNOWN_LENGTH
    up.respond(b" more")
    up.lose()
    assert body.body == b"some more"
    assert body.reason is not None and body.reason.check(PotentialDataLoss)
    assert rig.idle() == 0


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabc",
    ],
)
def test_truncated_body_is_not_taken_for_a_whole_one(head: bytes) -> None:
    rig, d, up = started()
    _, body = fetch(rig, up, d, head)
    up.lose(ConnectionLost())
    assert body.body == b"abc"
    assert body.reason is not None
    assert not body.reason.check(ResponseDone, PotentialDataLoss)
    assert body.reason.check(ResponseFailed)


def test_body_before_deliver_body_is_buffered_with_reading_paused() -> None:
    rig, d, up = started()
    up.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
    response = result(d)
    assert up.transport.producerState == "paused"
    body = Collector()
    response.deliverBody(body)
    assert up.transport.producerState == "producing"
    up.respond(b"cd")
    assert body.body == b"abcd"
    assert body.reason is not None and body.reason.check(ResponseDone)


def test_complete_response_delivered_later_still_frees_the_connection() -> None:
    rig, d, up = started()
    up.respond(OK)
    response = result(d)
    assert rig.idle() == 1
    body = Collector()
    response.deliverBody(body)
    assert body.body == b"hi"
    assert body.reason is not None and body.reason.check(ResponseDone)
    # Its transport no longer stands for the connection, which is idle (or
    # serving another request) by now.
    body.transport.stopProducing()  # type: ignore[union-attr]
    assert not up.closed and rig.idle() == 1


# -- backpressure ---------------------------------------------------------------------------


def test_body_consumer_pauses_and_resumes_the_upstream_socket() -> None:
    rig, d, up = started()
    _, body = fetch(rig, up, d, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nab")
    assert body.transport is not None
    body.transport.pauseProducing()  # type: ignore[attr-defined]
    assert up.transport.producerState == "paused"
    body.transport.resumeProducing()  # type: ignore[attr-defined]
    assert up.transport.producerState == "producing"


class PausingCollector(Collector):
    """A consumer whose sink fills at the first bytes (a client already behind)."""

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self.transport.pauseProducing()  # type: ignore[union-attr]


def test_a_consumer_that_pauses_on_the_bytes_read_with_the_head_stays_paused() -> None:
    rig, d, up = started()
    up.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nab")
    response = result(d)
    body = PausingCollector()
    response.deliverBody(body)
    assert body.body == b"ab"
    # deliverBody's own resume (reading waited for a consumer) must not undo
    # the consumer's pause: the upstream would be read without bound.
    assert up.transport.producerState == "paused"
    body.transport.resumeProducing()  # type: ignore[union-attr]
    assert up.transport.producerState == "producing"


def test_a_pause_does_not_outlive_its_response() -> None:
    rig, d, up = started()
    up.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
    response = result(d)
    response.deliverBody(PausingCollector())
    up.respond(b"cd")
    assert up.transport.producerState == "producing"
    # The next response on the pooled connection, delivered later, is read.
    assert rig.idle() == 1
    d = rig.request()
    assert rig.connections == 1
    up.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nef")
    response = result(d)
    body = Collector()
    response.deliverBody(body)
    assert up.transport.producerState == "producing"
    up.respond(b"gh")
    assert body.body == b"efgh"


def test_paused_connection_is_resumed_when_it_goes_back_to_the_pool() -> None:
    rig, d, up = started()
    _, body = fetch(rig, up, d, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
    body.transport.pauseProducing()  # type: ignore[union-attr]
    up.respond(b"cd")
    assert body.reason is not None and body.reason.check(ResponseDone)
    assert up.transport.producerState == "producing"
    assert rig.idle() == 1


class SlowCollector(Collector):
    """A body protocol whose client is slow already: it pauses its producer
    as soon as it gets one (as the downstream channel does when its socket
    buffer is full when the response starts)."""

    def connectionMade(self) -> None:
        super().connectionMade()
        self.transport.pauseProducing()  # type: ignore[union-attr]


def test_a_consumer_paused_from_the_start_keeps_the_socket_paused_with_send() -> None:
    # deliverBody from on_response, inside the read that parsed the head (the
    # forwarder's way).
    rig = Rig()
    slow = SlowCollector()
    rig.client.send(
        EP,
        b"GET",
        b"/x",
        [(b"Host", b"shop.example")],
        None,
        None,
        connect_timeout=5.0,
        response_timeout=30.0,
        on_response=lambda response: response.deliverBody(slow),
        on_error=lambda failure: None,
    )
    up = rig.accept()
    up.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nab")
    assert slow.body == b"ab"
    assert up.transport.producerState == "paused"
    slow.transport.resumeProducing()  # type: ignore[union-attr]
    assert up.transport.producerState == "producing"
    up.respond(b"c" * 98)
    assert slow.reason is not None and slow.reason.check(ResponseDone)
    assert rig.idle() == 1


def test_stopping_the_body_closes_the_connection() -> None:
    rig, d, up = started()
    _, body = fetch(rig, up, d, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nab")
    body.transport.stopProducing()  # type: ignore[union-attr]
    assert up.transport.producerState == "stopped"
    assert up.state == "closed"
    assert body.reason is not None and not body.reason.check(ResponseDone)
    up.respond(b"more")
    up.lose()
    assert body.body == b"ab"
    assert rig.idle() == 0


# -- no body: HEAD, 204, 304 -------------------------------------------------------------------


def test_head_keeps_content_length_and_has_no_body() -> None:
    rig = Rig()
    d, up = rig.begin(b"HEAD")
    response, body = fetch(rig, up, d, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-A: 1\r\n\r\n")
    assert response.length == 0
    assert response.headers.getRawHeaders(b"content-length") == [b"0"]
    assert body.body == b""
    assert body.reason is not None and body.reason.check(ResponseDone)
    assert rig.idle() == 1
    # The next response on the connection parses normally.
    d = rig.request()
    _, body = fetch(rig, up, d, OK)
    assert body.body == b"hi"


def test_head_answer_with_content_length_is_reused() -> None:
    """A HEAD answer's Content-Length describes the GET body (RFC 9112 6.3): no body follows."""
    rig = Rig()
    d, up = rig.begin(b"HEAD")
    response, body = fetch(rig, up, d, b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
    assert response.headers.getRawHeaders(b"content-length") == [b"1234"]
    assert response.length == 0
    assert body.reason is not None and body.reason.check(ResponseDone)
    assert not up.closed and rig.idle() == 1
    d = rig.request()
    _, body = fetch(rig, up, d, OK)
    assert body.body == b"hi"


def test_body_sent_with_a_head_answer_closes_the_connection() -> None:
    rig = Rig()
    d, up = rig.begin(b"HEAD")
    smuggled = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nevil!"
    response, body = fetch(rig, up, d, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" + smuggled)
    assert response.code == 200 and body.body == b""
    assert up.state == "closed" and rig.idle() == 0


@pytest.mark.parametrize("code", [204, 304])
def test_no_body_statuses(code: int) -> None:
    rig, d, up = started()
    response, body = fetch(rig, up, d, b"HTTP/1.1 %d X\r\nETag: e\r\n\r\n" % code)
    assert response.code == code and response.length == 0
    assert body.reason is not None and body.reason.check(ResponseDone)
    assert rig.idle() == 1


def test_no_body_status_with_bytes_after_it_closes_the_connection() -> None:
    rig, d, up = started()
    response, body = fetch(rig, up, d, b"HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\nhi")
    assert response.code == 204 and body.body == b""
    assert up.state == "closed" and rig.idle() == 0


# -- interim responses ------------------------------------------------------------------------


def test_interim_responses_are_skipped() -> None:
    rig, d, up = started()
    up.respond(b"HTTP/1.1 100 Continue\r\n\r\n")
    no_result(d)
    up.respond(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n")
    no_result(d)
    response, body = fetch(rig, up, d, OK)
    assert response.code == 200
    assert not response.headers.hasHeader(b"link")
    assert body.body == b"hi"
    assert rig.idle() == 1


def test_switching_protocols_is_a_failure() -> None:
    rig, d, up = started()
    up.respond(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
    )
    assert failure(d).check(UpstreamResponseFailed)
    assert up.state == "aborted"


def test_upgrade_advertised_on_a_normal_response_is_fine() -> None:
    """Apache's mod_http2 announces h2c on ordinary HTTP/1.1 responses."""
    rig, d, up = started()
    response, body = fetch(
        rig,
        up,
        d,
        b"HTTP/1.1 200 OK\r\nUpgrade: h2,h2c\r\nConnection: Upgrade\r\nContent-Length: 2\r\n\r\nhi",
    )
    assert body.body == b"hi"
    assert not response.headers.hasHeader(b"upgrade")
    assert rig.idle() == 1


# -- end-to-end headers only ------------------------------------------------------------------------


def test_hop_by_hop_and_connection_named_headers_are_removed() -> None:
    rig, d, up = started()
    response, _ = fetch(
        rig,
        up,
        d,
        b"HTTP/1.1 200 OK\r\nConnection: X-Private, keep-alive\r\nX-Private: secret\r\n"
        b"Keep-Alive: timeout=5\r\nProxy-Connection: x\r\nTE: trailers\r\nTrailer: X-T\r\n"
        b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 2\r\n\r\nhi",
    )
    names = {name.lower() for name, _ in response.headers.getAllRawHeaders()}
    assert names == {b"set-cookie"}
    assert response.headers.getRawHeaders(b"set-cookie") == [b"a=1", b"b=2"]
    assert response.length == 2


# -- responses that must not be trusted ------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        # Framing both ways: the classic desync.
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\nhi",
        # Transfer codings other than exactly chunked.
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        # Chunk framing.
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhi\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhiX0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\nhi\n0\n\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2 \r\nhi\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nhi\r\n",
        # Header syntax.
        b"HTTP/1.1 200 OK\nContent-Length: 2\n\nhi",
        b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\n: x\r\nContent-Length: 2\r\n\r\nhi",
        # A control character in the reason phrase (relayed to the client as it is).
        b"HTTP/1.1 200 O\x00K\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 O\x1b[2JK\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 O\x7fK\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 103 E\x00\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
        # Not HTTP/1.x.
        b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.2 200 OK\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/0.9 200 OK\r\nContent-Length: 2\r\n\r\nhi",
        b"RTSP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi",
        b"ICE/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi",
        b"ICY 200 OK\r\n\r\nhi",
        b"HTTP/1.1 099 Low\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nhi",
        b"garbage\r\n\r\n",
        # A 1xx has no content.
        b"HTTP/1.1 199 Odd\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ],
)
def test_malformed_responses_fail_and_close(answer: bytes) -> None:
    rig, d, up = started()
    up.respond(answer)
    assert failure(d).check(UpstreamResponseFailed)
    assert up.state == "aborted"
    assert rig.idle() == 0


@pytest.mark.parametrize("phrase", [b"", b"OK", b"Very\tOK", b"D\xe9j\xe0 vu"])
def test_a_reason_phrase_of_visible_characters_is_kept(phrase: bytes) -> None:
    rig, d, up = started()
    up.respond(b"HTTP/1.1 200 " + phrase + b"\r\nContent-Length: 0\r\n\r\n")
    assert result(d).phrase == phrase


def test_status_line_checked_across_reads() -> None:
    rig, d, up = started()
    up.respond(b"HTT")
    no_result(d)
    up.respond(b"X/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert failure(d).check(UpstreamResponseFailed)
    assert up.state == "aborted"

    d, up = rig.begin()
    for byte in OK[:9]:
        up.respond(bytes([byte]))
    up.respond(OK[9:])
    assert result(d).code == 200


def test_bad_chunk_after_the_head_truncates_the_body() -> None:
    rig, d, up = started()
    _, body = fetch(rig, up, d, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n")
    up.respond(b"zz\r\n")
    assert body.body == b"hi"
    assert body.reason is not None and body.reason.check(ResponseFailed)
    assert up.state == "aborted" and rig.idle() == 0


def test_a_big_first_read_with_head_and_body_is_not_an_oversized_head() -> None:
    # One read can bring the head and far more than MAX_HEAD_BYTES of body
    # (the client reads READ_SIZE, 128 KiB, at a time): only the head counts.
    rig, d, up = started()
    size = 4 * MAX_HEAD_BYTES
    response, body = fetch(
        rig, up, d, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size
    )
    assert response.code == 200
    assert body.body == b"x" * size
    assert body.reason is not None and body.reason.check(ResponseDone)


def test_oversized_head_fails() -> None:
    rig, d, up = started()
    up.respond(b"HTTP/1.1 200 OK\r\n")
    line = b"X-Big: " + b"a" * 1000 + b"\r\n"
    for _ in range(MAX_HEAD_BYTES // len(line) + 1):
        up.respond(line)
        if up.closed:
            break
    assert failure(d).check(UpstreamResponseFailed)
    assert up.state == "aborted"


def test_endless_trailers_fail() -> None:
    rig, d, up = started()
    _, body = fetch(rig, up, d, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: ")
    for _ in range(3 * MAX_HEAD_BYTES // 4096):
        up.respond(b"a" * 4096)
        if up.closed:
            break
    assert up.state == "aborted"
    assert body.reason is not None and body.reason.check(ResponseFailed)


def test_second_response_in_the_same_read_closes_the_connection() -> None:
    rig, d, up = started()
    response, body = fetch(rig, up, d, OK + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert body.body == b"hi"
    assert body.reason is not None and body.reason.check(ResponseDone)
    assert up.state == "closed" and rig.idle() == 0


def test_bytes_after_a_closing_response_are_ignored() -> None:
    rig, d, up = started()
    _, body = fetch(
        rig, up, d, b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhiXX"
    )
    assert body.body == b"hi"
    assert up.state == "closed"


# -- connecting, timeouts, cancel -------------------------------------------------------------


def test_connect_refused_is_connect_failed() -> None:
    rig = Rig()
    d = rig.request()
    rig.refuse(ConnectionRefusedError())
    f = failure(d)
    assert f.check(UpstreamConnectFailed)
    assert f.value.never_sent


def test_connect_timeout_is_connect_timeout() -> None:
    rig = Rig()
    d = rig.request(connect_timeout=3.0)
    assert rig.reactor.tcpClients[-1][3] == 3.0
    rig.refuse(TimeoutError())
    assert failure(d).check(UpstreamConnectTimeout)


def test_no_head_within_response_timeout_is_upstream_timeout_and_closes() -> None:
    rig = Rig()
    d, up = rig.begin(response_timeout=7.0)
    up.respond(b"HTTP/1.1 200 OK\r\n")
    rig.reactor.advance(6.9)
    no_result(d)
    rig.reactor.advance(0.1)
    assert failure(d).check(UpstreamTimeout)
    assert up.state == "aborted"
    up.lose()
    assert rig.idle() == 0


def test_response_timeout_while_connecting_stops_connecting() -> None:
    rig = Rig()
    d = rig.request(response_timeout=7.0)
    rig.reactor.advance(7.0)
    assert failure(d).check(UpstreamTimeout)
    assert rig.reactor.connectors[-1].stoppedConnecting
    # A connection completing after all is closed at once.
    up = rig.accept()
    assert up.state == "aborted" and up.sent() == b""


def test_response_timeout_stops_once_the_head_arrived() -> None:
    rig = Rig()
    d, up = rig.begin(response_timeout=7.0)
    _, body = fetch(rig, up, d, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
    rig.reactor.advance(60)
    assert not up.closed
    up.respond(b"cd")
    assert body.reason is not None and body.reason.check(ResponseDone)


def test_cancel_while_waiting_for_the_head_closes_the_connection() -> None:
    rig, d, up = started()
    d.cancel()
    assert failure(d).check(CancelledError)
    assert up.state == "aborted"
    up.lose()
    up.respond(OK)
    assert rig.idle() == 0


def test_cancel_while_connecting_stops_connecting() -> None:
    rig = Rig()
    d = rig.request()
    d.cancel()
    assert failure(d).check(CancelledError)
    assert rig.reactor.connectors[-1].stoppedConnecting
    rig.refuse(ConnectionRefusedError())
    assert rig.reactor.getDelayedCalls() == []


def test_connection_lost_before_the_head_is_response_failed() -> None:
    rig, d, up = started()
    up.respond(b"HTTP/1.1 200 OK\r\n")
    up.lose(ConnectionLost())
    f = failure(d)
    assert f.check(UpstreamResponseFailed)
    assert not f.value.never_sent
    assert rig.connections == 1


# -- stale pooled connections -------------------------------------------------------------------


def pooled(rig: Rig) -> Upstream:
    d, up = rig.begin()
    fetch(rig, up, d, OK)
    up.transport.clear()
    assert rig.idle() == 1
    return up


@pytest.mark.parametrize("method", [b"GET", b"PUT", b"DELETE"])
def test_idempotent_request_on_a_stale_pooled_connection_is_retried_once(method: bytes) -> None:
    rig = Rig()
    stale = pooled(rig)
    d = rig.request(method, body=b"data" if method == b"PUT" else None)
    assert stale.sent().startswith(method + b" /x ")
    stale.lose(ConnectionLost())
    no_result(d)
    assert rig.connections == 2
    fresh = rig.accept()
    assert fresh.sent() == stale.sent()
    response, body = fetch(rig, fresh, d, OK)
    assert body.body == b"hi"
    assert rig.idle() == 1


def test_stale_retry_happens_once() -> None:
    rig = Rig()
    stale = pooled(rig)
    d = rig.request()
    stale.lose()
    rig.accept().lose()
    assert failure(d).check(UpstreamResponseFailed)
    assert rig.connections == 2


def test_post_on_a_stale_pooled_connection_is_not_retried() -> None:
    rig = Rig()
    stale = pooled(rig)
    d = rig.request(b"POST", body=b"pay")
    stale.lose()
    assert failure(d).check(UpstreamResponseFailed)
    assert rig.connections == 1


# Part of the status line, past the "HTTP/" prefix or within it, is an answer begun.
@pytest.mark.parametrize("start", [b"HTTP/1.1 2", b"HTT"])
def test_connection_closed_after_response_bytes_is_not_retried(start: bytes) -> None:
    rig = Rig()
    stale = pooled(rig)
    d = rig.request()
    stale.respond(start)
    stale.lose()
    assert failure(d).check(UpstreamResponseFailed)
    assert rig.connections == 1


def test_fresh_connection_lost_is_not_retried() -> None:
    rig = Rig()
    d = rig.request()
    rig.accept().lose()
    assert failure(d).check(UpstreamResponseFailed)
    assert rig.connections == 1


# -- endpoints given by name ----------------------------------------------------------------


@implementer(IHostnameResolver)
class FixedResolver:
    """Resolves every name to ``addresses`` at once (none: the name does not exist)."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses
        self.asked: list[str] = []

    def resolveHostName(
        self,
        resolutionReceiver: Any,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Any = None,
        transportSemantics: str = "TCP",
    ) -> Any:
        self.asked.append(hostName)
        resolutionReceiver.resolutionBegan(None)
        for address in self.addresses:
            resolutionReceiver.addressResolved(IPv4Address("TCP", address, portNumber))
        resolutionReceiver.resolutionComplete()
        return None


@implementer(IReactorPluggableNameResolver)
class ResolvingReactor(MemoryReactorClock):
    def __init__(self, addresses: list[str]) -> None:
        super().__init__()
        self.nameResolver = FixedResolver(addresses)

    def installNameResolver(self, resolver: Any) -> Any:
        old, self.nameResolver = self.nameResolver, resolver
        return old


def test_endpoint_by_name_is_resolved_and_pooled() -> None:
    rig = Rig()
    rig.reactor = ResolvingReactor(["192.0.2.50"])
    rig.client = UpstreamClient(rig.reactor)
    named = Endpoint("app.internal", 8080)
    d = rig.request(endpoint=named, headers={})
    assert rig.reactor.nameResolver.asked == ["app.internal"]
    up = rig.accept()
    assert up.address == ("192.0.2.50", 8080)
    assert b"\r\nHost: app.internal:8080\r\n" in up.sent()
    fetch(rig, up, d, OK)
    assert rig.idle(named) == 1
    rig.request(endpoint=named)
    assert rig.connections == 1


def test_name_that_does_not_resolve_is_connect_failed() -> None:
    rig = Rig()
    rig.reactor = ResolvingReactor([])
    rig.client = UpstreamClient(rig.reactor)
    d = rig.request(endpoint=Endpoint("nowhere.internal", 80))
    assert failure(d).check(UpstreamConnectFailed)
    assert rig.connections == 0


# -- send(): the callback interface the proxy uses --------------------------------------------


class Outcome:
    """Records what send() hands back: responses and failures, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_response(self, response: Any) -> None:
        self.events.append(("response", response))

    def on_error(self, failure: Failure) -> None:
        self.events.append(("error", failure))

    def on_informational(self, code: int, phrase: bytes, fields: list[tuple[bytes, bytes]]) -> None:
        self.events.append(("informational", (code, phrase, fields)))


def send(rig: Rig, outcome: Outcome, method: bytes = b"GET", **kwargs: Any) -> Any:
    return rig.client.send(
        EP,
        method,
        b"/x",
        [(b"Host", b"shop.example")],
        None,
        None,
        connect_timeout=kwargs.get("connect_timeout", 5.0),
        response_timeout=kwargs.get("response_timeout", 30.0),
        on_response=outcome.on_response,
        on_error=outcome.on_error,
        on_informational=outcome.on_informational if kwargs.get("interim") else None,
    )


def test_send_hands_each_interim_response_over_as_it_arrives_then_the_response() -> None:
    rig, outcome = Rig(), Outcome()
    exchange = send(rig, outcome, interim=True)
    up = rig.accept()
    up.respond(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert outcome.events == [("informational", (100, b"Continue", []))]
    up.respond(
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n"
        b"Connection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\r\n" + OK
    )
    kinds = [kind for kind, _ in outcome.events]
    assert kinds == ["informational", "informational", "response"]
    # Hop-by-hop headers (and those Connection names) are not handed on.
    assert outcome.events[1][1] == (
        103,
        b"Early Hints",
        [(b"link", b"Link: </s.css>; rel=preload")],
    )
    response = outcome.events[2][1]
    assert response.code == 200 and not response.headers.hasHeader(b"link")
    assert exchange.on_informational is None  # let go of, as the other callbacks
    assert rig.idle() == 1


def test_send_interim_responses_are_skipped_without_a_callback() -> None:
    rig, outcome = Rig(), Outcome()
    send(rig, outcome)
    rig.accept().respond(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n" + OK)
    assert [kind for kind, _ in outcome.events] == ["response"]


def test_send_interim_callback_is_let_go_of_on_error_and_cancel() -> None:
    rig, outcome = Rig(), Outcome()
    failed = send(rig, outcome, interim=True)
    rig.refuse(ConnectionRefusedError())
    assert failed.on_informational is None
    cancelled = send(rig, Outcome(), interim=True)
    cancelled.cancel()
    assert cancelled.on_informational is None


def test_send_hands_the_response_to_on_response_once_and_lets_go_of_the_callbacks() -> None:
    rig, outcome = Rig(), Outcome()
    exchange = send(rig, outcome)
    assert exchange.waiting()
    up = rig.accept()
    assert up.sent() == b"GET /x HTTP/1.1\r\nHost: shop.example\r\n\r\n"
    up.respond(OK)
    assert [kind for kind, _ in outcome.events] == ["response"]
    response = outcome.events[0][1]
    body = Collector()
    response.deliverBody(body)
    assert body.body == b"hi"
    assert not exchange.waiting()
    # No reference back to the caller once answered (it holds the exchange).
    assert exchange.on_response is None and exchange.on_error is None
    exchange.cancel()  # too late: harmless
    assert rig.idle() == 1
    # The next send reuses the pooled connection.
    send(rig, outcome)
    assert rig.connections == 1


def test_send_connect_refused_goes_to_on_error() -> None:
    rig, outcome = Rig(), Outcome()
    send(rig, outcome)
    rig.refuse(ConnectionRefusedError())
    assert [kind for kind, _ in outcome.events] == ["error"]
    assert outcome.events[0][1].check(UpstreamConnectFailed)


def test_send_response_timeout_goes_to_on_error_and_closes() -> None:
    rig, outcome = Rig(), Outcome()
    send(rig, outcome, response_timeout=7.0)
    up = rig.accept()
    rig.reactor.advance(6.9)
    assert outcome.events == []
    rig.reactor.advance(0.1)
    assert [kind for kind, _ in outcome.events] == ["error"]
    assert outcome.events[0][1].check(UpstreamTimeout)
    assert up.state == "aborted"


def test_send_cancel_calls_neither_callback_and_closes_the_connection() -> None:
    rig, outcome = Rig(), Outcome()
    exchange = send(rig, outcome)
    up = rig.accept()
    exchange.cancel()
    assert not exchange.waiting()
    assert up.state == "aborted"
    up.respond(OK)
    up.lose()
    rig.reactor.advance(60)
    assert outcome.events == []
    assert rig.idle() == 0
    assert rig.reactor.getDelayedCalls() == []


def test_send_cancel_while_connecting_stops_connecting() -> None:
    rig, outcome = Rig(), Outcome()
    exchange = send(rig, outcome)
    exchange.cancel()
    assert rig.reactor.connectors[-1].stoppedConnecting
    rig.refuse(ConnectionRefusedError())
    assert outcome.events == []
    assert rig.reactor.getDelayedCalls() == []


def test_send_retries_a_stale_pooled_connection_once_with_one_answer() -> None:
    rig, outcome = Rig(), Outcome()
    stale = pooled(rig)
    send(rig, outcome)
    stale.lose(ConnectionLost())
    assert outcome.events == []
    fresh = rig.accept()
    fresh.respond(OK)
    assert [kind for kind, _ in outcome.events] == ["response"]


# -- Content-Length bodies read past llhttp ------------------------------------------------------


def body_reading(rig: Rig, length: int) -> tuple[Upstream, Collector]:
    """A response head announcing ``length`` bytes, with the first 3 of them."""
    d, up = rig.begin()
    up.respond(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\nabc" % length)
    body = Collector()
    result(d).deliverBody(body)
    return up, body


def test_reads_after_the_head_reach_the_body_as_they_are() -> None:
    rig = Rig()
    up, body = body_reading(rig, 3 + 2 * 100_000 + 5)
    middle = [b"m" * 100_000, b"n" * 100_000]
    for chunk in middle:
        up.respond(chunk)
    # Not copied by a parser: the very objects read are passed on.
    assert body.data[1] is middle[0] and body.data[2] is middle[1]
    assert body.reason is None
    up.respond(b"12345")
    assert body.body == b"abc" + b"m" * 100_000 + b"n" * 100_000 + b"12345"
    assert body.reason is not None and body.reason.check(ResponseDone)
    assert rig.idle() == 1


def test_after_a_body_read_past_the_parser_the_next_response_parses_afresh() -> None:
    rig = Rig()
    up, body = body_reading(rig, 10)
    up.respond(b"defg")
    up.respond(b"hij")
    assert body.body == b"abcdefghij"
    assert rig.idle() == 1
    up.transport.clear()
    d = rig.request()
    assert rig.connections == 1
    up.respond(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno")
    response = result(d)
    second = Collector()
    response.deliverBody(second)
    assert response.code == 404
    assert second.body == b"no" and second.reason is not None
    assert second.reason.check(ResponseDone)
    assert rig.idle() == 1


def test_bytes_after_a_body_read_past_the_parser_close_the_connection() -> None:
    rig = Rig()
    up, body = body_reading(rig, 8)
    up.respond(b"defgh" + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert body.body == b"abcdefgh"
    assert body.reason is not None and body.reason.check(ResponseDone)
    assert up.state == "closed"
    assert rig.idle() == 0


def test_body_cut_short_while_read_past_the_parser_is_a_failed_response() -> None:
    rig = Rig()
    up, body = body_reading(rig, 100)
    up.respond(b"x" * 50)
    up.lose(ConnectionLost())
    assert body.body == b"abc" + b"x" * 50
    assert body.reason is not None and body.reason.check(ResponseFailed)
    assert rig.idle() == 0


def test_consumer_closing_mid_body_read_past_the_parser_drops_the_connection() -> None:
    rig = Rig()
    up, body = body_reading(rig, 100)
    assert body.transport is not None
    body.transport.stopProducing()
    assert up.state == "closed"
    up.respond(b"y" * 97)  # late bytes: nobody gets them
    assert body.body == b"abc"
    assert rig.idle() == 0


# -- the response timer of pooled connections ------------------------------------------------------


def test_pooled_connection_times_out_a_missing_head() -> None:
    rig = Rig()
    up = pooled(rig)
    d = rig.request(response_timeout=7.0)
    assert rig.connections == 1
    rig.reactor.advance(6.9)
    no_result(d)
    rig.reactor.advance(0.1)
    assert failure(d).check(UpstreamTimeout)
    assert up.state == "aborted"


def test_each_request_on_a_pooled_connection_gets_its_whole_timeout() -> None:
    rig = Rig()
    up = pooled(rig)
    first = rig.request(response_timeout=7.0)
    rig.reactor.advance(1.0)
    fetch(rig, up, first, OK)
    rig.reactor.advance(5.0)  # t=6: the first deadline (t=7) is near
    second = rig.request(response_timeout=7.0)
    rig.reactor.advance(6.9)  # t=12.9
    no_result(second)
    assert not up.closed
    rig.reactor.advance(0.1)  # t=13
    assert failure(second).check(UpstreamTimeout)


def test_a_shorter_timeout_on_a_pooled_connection_comes_due_on_time() -> None:
    rig = Rig()
    up = pooled(rig)
    fetch(rig, up, rig.request(response_timeout=60.0), OK)
    d = rig.request(response_timeout=2.0)
    rig.reactor.advance(1.9)
    no_result(d)
    rig.reactor.advance(0.1)
    assert failure(d).check(UpstreamTimeout)


def test_a_retry_off_a_stale_pooled_connection_keeps_its_deadline() -> None:
    rig = Rig()
    stale = pooled(rig)
    d = rig.request(response_timeout=7.0)
    rig.reactor.advance(3.0)
    stale.lose(ConnectionLost())
    fresh = rig.accept()
    rig.reactor.advance(3.9)  # t=6.9
    no_result(d)
    rig.reactor.advance(0.1)  # t=7
    assert failure(d).check(UpstreamTimeout)
    assert fresh.state == "aborted"


def test_busy_pooled_connection_keeps_one_response_timer() -> None:
    rig = Rig(idle_timeout=50.0)
    up = pooled(rig)
    before = len(rig.reactor.getDelayedCalls())
    for _ in range(20):
        fetch(rig, up, rig.request(response_timeout=7.0), OK)
        rig.reactor.advance(0.5)
    assert rig.connections == 1
    assert len(rig.reactor.getDelayedCalls()) <= before + 1
    # Long idle: the timer comes due with nothing waiting, and nothing happens.
    rig.reactor.advance(10.0)
    assert not up.closed and rig.idle() == 1


# -- pinned (issue 14): reuse, close, pooling off, abort ---------------------------------------


@pytest.mark.parametrize("code", [204, 304])
def test_pin_no_body_status_announcing_a_body_is_not_reused(code: int) -> None:
    # No body follows a 204 or 304 whatever it announces; a connection whose
    # peer announced one is not trusted with the next request.
    rig, d, up = started()
    response, body = fetch(rig, up, d, b"HTTP/1.1 %d X\r\nContent-Length: 5\r\n\r\n" % code)
    assert (response.code, response.length, body.body) == (code, 0, b"")
    assert body.reason is not None and body.reason.check(ResponseDone)
    assert up.state == "closed" and rig.idle() == 0
    rig.request()
    assert rig.connections == 2


def test_pin_close_leaves_no_timer() -> None:
    rig = Rig()
    first = rig.request()
    up = rig.accept()
    fetch(rig, up, first, OK)
    other = rig.request(endpoint=OTHER)
    fetch(rig, rig.accept(), other, OK)
    # A reused connection keeps its head timer after the head (see watch_head),
    # and the pool its sweep.
    again = rig.request()
    fetch(rig, up, again, OK)
    assert len(rig.reactor.getDelayedCalls()) == 2
    closed = rig.client.close()
    assert rig.reactor.getDelayedCalls() == []
    assert up.state == "closed"
    no_result(closed)


def test_pin_close_with_a_request_in_flight_leaves_no_timer_once_it_ends() -> None:
    rig, d, up = started()
    rig.client.close()
    # The request in flight keeps its response timeout ...
    assert len(rig.reactor.getDelayedCalls()) == 1
    _, body = fetch(rig, up, d, OK)
    assert body.body == b"hi"
    # ... and its connection is closed, not pooled, with no sweep started.
    assert up.state == "closed" and rig.idle() == 0
    assert rig.reactor.getDelayedCalls() == []


def test_pin_max_idle_zero_disables_pooling() -> None:
    rig = Rig(max_idle_per_endpoint=0)
    for n in range(1, 4):
        d, up = rig.begin()
        _, body = fetch(rig, up, d, OK)
        assert body.body == b"hi"
        assert body.reason is not None and body.reason.check(ResponseDone)
        assert rig.connections == n
        assert up.state == "closed" and rig.idle() == 0
        assert rig.reactor.getDelayedCalls() == []


def test_pin_cancel_before_the_head_aborts_the_connection() -> None:
    rig, d, up = started()
    d.cancel()
    assert failure(d).check(CancelledError)
    assert up.state == "aborted"
    assert rig.reactor.getDelayedCalls() == []


def test_pin_cancel_while_the_request_body_is_sent_aborts_the_connection() -> None:
    rig = Rig()
    size = 4 * BODY_CHUNK
    body = CountingFile(size)
    d, up = rig.begin(b"POST", body=body, body_length=size)
    up.transport.producer.resumeProducing()
    d.cancel()
    assert failure(d).check(CancelledError)
    assert up.state == "aborted"
    assert up.transport.producer is None
    assert body.read_total == BODY_CHUNK  # no more of the body is read
    assert rig.reactor.getDelayedCalls() == []


def test_pin_cancel_after_the_head_changes_nothing() -> None:
    # Once the head is in, the body's consumer decides (stopProducing closes:
    # see test_stopping_the_body_closes_the_connection).
    rig, outcome = Rig(), Outcome()
    exchange = send(rig, outcome)
    up = rig.accept()
    up.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
    exchange.cancel()
    assert up.state == "open"
    assert [kind for kind, _ in outcome.events] == ["response"]
