"""
The live state of one cluster: its endpoints' health (active checks and
outlier ejection folded into one "available" answer), their requests in
flight, the selection policy, the limits and the queue of requests waiting
for a free connection slot.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from edgeproxy.cluster.breaker import Breaker, Transition, ejection_allowed
from edgeproxy.cluster.health import HealthState
from edgeproxy.cluster.limits import ClusterCounters
from edgeproxy.config import Cluster, ConsistentHash, Endpoint, LeastRequest, Random, RoundRobin
from edgeproxy.core.selection import (
    LeastRequestSelector,
    MaglevSelector,
    RandomSelector,
    RoundRobinSelector,
    Selector,
    Weighted,
)

__all__ = ["ClusterRuntime", "EndpointRuntime", "NoSlot", "make_selector"]

#: How many recent health and breaker transitions /status shows per cluster.
RECENT_TRANSITIONS = 50

E = TypeVar("E", bound=Weighted)


def make_selector(
    policy: RoundRobin | Random | LeastRequest | ConsistentHash,
    endpoints: Sequence[E],
    *,
    rng: random.Random,
    in_flight: Callable[[E], int],
) -> Selector[E]:
    """The selector for a cluster's ``policy`` over its ``endpoints``."""
    if isinstance(policy, RoundRobin):
        return RoundRobinSelector(endpoints)
    if isinstance(policy, Random):
        return RandomSelector[E](rng)
    if isinstance(policy, LeastRequest):
        return LeastRequestSelector(policy.choices, rng=rng, in_flight=in_flight)
    if isinstance(policy, ConsistentHash):
        return MaglevSelector(endpoints, policy.table_size, rng=rng)
    raise TypeError(f"unknown selection policy {policy!r}")


def _in_flight(rt: EndpointRuntime) -> int:
    return rt.in_flight


