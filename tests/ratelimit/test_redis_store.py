"""The Redis store's side of a decision, with a fake client on a Clock: the
script by SHA then by text, the timeout, failing fast while disconnected,
at most max_in_flight waiting, an outage logged once and its end once.  The
script itself runs on a real redis-server in test_redis_script.py and the
end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from edgeproxy.core.ratelimit import ALLOWED, Decision
from edgeproxy.ratelimit.redis import (
    RECOVERY_TIME,
    SCRIPT,
    SCRIPT_SHA,
    NoScript,
    RedisStore,
    parse_redis_url,
)
from edgeproxy.ratelimit.store import StoreError


class FakeRedis:
    def __init__(self) -> None:
        self.connected = True
        self.calls: list[tuple[str, str, list[str], list[Any]]] = []
        self.replies: list[Deferred[Any]] = []

    def _call(self, command: str, what: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        self.calls.append((command, what, list(keys), list(args)))
        d: Deferred[Any] = Deferred()
        self.replies.append(d)
        return d

    def evalsha(self, sha: str, keys: Sequence[str], args: Sequence[Any]) -> Deferred[Any]:
        d: Deferred[Any] = self._call("EVALSHA", sha, keys, args)
        return d

    def eval(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Deferred[Any]:
        d: Deferred[Any] = self._call("EVAL", script, keys, args)
        return d

    def close(self) -> None:
        return None


@pytest.fixture
def logged() -> Iterator[list[str]]:
    lines: list[str] = []

    def observe(event: LogEvent) -> None:
        if "rate limit store" in (event.get("log_format") or ""):
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def make() -> tuple[RedisStore, FakeRedis, Clock]:
    clock = Clock()
    client = FakeRedis()
    store = RedisStore(parse_redis_url("redis://:secret@10.0.0.5:6380/2"), client, clock)
    return store, client, clock


def outcome(d: Deferred[Decision]) -> Decision | Failure | None:
    results: list[Decision | Failure] = []
    d.addBoth(results.append)
    return results[0] if results else None


def test_one_evalsha_per_decision_with_the_bucket_and_the_limit() -> None:
    store, client, _ = make()
    d = store.decide("shop.example/api/:192.0.2.9", 4.0, 20)
    assert client.calls == [
        ("EVALSHA", SCRIPT_SHA, ["edgeproxy:rl:shop.example/api/:192.0.2.9"], ["250000.000", "20"])
    ]
    client.replies[0].callback([1, 0])
    assert outcome(d) == ALLOWED
    d = store.decide("k", 4.0, 20)
    client.replies[1].callback([0, 1_500_000])
    assert outcome(d) == Decision(False, 1.5)


def test_noscript_falls_back_to_eval() -> None:
    store, client, _ = make()
    d = store.decide("k", 1.0, 1)
    client.replies[0].errback(NoScript())
    assert [call[:2] for call in client.calls] == [("EVALSHA", SCRIPT_SHA), ("EVAL", SCRIPT)]
    client.replies[1].callback([1, 0])
    assert outcome(d) == ALLOWED
    assert store.errors == 0


def test_no_answer_in_time_fails_and_a_late_answer_is_ignored(logged: list[str]) -> None:
    store, client, clock = make()
    results: list[Decision | Failure] = []
    store.decide("k", 1.0, 1).addBoth(results.append)
    clock.advance(0.099)
    assert results == []
    clock.advance(0.001)
    [failure] = results
    assert isinstance(failure, Failure) and failure.check(StoreError)
    client.replies[0].callback([1, 0])  # too late: nothing more happens
    assert (store.errors, store.in_flight, store.up) == (1, 0, False)
    assert logged == [
        "rate limit store redis://10.0.0.5:6380/2 failed: no answer within 100 ms; "
        "each route's on_store_error decides until it answers again"
    ]


def test_an_outage_is_logged_once_and_its_end_once(logged: list[str]) -> None:
    store, client, clock = make()
    client.connected = False
    for _ in range(5):
        failure = outcome(store.decide("k", 1.0, 1))
        assert isinstance(failure, Failure) and failure.check(StoreError)
    assert client.calls == []  # nothing is sent, or queued, without a connection
    assert store.figures() == {"errors": 5, "up": 0}
    client.connected = True
    clock.advance(RECOVERY_TIME)
    for i in range(3):
        d = store.decide("k", 1.0, 1)
        client.replies[i].callback([1, 0])
        assert outcome(d) == ALLOWED
    assert store.figures() == {"errors": 5, "up": 1}
    assert len(logged) == 2
    assert "failed: not connected" in logged[0]
    assert logged[1] == "rate limit store redis://10.0.0.5:6380/2 answers again"


def test_a_redis_hovering_around_the_timeout_is_one_outage_not_a_flapping_one(
    logged: list[str],
) -> None:
    store, client, clock = make()
    ups = []
    for _ in range(50):  # answers in time, then not, and so on, for 10 s
        d = store.decide("k", 1.0, 1)
        client.replies[-1].callback([1, 0])
        assert outcome(d) == ALLOWED  # a decision in time is used, outage or not
        ups.append(store.up)
        failing = store.decide("k", 1.0, 1)
        clock.advance(0.1)  # no answer in time
        assert isinstance(outcome(failing), Failure)
        ups.append(store.up)
        clock.advance(0.1)
    assert ups == [True] + [False] * 99
    assert logged == [
        "rate limit store redis://10.0.0.5:6380/2 failed: no answer within 100 ms; "
        "each route's on_store_error decides until it answers again"
    ]
    # Answers again: at the first decision that succeeds RECOVERY_TIME after the last failure.
    clock.advance(RECOVERY_TIME - 0.2)
    d = store.decide("k", 1.0, 1)
    client.replies[-1].callback([1, 0])
    assert (outcome(d), store.up, len(logged)) == (ALLOWED, False, 1)
    clock.advance(0.2)
    d = store.decide("k", 1.0, 1)
    client.replies[-1].callback([1, 0])
    assert (outcome(d), store.up) == (ALLOWED, True)
    assert logged[1:] == ["rate limit store redis://10.0.0.5:6380/2 answers again"]
    assert store.figures() == {"errors": 50, "up": 1}
    # The next failure is another outage.
    failing = store.decide("k", 1.0, 1)
    clock.advance(0.1)
    assert isinstance(outcome(failing), Failure)
    assert (store.up, len(logged)) == (False, 3)


def test_errors_and_odd_replies_fail_the_decision() -> None:
    store, client, _ = make()
    d = store.decide("k", 1.0, 1)
    client.replies[0].errback(RuntimeError("ERR something"))
    assert isinstance(outcome(d), Failure)
    d = store.decide("k", 1.0, 1)
    client.replies[1].callback(b"OK")
    assert isinstance(outcome(d), Failure)
    assert store.errors == 2


def test_at_most_max_in_flight_wait() -> None:
    clock = Clock()
    client = FakeRedis()
    store = RedisStore(parse_redis_url("redis://h"), client, clock, max_in_flight=2)
    results: list[Decision | Failure] = []
    store.decide("a", 1.0, 1).addBoth(results.append)
    store.decide("b", 1.0, 1)
    third = outcome(store.decide("c", 1.0, 1))
    assert isinstance(third, Failure) and len(client.calls) == 2
    client.replies[0].callback([1, 0])
    assert results == [ALLOWED]
    store.decide("d", 1.0, 1)
    assert len(client.calls) == 3


def test_a_timed_out_decision_waits_until_its_reply_or_the_connection_drop() -> None:
    clock = Clock()
    client = FakeRedis()
    store = RedisStore(parse_redis_url("redis://h"), client, clock, max_in_flight=2)
    first = store.decide("a", 1.0, 1)
    second = store.decide("b", 1.0, 1)
    clock.advance(0.1)
    assert isinstance(outcome(first), Failure) and isinstance(outcome(second), Failure)
    # Both failed, but their commands are still queued on the connection and
    # would take tokens if Redis ran them: they count, and nothing more is sent.
    third = outcome(store.decide("c", 1.0, 1))
    assert isinstance(third, Failure) and "too many" in third.getErrorMessage()
    assert (len(client.calls), store.in_flight) == (2, 2)
    client.replies[0].callback([1, 0])  # late: ignored, but no longer queued
    assert store.in_flight == 1
    client.replies[1].errback(ConnectionError("Lost connection"))  # the drop
    assert store.in_flight == 0
    store.decide("d", 1.0, 1)
    assert len(client.calls) == 3
    assert store.errors == 3  # each failed decision counted once


@pytest.mark.parametrize(
    ("url", "text", "db", "password"),
    [
        ("redis://127.0.0.1:6390", "redis://127.0.0.1:6390", None, None),
        ("redis://cache.internal", "redis://cache.internal:6379", None, None),
        ("redis://:s3cret@10.0.0.1:7000/3", "redis://10.0.0.1:7000/3", 3, "s3cret"),
        ("redis://user:p%40ss@[::1]:6379/0", "redis://[::1]:6379/0", 0, "p@ss"),
    ],
)
def test_redis_urls(url: str, text: str, db: int | None, password: str | None) -> None:
    address = parse_redis_url(url)
    assert (str(address), address.db, address.password) == (text, db, password)
    assert "s3cret" not in repr(address)


@pytest.mark.parametrize(
    "url", ["http://h:1", "redis://", "redis://h:99999", "redis://h/x", "redis://h/1?a=b"]
)
def test_bad_redis_urls(url: str) -> None:
    with pytest.raises(ValueError):
        parse_redis_url(url)
