"""
ClusterRuntime: which endpoint a request gets (health, ejection, limits,
tried endpoints, panic mode, half-open probes), the queue of requests waiting
for a slot, Retry-After, the status snapshot and stopping.  All on a Clock.
"""

from __future__ import annotations

import random

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from edgeproxy.cluster.breaker import Transition
from edgeproxy.cluster.runtime import FULL, UNAVAILABLE, ClusterRuntime, EndpointRuntime, NoSlot
from edgeproxy.config import (
    Cluster,
    Endpoint,
    HealthCheck,
    Limits,
    OutlierDetection,
    RoundRobin,
)
from edgeproxy.core.errors import Reason

E1, E2, E3, E4 = (
    Endpoint("10.0.0.1", 80),
    Endpoint("10.0.0.2", 80),
    Endpoint("10.0.0.3", 80),
    Endpoint("10.0.0.4", 80),
)


def make(
    endpoints: tuple[Endpoint, ...] = (E1, E2),
    *,
    per_endpoint: int = 1024,
    health: HealthCheck | None = None,
    outlier: OutlierDetection | None = None,
    panic: bool = False,
    clock: Clock | None = None,
    transitions: list[Transition] | None = None,
) -> tuple[ClusterRuntime, Clock]:
    clock = clock or Clock()
    cluster = Cluster(
        "api",
        endpoints=list(endpoints),
        policy=RoundRobin(),
        limits=Limits(max_connections_per_endpoint=per_endpoint),
        health_check=health,
        outlier_detection=outlier,
        panic_mode=panic,
    )
    runtime = ClusterRuntime(
        cluster,
        clock,
        random.Random(0),
        on_transition=transitions.append if transitions is not None else None,
    )
    return runtime, clock


def rt_of(runtime: ClusterRuntime, endpoint: Endpoint) -> EndpointRuntime:
    return next(rt for rt in runtime.endpoints if rt.endpoint == endpoint)


def take(runtime: ClusterRuntime, tried: tuple[Endpoint, ...] = ()) -> EndpointRuntime:
    choice = runtime.choose(tried, None)
    assert isinstance(choice, EndpointRuntime), choice
    return choice


def health_down(runtime: ClusterRuntime, endpoint: Endpoint) -> None:
    health = rt_of(runtime, endpoint).health
    assert health is not None
    for _ in range(runtime.cluster.health_check.fall):  # type: ignore[union-attr]
        health.record_fail("status 503")
    assert not health.healthy()


def eject(runtime: ClusterRuntime, endpoint: Endpoint) -> None:
    breaker = rt_of(runtime, endpoint).breaker
    assert breaker is not None
    assert runtime.cluster.outlier_detection is not None
    for _ in range(runtime.cluster.outlier_detection.consecutive_failures):
        breaker.record_failure(Reason.CONNECT_FAILED)
    assert breaker.is_ejected()


