"""
The live state of one cluster: its endpoints' health (active checks and
outlier ejection folded into one "available" answer), their requests in
flight, the selection policy, the limits and the queue of requests waiting
for a free connection slot.  A request deals with it through the
:class:`Lease` that :meth:`ClusterRuntime.admit` gives it.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from edgeproxy.cluster.breaker import Breaker, Transition, ejection_allowed
from edgeproxy.cluster.health import HealthState
from edgeproxy.cluster.limits import ClusterCounters
from edgeproxy.config import Cluster, ConsistentHash, Endpoint, LeastRequest, Random, RoundRobin
from edgeproxy.core.errors import LimitExceeded, Reason
from edgeproxy.core.retry import Retry
from edgeproxy.core.selection import (
    LeastRequestSelector,
    MaglevSelector,
    RandomSelector,
    RoundRobinSelector,
    Selector,
    Weighted,
)

__all__ = ["ClusterRuntime", "EndpointRuntime", "Lease", "NoSlot", "make_selector"]

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
    #: The endpoint given by name this is one of the addresses of (or the
    #: name itself, until it is first resolved); None for an IP literal.
    origin: Endpoint | None = None
    #: Gone from the name's addresses: no new request picks it, the ones in
    #: flight finish (:meth:`ClusterRuntime.set_addresses`).
    draining: bool = False
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
            "name": str(self.origin) if self.origin is not None else None,
            "draining": self.draining,
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
        #: The upstream pool this cluster's requests go through (the process's
        #: plain one, or the one of its ``upstream_tls``), set by the proxy
        #: layer's plan for each configuration (this layer knows no pools).
        self.upstream: Any = None
        self.counters = ClusterCounters(cluster.limits, cluster.retries)
        self._slots_per_endpoint = cluster.limits.max_connections_per_endpoint
        self.transitions: deque[Transition] = deque(maxlen=RECENT_TRANSITIONS)
        #: Endpoints start healthy and closed.
        self._some_up = True
        self._on_transition = on_transition
        self._waiters: deque[Deferred[None]] = deque()
        self._rng = rng
        detection = cluster.outlier_detection
        self.endpoints: list[EndpointRuntime] = [
            self._endpoint_runtime(endpoint, endpoint if endpoint.is_name() else None)
            for endpoint in cluster.endpoints
        ]
        #: Addresses gone from their name with requests still in flight.
        self.draining: list[EndpointRuntime] = []
        #: Called with each endpoint that left, once its last request is over
        #: (its pooled connections can go).
        self.on_drained: Callable[[EndpointRuntime], None] | None = None
        #: Each name's resolution, for /status (kept by edgeproxy.cluster.discovery).
        self.names: dict[str, dict[str, Any]] = {}
        #: The statuses that count as an endpoint's failure (none without outlier detection).
        self.failure_statuses: frozenset[int] = (
            detection.failure_statuses if detection is not None else frozenset()
        )
        self._rebuild()

    def _endpoint_runtime(
        self, endpoint: Endpoint, origin: Endpoint | None, *, joining: bool = False
    ) -> EndpointRuntime:
        cluster = self.cluster
        label = f"{cluster.name}/{endpoint}"
        breaker = (
            Breaker(
                label,
                cluster.outlier_detection,
                self._clock,
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
                clock=self._clock,
                # A passing check brings an ejected endpoint back (Envoy's default).
                on_pass=breaker.record_health_pass if breaker is not None else None,
                joining=joining,
            )
            if cluster.health_check is not None
            else None
        )
        rt = EndpointRuntime(endpoint, label, health, breaker, origin=origin)
        rt.is_up = rt.up()
        return rt

    def _rebuild(self) -> None:
        """After the endpoints changed: the selector and what is derived from the set."""
        detection = self.cluster.outlier_detection
        #: Whether an endpoint's answers (failure statuses, timeouts, broken
        #: responses) count against it, or only failures to connect.
        self.judges_answers = detection is not None and (
            len(self.endpoints) > 1 or detection.sole_endpoint_answers
        )
        self.selector: Selector[EndpointRuntime] = make_selector(
            self.cluster.policy, self.endpoints, rng=self._rng, in_flight=_in_flight
        )
        self._some_up = any(rt.is_up for rt in self.endpoints)

    def set_addresses(
        self, name: Endpoint, hosts: Collection[str]
    ) -> tuple[list[EndpointRuntime], list[EndpointRuntime]]:
        """The endpoint ``name`` (given by name) now stands for ``hosts``
        (IP addresses, not empty): the endpoints that joined and those that left.

        An address kept keeps its runtime (health, breaker, counters).  One
        that left drains: no new request picks it, the ones in flight finish.
        On the first resolution the addresses take the place of the name and
        start as endpoints do at start-up; later ones that join with active
        health checks on are in after their first passing check.  An address
        that is already an endpoint of the cluster is not added twice.
        """
        wanted = {
            str(ep): ep for ep in (Endpoint(host, name.port, weight=name.weight) for host in hosts)
        }
        current = [rt for rt in self.endpoints if rt.origin == name]
        first = any(rt.endpoint == name for rt in current)
        elsewhere = {str(rt.endpoint) for rt in self.endpoints if rt.origin != name}
        left = [rt for rt in current if str(rt.endpoint) not in wanted]
        have = {str(rt.endpoint) for rt in current}
        joined = [
            self._endpoint_runtime(ep, name, joining=not first)
            for key, ep in sorted(wanted.items())
            if key not in have and key not in elsewhere
        ]
        if not joined and not left:
            return [], []
        gone = {id(rt) for rt in left}
        self.endpoints = [rt for rt in self.endpoints if id(rt) not in gone] + joined
        for rt in left:
            self._retire(rt)
        self._rebuild()
        return joined, left

    def _retire(self, rt: EndpointRuntime) -> None:
        rt.draining = True
        rt.is_up = False
        if rt.breaker is not None:
            # Its verdicts no longer matter: the requests in flight end
            # without feeding a breaker nobody reads.
            rt.breaker.stop()
            rt.breaker = None
        if rt.in_flight:
            self.draining.append(rt)
        elif self.on_drained is not None:
            self.on_drained(rt)

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

    def admit(self, tried: list[Endpoint]) -> Lease | None:
        """A lease for a new request, counted in flight; or None at
        ``max_requests`` (the overflow counted).  ``tried`` is the request's
        list of endpoints tried so far, which the lease adds to."""
        if not self.counters.admit():
            return None
        return Lease(self, tried)

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
        if rt.draining:
            if not rt.in_flight:
                self.draining.remove(rt)
                if self.on_drained is not None:
                    self.on_drained(rt)
            return
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
        for rt in self.endpoints + self.draining:
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
            "endpoints": [rt.status() for rt in self.endpoints + self.draining],
            "names": {name: dict(record) for name, record in self.names.items()},
            "recent_transitions": [attrs.asdict(t) for t in self.transitions],
        }


class Lease:
    """One request's admission to a cluster (:meth:`ClusterRuntime.admit`).

    It owns what the request takes from the cluster and gives each back
    exactly once: its place among the requests in flight (``max_requests``);
    while it waits, its place in the queue for a slot (``max_pending``); the
    endpoint slot of its current attempt, with that attempt's verdict for the
    endpoint's breaker; and its place in the retry budget.  The cluster's
    counts change through :class:`~edgeproxy.cluster.limits.ClusterCounters`'
    methods, an endpoint's slots through :meth:`ClusterRuntime.choose` and
    :meth:`ClusterRuntime.release`.

    Every method may be called again, or after :meth:`release`, and then
    does nothing more, so the request's error, cancel and abort paths need
    not know what is still held.
    """

    # What a new lease holds besides its cluster and the request's tried
    # endpoints (class defaults: one small object per request, set up with
    # two stores).
    #: The place in flight, until released.
    _held = True
    #: The current attempt's slot.
    _slot: EndpointRuntime | None = None
    #: While there is a slot: None until the attempt's verdict, then whether it passed.
    _verdict: bool | None = None
    #: A place in the retry budget, taken by the first retry within it.
    _retrying = False

    def __init__(self, runtime: ClusterRuntime, tried: list[Endpoint]) -> None:
        self._runtime = runtime
        self._tried = tried

    # -- attempts ----------------------------------------------------------------

    def take_endpoint(self, hash_key: bytes | None) -> EndpointRuntime | NoSlot:
        """An endpoint not yet tried for the next attempt, its slot taken (and
        added to the tried ones); or why there is none.  An attempt still
        going is ended first."""
        if self._slot is not None or not self._held:
            if not self._held:
                return UNAVAILABLE
            self.end_attempt()
        choice = self._runtime.choose(self._tried, hash_key)
        if isinstance(choice, EndpointRuntime):
            self._slot = choice
            self._verdict = None
            self._tried.append(choice.endpoint)
        return choice

    def answered(self, status: int) -> None:
        """The attempt's response head came, with ``status``: a failure if it
        is one of outlier detection's ``failure_statuses``, else a success."""
        slot = self._slot
        if slot is None or self._verdict is not None:
            return
        if status in self._runtime.failure_statuses:
            self._fail(status, reached=True)
            return
        self._verdict = True
        breaker = slot.breaker
        if breaker is not None:
            breaker.record_success()

    def failed(self, cause: Reason, *, reached: bool) -> None:
        """The attempt failed before a response head, for ``cause``.
        ``reached``: the endpoint was connected to (it answered badly, or too
        late), rather than being unreachable."""
        if self._slot is not None and self._verdict is None:
            self._fail(cause, reached)

    def body_failed(self, cause: Reason) -> None:
        """The body of a response whose head passed broke off (or went quiet):
        a failure after all.  After a failed head it is the same failure, not
        counted twice."""
        if self._slot is not None and self._verdict:
            self._fail(cause, reached=True)

    def _fail(self, cause: Reason | int, reached: bool) -> None:
        slot = self._slot
        assert slot is not None
        self._verdict = False
        slot.failures += 1
        breaker = slot.breaker
        if breaker is None:
            return
        if reached and not self._runtime.judges_answers:
            # A one-endpoint cluster's breaker watches only whether the
            # endpoint can be reached, and this time it could.
            breaker.record_success()
        else:
            breaker.record_failure(cause)

    def end_attempt(self, *, cancelled: bool = False) -> None:
        """The attempt is over: its slot goes back (to a waiting request, if
        any).  ``cancelled``: the client went away; an attempt without a
        verdict then tells its breaker so (a half-open breaker's probe is free
        again)."""
        slot = self._slot
        if slot is None:
            return
        self._slot = None
        if cancelled and self._verdict is None and slot.breaker is not None:
            slot.breaker.record_cancelled()
        self._runtime.release(slot)

    # -- waiting for a slot ------------------------------------------------------

    def wait_for_slot(self) -> Deferred[None] | None:
        """Queue for a free slot when every endpoint is full: a Deferred that
        fires when one frees up, fails with :class:`LimitExceeded` after the
        cluster's ``connect_timeout`` (``pending_timeout``) or with
        ``CancelledError`` when cancelled; or None, the queue being full
        (``max_pending``, counted)."""
        runtime = self._runtime
        if not self._held or not runtime.counters.queue():
            return None
        d = runtime.wait_for_slot(runtime.cluster.connect_timeout)
        d.addBoth(self._unqueued)
        return d

    def _unqueued(self, result: object) -> object:
        counters = self._runtime.counters
        counters.unqueue()
        if isinstance(result, Failure) and result.check(DeferredTimeout):
            counters.count_overflow(Reason.PENDING_TIMEOUT)
            return Failure(LimitExceeded(Reason.PENDING_TIMEOUT))
        return result

    # -- retries -----------------------------------------------------------------

    def has_candidate(self) -> bool:
        """Whether an endpoint not yet tried could take a retry now or soon."""
        return self._runtime.has_candidate(self._tried)

    def retry_budget_allows(self) -> bool:
        """Whether this request may retry within the budget: it holds a place
        already, or the cluster's budget has one."""
        return self._retrying or self._runtime.counters.retry_budget_allows()

    def spend_retry(self, decision: Retry) -> bool:
        """Count a retry decision (:func:`edgeproxy.core.retry.decide_retry`):
        the first retry within the budget takes a place in it, kept until
        release; a refusal is counted as one.  Whether the request is retried
        (never once released)."""
        if not self._held:
            return False
        counters = self._runtime.counters
        if decision is Retry.WITHIN_BUDGET:
            if not self._retrying:
                self._retrying = True
                counters.take_retry_place()
        elif decision is not Retry.OUTSIDE_BUDGET:
            if decision is Retry.REFUSED:
                counters.refuse_retry()
            return False
        counters.count_retry()
        return True

    # -- the end -----------------------------------------------------------------

    def release(self, *, cancelled: bool = False) -> None:
        """Give back everything still held: the current attempt's slot (see
        :meth:`end_attempt` for ``cancelled``), the place in the retry budget
        and the place in flight."""
        if not self._held:
            return
        self._held = False
        if self._slot is not None:
            self.end_attempt(cancelled=cancelled)
        if self._retrying:
            self._retrying = False
            self._runtime.counters.give_back_retry_place()
        self._runtime.counters.leave()
