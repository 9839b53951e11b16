"""
Passive health: per-endpoint outlier ejection (Envoy's outlier detection).

One :class:`Breaker` per endpoint watches the outcomes of real requests.
``consecutive_failures`` failures in a row eject the endpoint (the breaker
*opens*) for ``base_ejection_time * n`` seconds, at most
``max_ejection_time``, where ``n`` counts its ejections; then one probe
request is let through (*half-open*) and its outcome closes the breaker or
ejects the endpoint again with ``n + 1``.  The cluster decides whether one
more ejection stays within ``max_ejection_percent`` (``may_eject``, see
:func:`ejection_allowed`).

The lifecycle is an Automat ``TypeMachineBuilder`` machine with an injected
clock; its state is never exposed: callers ask (:meth:`Breaker.admit`), metrics
read a frozen :meth:`Breaker.status`.  The diagram in ``docs/resilience.md``
is generated from the machine (``python -m edgeproxy.cluster.breaker --dot``).
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import attrs
from automat import TypeMachine, TypeMachineBuilder, pep614
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from edgeproxy.config import OutlierDetection
from edgeproxy.core.errors import Reason, failure_words

__all__ = [
    "Breaker",
    "BreakerStatus",
    "Transition",
    "canonical_dot",
    "diagram",
    "ejection_allowed",
    "ejection_time",
]


@attrs.frozen
class Transition:
    """One state change of a breaker or health machine, as reported to ``on_transition``."""

    endpoint: str
    machine: str  # "breaker" | "health"
    old: str
    new: str
    cause: str
    at: float


@attrs.frozen
class BreakerStatus:
    """A snapshot for metrics and the admin status page.

    ``state`` is ``"closed"``, ``"open"``, ``"half_open"`` or ``"stopped"``;
    ``ejections`` counts every ejection since the breaker was made;
    ``ejected_for`` is the seconds left of the current ejection (``None``
    unless open); ``multiplier`` is the ``n`` of the last ejection, after decay.
    """

    state: str
    consecutive_failures: int
    ejections: int
    ejected_for: float | None
    last_cause: str | None
    multiplier: int


def ejection_time(config: OutlierDetection, n: int) -> float:
    """Envoy's rule: ``min(base_ejection_time * n, max_ejection_time)`` for the n-th ejection."""
    return min(config.base_ejection_time * n, config.max_ejection_time)


def ejection_allowed(ejected_now: int, endpoints: int, max_ejection_percent: float) -> bool:
    """May one more of a cluster's ``endpoints`` be ejected while ``ejected_now`` are?

    Yes iff ``ejected_now + 1 <= max(1, floor(endpoints * max_ejection_percent / 100))``:
    the percentage rounds down, but one endpoint may always be ejected (so a
    cluster of one or two can still shed a dead endpoint; with panic mode or
    fail-fast deciding what happens when nothing is left).
    """
    cap = max(1, math.floor(endpoints * max_ejection_percent / 100))
    return ejected_now + 1 <= cap


# -- the machine ---------------------------------------------------------------


class _BreakerInputs(Protocol):
    def admit(self) -> bool:
        "May a request go to this endpoint now?"

    def success(self) -> None:
        "An admitted request succeeded."

    def failure(self, cause: str, may_eject: bool) -> None:
        "An admitted request failed; ``may_eject``: the cluster's cap allows one more ejection."

    def cancelled(self) -> None:
        "An admitted request went away without a verdict."

    def ejection_over(self) -> None:
        "The ejection timer fired."

    def stop(self) -> None:
        "The breaker is discarded: cancel timers; every later input is a no-op."

    def is_ejected(self) -> bool:
        "Is the endpoint out of rotation?"

    def retry_after(self) -> float | None:
        "Seconds until the ejection ends."

    def status(self) -> BreakerStatus:
        "A frozen snapshot."

    def _eject(self, cause: str) -> None:
        "Internal: the failure threshold was reached and the cap allows it."

    def uneject(self, cause: str) -> None:
        "An active health check passed: the endpoint is back (Envoy's default)."


