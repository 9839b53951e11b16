"""
Conformance of the downstream HTTP/1.1 server side, at the byte level.

Every test drives one client connection with ``dataReceived`` and reads what
went back with ``StringTransport.value()``; the upstream side is the memory
reactor's ``tcpClients``, answered by hand.  Nothing here looks at request or
channel objects, so the tests hold for any implementation of the downstream
protocol (``edgeproxy.proxy.h1channel.ProxyChannel`` on httptools/llhttp today).
"""

from __future__ import annotations

import gc
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogEvent, LogLevel, globalLogPublisher
from twisted.python.failure import Failure

from edgeproxy.cluster.snapshot import Snapshot
from edgeproxy.config import Cluster, Route, VirtualHost
from edgeproxy.config.settings import Settings
from edgeproxy.ops.accesslog import AccessLog
from edgeproxy.proxy.forward import Forwarder
from edgeproxy.proxy.h1channel import ProxyFactory
from edgeproxy.proxy.pipeline import Pipeline
from edgeproxy.upstream.h1client import UpstreamClient
from tests.memproxy import make_config

WEB = Cluster("web", endpoints=["10.0.0.1:80"], response_timeout=30.0)
CLIENT = IPv4Address("TCP", "192.0.2.9", 5555)
HOST = b"Host: shop.example\r\n"


# -- a minimal HTTP/1.1 message reader, for what the proxy writes -----------


@dataclass
class Message:
    """A parsed response (to the client) or request (to the upstream)."""

    start: tuple[bytes, bytes, bytes]
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    chunked: bool = False
    #: The framing that delimited the body: "length", "chunked", "close" or "none".
    framing: str = "none"

    @property
    def status(self) -> int:
        return int(self.start[1])

    def values(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def header(self, name: bytes) -> bytes | None:
        values = self.values(name)
        assert len(values) <= 1, f"{name!r} repeated: {values!r}"
        return values[0] if values else None

    def has_token(self, name: bytes, token: bytes) -> bool:
        return any(t.strip().lower() == token for v in self.values(name) for t in v.split(b","))


class Incomplete(AssertionError):
    pass


def _head(data: bytes, pos: int) -> tuple[Message, int]:
    end = data.find(b"\r\n\r\n", pos)
    if end < 0:
        raise Incomplete(f"no complete head at {pos}: {data[pos : pos + 200]!r}")
    lines = data[pos:end].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    assert len(parts) >= 2, f"bad start line {lines[0]!r}"
    start = (parts[0], parts[1], parts[2] if len(parts) > 2 else b"")
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        assert sep and name and name == name.strip() and line[:1] not in b" \t", line
        headers.append((name, value.strip(b" \t")))
    return Message(start, headers), end + 4


def _dechunk(data: bytes, pos: int) -> tuple[bytes, int]:
    body = b""
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            raise Incomplete("chunk size line")
        size_text = data[pos:eol].split(b";", 1)[0].strip()
        assert re.fullmatch(rb"[0-9a-fA-F]+", size_text), f"bad chunk size {size_text!r}"
        size = int(size_text, 16)
        pos = eol + 2
        if size == 0:
            break
        if len(data) < pos + size + 2:
            raise Incomplete("chunk data")
        body += data[pos : pos + size]
        assert data[pos + size : pos + size + 2] == b"\r\n", "chunk not followed by CRLF"
        pos += size + 2
    while True:  # trailer section
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            raise Incomplete("trailers")
        line, pos = data[pos:eol], eol + 2
        if not line:
            return body, pos


def _body(message: Message, data: bytes, pos: int, no_body: bool) -> tuple[int, bool]:
    """Read ``message``'s body from ``data``; returns the new position and
    whether the body runs to the end of the connection."""
    te = message.values(b"transfer-encoding")
    cl = message.values(b"content-length")
    assert not (te and cl), "both Transfer-Encoding and Content-Length"
    if no_body:
        return pos, False
    if te:
        assert [v.lower() for v in te] == [b"chunked"], te
        message.body, pos = _dechunk(data, pos)
        message.chunked = True
        message.framing = "chunked"
        return pos, False
    if cl:
        assert len(cl) == 1 and cl[0].isdigit(), cl
        n = int(cl[0])
        if len(data) < pos + n:
            raise Incomplete("content-length body")
        message.body = data[pos : pos + n]
        message.framing = "length"
        return pos + n, False
    return pos, True


def parse_responses(data: bytes, methods: Sequence[bytes] = ()) -> list[Message]:
    """Every response in ``data``, 1xx included; ``methods`` are the methods of
    the requests answered, in order (GET when not given), for HEAD."""
    responses: list[Message] = []
    pos = 0
    final = 0
    while pos < len(data):
        message, pos = _head(data, pos)
        assert message.start[0] == b"HTTP/1.1", message.start  # whatever the client's version
        responses.append(message)
        status = message.status
        if 100 <= status < 200:
            continue
        method = methods[final] if final < len(methods) else b"GET"
        final += 1
        no_body = method == b"HEAD" or status in (204, 304)
        pos, to_close = _body(message, data, pos, no_body)
        if to_close:
            message.body = data[pos:]
            message.framing = "close"
            pos = len(data)
    return responses


def parse_requests(data: bytes) -> list[Message]:
    """Every request in ``data`` (what the proxy sent upstream)."""
    requests: list[Message] = []
    pos = 0
    while pos < len(data):
        message, pos = _head(data, pos)
        assert message.start[2] == b"HTTP/1.1", message.start
        pos, to_close = _body(message, data, pos, no_body=False)
        if to_close:
            message.framing = "none"
        requests.append(message)
    return requests


def final(responses: list[Message]) -> list[Message]:
    return [r for r in responses if r.status >= 200]


# -- the harness ---------------------------------------------------------------


@dataclass
class Upstream:
    protocol: Any
    transport: StringTransport
    answered: int = 0

    def requests(self) -> list[Message]:
        return parse_requests(self.transport.value())

    @property
    def stopped(self) -> bool:
        """Closed, or stopped as a producer (which closes a TCP transport)."""
        return bool(self.transport.disconnecting) or self.transport.producerState == "stopped"


@dataclass
class Conn:
    """One client connection to a proxy in memory, with its upstreams."""

    settings: Settings = field(default_factory=Settings)
    reactor: MemoryReactorClock = field(default_factory=MemoryReactorClock)
    upstreams: list[Upstream] = field(default_factory=list)
    hide_backend: bool = True
    #: The virtual host's routes (None: "/" and "/small/" to WEB).
    routes: Sequence[Route] | None = None

    def __post_init__(self) -> None:
        routes = self.routes
        if routes is None:
            routes = [Route("/", WEB), Route("/small/", WEB, max_body_size=10)]
        config = make_config(
            VirtualHost(["shop.example"], routes=routes, hide_backend=self.hide_backend)
        )
        rng = random.Random(1)
        pipeline = Pipeline(
            Snapshot.build(config, self.reactor, rng),
            Forwarder(
                UpstreamClient(self.reactor), via=b"1.1 edgeproxy", clock=self.reactor, rng=rng
            ),
            settings=self.settings,
            https_port=lambda: 8443,
        )
        self.factory = ProxyFactory(
            pipeline,
            tls=True,
            settings=self.settings,
            access_log=AccessLog(self.reactor),
            clock=self.reactor,
        )
        self.factory.startFactory()
        protocol = self.factory.buildProtocol(CLIENT)
        assert protocol is not None
        self.protocol: Any = protocol
        self.transport = StringTransport(peerAddress=CLIENT)
        protocol.makeConnection(self.transport)

    # client side

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def out(self) -> bytes:
        return bytes(self.transport.value())

    def responses(self, methods: Sequence[bytes] = ()) -> list[Message]:
        return parse_responses(self.out(), methods)

    @property
    def closing(self) -> bool:
        return bool(self.transport.disconnecting)

    def client_gone(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionLost("client reset")))

    def advance(self, seconds: float) -> None:
        self.reactor.advance(seconds)

    # upstream side

    @property
    def attempts(self) -> int:
        """Upstream connections attempted so far (pooled ones are reused)."""
        return len(self.reactor.tcpClients)

    def connect(self) -> list[Upstream]:
        """Complete every upstream connection attempted so far."""
        while len(self.upstreams) < self.attempts:
            host, port, factory, _timeout, _bind = self.reactor.tcpClients[len(self.upstreams)]
            protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
            assert protocol is not None
            transport = StringTransport()
            protocol.makeConnection(transport)
            self.upstreams.append(Upstream(protocol, transport))
        return self.upstreams

    def upstream_requests(self) -> list[Message]:
        return [r for u in self.connect() for r in u.requests()]

    def waiting_upstream(self) -> Upstream:
        """The upstream connection with a request not answered yet."""
        waiting = [u for u in self.connect() if len(u.requests()) > u.answered]
        assert len(waiting) == 1, f"{len(waiting)} upstream requests waiting"
        return waiting[0]

    def respond(self, data: bytes, *, complete: bool = True) -> Upstream:
        upstream = self.waiting_upstream()
        upstream.protocol.dataReceived(data)
        if complete:
            upstream.answered += 1
        self.reactor.advance(0)
        return upstream

    def upstream_closes(self, upstream: Upstream) -> None:
        upstream.answered += 1
        upstream.protocol.connectionLost(Failure(ConnectionDone()))
        self.reactor.advance(0)


