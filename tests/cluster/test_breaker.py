"""Outlier ejection: the per-endpoint breaker machine, and the docs' diagrams."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from edgeproxy.cluster import breaker as breaker_module
from edgeproxy.cluster import health as health_module
from edgeproxy.cluster.breaker import (
    Breaker,
    BreakerStatus,
    Transition,
    ejection_allowed,
    ejection_time,
)
from edgeproxy.config import OutlierDetection
from edgeproxy.core.errors import Reason

CONFIG = OutlierDetection(3, base_ejection_time=10.0, max_ejection_time=40.0)


class Harness:
    def __init__(
        self,
        config: OutlierDetection = CONFIG,
        may_eject: Callable[[], bool] | None = None,
    ) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.transitions: list[Transition] = []
        self.allow = True
        self.breaker = Breaker(
            "api/10.0.0.1:80",
            config,
            self.clock,
            may_eject=may_eject or (lambda: self.allow),
            on_transition=self.transitions.append,
        )

    @property
    def state(self) -> str:
        return self.breaker.status().state

    def timers(self) -> int:
        return len(self.clock.getDelayedCalls())

    def fail(self, times: int = 1, cause: Reason | int = 503) -> None:
        for _ in range(times):
            self.breaker.record_failure(cause)

    def forced_eject(self) -> None:
        """The internal input, as the machine itself sends it."""
        self.breaker._machine._eject("forced")
        self.breaker._flush()

    def eject(self) -> None:
        self.fail(CONFIG.consecutive_failures)
        assert self.state == "open"


# -- drive the machine into each state ------------------------------------------


def in_closed() -> Harness:
    return Harness()


def in_open() -> Harness:
    h = Harness()
    h.eject()
    return h


def in_half_open() -> Harness:
    h = in_open()
    h.clock.advance(10)
    assert h.state == "half_open"
    return h


def in_half_open_probing() -> Harness:
    h = in_half_open()
    assert h.breaker.admit() is True
    return h


def in_stopped() -> Harness:
    h = in_open()
    h.breaker.stop()
    return h


STATES: dict[str, Callable[[], Harness]] = {
    "closed": in_closed,
    "open": in_open,
    "half_open": in_half_open,
    "half_open_probing": in_half_open_probing,
    "stopped": in_stopped,
}

# -- apply each input --------------------------------------------------------------

INPUTS: dict[str, Callable[[Harness], Any]] = {
    "admit": lambda h: h.breaker.admit(),
    "success": lambda h: h.breaker.record_success(),
    "failure": lambda h: h.breaker.record_failure(Reason.CONNECT_FAILED),
    "cancelled": lambda h: h.breaker.record_cancelled(),
    # The timer is the only caller in real life; in other states it is a stray.
    "ejection_over": lambda h: h.breaker._ejection_over(),
    "stop": lambda h: h.breaker.stop(),
    "is_ejected": lambda h: h.breaker.is_ejected(),
    "retry_after": lambda h: h.breaker.retry_after(),
    "status": lambda h: h.breaker.status().state,
    "_eject": lambda h: h.forced_eject(),
    "uneject": lambda h: h.breaker.record_health_pass(),
}

# (state, input) -> (return value, state after, pending timers after, transitions reported)
GRID: dict[tuple[str, str], tuple[object, str, int, int]] = {
    ("closed", "admit"): (True, "closed", 0, 0),
    ("closed", "success"): (None, "closed", 0, 0),
    ("closed", "failure"): (None, "closed", 0, 0),
    ("closed", "cancelled"): (None, "closed", 0, 0),
    ("closed", "ejection_over"): (None, "closed", 0, 0),
    ("closed", "stop"): (None, "stopped", 0, 1),
    ("closed", "is_ejected"): (False, "closed", 0, 0),
    ("closed", "retry_after"): (None, "closed", 0, 0),
    ("closed", "status"): ("closed", "closed", 0, 0),
    ("closed", "_eject"): (None, "open", 1, 1),
    ("closed", "uneject"): (None, "closed", 0, 0),
    # open: late results from requests admitted before the ejection are no-ops
    ("open", "admit"): (False, "open", 1, 0),
    ("open", "success"): (None, "open", 1, 0),
    ("open", "failure"): (None, "open", 1, 0),
    ("open", "cancelled"): (None, "open", 1, 0),
    ("open", "ejection_over"): (None, "half_open", 0, 1),
    ("open", "stop"): (None, "stopped", 0, 1),
    ("open", "is_ejected"): (True, "open", 1, 0),
    ("open", "retry_after"): (10.0, "open", 1, 0),
    ("open", "status"): ("open", "open", 1, 0),
    ("open", "_eject"): (None, "open", 1, 0),
    ("open", "uneject"): (None, "closed", 0, 1),
    # half-open, the probe slot free
    ("half_open", "admit"): (True, "half_open", 0, 0),
    ("half_open", "success"): (None, "closed", 0, 1),
    ("half_open", "failure"): (None, "open", 1, 1),
    ("half_open", "cancelled"): (None, "half_open", 0, 0),
    ("half_open", "ejection_over"): (None, "half_open", 0, 0),
    ("half_open", "stop"): (None, "stopped", 0, 1),
    ("half_open", "is_ejected"): (False, "half_open", 0, 0),
    ("half_open", "retry_after"): (None, "half_open", 0, 0),
    ("half_open", "status"): ("half_open", "half_open", 0, 0),
    ("half_open", "_eject"): (None, "open", 1, 1),
    ("half_open", "uneject"): (None, "closed", 0, 1),
    # half-open, the probe in flight
    ("half_open_probing", "admit"): (False, "half_open", 0, 0),
    ("half_open_probing", "success"): (None, "closed", 0, 1),
    ("half_open_probing", "failure"): (None, "open", 1, 1),
    ("half_open_probing", "cancelled"): (None, "half_open", 0, 0),
    ("half_open_probing", "ejection_over"): (None, "half_open", 0, 0),
    ("half_open_probing", "stop"): (None, "stopped", 0, 1),
    ("half_open_probing", "is_ejected"): (False, "half_open", 0, 0),
    ("half_open_probing", "retry_after"): (None, "half_open", 0, 0),
    ("half_open_probing", "status"): ("half_open", "half_open", 0, 0),
    ("half_open_probing", "_eject"): (None, "open", 1, 1),
    ("half_open_probing", "uneject"): (None, "closed", 0, 1),
    # stopped: a pass-through, everything a no-op
    ("stopped", "admit"): (True, "stopped", 0, 0),
    ("stopped", "success"): (None, "stopped", 0, 0),
    ("stopped", "failure"): (None, "stopped", 0, 0),
    ("stopped", "cancelled"): (None, "stopped", 0, 0),
    ("stopped", "ejection_over"): (None, "stopped", 0, 0),
    ("stopped", "stop"): (None, "stopped", 0, 0),
    ("stopped", "is_ejected"): (False, "stopped", 0, 0),
    ("stopped", "retry_after"): (None, "stopped", 0, 0),
    ("stopped", "status"): ("stopped", "stopped", 0, 0),
    ("stopped", "_eject"): (None, "stopped", 0, 0),
    ("stopped", "uneject"): (None, "stopped", 0, 0),
}


def test_grid_is_complete() -> None:
    assert set(GRID) == {(s, i) for s in STATES for i in INPUTS}


@pytest.mark.parametrize(("state", "input_name"), sorted(GRID))
def test_every_state_and_input(state: str, input_name: str) -> None:
    returns, after, timers, reported = GRID[state, input_name]
    h = STATES[state]()
    before = len(h.transitions)
    assert INPUTS[input_name](h) == returns
    assert h.state == after
    assert h.timers() == timers
    assert len(h.transitions) - before == reported


# -- behaviour -------------------------------------------------------------------


def test_consecutive_failures_eject_and_success_resets() -> None:
    h = Harness()
    h.fail(2)
    h.breaker.record_success()
    h.fail(2)
    assert h.state == "closed"
    assert h.breaker.status().consecutive_failures == 2
    assert h.breaker.admit() is True
    h.fail(1, Reason.CONNECT_FAILED)
    assert h.breaker.status() == BreakerStatus(
        state="open",
        consecutive_failures=3,
        ejections=1,
        ejected_for=10.0,
        last_cause="connect failed",
        multiplier=1,
    )
    assert h.breaker.is_ejected() is True
    assert h.breaker.admit() is False


def test_ejection_time_grows_and_is_capped() -> None:
    h = Harness()
    h.eject()
    seen = []
    for _ in range(6):
        seen.append(h.breaker.retry_after())
        h.clock.advance(h.breaker.retry_after() or 0)
        assert h.state == "half_open"
        assert h.breaker.admit() is True
        h.fail(1)  # the probe fails: ejected again with n + 1
        assert h.state == "open"
    assert seen == [10.0, 20.0, 30.0, 40.0, 40.0, 40.0]
    assert h.breaker.status().ejections == 7
    assert [ejection_time(CONFIG, n) for n in (1, 2, 3, 4, 5)] == [10, 20, 30, 40, 40]


def test_retry_after_counts_down() -> None:
    h = Harness()
    h.eject()
    h.clock.advance(3.5)
    assert h.breaker.retry_after() == pytest.approx(6.5)
    assert h.breaker.status().ejected_for == pytest.approx(6.5)
    h.clock.advance(6.5)
    assert h.breaker.retry_after() is None
    assert h.breaker.status().ejected_for is None


def test_multiplier_decays_while_closed() -> None:
    h = Harness()
    for _ in range(3):  # ejected with n = 1, 2, 3
        h.eject()
        h.clock.advance(h.breaker.retry_after() or 0)
        h.breaker.admit()
        h.breaker.record_success()
        assert h.state == "closed"
    assert h.breaker.status().multiplier == 3
    # Closed for two full max_ejection_times: two ejections forgiven.
    h.clock.advance(2 * CONFIG.max_ejection_time + 1)
    h.eject()
    assert h.breaker.status().multiplier == 2
    assert h.breaker.retry_after() == 20.0


def test_no_decay_without_time_closed() -> None:
    h = Harness()
    h.eject()
    h.clock.advance(10)
    h.breaker.admit()
    h.breaker.record_success()
    h.eject()
    assert h.breaker.status().multiplier == 2


def test_cap_refuses_ejection_and_keeps_counting() -> None:
    h = Harness()
    h.allow = False
    h.fail(5)
    assert h.state == "closed"
    assert h.breaker.status().consecutive_failures == 5
    assert h.transitions == []
    h.allow = True
    h.fail(1)
    assert h.state == "open"
    assert "6 consecutive failures" in h.transitions[-1].cause


def test_cap_refuses_reejection_probe_stays_half_open() -> None:
    h = in_half_open_probing()
    h.allow = False
    h.fail(1)
    assert h.state == "half_open"
    # still one request at a time
    assert h.breaker.admit() is True
    assert h.breaker.admit() is False
    h.allow = True
    h.fail(1)
    assert h.state == "open"
    assert h.breaker.status().multiplier == 2


def test_may_eject_may_ask_this_breaker() -> None:
    """The cluster's may_eject counts ejected breakers, this one included."""
    breakers: list[Breaker] = []
    clock = Clock()

    def may_eject() -> bool:
        return ejection_allowed(sum(b.is_ejected() for b in breakers), len(breakers), 50)

    for n in range(4):
        breakers.append(Breaker(f"e{n}", CONFIG, clock, may_eject, lambda t: None))
    for b in breakers:
        for _ in range(3):
            b.record_failure(500)
    assert [b.is_ejected() for b in breakers] == [True, True, False, False]


