"""
Active health checking.

:class:`HealthState` is the rise/fall lifecycle of one endpoint (HAProxy's
``rise``/``fall``): ``fall`` failed checks in a row make it unhealthy, ``rise``
passed checks in a row make it healthy again.  :class:`HealthChecker` is the
service that runs the checks of one cluster (``GET path`` on every endpoint
every ``interval`` plus jitter, on the injected clock) and feeds them in.

Both lifecycles (the rise/fall state and each endpoint's check loop) are
Automat ``TypeMachineBuilder`` machines; their diagrams are in
``docs/resilience.md`` (``python -m edgeproxy.cluster.health --dot``).
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

import attrs
from automat import TypeMachine, TypeMachineBuilder, pep614
from twisted.application.service import Service
from twisted.internet import error as ierror
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse

from edgeproxy.cluster.breaker import Transition, canonical_dot
from edgeproxy.config import Endpoint, HealthCheck
from edgeproxy.core.errors import UpstreamUnexpectedFailure
from edgeproxy.net.failures import upstream_error

__all__ = [
    "BODY_LIMIT",
    "USER_AGENT",
    "HealthChecker",
    "HealthState",
    "HealthStatus",
    "checker_diagram",
    "diagram",
]

#: Bytes of a health-check response body read (and discarded) before the
#: connection is cut; the verdict is the status.
BODY_LIMIT = 64 * 1024
USER_AGENT = b"edgeproxy-health-check"


@attrs.frozen
class HealthStatus:
    """A snapshot: ``state`` is ``"healthy"`` or ``"unhealthy"``; ``last_check_at``
    is the clock time of the last check's verdict (``None`` before the first)."""

    state: str
    consecutive_passes: int
    consecutive_failures: int
    last_cause: str | None
    last_check_at: float | None


# -- the rise/fall machine -----------------------------------------------------


class _HealthInputs(Protocol):
    def check_passed(self) -> None:
        "A check passed."

    def check_failed(self, cause: str) -> None:
        "A check failed."

    def is_healthy(self) -> bool:
        "Should the endpoint get traffic (as far as active checks know)?"

    def status(self) -> HealthStatus:
        "A frozen snapshot."

    def _rise(self) -> None:
        "Internal: ``rise`` passes in a row."

    def _fall(self, cause: str) -> None:
        "Internal: ``fall`` failures in a row."


@dataclass
class _HealthCore:
    label: str
    config: HealthCheck
    report: Callable[[Transition], None]
    consecutive_passes: int = 0
    consecutive_failures: int = 0
    last_cause: str | None = None
    last_check_at: float | None = None
    #: An endpoint that joined a running cluster (a new address of a name,
    #: docs/dns.md): it starts unhealthy and its first passing check brings it in.
    joining: bool = False
    log: Logger = field(default_factory=Logger)

    def now(self) -> float:
        return math.nan if self.last_check_at is None else self.last_check_at

    def passed(self) -> None:
        self.consecutive_passes += 1
        self.consecutive_failures = 0

    def failed(self, cause: str) -> None:
        # A failure is news when it ends a run of passes or changes cause; a
        # dead endpoint then logs once, not once per interval for as long as
        # it stays dead (its transition to unhealthy is logged as well).
        if self.consecutive_failures == 0 or cause != self.last_cause:
            self.log.info(
                "{endpoint} health check failed: {cause}",
                endpoint=self.label,
                cause=cause,
            )
        self.consecutive_failures += 1
        self.consecutive_passes = 0
        self.last_cause = cause

    def transition(self, old: str, new: str, cause: str) -> None:
        self.log.info(
            "{endpoint} {machine} {old} -> {new}: {cause}",
            endpoint=self.label,
            machine="health",
            old=old,
            new=new,
            cause=cause,
        )
        self.report(Transition(self.label, "health", old, new, cause, self.now()))

    def snapshot(self, state: str) -> HealthStatus:
        return HealthStatus(
            state=state,
            consecutive_passes=self.consecutive_passes,
            consecutive_failures=self.consecutive_failures,
            last_cause=self.last_cause,
            last_check_at=self.last_check_at,
        )


