"""The GCRA of edgeproxy.core.ratelimit: values in, values out, no clock."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from edgeproxy.core.ratelimit import ALLOWED, Decision, decide, retry_after_seconds


def run(times: list[float], rate: float, burst: int) -> list[Decision]:
    tat = None
    decisions = []
    for now in times:
        decision, tat = decide(tat, now, rate, burst)
        decisions.append(decision)
    return decisions


def test_a_burst_at_once_then_one_per_interval() -> None:
    decisions = run([0.0] * 6, rate=2.0, burst=5)
    assert decisions[:5] == [ALLOWED] * 5
    assert decisions[5] == Decision(False, 0.5)
    # Half a second later one more fits, and only one.
    assert run([0.0] * 5 + [0.5, 0.5], rate=2.0, burst=5)[5:] == [ALLOWED, Decision(False, 0.5)]


def test_a_refusal_changes_nothing() -> None:
    tat: float | None = None
    for _ in range(3):
        _, tat = decide(tat, 10.0, 1.0, 3)
    decision, after = decide(tat, 10.0, 1.0, 3)
    assert not decision.allowed and after == tat


def test_an_idle_bucket_is_full_again_and_no_state_is_the_same() -> None:
    _, tat = decide(None, 0.0, 1.0, 2)
    assert tat is not None
    # Once the TAT has passed, the state is worth nothing more than none.
    assert decide(tat, tat, 1.0, 2) == decide(None, tat, 1.0, 2)


def test_slow_rates_keep_the_burst() -> None:
    # rate=0.01 (one every 100 s) with a burst of 5: five now, the sixth in 100 s.
    decisions = run([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], rate=0.01, burst=5)
    assert decisions[:5] == [ALLOWED] * 5
    assert not decisions[5].allowed
    assert math.isclose(decisions[5].retry_after, 95.0)


@given(
    rate=st.floats(min_value=0.1, max_value=100.0),
    burst=st.integers(min_value=1, max_value=20),
    gaps=st.lists(st.floats(min_value=0.0, max_value=2.0), min_size=1, max_size=150),
)
def test_never_more_than_burst_plus_rate_times_t_in_any_window(
    rate: float, burst: int, gaps: list[float]
) -> None:
    times = []
    now = 1000.0
    for gap in gaps:
        now += gap
        times.append(now)
    allowed = [t for t, d in zip(times, run(times, rate, burst), strict=True) if d.allowed]
    for i, start in enumerate(allowed):
        for j in range(i, len(allowed)):
            window = allowed[j] - start
            # Requests i..j were allowed within `window` seconds (both ends in).
            assert j - i + 1 <= burst + rate * window + 1e-6


@given(
    rate=st.floats(min_value=0.01, max_value=100.0),
    burst=st.integers(min_value=1, max_value=10),
    count=st.integers(min_value=1, max_value=30),
)
def test_retry_after_is_when_a_request_is_allowed_again(
    rate: float, burst: int, count: int
) -> None:
    tat = None
    decision = ALLOWED
    for _ in range(burst + count):
        decision, tat = decide(tat, 50.0, rate, burst)
    assert not decision.allowed
    wait = decision.retry_after
    assert 0 < wait <= count / rate + 1e-9
    assert decide(tat, 50.0 + wait * (1 - 1e-9) - 1e-9, rate, burst)[0].allowed is False
    assert decide(tat, 50.0 + wait, rate, burst)[0].allowed


def test_retry_after_header_is_whole_seconds_rounded_up_at_least_one() -> None:
    assert [retry_after_seconds(s) for s in (0.0, 0.001, 1.0, 1.2, 99.01)] == [1, 1, 1, 2, 100]
    assert retry_after_seconds(math.inf) == 1
