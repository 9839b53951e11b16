"""The cache stage (edgeproxy.proxy.cache) driven in memory: the real channel,
chain and forwarding over StringTransports, on a MemoryReactorClock, so that
time-dependent behaviour (collapsing's time bound, a background refresh
once per key, freshness running out) is exact and needs no sleeps."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from edgeproxy.cache.store import MemoryStore
from edgeproxy.config import Cache, Cluster, Route, VirtualHost
from edgeproxy.proxy.cache import CacheStage
from edgeproxy.proxy.forward import ForwardStage
from edgeproxy.proxy.stages import BodyLimit
from tests.memproxy import (
    accept_upstream,
    connect_client,
    make_config,
    proxy_factory,
    refuse_upstream,
)
from tests.proxy.test_no_cycles import SocketLike, garbage_in_fresh_interpreter, garbage_of

# No outlier detection: the garbage scenarios fail the same endpoint again and again.
ORIGIN = Cluster("origin", endpoints=["10.0.0.1:80"], outlier_detection=None)
CACHE = Cache(max_bytes=2**21, max_object_bytes=2**20, collapse_timeout=2.0, collapse_max_waiters=2)
CONFIG = make_config(
    VirtualHost(
        ["shop.example"],
        routes=[Route("/c/", ORIGIN, cache=CACHE), Route("/", ORIGIN)],
    )
)
ROUTE = CONFIG.virtual_hosts[0].routes[0]


class Rig:
    def __init__(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1_000_000)
        self.factory, self.pipeline = proxy_factory(self.reactor, CONFIG)
        self.answered = 0
        self.last_request = b""
        self.accepted: list[tuple[Any, StringTransport]] = []

    @property
    def stage(self) -> CacheStage:
        stage = self.pipeline.plan.chains[True][id(ROUTE)].stages[1]
        assert isinstance(stage, CacheStage)
        return stage

    def client(
        self, path: str = "/c/a", extra: bytes = b"", *, send: bool = True
    ) -> tuple[Any, StringTransport]:
        address = IPv4Address("TCP", "192.0.2.9", 5555)
        channel: Any = self.factory.buildProtocol(address)
        transport = SocketLike(self.reactor, channel, peerAddress=address)
        channel.makeConnection(transport)
        if send:
            channel.dataReceived(
                b"GET %s HTTP/1.1\r\nHost: shop.example\r\n%s\r\n" % (path.encode(), extra)
            )
        return channel, transport

    def close(self, channel: Any) -> None:
        """The client closes its connection (as the reactor reports it)."""
        channel.transport.lost(ConnectionDone())

    def _waiting(self) -> list[tuple[Any, StringTransport]]:
        while len(self.accepted) < len(self.reactor.tcpClients):
            self.accepted.append(accept_upstream(self.reactor, len(self.accepted))[:2])
        return [(p, t) for p, t in self.accepted if t.value()]

    def asked(self) -> int:
        """Requests sent upstream so far (on new or pooled connections)."""
        return self.answered + len(self._waiting())

    def answer(self, data: bytes) -> Any:
        """Answer the first request waiting upstream; its connection's protocol."""
        waiting = self._waiting()
        assert waiting, "no request is waiting upstream"
        protocol, transport = waiting[0]
        self.last_request = transport.value()
        transport.clear()
        self.answered += 1
        protocol.dataReceived(data)
        return protocol


def response(cc: bytes = b"max-age=60", body: bytes = b"body", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nCache-Control: %s\r\n%sContent-Length: %d\r\n\r\n%s" % (
        cc,
        extra,
        len(body),
        body,
    )


def test_a_cached_route_has_the_cache_stage_between_the_body_limit_and_forwarding() -> None:
    rig = Rig()
    chain = rig.pipeline.plan.chains[True][id(ROUTE)]
    assert [type(s) for s in chain.stages] == [BodyLimit, CacheStage, ForwardStage]
    assert isinstance(rig.stage.store, MemoryStore)


