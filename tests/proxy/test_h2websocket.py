"""
WebSocket over HTTP/2 (RFC 8441 extended CONNECT), in memory: the ``h2``
package as the client (``test_h2channel.Rig``), the upstream accepted by
hand as a socket-like transport.  What the settings offer, what goes
upstream (an HTTP/1.1 handshake with edgeproxy's key), the 200 and the
splice both ways, a wrong accept, a refusing route, a close from either
side, an upstream failure, backpressure both ways, and no cyclic garbage.
"""

from __future__ import annotations

from typing import Any

import pytest
from h2.errors import ErrorCodes
from h2.events import ResponseReceived, StreamEnded, StreamReset
from h2.settings import SettingCodes
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost

from edgeproxy.config import Route
from edgeproxy.core.websocket import accept_for
from edgeproxy.proxy.h2channel import H2Stream
from tests.proxy.test_h2channel import APP, Rig
from tests.proxy.test_no_cycles import SocketLike, garbage_of

ROUTES = [Route("/", APP), Route("/nows/", APP, websocket=False)]
IDLE = 30.0


def rig(**kwargs: Any) -> Rig:
    return Rig(routes=ROUTES, tunnel_idle_timeout=IDLE, **kwargs)


def connect(r: Rig, path: str = "/chat", protocol: str = "websocket", **more: str) -> int:
    stream_id = r.client.get_next_available_stream_id()
    r.client.send_headers(
        stream_id,
        [(":method", "CONNECT"), (":protocol", protocol), (":scheme", "https"),
         (":authority", "app.example"), (":path", path), *more.items()],
    )
    r.exchange()
    return stream_id


class Upstream:
    """The backend's end of the upstream connection."""

    def __init__(self, r: Rig, index: int = -1) -> None:
        host, port, factory, _, _ = r.reactor.tcpClients[index]
        self.protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        self.transport = SocketLike(r.reactor, self.protocol)
        self.protocol.makeConnection(self.transport)
        self.rig = r

    def request(self) -> dict[bytes, bytes]:
        head = self.transport.value().split(b"\r\n\r\n")[0].split(b"\r\n")
        fields = dict(line.split(b": ", 1) for line in head[1:])
        return {b"": head[0], **{k.lower(): v for k, v in fields.items()}}

    def switch(self, accept: bytes | None = None, extra: bytes = b"", rest: bytes = b"") -> None:
        key = self.request()[b"sec-websocket-key"]
        self.transport.clear()
        self.protocol.dataReceived(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n%s\r\n"
            % (accept or accept_for(key), extra) + rest
        )
        self.rig.exchange()


def opened(r: Rig, **more: str) -> tuple[int, Upstream]:
    stream_id = connect(r, **more)
    up = Upstream(r)
    up.switch(extra=b"Sec-WebSocket-Protocol: chat\r\n")
    return stream_id, up


def reset_code(r: Rig, stream_id: int) -> int | None:
    return next(
        (e.error_code for e in r.events if isinstance(e, StreamReset) and e.stream_id == stream_id),
        None,
    )


def in_flight(r: Rig) -> int:
    runtime = r.factory.pipeline.plan.snapshot.clusters["app"]
    count: int = runtime.counters.in_flight
    return count


def test_the_settings_offer_extended_connect() -> None:
    r = rig()
    assert r.client.remote_settings[SettingCodes.ENABLE_CONNECT_PROTOCOL] == 1


def test_it_goes_upstream_as_an_http11_handshake_with_a_key_of_edgeproxys() -> None:
    r = rig()
    connect(r, **{"sec-websocket-version": "13", "sec-websocket-protocol": "chat, superchat",
                  "sec-websocket-extensions": "permessage-deflate", "sec-websocket-key": "bad"})
    sent = Upstream(r).request()
    assert sent[b""] == b"GET /chat HTTP/1.1"
    assert sent[b"connection"] == b"Upgrade"
    assert sent[b"upgrade"] == b"websocket"
    assert sent[b"sec-websocket-version"] == b"13"
    assert sent[b"sec-websocket-protocol"] == b"chat, superchat"
    assert sent[b"sec-websocket-extensions"] == b"permessage-deflate"
    key = sent[b"sec-websocket-key"]
    assert key != b"bad" and len(key) == 24
    # A second one gets a key of its own.
    connect(r)
    assert Upstream(r).request()[b"sec-websocket-key"] != key


