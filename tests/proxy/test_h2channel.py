"""
HTTP/2 on the downstream connection, in memory: the ``h2`` package as the
client over a StringTransport, the upstreams accepted by hand on a
MemoryReactorClock.  Many streams on one connection, one held at a full
window while the others complete, bodies and trailers, 421 and coalescing,
each defence (rapid reset, CONTINUATION and HPACK bombs, SETTINGS and PING
floods, a zero-window stall), the deadlines, GOAWAY on drain, the streamed
request body's pause and resume, and no cyclic garbage when streams end or
break off.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import attrs
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    InformationalResponseReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.settings import SettingCodes
from hyperframe.frame import ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import MemoryReactorClock

from edgeproxy.config import Cluster, Route, VirtualHost
from edgeproxy.config.settings import Settings
from edgeproxy.core.protocol import H2Limits
from edgeproxy.proxy.h2channel import H2Channel, H2Stream
from tests.memproxy import CLIENT, TCPLikeTransport, accept_upstream, make_config, proxy_factory
from tests.proxy.test_no_cycles import SocketLike, garbage_of

APP = Cluster("app", endpoints=["10.0.0.1:80"])
BLOG = Cluster("blog", endpoints=["10.0.0.2:80"])


class _Context:
    def get_app_data(self) -> object:
        return frozenset({"app.example", "www.app.example"})


class _Handle:
    def get_servername(self) -> bytes:
        return b"app.example"

    def get_context(self) -> _Context:
        return _Context()

    def get_protocol_version_name(self) -> str:
        return "TLSv1.3"


class H2Transport(TCPLikeTransport):
    """The TLS layer as the channel sees it: ALPN chose h2, SNI app.example."""

    negotiatedProtocol = b"h2"

    def getHandle(self) -> _Handle:
        return _Handle()


class Rig:
    def __init__(
        self,
        client_window: int | None = None,
        streamed: bool = False,
        trusted: tuple[str, ...] = (),
        routes: list[Route] | None = None,
        tunnel_idle_timeout: float = 60.0,
        **limits: object,
    ) -> None:
        self.reactor = MemoryReactorClock()
        config = make_config(
            VirtualHost(
                ["app.example", "www.app.example"],
                # A streamed route's backend may hold a body back for longer
                # than the client's body deadline (its own response timeout).
                routes=routes or [
                    Route("/", APP, request_buffering=True)
                    if not streamed
                    else Route("/", attrs.evolve(APP, response_timeout=120.0),
                               request_buffering=False)
                ],
            ),
            VirtualHost(["blog.example"], routes=[Route("/", BLOG)]),
        )
        settings = Settings(
            h2_limits=attrs.evolve(H2Limits(), **limits),  # type: ignore[arg-type]
            trusted_sources=tuple(ipaddress.ip_network(n) for n in trusted),
            tunnel_idle_timeout=tunnel_idle_timeout,
        )
        self.factory, _ = proxy_factory(self.reactor, config, settings=settings)
        self.factory.http2 = H2Channel.take_over
        self.channel = self.factory.buildProtocol(CLIENT)
        self.transport = H2Transport(peerAddress=CLIENT)
        self.channel.makeConnection(self.transport)
        self.channel.handshakeCompleted()
        assert type(self.channel) is H2Channel
        self.client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.client.initiate_connection()
        if client_window is not None:
            self.client.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: client_window})
        self.events: list[Event] = []
        self.exchange()

    def exchange(self) -> list[Event]:
        """Client to server, then server to client; the client's new events."""
        data = self.client.data_to_send()
        if data and not self.transport.disconnecting:
            self.channel.dataReceived(data)
        # The response side's frames are written at the end of the reactor turn.
        self.reactor.advance(0)
        events = self.client.receive_data(self.transport.value())
        self.transport.clear()
        reply = self.client.data_to_send()
        if reply and not self.transport.disconnecting:
            self.channel.dataReceived(reply)
        self.events.extend(events)
        return events

    def get(self, path: str, host: str = "app.example", end: bool = True, **more: str) -> int:
        stream_id = self.client.get_next_available_stream_id()
        headers = [
            (":method", "GET" if end else "POST"),
            (":scheme", "https"),
            (":authority", host),
            (":path", path),
            *more.items(),
        ]
        self.client.send_headers(stream_id, headers, end_stream=end)
        self.exchange()
        return stream_id

    def answer(self, index: int, body: bytes, extra: bytes = b"") -> tuple[object, TCPLikeTransport]:
        protocol, transport, _ = accept_upstream(self.reactor, index)
        protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(body), extra) + body
        )
        return protocol, transport

    def body_of(self, stream_id: int) -> bytes:
        return b"".join(
            e.data for e in self.events if isinstance(e, DataReceived) and e.stream_id == stream_id
        )

    def status_of(self, stream_id: int) -> bytes | None:
        for e in self.events:
            if isinstance(e, ResponseReceived) and e.stream_id == stream_id:
                return dict(e.headers)[b":status"]
        return None

    def ended(self, stream_id: int) -> bool:
        return any(isinstance(e, StreamEnded) and e.stream_id == stream_id for e in self.events)

    def terminated(self) -> ConnectionTerminated | None:
        return next((e for e in self.events if isinstance(e, ConnectionTerminated)), None)