@dataclass
class _BreakerCore:
    label: str
    config: OutlierDetection
    clock: IReactorTime
    #: Called with every transition; the Breaker queues them and reports them
    #: once the machine is at rest, so handlers may call back into the Breaker.
    report: Callable[[Transition], None]
    #: The machine's ejection_over input, routed through the Breaker.
    on_timer: Callable[[], None]
    consecutive_failures: int = 0
    ejections: int = 0
    multiplier: int = 0
    last_cause: str | None = None
    #: When the breaker last closed; None while open or half-open.
    closed_since: float | None = None
    #: Closed (or stopped) with no failure counted: ``admit`` says yes,
    #: ``is_ejected`` no, and a success changes nothing.  The usual state by
    #: far, and every cluster has a breaker by default, so :class:`Breaker`
    #: answers those three from this flag without a trip through the machine
    #: (about 3 us each).  Kept by :meth:`transition` (every change of state)
    #: and by the closed state's success and failure; the count changes
    #: nowhere else while closed.
    clean: bool = True
    log: Logger = field(default_factory=Logger)

    def transition(self, old: str, new: str, cause: str) -> None:
        self.clean = new in ("closed", "stopped") and self.consecutive_failures == 0
        self.log.info(
            "{endpoint} {machine} {old} -> {new}: {cause}",
            endpoint=self.label,
            machine="breaker",
            old=old,
            new=new,
            cause=cause,
        )
        self.report(Transition(self.label, "breaker", old, new, cause, self.clock.seconds()))

    def snapshot(self, state: str, ejected_for: float | None = None) -> BreakerStatus:
        return BreakerStatus(
            state=state,
            consecutive_failures=self.consecutive_failures,
            ejections=self.ejections,
            ejected_for=ejected_for,
            last_cause=self.last_cause,
            multiplier=self.multiplier,
        )


@dataclass
class _Ejection:
    """State data of ``open``: the timer that ends the ejection."""

    until: float
    duration: float
    timer: IDelayedCall

    def cancel(self) -> None:
        if self.timer.active():
            self.timer.cancel()


@dataclass
class _Probe:
    """State data of ``half_open``: is the one probe request in flight?"""

    in_flight: bool = False


