"""
Fuzzing the downstream channel and the proxy path in memory (issue 16,
"Strict paths and targets"): random valid requests and mutations of them
(byte flips; inserted CR, LF, NUL, space or colon; duplicated or conflicting
Content-Length, Transfer-Encoding and Host; obs-fold; huge numbers;
truncation), pipelined and cut into random reads, go through the real
``ProxyChannel``, pipeline and forwarder to backends that read them with h11.

The backends answer with replies drawn too (Content-Length, chunked,
close-delimited, 204 and 304, a 103 first), or mutations of them, and some
clients go away mid-storm.

Properties, for every example: nothing is logged as a failure; whatever
reaches a backend is one well-formed request per message, as a strict
independent parser reads it (tests/fuzzkit.py), and a request sent unmutated
is forwarded once, with its own method and body; the client gets well-formed
responses, every backend reply whole and in order and nothing that names the
backend, and after a 400-class refusal of the request's framing nothing more
and a close; the connection is closed after the keep-alive timeout whatever
was sent, and the listener serves the next client.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogEvent, LogLevel, globalLogPublisher
from twisted.python.failure import Failure

from edgeproxy.config import Cluster, Route, VirtualHost
from edgeproxy.proxy.h1channel import ProxyFactory
from tests.fuzzkit import (
    BACKEND_STATUSES,
    Answer,
    BackendReader,
    Received,
    Reply,
    Request,
    Sent,
    broken_replies,
    forwarding_problems,
    read_responses,
    reads,
    replies,
    sent,
    valid_requests,
)
from tests.memproxy import TCPLikeTransport, connect_client, make_config, proxy_factory

WEB = Cluster("web", endpoints=["10.0.0.1:80"], response_timeout=30.0)
CONFIG = make_config(
    VirtualHost(["shop.example"], routes=[Route("/", WEB), Route("/small/", WEB, max_body_size=10)])
)
#: Refusals of a request that cannot be trusted to be framed right: the
#: connection closes after them.
FRAMING_REFUSALS = {400, 414, 431, 501, 505}

#: A longer campaign of random examples: EDGEPROXY_FUZZ_EXAMPLES=5000.
_CAMPAIGN = int(os.environ.get("EDGEPROXY_FUZZ_EXAMPLES", "0"))
#: By default 400 examples per test (the four tests together run in about
#: 15 s), derandomised: the same examples every run.
FUZZ = settings(
    max_examples=_CAMPAIGN or 400,
    deadline=None,
    derandomize=not _CAMPAIGN,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@contextmanager
def failures_logged() -> Iterator[list[LogEvent]]:
    """Every event logged with a failure, or at warn level or above."""
    events: list[LogEvent] = []

    def observe(event: LogEvent) -> None:
        bad = (LogLevel.warn, LogLevel.error, LogLevel.critical)
        if (
            event.get("log_failure") is not None
            or event.get("isError")
            or event.get("log_level") in bad
        ):
            events.append(event)

    observer = cast(ILogObserver, observe)
    globalLogPublisher.addObserver(observer)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observer)


class Backends:
    """Every upstream connection the proxy opens, accepted at once and read
    by a :class:`BackendReader`, which answers the ``replies`` in turn."""

    def __init__(self, reactor: MemoryReactorClock, replies: Sequence[Reply] = (Reply(),)) -> None:
        self.reactor = reactor
        self.replies = replies
        #: Every reply given, in order.
        self.given: list[Reply] = []
        self.connections: list[tuple[Any, StringTransport, BackendReader, list[int]]] = []

    def _reply(self) -> Reply:
        reply = self.replies[len(self.given) % len(self.replies)]
        self.given.append(reply)
        return reply

    def pump(self) -> None:
        """Run until nothing more happens: accept, read, answer."""
        reactor = self.reactor
        for _ in range(100):
            progress = False
            while len(self.connections) < len(reactor.tcpClients):
                host, port, factory, _timeout, _bind = reactor.tcpClients[len(self.connections)]
                protocol: Any = factory.buildProtocol(IPv4Address("TCP", host, port))
                upstream = TCPLikeTransport()
                protocol.makeConnection(upstream)
                reader = BackendReader(protocol.dataReceived, self._reply)
                self.connections.append((protocol, upstream, reader, [0]))
                progress = True
            for protocol, transport, reader, offset in self.connections:
                data = transport.value()[offset[0] :]
                if data:
                    offset[0] += len(data)
                    reader.feed(data)
                    progress = True
                if (transport.disconnecting or reader.must_close) and not reader.closed:
                    reader.feed(b"")
                    protocol.connectionLost(Failure(ConnectionDone()))
                    progress = True
            reactor.advance(0)
            if not progress:
                return
        raise AssertionError("the proxy and its backends never settle")

    @property
    def received(self) -> list[Received]:
        return [r for _, _, reader, _ in self.connections for r in reader.requests]

    @property
    def problems(self) -> list[str]:
        return [p for _, _, reader, _ in self.connections for p in reader.problems]


def run_client(
    factory: ProxyFactory, backends: Backends, pieces: list[bytes], hang_up: int | None = None
) -> tuple[Any, StringTransport]:
    """One client connection sending ``pieces`` read by read, and going away
    (a reset) after ``hang_up`` of them if given."""
    channel, transport = connect_client(factory)
    for i, piece in enumerate(pieces):
        if i == hang_up:
            break
        if transport.disconnecting:
            break  # the proxy closed: a real client's writes would fail
        channel.dataReceived(piece)
        backends.pump()
    if hang_up is not None:
        # (Also when the proxy was closing: the close completes, or the reset wins.)
        channel.connectionLost(Failure(ConnectionLost("client reset")))
        backends.pump()
    return channel, transport


def check_relayed(answers: list[Answer], backends: Backends) -> None:
    """The client got every backend reply, whole and in order, with nothing
    that names the backend."""
    relayed = [(a.status, a.body) for a in answers if a.status in BACKEND_STATUSES]
    assert relayed == [(r.status, r.sent_body) for r in backends.given]
    for answer in answers:
        assert not answer.names() & {b"server", b"x-powered-by"}, answer.headers


def finish(
    channel: Any, transport: StringTransport, reactor: MemoryReactorClock, backends: Backends
) -> None:
    """Let every timer run out; the proxy must have closed the connection."""
    settings_ = channel.factory.settings
    for _ in range(3):
        reactor.advance(settings_.keepalive_timeout + settings_.lingering_timeout + 1)
        backends.pump()
    assert transport.disconnecting, "the connection is still open after every timeout"
    channel.connectionLost(Failure(ConnectionDone()))
    backends.pump()


def check_served(factory: ProxyFactory, backends: Backends) -> None:
    """A new client of the same listener is served: its request reaches a
    backend, and it gets the backend's reply."""
    before = len(backends.received)
    channel, transport = run_client(
        factory, backends, [b"GET /after?tag=99999 HTTP/1.1\r\nHost: shop.example\r\n\r\n"]
    )
    answers, problems = read_responses(transport.value(), closed=bool(transport.disconnecting))
    assert not problems, problems
    assert [r.target for r in backends.received[before:]] == [b"/after?tag=99999"]
    assert [(a.status, a.body) for a in answers] == [
        (backends.given[-1].status, backends.given[-1].sent_body)
    ]
    channel.connectionLost(Failure(ConnectionDone()))


