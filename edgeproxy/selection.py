"""
Endpoint selection policies: small classes over a candidate list.  Pure: no
reactor, randomness injected where a policy needs it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from edgeproxy.config import Endpoint

__all__ = ["SmoothWeightedRoundRobin"]


class SmoothWeightedRoundRobin:
    """nginx's smooth weighted round robin.

    With weights 5,1,1 it yields a a b a c a a rather than a a a a a b c, and
    with equal weights it is plain round robin.  Endpoints in ``exclude`` are
    skipped (a retry must go elsewhere) without disturbing the others' turn.
    """

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        self._endpoints = tuple(endpoints)
        self._current = [0] * len(self._endpoints)
        self._total = sum(e.weight for e in self._endpoints)

    def pick(self, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        best = -1
        total = 0
        current = self._current
        for i, endpoint in enumerate(self._endpoints):
            if exclude and endpoint in exclude:
                continue
            current[i] += endpoint.weight
            total += endpoint.weight
            if best < 0 or current[i] > current[best]:
                best = i
        if best < 0:
            return None
        current[best] -= total
        return self._endpoints[best]