def _build_health_machine(
    *, start_healthy: bool = True
) -> TypeMachine[_HealthInputs, _HealthCore]:
    builder = TypeMachineBuilder(_HealthInputs, _HealthCore)
    # The first state declared is the one a machine starts in.
    if start_healthy:
        healthy = builder.state("healthy")
        unhealthy = builder.state("unhealthy")
    else:
        unhealthy = builder.state("unhealthy")
        healthy = builder.state("healthy")
    I = _HealthInputs  # noqa: E741

    healthy.upon(I.is_healthy).loop().returns(True)
    healthy.upon(I._rise).loop().returns(None)
    unhealthy.upon(I.is_healthy).loop().returns(False)
    unhealthy.upon(I._fall).loop().returns(None)

    @pep614(healthy.upon(I.check_passed).loop())
    def stay_healthy(machine: _HealthInputs, core: _HealthCore) -> None:
        core.passed()

    @pep614(healthy.upon(I.check_failed).loop())
    def count_failure(machine: _HealthInputs, core: _HealthCore, cause: str) -> None:
        core.failed(cause)
        if core.consecutive_failures >= core.config.fall:
            machine._fall(cause)  # postponed: runs once this transition is done

    @pep614(healthy.upon(I._fall).to(unhealthy))
    def fall(machine: _HealthInputs, core: _HealthCore, cause: str) -> None:
        core.transition(
            "healthy", "unhealthy", f"{core.consecutive_failures} failed checks, last: {cause}"
        )

    @pep614(unhealthy.upon(I.check_passed).loop())
    def count_pass(machine: _HealthInputs, core: _HealthCore) -> None:
        core.passed()
        if core.consecutive_passes >= (1 if core.joining else core.config.rise):
            machine._rise()

    @pep614(unhealthy.upon(I.check_failed).loop())
    def stay_unhealthy(machine: _HealthInputs, core: _HealthCore, cause: str) -> None:
        core.failed(cause)

    @pep614(unhealthy.upon(I._rise).to(healthy))
    def rise(machine: _HealthInputs, core: _HealthCore) -> None:
        if core.joining:
            core.joining = False
            core.transition("unhealthy", "healthy", "joined: first check passed")
            return
        core.transition("unhealthy", "healthy", f"{core.consecutive_passes} passed checks")

    @pep614(healthy.upon(I.status).loop())
    def healthy_status(machine: _HealthInputs, core: _HealthCore) -> HealthStatus:
        return core.snapshot("healthy")

    @pep614(unhealthy.upon(I.status).loop())
    def unhealthy_status(machine: _HealthInputs, core: _HealthCore) -> HealthStatus:
        return core.snapshot("unhealthy")

    return builder.build()


_HealthMachine = _build_health_machine()
_JoiningHealthMachine = _build_health_machine(start_healthy=False)


class HealthState:
    """The active-health verdict of one endpoint.

    It starts healthy (see docs/resilience.md): a restart or reload must not
    take every endpoint out for ``rise * interval`` seconds; a dead endpoint
    is out after ``fall`` checks, and outlier detection covers the gap.
    ``joining``: an address a name newly resolved to (docs/dns.md) starts
    unhealthy instead and is in after its first passing check.

    ``on_transition`` is called after each change, once the state is
    consistent again (it may call back in).  Times come from ``clock`` or the
    ``at`` given to :meth:`record_pass`/:meth:`record_fail` (the checker
    always gives it); with neither, transitions carry ``nan``.
    """

    def __init__(
        self,
        endpoint_label: str,
        config: HealthCheck,
        on_transition: Callable[[Transition], None],
        *,
        clock: IReactorTime | None = None,
        on_pass: Callable[[], object] | None = None,
        joining: bool = False,
    ) -> None:
        self._on_transition = on_transition
        self._on_pass = on_pass
        self._clock = clock
        self._pending: list[Transition] = []
        self._core = _HealthCore(endpoint_label, config, self._pending.append, joining=joining)
        machine = _JoiningHealthMachine if joining else _HealthMachine
        self._machine: _HealthInputs = machine(self._core)

    def _stamp(self, at: float | None) -> None:
        if at is None and self._clock is not None:
            at = self._clock.seconds()
        if at is not None:
            self._core.last_check_at = at

    def _flush(self) -> None:
        while self._pending:
            self._on_transition(self._pending.pop(0))

    def healthy(self) -> bool:
        return self._machine.is_healthy()

    def record_pass(self, *, at: float | None = None) -> None:
        """A check passed (at clock time ``at``)."""
        self._stamp(at)
        self._machine.check_passed()
        self._flush()
        if self._on_pass is not None:
            self._on_pass()

    def record_fail(self, cause: str, *, at: float | None = None) -> None:
        """A check failed; ``cause`` is short: ``"timeout"``, ``"status 503"``..."""
        self._stamp(at)
        self._machine.check_failed(cause)
        self._flush()

    def status(self) -> HealthStatus:
        return self._machine.status()


