"""The rate-limit stage (edgeproxy.proxy.ratelimit) on the in-memory proxy: 429
with Retry-After past the burst, each client its own bucket, header keys,
nothing forwarded when refused, and a store that answers later or fails
(open: passed on; closed: 503)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.testing import MemoryReactorClock, StringTransport

from edgeproxy.config import Cluster, RateLimit, Route, VirtualHost
from edgeproxy.core.ratelimit import ALLOWED, Decision
from edgeproxy.proxy.h1channel import ProxyFactory
from edgeproxy.proxy.ratelimit import RateLimitStage
from edgeproxy.proxy.stages import AccessRules, BodyLimit
from edgeproxy.ratelimit.registry import RateLimits
from edgeproxy.ratelimit.store import StoreError
from tests.memproxy import make_config, proxy_factory

WEB = Cluster("web", endpoints=["10.0.0.1:80"])
CONFIG = make_config(
    VirtualHost(
        ["shop.example"],
        routes=[
            Route("/open/", WEB),
            Route("/api/", WEB, rate_limit=RateLimit(rate=0.01, burst=2)),
            Route("/keyed/", WEB, rate_limit=RateLimit(rate=0.01, burst=1, key="header:X-Api-Key")),
            Route(
                "/closed/",
                WEB,
                rate_limit=RateLimit(rate=0.01, burst=1, on_store_error="closed"),
                deny=["10.9.9.9"],
            ),
            Route("/plain/", WEB, plain_http=True, rate_limit=RateLimit(rate=0.01, burst=1)),
        ],
    )
)


def connect(factory: ProxyFactory, ip: str = "192.0.2.9") -> tuple[Any, StringTransport]:
    address = IPv4Address("TCP", ip, 5555)
    channel = factory.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    channel.makeConnection(transport)
    return channel, transport


def get(
    factory: ProxyFactory, path: bytes, ip: str = "192.0.2.9", extra: bytes = b""
) -> tuple[bytes, StringTransport]:
    """The answer so far to a GET (b"" while it is forwarded or waits)."""
    channel, transport = connect(factory, ip)
    channel.dataReceived(b"GET %s HTTP/1.1\r\nHost: shop.example\r\n%s\r\n" % (path, extra))
    return transport.value(), transport


def status_line(answer: bytes) -> bytes:
    return answer.split(b"\r\n", 1)[0]


def test_past_the_burst_429_with_retry_after_and_nothing_forwarded() -> None:
    reactor = MemoryReactorClock()
    factory, pipeline = proxy_factory(reactor, CONFIG)
    assert [get(factory, b"/api/x")[0] for _ in range(2)] == [b"", b""]  # forwarded
    assert len(reactor.tcpClients) == 2
    answer, _ = get(factory, b"/api/x")
    assert status_line(answer) == b"HTTP/1.1 429 Too Many Requests"
    # Two tokens taken, one every 100 s: the next in 100 s.
    assert b"\r\nRetry-After: 100\r\n" in answer
    assert answer.endswith(b"\r\n\r\n429 too many requests\n")
    assert len(reactor.tcpClients) == 2
    counters = pipeline.rate_limits.counters_for("shop.example/api/")
    assert (counters.allowed, counters.limited) == (2, 1)
    # Another client is served; a route without a limit is not limited.
    assert get(factory, b"/api/x", ip="192.0.2.10")[0] == b""
    assert get(factory, b"/open/x")[0] == b""
    # Later, the bucket has room again.
    reactor.advance(100)
    assert get(factory, b"/api/x")[0] == b""


def test_the_plain_and_tls_listeners_share_a_route_s_buckets() -> None:
    reactor = MemoryReactorClock()
    tls_factory, pipeline = proxy_factory(reactor, CONFIG)
    plain_factory = ProxyFactory(
        pipeline,
        tls=False,
        settings=tls_factory.settings,
        access_log=tls_factory.access_log,
        clock=reactor,
    )
    assert get(tls_factory, b"/plain/x")[0] == b""
    assert status_line(get(plain_factory, b"/plain/x")[0]) == b"HTTP/1.1 429 Too Many Requests"


def test_a_header_key_limits_each_value_and_not_requests_without_it() -> None:
    reactor = MemoryReactorClock()
    factory, pipeline = proxy_factory(reactor, CONFIG)
    one, two = b"X-Api-Key: one\r\n", b"x-api-key: two\r\n"
    assert get(factory, b"/keyed/x", extra=one)[0] == b""
    assert status_line(get(factory, b"/keyed/x", extra=one)[0]).endswith(b" 429 Too Many Requests")
    # The same key from another address is the same client.
    assert b" 429 " in get(factory, b"/keyed/x", ip="192.0.2.10", extra=one)[0]
    assert get(factory, b"/keyed/x", extra=two)[0] == b""
    for _ in range(3):
        assert get(factory, b"/keyed/x")[0] == b""  # no key: not limited
    long_key = b"X-Api-Key: " + b"k" * 5000 + b"\r\n"
    assert get(factory, b"/keyed/x", extra=long_key)[0] == b""
    assert b" 429 " in get(factory, b"/keyed/x", extra=long_key)[0]
    counters = pipeline.rate_limits.counters_for("shop.example/keyed/")
    assert (counters.allowed, counters.limited, counters.unkeyed) == (3, 3, 3)
    assert len(pipeline.rate_limits.store) == 3  # type: ignore[arg-type]


def test_a_header_value_is_never_a_key_name_only_its_digest() -> None:
    import hashlib

    _, factory, store, _ = later_proxy()
    secret = b"sk_live_0123456789abcdef"  # short: values up to 64 bytes were kept as they were
    get(factory, b"/keyed/x", extra=b"X-Api-Key: " + secret + b"\r\n")
    get(factory, b"/keyed/x", extra=b"X-Api-Key: " + b"k" * 5000 + b"\r\n")
    # The client's address is kept as it is: readable keys help operators.
    get(factory, b"/api/x")
    assert store.keys == [
        "shop.example/keyed/:#" + hashlib.blake2b(secret, digest_size=16).hexdigest(),
        "shop.example/keyed/:#" + hashlib.blake2b(b"k" * 5000, digest_size=16).hexdigest(),
        "shop.example/api/:192.0.2.9",
    ]


def test_the_stage_comes_after_the_access_rules_and_before_the_body_limit() -> None:
    _, pipeline = proxy_factory(MemoryReactorClock(), CONFIG)
    routes = {r.prefix: r for r in CONFIG.virtual_hosts[0].routes}
    tls_chains, plain_chains = pipeline.plan.chains[True], pipeline.plan.chains[False]
    assert [type(s) for s in tls_chains[id(routes["/closed/"])].stages[:3]] == [
        AccessRules,
        RateLimitStage,
        BodyLimit,
    ]
    assert type(tls_chains[id(routes["/open/"])].stages[0]) is BodyLimit
    # A chain that only redirects to https takes no token.
    assert not any(isinstance(s, RateLimitStage) for s in plain_chains[id(routes["/api/"])].stages)


def test_a_refused_body_is_not_read() -> None:
    reactor = MemoryReactorClock()
    factory, _ = proxy_factory(reactor, CONFIG)
    for _ in range(2):
        get(factory, b"/api/x")
    channel, transport = connect(factory)
    channel.dataReceived(b"POST /api/x HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 9\r\n\r\n")
    assert status_line(transport.value()) == b"HTTP/1.1 429 Too Many Requests"
    assert b"Connection: close" in transport.value()


class LaterStore:
    """A store that answers when told to (as Redis does), or fails."""

    name = "later"

    def __init__(self) -> None:
        self.pending: list[Deferred[Decision]] = []
        self.failing = False
        self.keys: list[str] = []

    def decide(self, key: str, rate: float, burst: int) -> Deferred[Decision]:
        self.keys.append(key)
        if self.failing:
            return fail(StoreError("down"))
        d: Deferred[Decision] = Deferred()
        self.pending.append(d)
        return d

    def figures(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        pass


def later_proxy() -> tuple[MemoryReactorClock, ProxyFactory, LaterStore, RateLimits]:
    reactor = MemoryReactorClock()
    store = LaterStore()
    rate_limits = RateLimits(store)
    factory, _ = proxy_factory(reactor, CONFIG, rate_limits=rate_limits)
    return reactor, factory, store, rate_limits


def test_a_request_waits_in_its_turn_for_a_later_decision() -> None:
    reactor, factory, store, _ = later_proxy()
    answer, transport = get(factory, b"/api/x")
    assert (answer, len(reactor.tcpClients), len(store.pending)) == (b"", 0, 1)
    store.pending[0].callback(ALLOWED)
    assert len(reactor.tcpClients) == 1  # forwarded now
    _, transport = get(factory, b"/api/x")
    store.pending[1].callback(Decision(False, 3.2))
    assert status_line(transport.value()) == b"HTTP/1.1 429 Too Many Requests"
    assert b"\r\nRetry-After: 4\r\n" in transport.value()
    # Answered in its turn: the connection stays open.
    assert b"Connection: close" not in transport.value()
    assert not transport.disconnecting


def test_a_later_decision_that_comes_before_the_turn() -> None:
    reactor, factory, store, _ = later_proxy()
    channel, transport = connect(factory)
    head = b"POST /api/x HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 4\r\n\r\n"
    channel.dataReceived(head)
    store.pending[0].callback(ALLOWED)  # allowed while the body is on its way
    channel.dataReceived(b"body")
    assert len(reactor.tcpClients) == 1
    channel, transport = connect(factory)
    channel.dataReceived(head)
    store.pending[1].callback(Decision(False, 1.0))  # refused: the body is not read
    assert status_line(transport.value()) == b"HTTP/1.1 429 Too Many Requests"
    channel.dataReceived(b"body")
    assert len(reactor.tcpClients) == 1


def test_a_client_gone_before_the_decision_leaves_nothing_behind() -> None:
    reactor, factory, store, _ = later_proxy()
    channel, _ = connect(factory)
    channel.dataReceived(b"GET /api/x HTTP/1.1\r\nHost: shop.example\r\n\r\n")
    stage = pipeline_stage(factory, "/api/")
    assert len(stage._waits) == 1
    channel.connectionLost(None)
    assert stage._waits == {}
    store.pending[0].callback(ALLOWED)
    assert len(reactor.tcpClients) == 0


def pipeline_stage(factory: ProxyFactory, prefix: str) -> RateLimitStage:
    route = next(r for r in CONFIG.virtual_hosts[0].routes if r.prefix == prefix)
    chain = factory.pipeline.plan.chains[True][id(route)]
    return next(s for s in chain.stages if isinstance(s, RateLimitStage))


def test_a_failing_store_fails_open_or_closed_as_the_route_says() -> None:
    reactor, factory, store, rate_limits = later_proxy()
    store.failing = True
    assert get(factory, b"/api/x")[0] == b""  # open: forwarded
    assert len(reactor.tcpClients) == 1
    answer, _ = get(factory, b"/closed/x")
    assert status_line(answer) == b"HTTP/1.1 503 Service Unavailable"
    assert b"\r\nRetry-After: 1\r\n" in answer
    assert len(reactor.tcpClients) == 1
    assert rate_limits.counters_for("shop.example/api/").failed_open == 1
    assert rate_limits.counters_for("shop.example/closed/").failed_closed == 1
    # While it waits in its turn too.
    store.failing = False
    _, transport = get(factory, b"/closed/x")
    store.pending[0].errback(StoreError("no answer in time"))
    assert status_line(transport.value()) == b"HTTP/1.1 503 Service Unavailable"


def test_a_reload_keeps_the_buckets_of_the_routes_it_keeps() -> None:
    import random

    from edgeproxy.cluster.snapshot import Snapshot

    reactor = MemoryReactorClock()
    factory, pipeline = proxy_factory(reactor, CONFIG)
    for _ in range(2):
        get(factory, b"/api/x")
    # The same route (host and prefix) with another rate: its bucket stays.
    reloaded = make_config(
        VirtualHost(
            ["shop.example"],
            routes=[Route("/api/", WEB, rate_limit=RateLimit(rate=0.02, burst=2))],
        )
    )
    old = pipeline.snapshot
    pipeline.swap(Snapshot.build(reloaded, reactor, random.Random(1), previous=old))
    assert b" 429 " in get(factory, b"/api/x")[0]
    # The bucket is full again at 200 s (two requests at the old 100 s each);
    # at the new rate (50 s a request, burst 2) one fits again at 150 s.
    reactor.advance(149)
    assert b" 429 " in get(factory, b"/api/x")[0]
    reactor.advance(1)
    assert get(factory, b"/api/x")[0] == b""


def rate_limit_scenario(name: str) -> list[str]:
    """The cyclic garbage types of repeated refusals and waits, over
    transports closed as the reactor closes sockets (run in a fresh interpreter)."""
    from twisted.internet.error import ConnectionDone

    from tests.proxy.test_no_cycles import SocketLike, garbage_of

    get_ = b"GET /api/x HTTP/1.1\r\nHost: shop.example\r\n\r\n"
    post = b"POST /api/x HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 4\r\n\r\n"
    if name == "limited":
        reactor, factory, _ = MemoryReactorClock(), None, None
        factory, _ = proxy_factory(reactor, CONFIG)
        store = None
    else:
        reactor, factory, store, _ = later_proxy()

    def client(data: bytes) -> SocketLike:
        address = IPv4Address("TCP", "192.0.2.9", 5555)
        channel: Any = factory.buildProtocol(address)
        transport = SocketLike(reactor, channel, peerAddress=address)
        channel.makeConnection(transport)
        channel.dataReceived(data)
        return transport

    def limited() -> None:
        transport = client(get_)
        reactor.advance(0)
        # A bodiless request refused keeps its connection: the client closes it.
        assert b" 429 " in transport.value() and not transport.closed
        transport.lost(ConnectionDone())
        reactor.advance(0)

    def refused_in_turn() -> None:
        assert store is not None
        transport = client(get_)
        store.pending.pop().callback(Decision(False, 1.0))
        assert b" 429 " in transport.value()
        transport.lost(ConnectionDone())
        reactor.advance(0)

    def refused_before_turn() -> None:
        assert store is not None
        transport = client(post)
        store.pending.pop().callback(Decision(False, 1.0))
        reactor.advance(0)
        assert b" 429 " in transport.value()
        transport.lost(ConnectionDone())
        reactor.advance(0)

    def gone_before_decision() -> None:
        assert store is not None
        transport = client(get_)
        transport.lost(ConnectionDone())
        store.pending.pop().callback(ALLOWED)
        reactor.advance(0)

    if name == "limited":
        for _ in range(2):
            get(factory, b"/api/x")
    steps = {
        "limited": limited,
        "refused_in_turn": refused_in_turn,
        "refused_before_turn": refused_before_turn,
        "gone_before_decision": gone_before_decision,
    }
    return garbage_of(steps[name])


@pytest.mark.parametrize(
    "name", ["limited", "refused_in_turn", "refused_before_turn", "gone_before_decision"]
)
def test_refusals_and_waits_leave_no_cyclic_garbage(name: str) -> None:
    from tests.proxy.test_no_cycles import garbage_in_fresh_interpreter

    found = garbage_in_fresh_interpreter("tests.proxy.test_ratelimit", "rate_limit_scenario", name)
    assert found == []


def test_a_fault_applying_a_later_decision_is_logged_and_answered_500() -> None:
    from twisted.logger import LogEvent, globalLogPublisher

    reactor, factory, store, _ = later_proxy()
    _, transport = get(factory, b"/api/x")
    stage = pipeline_stage(factory, "/api/")
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        stage.next = lambda exchange: 1 / 0  # type: ignore[assignment,misc,return-value]
        store.pending[0].callback(ALLOWED)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert status_line(transport.value()) == b"HTTP/1.1 500 Internal Server Error"
    assert any(e.get("log_format") == "while applying a rate-limit decision" for e in events)
    assert stage._waits == {}


def test_a_fault_before_the_request_s_turn_is_answered_500_in_its_turn() -> None:
    from twisted.logger import LogEvent, globalLogPublisher

    from tests.memproxy import refuse_upstream

    reactor, factory, store, _ = later_proxy()
    channel, transport = connect(factory)
    channel.dataReceived(
        b"GET /open/x HTTP/1.1\r\nHost: shop.example\r\n\r\n"
        b"GET /api/x HTTP/1.1\r\nHost: shop.example\r\n\r\n"
    )
    assert len(reactor.tcpClients) == 1  # the first is being forwarded
    stage = pipeline_stage(factory, "/api/")
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        stage.refusal = lambda result: 1 / 0  # type: ignore[assignment,method-assign,return-value]
        store.pending[0].callback(ALLOWED)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert any(e.get("log_format") == "while applying a rate-limit decision" for e in events)
    # Nothing is written ahead of the first request's answer...
    assert transport.value() == b""
    refuse_upstream(reactor)
    reactor.advance(0)
    # ...and the second's comes after it (without a body to drop, the
    # connection stays open, as for any refusal at head time).
    first, second = transport.value().split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"502 ")
    assert second.startswith(b"500 Internal Server Error\r\n")
    assert not transport.disconnecting
    assert stage._waits == {}
