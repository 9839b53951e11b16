"""
A rate-limit store: where the buckets are kept.  :class:`Store` is what the
stage calls; :class:`MemoryStore` is the default, one per process.

The memory store keeps each key's TAT (one float) in insertion order of last
use, so the least recently used key is the first: a decision forgets up to
two idle keys from that end (a key whose TAT has passed is a full bucket,
the same as none), and when ``max_keys`` are kept the least recently used one
is evicted to make room (that client's bucket starts full again).  A flood of
distinct keys therefore costs at most ``max_keys`` entries, about 150 bytes
each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.internet.defer import Deferred

from edgeproxy.config.settings import DEFAULT_RATE_LIMIT_MAX_KEYS
from edgeproxy.core.ratelimit import Decision, decide

__all__ = ["DEFAULT_MAX_KEYS", "MemoryStore", "Store", "StoreError"]

#: Keys the memory store keeps at most (--rate-limit-max-keys).
DEFAULT_MAX_KEYS = DEFAULT_RATE_LIMIT_MAX_KEYS


class StoreError(Exception):
    """The store could not decide (unreachable, an error, no answer in time)."""


class Store(Protocol):
    """Decides one request against the bucket ``key`` (a route's and a
    client's).  A synchronous store answers with the :class:`Decision`; an
    asynchronous one with a Deferred that fires with it, or fails with
    :class:`StoreError`, within its own timeout."""

    #: What the store is, for logs, metrics and /status (no password in it).
    name: str

    def decide(self, key: str, rate: float, burst: int) -> Decision | Deferred[Decision]: ...

    def figures(self) -> dict[str, float]:
        """Numbers for the metrics (``keys``, ``errors``, ``up`` ...)."""
        ...

    def close(self) -> Deferred[None] | None: ...


class MemoryStore:
    """Buckets in this process's memory (each ``--workers`` process its own)."""

    name = "memory"

    def __init__(self, clock: Callable[[], float], max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, not {max_keys}")
        self._clock = clock
        self.max_keys = max_keys
        #: key -> TAT, least recently used first (dicts keep insertion order).
        self._tats: dict[str, float] = {}
        #: Keys evicted while their bucket was still in use.
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._tats)

    def decide(self, key: str, rate: float, burst: int) -> Decision:
        now = self._clock()
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

    def figures(self) -> dict[str, float]:
        return {"keys": len(self._tats), "evictions": self.evictions}

    def close(self) -> None:
        self._tats.clear()
