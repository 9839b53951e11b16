"""
The upstream client's side of an upgrade (``send(..., on_upgrade=...)``): a
``101 Switching Protocols`` hands the connection over, out of the pool for
good, with the bytes that followed its head; a 101 that does not name what
it switched to, or to a request that did not ask, is a failed response.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from edgeproxy.core.errors import UpstreamResponseFailed
from edgeproxy.upstream.h1client import UpgradedConnection
from tests.upstream.test_h1client import EP, OK, Rig, Upstream, fetch, pooled

SWITCHED = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: abc\r\n\r\n"
)
UPGRADE_HEADERS = [
    (b"Host", b"shop.example"),
    (b"Connection", b"Upgrade"),
    (b"Upgrade", b"websocket"),
]


class Taker:
    """The callbacks of one upgrade request, and a tunnel side for it."""

    def __init__(self) -> None:
        self.responses: list[Any] = []
        self.errors: list[Failure] = []
        self.upgraded: list[UpgradedConnection] = []
        self.data: list[bytes] = []
        self.lost: list[Failure] = []

    def upstream_data(self, data: bytes) -> None:
        self.data.append(data)

    def upstream_lost(self, reason: Failure) -> None:
        self.lost.append(reason)


def send_upgrade(rig: Rig, taker: Taker) -> Any:
    return rig.client.send(
        EP,
        b"GET",
        b"/chat",
        UPGRADE_HEADERS,
        None,
        None,
        connect_timeout=5.0,
        response_timeout=30.0,
        on_response=taker.responses.append,
        on_error=taker.errors.append,
        on_upgrade=taker.upgraded.append,
    )


def begin(rig: Rig) -> tuple[Taker, Upstream]:
    taker = Taker()
    send_upgrade(rig, taker)
    return taker, rig.accept()


def test_a_101_hands_the_connection_over_with_what_followed_it() -> None:
    rig = Rig()
    taker, up = begin(rig)
    assert b"Connection: Upgrade\r\nUpgrade: websocket\r\n" in up.sent()
    up.respond(SWITCHED + b"\x81\x02hi")
    [upgraded] = taker.upgraded
    assert taker.responses == [] and taker.errors == []
    assert upgraded.upgrade == b"websocket"
    assert upgraded.phrase == b"Switching Protocols"
    assert upgraded.header_fields == [
        (b"sec-websocket-accept", b"Sec-WebSocket-Accept: abc")
    ]
    assert upgraded.rest == b"\x81\x02hi"
    # Not read until a tunnel takes it.
    assert up.transport.producerState == "paused"
    upgraded.attach(taker)
    assert up.transport.producerState == "producing"
    up.respond(b"more")
    assert taker.data == [b"more"]
    assert upgraded.transport is None  # (handed over: the tunnel has it)
    up.lose()
    assert [f.type for f in taker.lost] == [ConnectionDone]
    assert rig.idle() == 0


def test_an_upgraded_connection_nobody_takes_is_closed() -> None:
    rig = Rig()
    taker, up = begin(rig)
    up.respond(SWITCHED)
    taker.upgraded[0].abort()
    assert up.transport.disconnecting
    up.lose()
    assert rig.idle() == 0


def test_a_non_101_answer_to_an_upgrade_request_is_a_response() -> None:
    rig = Rig()
    taker, up = begin(rig)
    up.respond(OK)
    [response] = taker.responses
    assert response.code == 200
    assert taker.upgraded == []


def test_a_101_without_upgrade_is_a_failed_response() -> None:
    rig = Rig()
    taker, up = begin(rig)
    up.respond(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n")
    [error] = taker.errors
    assert error.check(UpstreamResponseFailed)
    assert up.transport.disconnecting


def test_an_upgrade_header_of_an_earlier_response_is_not_taken_for_the_101s() -> None:
    rig = Rig()
    up = pooled(rig)
    # (The pooled response announced an upgrade it offers, as Apache does.)
    d = rig.request()
    fetch(rig, up, d, b"HTTP/1.1 200 OK\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n"
          b"Content-Length: 0\r\n\r\n")
    assert rig.idle() == 1
    taker = Taker()
    send_upgrade(rig, taker)
    up.respond(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n")
    assert taker.upgraded == [] and len(taker.errors) == 1


def test_several_upgrade_lines_are_one_list() -> None:
    rig = Rig()
    taker, up = begin(rig)
    up.respond(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: a\r\nUpgrade: b\r\n"
        b"Connection: Upgrade\r\n\r\n"
    )
    assert taker.upgraded[0].upgrade == b"a, b"