def test_the_store_survives_a_reload_with_the_same_cache() -> None:
    rig = Rig()
    store = rig.stage.store
    rig.pipeline.swap(rig.pipeline.snapshot)
    assert rig.stage.store is store


def test_a_hit_needs_no_upstream_and_says_so() -> None:
    rig = Rig()
    _, first = rig.client()
    rig.answer(response())
    assert first.value().endswith(b"body")
    _, second = rig.client()
    assert rig.asked() == 1
    head = second.value().split(b"\r\n\r\n")[0]
    assert b"Cache-Status: edgeproxy; hit; ttl=60" in head and b"Age: 0" in head


def test_a_websocket_handshake_is_never_answered_from_the_cache() -> None:
    rig = Rig()
    rig.client()
    rig.answer(response())
    rig.client(extra=b"Connection: Upgrade\r\nUpgrade: websocket\r\n")
    assert rig.asked() == 2
    assert b"upgrade: websocket" in rig._waiting()[0][1].value().lower()


def test_freshness_runs_out_on_the_clock() -> None:
    rig = Rig()
    rig.client()
    rig.answer(response(b"max-age=60"))
    rig.reactor.advance(59)
    rig.client()
    assert rig.asked() == 1
    rig.reactor.advance(2)
    rig.client()
    assert rig.asked() == 2


def test_concurrent_misses_wait_for_one_fill_then_are_served_from_it() -> None:
    rig = Rig()
    clients = [rig.client()[1] for _ in range(3)]
    assert rig.asked() == 1
    rig.answer(response())
    for transport in clients:
        assert transport.value().endswith(b"body")
    assert b"collapsed" in clients[1].value() and b"collapsed" in clients[2].value()
    assert rig.asked() == 1
    assert rig.stage.fills == {}


def test_waiters_beyond_the_bound_go_upstream_at_once() -> None:
    rig = Rig()
    for _ in range(4):  # one fill, two waiters (collapse_max_waiters=2), one on its own
        rig.client()
    assert rig.asked() == 2


def test_waiters_go_upstream_themselves_after_collapse_timeout() -> None:
    rig = Rig()
    rig.client()
    rig.client()
    assert rig.asked() == 1
    rig.reactor.advance(2.0)
    assert rig.asked() == 2
    assert rig.stage.fills == {}


def test_a_waiter_that_goes_away_is_forgotten() -> None:
    rig = Rig()
    rig.client()
    channel, _ = rig.client()
    rig.close(channel)
    rig.answer(response())
    assert rig.asked() == 1


def test_stale_while_revalidate_refreshes_once_in_the_background() -> None:
    rig = Rig()
    rig.client()
    rig.answer(response(b"max-age=10, stale-while-revalidate=100", b"old"))
    rig.reactor.advance(20)
    _, first = rig.client()
    _, second = rig.client()
    assert first.value().endswith(b"old") and second.value().endswith(b"old")
    assert rig.asked() == 2  # one background refresh for both
    rig.answer(response(b"max-age=10", b"new"))
    _, third = rig.client()
    assert third.value().endswith(b"new")
    assert rig.stage.refreshing == set()


def test_a_client_aborting_mid_body_leaves_nothing_stored() -> None:
    rig = Rig()
    channel, _ = rig.client()
    rig.answer(
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 10\r\n\r\nhalf"
    )
    rig.close(channel)
    assert rig.stage.store.figures().objects == 0
    rig.client()
    assert rig.asked() == 2


def test_a_truncated_upstream_body_is_not_stored() -> None:
    rig = Rig()
    rig.client()
    protocol = rig.answer(
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 10\r\n\r\nhalf"
    )
    protocol.connectionLost(Failure(ConnectionDone()))
    assert rig.stage.store.figures().objects == 0


