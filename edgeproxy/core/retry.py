"""
Whether a failed or unwanted attempt is retried: a pure decision.

:func:`decide_retry` takes the cluster's retry rules, how many attempts the
request has made, its method and what the last attempt came to (a status,
or an :class:`~edgeproxy.core.errors.EdgeProxyError`), and asks two questions
of the caller only when the answer depends on them: is there an endpoint left
to try, and does the retry budget allow one more.  Spending the budget is
the caller's, once the decision is made (:class:`edgeproxy.cluster.runtime.Lease`).
"""

from __future__ import annotations

from collections.abc import Collection
from enum import Enum
from typing import Protocol

from edgeproxy.core.errors import EdgeProxyError

__all__ = ["IDEMPOTENT_METHODS", "Retry", "RetryRules", "RetryState", "decide_retry"]

#: Idempotent methods (RFC 9110 9.2.2): retried after a failure past sending,
#: or an answer in ``retry_statuses`` (and once on a fresh connection by the
#: upstream client when a pooled one turns out stale).
IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


class RetryRules(Protocol):
    """What the decision reads of a cluster's ``RetryPolicy``."""

    @property
    def attempts(self) -> int: ...

    @property
    def retry_statuses(self) -> Collection[int]: ...


class RetryState(Protocol):
    """What the decision asks of the request's standing in its cluster (the
    cluster lease answers)."""

    def has_candidate(self) -> bool:
        """Is there an endpoint not yet tried that could take a retry?"""
        ...

    def retry_budget_allows(self) -> bool:
        """May the request retry within the cluster's retry budget?"""
        ...


class Retry(Enum):
    """What :func:`decide_retry` decided."""

    #: Not retried: the attempts are spent, or the method, the status or the
    #: error is not one that is retried.
    NO = "no"
    #: It could be retried, but no endpoint is left that could take it.
    NOWHERE = "nowhere"
    #: It could be retried, but the retry budget is spent (counted as refused).
    REFUSED = "refused"
    #: Retried outside the budget: the request never reached an endpoint, so
    #: it adds no load anywhere.
    OUTSIDE_BUDGET = "outside_budget"
    #: Retried within the budget.
    WITHIN_BUDGET = "within_budget"


def decide_retry(
    rules: RetryRules,
    attempts: int,
    method: bytes,
    status: int | None,
    error: EdgeProxyError | None,
    state: RetryState,
) -> Retry:
    """Whether the request is retried after its last attempt: it was answered
    ``status`` (``error`` is None), or it failed with ``error``.

    ``attempts`` counts the attempts made, the last one included.  A request
    that was never sent (``error.never_sent``) is retried whatever its method,
    outside the budget; one that failed after it was sent, or was answered
    with a status in ``rules.retry_statuses``, only if its method is
    idempotent, within the budget.  ``state`` is asked only what the decision
    turns on, in that order: whether an endpoint is left, then whether the
    budget allows (this runs for every response, and the first question walks
    the cluster's endpoints).
    """
    # The answer first: most are not a retry status, and this runs for each.
    if error is None:
        if status not in rules.retry_statuses or method not in IDEMPOTENT_METHODS:
            return Retry.NO
        outside = False
    else:
        outside = error.never_sent
        if not outside and method not in IDEMPOTENT_METHODS:
            return Retry.NO
    if attempts >= rules.attempts:
        return Retry.NO
    if not state.has_candidate():
        return Retry.NOWHERE
    if outside:
        return Retry.OUTSIDE_BUDGET
    return Retry.WITHIN_BUDGET if state.retry_budget_allows() else Retry.REFUSED
