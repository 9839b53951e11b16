"""
Per-cluster limits (what Envoy calls circuit-breaker thresholds): requests in
flight, requests waiting for a free connection slot, and the retry budget.
Pure bookkeeping; the waiting itself is done by :mod:`edgeproxy.cluster.runtime`.
"""

from __future__ import annotations

import math

import attrs

from edgeproxy.config import Limits, RetryPolicy
from edgeproxy.core.errors import Reason

__all__ = ["ClusterCounters"]


@attrs.define
class ClusterCounters:
    """Live counts for one cluster, checked against its limits."""

    limits: Limits
    retries: RetryPolicy
    in_flight: int = 0
    pending: int = 0
    retries_in_flight: int = 0
    #: Totals since start, for /status and metrics.
    overflows: dict[Reason, int] = attrs.field(factory=dict)
    retries_total: int = 0
    retries_refused: int = 0

    def request_overflow(self) -> Reason | None:
        """The limit a new request would exceed, or None."""
        if self.in_flight >= self.limits.max_requests:
            return Reason.MAX_REQUESTS
        return None

    def pending_overflow(self) -> Reason | None:
        if self.pending >= self.limits.max_pending:
            return Reason.MAX_PENDING
        return None

    def count_overflow(self, limit: Reason) -> None:
        self.overflows[limit] = self.overflows.get(limit, 0) + 1

    def retry_allowed(self) -> bool:
        """The retry budget: retries in flight stay under a share of all requests in flight."""
        budget = max(
            self.retries.min_retries,
            math.floor(self.in_flight * self.retries.budget_percent / 100),
        )
        allowed = self.retries_in_flight < budget
        if not allowed:
            self.retries_refused += 1
        return allowed
