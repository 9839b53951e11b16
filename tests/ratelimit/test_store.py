"""The memory store: one bucket per key, idle ones forgotten, at most max_keys."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from edgeproxy.core.ratelimit import ALLOWED
from edgeproxy.ratelimit.store import MemoryStore


def test_keys_have_buckets_of_their_own() -> None:
    clock = Clock()
    store = MemoryStore(clock.seconds)
    assert [store.decide("a", 1.0, 2).allowed for _ in range(3)] == [True, True, False]
    assert store.decide("b", 1.0, 2) == ALLOWED
    clock.advance(1.0)
    assert store.decide("a", 1.0, 2) == ALLOWED


def test_a_flood_of_distinct_keys_stays_within_max_keys() -> None:
    clock = Clock()
    store = MemoryStore(clock.seconds, max_keys=100)
    for i in range(10_000):
        assert store.decide(f"10.0.{i // 256}.{i % 256}", 0.01, 5).allowed
        assert len(store) <= 100
    assert len(store) == 100
    assert store.evictions == 10_000 - 100


def test_the_least_recently_used_key_is_evicted() -> None:
    clock = Clock()
    store = MemoryStore(clock.seconds, max_keys=2)
    store.decide("old", 0.01, 1)
    store.decide("young", 0.01, 1)
    store.decide("old", 0.01, 1)  # refused, but used: "young" is now the oldest
    store.decide("new", 0.01, 1)
    assert not store.decide("old", 0.01, 1).allowed  # kept
    assert store.decide("young", 0.01, 1).allowed  # evicted: a full bucket again


def test_idle_buckets_are_forgotten() -> None:
    clock = Clock()
    store = MemoryStore(clock.seconds)
    for i in range(50):
        store.decide(f"k{i}", 1.0, 1)
    assert len(store) == 50
    clock.advance(2.0)  # every bucket is full again
    for i in range(30):
        store.decide(f"fresh{i}", 1.0, 1)
    # Each decision forgets up to two idle keys: the 50 old ones are gone.
    assert len(store) == 30


def test_a_bucket_full_after_the_request_is_not_kept() -> None:
    # A TAT that is not in the future is the same as no state.
    clock = Clock()
    store = MemoryStore(clock.seconds)
    store.decide("a", 1e12, 1)
    assert len(store) == 1  # a TAT 1e-12 s ahead is still ahead
    assert store.figures() == {"keys": 1, "evictions": 0}


def test_max_keys_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_keys"):
        MemoryStore(Clock().seconds, max_keys=0)