def test_on_transition_may_call_back() -> None:
    seen: list[tuple[str, bool, float | None]] = []
    clock = Clock()

    def on_transition(t: Transition) -> None:
        seen.append((b.status().state, b.is_ejected(), b.retry_after()))

    b = Breaker("e", CONFIG, clock, lambda: True, on_transition)
    for _ in range(3):
        b.record_failure(502)
    clock.advance(10)
    assert seen == [("open", True, 10.0), ("half_open", False, None)]


def test_half_open_admits_one_probe_at_a_time() -> None:
    h = in_half_open()
    assert [h.breaker.admit() for _ in range(3)] == [True, False, False]
    h.breaker.record_cancelled()  # the probe's client went away: slot freed
    assert h.breaker.admit() is True
    assert h.breaker.admit() is False
    h.breaker.record_success()
    assert h.state == "closed"
    assert h.breaker.status().consecutive_failures == 0
    assert all(h.breaker.admit() for _ in range(3))


def test_late_results_while_open_are_ignored() -> None:
    h = in_open()
    before = h.breaker.status()
    h.breaker.record_success()
    h.fail(10)
    h.breaker.record_cancelled()
    assert h.breaker.status() == before
    assert h.timers() == 1


def test_timers_cancelled_on_leaving_open() -> None:
    h = in_open()
    (call,) = h.clock.getDelayedCalls()
    h.breaker.stop()
    assert not call.active()
    assert h.clock.getDelayedCalls() == []
    h.clock.advance(1000)
    assert h.state == "stopped"
    assert h.breaker.admit() is True


