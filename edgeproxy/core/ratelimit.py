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

__all__ = ["ALLOWED", "Decision", "decide", "retry_after_seconds"]


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