def test_a_get_is_proxied_over_http11_and_answered_on_its_stream() -> None:
    rig = Rig()
    stream = rig.get("/x?y=1", **{"cookie": "a=1", "accept": "*/*"})
    _, upstream = rig.answer(-1, b"hello", b"Connection: keep-alive\r\nX-Up: 1\r\n")
    sent = upstream.value()
    assert sent.startswith(b"GET /x?y=1 HTTP/1.1\r\n")
    assert b"host: app.example\r\n" in sent
    assert b"X-Forwarded-Proto: https\r\n" in sent
    assert b"Via: 2 edgeproxy\r\n" in sent
    rig.exchange()
    response = next(e for e in rig.events if isinstance(e, ResponseReceived))
    headers = dict(response.headers)
    assert headers[b":status"] == b"200"
    assert headers[b"x-up"] == b"1"
    assert headers[b"content-length"] == b"5"
    assert b"connection" not in headers
    assert b"x-request-id" in headers
    assert rig.body_of(stream) == b"hello"
    assert rig.ended(stream)
    assert rig.channel._streams == {}


def test_a_trusted_peer_is_judged_at_the_first_stream_and_its_chain_kept() -> None:
    # --trusted-source as for HTTP/1.1 (tests/proxy/test_trusted_forwarders.py):
    # the peer (192.0.2.9) is judged once, and each stream is forwarded so.
    rig = Rig(trusted=("10.0.0.0/8", "192.0.2.9/32"))
    chain = {"x-forwarded-for": "203.0.113.7, 10.1.1.1", "x-request-id": "from-outside"}
    rig.get("/0", **chain)
    rig.get("/1", **chain)
    for index in range(2):
        _, upstream = rig.answer(index, b"")
        sent = upstream.value()
        assert sent.startswith(b"GET /%d " % index)
        assert b"X-Forwarded-For: 203.0.113.7, 10.1.1.1, 192.0.2.9\r\n" in sent
        assert b"X-Request-Id: from-outside\r\n" in sent
    assert rig.channel.peer_trusted and not rig.channel.replaces_forwarding


def test_an_untrusted_peers_chain_is_replaced() -> None:
    rig = Rig(trusted=("10.0.0.0/8",))
    rig.get("/", **{"x-forwarded-for": "203.0.113.7", "x-request-id": "from-outside"})
    _, upstream = rig.answer(-1, b"")
    sent = upstream.value()
    assert b"X-Forwarded-For: 192.0.2.9\r\n" in sent
    assert b"203.0.113.7" not in sent
    assert b"from-outside" not in sent
    assert not rig.channel.peer_trusted and rig.channel.replaces_forwarding


def test_the_request_id_never_enters_the_hpack_table() -> None:
    """A value new on every response: indexed, it would evict what repeats."""
    rig = Rig()
    streams = [rig.get(f"/{i}") for i in range(3)]
    for i in range(3):
        rig.answer(i, b"ok", b"Content-Type: text/plain\r\n")
    rig.exchange()
    assert all(rig.ended(stream) for stream in streams)
    names = [name for name, _ in rig.client.decoder.header_table.dynamic_entries]
    assert b"content-type" in names
    assert b"x-request-id" not in names


