"""
Per-cluster limits (what Envoy calls circuit-breaker thresholds): requests in
flight, requests waiting for a free connection slot, and the retry budget.
Pure bookkeeping: every count changes through a method of
:class:`ClusterCounters`, called by a request's
:class:`~edgeproxy.cluster.runtime.Lease`; the waiting itself is done by
:mod:`edgeproxy.cluster.runtime`.
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
        """The limit one more waiting request would exceed, or None."""
        if self.pending >= self.limits.max_pending:
            return Reason.MAX_PENDING
        return None

    def count_overflow(self, limit: Reason) -> None:
        self.overflows[limit] = self.overflows.get(limit, 0) + 1

    # -- what a lease takes and gives back ------------------------------------

    def admit(self) -> bool:
        """Count one more request in flight; or, at ``max_requests``, count the overflow."""
        overflow = self.request_overflow()
        if overflow is not None:
            self.count_overflow(overflow)
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        """An admitted request is over."""
        self.in_flight -= 1

    def queue(self) -> bool:
        """Count one more request waiting for a slot; or, at ``max_pending``, count the overflow."""
        overflow = self.pending_overflow()
        if overflow is not None:
            self.count_overflow(overflow)
            return False
        self.pending += 1
        return True

    def unqueue(self) -> None:
        """A waiting request got its slot, gave up or went away."""
        self.pending -= 1

    def retry_budget_allows(self) -> bool:
        """Whether one more request may start retrying: retries in flight stay
        under a share of all requests in flight (``min_retries`` always may)."""
        budget = max(
            self.retries.min_retries,
            math.floor(self.in_flight * self.retries.budget_percent / 100),
        )
        return self.retries_in_flight < budget

    def take_retry_place(self) -> None:
        """A request starts retrying (its later retries reuse the place)."""
        self.retries_in_flight += 1

    def give_back_retry_place(self) -> None:
        self.retries_in_flight -= 1

    def count_retry(self) -> None:
        """A retry is sent (within the budget or not)."""
        self.retries_total += 1

    def refuse_retry(self) -> None:
        """A retry was wanted and the budget said no."""
        self.retries_refused += 1