def request(
    method: bytes = b"GET",
    target: bytes = b"/",
    *,
    version: bytes = b"HTTP/1.1",
    headers: bytes = b"",
    body: bytes = b"",
) -> bytes:
    return b"%s %s %s\r\n%s%s\r\n%s" % (method, target, version, HOST, headers, body)


def ok(body: bytes, *, status: bytes = b"200 OK", headers: bytes = b"") -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Length: %d\r\n%s\r\n%s" % (status, len(body), headers, body)


@pytest.fixture
def log_events() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observer)


def logged_errors(events: list[LogEvent]) -> list[LogEvent]:
    gc.collect()  # brings out "Unhandled error in Deferred"
    bad = (LogLevel.warn, LogLevel.error, LogLevel.critical)
    return [
        e
        for e in events
        if e.get("log_failure") is not None or e.get("isError") or e.get("log_level") in bad
    ]


# -- 1. keep-alive -----------------------------------------------------------


def test_two_sequential_requests_on_one_connection() -> None:
    c = Conn()
    c.send(request(target=b"/one"))
    assert c.upstream_requests()[0].start[1] == b"/one"
    c.respond(ok(b"first"))
    c.send(request(target=b"/two"))
    assert [r.start[1] for r in c.upstream_requests()] == [b"/one", b"/two"]
    c.respond(ok(b"second"))
    responses = c.responses()
    assert [(r.status, r.body) for r in responses] == [(200, b"first"), (200, b"second")]
    assert not c.closing


def test_http11_connection_close_is_honoured() -> None:
    c = Conn()
    c.send(request(headers=b"Connection: close\r\n"))
    assert not c.closing
    c.respond(ok(b"bye"))
    [response] = c.responses()
    assert response.body == b"bye"
    assert response.has_token(b"connection", b"close")
    assert c.closing


def test_request_pipelined_after_connection_close_is_not_forwarded() -> None:
    c = Conn()
    c.send(request(target=b"/a", headers=b"Connection: close\r\n") + request(target=b"/b"))
    c.respond(ok(b"a"))
    assert [r.start[1] for r in c.upstream_requests()] == [b"/a"]
    assert [r.body for r in c.responses()] == [b"a"]
    assert c.closing


def test_http10_without_keep_alive_closes_after_response() -> None:
    c = Conn()
    c.send(request(version=b"HTTP/1.0"))
    c.respond(ok(b"hello"))
    [response] = c.responses()
    assert (response.status, response.body) == (200, b"hello")
    assert not response.has_token(b"connection", b"keep-alive")
    assert c.closing


@pytest.mark.parametrize(("version", "via"), [(b"HTTP/1.0", b"1.0 edgeproxy"),
                                             (b"HTTP/1.1", b"1.1 edgeproxy")])
def test_via_names_the_protocol_the_request_came_in(version: bytes, via: bytes) -> None:
    c = Conn()
    c.send(request(version=version))
    [sent] = c.upstream_requests()
    assert sent.values(b"via") == [via]
    assert sent.start[2] == b"HTTP/1.1"  # upstream, always HTTP/1.1


@pytest.mark.parametrize("token", [b"keep-alive", b"Keep-Alive"])
def test_http10_keep_alive_keeps_the_connection_open(token: bytes) -> None:
    # As nginx: an HTTP/1.0 client asking for keep-alive gets it, and is told so.
    c = Conn()
    c.send(request(target=b"/one", version=b"HTTP/1.0", headers=b"Connection: %s\r\n" % token))
    [sent] = c.upstream_requests()
    assert sent.header(b"connection") is None  # hop-by-hop, not forwarded
    c.respond(ok(b"first"))
    [response] = c.responses()
    assert (response.status, response.body) == (200, b"first")
    assert response.has_token(b"connection", b"keep-alive")
    assert not c.closing
    # The next HTTP/1.0 request, without keep-alive, is the last one.
    c.send(request(target=b"/two", version=b"HTTP/1.0"))
    assert [r.start[1] for r in c.upstream_requests()] == [b"/one", b"/two"]
    c.respond(ok(b"second"))
    responses = c.responses()
    assert [r.body for r in responses] == [b"first", b"second"]
    assert not responses[1].has_token(b"connection", b"keep-alive")
    assert c.closing


def test_http10_keep_alive_pipelined_requests() -> None:
    c = Conn()
    keep = b"Connection: keep-alive\r\n"
    c.send(
        request(target=b"/1", version=b"HTTP/1.0", headers=keep)
        + request(target=b"/2", version=b"HTTP/1.0", headers=keep)
    )
    c.respond(ok(b"one"))
    c.respond(ok(b"two"))
    responses = c.responses()
    assert [r.body for r in responses] == [b"one", b"two"]
    assert all(r.has_token(b"connection", b"keep-alive") for r in responses)
    assert not c.closing