def test_cookie_fields_are_joined() -> None:
    rig = Rig()
    stream_id = rig.client.get_next_available_stream_id()
    rig.client.send_headers(
        stream_id,
        [(":method", "GET"), (":scheme", "https"), (":authority", "app.example"),
         (":path", "/"), ("cookie", "a=1"), ("cookie", "b=2")],
        end_stream=True,
    )
    rig.exchange()
    _, upstream = rig.answer(-1, b"")
    assert b"cookie: a=1; b=2\r\n" in upstream.value()


def test_many_streams_on_one_connection_answered_in_any_order() -> None:
    rig = Rig()
    streams = [rig.get(f"/n/{i}") for i in range(30)]
    assert len(rig.reactor.tcpClients) == 30
    for index in reversed(range(30)):
        rig.answer(index, b"answer %d" % index)
    rig.exchange()
    for index, stream in enumerate(streams):
        assert rig.status_of(stream) == b"200"
        assert rig.body_of(stream) == b"answer %d" % index
        assert rig.ended(stream)


def test_a_stream_held_at_a_full_window_does_not_stall_the_others() -> None:
    rig = Rig(client_window=1000)
    big = rig.get("/big")
    protocol, upstream, _ = accept_upstream(rig.reactor, -1)
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n" + b"b" * 150_000)
    rig.exchange()
    assert len(rig.body_of(big)) == 1000  # its window, no more
    # Past the per-stream buffer, the upstream socket is paused.
    assert upstream.producerState == "paused"
    small = [rig.get(f"/small/{i}") for i in range(5)]
    for i in range(5):
        rig.answer(-1 - i, b"s" * 500)
    rig.exchange()
    for stream in small:
        assert rig.body_of(stream) == b"s" * 500 and rig.ended(stream)
    assert not rig.ended(big)
    # The client opens the big stream's window: the rest flows, reading resumes.
    rig.client.increment_flow_control_window(400_000, stream_id=big)
    rig.client.increment_flow_control_window(400_000)
    rig.exchange()
    assert upstream.producerState == "producing"
    protocol.dataReceived(b"b" * 150_000)
    rig.exchange()
    assert len(rig.body_of(big)) == 300_000
    assert rig.ended(big)


def test_a_body_and_trailers_go_upstream_with_its_length() -> None:
    rig = Rig()
    stream = rig.client.get_next_available_stream_id()
    rig.client.send_headers(
        stream,
        [(":method", "POST"), (":scheme", "https"), (":authority", "app.example"),
         (":path", "/up")],
    )
    rig.client.send_data(stream, b"a" * 16_000)
    rig.client.send_data(stream, b"b" * 16_000)
    rig.client.send_data(stream, b"c" * 8_000)
    rig.client.send_headers(stream, [("x-checksum", "1")], end_stream=True)
    events = rig.exchange()
    # The body was taken: the client's window is given back.
    assert any(isinstance(e, WindowUpdated) for e in events)
    _, upstream = rig.answer(-1, b"ok")
    sent = upstream.value()
    assert b"Content-Length: 40000\r\n" in sent
    assert b"x-checksum" not in sent  # trailers are not passed on
    assert sent.endswith(b"a" * 16_000 + b"b" * 16_000 + b"c" * 8_000)
    rig.exchange()
    assert rig.body_of(stream) == b"ok"


def test_a_body_over_its_limit_is_refused_early_and_the_stream_reset() -> None:
    rig = Rig()
    stream = rig.client.get_next_available_stream_id()
    rig.client.send_headers(
        stream,
        [(":method", "POST"), (":scheme", "https"), (":authority", "app.example"),
         (":path", "/up"), ("content-length", str(100 * 2**20))],
    )
    rig.exchange()
    assert rig.status_of(stream) == b"413"
    assert any(
        isinstance(e, StreamReset) and e.error_code == ErrorCodes.NO_ERROR for e in rig.events
    )
    assert rig.reactor.tcpClients == []
    # The connection goes on.
    other = rig.get("/after")
    rig.answer(-1, b"fine")
    rig.exchange()
    assert rig.body_of(other) == b"fine"


def test_421_for_a_host_the_certificate_does_not_cover_and_coalescing_for_one_it_does() -> None:
    rig = Rig()
    refused = rig.get("/", host="blog.example")
    coalesced = rig.get("/", host="www.app.example")
    assert rig.status_of(refused) == b"421"
    assert len(rig.reactor.tcpClients) == 1  # only www.app.example went upstream
    _, upstream = rig.answer(-1, b"www")
    assert b"host: www.app.example\r\n" in upstream.value()
    rig.exchange()
    assert rig.body_of(coalesced) == b"www"


