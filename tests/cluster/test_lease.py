"""
The cluster lease (``ClusterRuntime.admit``): what a request holds in its
cluster (its place in flight, a place in the queue for a slot, the slot of its
current attempt with that attempt's breaker verdict, a place in the retry
budget) is given back exactly once, whatever way the request ends.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from edgeproxy.cluster.breaker import Breaker
from edgeproxy.cluster.runtime import FULL, UNAVAILABLE, ClusterRuntime, EndpointRuntime, Lease
from edgeproxy.config import Cluster, Endpoint, Limits, OutlierDetection, RetryPolicy, RoundRobin
from edgeproxy.core.errors import LimitExceeded, Reason
from edgeproxy.core.retry import Retry

E1, E2 = Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 80)
#: Ejects at the first failure, never refused by the cluster's ejection cap.
EJECT_AT_ONCE = OutlierDetection(
    1, base_ejection_time=10.0, max_ejection_percent=100.0, sole_endpoint_answers=True
)


def make(
    endpoints: tuple[Endpoint, ...] = (E1, E2),
    *,
    max_requests: int = 1024,
    max_pending: int = 1024,
    per_endpoint: int = 1024,
    outlier: OutlierDetection | None = EJECT_AT_ONCE,
    retries: RetryPolicy | None = None,
) -> tuple[ClusterRuntime, Clock]:
    clock = Clock()
    cluster = Cluster(
        "api",
        endpoints=list(endpoints),
        policy=RoundRobin(),
        limits=Limits(
            max_requests, max_pending=max_pending, max_connections_per_endpoint=per_endpoint
        ),
        outlier_detection=outlier,
        retries=retries or RetryPolicy(3, min_retries=1, budget_percent=0.0),
        connect_timeout=5.0,
    )
    return ClusterRuntime(cluster, clock, random.Random(0)), clock


def admit(runtime: ClusterRuntime, tried: list[Endpoint] | None = None) -> Lease:
    lease = runtime.admit([] if tried is None else tried)
    assert lease is not None
    return lease


def take(lease: Lease) -> EndpointRuntime:
    choice = lease.take_endpoint(None)
    assert isinstance(choice, EndpointRuntime), choice
    return choice


def behind_a_busy_slot(max_pending: int = 1024) -> tuple[ClusterRuntime, Clock, Lease, Lease]:
    """One endpoint with one slot, taken by the first lease; the second is admitted behind it."""
    runtime, clock = make((E1,), per_endpoint=1, max_pending=max_pending)
    busy = admit(runtime)
    take(busy)
    return runtime, clock, busy, admit(runtime)


def breaker_of(rt: EndpointRuntime) -> Breaker:
    assert rt.breaker is not None
    return rt.breaker


def held(runtime: ClusterRuntime) -> tuple[int, int, int, list[int]]:
    """Everything requests can hold in the cluster: in flight, pending,
    retries in flight, and each endpoint's slots taken."""
    c = runtime.counters
    return (c.in_flight, c.pending, c.retries_in_flight, [rt.in_flight for rt in runtime.endpoints])


NOTHING = (0, 0, 0, [0, 0])


class AdmissionTests(SynchronousTestCase):
    def test_admit_counts_the_request_in_flight_until_released(self) -> None:
        runtime, _ = make()
        lease = admit(runtime)
        self.assertEqual(runtime.counters.in_flight, 1)
        lease.release()
        self.assertEqual(held(runtime), NOTHING)

    def test_admission_beyond_max_requests_is_refused_and_counted(self) -> None:
        runtime, _ = make(max_requests=1)
        first = admit(runtime)
        self.assertIsNone(runtime.admit([]))
        self.assertEqual(runtime.counters.overflows, {Reason.MAX_REQUESTS: 1})
        first.release()
        admit(runtime)

    def test_release_is_once_however_often_it_is_called(self) -> None:
        runtime, _ = make()
        a, b = admit(runtime), admit(runtime)
        take(a)
        a.release()
        a.release()
        a.release(cancelled=True)
        self.assertEqual(held(runtime), (1, 0, 0, [0, 0]))
        b.release()
        self.assertEqual(held(runtime), NOTHING)

    def test_nothing_is_taken_after_release(self) -> None:
        runtime, _ = make()
        lease = admit(runtime)
        lease.release()
        self.assertIs(lease.take_endpoint(None), UNAVAILABLE)
        self.assertIsNone(lease.wait_for_slot())
        lease.answered(200)
        lease.failed(Reason.CONNECT_FAILED, reached=False)
        lease.end_attempt(cancelled=True)
        lease.release()
        self.assertEqual(held(runtime), NOTHING)
        self.assertEqual([rt.failures for rt in runtime.endpoints], [0, 0])