HTTP10_KEEP_ALIVE_NO_BODY = {
    "HEAD": (b"HEAD", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    "204": (b"GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
    "304": (b"GET", b"HTTP/1.1 304 Not Modified\r\n\r\n"),
}


@pytest.mark.parametrize(
    ("method", "answer"), HTTP10_KEEP_ALIVE_NO_BODY.values(), ids=HTTP10_KEEP_ALIVE_NO_BODY.keys()
)
def test_http10_keep_alive_response_without_body_keeps_the_connection(
    method: bytes, answer: bytes
) -> None:
    # No body, so nothing needs the close to delimit it.
    c = Conn()
    c.send(request(method, version=b"HTTP/1.0", headers=b"Connection: keep-alive\r\n"))
    c.respond(answer)
    [response] = c.responses([method])
    assert response.has_token(b"connection", b"keep-alive")
    assert c.out().endswith(b"\r\n\r\n")
    assert not c.closing


def test_http10_keep_alive_own_error_keeps_the_connection() -> None:
    c = Conn()
    c.send(
        b"GET / HTTP/1.0\r\nHost: other.example\r\nConnection: keep-alive\r\n\r\n"
        + request(version=b"HTTP/1.0", headers=b"Connection: keep-alive\r\n")
    )
    c.respond(ok(b"x"))
    responses = c.responses()
    assert [r.status for r in responses] == [404, 200]
    assert all(r.has_token(b"connection", b"keep-alive") for r in responses)
    assert not c.closing


@pytest.mark.parametrize(
    "headers", [b"", b"Connection: keep-alive\r\n"], ids=["plain", "keep-alive"]
)
def test_http10_request_with_transfer_encoding_does_not_keep_alive(headers: bytes) -> None:
    # RFC 9112 section 6.1: Transfer-Encoding in an HTTP/1.0 request means the
    # framing is faulty; the server must close.  llhttp refuses it: 400, close.
    c = Conn()
    c.send(
        request(
            b"POST",
            version=b"HTTP/1.0",
            headers=headers + b"Transfer-Encoding: chunked\r\n",
            body=CHUNKS,
        )
    )
    assert c.attempts == 0
    [response] = final(c.responses())
    assert response.status == 400
    assert response.has_token(b"connection", b"close")
    assert not response.has_token(b"connection", b"keep-alive")
    assert c.closing


# -- 2. pipelining -----------------------------------------------------------

PIPELINES = {
    "two GETs": [(b"GET", b"/1", b""), (b"GET", b"/2", b"")],
    "three GETs": [(b"GET", b"/1", b""), (b"GET", b"/2", b""), (b"GET", b"/3", b"")],
    "GET POST HEAD": [(b"GET", b"/1", b""), (b"POST", b"/2", b"xyz"), (b"HEAD", b"/3", b"")],
}


@pytest.mark.parametrize("pipeline", PIPELINES.values(), ids=PIPELINES.keys())
def test_pipelined_requests_answered_in_order_one_at_a_time(
    pipeline: list[tuple[bytes, bytes, bytes]],
) -> None:
    c = Conn()
    c.send(
        b"".join(
            request(m, t, headers=b"Content-Length: %d\r\n" % len(b) if b else b"", body=b)
            for m, t, b in pipeline
        )
    )
    for i, (method, _target, body) in enumerate(pipeline):
        # Only the head-of-line request is upstream...
        sent = c.upstream_requests()
        assert [(r.start[0], r.start[1]) for r in sent] == [(m, t) for m, t, _ in pipeline[: i + 1]]
        assert sent[-1].body == body
        answer = b"answer %d" % i
        if method == b"HEAD":
            c.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n")
        else:
            # ...even while its response is streaming.
            c.respond(ok(answer)[:-3], complete=False)
            assert len(c.upstream_requests()) == i + 1
            c.respond(answer[-3:])
    responses = c.responses([m for m, _, _ in pipeline])
    assert len(responses) == len(pipeline)
    for i, ((method, _, _), response) in enumerate(zip(pipeline, responses, strict=True)):
        assert response.status == 200
        assert response.body == (b"" if method == b"HEAD" else b"answer %d" % i)
    ids = [r.header(b"x-request-id") for r in responses]
    assert ids == [r.header(b"x-request-id") for r in c.upstream_requests()]
    assert not c.closing


def test_request_arriving_mid_response_waits_for_it() -> None:
    c = Conn()
    c.send(request(target=b"/a"))
    c.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\naa", complete=False)
    c.send(request(target=b"/b"))
    assert [r.start[1] for r in c.upstream_requests()] == [b"/a"]
    c.respond(b"aa")
    assert [r.start[1] for r in c.upstream_requests()] == [b"/a", b"/b"]
    c.respond(ok(b"b"))
    assert [r.body for r in c.responses()] == [b"aaaa", b"b"]


def test_pipelined_input_is_held_unparsed_while_reading_goes_on_up_to_a_limit() -> None:
    c = Conn()
    c.send(request(target=b"/1") + request(target=b"/2"))
    c.send(request(target=b"/3"))
    # Still reading (a client that closes is noticed), but only /1 is upstream.
    assert c.transport.producerState == "producing"
    assert [r.start[1] for r in c.upstream_requests()] == [b"/1"]
    c.send(request(b"POST", b"/4", headers=b"Content-Length: 65500\r\n", body=b"x" * 65500))
    assert c.transport.producerState == "paused"  # past MAX_HELD_BYTES
    for i in range(4):
        c.respond(ok(b"%d" % i))
    assert c.transport.producerState == "producing"
    assert [r.start[1] for r in c.upstream_requests()] == [b"/1", b"/2", b"/3", b"/4"]
    assert c.upstream_requests()[3].body == b"x" * 65500
    assert [r.body for r in c.responses()] == [b"0", b"1", b"2", b"3"]
    assert not c.closing


def test_held_input_trickled_a_byte_at_a_time_is_parsed_whole_once_its_turn_comes() -> None:
    c = Conn()
    c.send(request(target=b"/1") + request(target=b"/2"))  # /2 waits: input is held from here
    third = request(b"POST", b"/3", headers=b"Content-Length: 5\r\n", body=b"hello")
    for i in range(len(third)):  # one byte a read: appended to the held input, not re-copied
        c.send(third[i : i + 1])
    assert isinstance(c.protocol._held, bytearray) and bytes(c.protocol._held) == third
    for i in range(3):
        c.respond(ok(b"%d" % i))
    assert [(r.start[1], r.body) for r in c.upstream_requests()] == [
        (b"/1", b""),
        (b"/2", b""),
        (b"/3", b"hello"),
    ]
    assert [r.body for r in c.responses()] == [b"0", b"1", b"2"]


# -- 3. fragmented input -----------------------------------------------------

FRAGMENTED = {
    "content-length": request(b"POST", b"/up?q=1", headers=b"Content-Length: 5\r\n", body=b"hello"),
    "chunked": request(
        b"POST",
        b"/up?q=1",
        headers=b"Transfer-Encoding: chunked\r\n",
        body=b"2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n",
    ),
}


@pytest.mark.parametrize("raw", FRAGMENTED.values(), ids=FRAGMENTED.keys())
def test_request_split_byte_by_byte(raw: bytes) -> None:
    c = Conn()
    for i in range(len(raw)):
        c.send(raw[i : i + 1])
    [sent] = c.upstream_requests()
    assert sent.start == (b"POST", b"/up?q=1", b"HTTP/1.1")
    assert sent.body == b"hello"
    c.respond(ok(b"done"))
    [response] = c.responses()
    assert (response.status, response.body) == (200, b"done")
    # And the connection is still in step: a second request works.
    c.send(request(target=b"/next"))
    c.respond(ok(b"next"))
    assert [r.body for r in c.responses()] == [b"done", b"next"]


def test_leading_empty_line_before_request_is_ignored() -> None:
    # RFC 9112 section 2.2: a server SHOULD ignore at least one empty line before the request-line.
    c = Conn()
    c.send(b"\r\n" + request())
    c.respond(ok(b"x"))
    assert [r.status for r in c.responses()] == [200]


# -- 4. Expect: 100-continue -------------------------------------------------


def test_expect_100_continue_within_limit() -> None:
    c = Conn()
    c.send(request(b"POST", headers=b"Content-Length: 5\r\nExpect: 100-continue\r\n"))
    # The interim response comes before the client sends the body.
    assert c.out() == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert c.upstream_requests() == []
    c.send(b"hello")
    [sent] = c.upstream_requests()
    assert sent.body == b"hello"
    assert sent.header(b"expect") is None
    c.respond(ok(b"created", status=b"201 Created"))
    responses = c.responses()
    assert [r.status for r in responses] == [100, 201]
    assert responses[1].body == b"created"
    assert not c.closing


def test_expect_100_continue_over_limit_is_413_without_100() -> None:
    c = Conn(Settings(max_body_size=16))
    c.send(request(b"POST", headers=b"Content-Length: 17\r\nExpect: 100-continue\r\n"))
    out = c.out()
    assert b"100 Continue" not in out
    [response] = c.responses()
    assert response.status == 413
    assert response.has_token(b"connection", b"close")
    assert c.attempts == 0


def test_expect_100_continue_ignored_for_http10() -> None:
    # RFC 9110 section 10.1.1: a 100-continue expectation in an HTTP/1.0 request is ignored.
    c = Conn()
    c.send(
        request(
            b"POST", version=b"HTTP/1.0", headers=b"Content-Length: 2\r\nExpect: 100-continue\r\n"
        )
    )
    assert c.out() == b""
    c.send(b"hi")
    c.respond(ok(b"ok"))
    assert [r.status for r in c.responses()] == [200]


# -- 5. request bodies -------------------------------------------------------


def test_content_length_body_forwarded_with_content_length() -> None:
    c = Conn()
    c.send(request(b"PUT", b"/doc", headers=b"Content-Length: 11\r\n", body=b"hello world"))
    [sent] = c.upstream_requests()
    assert sent.header(b"content-length") == b"11"
    assert sent.header(b"transfer-encoding") is None
    assert sent.body == b"hello world"


def test_chunked_upload_forwarded_dechunked_with_content_length() -> None:
    c = Conn()
    c.send(request(b"POST", headers=b"Transfer-Encoding: chunked\r\n"))
    c.send(b"5;ext=1\r\nhello\r\n")
    assert c.attempts == 0  # request buffering: nothing goes upstream before the body is in
    c.send(b"6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
    [sent] = c.upstream_requests()
    assert sent.header(b"transfer-encoding") is None
    assert sent.header(b"content-length") == b"11"
    assert sent.body == b"hello world"
    assert not sent.chunked


def test_empty_post_forwarded_with_content_length_zero() -> None:
    c = Conn()
    c.send(request(b"POST", headers=b"Content-Length: 0\r\n"))
    [sent] = c.upstream_requests()
    assert sent.header(b"content-length") == b"0"
    assert sent.body == b""
    c.respond(ok(b""))
    assert [r.status for r in c.responses()] == [200]


OVER_LIMIT = {
    "content-length": (b"Content-Length: 17\r\n", b"x" * 17),
    "chunked": (b"Transfer-Encoding: chunked\r\n", b"9\r\nxxxxxxxxx\r\n8\r\nxxxxxxxx\r\n0\r\n\r\n"),
}


@pytest.mark.parametrize(("headers", "body"), OVER_LIMIT.values(), ids=OVER_LIMIT.keys())
def test_body_over_max_body_size_is_413_and_close(headers: bytes, body: bytes) -> None:
    settings = Settings(max_body_size=16)
    c = Conn(settings)
    c.send(request(b"POST", headers=headers, body=body[:12]))
    c.send(body[12:])
    [response] = c.responses()
    assert response.status == 413
    assert response.has_token(b"connection", b"close")
    assert c.attempts == 0
    # Closed once the body is read (or after the lingering time).
    c.advance(settings.lingering_timeout)
    assert c.closing


def test_body_at_max_body_size_is_forwarded() -> None:
    c = Conn(Settings(max_body_size=16))
    c.send(request(b"POST", headers=b"Content-Length: 16\r\n", body=b"x" * 16))
    [sent] = c.upstream_requests()
    assert sent.body == b"x" * 16


# -- 6. response framing -------------------------------------------------------

CHUNKED_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
)


def test_content_length_response_relayed_with_content_length() -> None:
    c = Conn()
    c.send(request())
    c.respond(ok(b"0123456789", headers=b"X-A: b\r\n"))
    [response] = c.responses()
    assert response.header(b"content-length") == b"10"
    assert response.header(b"transfer-encoding") is None
    assert response.body == b"0123456789"
    assert response.header(b"x-a") == b"b"


def _respond_in_two_reads(c: Conn, data: bytes) -> None:
    """The head and the first bytes of the body, then the rest: the body streams."""
    cut = data.index(b"\r\n\r\n") + 7
    c.respond(data[:cut], complete=False)
    c.respond(data[cut:])


def test_chunked_response_to_http11_client_is_chunked() -> None:
    c = Conn()
    c.send(request())
    _respond_in_two_reads(c, CHUNKED_RESPONSE)
    [response] = c.responses()
    assert response.chunked
    assert response.header(b"content-length") is None
    assert response.body == b"hello world"
    assert not c.closing
    c.send(request())
    c.respond(ok(b"again"))
    assert [r.body for r in c.responses()] == [b"hello world", b"again"]


@pytest.mark.parametrize("version", [b"HTTP/1.1", b"HTTP/1.0"])
def test_chunked_response_complete_in_one_read_gets_a_length(version: bytes) -> None:
    # The whole body came with the head: the proxy knows its length, so the
    # client gets Content-Length (and an HTTP/1.0 client keeps its connection).
    c = Conn()
    c.send(request(version=version, headers=b"Connection: keep-alive\r\n"))
    c.respond(CHUNKED_RESPONSE)
    [response] = c.responses()
    assert not response.chunked
    assert response.header(b"content-length") == b"11"
    assert response.body == b"hello world"
    assert not c.closing


@pytest.mark.parametrize(
    "headers", [b"", b"Connection: keep-alive\r\n"], ids=["plain", "keep-alive"]
)
def test_chunked_response_to_http10_client_is_delimited_by_close(headers: bytes) -> None:
    # Even with keep-alive: an HTTP/1.0 client knows no chunking, only the close.
    c = Conn()
    c.send(request(version=b"HTTP/1.0", headers=headers))
    _respond_in_two_reads(c, CHUNKED_RESPONSE)
    [response] = c.responses()
    assert response.header(b"transfer-encoding") is None
    assert response.framing == "close"
    assert response.body == b"hello world"
    assert not response.has_token(b"connection", b"keep-alive")
    assert c.closing


CLIENT_VERSIONS = {
    "1.1": (b"HTTP/1.1", b""),
    "1.0": (b"HTTP/1.0", b""),
    "1.0 keep-alive": (b"HTTP/1.0", b"Connection: keep-alive\r\n"),
}


@pytest.mark.parametrize(
    ("version", "headers"), CLIENT_VERSIONS.values(), ids=CLIENT_VERSIONS.keys()
)
def test_close_delimited_upstream_response_is_relayed_whole(version: bytes, headers: bytes) -> None:
    c = Conn()
    c.send(request(version=version, headers=headers))
    upstream = c.respond(b"HTTP/1.0 200 OK\r\nConnection: close\r\n\r\nhello ", complete=False)
    upstream.protocol.dataReceived(b"world")
    c.upstream_closes(upstream)
    [response] = c.responses()
    assert response.status == 200
    assert response.body == b"hello world"
    if version == b"HTTP/1.1":  # the length is unknown: chunked, and the connection stays
        assert response.framing == "chunked"
        assert not c.closing
    else:  # no chunking for HTTP/1.0: the close it is, whatever the client asked
        assert response.framing == "close"
        assert response.has_token(b"connection", b"close")
        assert not response.has_token(b"connection", b"keep-alive")
        assert c.closing


def test_head_response_has_length_and_no_body() -> None:
    c = Conn()
    c.send(request(b"HEAD"))
    c.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
    [response] = c.responses([b"HEAD"])
    assert response.header(b"content-length") == b"1234"
    assert c.out().endswith(b"\r\n\r\n")
    c.send(request(target=b"/after"))
    c.respond(ok(b"after"))
    responses = c.responses([b"HEAD", b"GET"])
    assert [(r.status, r.body) for r in responses] == [(200, b""), (200, b"after")]
    assert not c.closing


@pytest.mark.parametrize("status", [b"204 No Content", b"304 Not Modified"])
def test_no_body_statuses_keep_the_connection_usable(status: bytes) -> None:
    c = Conn()
    c.send(request())
    c.respond(b'HTTP/1.1 %s\r\nETag: "x"\r\n\r\n' % status)
    [response] = c.responses()
    assert response.status == int(status[:3])
    assert c.out().endswith(b"\r\n\r\n")
    assert response.header(b"transfer-encoding") is None
    c.send(request())
    c.respond(ok(b"next"))
    assert [r.body for r in c.responses()] == [b"", b"next"]
    assert not c.closing


@pytest.mark.parametrize("status", [b"204 No Content", b"304 Not Modified"])
def test_no_body_statuses_get_no_invented_content_length(status: bytes) -> None:
    c = Conn()
    c.send(request())
    c.respond(b'HTTP/1.1 %s\r\nETag: "x"\r\n\r\n' % status)
    [response] = c.responses()
    assert response.header(b"content-length") is None


# -- 7. malformed requests -----------------------------------------------------

POST = b"POST / HTTP/1.1\r\n" + HOST
CHUNKS = b"3\r\nabc\r\n0\r\n\r\n"
GET = b"GET / HTTP/1.1\r\n" + HOST

# Rejected by the parser itself, or for framing that cannot be trusted.
PARSER_400 = {
    "CL and TE": POST + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKS,
    "TE and CL": POST + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n" + CHUNKS,
    "TE identity and CL": POST + b"Transfer-Encoding: identity\r\nContent-Length: 3\r\n\r\nabc",
    "two different CLs": POST + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "CL list": POST + b"Content-Length: 3, 4\r\n\r\nabcd",
    "non-numeric CL": POST + b"Content-Length: abc\r\n\r\n",
    "negative CL": POST + b"Content-Length: -1\r\n\r\n",
    "signed CL": POST + b"Content-Length: +3\r\n\r\nabc",
    "CL overflow": POST + b"Content-Length: 99999999999999999999999\r\n\r\nabc",
    "space before colon": GET + b"X-Foo : bar\r\n\r\n",
    "space in header name": GET + b"X Foo: bar\r\n\r\n",
    "invalid header name char": GET + b"X(Foo): bar\r\n\r\n",
    "header without colon": GET + b"X-Foo\r\n\r\n",
    "empty header name": GET + b": bar\r\n\r\n",
    "NUL in header value": GET + b"X-Foo: a\x00b\r\n\r\n",
    "bare CR in header value": GET + b"X-Foo: a\rb\r\n\r\n",
    "bare LF line ends": b"GET / HTTP/1.1\n" + HOST[:-2] + b"\n\n",
    "request line extra part": b"GET / HTTP/1.1 x\r\n" + HOST + b"\r\n",
    "request line trailing space": b"GET / HTTP/1.1 \r\n" + HOST + b"\r\n",
    "HTTP/0.9 request line": b"GET /\r\n\r\n",
    "control byte in target": b"GET /a\x01b HTTP/1.1\r\n" + HOST + b"\r\n",
    "HTTP/1.2": b"GET / HTTP/1.2\r\n" + HOST + b"\r\n",
    "HTTP/0.9 version": b"GET / HTTP/0.9\r\n" + HOST + b"\r\n",
    "lower-case version": b"GET / http/1.1\r\n" + HOST + b"\r\n",
    "invalid chunk size": POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "negative chunk size": POST + b"Transfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n",
    "chunk data overrun": POST + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
}
# llhttp refuses these methods; one that is not a token is a malformed request line (400).
MALFORMED_METHOD = {
    "invalid method token": b"G(T / HTTP/1.1\r\n" + HOST + b"\r\n",
    "request line leading space": b" GET / HTTP/1.1\r\n" + HOST + b"\r\n",
    "tab in request line": b"GET\t/ HTTP/1.1\r\n" + HOST + b"\r\n",
    "control character in method": b"G\x01T / HTTP/1.1\r\n" + HOST + b"\r\n",
    "NUL after method": b"GET\x00 / HTTP/1.1\r\n" + HOST + b"\r\n",
    "DEL in unknown method": b"FO\x7fO / HTTP/1.1\r\n" + HOST + b"\r\n",
}
# A well-formed method token llhttp does not know: 501 (RFC 9110 15.6.2).
UNKNOWN_METHOD = {
    "lower-case method": b"get / HTTP/1.1\r\n" + HOST + b"\r\n",
    "unregistered method": b"FOO / HTTP/1.1\r\n" + HOST + b"\r\n",
    "prefix of a known method": b"GE / HTTP/1.1\r\n" + HOST + b"\r\n",
}
# Rejected at routing time (edgeproxy's own "400 bad request").
ROUTING_400 = {
    "missing Host": b"GET / HTTP/1.1\r\n\r\n",
    "two Host headers": GET + HOST + b"\r\n",
    "two different Hosts": GET + b"Host: other.example\r\n\r\n",
    "Host with spaces": b"GET / HTTP/1.1\r\nHost: shop example\r\n\r\n",
    "empty Host": b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
    "GET *": b"GET * HTTP/1.1\r\n" + HOST + b"\r\n",
    "relative target": b"GET a/b HTTP/1.1\r\n" + HOST + b"\r\n",
}
# CONNECT, a forward proxy's method, is never passed on, whatever its target:
# in origin form it would reach a backend and turn a pooled connection into a
# tunnel (501, and the connection closes).
CONNECT_501 = {
    "CONNECT authority-form": b"CONNECT shop.example:443 HTTP/1.1\r\n" + HOST + b"\r\n",
    "CONNECT origin-form": b"CONNECT /x HTTP/1.1\r\n" + HOST + b"\r\nGET /next HTTP/1.1\r\n"
    + HOST + b"\r\n",
}
# A transfer coding other than exactly "chunked": 501, as nginx (decoding is the
# origin's job, and the proxy strips Transfer-Encoding when it spools the body).
NOT_IMPLEMENTED_501 = {
    "TE gzip": POST + b"Transfer-Encoding: gzip\r\n\r\n",
    "TE gzip, chunked": POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "TE identity": POST + b"Transfer-Encoding: identity\r\n\r\n",
    "TE GZIP, Chunked": POST + b"Transfer-Encoding: GZIP, Chunked\r\n\r\n0\r\n\r\n",
}
# HTTP/2.0 (and up) on an HTTP/1.1 connection.
VERSION_505 = {
    "HTTP/2.0": b"GET / HTTP/2.0\r\n" + HOST + b"\r\n",
}
MALFORMED = [
    *(pytest.param(raw, (400,), id=name) for name, raw in PARSER_400.items()),
    *(pytest.param(raw, (400,), id=name) for name, raw in ROUTING_400.items()),
    *(pytest.param(raw, (501,), id=name) for name, raw in NOT_IMPLEMENTED_501.items()),
    *(pytest.param(raw, (501,), id=name) for name, raw in CONNECT_501.items()),
    *(pytest.param(raw, (505,), id=name) for name, raw in VERSION_505.items()),
    *(pytest.param(raw, (400,), id=name) for name, raw in MALFORMED_METHOD.items()),
    *(pytest.param(raw, (501,), id=name) for name, raw in UNKNOWN_METHOD.items()),
    # RFC 9112 section 6.3: 400 when chunked is not the final coding (llhttp
    # refuses it before the 501 check sees it).
    pytest.param(
        POST + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        (400,),
        id="TE chunked, gzip",
    ),
    # llhttp stops at the preface before the version is checked: 400, not 505.
    pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", (400,), id="h2 preface"),
    # Two lines make "gzip, chunked": chunked is final, gzip unknown, so 501 as
    # for the one-line list.
    pytest.param(
        POST + b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKS,
        (501,),
        id="TE gzip then TE chunked",
    ),
]


@pytest.mark.parametrize(("raw", "statuses"), MALFORMED)
def test_malformed_request_is_rejected_closed_and_not_forwarded(
    raw: bytes, statuses: tuple[int, ...]
) -> None:
    c = Conn()
    c.send(raw)
    assert c.attempts == 0
    [response] = final(c.responses())
    assert (response.status,) == statuses
    assert response.has_token(b"connection", b"close")
    assert c.closing


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        pytest.param(PARSER_400["CL and TE"], 400, id="400"),
        pytest.param(NOT_IMPLEMENTED_501["TE gzip"], 501, id="501"),
        pytest.param(VERSION_505["HTTP/2.0"], 505, id="505"),
    ],
)
def test_malformed_request_after_a_good_one_is_answered_in_turn(raw: bytes, status: int) -> None:
    c = Conn()
    c.send(request(target=b"/first") + raw + request(target=b"/never"))
    assert c.out() == b""
    c.respond(ok(b"first"))
    responses = final(c.responses())
    assert [r.status for r in responses] == [200, status]
    assert responses[1].has_token(b"connection", b"close")
    assert c.closing
    assert [r.start[1] for r in c.upstream_requests()] == [b"/first"]


