"""
The per-cluster counters: pure bookkeeping against ``Limits`` and the retry
budget, each count changed through a method of its own.
"""

from __future__ import annotations

import attrs
import pytest

from edgeproxy.cluster.limits import ClusterCounters
from edgeproxy.config import Limits, RetryPolicy
from edgeproxy.core.errors import Reason


def counters(
    max_requests: int = 3,
    max_pending: int = 2,
    *,
    min_retries: int = 3,
    budget_percent: float = 20.0,
) -> ClusterCounters:
    return ClusterCounters(
        Limits(max_requests, max_pending=max_pending),
        RetryPolicy(min_retries=min_retries, budget_percent=budget_percent),
    )


def test_starts_empty() -> None:
    c = counters()
    assert (c.in_flight, c.pending, c.retries_in_flight) == (0, 0, 0)
    assert c.overflows == {}
    assert (c.retries_total, c.retries_refused) == (0, 0)


def test_request_overflow_at_max_requests() -> None:
    c = counters(max_requests=3)
    for n in range(3):
        c.in_flight = n
        assert c.request_overflow() is None
    c.in_flight = 3
    assert c.request_overflow() is Reason.MAX_REQUESTS
    c.in_flight = 4
    assert c.request_overflow() is Reason.MAX_REQUESTS


def test_pending_overflow_at_max_pending() -> None:
    c = counters(max_pending=2)
    c.pending = 1
    assert c.pending_overflow() is None
    c.pending = 2
    assert c.pending_overflow() is Reason.MAX_PENDING


def test_max_pending_zero_means_no_queue() -> None:
    c = counters(max_pending=0)
    assert c.pending_overflow() is Reason.MAX_PENDING


def test_count_overflow_accumulates_per_limit() -> None:
    c = counters()
    c.count_overflow(Reason.MAX_REQUESTS)
    c.count_overflow(Reason.MAX_REQUESTS)
    c.count_overflow(Reason.PENDING_TIMEOUT)
    assert c.overflows == {"max_requests": 2, "pending_timeout": 1}


def test_min_retries_is_a_floor_with_nothing_in_flight() -> None:
    c = counters(min_retries=2, budget_percent=20.0)
    assert c.retry_budget_allows()
    c.retries_in_flight = 1
    assert c.retry_budget_allows()
    c.retries_in_flight = 2
    assert not c.retry_budget_allows()


@pytest.mark.parametrize(
    ("in_flight", "retries_in_flight", "allowed"),
    [
        # floor(10 * 20%) = 2 > min_retries 1
        (10, 0, True),
        (10, 1, True),
        (10, 2, False),
        # floor(14 * 20%) = 2: the share rounds down
        (14, 2, False),
        # floor(15 * 20%) = 3
        (15, 2, True),
        (15, 3, False),
        # floor(4 * 20%) = 0: min_retries 1 applies
        (4, 0, True),
        (4, 1, False),
    ],
)
def test_budget_percent_of_in_flight(in_flight: int, retries_in_flight: int, allowed: bool) -> None:
    c = counters(max_requests=100, min_retries=1, budget_percent=20.0)
    c.in_flight = in_flight
    c.retries_in_flight = retries_in_flight
    assert c.retry_budget_allows() is allowed


def test_zero_budget_refuses_every_retry() -> None:
    c = counters(min_retries=0, budget_percent=0.0)
    c.in_flight = 1000
    assert not c.retry_budget_allows()


def test_full_budget_allows_a_retry_per_request_in_flight() -> None:
    c = counters(min_retries=0, budget_percent=100.0)
    c.in_flight = 1
    assert c.retry_budget_allows()
    c.retries_in_flight = 1
    assert not c.retry_budget_allows()


def test_asking_the_budget_counts_nothing() -> None:
    """A query: taking a place and counting a refusal are separate methods."""
    c = counters(min_retries=0, budget_percent=0.0)
    before = attrs.asdict(c)
    assert not c.retry_budget_allows()
    assert not c.retry_budget_allows()
    assert attrs.asdict(c) == before


def test_retry_counts_change_through_their_methods() -> None:
    c = counters(min_retries=1)
    c.take_retry_place()
    assert c.retries_in_flight == 1
    assert not c.retry_budget_allows()
    c.count_retry()
    c.count_retry()
    c.refuse_retry()
    c.give_back_retry_place()
    assert (c.retries_in_flight, c.retries_total, c.retries_refused) == (0, 2, 1)
    assert c.retry_budget_allows()


def test_admit_counts_in_flight_up_to_max_requests() -> None:
    c = counters(max_requests=2)
    assert c.admit()
    assert c.admit()
    assert not c.admit()
    assert not c.admit()
    assert c.in_flight == 2
    assert c.overflows == {Reason.MAX_REQUESTS: 2}
    c.leave()
    assert c.admit()
    assert c.in_flight == 2


def test_queue_counts_pending_up_to_max_pending() -> None:
    c = counters(max_pending=1)
    assert c.queue()
    assert not c.queue()
    assert c.pending == 1
    assert c.overflows == {Reason.MAX_PENDING: 1}
    c.unqueue()
    assert c.pending == 0
    assert c.queue()


def test_max_pending_zero_queues_nothing() -> None:
    c = counters(max_pending=0)
    assert not c.queue()
    assert (c.pending, c.overflows) == (0, {Reason.MAX_PENDING: 1})