@dataclass
class Storm:
    """One client connection's requests, the reads they arrive in, the
    backends' replies, and when (if ever) the client goes away."""

    sent: Sent
    pieces: list[bytes]
    replies: list[Reply]
    hang_up: int | None = None


def exercise(storm: Storm) -> None:
    with failures_logged() as failures:
        _exercise(storm)
    assert not failures, failures


def _exercise(storm: Storm) -> None:
    reactor = MemoryReactorClock()
    factory, _pipeline = proxy_factory(reactor, CONFIG)
    backends = Backends(reactor, storm.replies)
    channel, transport = run_client(factory, backends, storm.pieces, storm.hang_up)

    # What the client got so far, while the connection may still be open.
    answers, problems = read_responses(transport.value(), closed=bool(transport.disconnecting))
    assert not problems, problems
    for i, answer in enumerate(answers):
        if answer.status in FRAMING_REFUSALS:
            assert i == len(answers) - 1, "a response after a refusal of framing"
            assert answer.closes() and transport.disconnecting, f"{answer.status} without closing"

    # What reached the backends.
    assert not backends.problems, backends.problems
    mismatches = forwarding_problems(storm.sent, backends.received)
    assert not mismatches, mismatches
    assert all(r.complete for r in backends.received), "a request forwarded in part"

    if storm.hang_up is None:
        finish(channel, transport, reactor, backends)
        answers, problems = read_responses(transport.value(), closed=True)
        assert not problems, problems
        check_relayed(answers, backends)
    else:
        backends.pump()
    event(f"answers {sorted({a.status for a in answers})}")
    event(f"forwarded {min(len(backends.received), 2)}+")
    assert not factory.connections.channels
    check_served(factory, backends)


def storm_of(draw: st.DrawFn, sent_: Sent, data: bytes) -> Storm:
    pieces = reads(draw, data)
    hang_up = draw(st.none() | st.integers(0, len(pieces))) if draw(st.booleans()) else None
    return Storm(sent_, pieces, draw(st.lists(replies(), min_size=1, max_size=3)), hang_up)


