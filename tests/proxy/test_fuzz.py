"""
Fuzzing the downstream channel and the proxy path in memory (issue 16,
"Strict paths and targets"): random valid requests and mutations of them
(byte flips; inserted CR, LF, NUL, space or colon; duplicated or conflicting
Content-Length, Transfer-Encoding and Host; obs-fold; huge numbers;
truncation), pipelined and cut into random reads, go through the real
``ProxyChannel``, pipeline and forwarder to backends that read them with h11.

Properties, for every example: nothing is logged as a failure; whatever
reaches a backend is one well-formed request per message, as a strict
independent parser reads it (tests/fuzzkit.py), and a request sent unmutated
is forwarded with its own method and body; the client gets well-formed
responses, and after a 400-class refusal of the request's framing the
connection closes; the connection is closed after the keep-alive timeout
whatever was sent, and the listener serves the next client.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogEvent, LogLevel, globalLogPublisher
from twisted.python.failure import Failure

from edgeproxy.config import Cluster, Route, VirtualHost
from edgeproxy.proxy.h1channel import ProxyFactory
from tests.fuzzkit import (
    BackendReader,
    Received,
    Sent,
    forwarding_problems,
    read_responses,
    reads,
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

#: Examples per test: the three tests together run in well under 20 s.
FUZZ = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
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
    """Every upstream connection the proxy opens, accepted at once and
    answered 200 by a :class:`BackendReader`."""

    def __init__(self, reactor: MemoryReactorClock) -> None:
        self.reactor = reactor
        self.connections: list[tuple[Any, StringTransport, BackendReader, list[int]]] = []

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
                reader = BackendReader(protocol.dataReceived)
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
    factory: ProxyFactory, backends: Backends, pieces: list[bytes]
) -> tuple[Any, StringTransport]:
    """One client connection sending ``pieces`` read by read."""
    channel, transport = connect_client(factory)
    for piece in pieces:
        if transport.disconnecting:
            break  # the proxy closed: a real client's writes would fail
        channel.dataReceived(piece)
        backends.pump()
    return channel, transport


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
    """A new client of the same listener is served."""
    before = len(backends.received)
    channel, transport = run_client(
        factory, backends, [b"GET /after?tag=99999 HTTP/1.1\r\nHost: shop.example\r\n\r\n"]
    )
    answers, problems = read_responses(transport.value(), closed=False)
    assert not problems, problems
    assert [a.status for a in answers] == [200]
    assert [r.target for r in backends.received[before:]] == [b"/after?tag=99999"]
    channel.connectionLost(Failure(ConnectionDone()))


def exercise(sent_: Sent, pieces: list[bytes]) -> None:
    with failures_logged() as failures:
        _exercise(sent_, pieces)
    assert not failures, failures


def _exercise(sent_: Sent, pieces: list[bytes]) -> None:
    reactor = MemoryReactorClock()
    factory, _pipeline = proxy_factory(reactor, CONFIG)
    backends = Backends(reactor)
    channel, transport = run_client(factory, backends, pieces)

    # What the client got so far, while the connection may still be open.
    answers, problems = read_responses(transport.value(), closed=bool(transport.disconnecting))
    assert not problems, problems
    for i, answer in enumerate(answers):
        if answer.status in FRAMING_REFUSALS:
            assert i == len(answers) - 1, "a response after a refusal of framing"
            assert answer.closes() and transport.disconnecting, f"{answer.status} without closing"

    # What reached the backends.
    assert not backends.problems, backends.problems
    mismatches = forwarding_problems(sent_, backends.received)
    assert not mismatches, mismatches
    assert all(r.complete for r in backends.received), "a request forwarded in part"

    finish(channel, transport, reactor, backends)
    answers, problems = read_responses(transport.value(), closed=True)
    assert not problems, problems
    event(f"answers {sorted({a.status for a in answers})}")
    event(f"forwarded {min(len(backends.received), 2)}+")
    assert not factory.connections.channels
    check_served(factory, backends)


@st.composite
def storms(draw: st.DrawFn) -> tuple[Sent, list[bytes]]:
    sent_ = draw(sent(max_requests=4, mutate=True))
    return sent_, reads(draw, sent_.data)


@FUZZ
@given(example=storms())
def test_mutated_requests(example: tuple[Sent, list[bytes]]) -> None:
    sent_, pieces = example
    exercise(sent_, pieces)


@st.composite
def noise(draw: st.DrawFn) -> tuple[Sent, list[bytes]]:
    """Random bytes, alone or after a valid request."""
    first = draw(st.lists(valid_requests(0), max_size=1))
    data = b"".join(r.encode() for r in first) + draw(st.binary(min_size=1, max_size=300))
    sent_ = Sent(first, [data], [True])
    return sent_, reads(draw, data)


@FUZZ
@given(example=noise())
def test_random_bytes(example: tuple[Sent, list[bytes]]) -> None:
    sent_, pieces = example
    exercise(sent_, pieces)


@st.composite
def valid_pipelines(draw: st.DrawFn) -> tuple[Sent, list[bytes]]:
    sent_ = draw(sent(max_requests=5, mutate=False))
    return sent_, reads(draw, sent_.data)


@FUZZ
@given(example=valid_pipelines())
def test_valid_requests_pipelined(example: tuple[Sent, list[bytes]]) -> None:
    """Valid requests, pipelined and cut anywhere: each is forwarded once,
    whole and in order, and answered in order; the connection stays open."""
    sent_, pieces = example
    with failures_logged() as failures:
        _pipelined(sent_, pieces)
    assert not failures, failures


def _pipelined(sent_: Sent, pieces: list[bytes]) -> None:
    reactor = MemoryReactorClock()
    factory, _pipeline = proxy_factory(reactor, CONFIG)
    backends = Backends(reactor)
    channel, transport = run_client(factory, backends, pieces)
    assert not backends.problems, backends.problems
    # Up to the first 413 (a body over /small/'s limit: the connection
    # closes after it), every request is forwarded.
    cut = next(
        (
            i
            for i, r in enumerate(sent_.requests)
            if r.target.startswith((b"/small", b"http://shop.example/small")) and len(r.body) > 10
        ),
        len(sent_.requests),
    )
    got = [
        (r.method, r.target.removeprefix(b"http://shop.example"), r.body) for r in backends.received
    ]
    want = [
        (r.method, r.target.removeprefix(b"http://shop.example"), r.body)
        for r in sent_.requests[:cut]
    ]
    assert got == want
    answers, problems = read_responses(transport.value(), closed=False)
    assert not problems, problems
    assert [a.status for a in answers] == [200] * cut + [413] * (cut < len(sent_.requests))
    assert bool(transport.disconnecting) == (cut < len(sent_.requests))
    finish(channel, transport, reactor, backends)
    check_served(factory, backends)
