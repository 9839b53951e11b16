"""Edges of edgeproxy.core.selection that mutation testing found unpinned.

The pinned Maglev tables in tests/core/test_selection_policies.py fix the hashes;
these add tables whose skips mostly share a factor with the size (the fix-up
that makes them coprime decides the table) and one of 200 endpoints (indices
above 127: the slots must be unsigned bytes).  Also pinned: ties in
least-request go to the first sampled endpoint, a single candidate draws nothing
from the rng, the Maglev table cache keeps exactly MAGLEV_CACHE_SIZE tables with
the table of all endpoints built up front, and a hash key's name is everything
after the first colon, as the configuration reads it.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Any

import pytest

from edgeproxy.config import Endpoint
from edgeproxy.core.selection import (
    MAGLEV_CACHE_SIZE,
    LeastRequestSelector,
    MaglevSelector,
    MaglevTable,
    request_hash_key,
)

TEN = [Endpoint(f"10.0.1.{i}", 80) for i in range(1, 11)]


def lookups(table: MaglevTable[Endpoint], count: int) -> list[str]:
    return [str(table.lookup(f"client-{i}".encode())) for i in range(count)]


def lookups_digest(table: MaglevTable[Endpoint]) -> str:
    """A short fingerprint of where 2000 keys go: any change to the table or to the
    key hash changes it."""
    return hashlib.sha256("\n".join(lookups(table, 2000)).encode()).hexdigest()[:16]


@pytest.mark.parametrize(
    ("size", "digest"),
    [(6, "dd59c8d87c144619"), (10, "790a0fd1cccbf83f")],
)
def test_maglev_small_even_sizes_fixed_lookups(size: int, digest: str) -> None:
    # Most skips share a factor with these sizes: the fix-up's choice of the
    # next coprime skip decides the table.
    assert lookups_digest(MaglevTable(TEN, size)) == digest


def test_maglev_between_128_and_255_endpoints_fixed_lookups() -> None:
    # Indices above 127: the slots must be unsigned bytes.
    table = MaglevTable([Endpoint(f"10.3.0.{i}", 80) for i in range(1, 201)], 2003)
    assert lookups(table, 4) == ["10.3.0.30:80", "10.3.0.90:80", "10.3.0.111:80", "10.3.0.79:80"]
    assert lookups_digest(table) == "a766480604c27579"


class InOrder(random.Random):
    """An rng whose sample is the population's first ``k`` in order, so which
    endpoint was sampled first is known."""

    def sample(self, population: Sequence[Any], k: int, **kwargs: Any) -> list[Any]:
        return list(population)[:k]


class NoDraws(random.Random):
    def random(self) -> float:
        raise AssertionError("drew from the rng")

    def sample(self, population: Sequence[Any], k: int, **kwargs: Any) -> list[Any]:
        raise AssertionError("drew from the rng")

    def randrange(self, *args: Any, **kwargs: Any) -> int:
        raise AssertionError("drew from the rng")


A = Endpoint("10.0.0.1", 80)
B = Endpoint("10.0.0.2", 80)
HEAVY = Endpoint("10.0.0.3", 80, weight=2)


def test_least_request_tie_goes_to_the_first_sampled() -> None:
    selector: LeastRequestSelector[Endpoint] = LeastRequestSelector(
        2, rng=InOrder(), in_flight=lambda e: 0
    )
    assert selector.pick([A, B]) == A
    assert selector.pick([B, A]) == B


def test_least_request_tie_in_load_per_weight() -> None:
    # HEAVY with one in flight: (1 + 1) / 2 == (0 + 1) / 1, a tie.
    in_flight = {HEAVY: 1, A: 0}.__getitem__
    selector = LeastRequestSelector(2, rng=InOrder(), in_flight=in_flight)
    assert selector.pick([HEAVY, A]) == HEAVY
    assert selector.pick([A, HEAVY]) == A


def test_least_request_one_more_in_flight_loses() -> None:
    selector = LeastRequestSelector(2, rng=InOrder(), in_flight={A: 1, B: 0}.__getitem__)
    assert selector.pick([A, B]) == B


def test_a_single_candidate_draws_nothing() -> None:
    least: LeastRequestSelector[Endpoint] = LeastRequestSelector(
        2, rng=NoDraws(), in_flight=lambda e: 0
    )
    assert least.pick([A]) == A
    maglev = MaglevSelector([A, B], 101, rng=NoDraws())
    assert maglev.pick([A]) == A
    assert maglev.pick([A], b"key") == A


def test_maglev_table_of_all_endpoints_is_built_up_front() -> None:
    assert repr(MaglevSelector([A, B], 101, rng=NoDraws())).endswith("(1 cached)>")
    assert repr(MaglevSelector([A], 101, rng=NoDraws())).endswith("(0 cached)>")


def test_maglev_cache_keeps_exactly_the_last_maglev_cache_size_tables() -> None:
    eps = [Endpoint(f"10.2.0.{i}", 80) for i in range(1, 13)]
    selector = MaglevSelector(eps[:2], 101, rng=NoDraws())  # caches one table
    sets = [eps[i:] for i in range(MAGLEV_CACHE_SIZE + 1)]
    tables = [selector.table_for(s) for s in sets[:MAGLEV_CACHE_SIZE]]
    assert repr(selector).endswith(f"({MAGLEV_CACHE_SIZE} cached)>")
    # Full: the oldest (the up-front table) went; every one of the last
    # MAGLEV_CACHE_SIZE is still there.
    assert all(selector.table_for(s) is t for s, t in zip(sets, tables, strict=False))
    # One more evicts the least recently used: sets[0], touched longest ago.
    selector.table_for(sets[MAGLEV_CACHE_SIZE])
    assert repr(selector).endswith(f"({MAGLEV_CACHE_SIZE} cached)>")
    assert selector.table_for(sets[-2]) is tables[-1]
    assert selector.table_for(sets[0]) is not tables[0]


def test_hash_key_name_is_everything_after_the_first_colon() -> None:
    # As the configuration's validator reads it: "cookie:a:b" names the cookie "a:b".
    seen: list[bytes] = []

    def record(name: bytes) -> bytes:
        seen.append(name)
        return b"v"

    def key(spec: str) -> bytes | None:
        return request_hash_key(spec, client_ip="192.0.2.1", header=record, cookie=record)

    assert key("cookie:a:b") == b"v"
    assert key("header: X-A:B ") == b"v"
    assert seen == [b"a:b", b"x-a:b"]