class ChooseTests(SynchronousTestCase):
    def test_takes_a_slot(self) -> None:
        runtime, _ = make()
        rt = take(runtime)
        self.assertEqual(rt.in_flight, 1)
        self.assertEqual(rt.requests, 1)
        runtime.release(rt)
        self.assertEqual(rt.in_flight, 0)
        self.assertEqual(rt.requests, 1)

    def test_round_robin_over_all_up_endpoints(self) -> None:
        runtime, _ = make()
        picked = {take(runtime).endpoint for _ in range(4)}
        self.assertEqual(picked, {E1, E2})

    def test_health_down_endpoint_is_never_picked(self) -> None:
        runtime, _ = make(health=HealthCheck(fall=2))
        health = rt_of(runtime, E1).health
        assert health is not None
        health.record_fail("timeout")
        # One failure is not enough (fall=2): still up.
        self.assertTrue(rt_of(runtime, E1).up())
        health_down(runtime, E1)
        self.assertFalse(rt_of(runtime, E1).up())
        for _ in range(6):
            self.assertEqual(take(runtime).endpoint, E2)

    def test_ejected_endpoint_is_never_picked(self) -> None:
        runtime, _ = make(outlier=OutlierDetection(2))
        breaker = rt_of(runtime, E2).breaker
        assert breaker is not None
        breaker.record_failure(Reason.CONNECT_FAILED)
        self.assertTrue(rt_of(runtime, E2).up())
        breaker.record_failure(Reason.CONNECT_FAILED)
        self.assertFalse(rt_of(runtime, E2).up())
        for _ in range(6):
            self.assertEqual(take(runtime).endpoint, E1)

    def test_tried_endpoints_are_excluded(self) -> None:
        runtime, _ = make((E1, E2, E3))
        for _ in range(6):
            self.assertEqual(take(runtime, (E1, E3)).endpoint, E2)
        self.assertIs(runtime.choose((E1, E2, E3), None), UNAVAILABLE)

    def test_full_when_every_up_endpoint_is_at_its_limit(self) -> None:
        runtime, _ = make(per_endpoint=1)
        first, second = take(runtime), take(runtime)
        self.assertEqual({first.endpoint, second.endpoint}, {E1, E2})
        self.assertIs(runtime.choose((), None), FULL)
        runtime.release(second)
        self.assertIs(take(runtime), second)

    def test_full_ignores_down_endpoints_with_free_slots(self) -> None:
        runtime, _ = make(per_endpoint=1, health=HealthCheck())
        health_down(runtime, E1)
        self.assertEqual(take(runtime).endpoint, E2)
        # E1 has a free slot but is down: the answer is "wait", not "go to E1".
        self.assertIs(runtime.choose((), None), FULL)

    def test_unavailable_when_none_is_up(self) -> None:
        runtime, _ = make(health=HealthCheck())
        health_down(runtime, E1)
        health_down(runtime, E2)
        choice = runtime.choose((), None)
        self.assertIs(choice, UNAVAILABLE)
        assert isinstance(choice, NoSlot)
        self.assertEqual(choice.reason, "unavailable")
        self.assertEqual([rt.in_flight for rt in runtime.endpoints], [0, 0])

    def test_panic_mode_tries_every_untried_endpoint_when_none_is_up(self) -> None:
        runtime, _ = make(health=HealthCheck(), panic=True)
        health_down(runtime, E1)
        health_down(runtime, E2)
        first = take(runtime)
        self.assertEqual(first.in_flight, 1)
        second = take(runtime, (first.endpoint,))
        self.assertNotEqual(second.endpoint, first.endpoint)
        self.assertIs(runtime.choose((E1, E2), None), UNAVAILABLE)

    def test_panic_mode_ignores_open_breakers(self) -> None:
        runtime, _ = make((E1,), outlier=OutlierDetection(1), panic=True)
        eject(runtime, E1)
        self.assertEqual(take(runtime).endpoint, E1)

    def test_panic_mode_is_unused_while_one_endpoint_is_up(self) -> None:
        runtime, _ = make(health=HealthCheck(), panic=True)
        health_down(runtime, E1)
        for _ in range(4):
            self.assertEqual(take(runtime).endpoint, E2)

    def test_half_open_breaker_admits_one_probe(self) -> None:
        runtime, clock = make((E1,), outlier=OutlierDetection(1, base_ejection_time=10.0))
        eject(runtime, E1)
        self.assertIs(runtime.choose((), None), UNAVAILABLE)
        clock.advance(10)
        breaker = rt_of(runtime, E1).breaker
        assert breaker is not None
        self.assertEqual(breaker.status().state, "half_open")
        probe = take(runtime)
        self.assertEqual(probe.endpoint, E1)
        # The probe is out: nobody else goes to E1 until its verdict.
        self.assertIs(runtime.choose((), None), UNAVAILABLE)
        self.assertIs(runtime.choose((), None), UNAVAILABLE)
        self.assertEqual(probe.in_flight, 1)
        breaker.record_success()
        runtime.release(probe)
        self.assertEqual(breaker.status().state, "closed")
        take(runtime)
        take(runtime)

    def test_half_open_refusal_falls_through_to_another_endpoint(self) -> None:
        runtime, clock = make(outlier=OutlierDetection(1, base_ejection_time=10.0))
        eject(runtime, E1)
        clock.advance(10)
        picked = [take(runtime).endpoint for _ in range(4)]
        # E1 got exactly its one probe; everything else went to E2.
        self.assertEqual(picked.count(E1), 1)
        self.assertEqual(picked.count(E2), 3)

    def test_cancelled_probe_frees_the_half_open_breaker(self) -> None:
        runtime, clock = make((E1,), outlier=OutlierDetection(1, base_ejection_time=10.0))
        eject(runtime, E1)
        clock.advance(10)
        probe = take(runtime)
        assert probe.breaker is not None
        probe.breaker.record_cancelled()
        runtime.release(probe)
        self.assertEqual(take(runtime).endpoint, E1)


