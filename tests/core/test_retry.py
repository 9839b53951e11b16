"""
The retry decision (``edgeproxy.core.retry.decide_retry``): a pure function of
the retry rules, the attempts made, the method and what the last attempt came
to, which asks whether an endpoint is left and whether the budget allows only
when its answer depends on them.
"""

from __future__ import annotations

import itertools

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeproxy.config import RetryPolicy
from edgeproxy.core.errors import (
    EdgeProxyError,
    UpstreamConnectFailed,
    UpstreamConnectTimeout,
    UpstreamResponseFailed,
    UpstreamTimeout,
)
from edgeproxy.core.retry import IDEMPOTENT_METHODS, Retry, decide_retry

RULES = RetryPolicy(3, retry_statuses=[502, 503])


@attrs.define
class State:
    """The request's standing, as the decision asks it; records the questions."""

    candidate: bool = True
    budget: bool = True
    asked: list[str] = attrs.field(factory=list)

    def has_candidate(self) -> bool:
        self.asked.append("candidate")
        return self.candidate

    def retry_budget_allows(self) -> bool:
        self.asked.append("budget")
        return self.budget


def decide(
    *,
    attempts: int = 1,
    method: bytes = b"GET",
    status: int | None = None,
    error: EdgeProxyError | None = None,
    state: State | None = None,
    rules: RetryPolicy = RULES,
) -> Retry:
    return decide_retry(rules, attempts, method, status, error, state or State())


def row(
    name: str,
    expected: Retry,
    asked: list[str],
    *,
    candidate: bool = True,
    budget: bool = True,
    **inputs: object,
) -> object:
    return pytest.param(inputs, candidate, budget, expected, asked, id=name)


BOTH = ["candidate", "budget"]
CANDIDATE = ["candidate"]

# Each row: one rule, everything else set so that it alone decides.
RULE_ROWS = [
    # -- an answer with a status
    row("2xx kept", Retry.NO, [], status=200),
    row("status outside retry_statuses", Retry.NO, [], status=500),
    row("retry status, GET", Retry.WITHIN_BUDGET, BOTH, status=503),
    row("retry status, POST", Retry.NO, [], status=503, method=b"POST"),
    row("retry status, PUT (idempotent)", Retry.WITHIN_BUDGET, BOTH, status=502, method=b"PUT"),
    row("methods are case-sensitive", Retry.NO, [], status=503, method=b"get"),
    row("retry status, nowhere to go", Retry.NOWHERE, CANDIDATE, status=503, candidate=False),
    row("retry status, budget spent", Retry.REFUSED, BOTH, status=503, budget=False),
    row("retry status, attempts spent", Retry.NO, [], status=503, attempts=3),
    row("attempts more than spent", Retry.NO, [], status=503, attempts=4),
    row("the last attempt but one", Retry.WITHIN_BUDGET, BOTH, status=503, attempts=2),
    # -- a request that never left edgeproxy
    row("connect failed, GET", Retry.OUTSIDE_BUDGET, CANDIDATE, error=UpstreamConnectFailed(),
        budget=False),
    row("connect failed, POST", Retry.OUTSIDE_BUDGET, CANDIDATE, error=UpstreamConnectFailed(),
        method=b"POST", budget=False),
    row("connect timeout, PATCH", Retry.OUTSIDE_BUDGET, CANDIDATE,
        error=UpstreamConnectTimeout(), method=b"PATCH"),
    row("connect failed, nowhere to go", Retry.NOWHERE, CANDIDATE,
        error=UpstreamConnectFailed(), candidate=False),
    row("connect failed, attempts spent", Retry.NO, [], error=UpstreamConnectFailed(),
        attempts=3),
    # -- a request that was sent
    row("response failed, GET", Retry.WITHIN_BUDGET, BOTH, error=UpstreamResponseFailed()),
    row("response timeout, budget spent", Retry.REFUSED, BOTH, error=UpstreamTimeout(),
        budget=False),
    row("response failed, POST", Retry.NO, [], error=UpstreamResponseFailed(), method=b"POST"),
    row("response failed, nowhere to go", Retry.NOWHERE, CANDIDATE,
        error=UpstreamResponseFailed(), candidate=False),
    row("response failed, attempts spent", Retry.NO, [], error=UpstreamResponseFailed(),
        attempts=3),
]