def test_transitions_reported_and_logged() -> None:
    h = Harness()
    with capturedLogs() as events:
        h.fail(2, 500)
        h.fail(1, Reason.CONNECT_FAILED)
        h.clock.advance(10)
        h.breaker.admit()
        h.breaker.record_success()
    assert h.transitions == [
        Transition(
            "api/10.0.0.1:80",
            "breaker",
            "closed",
            "open",
            "3 consecutive failures, last: connect failed",
            1000.0,
        ),
        Transition(
            "api/10.0.0.1:80", "breaker", "open", "half_open", "ejection over after 10s", 1010.0
        ),
        Transition("api/10.0.0.1:80", "breaker", "half_open", "closed", "probe succeeded", 1010.0),
    ]
    logged = [e for e in events if e.get("machine") == "breaker"]
    assert [(e["old"], e["new"]) for e in logged] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    assert {e["log_format"] for e in logged} == {"{endpoint} {machine} {old} -> {new}: {cause}"}
    assert logged[0]["endpoint"] == "api/10.0.0.1:80"


def test_probe_failure_cause() -> None:
    h = in_half_open_probing()
    h.fail(1, Reason.RESPONSE_TIMEOUT)
    assert h.transitions[-1].old == "half_open"
    assert h.transitions[-1].cause == "probe failed: response timeout"


