"""Active health checks: the rise/fall machine, the check loop and the checker service."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from treq.testing import RequestTraversalAgent
from twisted.internet import error as ierror
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseDone, ResponseFailed, ResponseNeverReceived
from twisted.web.client import URI
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IResponse
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer
from zope.interface.verify import verifyObject

from edgeproxy.cluster.breaker import Transition
from edgeproxy.cluster.health import BODY_LIMIT, HealthChecker, HealthState, HealthStatus
from edgeproxy.config import Endpoint, HealthCheck
from edgeproxy.net.endpoints import DirectEndpointFactory

CONFIG = HealthCheck("/healthz", interval=2.0, timeout=1.0, rise=2, fall=3, jitter=0.1)
E1 = Endpoint("10.0.0.1", 8080)
E2 = Endpoint("10.0.0.2", 8080)

# -- the rise/fall machine --------------------------------------------------------


class StateHarness:
    def __init__(self, config: HealthCheck = CONFIG) -> None:
        self.clock = Clock()
        self.transitions: list[Transition] = []
        self.state = HealthState("api/10.0.0.1:8080", config, self.transitions.append)

    @property
    def name(self) -> str:
        return self.state.status().state

    def passes(self, n: int) -> None:
        for _ in range(n):
            self.state.record_pass(at=self.clock.seconds())

    def fails(self, n: int, cause: str = "timeout") -> None:
        for _ in range(n):
            self.state.record_fail(cause, at=self.clock.seconds())


def healthy() -> StateHarness:
    return StateHarness()


def healthy_falling() -> StateHarness:
    h = StateHarness()
    h.fails(CONFIG.fall - 1)
    assert h.name == "healthy"
    return h


def unhealthy() -> StateHarness:
    h = StateHarness()
    h.fails(CONFIG.fall)
    assert h.name == "unhealthy"
    return h


def unhealthy_rising() -> StateHarness:
    h = unhealthy()
    h.passes(CONFIG.rise - 1)
    assert h.name == "unhealthy"
    return h


def internal(name: str, *args: Any) -> Callable[[StateHarness], Any]:
    def run(h: StateHarness) -> Any:
        result = getattr(h.state._machine, name)(*args)
        h.state._flush()
        return result

    return run


HEALTH_STATES: dict[str, Callable[[], StateHarness]] = {
    "healthy": healthy,
    "healthy_falling": healthy_falling,
    "unhealthy": unhealthy,
    "unhealthy_rising": unhealthy_rising,
}
HEALTH_INPUTS: dict[str, Callable[[StateHarness], Any]] = {
    "check_passed": lambda h: h.state.record_pass(),
    "check_failed": lambda h: h.state.record_fail("status 503"),
    "is_healthy": lambda h: h.state.healthy(),
    "status": lambda h: h.state.status().state,
    "_rise": internal("_rise"),
    "_fall": internal("_fall", "forced"),
}
# (state, input) -> (return value, state after, transitions reported)
HEALTH_GRID: dict[tuple[str, str], tuple[object, str, int]] = {
    ("healthy", "check_passed"): (None, "healthy", 0),
    ("healthy", "check_failed"): (None, "healthy", 0),
    ("healthy", "is_healthy"): (True, "healthy", 0),
    ("healthy", "status"): ("healthy", "healthy", 0),
    ("healthy", "_rise"): (None, "healthy", 0),
    ("healthy", "_fall"): (None, "unhealthy", 1),
    ("healthy_falling", "check_passed"): (None, "healthy", 0),
    ("healthy_falling", "check_failed"): (None, "unhealthy", 1),
    ("healthy_falling", "is_healthy"): (True, "healthy", 0),
    ("healthy_falling", "status"): ("healthy", "healthy", 0),
    ("healthy_falling", "_rise"): (None, "healthy", 0),
    ("healthy_falling", "_fall"): (None, "unhealthy", 1),
    ("unhealthy", "check_passed"): (None, "unhealthy", 0),
    ("unhealthy", "check_failed"): (None, "unhealthy", 0),
    ("unhealthy", "is_healthy"): (False, "unhealthy", 0),
    ("unhealthy", "status"): ("unhealthy", "unhealthy", 0),
    ("unhealthy", "_rise"): (None, "healthy", 1),
    ("unhealthy", "_fall"): (None, "unhealthy", 0),
    ("unhealthy_rising", "check_passed"): (None, "healthy", 1),
    ("unhealthy_rising", "check_failed"): (None, "unhealthy", 0),
    ("unhealthy_rising", "is_healthy"): (False, "unhealthy", 0),
    ("unhealthy_rising", "status"): ("unhealthy", "unhealthy", 0),
    ("unhealthy_rising", "_rise"): (None, "healthy", 1),
    ("unhealthy_rising", "_fall"): (None, "unhealthy", 0),
}


def test_health_grid_is_complete() -> None:
    assert set(HEALTH_GRID) == {(s, i) for s in HEALTH_STATES for i in HEALTH_INPUTS}


@pytest.mark.parametrize(("state", "input_name"), sorted(HEALTH_GRID))
def test_health_every_state_and_input(state: str, input_name: str) -> None:
    returns, after, reported = HEALTH_GRID[state, input_name]
    h = HEALTH_STATES[state]()
    before = len(h.transitions)
    assert HEALTH_INPUTS[input_name](h) == returns
    assert h.name == after
    assert len(h.transitions) - before == reported


def test_starts_healthy() -> None:
    h = StateHarness()
    assert h.state.healthy() is True
    assert h.state.status() == HealthStatus("healthy", 0, 0, None, None)


def test_fall_and_rise_counters_reset_on_the_opposite_result() -> None:
    h = StateHarness()
    h.fails(2)
    h.passes(1)  # resets the failures
    h.fails(2)
    assert h.state.healthy() is True
    h.fails(1, "status 503")
    assert h.state.healthy() is False
    h.passes(1)
    h.fails(1)  # resets the passes
    h.passes(1)
    assert h.state.healthy() is False
    h.clock.advance(7)
    h.passes(1)
    assert h.state.healthy() is True
    assert h.state.status() == HealthStatus("healthy", 2, 0, "timeout", 7.0)


def test_transitions_reported_and_logged() -> None:
    h = StateHarness()
    with capturedLogs() as events:
        h.clock.advance(5)
        h.fails(3, "connect refused")
        h.clock.advance(5)
        h.passes(2)
    label = "api/10.0.0.1:8080"
    assert h.transitions == [
        Transition(
            label, "health", "healthy", "unhealthy", "3 failed checks, last: connect refused", 5.0
        ),
        Transition(label, "health", "unhealthy", "healthy", "2 passed checks", 10.0),
    ]
    logged = [e for e in events if e.get("machine") == "health"]
    assert [(e["endpoint"], e["old"], e["new"]) for e in logged] == [
        (label, "healthy", "unhealthy"),
        (label, "unhealthy", "healthy"),
    ]


def test_failed_checks_are_logged_when_they_are_news() -> None:
    """The first failure after a pass and a change of cause are logged; the same
    failure again is not (a dead endpoint logs once, not every interval)."""
    h = StateHarness()
    with capturedLogs() as events:
        h.fails(5, "connect refused")
        h.fails(2, "timeout")
        h.passes(2)
        h.fails(1, "timeout")
    failed = [
        e["cause"] for e in events if e["log_format"] == "{endpoint} health check failed: {cause}"
    ]
    assert failed == ["connect refused", "timeout", "timeout"]
    assert all(
        e["endpoint"] == "api/10.0.0.1:8080" for e in events if e["log_format"].endswith("{cause}")
    )


def test_clock_gives_the_time_when_at_is_not_given() -> None:
    clock = Clock()
    clock.advance(42)
    seen: list[Transition] = []
    state = HealthState("e", HealthCheck(fall=1), seen.append, clock=clock)
    state.record_fail("timeout")
    assert seen[0].at == 42.0
    assert state.status().last_check_at == 42.0


def test_on_transition_may_call_back() -> None:
    answers: list[bool] = []
    state = HealthState("e", HealthCheck(fall=1, rise=1), lambda t: answers.append(state.healthy()))
    state.record_fail("timeout", at=1.0)
    state.record_pass(at=2.0)
    assert answers == [False, True]


# -- test doubles: a real IAgent and IResponse -------------------------------------


class BodyTransport:
    def __init__(self) -> None:
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True

    def stopProducing(self) -> None:
        self.aborted = True

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass


@implementer(IResponse)
@attrs.define
class FakeResponse:
    code: int
    body: list[bytes] = attrs.Factory(list)
    end: Failure | None = attrs.Factory(lambda: Failure(ResponseDone()))
    version: tuple[bytes, int, int] = (b"HTTP", 1, 1)
    phrase: bytes = b"Whatever"
    headers: Headers = attrs.Factory(Headers)
    length: int = UNKNOWN_LENGTH
    request: Any = None
    previousResponse: Any = None
    transport: BodyTransport = attrs.Factory(BodyTransport)
    protocol: Any = None

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)
        for chunk in self.body:
            if self.transport.aborted:
                return
            protocol.dataReceived(chunk)
        if self.end is not None and not self.transport.aborted:
            protocol.connectionLost(self.end)

    def setPreviousResponse(self, response: Any) -> None:
        self.previousResponse = response


@attrs.define
class Sent:
    method: bytes
    uri: bytes
    headers: Headers
    deferred: Deferred[IResponse]
    cancelled: bool = False


@implementer(IAgent)
class FakeAgent:
    """Answers with ``respond(sent)`` (default: hang until the test fires ``sent.deferred``)."""

    def __init__(self, respond: Callable[[Sent], Deferred[IResponse] | None] | None = None):
        self.sent: list[Sent] = []
        self.respond = respond

    def request(
        self, method: bytes, uri: bytes, headers: Headers | None = None, bodyProducer: Any = None
    ) -> Deferred[IResponse]:
        def cancel(d: Deferred[IResponse]) -> None:
            sent.cancelled = True

        d: Deferred[IResponse] = Deferred(cancel)
        sent = Sent(method, uri, headers or Headers(), d)
        self.sent.append(sent)
        if self.respond is not None:
            answer = self.respond(sent)
            if answer is not None:
                return answer
        return d


def answering(code: int) -> Callable[[Sent], Deferred[IResponse]]:
    return lambda sent: succeed(FakeResponse(code))


class CheckerHarness:
    def __init__(
        self,
        respond: Callable[[Sent], Deferred[IResponse] | None] | None = None,
        config: HealthCheck = CONFIG,
        endpoints: tuple[Endpoint, ...] = (E1,),
        seed: int = 7,
    ) -> None:
        self.clock = Clock()
        self.agent = FakeAgent(respond)
        self.transitions: list[Transition] = []
        self.states = [
            HealthState(str(e), config, self.transitions.append, clock=self.clock)
            for e in endpoints
        ]
        self.checker = HealthChecker(
            "api",
            list(zip(endpoints, self.states, strict=True)),
            config,
            self.clock,
            self.agent,
            random.Random(seed),
        )

    def timers(self) -> list[float]:
        return sorted(call.getTime() for call in self.clock.getDelayedCalls())


def test_fake_agent_and_response_provide_the_interfaces() -> None:
    assert verifyObject(IAgent, FakeAgent())
    assert verifyObject(IResponse, FakeResponse(200))


# -- the check loop machine -------------------------------------------------------


def loop_idle() -> CheckerHarness:
    return CheckerHarness()


def loop_waiting() -> CheckerHarness:
    h = CheckerHarness()
    h.checker.startService()
    return h


def loop_checking() -> CheckerHarness:
    h = loop_waiting()
    h.clock.advance(CONFIG.interval)  # the first check is within one interval
    assert len(h.agent.sent) == 1
    return h


def loop_stopped() -> CheckerHarness:
    h = loop_checking()
    h.checker.stopService()
    return h


def loop_input(name: str) -> Callable[[CheckerHarness], None]:
    return lambda h: getattr(next(iter(h.checker._loops.values())), name)()


LOOP_STATES = {
    "idle": loop_idle,
    "waiting": loop_waiting,
    "checking": loop_checking,
    "stopped": loop_stopped,
}
LOOP_INPUTS = {name: loop_input(name) for name in ("start", "tick", "finished", "stop")}
# (state, input) -> (timers after, requests sent by the input, the request in flight cancelled)
LOOP_GRID: dict[tuple[str, str], tuple[int, int, bool]] = {
    ("idle", "start"): (1, 0, False),
    ("idle", "tick"): (0, 0, False),
    ("idle", "finished"): (0, 0, False),
    ("idle", "stop"): (0, 0, False),
    ("waiting", "start"): (1, 0, False),
    ("waiting", "tick"): (1, 1, False),  # the check, and its timeout
    ("waiting", "finished"): (1, 0, False),
    ("waiting", "stop"): (0, 0, False),
    ("checking", "start"): (1, 0, False),
    ("checking", "tick"): (1, 0, False),  # never two in flight
    ("checking", "finished"): (2, 0, False),  # the next wait (the timeout still pending)
    ("checking", "stop"): (0, 0, True),
    ("stopped", "start"): (1, 0, False),
    ("stopped", "tick"): (0, 0, False),
    ("stopped", "finished"): (0, 0, False),
    ("stopped", "stop"): (0, 0, False),
}


def test_loop_grid_is_complete() -> None:
    assert set(LOOP_GRID) == {(s, i) for s in LOOP_STATES for i in LOOP_INPUTS}


@pytest.mark.parametrize(("state", "input_name"), sorted(LOOP_GRID))
def test_loop_every_state_and_input(state: str, input_name: str) -> None:
    timers, sent, cancelled = LOOP_GRID[state, input_name]
    h = LOOP_STATES[state]()
    before = len(h.agent.sent)
    cancelled_before = sum(s.cancelled for s in h.agent.sent)
    LOOP_INPUTS[input_name](h)
    assert len(h.timers()) == timers
    assert len(h.agent.sent) - before == sent
    assert sum(s.cancelled for s in h.agent.sent) - cancelled_before == int(cancelled)


# -- the checker service ------------------------------------------------------------


def test_schedule_with_jitter() -> None:
    h = CheckerHarness(answering(200), endpoints=(E1, E2), seed=3)
    expected = random.Random(3)
    first = [expected.uniform(0, 2.0) for _ in range(2)]
    h.checker.startService()
    assert h.timers() == pytest.approx(sorted(first))
    h.clock.advance(min(first))
    h.clock.advance(max(first) - min(first))
    assert len(h.agent.sent) == 2
    # Checks answer at once; each next wait is interval + up to jitter * interval,
    # drawn in the order the checks finished.
    nexts = [expected.uniform(0, 0.1 * 2.0) for _ in range(2)]
    assert all(0 <= n <= 0.2 for n in nexts)
    expected_waits = sorted(f + 2.0 + n for f, n in zip(sorted(first), nexts, strict=True))
    assert h.timers() == pytest.approx(expected_waits)


def test_request_shape() -> None:
    h = CheckerHarness(answering(200), endpoints=(E1, Endpoint("::1", 9000)))
    h.checker.startService()
    h.clock.advance(2.0)
    by_uri = {s.uri: s for s in h.agent.sent}
    assert set(by_uri) == {b"http://10.0.0.1:8080/healthz", b"http://[::1]:9000/healthz"}
    sent = by_uri[b"http://10.0.0.1:8080/healthz"]
    assert sent.method == b"GET"
    assert sent.headers.getRawHeaders(b"host") == [b"10.0.0.1:8080"]
    assert sent.headers.getRawHeaders(b"user-agent") == [b"edgeproxy-health-check"]
    assert by_uri[b"http://[::1]:9000/healthz"].headers.getRawHeaders(b"host") == [b"[::1]:9000"]


def test_configured_host_header() -> None:
    h = CheckerHarness(answering(200), config=HealthCheck("/ready", host="api.internal"))
    h.checker.startService()
    h.clock.advance(2.0)
    (sent,) = h.agent.sent
    assert sent.uri == b"http://10.0.0.1:8080/ready"
    assert sent.headers.getRawHeaders(b"host") == [b"api.internal"]


def run_checks(h: CheckerHarness, n: int) -> None:
    h.checker.startService()
    for _ in range(n * 10):
        if len(h.agent.sent) >= n:
            break
        h.clock.advance(0.5)
    assert len(h.agent.sent) == n


@pytest.mark.parametrize(
    ("code", "expected", "passed"),
    [
        (200, frozenset(range(200, 400)), True),
        (204, frozenset(range(200, 400)), True),
        (302, frozenset(range(200, 400)), True),
        (404, frozenset(range(200, 400)), False),
        (503, frozenset(range(200, 400)), False),
        (302, frozenset({200}), False),
        (503, frozenset({503}), True),
    ],
)
def test_expected_statuses(code: int, expected: frozenset[int], passed: bool) -> None:
    config = HealthCheck(fall=1, expected_statuses=expected)
    h = CheckerHarness(answering(code), config=config)
    run_checks(h, 1)
    status = h.states[0].status()
    assert (status.consecutive_passes, status.consecutive_failures) == (
        (1, 0) if passed else (0, 1)
    )
    assert status.last_cause == (None if passed else f"status {code}")
    assert status.last_check_at == h.clock.seconds()


def test_fall_and_rise_through_checks() -> None:
    answers = iter([503, 503, 503, 200, 200])
    h = CheckerHarness(lambda sent: succeed(FakeResponse(next(answers))))
    run_checks(h, 3)
    assert h.states[0].healthy() is False
    run_checks(h, 5)
    assert h.states[0].healthy() is True
    assert [(t.old, t.new) for t in h.transitions] == [
        ("healthy", "unhealthy"),
        ("unhealthy", "healthy"),
    ]


def test_timeout_fails_the_check_and_cancels_the_request() -> None:
    h = CheckerHarness()  # the agent never answers
    h.checker.startService()
    h.clock.advance(2.0)
    (sent,) = h.agent.sent
    h.clock.advance(0.999)
    assert not sent.cancelled
    assert h.states[0].status().consecutive_failures == 0
    h.clock.advance(0.001)
    assert sent.cancelled
    assert h.states[0].status().last_cause == "timeout"
    assert h.states[0].status().consecutive_failures == 1


def test_timeout_covers_the_body() -> None:
    response = FakeResponse(200, body=[b"partial"], end=None)  # the body never ends
    h = CheckerHarness(lambda sent: succeed(response))
    run_checks(h, 1)
    assert h.states[0].status().consecutive_failures == 0
    h.clock.advance(1.0)
    assert response.transport.aborted
    assert h.states[0].status().last_cause == "timeout"


def test_one_check_in_flight() -> None:
    config = HealthCheck(interval=1.0, timeout=30.0)
    h = CheckerHarness(config=config)
    h.checker.startService()
    h.clock.advance(1.0)
    assert len(h.agent.sent) == 1
    for _ in range(20):
        h.clock.advance(1.0)
    assert len(h.agent.sent) == 1
    h.agent.sent[0].deferred.callback(FakeResponse(200))
    assert len(h.agent.sent) == 1
    h.clock.advance(1.1)
    assert len(h.agent.sent) == 2


def test_stop_cancels_waits_and_checks_without_a_verdict() -> None:
    h = CheckerHarness(endpoints=(E1, E2), seed=1)
    h.checker.startService()
    first = min(h.timers())
    h.clock.advance(first)  # one endpoint checking, the other waiting
    assert len(h.agent.sent) == 1
    h.checker.stopService()
    assert h.agent.sent[0].cancelled
    assert h.clock.getDelayedCalls() == []
    assert [s.status().consecutive_failures for s in h.states] == [0, 0]
    h.clock.advance(100)
    assert len(h.agent.sent) == 1


def test_restart_after_stop() -> None:
    h = CheckerHarness(answering(200))
    h.checker.startService()
    h.checker.stopService()
    h.checker.startService()
    assert len(h.timers()) == 1
    h.clock.advance(2.0)
    assert len(h.agent.sent) == 1


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (ierror.ConnectionRefusedError(), "connect refused"),
        (ierror.TimeoutError(), "connect timeout"),
        (ierror.DNSLookupError(), "dns lookup failed"),
        (ierror.ConnectError(), "connect failed"),
        (ResponseNeverReceived([Failure(ierror.ConnectionLost())]), "no response"),
        (ResponseFailed([Failure(ierror.ConnectionLost())]), "connection lost"),
        (ResponseNeverReceived([Failure(ierror.ConnectionRefusedError())]), "connect refused"),
    ],
)
def test_failure_causes(error: Exception, cause: str) -> None:
    h = CheckerHarness(lambda sent: fail(error))
    with capturedLogs() as events:
        run_checks(h, 1)
    assert h.states[0].status().last_cause == cause
    assert not [e for e in events if e.get("log_failure") is not None]


def test_unexpected_error_is_logged_with_traceback() -> None:
    h = CheckerHarness(lambda sent: fail(ValueError("boom")))
    with capturedLogs() as events:
        run_checks(h, 1)
    assert h.states[0].status().last_cause == "error: ValueError"
    (failure_event,) = [e for e in events if e.get("log_failure") is not None]
    assert failure_event["log_failure"].check(ValueError)
    assert failure_event["endpoint"] == "10.0.0.1:8080"


def test_body_is_discarded_and_bounded() -> None:
    chunk = b"x" * 16384
    response = FakeResponse(200, body=[chunk] * 100, end=None)
    h = CheckerHarness(lambda sent: succeed(response))
    run_checks(h, 1)
    assert response.transport.aborted
    assert response.protocol.received == BODY_LIMIT + len(chunk)
    assert h.states[0].status().consecutive_passes == 1


def test_body_cut_off_is_a_failure() -> None:
    response = FakeResponse(200, body=[b"ok"], end=Failure(ResponseFailed([])))
    h = CheckerHarness(lambda sent: succeed(response))
    run_checks(h, 1)
    assert h.states[0].status().last_cause == "connection lost"


class Healthz(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bytes | None, bytes | None]] = []
        self.code = 200
        self.hang = False

    def render_GET(self, request: Request) -> bytes | int:
        self.seen.append((request.getHeader(b"host"), request.getHeader(b"user-agent")))
        if self.hang:
            return NOT_DONE_YET
        request.setResponseCode(self.code)
        return b"ok" * 1000


def test_against_a_real_web_resource() -> None:
    """treq's RequestTraversalAgent: a real twisted.web server in memory."""
    resource = Healthz()
    agent = RequestTraversalAgent(resource)
    clock = Clock()
    seen: list[Transition] = []
    config = HealthCheck(fall=1, rise=1)
    state = HealthState("api/10.0.0.1:8080", config, seen.append, clock=clock)
    checker = HealthChecker("api", [(E1, state)], config, clock, agent, random.Random(0))
    checker.startService()
    clock.advance(2.0)
    agent.flush()
    assert resource.seen == [(b"10.0.0.1:8080", b"edgeproxy-health-check")]
    assert state.status().consecutive_passes == 1
    resource.code = 500
    clock.advance(2.2)
    agent.flush()
    assert state.healthy() is False
    assert state.status().last_cause == "status 500"
    resource.hang = True
    clock.advance(2.2)
    agent.flush()
    clock.advance(1.0)
    agent.flush()
    assert state.status().last_cause == "timeout"
    checker.stopService()
    assert clock.getDelayedCalls() == []