def _start_ejection(machine: _BreakerInputs, core: _BreakerCore, cause: str) -> _Ejection:
    now = core.clock.seconds()
    if core.closed_since is not None:
        # Decay: every full max_ejection_time spent closed forgives one ejection.
        forgiven = int((now - core.closed_since) // core.config.max_ejection_time)
        core.multiplier = max(0, core.multiplier - forgiven)
        core.closed_since = None
    core.multiplier += 1
    core.ejections += 1
    duration = ejection_time(core.config, core.multiplier)
    return _Ejection(now + duration, duration, core.clock.callLater(duration, core.on_timer))


def _start_probation(machine: _BreakerInputs, core: _BreakerCore) -> _Probe:
    return _Probe()


def _build_breaker_machine() -> TypeMachine[_BreakerInputs, _BreakerCore]:
    builder = TypeMachineBuilder(_BreakerInputs, _BreakerCore)
    closed = builder.state("closed")
    opened = builder.state("open", _start_ejection)
    half_open = builder.state("half_open", _start_probation)
    stopped = builder.state("stopped")

    I = _BreakerInputs  # noqa: E741

    # closed: count consecutive failures, admit everything.
    closed.upon(I.admit).loop().returns(True)
    closed.upon(I.cancelled).loop().returns(None)
    closed.upon(I.ejection_over).loop().returns(None)  # no timer in this state
    closed.upon(I.is_ejected).loop().returns(False)
    closed.upon(I.retry_after).loop().returns(None)
    closed.upon(I.uneject).loop().returns(None)

    @pep614(closed.upon(I.success).loop())
    def reset(machine: _BreakerInputs, core: _BreakerCore) -> None:
        core.consecutive_failures = 0
        core.clean = True

    @pep614(closed.upon(I.failure).loop())
    def count(machine: _BreakerInputs, core: _BreakerCore, cause: str, may_eject: bool) -> None:
        core.consecutive_failures += 1
        core.clean = False
        core.last_cause = cause
        if core.consecutive_failures >= core.config.consecutive_failures:
            if may_eject:
                machine._eject(cause)  # postponed: runs once this transition is done
            else:
                core.log.debug(
                    "{endpoint} breaker: not ejected, the cluster allows no more: {cause}",
                    endpoint=core.label,
                    cause=cause,
                )

    @pep614(closed.upon(I.status).loop())
    def closed_status(machine: _BreakerInputs, core: _BreakerCore) -> BreakerStatus:
        return core.snapshot("closed")

    @pep614(closed.upon(I._eject).to(opened))
    def eject(machine: _BreakerInputs, core: _BreakerCore, cause: str) -> None:
        core.transition(
            "closed",
            "open",
            f"{core.consecutive_failures} consecutive failures, last: {cause}",
        )

    @pep614(closed.upon(I.stop).to(stopped))
    def stop_closed(machine: _BreakerInputs, core: _BreakerCore) -> None:
        core.transition("closed", "stopped", "stopped")

    # open: refuse everything; results of requests admitted before are late.
    opened.upon(I.admit).loop().returns(False)
    opened.upon(I.success).loop().returns(None)
    opened.upon(I.failure).loop().returns(None)
    opened.upon(I.cancelled).loop().returns(None)
    opened.upon(I._eject).loop().returns(None)
    opened.upon(I.is_ejected).loop().returns(True)

    @pep614(opened.upon(I.retry_after).loop())
    def time_left(machine: _BreakerInputs, core: _BreakerCore, ejection: _Ejection) -> float:
        return max(0.0, ejection.until - core.clock.seconds())

    @pep614(opened.upon(I.status).loop())
    def open_status(
        machine: _BreakerInputs, core: _BreakerCore, ejection: _Ejection
    ) -> BreakerStatus:
        return core.snapshot("open", max(0.0, ejection.until - core.clock.seconds()))

    @pep614(opened.upon(I.ejection_over).to(half_open))
    def probe(machine: _BreakerInputs, core: _BreakerCore, ejection: _Ejection) -> None:
        ejection.cancel()
        core.transition("open", "half_open", f"ejection over after {ejection.duration:g}s")

    @pep614(opened.upon(I.uneject).to(closed))
    def uneject_open(
        machine: _BreakerInputs, core: _BreakerCore, ejection: _Ejection, cause: str
    ) -> None:
        ejection.cancel()
        core.consecutive_failures = 0
        core.closed_since = core.clock.seconds()
        core.transition("open", "closed", cause)

    @pep614(opened.upon(I.stop).to(stopped))
    def stop_open(machine: _BreakerInputs, core: _BreakerCore, ejection: _Ejection) -> None:
        ejection.cancel()
        core.transition("open", "stopped", "stopped")

    # half_open: one probe at a time; its verdict closes or re-ejects.
    half_open.upon(I.ejection_over).loop().returns(None)  # its timer is gone
    half_open.upon(I.is_ejected).loop().returns(False)
    half_open.upon(I.retry_after).loop().returns(None)

    @pep614(half_open.upon(I.admit).loop())
    def admit_probe(machine: _BreakerInputs, core: _BreakerCore, probe: _Probe) -> bool:
        if probe.in_flight:
            return False
        probe.in_flight = True
        return True

    @pep614(half_open.upon(I.cancelled).loop())
    def free_probe(machine: _BreakerInputs, core: _BreakerCore, probe: _Probe) -> None:
        probe.in_flight = False

    @pep614(half_open.upon(I.success).to(closed))
    def close(machine: _BreakerInputs, core: _BreakerCore, probe: _Probe) -> None:
        core.consecutive_failures = 0
        core.closed_since = core.clock.seconds()
        core.transition("half_open", "closed", "probe succeeded")

    @pep614(half_open.upon(I.uneject).to(closed))
    def uneject_half_open(
        machine: _BreakerInputs, core: _BreakerCore, probe: _Probe, cause: str
    ) -> None:
        core.consecutive_failures = 0
        core.closed_since = core.clock.seconds()
        core.transition("half_open", "closed", cause)

    @pep614(half_open.upon(I.failure).loop())
    def probe_failed(
        machine: _BreakerInputs, core: _BreakerCore, probe: _Probe, cause: str, may_eject: bool
    ) -> None:
        core.consecutive_failures += 1
        core.last_cause = cause
        probe.in_flight = False
        if may_eject:
            machine._eject(cause)
        else:
            # The cap forbids it: stay on probation, one request at a time.
            core.log.debug(
                "{endpoint} breaker: probe failed but max_ejection_percent reached: {cause}",
                endpoint=core.label,
                cause=cause,
            )

    @pep614(half_open.upon(I._eject).to(opened))
    def reeject(machine: _BreakerInputs, core: _BreakerCore, probe: _Probe, cause: str) -> None:
        core.transition("half_open", "open", f"probe failed: {cause}")

    @pep614(half_open.upon(I.status).loop())
    def half_open_status(
        machine: _BreakerInputs, core: _BreakerCore, probe: _Probe
    ) -> BreakerStatus:
        return core.snapshot("half_open")

    @pep614(half_open.upon(I.stop).to(stopped))
    def stop_half_open(machine: _BreakerInputs, core: _BreakerCore, probe: _Probe) -> None:
        core.transition("half_open", "stopped", "stopped")

    # stopped: a pass-through; everything is a no-op.
    stopped.upon(I.admit).loop().returns(True)
    stopped.upon(I.success).loop().returns(None)
    stopped.upon(I.failure).loop().returns(None)
    stopped.upon(I.cancelled).loop().returns(None)
    stopped.upon(I.ejection_over).loop().returns(None)
    stopped.upon(I.stop).loop().returns(None)
    stopped.upon(I.is_ejected).loop().returns(False)
    stopped.upon(I.retry_after).loop().returns(None)
    stopped.upon(I._eject).loop().returns(None)
    stopped.upon(I.uneject).loop().returns(None)

    @pep614(stopped.upon(I.status).loop())
    def stopped_status(machine: _BreakerInputs, core: _BreakerCore) -> BreakerStatus:
        return core.snapshot("stopped")

    return builder.build()


_BreakerMachine = _build_breaker_machine()


class Breaker:
    """The outlier-ejection breaker of one endpoint.

    The forwarder asks :meth:`admit` before sending a request to the endpoint
    and then reports exactly one outcome for every admitted request:
    :meth:`record_success`, :meth:`record_failure` or :meth:`record_cancelled`.

    ``may_eject`` answers whether the cluster's ``max_ejection_percent`` allows
    one more ejection (see :func:`ejection_allowed`); it is asked on every
    failure, before the breaker changes, and may call :meth:`is_ejected` on any
    breaker, this one included.  ``on_transition`` is called after each state
    change, once the breaker is consistent again (it may call back in).
    """

    def __init__(
        self,
        endpoint_label: str,
        config: OutlierDetection,
        clock: IReactorTime,
        may_eject: Callable[[], bool],
        on_transition: Callable[[Transition], None],
    ) -> None:
        self._may_eject = may_eject
        self._on_transition = on_transition
        self._pending: list[Transition] = []
        core = _BreakerCore(
            label=endpoint_label,
            config=config,
            clock=clock,
            report=self._pending.append,
            on_timer=self._ejection_over,
            closed_since=clock.seconds(),
        )
        self._core = core
        self._machine: _BreakerInputs = _BreakerMachine(core)

    def _flush(self) -> None:
        while self._pending:
            self._on_transition(self._pending.pop(0))

    def _ejection_over(self) -> None:
        self._machine.ejection_over()
        self._flush()

    def admit(self) -> bool:
        """May a request go to this endpoint now?  In half-open, ``True`` at most once
        until that probe's outcome is recorded."""
        if self._core.clean:
            return True
        return self._machine.admit()

    def record_success(self) -> None:
        """An admitted request got a usable response."""
        if self._core.clean:
            return
        self._machine.success()
        self._flush()

    def record_failure(self, cause: Reason | int) -> None:
        """An admitted request failed: ``cause`` is why (:attr:`Reason.CONNECT_FAILED`,
        :attr:`Reason.TRUNCATED`...) or the failure status it was answered with.
        Transitions and :meth:`status` word it with :func:`failure_words`.
        """
        self._machine.failure(failure_words(cause), self._may_eject())
        self._flush()

    def record_cancelled(self) -> None:
        """An admitted request went away without a verdict (the client left)."""
        self._machine.cancelled()
        self._flush()

    def record_health_pass(self) -> None:
        """An active health check of this endpoint passed: an ejected (or
        half-open) endpoint is back at once, as with Envoy's
        ``successful_active_health_check_uneject_host``."""
        self._machine.uneject("active health check passed")
        self._flush()

    def is_ejected(self) -> bool:
        """True while the endpoint is ejected (open); half-open is not ejected."""
        if self._core.clean:
            return False
        return self._machine.is_ejected()

    def retry_after(self) -> float | None:
        """Seconds until the ejection ends, or ``None`` when not ejected."""
        return self._machine.retry_after()

    def status(self) -> BreakerStatus:
        return self._machine.status()

    def stop(self) -> None:
        """Cancel the timer; afterwards every input is a no-op and ``admit`` says yes."""
        self._machine.stop()
        self._flush()


# -- diagrams ------------------------------------------------------------------

_TRANSITION_NODE = re.compile(r"^\t(t\d+) \[")
_EDGE_IN = re.compile(r"^\t(\S+) -> (t\d+):tableport:w")
_EDGE_OUT = re.compile(r"^\t(t\d+):tableport:e -> (\S+)")


def canonical_dot(machine: TypeMachine[Any, Any]) -> str:
    """``machine.asDigraph().source`` in a stable order.

    Automat keeps transitions in a set, so the order (and the ``tN`` names of
    the transition nodes) changes from one process to the next.  Here states
    come sorted by name and transitions by (state, input, target), renumbered.
    """
    digraph = machine.asDigraph()
    states: list[str] = []
    nodes: dict[str, str] = {}
    sources: dict[str, str] = {}
    targets: dict[str, str] = {}
    for line in digraph.body:
        if m := _TRANSITION_NODE.match(line):
            nodes[m.group(1)] = line
        elif m := _EDGE_IN.match(line):
            sources[m.group(2)] = m.group(1)
        elif m := _EDGE_OUT.match(line):
            targets[m.group(1)] = m.group(2)
        else:
            states.append(line)

    def key(name: str) -> tuple[str, str, str]:
        # the node line without its (run-dependent) tN name
        return (sources[name], nodes[name].split(" ", 1)[1], targets[name])

    body = sorted(states)
    for n, name in enumerate(sorted(nodes, key=key)):
        new = f"t{n}"
        body.append(nodes[name].replace(f"\t{name} [", f"\t{new} [", 1))
        body.append(f"\t{sources[name]} -> {new}:tableport:w [arrowhead=none]\n")
        body.append(f"\t{new}:tableport:e -> {targets[name]}\n")
    digraph.body[:] = body
    source: str = digraph.source
    return source


def diagram() -> str:
    """The breaker's state diagram as DOT source."""
    return canonical_dot(_BreakerMachine)


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:] != ["--dot"]:
        sys.exit("usage: python -m edgeproxy.cluster.breaker --dot")
    sys.stdout.write(diagram())
