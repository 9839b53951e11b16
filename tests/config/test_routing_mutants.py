"""Edges of edgeproxy.config.routing that mutation testing found unpinned.

A Split's fallback when the side that is down is the first one (its rolls
start at 0, so the part of [0, 1) it owned starts at 0 too) and when the roll
is at the top of the range, which ``_pick``'s guard is there for.
``tools/mutation.py routing`` and docs/testing.md say which mutants these kill.
"""

from __future__ import annotations

from collections import Counter

from edgeproxy.config import Cluster, Split
from edgeproxy.config.routing import SplitChooser


def chooser(*weights: int) -> tuple[list[Cluster], SplitChooser]:
    clusters = [Cluster(f"c{i}", endpoints=["127.0.0.1:1"]) for i in range(len(weights))]
    return clusters, SplitChooser(Split(dict(zip(clusters, weights, strict=True))))


def test_fallback_from_the_first_side_spreads_by_the_rolls_position() -> None:
    clusters, split = chooser(50, 30, 20)
    first = clusters[0]
    counts: Counter[str] = Counter()
    for i in range(10_000):
        roll = i / 10_000
        chosen = split.choose(roll)
        if chosen is first:
            fallback = split.fallback(roll, lambda cluster: cluster is not first)
            assert fallback is not None
            chosen = fallback
        counts[chosen.name] += 1
    # c0's 5000 rolls go 30:20 to c1 and c2, in order: the low ones to c1.
    assert counts == {"c1": 3000 + 3000, "c2": 2000 + 2000}
    assert split.fallback(0.0, lambda cluster: cluster is not first) is clusters[1]
    assert split.fallback(0.4999, lambda cluster: cluster is not first) is clusters[2]


def test_fallback_of_a_roll_at_the_top_goes_to_the_last_available() -> None:
    # A roll of 1 (or one a float total rounds up to it) counts as the last side's.
    clusters, split = chooser(1, 1, 1)
    assert split.fallback(1.0, lambda cluster: cluster is not clusters[2]) is clusters[1]
    assert split.fallback(1.0, lambda cluster: cluster is clusters[0]) is clusters[0]
    assert split.fallback(1.0, lambda cluster: False) is None
