"""
Rate-limit decisions by GCRA, the generic cell rate algorithm (a token
bucket kept as one number): values in, values out.

A bucket of ``burst`` requests that refills at ``rate`` per second is kept as
its *theoretical arrival time* (TAT): when the bucket would be full again.  A
request at ``now`` is allowed when ``max(tat, now) + interval - burst *
interval <= now`` (``interval = 1 / rate``), and then moves the TAT on by one
interval; a refused one changes nothing and is told how long until a request
would be allowed.  A TAT in the past is the same as no state at all, so an
idle bucket can be forgotten the moment its TAT passes: that is what bounds
the stores (:mod:`edgeproxy.ratelimit`).  The Redis store runs the same
arithmetic in Lua, in microseconds, on Redis's clock.

In any window of ``t`` seconds at most ``burst + rate * t`` requests are
allowed (tests/core/test_ratelimit.py checks it as a property).
"""

from __future__ import annotations

import math
from typing import NamedTuple

__all__ = ["ALLOWED", "Buckets", "Decision", "decide", "retry_after_seconds"]


class Decision(NamedTuple):
    """Whether a request may go on; when not, ``retry_after`` is the number
    of seconds until one would be allowed (0.0 when allowed)."""

    allowed: bool
    retry_after: float = 0.0


ALLOWED = Decision(True)


def decide(tat: float | None, now: float, rate: float, burst: int) -> tuple[Decision, float | None]:
    """One request at ``now`` against a bucket whose TAT is ``tat`` (None: no
    state).  Returns the decision and the TAT to keep (unchanged when refused)."""
    interval = 1.0 / rate
    start = now if tat is None or tat < now else tat
    new_tat = start + interval
    allow_at = new_tat - burst * interval
    if allow_at > now:
        return Decision(False, allow_at - now), tat
    return ALLOWED, new_tat


def retry_after_seconds(seconds: float) -> int:
    """``Retry-After`` in whole seconds: rounded up, at least 1 (a client told
    0 would retry at once and be refused again)."""
    return max(1, math.ceil(seconds)) if math.isfinite(seconds) else 1


class Buckets:
    """The TATs of many keys, bounded: kept in order of last use, so the
    least recently used key is the first.  A decision forgets up to two idle
    keys from that end (a TAT that has passed is a full bucket, the same as
    none), and with ``max_keys`` kept the least recently used one is evicted
    to make room (that key's bucket starts full again).  A flood of distinct
    keys therefore costs at most ``max_keys`` entries.  The memory rate-limit
    store and the accept gate's per-client rate both keep theirs here."""

    def __init__(self, max_keys: int) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, not {max_keys}")
        self.max_keys = max_keys
        #: key -> TAT, least recently used first (dicts keep insertion order).
        self._tats: dict[str, float] = {}
        #: Keys evicted while their bucket was still in use.
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._tats)

    def decide(self, key: str, now: float, rate: float, burst: int) -> Decision:
        """:func:`decide` for ``key``'s bucket, its TAT kept or forgotten."""
        tats = self._tats
        tat = tats.pop(key, None)
        decision, new_tat = decide(tat, now, rate, burst)
        self._forget_idle(now)
        if new_tat is not None and new_tat > now:
            if len(tats) >= self.max_keys:
                del tats[next(iter(tats))]
                self.evictions += 1
            tats[key] = new_tat  # last: the most recently used
        return decision

    def _forget_idle(self, now: float) -> None:
        # Amortised: two per decision keep up with one new key per decision.
        tats = self._tats
        for _ in range(2):
            if not tats:
                return
            oldest = next(iter(tats))
            if tats[oldest] > now:
                return
            del tats[oldest]

    def clear(self) -> None:
        self._tats.clear()