def test_a_malformed_header_block_is_a_connection_error() -> None:
    """h2 validates what it receives (RFC 9113 8.2): a Host naming another
    site than :authority, an upper-case name, a connection field."""
    rig = Rig()
    rig.client.config.validate_outbound_headers = False
    rig.client.config.normalize_outbound_headers = False
    stream_id = rig.client.get_next_available_stream_id()
    rig.client.send_headers(
        stream_id,
        [(":method", "GET"), (":scheme", "https"), (":authority", "app.example"),
         (":path", "/"), ("host", "blog.example")],
        end_stream=True,
    )
    rig.exchange()
    terminated = rig.terminated()
    assert terminated is not None and terminated.error_code == ErrorCodes.PROTOCOL_ERROR
    assert rig.reactor.tcpClients == []


def test_rapid_reset_gets_goaway_enhance_your_calm() -> None:
    rig = Rig(max_resets_per_second=10)
    for _ in range(11):
        stream = rig.get("/reset", end=False)
        rig.client.reset_stream(stream)
        rig.exchange()
    terminated = rig.terminated()
    assert terminated is not None and terminated.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert rig.transport.disconnecting


def test_resets_under_the_rate_are_fine() -> None:
    rig = Rig(max_resets_per_second=10)
    for _ in range(3):
        for _ in range(10):
            stream = rig.get("/reset", end=False)
            rig.client.reset_stream(stream)
            rig.exchange()
        rig.reactor.advance(1.0)
    assert rig.terminated() is None
    assert rig.channel._streams == {}


@pytest.mark.parametrize("frame", ["ping", "settings"])
def test_control_frame_floods_get_goaway(frame: str) -> None:
    rig = Rig(max_control_frames_per_second=50)
    for i in range(60):
        if frame == "ping":
            rig.client.ping(b"%08d" % i)
        else:
            rig.client.update_settings({SettingCodes.ENABLE_PUSH: 0})
    rig.exchange()
    terminated = rig.terminated()
    assert terminated is not None and terminated.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert rig.transport.disconnecting


def test_a_continuation_flood_is_cut_at_the_header_list_limit() -> None:
    rig = Rig(max_header_list_size=4096)
    headers = HeadersFrame(1)
    headers.data = b"\x82"  # :method GET, then never END_HEADERS
    rig.channel.dataReceived(headers.serialize())
    assert not rig.transport.disconnecting
    sent = 0
    while not rig.transport.disconnecting:
        more = ContinuationFrame(1)
        more.data = b"\x00" * 1000
        rig.channel.dataReceived(more.serialize())
        sent += 1000
        assert sent < 10_000
    assert sent <= 5000
    rig.exchange()
    terminated = rig.terminated()
    assert terminated is not None and terminated.error_code == ErrorCodes.ENHANCE_YOUR_CALM


def test_an_hpack_bomb_is_refused_at_the_header_list_size() -> None:
    rig = Rig(max_header_list_size=16_384)
    stream_id = rig.client.get_next_available_stream_id()
    # One 1000-byte field in the dynamic table, then referenced 40 times: a
    # tiny header block that decodes to 40 KB.
    rig.client.send_headers(
        stream_id,
        [(":method", "GET"), (":scheme", "https"), (":authority", "app.example"),
         (":path", "/"), *[("x-bomb", "z" * 1000)] * 40],
        end_stream=True,
    )
    block = rig.client.data_to_send()
    assert len(block) < 4000
    rig.channel.dataReceived(block)
    assert rig.transport.disconnecting
    rig.exchange()
    terminated = rig.terminated()
    assert terminated is not None and terminated.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert rig.reactor.tcpClients == []


def test_a_zero_window_stall_resets_the_stream_after_the_window_timeout() -> None:
    rig = Rig(client_window=100, window_timeout=10.0)
    stream = rig.get("/stalled")
    protocol, upstream, _ = accept_upstream(rig.reactor, -1)
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"s" * 5000)
    rig.exchange()
    assert len(rig.body_of(stream)) == 100
    rig.reactor.advance(9.0)
    rig.exchange()
    assert not any(isinstance(e, StreamReset) for e in rig.events)
    rig.reactor.advance(1.5)
    rig.exchange()
    reset = next(e for e in rig.events if isinstance(e, StreamReset))
    assert reset.stream_id == stream and reset.error_code == ErrorCodes.CANCEL
    assert not rig.transport.disconnecting  # the connection goes on
    assert rig.channel._streams == {}