@pytest.mark.parametrize("fold", [b" ", b"\t"], ids=["space", "tab"])
def test_obs_fold_is_rejected(fold: bytes) -> None:
    # RFC 9112 section 5.2 lets a server reject with 400 or unfold; llhttp rejects.
    c = Conn()
    c.send(GET + b"X-Foo: bar\r\n" + fold + b"baz\r\nX-Next: 1\r\n\r\n")
    [response] = final(c.responses())
    assert response.status == 400
    assert response.has_token(b"connection", b"close")
    assert c.closing
    assert c.attempts == 0


# llhttp tolerates these; the proxy writes the request line and headers anew,
# so the upstream sees them normalised (no room for a parser disagreement).
LENIENT_REQUEST_LINES = {
    "two spaces before target": b"GET  / HTTP/1.1\r\n",
    "two spaces after target": b"GET /  HTTP/1.1\r\n",
    "three spaces": b"GET   /   HTTP/1.1\r\n",
}


@pytest.mark.parametrize("line", LENIENT_REQUEST_LINES.values(), ids=LENIENT_REQUEST_LINES.keys())
def test_request_line_whitespace_is_normalised(line: bytes) -> None:
    c = Conn()
    c.send(line + HOST + b"\r\n")
    [upstream] = c.connect()
    assert upstream.transport.value().startswith(b"GET / HTTP/1.1\r\nHost: shop.example\r\n")
    c.respond(ok(b"x"))
    assert [r.status for r in c.responses()] == [200]
    assert not c.closing


