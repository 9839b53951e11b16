"""
The upstream connection's states (``edgeproxy.upstream.h1client._State``):
every move a connection makes, through the scenarios below, is one its
transition table allows, and every move the table names is made.  The
moves are recorded by a descriptor put in place of ``_Connection._state``
for these tests only, so the hot path pays nothing for the check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet.error import ConnectionLost
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from edgeproxy.core.errors import UpstreamResponseFailed
from edgeproxy.upstream import h1client
from edgeproxy.upstream.h1client import _TRANSITIONS, _State
from tests.upstream.test_h1client import (
    OK,
    Rig,
    Upstream,
    failure,
    fetch,
    no_result,
    pooled,
    started,
)
from tests.upstream.test_h1client_upgrade import SWITCHED, begin

Move = tuple[_State, _State]


class _Recorder:
    """Stands in for the ``_state`` attribute: keeps it, and every change."""

    def __init__(self) -> None:
        self.moves: list[Move] = []

    def __get__(self, conn: object, owner: type | None = None) -> _State:
        state: _State = vars(conn)["_recorded_state"]
        return state

    def __set__(self, conn: object, state: _State) -> None:
        old = vars(conn).get("_recorded_state")
        if old is not None:
            self.moves.append((old, state))
        vars(conn)["_recorded_state"] = state


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Recorder]:
    recorder = _Recorder()
    monkeypatch.setattr(h1client._Connection, "_state", recorder, raising=False)
    yield recorder


ALLOWED = {(state, next_state) for (state, _event), next_state in _TRANSITIONS.items()}
NAMED = {
    (state, next_state) for (state, event), next_state in _TRANSITIONS.items() if event != "lost"
}
S = _State


# -- the scenarios, each with the moves it makes --------------------------------------


def fresh_then_pooled(rig: Rig) -> None:
    up = pooled(rig)
    d = rig.request()
    _, body = fetch(rig, up, d, OK)
    assert body.reason is not None and body.reason.check(ResponseDone)
    assert rig.idle() == 1


def prefix_across_reads(rig: Rig) -> None:
    d, up = rig.begin()
    for byte in OK[:9]:
        up.respond(bytes([byte]))
    no_result(d)
    _, body = fetch(rig, up, d, OK[9:])
    assert body.body == b"hi"


def interim_then_final(rig: Rig) -> None:
    d, up = rig.begin()
    up.respond(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
    no_result(d)
    assert result_code(rig, up, d, OK) == 200


def head_answer(rig: Rig) -> None:
    d, up = rig.begin(b"HEAD")
    assert result_code(rig, up, d, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n") == 200
    assert rig.idle() == 1


def no_content(rig: Rig) -> None:
    d, up = rig.begin()
    assert result_code(rig, up, d, b"HTTP/1.1 204 No Content\r\n\r\n") == 204
    assert rig.idle() == 1


def chunked_body(rig: Rig) -> None:
    d, up = rig.begin()
    _, body = fetch(rig, up, d, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    up.respond(b"2\r\nhi\r\n0\r\n\r\n")
    assert body.body == b"hi" and rig.idle() == 1


def body_until_close(rig: Rig) -> None:
    d, up = rig.begin()
    _, body = fetch(rig, up, d, b"HTTP/1.1 200 OK\r\n\r\nsome")
    up.lose()
    assert body.reason is not None and body.reason.check(PotentialDataLoss)


def lost_mid_head(rig: Rig) -> None:
    d, up = rig.begin()
    up.respond(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n")
    up.lose()
    assert failure(d).check(UpstreamResponseFailed)


def lost_after_an_interim_response(rig: Rig) -> None:
    # (llhttp reads no body for a 1xx, whatever its Content-Length says.)
    d, up = rig.begin()
    up.respond(b"HTTP/1.1 103 Early Hints\r\nContent-Length: 5\r\n\r\n")
    up.lose()
    assert failure(d).check(UpstreamResponseFailed)


def idle_lost(rig: Rig) -> None:
    up = pooled(rig)
    up.lose()
    assert rig.idle() == 0


def stale_pooled_retried(rig: Rig) -> None:
    stale = pooled(rig)
    d = rig.request()
    stale.lose(ConnectionLost())
    assert result_code(rig, rig.accept(), d, OK) == 200


def switched(rig: Rig) -> None:
    taker, up = begin(rig)
    up.respond(SWITCHED)
    assert len(taker.upgraded) == 1
    up.lose()


def result_code(rig: Rig, up: Upstream, d: Any, data: bytes) -> int:
    response, _ = fetch(rig, up, d, data)
    code: int = response.code
    return code


#: One request and response with a body, on a connection that goes back to the pool.
EXCHANGE: list[Move] = [
    (S.IDLE, S.SENT),
    (S.SENT, S.HEAD),
    (S.HEAD, S.BODY),
    (S.BODY, S.DONE),
    (S.DONE, S.IDLE),
]

SCENARIOS: dict[str, tuple[Callable[[Rig], None], list[Move]]] = {
    "fresh then pooled": (fresh_then_pooled, EXCHANGE * 2),
    "prefix across reads": (prefix_across_reads, EXCHANGE),
    "interim then final": (
        interim_then_final,
        [(S.IDLE, S.SENT), (S.SENT, S.HEAD)]
        + [(S.HEAD, S.INTERIM), (S.INTERIM, S.HEAD)] * 2
        + [(S.HEAD, S.BODY), (S.BODY, S.DONE), (S.DONE, S.IDLE)],
    ),
    "HEAD answer": (
        head_answer,
        [(S.IDLE, S.SENT), (S.SENT, S.HEAD), (S.HEAD, S.DONE), (S.DONE, S.IDLE)],
    ),
    "204": (
        no_content,
        [
            (S.IDLE, S.SENT),
            (S.SENT, S.HEAD),
            (S.HEAD, S.DONE),
            (S.DONE, S.DONE),
            (S.DONE, S.IDLE),
        ],
    ),
    "chunked body": (chunked_body, EXCHANGE),
    "switched by a 101": (
        switched,
        [
            (S.IDLE, S.SENT),
            (S.SENT, S.HEAD),
            (S.HEAD, S.DONE),
            (S.DONE, S.UPGRADED),
            (S.UPGRADED, S.CLOSED),
        ],
    ),
    "body until close": (
        body_until_close,
        [(S.IDLE, S.SENT), (S.SENT, S.HEAD), (S.HEAD, S.BODY), (S.BODY, S.CLOSED)],
    ),
    "lost mid head": (
        lost_mid_head,
        [(S.IDLE, S.SENT), (S.SENT, S.HEAD), (S.HEAD, S.CLOSED)],
    ),
    "lost after an interim response": (
        lost_after_an_interim_response,
        [
            (S.IDLE, S.SENT),
            (S.SENT, S.HEAD),
            (S.HEAD, S.INTERIM),
            (S.INTERIM, S.HEAD),
            (S.HEAD, S.CLOSED),
        ],
    ),
    "idle lost": (
        idle_lost,
        [*EXCHANGE, (S.IDLE, S.CLOSED)],
    ),
    "stale pooled retried": (
        stale_pooled_retried,
        [*EXCHANGE, (S.IDLE, S.SENT), (S.SENT, S.CLOSED), *EXCHANGE],
    ),
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_a_connection_moves_only_as_the_table_says(name: str, recorder: _Recorder) -> None:
    scenario, expected = SCENARIOS[name]
    scenario(Rig())
    assert recorder.moves == expected
    assert set(recorder.moves) <= ALLOWED


def test_every_named_move_is_made_by_some_scenario() -> None:
    made = {move for _, moves in SCENARIOS.values() for move in moves}
    assert NAMED <= made
    assert made <= ALLOWED


def test_every_state_can_be_lost() -> None:
    assert {state for state, next_state in ALLOWED if next_state is S.CLOSED} == set(_State)


# -- what the states decide ----------------------------------------------------------


def test_a_response_that_is_not_http_1_fails_even_split_across_reads() -> None:
    rig, d, up = started()
    up.respond(b"HTTP/")
    assert not up.closed
    up.respond(b"2 200 OK\r\n\r\n")
    assert failure(d).check(UpstreamResponseFailed)
    assert up.closed


def test_trailers_are_not_relayed() -> None:
    rig, d, up = started()
    response, body = fetch(
        rig, up, d, b"HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    up.respond(b"2\r\nhi\r\n0\r\nX-Trailer: t\r\n\r\n")
    assert response.header_pairs == [(b"X-A", b"1")]
    assert body.body == b"hi" and rig.idle() == 1


def test_a_second_response_after_a_complete_one_closes_the_connection() -> None:
    rig, d, up = started()
    _, body = fetch(rig, up, d, OK + b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\n")
    assert body.body == b"hi"
    assert up.closed and rig.idle() == 0