class WaitForSlotTests(SynchronousTestCase):
    def test_release_wakes_exactly_one_waiter(self) -> None:
        runtime, _ = make((E1,), per_endpoint=1)
        rt = take(runtime)
        first, second = runtime.wait_for_slot(5), runtime.wait_for_slot(5)
        self.assertNoResult(first)
        self.assertNoResult(second)
        # As the forwarder does: the woken waiter takes the freed slot at once.
        first.addCallback(lambda _: take(runtime))
        runtime.release(rt)
        self.assertIs(self.successResultOf(first), rt)
        self.assertNoResult(second)
        self.assertEqual(rt.in_flight, 1)
        runtime.release(rt)
        self.assertIsNone(self.successResultOf(second))
        self.assertEqual(rt.in_flight, 0)

    def test_release_without_waiters(self) -> None:
        runtime, clock = make((E1,), per_endpoint=1)
        runtime.release(take(runtime))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_waiter_times_out_on_the_clock(self) -> None:
        runtime, clock = make((E1,), per_endpoint=1)
        rt = take(runtime)
        d = runtime.wait_for_slot(5)
        clock.advance(4.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        # Deferred.addTimeout's own TimeoutError (twisted.internet.defer), which is
        # not twisted.internet.error.TimeoutError.
        self.failureResultOf(d, TimeoutError)
        self.assertEqual(clock.getDelayedCalls(), [])
        # The timed-out waiter is forgotten: the next release goes to a live one.
        later = runtime.wait_for_slot(5)
        runtime.release(rt)
        self.assertIsNone(self.successResultOf(later))

    def test_woken_waiter_timer_is_cancelled(self) -> None:
        runtime, clock = make((E1,), per_endpoint=1)
        rt = take(runtime)
        d = runtime.wait_for_slot(5)
        runtime.release(rt)
        self.successResultOf(d)
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(10)

    def test_cancelled_waiter_is_forgotten(self) -> None:
        runtime, clock = make((E1,), per_endpoint=1)
        rt = take(runtime)
        cancelled = runtime.wait_for_slot(5)
        live = runtime.wait_for_slot(5)
        cancelled.cancel()
        self.failureResultOf(cancelled, CancelledError)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        runtime.release(rt)
        self.assertIsNone(self.successResultOf(live))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_waiter_that_fired_elsewhere_is_skipped(self) -> None:
        runtime, _ = make((E1,), per_endpoint=1)
        rt = take(runtime)
        stale: Deferred[None] = runtime.wait_for_slot(5)
        live = runtime.wait_for_slot(5)
        # Fired by someone else without leaving the queue.
        stale.callback(None)
        runtime.release(rt)
        self.assertIsNone(self.successResultOf(live))


class AvailableTests(SynchronousTestCase):
    """What a Split asks of the side it picked: is any endpoint up?"""

    def test_up_endpoints_make_it_available_even_when_full(self) -> None:
        runtime, _ = make((E1,), per_endpoint=1)
        take(runtime)
        self.assertIs(runtime.choose((), None), FULL)
        self.assertTrue(runtime.available())

    def test_unhealthy_and_ejected_endpoints_do_not(self) -> None:
        runtime, _ = make(health=HealthCheck(), outlier=OutlierDetection(1))
        health_down(runtime, E1)
        self.assertTrue(runtime.available())
        eject(runtime, E2)
        self.assertFalse(runtime.available())

    def test_the_kept_answer_follows_every_transition(self) -> None:
        """available() and each endpoint's is_up are kept up to date on
        transitions, not worked out: random health results, request outcomes
        and time give the worked-out answers."""
        for seed in range(5):
            rng = random.Random(seed)
            runtime, clock = make(
                (E1, E2, E3),
                health=HealthCheck(rise=2, fall=2),
                outlier=OutlierDetection(2, base_ejection_time=10.0, max_ejection_percent=100.0),
            )
            down = 0
            for _ in range(2000):
                rt = rng.choice(runtime.endpoints)
                assert rt.health is not None and rt.breaker is not None
                step = rng.randrange(6)
                if step == 0:
                    rt.health.record_fail("timeout")
                elif step == 1:
                    rt.health.record_pass()
                elif step == 2:
                    rt.breaker.record_failure(Reason.CONNECT_FAILED)
                elif step == 3 and rt.breaker.admit():
                    rt.breaker.record_success()
                elif step == 4:
                    clock.advance(rng.choice((1.0, 5.0, 10.0)))
                self.assertEqual(
                    [e.is_up for e in runtime.endpoints], [e.up() for e in runtime.endpoints]
                )
                worked_out = any(e.up() for e in runtime.endpoints)
                self.assertEqual(runtime.available(), worked_out)
                down += not worked_out
            self.assertGreater(down, 10)  # the sequences took the whole cluster down often
            runtime.stop()
            self.assertTrue(runtime.available())


class MayEjectTests(SynchronousTestCase):
    def test_without_outlier_detection(self) -> None:
        runtime, _ = make()
        self.assertFalse(runtime.may_eject())

    def test_cap_is_a_share_of_endpoints_rounded_down(self) -> None:
        runtime, _ = make((E1, E2, E3, E4), outlier=OutlierDetection(1, max_ejection_percent=50.0))
        self.assertTrue(runtime.may_eject())
        eject(runtime, E1)
        self.assertTrue(runtime.may_eject())
        eject(runtime, E2)
        self.assertFalse(runtime.may_eject())
        breaker = rt_of(runtime, E3).breaker
        assert breaker is not None
        breaker.record_failure(Reason.CONNECT_FAILED)
        breaker.record_failure(Reason.CONNECT_FAILED)
        self.assertFalse(breaker.is_ejected())
        self.assertEqual(sum(rt.up() for rt in runtime.endpoints), 2)

    def test_one_endpoint_may_always_be_ejected(self) -> None:
        runtime, _ = make(outlier=OutlierDetection(1, max_ejection_percent=10.0))
        self.assertTrue(runtime.may_eject())
        eject(runtime, E1)
        self.assertFalse(runtime.may_eject())

    def test_ended_ejection_frees_its_place(self) -> None:
        runtime, clock = make(outlier=OutlierDetection(1, base_ejection_time=10.0))
        eject(runtime, E1)
        self.assertFalse(runtime.may_eject())
        clock.advance(10)
        self.assertTrue(runtime.may_eject())


class RetryAfterTests(SynchronousTestCase):
    def test_default_is_one_second(self) -> None:
        runtime, _ = make()
        self.assertEqual(runtime.retry_after(), 1)

    def test_from_the_soonest_ejection_end(self) -> None:
        runtime, clock = make(
            outlier=OutlierDetection(1, base_ejection_time=30.0, max_ejection_percent=100.0)
        )
        eject(runtime, E1)
        self.assertEqual(runtime.retry_after(), 30)
        clock.advance(10.5)
        eject(runtime, E2)
        # E1 ends in 19.5 s, E2 in 30 s: the sooner, rounded up.
        self.assertEqual(runtime.retry_after(), 20)
        clock.advance(19.4)
        self.assertEqual(runtime.retry_after(), 1)

    def test_from_the_health_check_when_nothing_is_ejected(self) -> None:
        runtime, _ = make(health=HealthCheck(interval=2.5, rise=3), outlier=OutlierDetection(1))
        health_down(runtime, E1)
        health_down(runtime, E2)
        self.assertEqual(runtime.retry_after(), 8)  # ceil(2.5 * 3)

    def test_ejection_wins_over_health_check(self) -> None:
        runtime, _ = make(
            health=HealthCheck(interval=10.0, rise=5),
            outlier=OutlierDetection(1, base_ejection_time=7.0),
        )
        eject(runtime, E1)
        self.assertEqual(runtime.retry_after(), 7)

    def test_at_least_one_second(self) -> None:
        runtime, _ = make(health=HealthCheck(interval=0.1, rise=2))
        self.assertEqual(runtime.retry_after(), 1)


class StatusTests(SynchronousTestCase):
    def test_status_snapshot(self) -> None:
        seen: list[Transition] = []
        runtime, _ = make(health=HealthCheck(), outlier=OutlierDetection(1), transitions=seen)
        rt = take(runtime)
        runtime.counters.in_flight = 1
        eject(runtime, E2)
        status = runtime.status()
        self.assertEqual(
            set(status),
            {
                "policy",
                "in_flight",
                "pending",
                "retries_in_flight",
                "retries",
                "retries_refused_by_budget",
                "overflows",
                "available_endpoints",
                "endpoints",
                "names",
                "recent_transitions",
            },
        )
        self.assertEqual(status["names"], {})
        self.assertEqual(status["policy"], "RoundRobin")
        self.assertEqual(status["in_flight"], 1)
        self.assertEqual(status["pending"], 0)
        self.assertEqual(status["overflows"], {})
        self.assertEqual(status["available_endpoints"], 1)
        endpoints = status["endpoints"]
        self.assertEqual([e["endpoint"] for e in endpoints], ["10.0.0.1:80", "10.0.0.2:80"])
        first, second = endpoints
        self.assertEqual(
            set(first),
            {
                "endpoint",
                "name",
                "draining",
                "weight",
                "available",
                "in_flight",
                "requests",
                "failures",
                "health",
                "breaker",
            },
        )
        self.assertEqual(rt.endpoint, E1)
        self.assertEqual((first["in_flight"], first["requests"], first["available"]), (1, 1, True))
        self.assertEqual(second["available"], False)
        self.assertEqual(second["breaker"]["state"], "open")
        self.assertEqual(first["breaker"]["state"], "closed")
        self.assertEqual(first["health"]["state"], "healthy")
        self.assertEqual(
            status["recent_transitions"],
            [
                {
                    "endpoint": "api/10.0.0.2:80",
                    "machine": "breaker",
                    "old": "closed",
                    "new": "open",
                    "cause": "1 consecutive failures, last: connect failed",
                    "at": 0.0,
                }
            ],
        )
        self.assertEqual(len(seen), 1)
        self.assertEqual(seen[0].new, "open")

    def test_status_without_health_or_outlier_detection(self) -> None:
        runtime, _ = make()
        first = runtime.status()["endpoints"][0]
        self.assertIsNone(first["health"])
        self.assertIsNone(first["breaker"])
        self.assertEqual(first["weight"], 1)

    def test_counter_totals_are_reported(self) -> None:
        runtime, _ = make()
        counters = runtime.counters
        counters.count_overflow(Reason.MAX_PENDING)
        counters.pending = 2
        counters.retries_in_flight = 1
        counters.retries_total = 4
        counters.retries_refused = 3
        status = runtime.status()
        self.assertEqual(status["overflows"], {"max_pending": 1})
        self.assertEqual(status["pending"], 2)
        self.assertEqual(status["retries_in_flight"], 1)
        self.assertEqual(status["retries"], 4)
        self.assertEqual(status["retries_refused_by_budget"], 3)


class StopTests(SynchronousTestCase):
    def test_stop_cancels_every_timer(self) -> None:
        runtime, clock = make(outlier=OutlierDetection(1), per_endpoint=1)
        eject(runtime, E1)
        take(runtime)
        waiter = runtime.wait_for_slot(5)
        self.assertEqual(len(clock.getDelayedCalls()), 2)
        runtime.stop()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.failureResultOf(waiter, CancelledError)
        # Stopped breakers let everything through.
        self.assertTrue(all(rt.up() for rt in runtime.endpoints))


def test_passing_health_check_brings_an_ejected_endpoint_back() -> None:
    transitions: list[Transition] = []
    runtime, clock = make(
        health=HealthCheck(),
        outlier=OutlierDetection(consecutive_failures=1, base_ejection_time=300.0),
        transitions=transitions,
    )
    first = runtime.endpoints[0]
    assert first.breaker is not None and first.health is not None
    first.breaker.record_failure(Reason.CONNECT_FAILED)
    assert not first.up()
    first.health.record_pass(at=clock.seconds())
    assert first.up()
    assert first.breaker.status().state == "closed"
    assert transitions[-1].cause == "active health check passed"
    assert clock.getDelayedCalls() == []  # the ejection timer went with it


class DefaultOutlierDetectionTests(SynchronousTestCase):
    """A cluster that says nothing about outlier detection has it (docs/resilience.md)."""

    def runtime(self, endpoints: tuple[Endpoint, ...]) -> ClusterRuntime:
        return ClusterRuntime(Cluster("api", endpoints=list(endpoints)), Clock(), random.Random(0))

    def test_a_refusing_endpoint_leaves_the_rotation_after_five_failures(self) -> None:
        runtime = self.runtime((E1, E2))
        dead = rt_of(runtime, E1)
        assert dead.breaker is not None
        attempts = 0
        for _ in range(40):
            rt = take(runtime)
            if rt is dead:
                attempts += 1
                dead.breaker.record_failure(Reason.CONNECT_FAILED)
            else:
                assert rt.breaker is not None
                rt.breaker.record_success()
            runtime.release(rt)
        self.assertEqual(attempts, 5)
        self.assertFalse(dead.up())
        self.assertEqual(dead.breaker.retry_after(), 30.0)


class PinnedRetryAfterTests(SynchronousTestCase):
    """Issue 14: a breaker's wait under one second is one whole second for the client."""

    def test_a_fraction_of_a_second_rounds_up_to_one(self) -> None:
        runtime, clock = make(outlier=OutlierDetection(1, base_ejection_time=0.25))
        eject(runtime, E1)
        breaker = rt_of(runtime, E1).breaker
        assert breaker is not None
        self.assertEqual(breaker.retry_after(), 0.25)
        self.assertEqual(runtime.retry_after(), 1)
        clock.advance(0.125)
        self.assertEqual(breaker.retry_after(), 0.125)
        self.assertEqual(runtime.retry_after(), 1)

    def test_just_over_a_second_rounds_up_to_two(self) -> None:
        runtime, _ = make(outlier=OutlierDetection(1, base_ejection_time=1.0625))
        eject(runtime, E1)
        self.assertEqual(runtime.retry_after(), 2)