LENIENT_HEADERS = {
    "no space after colon": b"X-A:b\r\n",
    "tab after colon": b"X-A:\tb\r\n",
    "trailing whitespace": b"X-A: b \t \r\n",
}


@pytest.mark.parametrize("line", LENIENT_HEADERS.values(), ids=LENIENT_HEADERS.keys())
def test_header_whitespace_is_forwarded_well_formed(line: bytes) -> None:
    c = Conn()
    c.send(GET + line + b"X-Next: 1\r\n\r\n")
    [sent] = c.upstream_requests()  # _head refuses a name with whitespace, a line starting with it
    assert sent.header(b"x-a") == b"b"
    assert sent.header(b"x-next") == b"1"


# -- Upgrade (tests/proxy/test_upgrade.py has the tunnel) -------------------------

SMUGGLED = b"GET /smuggled HTTP/1.1\r\n" + HOST + b"\r\n"
UPGRADE = b"Connection: Upgrade\r\nUpgrade: websocket\r\n"


def test_upgrade_request_answered_without_101_is_followed_by_the_next_request() -> None:
    c = Conn()
    c.send(request(target=b"/ws", headers=UPGRADE) + request(target=b"/next"))
    [sent] = c.upstream_requests()
    assert sent.start[1] == b"/ws"
    assert sent.header(b"upgrade") == b"websocket"
    c.respond(ok(b"ws"))
    c.respond(ok(b"next"))
    assert [r.body for r in c.responses()] == [b"ws", b"next"]
    assert [r.start[1] for r in c.upstream_requests()] == [b"/ws", b"/next"]
    assert not c.closing


def test_upgrade_request_answered_by_edgeproxy_keeps_the_connection() -> None:
    # An Upgrade request for an unknown site gets its 404, and the request
    # pipelined after it is still read and answered.
    c = Conn()
    c.send(
        b"GET /ws HTTP/1.1\r\nHost: nowhere.example\r\n" + UPGRADE + b"\r\n"
        + request(target=b"/next")
    )
    c.respond(ok(b"next"))
    assert [r.status for r in c.responses()] == [404, 200]
    assert [r.start[1] for r in c.upstream_requests()] == [b"/next"]
    assert not c.closing


UPGRADE_WITH_BODY = {
    "content-length": request(
        b"POST",
        b"/ws",
        headers=UPGRADE + b"Content-Length: %d\r\n" % len(SMUGGLED),
        body=SMUGGLED,
    ),
    "chunked": request(
        b"POST",
        b"/ws",
        headers=UPGRADE + b"Transfer-Encoding: chunked\r\n",
        body=b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED),
    ),
}


@pytest.mark.parametrize("raw", UPGRADE_WITH_BODY.values(), ids=UPGRADE_WITH_BODY.keys())
def test_upgrade_request_body_is_never_parsed_as_a_request(raw: bytes) -> None:
    c = Conn()
    c.send(raw)
    # Rejected as too odd to frame: 400, nothing forwarded, nothing more read.
    assert c.attempts == 0
    [response] = final(c.responses())
    assert response.status == 400
    assert response.has_token(b"connection", b"close")
    assert c.closing


# -- 8. oversized input --------------------------------------------------------

OVERSIZED = {
    "100 KB header block": GET
    + b"".join(b"X-H%04d: %s\r\n" % (i, b"v" * 90) for i in range(1000))
    + b"\r\n",
    "501 header lines": GET + b"".join(b"X-H%d: v\r\n" % i for i in range(500)) + b"\r\n",
    "600 header lines": GET + b"".join(b"X-H%d: v\r\n" % i for i in range(600)) + b"\r\n",
    "20 KB header line": GET + b"X-Big: " + b"v" * 20_000 + b"\r\n\r\n",
}
LONG_TARGET = b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n" + HOST + b"\r\n"
PIECES = {"at once": 0, "in 1000-byte pieces": 1000}