class AttemptTests(SynchronousTestCase):
    def test_success_takes_and_gives_back_one_slot(self) -> None:
        runtime, _ = make()
        tried: list[Endpoint] = []
        lease = admit(runtime, tried)
        rt = take(lease)
        self.assertEqual(tried, [rt.endpoint])
        self.assertEqual((rt.in_flight, rt.requests), (1, 1))
        lease.answered(200)
        lease.end_attempt()
        self.assertEqual(rt.in_flight, 0)
        lease.release()
        self.assertEqual(held(runtime), NOTHING)
        self.assertEqual(breaker_of(rt).status().consecutive_failures, 0)

    def test_a_failure_status_is_the_attempts_one_failure(self) -> None:
        runtime, _ = make(outlier=OutlierDetection(3, sole_endpoint_answers=True))
        lease = admit(runtime)
        rt = take(lease)
        lease.answered(503)
        lease.answered(503)
        lease.failed(Reason.RESPONSE_TIMEOUT, reached=True)
        lease.body_failed(Reason.TRUNCATED)
        status = breaker_of(rt).status()
        self.assertEqual((rt.failures, status.consecutive_failures), (1, 1))
        self.assertEqual(status.last_cause, "status 503")
        lease.release()
        self.assertEqual(held(runtime), NOTHING)

    def test_an_error_is_the_attempts_one_failure(self) -> None:
        runtime, _ = make()
        lease = admit(runtime)
        rt = take(lease)
        lease.failed(Reason.CONNECT_FAILED, reached=False)
        lease.failed(Reason.CONNECT_FAILED, reached=False)
        lease.answered(200)  # too late: the verdict is given
        self.assertEqual(rt.failures, 1)
        self.assertEqual(breaker_of(rt).status().state, "open")
        self.assertEqual(breaker_of(rt).status().last_cause, "connect failed")
        lease.release()
        self.assertEqual(held(runtime), NOTHING)

    def test_a_body_cut_off_after_a_good_head_is_a_failure(self) -> None:
        runtime, _ = make(outlier=OutlierDetection(3, sole_endpoint_answers=True))
        lease = admit(runtime)
        rt = take(lease)
        lease.answered(200)
        lease.body_failed(Reason.IDLE_TIMEOUT)
        lease.body_failed(Reason.IDLE_TIMEOUT)
        self.assertEqual(rt.failures, 1)
        self.assertEqual(breaker_of(rt).status().last_cause, "idle timeout")
        lease.end_attempt()
        lease.body_failed(Reason.TRUNCATED)  # the attempt is over
        self.assertEqual(rt.failures, 1)

    def test_a_sole_endpoint_reached_counts_as_reachable(self) -> None:
        """Without sole_endpoint_answers, a one-endpoint cluster's breaker
        hears only whether the endpoint could be reached."""
        runtime, _ = make((E1,), outlier=OutlierDetection(1))
        lease = admit(runtime)
        rt = take(lease)
        lease.failed(Reason.RESPONSE_TIMEOUT, reached=True)
        self.assertEqual(rt.failures, 1)
        self.assertEqual(breaker_of(rt).status().state, "closed")
        lease.release()
        lease = admit(runtime)
        take(lease)
        lease.failed(Reason.CONNECT_FAILED, reached=False)
        self.assertEqual(breaker_of(rt).status().state, "open")

    def test_taking_again_ends_the_attempt_before(self) -> None:
        runtime, _ = make()
        tried: list[Endpoint] = []
        lease = admit(runtime, tried)
        first = take(lease)
        lease.failed(Reason.BAD_RESPONSE, reached=True)
        second = take(lease)
        self.assertIsNot(first, second)
        self.assertEqual(tried, [first.endpoint, second.endpoint])
        self.assertEqual((first.in_flight, second.in_flight), (0, 1))
        # Both tried: nothing more to take.
        self.assertIs(lease.take_endpoint(None), UNAVAILABLE)
        self.assertEqual(second.in_flight, 0)
        lease.release()
        self.assertEqual(held(runtime), NOTHING)

    def test_full_endpoints_take_nothing(self) -> None:
        runtime, _, busy, lease = behind_a_busy_slot()
        self.assertIs(lease.take_endpoint(None), FULL)
        lease.release()
        busy.release()
        self.assertEqual(held(runtime), (0, 0, 0, [0]))


