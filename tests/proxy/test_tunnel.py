"""
The splice after a 101 (``edgeproxy.proxy.tunnel.Tunnel``), sans I/O: two
``StringTransport``s for the client and the upstream connection, a
``MemoryReactorClock`` for the idle timer.
"""

from __future__ import annotations

import gc
import weakref

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from edgeproxy.proxy.tunnel import Tunnel, TunnelEnd

IDLE = 300.0
DONE = Failure(ConnectionDone())
RESET = Failure(ConnectionLost("reset"))


class Rig:
    def __init__(self, from_client: bytes = b"", from_upstream: bytes = b"") -> None:
        self.clock = MemoryReactorClock()
        self.client = StringTransport()
        self.upstream = StringTransport()
        self.closed: list[tuple[TunnelEnd, int, int]] = []
        self.tunnel = Tunnel(
            self.clock,
            IDLE,
            self.client,
            self.upstream,
            lambda end, up, down: self.closed.append((end, up, down)),
        )
        self.tunnel.start(from_client, from_upstream)


def test_bytes_pass_both_ways_with_what_came_before_the_splice() -> None:
    rig = Rig(from_client=b"early", from_upstream=b"first")
    assert rig.upstream.value() == b"early"
    assert rig.client.value() == b"first"
    rig.tunnel.client_data(b"ping")
    rig.tunnel.upstream_data(b"pong")
    assert rig.upstream.value() == b"earlyping"
    assert rig.client.value() == b"firstpong"
    assert (rig.tunnel.from_client, rig.tunnel.from_upstream) == (9, 9)


def test_a_slow_client_pauses_reading_the_upstream() -> None:
    rig = Rig()
    # The client's transport tells its producer (the upstream) to pause.
    rig.client.producer.pauseProducing()
    assert rig.upstream.producerState == "paused"
    rig.client.producer.resumeProducing()
    assert rig.upstream.producerState == "producing"


def test_a_slow_upstream_pauses_reading_the_client() -> None:
    rig = Rig()
    rig.upstream.producer.pauseProducing()
    assert rig.client.producerState == "paused"
    rig.upstream.producer.resumeProducing()
    assert rig.client.producerState == "producing"


def test_a_tunnel_quiet_both_ways_is_closed_at_the_idle_timeout() -> None:
    rig = Rig()
    rig.clock.advance(IDLE - 1)
    assert not rig.client.disconnecting and not rig.upstream.disconnecting
    rig.clock.advance(1)
    assert rig.client.disconnecting and rig.upstream.disconnecting
    rig.tunnel.client_lost(DONE)
    assert rig.closed == []  # not until both are gone
    rig.tunnel.upstream_lost(DONE)
    assert rig.closed == [(TunnelEnd.IDLE_TIMEOUT, 0, 0)]
    assert rig.clock.getDelayedCalls() == []


def test_traffic_either_way_keeps_the_tunnel_open() -> None:
    rig = Rig()
    for step in range(10):
        rig.clock.advance(IDLE - 1)
        if step % 2:
            rig.tunnel.client_data(b"x")
        else:
            rig.tunnel.upstream_data(b"y")
    assert not rig.client.disconnecting
    rig.clock.advance(IDLE)
    assert rig.client.disconnecting and rig.upstream.disconnecting
    # One timer at a time, however much passed.
    assert len(rig.clock.getDelayedCalls()) == 1


def test_the_client_closing_closes_the_upstream_after_what_was_written() -> None:
    rig = Rig()
    rig.tunnel.client_data(b"last words")
    rig.tunnel.client_lost(DONE)
    # loseConnection: the transport sends what it has, then closes.
    assert rig.upstream.disconnecting and rig.upstream.value() == b"last words"
    assert rig.upstream.producer is None
    rig.tunnel.upstream_lost(DONE)
    assert rig.closed == [(TunnelEnd.CLIENT, 10, 0)]
    assert rig.clock.getDelayedCalls() == []


def test_the_upstream_closing_closes_the_client() -> None:
    rig = Rig()
    rig.tunnel.upstream_data(b"bye")
    rig.tunnel.upstream_lost(DONE)
    assert rig.client.disconnecting and rig.client.value() == b"bye"
    rig.tunnel.client_lost(DONE)
    assert rig.closed == [(TunnelEnd.UPSTREAM, 0, 3)]


def test_an_upstream_that_fails_is_told_apart_from_one_that_closes() -> None:
    rig = Rig()
    rig.tunnel.upstream_lost(RESET)
    rig.tunnel.client_lost(DONE)
    assert rig.closed == [(TunnelEnd.UPSTREAM_ERROR, 0, 0)]


def test_a_side_that_does_not_go_after_the_close_is_aborted() -> None:
    rig = Rig()
    aborted: list[bool] = []
    rig.upstream.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
    rig.tunnel.client_lost(DONE)
    rig.clock.advance(IDLE)
    assert aborted == [True]
    rig.tunnel.upstream_lost(RESET)
    # The client went first: it ended the tunnel.
    assert rig.closed == [(TunnelEnd.CLIENT, 0, 0)]


def test_nothing_passes_once_closing_and_the_end_is_told_once() -> None:
    rig = Rig()
    rig.tunnel.close(TunnelEnd.IDLE_TIMEOUT)
    rig.tunnel.client_data(b"late")
    assert rig.upstream.value() == b""
    rig.tunnel.client_lost(DONE)
    rig.tunnel.client_lost(DONE)
    rig.tunnel.upstream_lost(DONE)
    rig.tunnel.upstream_lost(RESET)
    assert rig.closed == [(TunnelEnd.IDLE_TIMEOUT, 0, 0)]
    assert rig.tunnel.over


def test_a_closed_tunnel_lets_go_of_everything() -> None:
    rig = Rig()
    rig.tunnel.client_data(b"x")
    rig.tunnel.client_lost(DONE)
    rig.tunnel.upstream_lost(DONE)
    client = weakref.ref(rig.client)
    tunnel = weakref.ref(rig.tunnel)
    gc.disable()
    try:
        del rig
        assert client() is None and tunnel() is None
    finally:
        gc.enable()