@pytest.mark.parametrize("piece", PIECES.values(), ids=PIECES.keys())
@pytest.mark.parametrize("raw", OVERSIZED.values(), ids=OVERSIZED.keys())
def test_oversized_head_is_431_closed_and_not_forwarded(raw: bytes, piece: int) -> None:
    c = Conn()
    for i in range(0, len(raw), piece or len(raw)):
        c.send(raw[i : i + (piece or len(raw))])
    [response] = final(c.responses())
    assert response.status == 431
    assert response.has_token(b"connection", b"close")
    assert c.closing
    assert c.attempts == 0


@pytest.mark.parametrize("piece", PIECES.values(), ids=PIECES.keys())
def test_a_target_over_max_request_line_is_414_closed_and_not_forwarded(piece: int) -> None:
    c = Conn()
    for i in range(0, len(LONG_TARGET), piece or len(LONG_TARGET)):
        c.send(LONG_TARGET[i : i + (piece or len(LONG_TARGET))])
    [response] = final(c.responses())
    assert response.status == 414
    assert response.has_token(b"connection", b"close")
    assert c.closing
    assert c.attempts == 0


def test_a_target_of_exactly_8_kib_is_accepted_and_one_byte_more_is_414() -> None:
    c = Conn()
    c.send(b"GET /" + b"a" * (8 * 1024 - 1) + b" HTTP/1.1\r\n" + HOST + b"\r\n")
    [sent] = c.upstream_requests()
    assert len(sent.start[1]) == 8 * 1024
    c = Conn()
    c.send(b"GET /" + b"a" * (8 * 1024) + b" HTTP/1.1\r\n" + HOST + b"\r\n")
    assert [r.status for r in final(c.responses())] == [414]


def _head_of(size: int) -> bytes:
    """A GET whose header block (each line counted as name, value and 4) is ``size`` bytes."""
    counted = len(b"Host") + len(b"shop.example") + 4
    pad = size - counted - len(b"X-Pad") - 4
    return b"GET / HTTP/1.1\r\n" + HOST + b"X-Pad: " + b"v" * pad + b"\r\n\r\n"


def test_a_header_block_of_exactly_16_kib_is_accepted() -> None:
    c = Conn()
    c.send(_head_of(16 * 1024))
    assert len(c.upstream_requests()) == 1


def test_500_header_lines_are_accepted() -> None:
    c = Conn()
    c.send(GET + b"".join(b"X-H%d: v\r\n" % i for i in range(499)) + b"\r\n")
    [sent] = c.upstream_requests()
    assert sent.header(b"x-h498") == b"v"


OVER_16_KIB = {
    "16 KiB + 1 byte": _head_of(16 * 1024 + 1),
    "16 KiB of header values": GET + b"X-Pad: " + b"v" * 16_400 + b"\r\n\r\n",
}


@pytest.mark.parametrize("raw", OVER_16_KIB.values(), ids=OVER_16_KIB.keys())
def test_head_over_16_kib_is_431_whatever_it_is_made_of(raw: bytes) -> None:
    c = Conn()
    c.send(raw)
    assert c.attempts == 0
    [response] = final(c.responses())
    assert response.status == 431
    assert c.closing


def test_whitespace_padding_is_bounded_across_reads() -> None:
    # Whitespace before a value is not counted against the 16 KiB (llhttp
    # strips it before edgeproxy sees the value), but what is buffered for a
    # head still being received is bounded: four times the two bounds, 96 KiB,
    # arriving in pieces is refused.
    c = Conn()
    c.send(GET + b"X-Pad:")
    for _ in range(100):
        c.send(b" " * 1000)
    assert c.attempts == 0
    [response] = final(c.responses())
    assert response.status == 431
    assert c.closing


# -- 9. timeouts -----------------------------------------------------------------

# The deadlines themselves are tested in test_h1channel_deadlines.py.
KEEPALIVE = Settings(
    keepalive_timeout=10.0, header_timeout=10.0, body_timeout=10.0, body_min_rate=0
)


def test_idle_keepalive_connection_closed_after_timeout() -> None:
    c = Conn(KEEPALIVE)
    c.send(request())
    c.respond(ok(b"x"))
    c.advance(9.9)
    assert not c.closing
    c.advance(0.2)
    assert c.closing


def test_fresh_connection_without_request_closed_after_timeout() -> None:
    c = Conn(KEEPALIVE)
    c.advance(9.9)
    assert not c.closing
    c.advance(0.2)
    assert c.closing
    assert c.attempts == 0


STALLED = {
    "half a head": b"GET / HTTP/1.1\r\nHost: shop.exa",
    "head without blank line": GET,
    "half a body": POST + b"Content-Length: 10\r\n\r\nhello",
    "half a chunked body": POST + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
}


@pytest.mark.parametrize("raw", STALLED.values(), ids=STALLED.keys())
def test_stalled_request_is_408_after_its_timeout(raw: bytes) -> None:
    c = Conn(KEEPALIVE)
    c.send(raw)
    c.advance(9.9)
    assert not c.closing
    c.advance(0.2)
    assert c.closing
    assert c.attempts == 0
    [response] = c.responses()
    assert response.status == 408
    assert response.has_token(b"connection", b"close")


def test_request_waiting_for_upstream_is_not_cut_by_keepalive_timeout() -> None:
    # keep-alive 10 s, the cluster's response timeout 30 s: the upstream has 30 s.
    c = Conn(KEEPALIVE)
    c.send(request())
    assert len(c.upstream_requests()) == 1
    c.advance(25)
    assert not c.closing
    assert c.out() == b""
    c.respond(ok(b"slow"))
    [response] = c.responses()
    assert (response.status, response.body) == (200, b"slow")
    assert not c.closing
    # The idle clock starts again after the response.
    c.advance(9.9)
    assert not c.closing
    c.advance(0.2)
    assert c.closing


def test_response_streaming_slowly_is_not_cut_by_keepalive_timeout() -> None:
    c = Conn(KEEPALIVE)
    c.send(request())
    c.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab", complete=False)
    c.advance(25)  # within the cluster's idle_timeout (60 s)
    assert not c.closing
    c.respond(b"cd")
    assert [r.body for r in c.responses()] == [b"abcd"]
    assert not c.closing


# -- 10. request id ----------------------------------------------------------------

_ID = re.compile(rb"[\x21-\x7e]{1,200}")


def test_response_and_upstream_request_carry_the_same_request_id() -> None:
    c = Conn()
    c.send(request())
    [sent] = c.upstream_requests()
    upstream_id = sent.header(b"x-request-id")
    assert upstream_id is not None and _ID.fullmatch(upstream_id)
    c.respond(ok(b"x"))
    [response] = c.responses()
    assert response.header(b"x-request-id") == upstream_id


def test_untrusted_client_request_id_is_replaced() -> None:
    c = Conn()
    c.send(request(headers=b"X-Request-Id: mine\r\n"))
    [sent] = c.upstream_requests()
    c.respond(ok(b"x", headers=b"X-Request-Id: upstream-echo\r\n"))
    [response] = c.responses()
    assert sent.values(b"x-request-id") == response.values(b"x-request-id")
    assert sent.header(b"x-request-id") not in (b"mine", b"upstream-echo")


def test_each_request_on_a_connection_gets_its_own_id() -> None:
    c = Conn()
    for _ in range(2):
        c.send(request())
        c.respond(ok(b"x"))
    ids = [r.header(b"x-request-id") for r in c.responses()]
    assert ids == [r.header(b"x-request-id") for r in c.upstream_requests()]
    assert ids[0] != ids[1]


OWN_ERRORS = [
    pytest.param(b"GET / HTTP/1.1\r\nHost: other.example\r\n\r\n", 404, Settings(), id="404"),
    pytest.param(ROUTING_400["two Host headers"], 400, Settings(), id="400 routing"),
    pytest.param(POST + b"Content-Length: 17\r\n\r\n", 413, Settings(max_body_size=16), id="413"),
    pytest.param(PARSER_400["CL and TE"], 400, Settings(), id="400 parser"),
    pytest.param(PARSER_400["bare CR in header value"], 400, Settings(), id="400 header parse"),
    pytest.param(OVERSIZED["600 header lines"], 431, Settings(), id="431"),
    pytest.param(NOT_IMPLEMENTED_501["TE gzip"], 501, Settings(), id="501"),
    pytest.param(VERSION_505["HTTP/2.0"], 505, Settings(), id="505"),
]


@pytest.mark.parametrize(("raw", "status", "settings"), OWN_ERRORS)
def test_own_error_responses_carry_a_request_id(
    raw: bytes, status: int, settings: Settings
) -> None:
    # docs/http.md: the id is returned "on every answer, edgeproxy's own errors included".
    c = Conn(settings)
    c.send(raw)
    [response] = final(c.responses())
    assert response.status == status
    value = response.header(b"x-request-id")
    assert value is not None and _ID.fullmatch(value)