# -- one endpoint's check loop ---------------------------------------------------


class _LoopInputs(Protocol):
    def start(self) -> None:
        "Begin checking (the service started)."

    def tick(self) -> None:
        "The wait is over: time for a check."

    def finished(self) -> None:
        "The check in flight is over (its verdict is recorded)."

    def stop(self) -> None:
        "Stop checking: cancel the wait or the check in flight."


@dataclass
class _LoopCore:
    cluster: str
    endpoint: Endpoint
    state: HealthState
    config: HealthCheck
    clock: IReactorTime
    agent: IAgent
    rng: random.Random
    first: bool = True
    #: The machine's own inputs, for timers and Deferreds to call.
    machine: _LoopInputs | None = None
    log: Logger = field(default_factory=Logger)

    def inputs(self) -> _LoopInputs:
        assert self.machine is not None
        return self.machine

    def delay(self) -> float:
        interval = self.config.interval
        if self.first:
            # A random fraction of the interval, so a fleet doesn't synchronise.
            self.first = False
            return self.rng.uniform(0, interval)
        return interval + self.rng.uniform(0, self.config.jitter * interval)


@dataclass
class _Wait:
    """State data of ``waiting``: the timer of the next check."""

    call: IDelayedCall

    def cancel(self) -> None:
        if self.call.active():
            self.call.cancel()


class _Discard(TwistedProtocol):
    """Reads a response body and throws it away, at most ``limit`` bytes."""

    def __init__(self, done: Deferred[None], limit: int) -> None:
        self.done = done
        self.limit = limit
        self.received = 0

    def abort(self) -> None:
        transport: Any = self.transport
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()
        elif transport is not None:
            transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > self.limit and not self.done.called:
            self.done.callback(None)
            self.abort()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(reason)


def _discard_body(response: IResponse, limit: int) -> Deferred[None]:
    protocol: _Discard

    def cancel(d: Deferred[None]) -> None:
        protocol.abort()

    done: Deferred[None] = Deferred(cancel)
    protocol = _Discard(done, limit)
    response.deliverBody(protocol)
    return done


@dataclass
class _Check:
    """State data of ``checking``: the check in flight."""

    deferred: Deferred[None] | None = None
    stopping: bool = False

    def cancel(self) -> None:
        self.stopping = True
        if self.deferred is not None:
            self.deferred.cancel()


def _start_check(machine: _LoopInputs, core: _LoopCore) -> _Check:
    config, endpoint = core.config, core.endpoint
    address = str(endpoint)
    url = f"http://{address}{quote(config.path, safe='/%:@!$&()*+,;=-._~')}"
    host = config.host if config.host is not None else address
    headers = Headers(
        {
            b"host": [host.encode("ascii") if host.isascii() else host.encode("idna")],
            b"user-agent": [USER_AGENT],
        }
    )
    timed_out = False
    check = _Check()

    def on_timeout(result: object, timeout: float) -> Failure:
        nonlocal timed_out
        timed_out = True
        return Failure(ierror.TimeoutError(f"no answer in {timeout:g}s"))

    def read(response: IResponse) -> Deferred[int]:
        return _discard_body(response, BODY_LIMIT).addCallback(lambda _: response.code)

    def record(result: int | Failure) -> None:
        at = core.clock.seconds()
        if isinstance(result, int):
            if result in config.expected_statuses:
                core.state.record_pass(at=at)
            else:
                core.state.record_fail(f"status {result}", at=at)
        elif check.stopping and not timed_out:
            pass  # stopService cancelled it: no verdict
        elif timed_out:
            core.state.record_fail("timeout", at=at)
        else:
            error = upstream_error(result)
            if isinstance(error, UpstreamUnexpectedFailure):
                core.log.failure(
                    "{cluster} health check of {endpoint} failed unexpectedly",
                    failure=result,
                    cluster=core.cluster,
                    endpoint=address,
                )
            core.state.record_fail(error.cause, at=at)

    def verdict(result: int | Failure) -> None:
        try:
            record(result)
        except Exception:
            core.log.failure(
                "{cluster} health check of {endpoint}: recording the verdict failed",
                cluster=core.cluster,
                endpoint=address,
            )
        finally:
            core.inputs().finished()  # the loop goes on whatever happened

    try:
        requested: Deferred[IResponse] = core.agent.request(
            b"GET", url.encode("ascii"), headers, None
        )
    except Exception:
        requested = fail()
    d: Deferred[Any] = requested.addCallback(read)
    d.addTimeout(config.timeout, core.clock, onTimeoutCancel=on_timeout)
    check.deferred = d.addBoth(verdict)
    return check