def test_a_304_for_another_response_makes_the_request_again_without_validators() -> None:
    rig = Rig()
    rig.client()
    rig.answer(response(b"no-cache", b"old", extra=b'ETag: "a"\r\n'))
    _, transport = rig.client()
    rig.answer(b'HTTP/1.1 304 Not Modified\r\nETag: "b"\r\n\r\n')
    assert b"If-None-Match" not in rig._waiting()[0][1].value()
    rig.answer(response(b"max-age=60", b"new"))
    assert transport.value().endswith(b"new")
    assert rig.asked() == 3


def test_a_response_without_date_is_stored_with_the_time_it_came() -> None:
    rig = Rig()
    rig.client()
    rig.answer(response())
    _, transport = rig.client()
    assert b"\r\nDate: " in transport.value().split(b"\r\n\r\n")[0]


def test_a_304_refreshes_the_stored_head_and_the_client_gets_the_stored_body() -> None:
    rig = Rig()
    rig.client()
    rig.answer(response(b"no-cache", b"kept", extra=b'ETag: "a"\r\nX-V: 1\r\n'))
    _, transport = rig.client()
    assert b'If-None-Match: "a"' in rig._waiting()[0][1].value()
    rig.answer(b'HTTP/1.1 304 Not Modified\r\nETag: "a"\r\nX-V: 2\r\n\r\n')
    head, body = transport.value().split(b"\r\n\r\n", 1)
    assert body == b"kept" and b"X-V: 2" in head and b"X-V: 1" not in head


def test_a_large_stored_body_is_sent_as_fast_as_the_client_takes_it() -> None:
    rig = Rig()
    body = bytes(range(256)) * 2000  # 500 KiB: past the one-piece bound, sent in chunks
    rig.client("/c/big")
    rig.answer(response(b"max-age=60", body))
    channel, transport = rig.client("/c/big", send=False)
    channel.pauseProducing()  # the client's socket is full
    channel.dataReceived(b"GET /c/big HTTP/1.1\r\nHost: shop.example\r\n\r\n")
    assert not transport.value().endswith(body[-100:])
    held = len(transport.value())
    assert held < 200 * 1024
    channel.resumeProducing()
    assert transport.value().endswith(body) and b"Cache-Status: edgeproxy; hit" in transport.value()