@pytest.mark.parametrize(
    ("cause", "words"),
    [
        # Every reason the forwarder reports to a breaker, as /status and the
        # transitions have always worded them.
        (Reason.CONNECT_FAILED, "connect failed"),
        (Reason.CONNECT_TIMEOUT, "connect timeout"),
        (Reason.RESPONSE_TIMEOUT, "response timeout"),
        (Reason.BAD_RESPONSE, "response failed"),
        (Reason.TRUNCATED, "truncated"),
        (Reason.IDLE_TIMEOUT, "idle timeout"),
        (503, "status 503"),
        (500, "status 500"),
    ],
)
def test_failure_causes_are_worded_as_before(cause: Reason | int, words: str) -> None:
    h = Harness()
    h.fail(1, cause)
    assert h.breaker.status().last_cause == words


@pytest.mark.parametrize(
    ("ejected", "endpoints", "percent", "allowed"),
    [
        (0, 1, 50, True),  # one may always be ejected
        (1, 1, 50, False),
        (0, 2, 50, True),
        (1, 2, 50, False),
        (1, 4, 50, True),
        (2, 4, 50, False),
        (0, 10, 0, True),  # even at 0 %
        (1, 10, 0, False),
        (2, 10, 33, True),  # floor(3.3) = 3
        (3, 10, 33, False),
        (9, 10, 100, True),
        (10, 10, 100, False),
    ],
)
def test_ejection_allowed(ejected: int, endpoints: int, percent: float, allowed: bool) -> None:
    assert ejection_allowed(ejected, endpoints, percent) is allowed