def _schedule(machine: _LoopInputs, core: _LoopCore) -> _Wait:
    return _Wait(core.clock.callLater(core.delay(), core.inputs().tick))


def _build_loop_machine() -> TypeMachine[_LoopInputs, _LoopCore]:
    builder = TypeMachineBuilder(_LoopInputs, _LoopCore)
    idle = builder.state("idle")
    waiting = builder.state("waiting", _schedule)
    checking = builder.state("checking", _start_check)
    stopped = builder.state("stopped")
    I = _LoopInputs  # noqa: E741

    idle.upon(I.start).to(waiting).returns(None)
    idle.upon(I.tick).loop().returns(None)
    idle.upon(I.finished).loop().returns(None)
    idle.upon(I.stop).to(stopped).returns(None)

    waiting.upon(I.start).loop().returns(None)
    waiting.upon(I.finished).loop().returns(None)

    @pep614(waiting.upon(I.tick).to(checking))
    def check(machine: _LoopInputs, core: _LoopCore, wait: _Wait) -> None:
        wait.cancel()

    @pep614(waiting.upon(I.stop).to(stopped))
    def stop_waiting(machine: _LoopInputs, core: _LoopCore, wait: _Wait) -> None:
        wait.cancel()
        core.first = True

    checking.upon(I.start).loop().returns(None)
    checking.upon(I.tick).loop().returns(None)  # never two checks in flight
    checking.upon(I.finished).to(waiting).returns(None)

    @pep614(checking.upon(I.stop).to(stopped))
    def stop_checking(machine: _LoopInputs, core: _LoopCore, check: _Check) -> None:
        check.cancel()
        core.first = True

    stopped.upon(I.start).to(waiting).returns(None)
    stopped.upon(I.tick).loop().returns(None)
    stopped.upon(I.finished).loop().returns(None)
    stopped.upon(I.stop).loop().returns(None)

    return builder.build()


_LoopMachine = _build_loop_machine()


class HealthChecker(Service):
    """Active health checks of one cluster's endpoints.

    For each ``(endpoint, state)`` in ``targets``: the first check after a
    random fraction of ``interval``, then ``interval`` plus up to ``jitter *
    interval`` after the previous check ended (so never two in flight).  A
    check is ``GET path`` with ``Host: config.host`` (default the endpoint's
    ``host:port``), failing after ``timeout``; it passes iff the status is in
    ``expected_statuses``.  The body is read and discarded (at most
    :data:`BODY_LIMIT` bytes).
    """

    def __init__(
        self,
        cluster_name: str,
        targets: Sequence[tuple[Endpoint, HealthState]],
        config: HealthCheck,
        clock: IReactorTime,
        agent: IAgent,
        rng: random.Random,
    ) -> None:
        self.cluster_name = cluster_name
        self._config = config
        self._clock = clock
        self._agent = agent
        self._rng = rng
        self._loops: dict[Endpoint, _LoopInputs] = {}
        for endpoint, state in targets:
            self.add(endpoint, state)

    def add(self, endpoint: Endpoint, state: HealthState) -> None:
        """Check ``endpoint`` too (an address that joined; started if this is running)."""
        core = _LoopCore(
            self.cluster_name, endpoint, state, self._config, self._clock, self._agent, self._rng
        )
        core.machine = _LoopMachine(core)
        self._loops[endpoint] = core.machine
        if self.running:
            core.machine.start()

    def remove(self, endpoint: Endpoint) -> None:
        """Stop checking ``endpoint`` (an address that left); its check in flight is cancelled."""
        loop = self._loops.pop(endpoint, None)
        if loop is not None:
            loop.stop()

    def startService(self) -> None:
        super().startService()
        for loop in self._loops.values():
            loop.start()

    def stopService(self) -> None:
        super().stopService()
        for loop in self._loops.values():
            loop.stop()


def diagram() -> str:
    """The rise/fall machine's state diagram as DOT source."""
    return canonical_dot(_HealthMachine)


def checker_diagram() -> str:
    """One endpoint's check loop as DOT source."""
    return canonical_dot(_LoopMachine)


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:] != ["--dot"]:
        sys.exit("usage: python -m edgeproxy.cluster.health --dot")
    sys.stdout.write(diagram())
