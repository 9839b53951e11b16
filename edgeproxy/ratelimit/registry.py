"""
The process's rate-limit store and every route's decision counters, kept
across configuration reloads: a route's buckets are named after its virtual
host's first name and its prefix (:func:`bucket_name`), so a reload that keeps
a route keeps its buckets, in memory as in Redis (a changed ``rate`` or
``burst`` applies to them from the next request).  The metrics read
:meth:`RateLimits.figures`.
"""

from __future__ import annotations

from edgeproxy.config import Route, VirtualHost
from edgeproxy.ratelimit.store import Store

__all__ = ["RESULTS", "DecisionCounters", "RateLimits", "bucket_name"]

#: What the stage did with a request, as the metrics label it.
RESULTS = ("allowed", "limited", "unkeyed", "failed_open", "failed_closed")


def bucket_name(vhost: VirtualHost, route: Route) -> str:
    """The name a route's buckets go by (in keys and metrics): ``<first host><prefix>``."""
    return f"{vhost.names[0]}{route.prefix}"


class DecisionCounters:
    """What one route's rate limit decided, by result (they only go up)."""

    __slots__ = RESULTS

    def __init__(self) -> None:
        #: Under the limit: passed on.
        self.allowed = 0
        #: Over it: 429.
        self.limited = 0
        #: No key (a ``header:NAME`` key and no such header): not limited.
        self.unkeyed = 0
        #: The store failed; passed on (``on_store_error="open"``) or 503 ("closed").
        self.failed_open = 0
        self.failed_closed = 0


class RateLimits:
    """The store every route's rate limit uses, and their counters by route."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._counters: dict[str, DecisionCounters] = {}

    def counters_for(self, name: str) -> DecisionCounters:
        counters = self._counters.get(name)
        if counters is None:
            counters = self._counters[name] = DecisionCounters()
        return counters

    def figures(self) -> tuple[str, dict[str, float], list[tuple[str, DecisionCounters]]]:
        """The store's name and numbers, and each route's counters."""
        return self.store.name, self.store.figures(), sorted(self._counters.items())