# -- docs can't drift ------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs" / "resilience.md"
DIAGRAMS: dict[str, Callable[[], str]] = {
    "breaker": breaker_module.diagram,
    "health": health_module.diagram,
    "health-check-loop": health_module.checker_diagram,
}
_BLOCK = re.compile(r"<!-- diagram: (\S+) -->\n```dot\n(.*?)```\n", re.DOTALL)


def test_docs_diagrams_match_the_machines() -> None:
    """Regenerate with ``python docs/diagrams.py``."""
    blocks = dict(_BLOCK.findall(DOCS.read_text()))
    assert set(blocks) == set(DIAGRAMS)
    for name, generate in DIAGRAMS.items():
        assert blocks[name] == generate(), f"docs/resilience.md diagram {name!r} is stale"


def test_diagram_is_stable() -> None:
    assert breaker_module.diagram() == breaker_module.diagram()
    source = breaker_module.diagram()
    assert source.startswith("digraph {")
    for state in ("closed", "open", "half_open", "stopped"):
        assert f"\t{state} [" in source


class _MachineOnly(Breaker):
    """A breaker that asks the machine every time, without the clean-state shortcut."""

    def admit(self) -> bool:
        return self._machine.admit()

    def record_success(self) -> None:
        self._machine.success()
        self._flush()

    def is_ejected(self) -> bool:
        return self._machine.is_ejected()


@pytest.mark.parametrize("seed", range(5))
def test_clean_state_shortcut_answers_as_the_machine_does(seed: int) -> None:
    """admit, record_success and is_ejected skip the machine while it is closed
    with no failure counted; random sequences of inputs get the same answers,
    states and transitions either way."""
    rng = random.Random(seed)
    clocks = (Clock(), Clock())
    seen: tuple[list[Transition], list[Transition]] = ([], [])
    allow = [True]
    fast, slow = (
        kind("e", CONFIG, clock, lambda: allow[0], log.append)
        for kind, clock, log in zip((Breaker, _MachineOnly), clocks, seen, strict=True)
    )
    steps: list[Callable[[Breaker], object]] = [
        lambda b: b.admit(),
        lambda b: b.admit(),
        lambda b: b.record_success(),
        lambda b: b.record_success(),
        lambda b: b.record_failure(500),
        lambda b: b.record_failure(Reason.CONNECT_FAILED),
        lambda b: b.record_cancelled(),
        lambda b: b.record_health_pass(),
        lambda b: b.is_ejected(),
        lambda b: b.retry_after(),
    ]
    for _ in range(3000):
        roll = rng.random()
        if roll < 0.05:
            delay = rng.choice((1.0, 10.0, 50.0))
            for clock in clocks:
                clock.advance(delay)
        elif roll < 0.07:
            allow[0] = not allow[0]
        else:
            step = rng.choice(steps)
            assert step(fast) == step(slow)
        assert fast.status() == slow.status()
    assert seen[0] == seen[1]
    assert len(seen[0]) > 20  # the sequences went through every state many times
    fast.stop()
    slow.stop()
    assert fast.admit() is slow.admit() is True


# -- pinned (issue 14): exact counts and times at the edges -----------------------


@pytest.mark.parametrize("via", ["open", "half_open"])
def test_pin_after_a_health_pass_the_full_count_is_needed_again(via: str) -> None:
    h = in_open() if via == "open" else in_half_open_probing()
    h.breaker.record_health_pass()
    assert (h.state, h.breaker.status().consecutive_failures) == ("closed", 0)
    assert h.transitions[-1].cause == "active health check passed"
    assert h.timers() == 0
    h.fail(CONFIG.consecutive_failures - 1)
    assert h.state == "closed"
    assert h.breaker.status().consecutive_failures == CONFIG.consecutive_failures - 1
    assert h.breaker.admit() is True
    h.fail(1)
    assert h.state == "open"
    # The health pass forgives no ejection: this one is the second.
    assert h.breaker.status().multiplier == 2
    assert h.breaker.retry_after() == 20.0