def cache_scenario(name: str) -> list[str]:
    """The cyclic garbage of repeated cache exchanges of one kind."""
    rig = Rig()
    paths = iter(range(10**6))

    def fill(abort: bool = False) -> None:
        channel, _ = rig.client(f"/c/{next(paths)}")
        if abort:
            rig.answer(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 10\r\n\r\nhalf")
        else:
            rig.answer(response())
        rig.close(channel)

    def hit() -> None:
        channel, transport = rig.client("/c/hit")
        assert b"hit" in transport.value()
        rig.close(channel)

    def collapsed() -> None:
        path = f"/c/{next(paths)}"
        first, _ = rig.client(path)
        second, transport = rig.client(path)
        rig.answer(response())
        assert b"collapsed" in transport.value()
        rig.close(first)
        rig.close(second)

    def revalidated() -> None:
        channel, transport = rig.client("/c/reval")
        rig.answer(b"HTTP/1.1 304 Not Modified\r\nCache-Control: no-cache\r\n\r\n")
        assert b"fwd-status=304" in transport.value()
        rig.close(channel)

    def refused() -> None:
        channel, transport = rig.client(f"/c/{next(paths)}")
        refuse_upstream(rig.reactor)
        assert transport.value().startswith(b"HTTP/1.1 502 ")
        rig.close(channel)

    def stale_if_error() -> None:
        channel, transport = rig.client("/c/sie")
        rig.answer(b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy")
        assert transport.value().endswith(b"kept") and b"stale-if-error" in transport.value()
        rig.close(channel)

    def background() -> None:
        channel, transport = rig.client("/c/swr")
        assert transport.value().endswith(b"kept")
        rig.answer(response(b"max-age=0, stale-while-revalidate=100000", b"kept"))
        rig.close(channel)

    if name == "refused":
        return garbage_of(refused)
    if name == "stale-if-error":
        first = rig.client("/c/sie")[0]
        rig.answer(response(b"max-age=0, stale-if-error=100000", b"kept", extra=b'ETag: "s"\r\n'))
        rig.close(first)
        return garbage_of(stale_if_error)
    if name == "background":
        first = rig.client("/c/swr")[0]
        rig.answer(response(b"max-age=0, stale-while-revalidate=100000", b"kept"))
        rig.close(first)
        return garbage_of(background)
    if name == "hit":
        fill_path = rig.client("/c/hit")[0]
        rig.answer(response())
        rig.close(fill_path)
        return garbage_of(hit)
    if name == "revalidated":
        first = rig.client("/c/reval")[0]
        rig.answer(response(b"no-cache", extra=b'ETag: "x"\r\n'))
        rig.close(first)
        return garbage_of(revalidated)
    if name == "collapsed":
        return garbage_of(collapsed)
    return garbage_of(lambda: fill(abort=name == "abort"))


@pytest.mark.parametrize(
    "name",
    ["fill", "abort", "hit", "collapsed", "revalidated", "refused", "stale-if-error", "background"],
)
def test_cache_exchanges_leave_no_cyclic_garbage(name: str) -> None:
    assert garbage_in_fresh_interpreter("tests.proxy.test_cache", "cache_scenario", name) == []


def test_two_processes_sharing_a_disk_store_fetch_a_miss_once(tmp_path: Path) -> None:
    """Two pipelines on one directory stand in for two --workers processes."""
    cache = Cache(store=f"disk:{tmp_path}", collapse_timeout=2.0)
    config = make_config(VirtualHost(["shop.example"], routes=[Route("/d/", ORIGIN, cache=cache)]))
    reactor = MemoryReactorClock()
    reactor.advance(time.time())  # the claims' age is read against file times
    one, _ = proxy_factory(reactor, config)
    two, _ = proxy_factory(reactor, config)
    request = b"GET /d/x HTTP/1.1\r\nHost: shop.example\r\n\r\n"
    first, first_transport = connect_client(one)
    first.dataReceived(request)
    second, second_transport = connect_client(two)
    second.dataReceived(request)
    assert len(reactor.tcpClients) == 1  # the second one waits for the first one's fetch
    protocol, _, _ = accept_upstream(reactor)
    protocol.dataReceived(response(b"max-age=60", b"shared"))
    assert first_transport.value().endswith(b"shared")
    reactor.advance(0.05)
    assert second_transport.value().endswith(b"shared")
    assert b"Cache-Status: edgeproxy; hit; collapsed" in second_transport.value()
    assert len(reactor.tcpClients) == 1


def test_a_process_waiting_for_another_fetches_itself_when_that_one_stores_nothing(
    tmp_path: Path,
) -> None:
    cache = Cache(store=f"disk:{tmp_path}", collapse_timeout=2.0)
    config = make_config(VirtualHost(["shop.example"], routes=[Route("/d/", ORIGIN, cache=cache)]))
    reactor = MemoryReactorClock()
    reactor.advance(time.time())
    one, _ = proxy_factory(reactor, config)
    two, _ = proxy_factory(reactor, config)
    request = b"GET /d/y HTTP/1.1\r\nHost: shop.example\r\n\r\n"
    connect_client(one)[0].dataReceived(request)
    second, second_transport = connect_client(two)
    second.dataReceived(request)
    protocol, _, _ = accept_upstream(reactor)
    protocol.dataReceived(response(b"private", b"mine"))  # not stored: the claim is let go
    reactor.advance(0.05)
    assert len(reactor.tcpClients) == 2  # the second one went upstream itself
    other, _, _ = accept_upstream(reactor)
    other.dataReceived(response(b"max-age=60", b"theirs"))
    assert second_transport.value().endswith(b"theirs")
