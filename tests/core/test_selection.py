from __future__ import annotations

from collections import Counter

from edgeproxy.config import Endpoint
from edgeproxy.core.selection import RoundRobinSelector

A = Endpoint("10.0.0.1", 80, weight=5)
B = Endpoint("10.0.0.2", 80)
C = Endpoint("10.0.0.3", 80)


def test_equal_weights_are_plain_round_robin() -> None:
    policy = RoundRobinSelector([B, C])
    assert [policy.pick([B, C]) for _ in range(4)] == [B, C, B, C]


def test_smooth_weighted_interleaves() -> None:
    policy = RoundRobinSelector([A, B, C])
    picks = [policy.pick([A, B, C]) for _ in range(7)]
    assert picks == [A, A, B, A, C, A, A]
    assert Counter(policy.pick([A, B, C]) for _ in range(700)) == {A: 500, B: 100, C: 100}


def test_subset_skips_without_starving() -> None:
    policy = RoundRobinSelector([B, C])
    assert policy.pick([C]) == C
    assert policy.pick([C]) == C
    assert policy.pick([]) is None
    assert {policy.pick([B, C]), policy.pick([B, C])} == {B, C}