# -- 11. absolute-form targets -------------------------------------------------------

ABSOLUTE = {
    "http": b"http://shop.example/x?y=1",
    "https with port": b"https://SHOP.example:8443/x?y=1",
}


@pytest.mark.parametrize("target", ABSOLUTE.values(), ids=ABSOLUTE.keys())
def test_absolute_form_with_the_same_host_is_routed_and_keeps_host(target: bytes) -> None:
    c = Conn()
    c.send(b"GET %s HTTP/1.1\r\nHost: shop.example\r\n\r\n" % target)
    [sent] = c.upstream_requests()
    assert sent.start == (b"GET", b"/x?y=1", b"HTTP/1.1")
    assert sent.values(b"host") == [b"shop.example"]
    c.respond(ok(b"x"))
    assert [r.status for r in c.responses()] == [200]


@pytest.mark.parametrize(
    "target", [b"http://other.example/x", b"https://evil.example:8443/x?y=1"]
)
def test_absolute_form_whose_host_differs_from_host_is_400(target: bytes) -> None:
    # Two hosts in one request: which one a cache or a backend believes is a
    # routing-confusion and poisoning vector (HAProxy answers 400 too).
    c = Conn()
    c.send(b"GET %s HTTP/1.1\r\n" % target + HOST + b"\r\n")
    [response] = final(c.responses())
    assert response.status == 400
    assert c.attempts == 0 and c.closing


def test_http_1_0_absolute_form_without_host_sends_the_authority_as_host() -> None:
    c = Conn()
    c.send(b"GET http://shop.example/x HTTP/1.0\r\n\r\n")
    [sent] = c.upstream_requests()
    assert sent.values(b"host") == [b"shop.example"]


DOT_SEGMENTS = {
    "..": b"/a/../b",
    ".": b"/a/./b",
    "trailing ..": b"/a/..",
    "%2e%2e": b"/a/%2e%2e/b",
    "%2E.": b"/a/%2E./b",
    "%2f separators": b"/a%2f..%2fadmin",
    "absolute form": b"http://shop.example/a/../b",
    "..; (Tomcat)": b"/public/..;/admin",
    "..%3b": b"/public/..%3B/admin",
    "backslash": b"/public/..\\admin",
    "%5c": b"/public%5c..%5cadmin",
}


@pytest.mark.parametrize("target", DOT_SEGMENTS.values(), ids=DOT_SEGMENTS.keys())
def test_a_dot_segment_in_the_path_is_400_before_routing(target: bytes) -> None:
    c = Conn()
    c.send(b"GET %s HTTP/1.1\r\n" % target + HOST + b"\r\n")
    [response] = final(c.responses())
    assert response.status == 400
    assert c.attempts == 0


@pytest.mark.parametrize(
    "target", [b"/a/.well-known/x", b"/a/..b/c", b"/a/b.", b"/x?next=/../y", b"/%2fa", b"/a/%2e%2e%2e"]
)
def test_dots_that_are_not_dot_segments_pass(target: bytes) -> None:
    c = Conn()
    c.send(b"GET %s HTTP/1.1\r\n" % target + HOST + b"\r\n")
    [sent] = c.upstream_requests()
    assert sent.start[1] == target


# -- 12. client disconnects ------------------------------------------------------------


def test_client_gone_mid_request_body(log_events: list[LogEvent]) -> None:
    c = Conn()
    c.send(request(b"POST", headers=b"Content-Length: 10\r\n", body=b"hello"))
    c.client_gone()
    c.advance(120)
    assert c.attempts == 0
    assert logged_errors(log_events) == []


def test_client_gone_while_waiting_for_upstream(log_events: list[LogEvent]) -> None:
    c = Conn()
    c.send(request())
    [upstream] = c.connect()
    c.client_gone()
    c.advance(0)
    assert upstream.stopped
    upstream.protocol.connectionLost(Failure(ConnectionDone()))
    c.advance(120)
    assert c.out() == b""
    assert logged_errors(log_events) == []


def test_client_gone_mid_response(log_events: list[LogEvent]) -> None:
    c = Conn()
    c.send(request())
    upstream = c.respond(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"a" * 10, complete=False
    )
    c.client_gone()
    c.advance(0)
    assert upstream.stopped
    upstream.protocol.connectionLost(Failure(ConnectionLost()))
    c.advance(120)
    assert c.out().endswith(b"a" * 10)
    assert logged_errors(log_events) == []


def test_client_gone_mid_chunked_response(log_events: list[LogEvent]) -> None:
    c = Conn()
    c.send(request())
    upstream = c.respond(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", complete=False
    )
    c.client_gone()
    c.advance(0)
    assert upstream.stopped
    upstream.protocol.connectionLost(Failure(ConnectionLost()))
    c.advance(120)
    assert logged_errors(log_events) == []


# -- 13. refused methods: 400 unless the method is a token ------------------------------------


@pytest.mark.parametrize(
    ("pieces", "status"),
    [
        pytest.param([b"G\x01T / HTTP/1.1\r\n" + HOST + b"\r\n"], 400, id="control char"),
        pytest.param([b"G", b"\x01", b"T / HTTP/1.1\r\n" + HOST + b"\r\n"], 400, id="split"),
        pytest.param([b"F", b"OO / HTTP/1.1\r\n" + HOST + b"\r\n"], 501, id="token split"),
        pytest.param([b"\r\n\r\nFOO / HTTP/1.1\r\n" + HOST + b"\r\n"], 501, id="after CRLFs"),
    ],
)
def test_refused_method_in_pieces(pieces: list[bytes], status: int) -> None:
    c = Conn()
    for piece in pieces:
        c.send(piece)
    [response] = c.responses()
    assert response.status == status
    assert c.closing and c.attempts == 0


@pytest.mark.parametrize(
    ("first", "second", "status"),
    [
        pytest.param(request(target=b"/first"), b"G\x01T / HTTP/1.1\r\n", 400, id="after GET"),
        pytest.param(request(target=b"/first"), b"FOO / HTTP/1.1\r\n", 501, id="token after GET"),
        # The body's last bytes are not part of the next method, whatever they are.
        pytest.param(
            request(b"POST", b"/first", headers=b"Content-Length: 3\r\n", body=b"x(y"),
            b"FOO / HTTP/1.1\r\n",
            501,
            id="token after a body",
        ),
        pytest.param(
            request(b"POST", b"/first", headers=b"Content-Length: 3\r\n", body=b"ABC"),
            b"G\x01T / HTTP/1.1\r\n",
            400,
            id="control char after a body",
        ),
    ],
)
def test_refused_method_pipelined_in_one_read(first: bytes, second: bytes, status: int) -> None:
    c = Conn()
    c.send(first + second + HOST + b"\r\n")
    c.respond(ok(b"first"))
    assert [r.status for r in c.responses()] == [200, status]
    assert c.closing
    assert [r.start[1] for r in c.upstream_requests()] == [b"/first"]


@pytest.mark.parametrize(
    "reads",
    [
        pytest.param(
            [b"GET /first HTTP/1.1\r\nHo", b"st: shop.example\r\n\r\nBREW / HTTP/1.1\r\n"],
            id="after a head split across reads",
        ),
        pytest.param(
            [
                request(b"POST", b"/first", headers=b"Content-Length: 12\r\n"),
                b"hunter2tokenBREW / HTTP/1.1\r\n",
            ],
            id="after a body that began in an earlier read",
        ),
    ],
)
def test_a_refused_method_that_cannot_be_located_is_400_and_logs_no_guess(
    log_events: list[LogEvent], reads: list[bytes]
) -> None:
    # The read began inside one message and the refused one began after it
    # ended: where exactly is not known, so neither the end of the body (a
    # secret, maybe) nor a header's tail is logged as the method.
    c = Conn()
    for piece in reads:
        c.send(piece)
    c.respond(ok(b"first"))
    assert [r.status for r in c.responses()] == [200, 400]
    refused = access_records(log_events)[-1]
    assert (refused.status, refused.reason, refused.method) == (400, "bad_request_line", "-")
    assert "hunter2" not in repr(access_records(log_events))


# -- 14. every refusal logged with its outcome and reason ---------------------------------------


def access_records(events: list[LogEvent]) -> list[Any]:
    return [e["access"] for e in events if "access" in e]


HUGE = b"X-Big: " + b"a" * 17_000 + b"\r\n"