@pytest.mark.parametrize(("inputs", "candidate", "budget", "expected", "asked"), RULE_ROWS)
def test_each_rule(
    inputs: dict[str, object],
    candidate: bool,
    budget: bool,
    expected: Retry,
    asked: list[str],
) -> None:
    state = State(candidate, budget)
    assert decide(state=state, **inputs) is expected  # type: ignore[arg-type]
    assert state.asked == asked


def test_one_attempt_allowed_means_never_a_retry() -> None:
    rules = RetryPolicy(1)
    for status, error in [(503, None), (None, UpstreamConnectFailed())]:
        state = State()
        assert decide(rules=rules, status=status, error=error, state=state) is Retry.NO
        assert state.asked == []


# -- every combination, against the rules as RetryPolicy's docstring states them

METHODS = [b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE", b"POST", b"PATCH", b"get"]
OUTCOMES: list[tuple[int | None, EdgeProxyError | None]] = [
    (200, None),
    (404, None),
    (500, None),
    (502, None),
    (503, None),
    (504, None),
    (None, UpstreamConnectFailed()),
    (None, UpstreamConnectTimeout()),
    (None, UpstreamResponseFailed()),
    (None, UpstreamTimeout()),
]


def expected(
    rules: RetryPolicy,
    attempts: int,
    method: bytes,
    status: int | None,
    error: EdgeProxyError | None,
    candidate: bool,
    budget: bool,
) -> Retry:
    """The rules, as RetryPolicy's docstring states them."""
    never_sent = error is not None and error.never_sent
    idempotent = method in {b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"}
    wanted = attempts < rules.attempts and (
        never_sent
        or (error is not None and idempotent)
        or (error is None and status in rules.retry_statuses and idempotent)
    )
    if not wanted:
        return Retry.NO
    if not candidate:
        return Retry.NOWHERE
    if never_sent:
        return Retry.OUTSIDE_BUDGET
    return Retry.WITHIN_BUDGET if budget else Retry.REFUSED


def test_every_combination() -> None:
    rules = RetryPolicy(2, retry_statuses=[502, 503, 504])
    cases = itertools.product(range(4), METHODS, OUTCOMES, [True, False], [True, False])
    for attempts, method, (status, error), candidate, budget in cases:
        state = State(candidate, budget)
        got = decide_retry(rules, attempts, method, status, error, state)
        want = expected(rules, attempts, method, status, error, candidate, budget)
        assert got is want, (attempts, method, status, error, candidate, budget)
        # Asked only what the answer turned on, the candidate first.
        wanted = want is not Retry.NO
        needs_budget = want in (Retry.WITHIN_BUDGET, Retry.REFUSED)
        assert state.asked == ["candidate"] * wanted + ["budget"] * needs_budget


def test_the_idempotent_methods_are_rfc_9110s() -> None:
    assert frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"}) == (
        IDEMPOTENT_METHODS
    )


@given(
    attempts_allowed=st.integers(1, 6),
    attempts=st.integers(0, 8),
    retry_statuses=st.sets(st.integers(100, 599), max_size=8),
    method=st.sampled_from(METHODS),
    status=st.integers(100, 599),
    candidate=st.booleans(),
    budget=st.booleans(),
)
def test_answers_against_the_rules(
    attempts_allowed: int,
    attempts: int,
    retry_statuses: set[int],
    method: bytes,
    status: int,
    candidate: bool,
    budget: bool,
) -> None:
    rules = RetryPolicy(attempts_allowed, retry_statuses=retry_statuses)
    state = State(candidate, budget)
    got = decide_retry(rules, attempts, method, status, None, state)
    assert got is expected(rules, attempts, method, status, None, candidate, budget)
    # An answer is never retried outside the budget: it reached the endpoint.
    assert got is not Retry.OUTSIDE_BUDGET


@given(
    attempts_allowed=st.integers(1, 6),
    attempts=st.integers(0, 8),
    method=st.sampled_from(METHODS),
    error=st.sampled_from([e for _, e in OUTCOMES if e is not None]),
    candidate=st.booleans(),
    budget=st.booleans(),
)
def test_errors_against_the_rules(
    attempts_allowed: int,
    attempts: int,
    method: bytes,
    error: EdgeProxyError,
    candidate: bool,
    budget: bool,
) -> None:
    rules = RetryPolicy(attempts_allowed)
    state = State(candidate, budget)
    got = decide_retry(rules, attempts, method, None, error, state)
    assert got is expected(rules, attempts, method, None, error, candidate, budget)
    # What was never sent is never held to the budget.
    assert ("budget" in state.asked) is (
        not error.never_sent and got is not Retry.NO and got is not Retry.NOWHERE
    )
