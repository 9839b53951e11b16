"""Edges of edgeproxy.config.routing that mutation testing found unpinned.

Route prefixes written with characters ``urllib.parse.quote`` would encode by
default (``:``, ``@``, ``%``...), and a Split's fallback when the side that is
down is the first one (its rolls start at 0) or when the roll is at the top of
the range.  ``tools/mutation.py routing`` and docs/testing.md say which mutants
these kill.
"""

from __future__ import annotations

from collections import Counter

import pytest

from edgeproxy.config import Cluster, Route, Split, VirtualHost
from edgeproxy.config.routing import RoutingTable, SplitChooser, prefix_bytes

API = Cluster("api", endpoints=["127.0.0.1:9001"])


@pytest.mark.parametrize(
    ("prefix", "raw"),
    [
        ("/a:b/", b"/a:b/"),
        ("/user@host/", b"/user@host/"),
        ("/v1;v=2/", b"/v1;v=2/"),
        ("/a+b=c&d/", b"/a+b=c&d/"),
        ("/$!'()*,/", b"/$!'()*,/"),
        ("/[x]/", b"/[x]/"),
        ("/caf%C3%A9/", b"/caf%C3%A9/"),  # already percent-encoded: kept as written
        ("/100%/", b"/100%/"),
        ("/café/", b"/caf%C3%A9/"),
    ],
)
def test_prefix_keeps_printable_ascii_as_written(prefix: str, raw: bytes) -> None:
    assert prefix_bytes(prefix) == raw
    route = Route(prefix, API)
    table = RoutingTable.from_virtual_hosts([VirtualHost(["x.example"], routes=[route])])
    match = table.match("x.example", raw + b"rest?q=1")
    assert match is not None and match.route is route


def test_prefix_with_colon_does_not_match_its_encoding() -> None:
    table = RoutingTable.from_virtual_hosts(
        [VirtualHost(["x.example"], routes=[Route("/a:b/", API)])]
    )
    assert table.match("x.example", b"/a%3Ab/") is None


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