class NoSlot:
    """Why no endpoint could be given to a request."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"NoSlot({self.reason!r})"


#: Every endpoint is down (unhealthy or ejected) or was already tried.
UNAVAILABLE = NoSlot("unavailable")
#: Endpoints are up but each has max_connections_per_endpoint requests in flight.
FULL = NoSlot("full")


@attrs.define(eq=False)
class EndpointRuntime:
    endpoint: Endpoint
    label: str
    health: HealthState | None
    breaker: Breaker | None
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    #: :meth:`up` as of the last transition of this cluster's health checks
    #: or breakers, kept by :class:`ClusterRuntime`: picking an endpoint reads
    #: this instead of asking both machines per request.
    is_up: bool = True
    #: The endpoint's weight: the selector picks among these runtimes
    #: directly, rather than among endpoints mapped back to their runtimes.
    weight: int = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.weight = self.endpoint.weight

    def __str__(self) -> str:
        # The endpoint's address: what consistent hashing orders and hashes by.
        return str(self.endpoint)

    def up(self) -> bool:
        """Healthy by active checks (if any) and not ejected by outlier detection (if on)."""
        if self.health is not None and not self.health.healthy():
            return False
        return self.breaker is None or not self.breaker.is_ejected()

    def status(self) -> dict[str, Any]:
        return {
            "endpoint": str(self.endpoint),
            "weight": self.endpoint.weight,
            "available": self.up(),
            "in_flight": self.in_flight,
            "requests": self.requests,
            "failures": self.failures,
            "health": attrs.asdict(self.health.status()) if self.health is not None else None,
            "breaker": attrs.asdict(self.breaker.status()) if self.breaker is not None else None,
        }


class ClusterRuntime:
    """One cluster's endpoints, counters and waiting queue."""

    def __init__(
        self,
        cluster: Cluster,
        clock: IReactorTime,
        rng: random.Random,
        on_transition: Callable[[Transition], None] | None = None,
    ) -> None:
        self.cluster = cluster
        self._clock = clock
        self.counters = ClusterCounters(cluster.limits, cluster.retries)
        self._slots_per_endpoint = cluster.limits.max_connections_per_endpoint
        self.transitions: deque[Transition] = deque(maxlen=RECENT_TRANSITIONS)
        #: Endpoints start healthy and closed.
        self._some_up = True
        self._on_transition = on_transition
        self._waiters: deque[Deferred[None]] = deque()
        self.endpoints: list[EndpointRuntime] = []
        detection = cluster.outlier_detection
        for endpoint in cluster.endpoints:
            label = f"{cluster.name}/{endpoint}"
            breaker = (
                Breaker(
                    label,
                    cluster.outlier_detection,
                    clock,
                    may_eject=self.may_eject,
                    on_transition=self._transition,
                )
                if cluster.outlier_detection is not None
                else None
            )
            health = (
                HealthState(
                    label,
                    cluster.health_check,
                    self._transition,
                    clock=clock,
                    # A passing check brings an ejected endpoint back (Envoy's default).
                    on_pass=breaker.record_health_pass if breaker is not None else None,
                )
                if cluster.health_check is not None
                else None
            )
            self.endpoints.append(EndpointRuntime(endpoint, label, health, breaker))
        #: Whether an endpoint's answers (failure statuses, timeouts, broken
        #: responses) count against it, or only failures to connect.
        self.judges_answers = detection is not None and (
            len(self.endpoints) > 1 or detection.sole_endpoint_answers
        )
        self.selector: Selector[EndpointRuntime] = make_selector(
            cluster.policy, self.endpoints, rng=rng, in_flight=_in_flight
        )

    def _transition(self, transition: Transition) -> None:
        self.transitions.append(transition)
        # An endpoint goes up or down only with a transition of its health or
        # its breaker (both report here once they are at rest).
        some_up = False
        for rt in self.endpoints:
            rt.is_up = up = rt.up()
            some_up = some_up or up
        self._some_up = some_up
        if self._on_transition is not None:
            self._on_transition(transition)

    def may_eject(self) -> bool:
        """Whether one more endpoint may be ejected within ``max_ejection_percent``.

        At least one endpoint may always be ejected, so a one- or two-endpoint
        cluster can still take its broken endpoint out.
        """
        detection = self.cluster.outlier_detection
        if detection is None:
            return False
        ejected = sum(
            1 for rt in self.endpoints if rt.breaker is not None and rt.breaker.is_ejected()
        )
        return ejection_allowed(ejected, len(self.endpoints), detection.max_ejection_percent)

    def available(self) -> bool:
        """Whether some endpoint is up: healthy and not ejected (full or not).

        A ``Split`` asks this of the side it picked, per request, so the
        answer is kept up to date on every transition rather than worked out.
        """
        return self._some_up

    def choose(
        self, tried: Collection[Endpoint], hash_key: bytes | None
    ) -> EndpointRuntime | NoSlot:
        """An endpoint for the next attempt, its slot taken; or why there is none."""
        limit = self._slots_per_endpoint
        panic = False
        # A first attempt, nearly always, and some endpoint up with room: one pass.
        free = (
            [rt for rt in self.endpoints if rt.is_up and rt.in_flight < limit] if not tried else []
        )
        if not free:
            untried = (
                [rt for rt in self.endpoints if rt.endpoint not in tried]
                if tried
                else self.endpoints
            )
            up = [rt for rt in untried if rt.is_up]
            if not up:
                if not self.cluster.panic_mode or not untried:
                    return UNAVAILABLE
                # Panic mode: with nothing available, trying a possibly bad
                # endpoint beats failing every request.
                up, panic = untried, True
            free = [rt for rt in up if rt.in_flight < limit]
            if not free:
                return FULL
            if tried:
                # A retry: a hash table per "cluster minus tried" set would be
                # rebuilt for nothing; any other free endpoint will do.
                hash_key = None
        while free:
            rt = self.selector.pick(free, hash_key)
            if rt is None:
                break
            # A half-open breaker admits one probe at a time.
            breaker = rt.breaker
            if panic or breaker is None or breaker.admit():
                rt.in_flight += 1
                rt.requests += 1
                return rt
            free.remove(rt)
        return UNAVAILABLE

    def has_candidate(self, tried: Collection[Endpoint]) -> bool:
        """Whether an endpoint not yet tried could take a retry now or soon."""
        untried = [rt for rt in self.endpoints if rt.endpoint not in tried]
        if self.cluster.panic_mode:
            return bool(untried)
        return any(rt.is_up for rt in untried)

    def release(self, rt: EndpointRuntime) -> None:
        """The attempt on ``rt`` is over: free its slot for a waiting request.

        Waiters are woken one at a time until one takes the slot: a woken
        retry that has already tried ``rt`` cannot use it and queues again,
        and the slot must not be lost on it.  Each waiter is woken at most once
        here, so this ends.
        """
        rt.in_flight -= 1
        if not self._waiters:
            return
        limit = self._slots_per_endpoint
        for _ in range(len(self._waiters)):
            if rt.in_flight >= limit or not self._waiters:
                return
            waiter = self._waiters.popleft()
            if not waiter.called:
                waiter.callback(None)

    def wait_for_slot(self, timeout: float) -> Deferred[None]:
        """Fires when a slot frees up; errbacks with ``TimeoutError`` after ``timeout``."""
        d: Deferred[None] = Deferred(lambda d: self._forget(d))
        self._waiters.append(d)
        d.addTimeout(timeout, self._clock)
        return d

    def _forget(self, d: Deferred[None]) -> None:
        try:
            self._waiters.remove(d)
        except ValueError:
            pass

    def retry_after(self) -> int:
        """Seconds a client should wait before trying again when nothing is available."""
        known = [
            wait
            for rt in self.endpoints
            if rt.breaker is not None and (wait := rt.breaker.retry_after()) is not None
        ]
        if known:
            return max(1, math.ceil(min(known)))
        check = self.cluster.health_check
        if check is not None:
            return max(1, math.ceil(check.interval * check.rise))
        return 1

    def stop(self) -> None:
        for rt in self.endpoints:
            if rt.breaker is not None:
                rt.breaker.stop()
        while self._waiters:
            self._waiters.popleft().cancel()

    def status(self) -> dict[str, Any]:
        counters = self.counters
        return {
            "policy": type(self.cluster.policy).__name__,
            "in_flight": counters.in_flight,
            "pending": counters.pending,
            "retries_in_flight": counters.retries_in_flight,
            "retries": counters.retries_total,
            "retries_refused_by_budget": counters.retries_refused,
            "overflows": dict(counters.overflows),
            "available_endpoints": sum(1 for rt in self.endpoints if rt.up()),
            "endpoints": [rt.status() for rt in self.endpoints],
            "recent_transitions": [attrs.asdict(t) for t in self.transitions],
        }