class CancelTests(SynchronousTestCase):
    def half_open(self) -> tuple[ClusterRuntime, Clock, EndpointRuntime]:
        """E1 half-open; E2 ejected, and the cluster's cap (one at a time)
        allows no other ejection: a failed probe of E1 leaves its breaker
        half-open, with the probe free again."""
        runtime, clock = make(
            (E1, E2),
            outlier=OutlierDetection(
                1, base_ejection_time=10.0, max_ejection_percent=0.0, sole_endpoint_answers=True
            ),
        )
        rt, other = runtime.endpoints
        breaker_of(rt).record_failure(Reason.CONNECT_FAILED)
        clock.advance(10)
        breaker_of(other).record_failure(Reason.CONNECT_FAILED)
        self.assertEqual(breaker_of(rt).status().state, "half_open")
        self.assertEqual(breaker_of(other).status().state, "open")
        return runtime, clock, rt

    def test_a_cancelled_attempt_without_a_verdict_frees_the_probe(self) -> None:
        runtime, _, rt = self.half_open()
        lease = admit(runtime)
        self.assertIs(take(lease), rt)
        self.assertFalse(breaker_of(rt).admit())
        lease.release(cancelled=True)
        self.assertTrue(breaker_of(rt).admit())
        self.assertEqual(held(runtime), (0, 0, 0, [0, 0]))

    def test_a_cancelled_attempt_with_a_verdict_frees_no_one_elses_probe(self) -> None:
        runtime, _, rt = self.half_open()
        first = admit(runtime)
        take(first)
        first.failed(Reason.CONNECT_FAILED, reached=False)
        self.assertEqual(breaker_of(rt).status().state, "half_open")
        second = admit(runtime)
        self.assertIs(take(second), rt)  # the next probe
        first.release(cancelled=True)
        # The second probe is still out: nobody else gets in.
        self.assertFalse(breaker_of(rt).admit())
        second.release(cancelled=True)
        self.assertTrue(breaker_of(rt).admit())


class WaitTests(SynchronousTestCase):
    def test_a_freed_slot_ends_the_wait(self) -> None:
        runtime, _, busy, lease = behind_a_busy_slot()
        d = lease.wait_for_slot()
        assert d is not None
        self.assertEqual(runtime.counters.pending, 1)
        busy.release()
        self.successResultOf(d)
        self.assertEqual(runtime.counters.pending, 0)
        take(lease)
        lease.release()
        self.assertEqual(held(runtime), (0, 0, 0, [0]))

    def test_the_wait_times_out_as_a_limit(self) -> None:
        runtime, clock, busy, lease = behind_a_busy_slot()
        d = lease.wait_for_slot()
        assert d is not None
        clock.advance(5.0)
        failure = self.failureResultOf(d, LimitExceeded)
        self.assertIs(failure.value.reason, Reason.PENDING_TIMEOUT)
        self.assertEqual(runtime.counters.overflows, {Reason.PENDING_TIMEOUT: 1})
        lease.release()
        busy.release()
        self.assertEqual(held(runtime), (0, 0, 0, [0]))

    def test_a_cancelled_wait_leaves_the_queue(self) -> None:
        runtime, _, busy, lease = behind_a_busy_slot()
        d = lease.wait_for_slot()
        assert d is not None
        lease.release(cancelled=True)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        busy.release()
        self.assertEqual(held(runtime), (0, 0, 0, [0]))
        self.assertEqual(runtime.counters.overflows, {})

    def test_a_full_queue_is_refused_and_counted(self) -> None:
        runtime, _, _, lease = behind_a_busy_slot(max_pending=0)
        self.assertIsNone(lease.wait_for_slot())
        self.assertEqual(runtime.counters.overflows, {Reason.MAX_PENDING: 1})
        self.assertEqual(runtime.counters.pending, 0)