def test_an_idle_connection_gets_goaway_after_the_keepalive_timeout() -> None:
    rig = Rig()
    stream = rig.get("/")
    rig.answer(-1, b"x")
    rig.exchange()
    assert rig.ended(stream)
    rig.reactor.advance(Settings().keepalive_timeout - 1)
    assert not rig.transport.disconnecting
    rig.reactor.advance(2)
    rig.exchange()
    terminated = rig.terminated()
    assert terminated is not None and terminated.error_code == ErrorCodes.NO_ERROR
    assert rig.transport.disconnecting


def test_a_connection_without_a_request_is_closed_at_the_header_timeout() -> None:
    rig = Rig()
    rig.reactor.advance(Settings().header_timeout + 0.1)
    assert rig.transport.disconnecting


def test_a_slow_body_gets_408_on_its_stream() -> None:
    rig = Rig()
    stream = rig.get("/slow", end=False)
    rig.client.send_data(stream, b"a" * 100)
    rig.exchange()
    rig.reactor.advance(Settings().body_timeout + 1)
    rig.exchange()
    assert rig.status_of(stream) == b"408"
    assert not rig.transport.disconnecting


def test_a_stream_opened_after_our_goaway_is_refused() -> None:
    rig = Rig()
    rig.get("/inflight")
    rig.factory.connections.drain()
    goaway = rig.transport.value()
    rig.transport.clear()
    # The client opened it before it read the GOAWAY.
    late = rig.client.get_next_available_stream_id()
    rig.client.send_headers(
        late,
        [(":method", "GET"), (":scheme", "https"), (":authority", "app.example"),
         (":path", "/late")],
        end_stream=True,
    )
    rig.channel.dataReceived(rig.client.data_to_send())
    assert len(rig.reactor.tcpClients) == 1
    assert rig.transport.value().endswith(b"\x00\x00\x04\x03\x00" + late.to_bytes(4, "big")
                                          + ErrorCodes.REFUSED_STREAM.to_bytes(4, "big"))
    assert goaway


def _frames(data: bytes) -> list[Any]:
    frames = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        frames.append(frame)
        data = data[9 + length :]
    return frames


def test_drain_sends_goaway_and_lets_the_stream_in_flight_finish() -> None:
    rig = Rig()
    stream = rig.get("/inflight")
    rig.factory.connections.drain()
    assert not rig.transport.disconnecting
    rig.answer(0, b"done")
    rig.reactor.advance(0)
    # Read raw: the client's h2 takes nothing after a GOAWAY.
    frames = _frames(rig.transport.value())
    assert isinstance(frames[0], GoAwayFrame)
    assert frames[0].last_stream_id == stream and frames[0].error_code == 0
    assert isinstance(frames[1], HeadersFrame) and frames[1].stream_id == stream
    assert isinstance(frames[2], DataFrame) and frames[2].data == b"done"
    assert "END_STREAM" in frames[-1].flags and frames[-1].stream_id == stream
    assert rig.transport.disconnecting


def test_pause_and_resume_request_body_hold_back_the_window() -> None:
    rig = Rig(initial_window_size=65_535)
    stream_id = rig.get("/upload", end=False)
    stream = rig.channel._streams[stream_id]
    assert isinstance(stream, H2Stream)
    stream.pause_request_body()
    for _ in range(3):
        rig.client.send_data(stream_id, b"u" * 13_000)
    events = rig.exchange()
    assert not any(isinstance(e, WindowUpdated) and e.stream_id == stream_id for e in events)
    stream.resume_request_body()
    events = rig.exchange()
    assert any(isinstance(e, WindowUpdated) and e.stream_id == stream_id for e in events)


