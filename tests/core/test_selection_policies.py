"""
Selection policies, tested on their distributions: deterministic (seeded
``random.Random``), no I/O.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeproxy.cluster.runtime import make_selector
from edgeproxy.config import (
    Cluster,
    ConsistentHash,
    Endpoint,
    LeastRequest,
    Random,
    RoundRobin,
    Split,
)
from edgeproxy.config.routing import SplitChooser
from edgeproxy.core.selection import (
    MAGLEV_CACHE_SIZE,
    LeastRequestSelector,
    MaglevSelector,
    MaglevTable,
    RandomSelector,
    RoundRobinSelector,
    Selector,
    _endpoint_key,
    _permutation,
    request_hash_key,
    stable_roll,
)


def endpoints(count: int, weights: Sequence[int] | None = None) -> list[Endpoint]:
    return [
        Endpoint(f"10.0.{i // 250}.{i % 250 + 1}", 8080, weight=weights[i] if weights else 1)
        for i in range(count)
    ]


def idle(endpoint: Endpoint) -> int:
    return 0


KEYS = [f"client-{i}".encode() for i in range(10_000)]


# -- round robin ---------------------------------------------------------------


A3 = Endpoint("10.0.0.1", 80, weight=3)
B1 = Endpoint("10.0.0.2", 80)
C1 = Endpoint("10.0.0.3", 80)


def test_round_robin_exact_proportions() -> None:
    selector = RoundRobinSelector([A3, B1])
    assert Counter(selector.pick([A3, B1]) for _ in range(400)) == {A3: 300, B1: 100}


def test_round_robin_interleaves_smoothly() -> None:
    selector = RoundRobinSelector([A3, B1])
    assert [selector.pick([A3, B1]) for _ in range(8)] == [A3, A3, B1, A3] * 2
    a5 = Endpoint("10.0.0.1", 80, weight=5)
    selector = RoundRobinSelector([a5, B1, C1])
    assert [selector.pick([a5, B1, C1]) for _ in range(7)] == [a5, a5, B1, a5, C1, a5, a5]


def test_round_robin_equal_weights_take_turns() -> None:
    selector = RoundRobinSelector([B1, C1])
    assert [selector.pick([B1, C1]) for _ in range(4)] == [B1, C1, B1, C1]


def test_round_robin_subset_keeps_proportions() -> None:
    a2 = Endpoint("10.0.0.1", 80, weight=2)
    selector = RoundRobinSelector([a2, B1, C1])
    # C is unavailable: A and B keep 2:1 between them.
    assert Counter(selector.pick([a2, B1]) for _ in range(300)) == {a2: 200, B1: 100}
    # C is back: all three in proportion again, C not starved nor flooded.
    assert Counter(selector.pick([a2, B1, C1]) for _ in range(400)) == {a2: 200, B1: 100, C1: 100}


def test_round_robin_state_persists_across_subsets() -> None:
    selector = RoundRobinSelector([B1, C1])
    assert selector.pick([B1, C1]) == B1
    # A retry that excludes B goes to C and does not disturb the turn order.
    assert selector.pick([C1]) == C1
    assert [selector.pick([B1, C1]) for _ in range(4)] == [C1, B1, C1, B1]


def test_round_robin_empty_and_unknown() -> None:
    selector = RoundRobinSelector([B1])
    assert selector.pick([]) is None
    assert selector.pick([C1]) == C1  # not in the constructor's list: still served


# -- random ----------------------------------------------------------------------


def test_random_is_weighted() -> None:
    selector = RandomSelector(random.Random(1234))
    counts = Counter(selector.pick([A3, B1]) for _ in range(10_000))
    # Expected 7500 / 2500; the binomial standard deviation is ~43.
    assert abs(counts[A3] - 7500) < 200
    assert counts[A3] + counts[B1] == 10_000


def test_random_uses_only_the_injected_rng() -> None:
    first = RandomSelector(random.Random(5))
    second = RandomSelector(random.Random(5))
    cands = endpoints(5)
    assert [first.pick(cands) for _ in range(50)] == [second.pick(cands) for _ in range(50)]


def test_random_edge_cases() -> None:
    selector = RandomSelector(random.Random(0))
    assert selector.pick([]) is None
    assert selector.pick([B1]) == B1


# -- least request -----------------------------------------------------------------


def test_least_request_prefers_the_less_loaded() -> None:
    load = {A3: 0, B1: 5, C1: 2}
    selector = LeastRequestSelector(2, rng=random.Random(3), in_flight=load.__getitem__)
    picks = Counter(selector.pick([B1, C1]) for _ in range(100))
    assert picks == {C1: 100}


def test_least_request_counts_weight() -> None:
    # A: (3 + 1) / 3 = 1.33 per unit of weight; B: (1 + 1) / 1 = 2.
    load = {A3: 3, B1: 1}
    selector = LeastRequestSelector(2, rng=random.Random(3), in_flight=load.__getitem__)
    assert {selector.pick([A3, B1]) for _ in range(50)} == {A3}
    # Idle, the heavier endpoint wins: 1/3 < 1/1.
    selector = LeastRequestSelector(2, rng=random.Random(3), in_flight=idle)
    assert {selector.pick([A3, B1]) for _ in range(50)} == {A3}


def test_least_request_spreads_evenly_when_equal() -> None:
    cands = endpoints(4)
    selector = LeastRequestSelector(2, rng=random.Random(11), in_flight=idle)
    counts = Counter(selector.pick(cands) for _ in range(8000))
    assert set(counts) == set(cands)
    assert all(abs(n - 2000) < 150 for n in counts.values()), counts


def test_least_request_full_scan_and_single() -> None:
    cands = endpoints(5)
    load = dict(zip(cands, [4, 3, 0, 2, 1], strict=True))
    selector = LeastRequestSelector(10, rng=random.Random(0), in_flight=load.__getitem__)
    assert {selector.pick(cands) for _ in range(20)} == {cands[2]}
    assert selector.pick([cands[0]]) == cands[0]
    assert selector.pick([]) is None
    with pytest.raises(ValueError):
        LeastRequestSelector(0, rng=random.Random(0), in_flight=idle)


def _simulate(make: Callable[[random.Random, Callable[[Endpoint], int]], Selector]) -> float:
    """Average spread (most minus least requests in flight) under a steady load."""
    cands = endpoints(10)
    rng = random.Random(7)
    load = dict.fromkeys(cands, 0)
    selector = make(rng, load.__getitem__)
    active: list[tuple[Endpoint, int]] = []
    spread = 0
    steps = 1000
    for _ in range(steps):
        still: list[tuple[Endpoint, int]] = []
        for endpoint, left in active:
            if left <= 1:
                load[endpoint] -= 1
            else:
                still.append((endpoint, left - 1))
        active = still
        for _ in range(5):
            picked = selector.pick(cands)
            assert picked is not None
            load[picked] += 1
            active.append((picked, rng.randint(1, 20)))
        spread += max(load.values()) - min(load.values())
    return spread / steps


def test_least_request_balances_better_than_random() -> None:
    random_spread = _simulate(lambda rng, _: RandomSelector(rng))
    p2c_spread = _simulate(lambda rng, f: LeastRequestSelector(2, rng=rng, in_flight=f))
    assert p2c_spread < 0.6 * random_spread, (p2c_spread, random_spread)


# -- Maglev --------------------------------------------------------------------------


def envoy_maglev(eps: Sequence[Endpoint], size: int) -> list[Endpoint]:
    """The table as Envoy's MaglevTable builds it, written plainly (the reference)."""
    ordered = sorted(eps, key=_endpoint_key)
    perms = [_permutation(e, size) for e in ordered]
    nexts = [0] * len(ordered)
    targets = [0] * len(ordered)
    top = max(e.weight for e in ordered)
    table: list[Endpoint | None] = [None] * size
    filled = 0
    iteration = 1
    while filled < size:
        for i, endpoint in enumerate(ordered):
            if filled >= size:
                break
            if iteration * endpoint.weight < targets[i]:
                continue
            targets[i] += top
            offset, skip = perms[i]
            slot = (offset + skip * nexts[i]) % size
            while table[slot] is not None:
                nexts[i] += 1
                slot = (offset + skip * nexts[i]) % size
            table[slot] = endpoint
            nexts[i] += 1
            filled += 1
        iteration += 1
    return [e for e in table if e is not None]