@st.composite
def storms(draw: st.DrawFn) -> Storm:
    sent_ = draw(sent(max_requests=4, mutate=True))
    return storm_of(draw, sent_, sent_.data)


@FUZZ
@given(storm=storms())
def test_mutated_requests(storm: Storm) -> None:
    exercise(storm)


@st.composite
def noise(draw: st.DrawFn) -> Storm:
    """Random bytes, alone or after a valid request."""
    first = draw(st.lists(valid_requests(0), max_size=1))
    data = b"".join(r.encode() for r in first) + draw(st.binary(min_size=1, max_size=300))
    return storm_of(draw, Sent(first, [data], [True]), data)


@FUZZ
@given(storm=noise())
def test_random_bytes(storm: Storm) -> None:
    exercise(storm)


@st.composite
def valid_pipelines(draw: st.DrawFn) -> Storm:
    sent_ = draw(sent(max_requests=5, mutate=False))
    return Storm(sent_, reads(draw, sent_.data), draw(st.lists(replies(), min_size=1, max_size=3)))


@FUZZ
@given(storm=valid_pipelines())
def test_valid_requests_pipelined(storm: Storm) -> None:
    """Valid requests, pipelined and cut anywhere: each is forwarded once,
    whole and in order, and answered in order, until one whose answer closes
    the connection: a 413, or a close-delimited reply to an HTTP/1.0 client
    (its end is the close)."""
    with failures_logged() as failures:
        _pipelined(storm)
    assert not failures, failures


def _too_large(request: Request) -> bool:
    """Over the /small/ route's max_body_size."""
    path = request.target.removeprefix(b"http://shop.example")
    return path.startswith(b"/small") and len(request.body) > 10


def _pipelined(storm: Storm) -> None:
    requests, replies_ = storm.sent.requests, storm.replies
    # What each request should get, up to the first answer that closes.
    forwarded = 0
    statuses: list[int] = []
    closes = False
    for request in requests:
        if _too_large(request):
            statuses.append(413)
            closes = True
            break
        reply = replies_[forwarded % len(replies_)]
        forwarded += 1
        statuses.append(reply.status)
        # (A chunked reply arrives whole here, in one read: the proxy sends it
        # with a Content-Length.)
        if request.version == b"HTTP/1.0" and reply.framing == "close":
            closes = True
            break

    reactor = MemoryReactorClock()
    factory, _pipeline = proxy_factory(reactor, CONFIG)
    backends = Backends(reactor, replies_)
    channel, transport = run_client(factory, backends, storm.pieces)
    assert not backends.problems, backends.problems
    got = [
        (r.method, r.target.removeprefix(b"http://shop.example"), r.body) for r in backends.received
    ]
    want = [
        (r.method, r.target.removeprefix(b"http://shop.example"), r.body)
        for r in requests[:forwarded]
    ]
    assert got == want
    answers, problems = read_responses(transport.value(), closed=closes)
    assert not problems, problems
    assert [a.status for a in answers] == statuses
    for request, answer in zip(requests, answers, strict=False):
        if request.version == b"HTTP/1.0":
            assert not answer.informational, "a 1xx to an HTTP/1.0 client"
    check_relayed(answers, backends)
    assert bool(transport.disconnecting) == closes
    finish(channel, transport, reactor, backends)
    check_served(factory, backends)


#: h11's words for a response whose framing was not finished at the close.
_CUT_SHORT = "peer closed connection without sending complete message body"


@st.composite
def broken_backends(draw: st.DrawFn) -> Storm:
    sent_ = draw(sent(max_requests=2, mutate=False))
    return Storm(
        sent_, reads(draw, sent_.data), draw(st.lists(broken_replies(), min_size=1, max_size=2))
    )


@FUZZ
@given(storm=broken_backends())
def test_broken_backends(storm: Storm) -> None:
    """Backends that answer mutated replies: the client gets well-formed
    responses (a 502 for what is malformed), but for the last, which is cut
    short by the close when a backend broke off mid-body (the client sees
    its framing unfinished); the listener serves on."""
    with failures_logged() as failures:
        reactor = MemoryReactorClock()
        factory, _pipeline = proxy_factory(reactor, CONFIG)
        backends = Backends(reactor, storm.replies)
        channel, transport = run_client(factory, backends, storm.pieces)
        finish(channel, transport, reactor, backends)
        answers, problems = read_responses(transport.value(), closed=True)
        problems = [p for p in problems if _CUT_SHORT not in p]
        assert not problems, problems
        for answer in answers:
            assert not answer.names() & {b"server", b"x-powered-by"}, answer.headers
        event(f"answers {sorted({a.status for a in answers})}")
        assert not factory.connections.channels
        backends.replies = (Reply(),)
        check_served(factory, backends)
    assert not failures, failures