def test_a_streamed_body_goes_upstream_chunked_as_it_arrives_with_backpressure() -> None:
    """request_buffering=False over HTTP/2: DATA reaches the backend before
    END_STREAM, chunked (no content-length); a full upstream socket holds the
    client's window back, and the time so held is not the client's."""
    rig = Rig(streamed=True, initial_window_size=65_535)
    stream_id = rig.get("/upload", end=False)
    rig.client.send_data(stream_id, b"x" * 10_000)
    rig.exchange()
    protocol, upstream, _ = accept_upstream(rig.reactor)
    sent = upstream.value()
    assert b"Transfer-Encoding: chunked\r\n" in sent
    assert sent.endswith(b"%x\r\n" % 10_000 + b"x" * 10_000 + b"\r\n")
    stream = rig.channel._streams[stream_id]
    assert isinstance(stream, H2Stream)
    # The upstream socket is full: what arrives is held (up to the window),
    # then the client's window is no longer given back.
    assert upstream.producer is not None
    upstream.producer.pauseProducing()
    upstream.clear()
    for _ in range(5):
        rig.client.send_data(stream_id, b"y" * 10_000)
        events = rig.exchange()
        assert not any(isinstance(e, WindowUpdated) and e.stream_id == stream_id for e in events)
    assert stream.body_held
    assert upstream.value() == b""
    rig.reactor.advance(45)  # past --body-timeout (30 s): held, not the client's fault
    assert not rig.ended(stream_id)
    upstream.producer.resumeProducing()
    assert not stream.body_held
    rig.client.send_data(stream_id, b"z", end_stream=True)
    rig.exchange()
    sent = upstream.value()
    assert sent.endswith(b"1\r\nz\r\n0\r\n\r\n")
    assert sent.count(b"y") == 50_000
    protocol.dataReceived(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
    rig.exchange()
    assert rig.status_of(stream_id) == b"201"
    assert rig.body_of(stream_id) == b"ok"
    assert rig.ended(stream_id)


def test_a_streamed_body_the_client_stalls_gives_the_upstream_up() -> None:
    rig = Rig(streamed=True)
    stream_id = rig.get("/upload", end=False)
    rig.client.send_data(stream_id, b"x" * 1_000)
    rig.exchange()
    _, upstream, _ = accept_upstream(rig.reactor)
    assert upstream.value().endswith(b"x" * 1_000 + b"\r\n")
    rig.reactor.advance(31)
    rig.reactor.advance(31)
    rig.exchange()
    # No response had started: the stream gets its 408, the half-sent request is given up.
    assert rig.status_of(stream_id) == b"408"
    assert upstream.disconnecting or upstream.disconnected


def test_expect_100_continue_is_answered_with_an_interim_head() -> None:
    rig = Rig()
    stream_id = rig.get("/upload", end=False, expect="100-continue", **{"content-length": "5"})
    interim = [e for e in rig.events if isinstance(e, InformationalResponseReceived)]
    assert [dict(e.headers)[b":status"] for e in interim] == [b"100"]
    rig.client.send_data(stream_id, b"hello", end_stream=True)
    rig.exchange()
    _, upstream = rig.answer(-1, b"ok")
    assert upstream.value().endswith(b"\r\n\r\nhello")
    assert b"expect" not in upstream.value().lower()
    rig.exchange()
    assert rig.status_of(stream_id) == b"200"


def _reset_code(rig: Rig, stream_id: int) -> int | None:
    for e in rig.events:
        if isinstance(e, StreamReset) and e.stream_id == stream_id:
            return int(e.error_code)
    return None


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
@pytest.mark.parametrize("streamed", [False, True])
def test_a_content_length_with_no_body_is_a_malformed_stream(method: str, streamed: bool) -> None:
    """END_STREAM on the HEADERS with a content-length above 0: h2 checks a
    length against DATA frames only; forwarded, it would leave an upstream
    connection waiting for a body (and take the next request as it)."""
    rig = Rig(streamed=streamed)
    stream_id = rig.client.get_next_available_stream_id()
    rig.client.send_headers(
        stream_id,
        [(":method", method), (":scheme", "https"), (":authority", "app.example"),
         (":path", "/x"), ("content-length", "20")],
        end_stream=True,
    )
    rig.exchange()
    assert _reset_code(rig, stream_id) == ErrorCodes.PROTOCOL_ERROR
    assert not rig.reactor.tcpClients  # nothing went upstream
    assert rig.terminated() is None  # the connection goes on
    other = rig.get("/next")
    _, upstream = rig.answer(-1, b"ok")
    assert upstream.value().startswith(b"GET /next HTTP/1.1\r\n")
    rig.exchange()
    assert rig.body_of(other) == b"ok"


@pytest.mark.parametrize(
    ("method", "path", "name"),
    [("GE T", "/x", "x-ok"), ("G(E)T", "/x", "x-ok"), ("GET", "/a b", "x-ok"),
     ("GET", "/a\tb", "x-ok"), ("GET", "/x#frag", "x-ok"), ("GET", "/x", 'x(y"')],
)
def test_what_http11_cannot_carry_gets_400_on_its_stream(
    method: str, path: str, name: str
) -> None:
    rig = Rig()
    stream_id = rig.client.get_next_available_stream_id()
    rig.client.send_headers(
        stream_id,
        [(":method", method), (":scheme", "https"), (":authority", "app.example"),
         (":path", path), (name, "1")],
        end_stream=True,
    )
    rig.exchange()
    assert rig.status_of(stream_id) == b"400"
    assert not rig.reactor.tcpClients
    assert rig.terminated() is None


def test_held_streamed_bodies_do_not_use_up_the_connection_window() -> None:
    """Bodies held back for a slow backend keep their streams' windows shut,
    not the connection's: a new stream can still send."""
    rig = Rig(streamed=True)
    chunk = b"x" * 16_384
    stream_ids = [rig.get(f"/up/{i}", end=False) for i in range(25)]
    for _ in range(40):  # nothing accepted upstream: every body is held, then paused
        sent = False
        for stream_id in stream_ids:
            while min(
                rig.client.local_flow_control_window(stream_id),
                rig.client.outbound_flow_control_window,
            ) >= len(chunk):
                rig.client.send_data(stream_id, chunk)
                sent = True
            rig.exchange()
        if not sent:
            break
    held = [rig.channel._streams[i] for i in stream_ids]
    assert all(isinstance(s, H2Stream) and s.body_held for s in held)
    assert rig.client.outbound_flow_control_window >= 65_535
    other = rig.get("/small", host="blog.example", end=False)
    assert rig.client.local_flow_control_window(other) == 65_535


def test_a_reset_by_the_client_cancels_the_upstream() -> None:
    rig = Rig()
    stream = rig.get("/gone")
    protocol, upstream, _ = accept_upstream(rig.reactor, -1)
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100)
    rig.client.reset_stream(stream)
    rig.exchange()
    assert upstream.disconnecting
    assert rig.channel._streams == {}