def table_list(table: MaglevTable) -> list[Endpoint]:
    return [table.endpoints[i] for i in table._slots]


@settings(max_examples=60, deadline=None)
@given(
    weights=st.lists(st.integers(1, 12), min_size=1, max_size=12),
    size=st.sampled_from([1, 2, 7, 13, 101, 211, 1009]),
)
def test_maglev_build_matches_envoy_reference(weights: list[int], size: int) -> None:
    eps = endpoints(len(weights), weights)
    assert table_list(MaglevTable(eps, size)) == envoy_maglev(eps, size)


def test_maglev_build_matches_reference_at_default_size() -> None:
    eps = endpoints(10, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    assert table_list(MaglevTable(eps, 65537)) == envoy_maglev(eps, 65537)


def test_maglev_same_key_same_endpoint() -> None:
    eps = endpoints(10)
    first = MaglevSelector(eps, 65537, rng=random.Random(1))
    second = MaglevSelector(list(reversed(eps)), 65537, rng=random.Random(2))
    for key in KEYS[:500]:
        picked = first.pick(eps, key)
        assert picked == first.pick(eps, key)
        # Another process, candidates in another order: the same answer.
        assert picked == second.pick(list(reversed(eps)), key)


def test_maglev_spread_is_even() -> None:
    eps = endpoints(10)
    table = MaglevTable(eps, 65537)
    assert set(table.slot_counts().values()) <= {6553, 6554}
    counts = Counter(table.lookup(key) for key in KEYS)
    assert all(abs(n - 1000) < 100 for n in counts.values()), counts


def test_maglev_spread_follows_weights() -> None:
    weights = [1, 2, 3, 4]
    eps = endpoints(4, weights)
    table = MaglevTable(eps, 65537)
    for endpoint, slots in table.slot_counts().items():
        assert slots == pytest.approx(65537 * endpoint.weight / 10, rel=0.01)
    counts = Counter(table.lookup(key) for key in KEYS)
    for endpoint in eps:
        assert counts[endpoint] == pytest.approx(1000 * endpoint.weight, rel=0.1)


def test_maglev_removing_one_moves_about_one_nth() -> None:
    eps = endpoints(10)
    selector = MaglevSelector(eps, 65537, rng=random.Random(0))
    before = [selector.pick(eps, key) for key in KEYS]
    removed = eps[3]
    rest = [e for e in eps if e != removed]
    after = [selector.pick(rest, key) for key in KEYS]
    on_removed = sum(1 for e in before if e == removed)
    moved = sum(1 for b, a in zip(before, after, strict=True) if a != b)
    assert 800 < on_removed < 1200
    assert removed not in after
    # Every key of the removed endpoint moves; of the others, only a few.
    assert moved - on_removed < 0.02 * len(KEYS), (moved, on_removed)


def test_maglev_adding_one_moves_about_one_nth() -> None:
    eps = endpoints(11)
    before = MaglevTable(eps[:10], 65537)
    after = MaglevTable(eps, 65537)
    moved = [key for key in KEYS if before.lookup(key) != after.lookup(key)]
    to_new = sum(1 for key in moved if after.lookup(key) == eps[10])
    assert len(moved) - to_new < 0.02 * len(KEYS)
    assert 700 < to_new < 1100


def test_maglev_without_key_is_weighted_random() -> None:
    selector = MaglevSelector([A3, B1], 101, rng=random.Random(9))
    counts = Counter(selector.pick([A3, B1]) for _ in range(4000))
    assert abs(counts[A3] - 3000) < 150


def test_maglev_caches_a_table_per_candidate_set() -> None:
    eps = endpoints(12)
    selector = MaglevSelector(eps, 211, rng=random.Random(0))
    full = selector.table_for(eps)
    assert selector.table_for(list(reversed(eps))) is full
    subset = selector.table_for(eps[1:])
    assert subset is not full and selector.table_for(eps[1:]) is subset
    # An LRU of MAGLEV_CACHE_SIZE: filling it with other sets evicts the oldest.
    for i in range(2, 2 + MAGLEV_CACHE_SIZE):
        selector.table_for(eps[i:])
    assert selector.table_for(eps) is not full


def test_maglev_edge_cases() -> None:
    selector = MaglevSelector([B1], 65537, rng=random.Random(0))
    assert selector.pick([], b"k") is None
    assert selector.pick([B1], b"k") == B1
    # More endpoints than slots: every key still finds an endpoint.
    eps = endpoints(5)
    table = MaglevTable(eps, 3)
    assert sum(table.slot_counts().values()) == 3
    assert table.lookup(b"x") in eps
    # A size that is not prime still fills every slot (and terminates).
    table = MaglevTable(eps, 100)
    assert sum(table.slot_counts().values()) == 100
    assert set(table.slot_counts().values()) == {20}
    with pytest.raises(ValueError):
        MaglevTable([], 7)
    with pytest.raises(ValueError):
        MaglevTable(eps, 0)


# -- make_selector and the common contract -------------------------------------------


def test_make_selector_per_policy() -> None:
    eps = endpoints(3)
    rng = random.Random(0)
    assert isinstance(make_selector(RoundRobin(), eps, rng=rng, in_flight=idle), RoundRobinSelector)
    assert isinstance(make_selector(Random(), eps, rng=rng, in_flight=idle), RandomSelector)
    least = make_selector(LeastRequest(choices=3), eps, rng=rng, in_flight=idle)
    assert isinstance(least, LeastRequestSelector)
    maglev = make_selector(ConsistentHash(table_size=101), eps, rng=rng, in_flight=idle)
    assert isinstance(maglev, MaglevSelector) and maglev.table_size == 101
    with pytest.raises(TypeError):
        make_selector(object(), eps, rng=rng, in_flight=idle)  # type: ignore[arg-type]


POLICIES = [
    RoundRobin(),
    Random(),
    LeastRequest(),
    LeastRequest(choices=1),
    ConsistentHash(table_size=31),
]


@settings(max_examples=50, deadline=None)
@given(
    policy=st.sampled_from(POLICIES),
    weights=st.lists(st.integers(1, 5), min_size=1, max_size=8),
    picks=st.lists(
        st.tuples(st.lists(st.booleans(), min_size=8, max_size=8), st.none() | st.binary()),
        max_size=20,
    ),
    seed=st.integers(0, 2**32),
)
def test_pick_is_a_candidate_or_none_iff_empty(
    policy: RoundRobin | Random | LeastRequest | ConsistentHash,
    weights: list[int],
    picks: list[tuple[list[bool], bytes | None]],
    seed: int,
) -> None:
    eps = endpoints(len(weights), weights)
    rng = random.Random(seed)
    selector = make_selector(policy, eps, rng=rng, in_flight=lambda e: rng.randrange(4))
    for mask, key in picks:
        cands = [e for e, keep in zip(eps, mask, strict=False) if keep]
        picked = selector.pick(cands, key)
        if cands:
            assert picked in cands
        else:
            assert picked is None


# -- hash keys and sticky rolls ----------------------------------------------------------


def lookup(values: dict[bytes, bytes]) -> Callable[[bytes], bytes | None]:
    return values.get


def test_request_hash_key_specs() -> None:
    headers = lookup({b"x-user": b"alice", b"x-empty": b""})
    cookies = lookup({b"session": b"tok123", b"Mixed": b"m"})
    kwargs = {"client_ip": "192.0.2.7", "header": headers, "cookie": cookies}
    assert request_hash_key("client_ip", **kwargs) == b"192.0.2.7"  # type: ignore[arg-type]
    assert request_hash_key("header:X-User", **kwargs) == b"alice"  # type: ignore[arg-type]
    assert request_hash_key("cookie:session", **kwargs) == b"tok123"  # type: ignore[arg-type]
    assert request_hash_key("cookie:Mixed", **kwargs) == b"m"  # type: ignore[arg-type]


def test_request_hash_key_missing_is_none() -> None:
    def kwargs(ip: str) -> dict[str, object]:
        return {"client_ip": ip, "header": lookup({b"x-empty": b""}), "cookie": lookup({})}

    assert request_hash_key("header:X-User", **kwargs("192.0.2.7")) is None  # type: ignore[arg-type]
    assert request_hash_key("header:X-Empty", **kwargs("192.0.2.7")) is None  # type: ignore[arg-type]
    assert request_hash_key("cookie:session", **kwargs("192.0.2.7")) is None  # type: ignore[arg-type]
    assert request_hash_key("client_ip", **kwargs("")) is None  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        request_hash_key("query:x", **kwargs("192.0.2.7"))  # type: ignore[arg-type]


def test_stable_roll_is_deterministic_in_range_and_uniform() -> None:
    rolls = [stable_roll(key) for key in KEYS]
    assert rolls == [stable_roll(key) for key in KEYS]
    assert all(0.0 <= roll < 1.0 for roll in rolls)
    buckets = Counter(int(roll * 10) for roll in rolls)
    assert all(abs(buckets[b] - 1000) < 100 for b in range(10)), buckets
    assert sum(rolls) / len(rolls) == pytest.approx(0.5, abs=0.01)
    assert stable_roll(b"") != stable_roll(b"a")


def test_stable_roll_is_independent_of_maglev_key_hash() -> None:
    # Sticky splits and consistent hashing on the same cookie must not correlate:
    # the clients of the 10% side spread over all endpoints.
    eps = endpoints(5)
    table = MaglevTable(eps, 1009)
    canary_keys = [key for key in KEYS if stable_roll(key) >= 0.9]
    counts = Counter(table.lookup(key) for key in canary_keys)
    assert all(abs(n - len(canary_keys) / 5) < 0.3 * len(canary_keys) / 5 for n in counts.values())


V1 = Cluster("v1", endpoints=["10.1.0.1:80"])
V2 = Cluster("v2", endpoints=["10.2.0.1:80"])


def test_sticky_split_same_key_same_cluster() -> None:
    split = Split({V1: 90, V2: 10}, sticky="cookie:canary")
    chooser = SplitChooser(split)
    again = SplitChooser(split)
    sides = [chooser.choose(stable_roll(key)) for key in KEYS]
    assert sides == [again.choose(stable_roll(key)) for key in KEYS]
    share = sum(1 for side in sides if side == V2) / len(sides)
    assert share == pytest.approx(0.10, abs=0.01)


def test_sticky_split_ramp_only_moves_clients_toward_the_growing_side() -> None:
    before = SplitChooser(Split({V1: 90, V2: 10}, sticky="client_ip"))
    after = SplitChooser(Split({V1: 80, V2: 20}, sticky="client_ip"))
    for key in KEYS:
        roll = stable_roll(key)
        if before.choose(roll) == V2:
            assert after.choose(roll) == V2


# -- pinned hashes (issue 14) --------------------------------------------------------
#
# Fixed expected answers, computed once from the code as it was and written here
# literally: nothing below calls the module's private helpers to recompute them
# (the Envoy reference above does, so it cannot notice a change of hash).
#
# A change to any of these values moves clients between versions: every key of
# a ConsistentHash cluster to another endpoint, every client of a sticky Split
# to another cluster, and, during a rolling upgrade, the same client back and
# forth between old and new processes.  It must be deliberate, said so in the
# release notes, and these pins updated in the same commit.


def pin_endpoints(count: int, weights: Sequence[int] | None = None) -> list[Endpoint]:
    """192.0.2.1:80 ... 192.0.2.250:80, then 192.0.3.1:80 ..."""
    return [
        Endpoint(f"192.0.{2 + i // 250}.{i % 250 + 1}", 80, weight=weights[i] if weights else 1)
        for i in range(count)
    ]


PIN_TABLES: dict[str, tuple[list[Endpoint], int]] = {
    "three": (pin_endpoints(3), 65537),
    "weighted": (pin_endpoints(4, [1, 2, 3, 4]), 65537),
    "ten": (pin_endpoints(10), 101),
    "nine": ([e for e in pin_endpoints(10) if e != Endpoint("192.0.2.4", 80)], 101),
    "three_hundred": (pin_endpoints(300), 65537),
    # Not a prime: skips sharing a factor with the size are stepped on.
    "ten_at_100": (pin_endpoints(10), 100),
}

# Per key: the endpoint in "three", "weighted", "ten" and "nine" (the last
# octet of 192.0.2.N:80) and in "three_hundred"; stable_roll(key); the side of
# Split({v1: 90, v2: 10}), of Split({v1: 50, v2: 30, v3: 20}), and that
# three-way split's fallback when its chosen side is down.
PIN_ROWS = [
    (b"client-0", 3, 3, 1, 1, "192.0.2.116:80", 0.3077992048106556, "v1", "v1", "v3"),
    (b"client-1", 2, 4, 1, 1, "192.0.3.30:80", 0.5553674845870049, "v1", "v2", "v1"),
    (b"client-2", 1, 4, 9, 1, "192.0.2.154:80", 0.04438579887532301, "v1", "v1", "v2"),
    (b"client-3", 1, 4, 10, 10, "192.0.2.245:80", 0.5525382070275413, "v1", "v2", "v1"),
    (b"client-4", 3, 3, 4, 9, "192.0.2.228:80", 0.7353833811378392, "v1", "v2", "v3"),
    (b"client-5", 3, 3, 9, 9, "192.0.3.12:80", 0.2495024212144974, "v1", "v1", "v2"),
    (b"client-6", 3, 4, 4, 3, "192.0.2.237:80", 0.9169373901939885, "v2", "v3", "v1"),
    (b"client-7", 3, 3, 5, 5, "192.0.2.210:80", 0.1580486031519056, "v1", "v1", "v2"),
    (b"client-8", 2, 2, 3, 3, "192.0.3.12:80", 0.3212198459863541, "v1", "v1", "v3"),
    (b"client-9", 3, 3, 1, 1, "192.0.2.169:80", 0.13836090842838722, "v1", "v1", "v2"),
    (b"client-10", 3, 3, 7, 7, "192.0.2.226:80", 0.4805701902049341, "v1", "v1", "v3"),
    (b"client-11", 2, 2, 9, 9, "192.0.2.50:80", 0.9528638841302717, "v2", "v3", "v2"),
    (b"", 2, 2, 2, 2, "192.0.2.201:80", 0.22501462458799892, "v1", "v1", "v2"),
    (b"192.0.2.7", 1, 4, 10, 10, "192.0.2.145:80", 0.13492519238438816, "v1", "v1", "v2"),
    (b"2001:db8::1", 1, 4, 5, 5, "192.0.2.47:80", 0.6468590730010892, "v1", "v2", "v1"),
    (b"caf\xc3\xa9", 1, 4, 1, 1, "192.0.2.114:80", 0.7566091137902745, "v1", "v2", "v3"),
]

# SHA-256 over the endpoints of b"key-0" ... b"key-4095", one a line: every
# slot class of each table, not just the sample above.
PIN_DIGESTS = {
    "three": "a326050ba2ad0ad3a2ca6cd6e5245084d4ee29a6550f5dbc46bf83821f2be4fc",
    "weighted": "e54db322cc5f65cbe275c5361e0277d3a7956083c03b531e0b9b2678e88e78ed",
    "ten": "b678784bb962e6f01fd31d44a57bac433d7e25e3026ad4338462c09547e2c32f",
    "nine": "d9fea28252ab2b335509a45de8454e89017a56a9734aaaacc668ff554f716cfc",
    "three_hundred": "8eb115ae5a6ea99f6fb611b848c4a27bf35e0dc8269a63d7aba322dc4d8bef23",
    "ten_at_100": "9dfbf3f4525512253c0fc86956f0591dc0db98f595d2b61e52d246c6058330b7",
}

# Keys whose endpoint sits past index 255 of the 300 sorted endpoints (where the
# table's slots need more than a byte each).
PIN_PAST_255 = [
    (b"client-23", "192.0.3.9:80", 299),
    (b"client-25", "192.0.3.26:80", 267),
    (b"client-47", "192.0.3.17:80", 257),
    (b"client-49", "192.0.3.21:80", 262),
    (b"client-51", "192.0.3.16:80", 256),
]


@pytest.fixture(scope="module")
def pin_tables() -> dict[str, MaglevTable]:
    return {name: MaglevTable(eps, size) for name, (eps, size) in PIN_TABLES.items()}


def test_pin_maglev_lookups(pin_tables: dict[str, MaglevTable]) -> None:
    for key, three, weighted, ten, nine, three_hundred, *_ in PIN_ROWS:
        found = {
            name: str(pin_tables[name].lookup(key))
            for name in ("three", "weighted", "ten", "nine", "three_hundred")
        }
        assert found == {
            "three": f"192.0.2.{three}:80",
            "weighted": f"192.0.2.{weighted}:80",
            "ten": f"192.0.2.{ten}:80",
            "nine": f"192.0.2.{nine}:80",
            "three_hundred": three_hundred,
        }, key


def test_pin_maglev_digests(pin_tables: dict[str, MaglevTable]) -> None:
    import hashlib

    for name, table in pin_tables.items():
        digest = hashlib.sha256()
        for i in range(4096):
            digest.update(str(table.lookup(b"key-%d" % i)).encode() + b"\n")
        assert digest.hexdigest() == PIN_DIGESTS[name], name


def test_pin_maglev_past_255_endpoints(pin_tables: dict[str, MaglevTable]) -> None:
    table = pin_tables["three_hundred"]
    for key, endpoint, index in PIN_PAST_255:
        assert str(table.lookup(key)) == endpoint
        assert table.endpoints.index(table.lookup(key)) == index


def test_pin_maglev_selector_and_a_lost_endpoint() -> None:
    # What a cluster does: the table of all endpoints, then of those left when
    # 192.0.2.4 goes down (its keys move, and a few others with them).
    ten = pin_endpoints(10)
    nine = [e for e in ten if e != Endpoint("192.0.2.4", 80)]
    selector = make_selector(
        ConsistentHash(table_size=101), ten, rng=random.Random(0), in_flight=idle
    )
    for key, _, _, on_ten, on_nine, *_ in PIN_ROWS:
        assert selector.pick(ten, key) == Endpoint(f"192.0.2.{on_ten}", 80), key
        assert selector.pick(nine, key) == Endpoint(f"192.0.2.{on_nine}", 80), key
    big = pin_endpoints(300)
    selector = make_selector(ConsistentHash(), big, rng=random.Random(0), in_flight=idle)
    for key, *_, three_hundred, _, _, _, _ in PIN_ROWS:
        assert str(selector.pick(big, key)) == three_hundred, key


def test_pin_stable_roll() -> None:
    for key, *_, roll, _, _, _ in PIN_ROWS:
        assert stable_roll(key) == roll, key


def test_pin_sticky_split_sides() -> None:
    v1, v2, v3 = (Cluster(f"v{n}", endpoints=[f"10.{n}.0.1:80"]) for n in (1, 2, 3))
    canary = SplitChooser(Split({v1: 90, v2: 10}, sticky="cookie:canary"))
    three_way = SplitChooser(Split({v1: 50, v2: 30, v3: 20}, sticky="client_ip"))
    for key, *_, canary_side, side, fallback in PIN_ROWS:
        roll = stable_roll(key)
        assert canary.choose(roll).name == canary_side, key
        chosen = three_way.choose(roll)
        assert chosen.name == side, key
        other = three_way.fallback(roll, lambda cluster, down=chosen: cluster is not down)
        assert other is not None and other.name == fallback, key