@pytest.mark.parametrize(
    ("raw", "status", "reason", "method", "path"),
    [
        pytest.param(MALFORMED_METHOD["control character in method"], 400, "bad_request_line",
                     "-", "-", id="control char"),
        pytest.param(b"FOO /a HTTP/1.1\r\n" + HOST + b"\r\n", 501, "method_not_implemented",
                     "FOO", "-", id="unknown method"),
        pytest.param(b"GET /a?b HTTP/1.1\r\n" + HOST + b"X Foo: bar\r\n\r\n", 400, "bad_header",
                     "GET", "/a?b", id="bad header"),
        pytest.param(b"POST /a HTTP/1.1\r\n" + HOST + b"Content-Length: 3\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" + CHUNKS, 400, "bad_framing",
                     "POST", "/a", id="CL and TE"),
        pytest.param(POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "bad_framing",
                     "POST", "/", id="bad chunk"),
        pytest.param(b"GET /a HTTP/1.2\r\n" + HOST + b"\r\n", 400, "bad_request_line",
                     "GET", "/a", id="HTTP/1.2"),
        pytest.param(b"GET /a HTTP/2.0\r\n" + HOST + b"\r\n", 505, "version_not_supported",
                     "GET", "/a", id="HTTP/2.0"),
        pytest.param(NOT_IMPLEMENTED_501["TE gzip"], 501, "coding_not_implemented",
                     "POST", "/", id="TE gzip"),
        pytest.param(ROUTING_400["missing Host"], 400, "bad_host", "GET", "/", id="no Host"),
        pytest.param(ROUTING_400["GET *"], 400, "bad_target", "GET", "*", id="GET *"),
        pytest.param(b"GET /a HTTP/1.1\r\n" + HOST + HUGE + b"\r\n", 431, "header_too_large",
                     "GET", "/a", id="431"),
        pytest.param(b"GET /a HTTP/1.1\r\nHost: elsewhere.example\r\n\r\n", 404,
                     "no_virtual_host", "GET", "/a", id="404"),
    ],
)
def test_refusal_is_logged_with_outcome_reason_method_and_path(
    log_events: list[LogEvent], raw: bytes, status: int, reason: str, method: str, path: str
) -> None:
    c = Conn()
    c.send(raw)
    [response] = c.responses()
    assert response.status == status
    [record] = access_records(log_events)
    assert record.status == status
    assert record.outcome == ("no_route" if status == 404 else "rejected")
    assert record.reason == reason
    assert (record.method, record.path) == (method, path)


def test_body_too_large_is_logged_rejected(log_events: list[LogEvent]) -> None:
    c = Conn(Settings(max_body_size=16))
    c.send(request(b"POST", b"/up", headers=b"Content-Length: 17\r\n"))
    [record] = access_records(log_events)
    assert (record.status, record.outcome, record.reason) == (413, "rejected", "body_too_large")
    assert (record.method, record.path) == ("POST", "/up")


def test_upstream_failures_are_logged_as_upstream_errors(log_events: list[LogEvent]) -> None:
    c = Conn()
    c.send(request(target=b"/refused"))
    c.reactor.tcpClients[0][2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    c.send(request(target=b"/slow"))
    c.connect()
    c.advance(30)
    records = access_records(log_events)
    assert [(r.status, r.outcome, r.reason) for r in records] == [
        (502, "upstream_error", "connect_failed"),
        (504, "upstream_error", "response_timeout"),
    ]


def test_upstream_cut_off_mid_body_is_an_upstream_error_not_a_client_close(
    log_events: list[LogEvent],
) -> None:
    c = Conn()
    c.send(request())
    upstream = c.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc", complete=False)
    c.upstream_closes(upstream)
    assert c.closing
    c.client_gone()  # the connection edgeproxy cut
    [record] = access_records(log_events)
    assert (record.status, record.outcome, record.reason) == (200, "upstream_error", "truncated")


def test_ok_response_has_no_reason(log_events: list[LogEvent]) -> None:
    c = Conn()
    c.send(request())
    c.respond(ok(b"x"))
    [record] = access_records(log_events)
    assert (record.status, record.outcome, record.reason) == (200, "ok", None)


# -- 15. a client that goes away is 499 -----------------------------------------------------------


def test_pipelined_requests_never_answered_are_499_when_the_client_goes(
    log_events: list[LogEvent],
) -> None:
    c = Conn()
    c.send(request(target=b"/a") + request(target=b"/b") + request(target=b"/c"))
    assert len(c.upstream_requests()) == 1
    c.client_gone()
    records = access_records(log_events)
    assert [(r.path, r.status, r.outcome, r.reason, r.attempts) for r in records] == [
        ("/a", 499, "client_closed", "awaiting_response", 1),
        ("/b", 499, "client_closed", "queued", 0),
        ("/c", 499, "client_closed", "queued", 0),
    ]


def test_client_gone_mid_response_or_mid_body_is_499(log_events: list[LogEvent]) -> None:
    c = Conn()
    c.send(request())
    c.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc", complete=False)
    c.client_gone()
    d = Conn()
    d.send(request(b"POST", headers=b"Content-Length: 10\r\n", body=b"hello"))
    d.client_gone()
    records = access_records(log_events)
    assert [(r.status, r.outcome, r.reason) for r in records] == [
        (499, "client_closed", "response_incomplete"),
        (499, "client_closed", "request_incomplete"),
    ]
    assert records[0].upstream_status == 200


def test_request_body_stalled_past_the_timeout_is_408(log_events: list[LogEvent]) -> None:
    c = Conn()
    c.send(request(b"POST", headers=b"Content-Length: 10\r\n", body=b"hello"))
    c.advance(c.factory.body_timeout + 5 / c.factory.body_min_rate)
    assert c.closing
    c.client_gone()  # the close edgeproxy asked for
    [record] = access_records(log_events)
    assert (record.status, record.outcome, record.reason) == (408, "client_timeout", "body_timeout")


def test_request_head_stalled_past_the_timeout_is_408(log_events: list[LogEvent]) -> None:
    c = Conn()
    c.send(b"GET /slow HTTP/1.1\r\nHost: sho")
    c.advance(c.factory.header_timeout)
    assert c.closing
    c.client_gone()
    [record] = access_records(log_events)
    assert (record.method, record.path) == ("GET", "/slow")
    assert (record.status, record.reason) == (408, "header_timeout")


# -- 16. interim (1xx) responses ------------------------------------------------------------------

EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"


def test_early_hints_are_forwarded_at_once_then_the_response() -> None:
    c = Conn()
    c.send(request())
    c.respond(EARLY_HINTS, complete=False)
    assert c.out() == EARLY_HINTS
    c.respond(ok(b"x"))
    responses = c.responses()
    assert [r.status for r in responses] == [103, 200]
    assert responses[1].body == b"x"
    assert not c.closing


def test_interim_response_loses_hop_by_hop_and_framing_headers() -> None:
    c = Conn()
    c.send(request())
    c.respond(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.js>\r\nConnection: X-Hop\r\nX-Hop: 1\r\n"
        b"Keep-Alive: timeout=5\r\nX-Request-Id: upstream-id\r\n\r\n" + ok(b"x")
    )
    hints, final_response = c.responses()
    assert hints.start == (b"HTTP/1.1", b"103", b"Early Hints")
    assert hints.headers == [(b"Link", b"</a.js>")]
    assert final_response.status == 200


def test_interim_responses_are_not_sent_to_http10_clients() -> None:
    c = Conn()
    c.send(request(version=b"HTTP/1.0"))
    c.respond(EARLY_HINTS + ok(b"x"))
    assert [r.status for r in c.responses()] == [200]


def test_upstream_100_continue_is_not_sent_twice() -> None:
    c = Conn()
    c.send(request(b"POST", headers=b"Content-Length: 5\r\nExpect: 100-continue\r\n"))
    c.send(b"hello")
    c.respond(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"done"))
    assert [r.status for r in c.responses()] == [100, 200]


def test_upstream_100_continue_is_forwarded_when_edgeproxy_sent_none() -> None:
    c = Conn()
    c.send(request(b"POST", headers=b"Content-Length: 5\r\n", body=b"hello"))
    c.respond(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"done"))
    assert [r.status for r in c.responses()] == [100, 200]


# -- hidden backends ----------------------------------------------------------------------

REVEALING = (
    b"Server: gunicorn/21\r\nX-Powered-By: PHP/8\r\nX-Kept: yes\r\n"
    b"Location: http://10.0.0.1/login\r\nRefresh: 3; url=http://10.0.0.1:80/r\r\n"
)


def test_the_backend_is_hidden_by_default() -> None:
    c = Conn()
    c.send(request())
    c.respond(ok(b"x", status=b"302 Found", headers=REVEALING))
    [response] = c.responses()
    assert response.values(b"server") == [] and response.values(b"x-powered-by") == []
    assert response.values(b"x-kept") == [b"yes"]
    assert response.values(b"location") == [b"https://shop.example/login"]
    assert response.values(b"refresh") == [b"3; url=https://shop.example/r"]


def test_hide_backend_false_passes_everything_on() -> None:
    c = Conn(hide_backend=False)
    c.send(request())
    c.respond(ok(b"x", status=b"302 Found", headers=REVEALING))
    [response] = c.responses()
    assert response.values(b"server") == [b"gunicorn/21"]
    assert response.values(b"x-powered-by") == [b"PHP/8"]
    assert response.values(b"location") == [b"http://10.0.0.1/login"]
