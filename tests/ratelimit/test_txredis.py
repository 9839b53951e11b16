"""The real client (txredisapi, :func:`txredis_client`) under the store, on a
MemoryReactorClock and a StringTransport: against a Redis that is connected
but answers nothing, decisions fail at the decision timeout, their commands
stay counted as waiting (so ``max_in_flight`` bounds what is queued on the
connection), and the reply timeout drops the connection soon after, which
lets them all go."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from edgeproxy.core.ratelimit import ALLOWED, Decision
from edgeproxy.ratelimit.redis import (
    DEFAULT_TIMEOUT,
    REPLY_TIMEOUT,
    RedisStore,
    parse_redis_url,
    txredis_client,
)


class Transport(StringTransport):
    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()


@pytest.fixture
def reactor(monkeypatch: pytest.MonkeyPatch) -> Iterator[MemoryReactorClock]:
    """txredisapi schedules its reply timeouts, and hands a new connection
    to its pool, on the global reactor: on this clock instead."""
    import txredisapi

    clock = MemoryReactorClock()
    monkeypatch.setattr(txredisapi, "reactor", clock)
    monkeypatch.setattr(txredisapi.LineReceiver, "callLater", clock.callLater)
    yield clock


def connect(reactor: MemoryReactorClock) -> tuple[RedisStore, Any, Transport]:
    address = parse_redis_url("redis://127.0.0.1:6379")
    client = txredis_client(reactor, address)
    host, port, factory, _timeout, _bind = reactor.tcpClients[0]
    protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
    transport = Transport()
    protocol.makeConnection(transport)
    reactor.advance(0)  # into the pool
    assert client.connected
    return RedisStore(address, client, reactor, max_in_flight=3), protocol, transport


def outcome(d: Any) -> Decision | Failure | None:
    results: list[Decision | Failure] = []
    d.addBoth(results.append)
    return results[0] if results else None


def test_the_reply_timeout_is_a_small_multiple_of_the_decision_timeout() -> None:
    assert REPLY_TIMEOUT == 5 * DEFAULT_TIMEOUT == 0.5


def test_a_hung_redis_holds_at_most_max_in_flight_commands_until_the_reply_timeout(
    reactor: MemoryReactorClock,
) -> None:
    store, protocol, transport = connect(reactor)
    decisions = [store.decide(f"k{i}", 1.0, 1) for i in range(3)]
    assert transport.value().count(b"EVALSHA") == 3
    reactor.advance(DEFAULT_TIMEOUT)
    assert all(isinstance(outcome(d), Failure) for d in decisions)
    # Failed, but their commands are still queued on the connection: they
    # count, and a fourth is refused without being sent.
    assert store.in_flight == 3
    fourth = outcome(store.decide("k4", 1.0, 1))
    assert isinstance(fourth, Failure) and "too many" in fourth.getErrorMessage()
    assert transport.value().count(b"EVALSHA") == 3
    # At the reply timeout txredisapi drops the connection: nothing waits any more.
    reactor.advance(REPLY_TIMEOUT - DEFAULT_TIMEOUT - 0.001)
    assert store.in_flight == 3
    reactor.advance(0.001)
    assert transport.aborted and store.in_flight == 0
    assert store.errors == 4  # each failed decision counted once


def test_a_reply_in_time_is_the_decision(reactor: MemoryReactorClock) -> None:
    store, protocol, transport = connect(reactor)
    d = store.decide("k", 1.0, 1)
    protocol.dataReceived(b"*2\r\n:1\r\n:0\r\n")
    assert outcome(d) == ALLOWED and store.in_flight == 0
