"""Fixed values and edges of edgeproxy.core.selection that mutation testing found unpinned.

tests/test_selection_policies.py checks the Maglev build against a reference
that reuses the module's own hashing helpers, so a change to a hash (its
personalisation string, the skip formula) rebuilds both alike and passes,
while in production it would silently move every hashed client and every
sticky split between two versions.  The values below were computed once and
committed; a change that moves them must say so in its notes.

Also pinned: ties in least-request go to the first sampled endpoint, a single
candidate draws nothing from the rng, and the Maglev table cache keeps exactly
MAGLEV_CACHE_SIZE tables, the table of all endpoints built up front.
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
    stable_roll,
)

FIVE = [Endpoint(f"10.0.0.{i}", 80) for i in range(1, 6)]
WEIGHTED = [Endpoint("10.0.0.1", 80, weight=3), Endpoint("10.0.0.2", 80), Endpoint("10.0.0.3", 80)]
# More than 255 endpoints: the table stores its slots as 16-bit indices.
MANY = [Endpoint(f"10.1.{i // 250}.{i % 250 + 1}", 8080) for i in range(300)]


def lookups(table: MaglevTable[Endpoint], count: int) -> list[str]:
    return [str(table.lookup(f"client-{i}".encode())) for i in range(count)]


def lookups_digest(table: MaglevTable[Endpoint]) -> str:
    """A short fingerprint of where 2000 keys go: any change to the table or to the
    key hash changes it."""
    return hashlib.sha256("\n".join(lookups(table, 2000)).encode()).hexdigest()[:16]


def test_maglev_five_equal_endpoints_fixed_lookups() -> None:
    table = MaglevTable(FIVE, 251)
    assert lookups(table, 12) == [
        "10.0.0.3:80",
        "10.0.0.2:80",
        "10.0.0.5:80",
        "10.0.0.3:80",
        "10.0.0.4:80",
        "10.0.0.3:80",
        "10.0.0.2:80",
        "10.0.0.5:80",
        "10.0.0.4:80",
        "10.0.0.3:80",
        "10.0.0.1:80",
        "10.0.0.3:80",
    ]
    assert {str(e): n for e, n in table.slot_counts().items()} == {
        "10.0.0.1:80": 51,
        "10.0.0.2:80": 50,
        "10.0.0.3:80": 50,
        "10.0.0.4:80": 50,
        "10.0.0.5:80": 50,
    }
    assert lookups_digest(table) == "2656e8b83a74bb02"


def test_maglev_weighted_fixed_lookups() -> None:
    table = MaglevTable(WEIGHTED, 101)
    assert lookups(table, 8) == ["10.0.0.1:80"] * 2 + ["10.0.0.2:80"] * 2 + ["10.0.0.1:80"] * 4
    assert {str(e): n for e, n in table.slot_counts().items()} == {
        "10.0.0.1:80": 60,
        "10.0.0.2:80": 21,
        "10.0.0.3:80": 20,
    }
    assert lookups_digest(table) == "87ab46169639188e"


def test_maglev_size_that_is_not_prime_fixed_lookups() -> None:
    # Skips that share a factor with the size are moved to coprime ones.
    table = MaglevTable(FIVE, 100)
    assert lookups(table, 8) == [
        "10.0.0.5:80",
        "10.0.0.2:80",
        "10.0.0.5:80",
        "10.0.0.3:80",
        "10.0.0.5:80",
        "10.0.0.5:80",
        "10.0.0.1:80",
        "10.0.0.5:80",
    ]
    assert lookups_digest(table) == "e7feac5b1e751340"


@pytest.mark.parametrize(
    ("size", "digest"),
    [(4, "a3828494d8b26894"), (6, "78bd349d2f52fe43"), (12, "93e1d38b0b03fc9c")],
)
def test_maglev_small_even_sizes_fixed_lookups(size: int, digest: str) -> None:
    # Most skips share a factor with these sizes: the fix-up's choice of the
    # next coprime skip decides the table.
    assert lookups_digest(MaglevTable(FIVE, size)) == digest


def test_maglev_between_128_and_255_endpoints_fixed_lookups() -> None:
    # Indices above 127: the slots must be unsigned bytes.
    table = MaglevTable([Endpoint(f"10.3.0.{i}", 80) for i in range(1, 201)], 2003)
    assert lookups(table, 4) == ["10.3.0.30:80", "10.3.0.90:80", "10.3.0.111:80", "10.3.0.79:80"]
    assert lookups_digest(table) == "a766480604c27579"


def test_maglev_more_than_255_endpoints_fixed_lookups() -> None:
    table = MaglevTable(MANY, 3001)
    assert lookups(table, 6) == [
        "10.1.0.10:8080",
        "10.1.0.215:8080",
        "10.1.0.167:8080",
        "10.1.0.14:8080",
        "10.1.0.179:8080",
        "10.1.0.224:8080",
    ]
    assert set(table.slot_counts().values()) == {10, 11}
    assert lookups_digest(table) == "ac5d80071ed033a8"


@pytest.mark.parametrize(
    ("key", "roll"),
    [
        (b"", 0.22501462458799892),
        (b"alice", 0.7698064409470651),
        (b"bob", 0.13259456949462745),
        (b"client-0", 0.3077992048106556),
    ],
)
def test_stable_roll_fixed_values(key: bytes, roll: float) -> None:
    assert stable_roll(key) == roll
    # The documented formula: the top 53 bits of a 64-bit BLAKE2b, personalised.
    digest = hashlib.blake2b(key, digest_size=8, person=b"split-roll").digest()
    assert roll == (int.from_bytes(digest, "big") >> 11) / 2**53


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
    assert repr(MaglevSelector(FIVE[:2], 101, rng=NoDraws())).endswith("(1 cached)>")
    assert repr(MaglevSelector(FIVE[:1], 101, rng=NoDraws())).endswith("(0 cached)>")


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
