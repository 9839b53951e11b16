"""
A rate-limit store: where the buckets are kept.  :class:`Store` is what the
stage calls; :class:`MemoryStore` is the default, one per process.

The memory store keeps each key's TAT (one float) in a bounded
:class:`~edgeproxy.core.ratelimit.Buckets`: idle keys are forgotten, and past
``max_keys`` the least recently used is evicted.  A flood of distinct keys
therefore costs at most ``max_keys`` entries, about 150 bytes each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.internet.defer import Deferred

from edgeproxy.config.settings import DEFAULT_RATE_LIMIT_MAX_KEYS
from edgeproxy.core.ratelimit import Buckets, Decision

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
    """Buckets in this process's memory (each ``--workers`` process its own),
    bounded as :class:`~edgeproxy.core.ratelimit.Buckets` says."""

    name = "memory"

    def __init__(self, clock: Callable[[], float], max_keys: int = DEFAULT_MAX_KEYS) -> None:
        self._clock = clock
        self._buckets = Buckets(max_keys)
        self.max_keys = max_keys

    def __len__(self) -> int:
        return len(self._buckets)

    @property
    def evictions(self) -> int:
        """Keys evicted while their bucket was still in use."""
        return self._buckets.evictions

    def decide(self, key: str, rate: float, burst: int) -> Decision:
        return self._buckets.decide(key, self._clock(), rate, burst)

    def figures(self) -> dict[str, float]:
        return {"keys": len(self._buckets), "evictions": self._buckets.evictions}

    def close(self) -> None:
        self._buckets.clear()