def test_a_version_is_sent_when_the_client_gave_none() -> None:
    r = rig()
    connect(r)
    assert Upstream(r).request()[b"sec-websocket-version"] == b"13"


def test_a_101_with_the_right_accept_opens_the_stream_and_bytes_pass_both_ways() -> None:
    r = rig()
    stream_id = connect(r)
    up = Upstream(r)
    r.client.send_data(stream_id, b"early")  # before the 200: held for the tunnel
    r.exchange()
    assert up.transport.value().endswith(b"\r\n\r\n")
    up.switch(extra=b"Sec-WebSocket-Protocol: chat\r\n", rest=b"\x81\x02hi")
    response = next(e for e in r.events if isinstance(e, ResponseReceived))
    headers = dict(response.headers)
    assert headers[b":status"] == b"200"
    assert headers[b"sec-websocket-protocol"] == b"chat"
    assert b"sec-websocket-accept" not in headers and b"upgrade" not in headers
    assert response.stream_ended is None
    assert up.transport.value() == b"early"
    assert r.body_of(stream_id) == b"\x81\x02hi"
    r.client.send_data(stream_id, b"\x81\x85more!")
    r.exchange()
    assert up.transport.value() == b"early\x81\x85more!"
    up.protocol.dataReceived(b"\x81\x03abc")
    r.exchange()
    assert r.body_of(stream_id) == b"\x81\x02hi\x81\x03abc"
    assert in_flight(r) == 1  # the lease is held while the tunnel is open


@pytest.mark.parametrize("accept", [b"d3Jvbmc=", None])
def test_a_wrong_or_missing_accept_is_a_bad_gateway(accept: bytes | None) -> None:
    r = rig()
    stream_id = connect(r)
    up = Upstream(r)
    key = up.request()[b"sec-websocket-key"]
    up.transport.clear()
    line = b"" if accept is None else b"Sec-WebSocket-Accept: %s\r\n" % accept
    assert accept != accept_for(key)
    up.protocol.dataReceived(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        + line + b"\r\n"
    )
    r.reactor.advance(0)
    r.exchange()
    assert r.status_of(stream_id) == b"502"
    assert r.ended(stream_id)
    assert up.transport.disconnecting
    assert in_flight(r) == 0