def test_agent_raising_is_a_failed_check_and_the_loop_goes_on() -> None:
    def explode(sent: Sent) -> Deferred[IResponse]:
        raise RuntimeError("bad agent")

    h = CheckerHarness(explode)
    with capturedLogs() as events:
        run_checks(h, 2)
    assert h.states[0].status().last_cause == "error: RuntimeError"
    assert len([e for e in events if e.get("log_failure") is not None]) == 2


def test_a_raising_on_transition_does_not_stop_the_loop() -> None:
    clock = Clock()
    agent = FakeAgent(answering(503))

    def on_transition(t: Transition) -> None:
        raise ValueError("observer bug")

    state = HealthState("e", HealthCheck(fall=1), on_transition, clock=clock)
    checker = HealthChecker(
        "api", [(E1, state)], HealthCheck(fall=1), clock, agent, random.Random(0)
    )
    with capturedLogs() as events:
        checker.startService()
        clock.advance(2.0)
        clock.advance(2.2)
    assert len(agent.sent) == 2
    assert state.healthy() is False
    assert [e["log_failure"].type for e in events if e.get("log_failure")] == [ValueError]
    checker.stopService()


@pytest.mark.parametrize(
    ("url", "host", "port"),
    [
        (b"http://10.0.0.1:8080/healthz", "10.0.0.1", 8080),
        (b"http://[::1]:8081/healthz", "::1", 8081),
    ],
)
def test_health_check_connections_are_quiet(url: bytes, host: str, port: int) -> None:
    """Every check's connection factory is made not noisy: no "Starting
    factory"/"Stopping factory" lines per check (docs/operations.md)."""
    reactor = MemoryReactorClock()
    factory = Factory.forProtocol(Protocol)
    assert factory.noisy is True
    endpoint = DirectEndpointFactory(reactor, connect_timeout=3.0).endpointForURI(
        URI.fromBytes(url)
    )
    with capturedLogs() as events:
        endpoint.connect(factory)
        (connection,) = reactor.tcpClients
        assert (connection[0], connection[1], connection[3]) == (host, port, 3.0)
        wrapper = connection[2]
        wrapper.doStart()
        wrapper.doStop()
    assert factory.noisy is False
    assert [e for e in events if "factory" in e.get("log_format", "")] == []