def test_the_connection_lost_ends_every_stream() -> None:
    rig = Rig()
    rig.get("/a")
    rig.get("/b")
    protocol, upstream, _ = accept_upstream(rig.reactor, -1)
    rig.channel.connectionLost()
    assert rig.channel._streams == {}
    assert upstream.disconnecting


def _scenario(kind: str) -> list[str]:
    """The cyclic garbage of streams on one long-lived connection."""
    rig = Rig()

    upstream: list[Any] = []
    started = [0]

    def respond(data: bytes) -> None:
        """Answer on a new upstream connection (closed as a socket is), or the pooled one."""
        if len(rig.reactor.tcpClients) > started[0]:
            host, port, factory, _, _ = rig.reactor.tcpClients[started[0]]
            started[0] += 1
            protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
            protocol.makeConnection(SocketLike(rig.reactor, protocol))
            upstream.append(protocol)
        upstream[-1].dataReceived(data)

    def whole() -> None:
        stream = rig.get("/x")
        respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"y" * 1000)
        rig.exchange()
        assert rig.ended(stream)

    def reset() -> None:
        stream = rig.get("/x")
        respond(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100)
        rig.client.reset_stream(stream)
        rig.exchange()
        rig.reactor.advance(0)
        upstream.pop()  # its connection is closed: not reused

    def aborted() -> None:
        stream = rig.get("/x")
        respond(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100)
        upstream.pop().transport.lost(ConnectionLost())
        rig.reactor.advance(0)
        rig.exchange()
        assert any(
            isinstance(e, StreamReset) and e.stream_id == stream
            and e.error_code == ErrorCodes.INTERNAL_ERROR for e in rig.events
        )

    def refused() -> None:
        rig.get("/x", host="blog.example")

    step = {"whole": whole, "reset": reset, "aborted": aborted, "refused": refused}[kind]
    garbage = garbage_of(step, warm=3, runs=10)
    assert rig.channel._streams == {}
    return garbage


@pytest.mark.parametrize("kind", ["whole", "reset", "aborted", "refused"])
def test_streams_leave_no_cyclic_garbage(kind: str) -> None:
    assert _scenario(kind) == []