class RetryBudgetTests(SynchronousTestCase):
    def test_the_first_retry_within_the_budget_takes_a_place_kept_until_release(self) -> None:
        runtime, _ = make()
        lease = admit(runtime)
        take(lease)
        self.assertTrue(lease.retry_budget_allows())
        self.assertTrue(lease.spend_retry(Retry.WITHIN_BUDGET))
        take(lease)
        self.assertTrue(lease.spend_retry(Retry.WITHIN_BUDGET))
        c = runtime.counters
        self.assertEqual((c.retries_in_flight, c.retries_total), (1, 2))
        lease.release()
        lease.release()
        self.assertEqual(held(runtime), NOTHING)

    def test_a_request_holding_a_place_is_allowed_whatever_the_budget(self) -> None:
        runtime, _ = make()  # min_retries 1, budget 0 %
        a, b = admit(runtime), admit(runtime)
        a.spend_retry(Retry.WITHIN_BUDGET)
        self.assertTrue(a.retry_budget_allows())
        self.assertFalse(b.retry_budget_allows())
        a.release()
        self.assertTrue(b.retry_budget_allows())

    def test_outside_the_budget_takes_no_place(self) -> None:
        runtime, _ = make()
        lease = admit(runtime)
        self.assertTrue(lease.spend_retry(Retry.OUTSIDE_BUDGET))
        c = runtime.counters
        self.assertEqual((c.retries_in_flight, c.retries_total), (0, 1))

    def test_refused_nowhere_and_no_are_not_retries(self) -> None:
        runtime, _ = make()
        lease = admit(runtime)
        self.assertFalse(lease.spend_retry(Retry.REFUSED))
        self.assertFalse(lease.spend_retry(Retry.NOWHERE))
        self.assertFalse(lease.spend_retry(Retry.NO))
        c = runtime.counters
        self.assertEqual((c.retries_in_flight, c.retries_total, c.retries_refused), (0, 0, 1))

    def test_has_candidate_sees_the_tried_endpoints(self) -> None:
        runtime, _ = make()
        lease = admit(runtime)
        self.assertTrue(lease.has_candidate())
        take(lease)
        self.assertTrue(lease.has_candidate())
        take(lease)
        self.assertFalse(lease.has_candidate())


class SplitMoveTests(SynchronousTestCase):
    def test_moving_to_another_cluster_gives_everything_back_here(self) -> None:
        here, _ = make()
        there, _ = make()
        tried: list[Endpoint] = []
        lease = admit(here, tried)
        take(lease)
        lease.failed(Reason.CONNECT_FAILED, reached=False)
        lease.spend_retry(Retry.WITHIN_BUDGET)
        # As the forwarder moves a request to another Split side.
        moved = admit(there, tried)
        moved.spend_retry(Retry.OUTSIDE_BUDGET)
        lease.release()
        self.assertEqual(held(here), NOTHING)
        self.assertEqual(held(there), (1, 0, 0, [0, 0]))
        # The endpoint tried on the first side stays tried on the second.
        self.assertEqual(take(moved).endpoint, E2)
        moved.release()
        lease.release()
        self.assertEqual(held(there), NOTHING)
        self.assertEqual(held(here), NOTHING)


# -- any sequence of what a request may do, then its end: nothing is left held

_STEPS = st.sampled_from(
    [
        "take",
        "pass",
        "fail_status",
        "fail_connect",
        "fail_body",
        "end",
        "wait",
        "timeout",
        "retry",
        "retry_outside",
        "refuse",
        "release",
        "cancel",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), _STEPS), max_size=40))
def test_whatever_happens_every_lease_gives_everything_back(
    steps: list[tuple[int, str]],
) -> None:
    runtime, clock = make(per_endpoint=1, max_requests=3, max_pending=2)
    leases = [admit(runtime) for _ in range(3)]
    waits = []
    for index, step in steps:
        lease = leases[index]
        if step == "take":
            lease.take_endpoint(None)
        elif step == "pass":
            lease.answered(200)
        elif step == "fail_status":
            lease.answered(502)
        elif step == "fail_connect":
            lease.failed(Reason.CONNECT_FAILED, reached=False)
        elif step == "fail_body":
            lease.body_failed(Reason.TRUNCATED)
        elif step == "end":
            lease.end_attempt()
        elif step == "wait":
            d = lease.wait_for_slot()
            if d is not None:
                d.addErrback(lambda f: None)
                waits.append(d)
        elif step == "timeout":
            clock.advance(5.0)
        elif step == "retry":
            lease.spend_retry(Retry.WITHIN_BUDGET)
        elif step == "retry_outside":
            lease.spend_retry(Retry.OUTSIDE_BUDGET)
        elif step == "refuse":
            lease.spend_retry(Retry.REFUSED)
        elif step == "release":
            lease.release()
        elif step == "cancel":
            lease.release(cancelled=True)
        c = runtime.counters
        assert 0 <= c.in_flight <= 3
        assert 0 <= c.retries_in_flight <= c.in_flight
        assert all(0 <= rt.in_flight <= 1 for rt in runtime.endpoints)
    for d in waits:
        d.cancel()
    for lease in leases:
        lease.release(cancelled=True)
    assert held(runtime) == NOTHING