def test_a_2xx_to_the_handshake_is_a_bad_gateway_and_another_answer_is_relayed() -> None:
    r = rig()
    first = connect(r)
    up = Upstream(r)
    up.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    r.exchange()
    assert r.status_of(first) == b"502"
    second = connect(r)
    assert len(r.reactor.tcpClients) == 1  # the first connection was kept (its body read)
    up.transport.clear()
    up.protocol.dataReceived(b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope")
    r.exchange()
    assert r.status_of(second) == b"404"
    assert r.body_of(second) == b"nope"


def test_a_route_with_websocket_false_answers_403() -> None:
    r = rig()
    stream_id = connect(r, path="/nows/chat")
    assert r.status_of(stream_id) == b"403"
    assert not r.reactor.tcpClients


def test_another_protocol_gets_501() -> None:
    r = rig()
    stream_id = connect(r, protocol="connect-udp")
    assert r.status_of(stream_id) == b"501"
    assert not r.reactor.tcpClients
    assert r.terminated() is None


def test_the_client_ending_its_stream_closes_the_upstream_after_flushing() -> None:
    r = rig()
    stream_id, up = opened(r)
    r.client.send_data(stream_id, b"bye", end_stream=True)
    r.exchange()
    assert up.transport.value() == b"bye"
    assert up.transport.disconnecting
    assert r.ended(stream_id)  # edgeproxy's side is closed too
    r.reactor.advance(0)  # the socket goes
    r.exchange()
    assert r.channel._streams == {}
    assert in_flight(r) == 0


def test_a_reset_by_the_client_closes_the_upstream() -> None:
    r = rig()
    stream_id, up = opened(r)
    r.client.reset_stream(stream_id, ErrorCodes.CANCEL)
    r.exchange()
    assert up.transport.disconnecting
    r.reactor.advance(0)
    assert in_flight(r) == 0


def test_the_upstream_closing_ends_the_stream() -> None:
    r = rig()
    stream_id, up = opened(r)
    up.protocol.dataReceived(b"\x88\x00")
    up.transport.lost(ConnectionDone())
    r.exchange()
    assert r.body_of(stream_id).endswith(b"\x88\x00")
    assert r.ended(stream_id)
    assert reset_code(r, stream_id) in (None, ErrorCodes.NO_ERROR)
    assert r.channel._streams == {}
    assert in_flight(r) == 0


def test_the_upstream_failing_resets_the_stream() -> None:
    r = rig()
    stream_id, up = opened(r)
    up.transport.lost(ConnectionLost())
    r.exchange()
    assert reset_code(r, stream_id) == ErrorCodes.CONNECT_ERROR
    assert in_flight(r) == 0


def test_an_idle_tunnel_is_closed() -> None:
    r = rig()
    stream_id, up = opened(r)
    r.reactor.advance(IDLE + 1)
    r.exchange()
    assert r.ended(stream_id)
    assert up.transport.disconnecting


def test_an_upstream_that_cannot_take_more_withholds_the_streams_window() -> None:
    r = rig()
    stream_id, up = opened(r)
    stream = r.channel._streams[stream_id]
    assert isinstance(stream, H2Stream)
    up.transport.producer.pauseProducing()  # the upstream socket's buffer is full
    window = r.client.local_flow_control_window(stream_id)
    r.client.send_data(stream_id, b"x" * 1000)
    r.exchange()
    assert up.transport.value().endswith(b"x" * 1000)  # passed on, not acknowledged
    assert r.client.local_flow_control_window(stream_id) == window - 1000
    up.transport.producer.resumeProducing()
    r.exchange()
    assert r.client.local_flow_control_window(stream_id) == window


def test_a_client_window_at_zero_pauses_the_upstream() -> None:
    r = rig(client_window=100)
    stream_id, up = opened(r)
    assert up.transport.producerState == "producing"
    up.protocol.dataReceived(b"y" * 200_000)  # past the stream's buffer
    r.exchange()
    assert len(r.body_of(stream_id)) == 100
    assert up.transport.producerState == "paused"
    r.client.acknowledge_received_data(100, stream_id)
    r.client.increment_flow_control_window(300_000, stream_id)
    r.client.increment_flow_control_window(300_000)
    r.exchange()
    r.exchange()
    assert len(r.body_of(stream_id)) == 200_000
    assert up.transport.producerState == "producing"


def _scenario(kind: str) -> list[str]:
    r = rig()

    def step() -> None:
        stream_id, up = opened(r)
        r.client.send_data(stream_id, b"\x81\x80ping")
        up.protocol.dataReceived(b"\x81\x04pong")
        r.exchange()
        if kind == "client_end":
            r.client.end_stream(stream_id)
        elif kind == "client_reset":
            r.client.reset_stream(stream_id, ErrorCodes.CANCEL)
        elif kind == "upstream_close":
            up.transport.lost(ConnectionDone())
        else:
            up.transport.lost(ConnectionLost())
        r.exchange()
        r.reactor.advance(0)
        r.exchange()
        assert stream_id not in r.channel._streams
        assert kind == "client_reset" or any(
            isinstance(e, (StreamEnded, StreamReset)) and e.stream_id == stream_id
            for e in r.events
        )

    garbage = garbage_of(step, warm=3, runs=10)
    assert r.channel._streams == {}
    assert in_flight(r) == 0
    assert not r.reactor.getDelayedCalls() or all(
        c.getTime() > r.reactor.seconds() + 10 for c in r.reactor.getDelayedCalls()
    )
    return garbage


@pytest.mark.parametrize("kind", ["client_end", "client_reset", "upstream_close", "upstream_error"])
def test_a_tunnel_leaves_no_cyclic_garbage(kind: str) -> None:
    assert _scenario(kind) == []