@pytest.mark.parametrize(
    ("closed_for", "multiplier", "ejected_for"),
    [
        (0.0, 4, 40.0),  # nothing forgiven; 4 * 10 s hits the 40 s cap
        (39.5, 4, 40.0),  # not one full max_ejection_time
        (40.0, 3, 30.0),  # exactly one: one ejection forgiven
        (79.5, 3, 30.0),
        (80.0, 2, 20.0),  # two forgiven
        (120.0, 1, 10.0),  # all three forgiven: as the first ejection
        (1000.0, 1, 10.0),  # more than were ever counted: never below the first
    ],
)
def test_pin_decay_forgives_one_ejection_per_max_ejection_time_closed(
    closed_for: float, multiplier: int, ejected_for: float
) -> None:
    h = Harness()
    for _ in range(3):  # ejected with n = 1, 2, 3; closed by a probe at once each time
        h.eject()
        h.clock.advance(h.breaker.retry_after() or 0)
        assert h.breaker.admit() is True
        h.breaker.record_success()
    assert h.breaker.status().multiplier == 3
    h.clock.advance(closed_for)
    h.eject()
    status = h.breaker.status()
    assert (status.multiplier, status.ejected_for, status.ejections) == (
        multiplier,
        ejected_for,
        4,
    )


def test_pin_decay_counts_from_the_health_pass() -> None:
    h = Harness()
    h.eject()
    h.clock.advance(5)  # half-way through the ejection
    h.breaker.record_health_pass()
    h.clock.advance(CONFIG.max_ejection_time)  # a full max_ejection_time since then
    h.eject()
    assert h.breaker.status().multiplier == 1
    assert h.breaker.retry_after() == 10.0


def test_pin_retry_after_under_one_second() -> None:
    h = Harness(OutlierDetection(3, base_ejection_time=0.5, max_ejection_time=0.75))
    h.fail(3)
    # Not rounded: the breaker answers fractions (the cluster rounds up).
    assert h.breaker.retry_after() == 0.5
    h.clock.advance(0.25)
    assert h.breaker.retry_after() == 0.25
    assert h.breaker.status().ejected_for == 0.25
    h.clock.advance(0.25)
    assert (h.state, h.breaker.retry_after()) == ("half_open", None)
    assert h.breaker.admit() is True
    h.fail(1)
    assert h.breaker.retry_after() == 0.75  # min(0.5 * 2, 0.75)
    h.clock.advance(0.5)
    assert h.breaker.retry_after() == 0.25


def test_pin_the_count_after_a_failed_probe() -> None:
    h = in_half_open_probing()
    assert h.breaker.status().consecutive_failures == 3  # kept through open and half-open
    h.fail(1, Reason.RESPONSE_TIMEOUT)
    assert h.breaker.status() == BreakerStatus(
        state="open",
        consecutive_failures=4,
        ejections=2,
        ejected_for=20.0,
        last_cause="response timeout",
        multiplier=2,
    )
    # The cap forbids the next ejection: on probation, still counting.
    h.clock.advance(20)
    assert h.breaker.admit() is True
    h.allow = False
    h.fail(1, 502)
    assert h.breaker.status() == BreakerStatus(
        state="half_open",
        consecutive_failures=5,
        ejections=2,
        ejected_for=None,
        last_cause="status 502",
        multiplier=2,
    )
    # A probe that succeeds clears the count; the multiplier waits for decay.
    assert h.breaker.admit() is True
    h.breaker.record_success()
    status = h.breaker.status()
    assert (status.state, status.consecutive_failures, status.multiplier) == ("closed", 0, 2)
    assert status.last_cause == "status 502"
