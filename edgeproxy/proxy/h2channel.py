"""
HTTP/2 on a client's TLS connection, driven by the ``h2`` package (sans-IO).

A TLS connection starts as a :class:`~.h1channel.ProxyChannel`; when its
handshake has negotiated ``h2`` over ALPN, :meth:`H2Channel.take_over` makes
it an :class:`H2Channel`: the same object (the connection tracker, the TLS
layer and the metrics keep it, with its TLS facts: the certificate's names,
the TLS policy it met, the client's certificate), now speaking HTTP/2.  The
HTTP/1.1 path pays nothing for it: one test per handshake.

Each stream is an :class:`H2Stream`, the :class:`~.exchange.Channel` of one
:class:`~.h2exchange.H2Exchange`, so routing, every stage, the access log and
the metrics are the HTTP/1.1 ones.  The request side: pseudo-headers become
the method, the target (``:path``) and a ``host`` field (``:authority``),
cookie fields are joined (h2 does it), a body is spooled as it arrives and
acknowledged to the client (WINDOW_UPDATE) as it is taken.  The response
side: HEADERS, DATA within the stream's window (the rest held, at most
``max_stream_buffer`` bytes before the stream's producer, the upstream
socket, is paused), END_STREAM, RST_STREAM.

Defences, each bounded per connection (``--h2-*``, :class:`~edgeproxy.core.protocol.H2Limits`):

- streams at once (SETTINGS_MAX_CONCURRENT_STREAMS; h2 refuses more);
- a header list over the limit, decoded (HPACK bomb: h2's decoder) or as
  received across CONTINUATION frames (:class:`~edgeproxy.core.h2guard.HeaderBlockGuard`);
- streams reset by the client per second (rapid reset, CVE-2023-44487),
  SETTINGS/PING/PRIORITY frames per second: past either, GOAWAY(ENHANCE_YOUR_CALM);
- while the client does not read what is written, nothing more is read from it
  (no PING or SETTINGS answers pile up);
- a response stalled on the client's window longer than ``window_timeout``
  is reset; the client deadlines of HTTP/1.1 apply too: the first stream
  within ``--header-timeout`` of the accept, a header block within it, a
  body at ``--body-timeout``/``--body-min-rate``, an idle connection closed
  (GOAWAY) after ``--keepalive-timeout``.

A drain (SIGTERM, reload of the process) sends GOAWAY; streams in flight finish.

WebSocket over HTTP/2 (RFC 8441): SETTINGS_ENABLE_CONNECT_PROTOCOL is offered;
a ``CONNECT`` stream with ``:protocol websocket`` becomes an upgrade exchange
(sent upstream as an HTTP/1.1 handshake with a key edgeproxy makes) and, once
the backend switches, the client side of a :class:`~.tunnel.Tunnel` through
:class:`~.h2tunnel.StreamTransport`.
"""

from __future__ import annotations

import re
import secrets
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingReceived,
    PriorityUpdated,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import DenialOfServiceError, ProtocolError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure

from edgeproxy.core.errors import (
    BadRequest,
    EdgeProxyError,
    NotImplementedMethod,
    Outcome,
    Reason,
    RequestTimeout,
)
from edgeproxy.core.h2guard import HeaderBlockGuard
from edgeproxy.core.hostnames import normalise_host
from edgeproxy.core.websocket import VERSION, key_from
from edgeproxy.proxy.exchange import Exchange, RejectRequest
from edgeproxy.proxy.h1channel import ProxyChannel
from edgeproxy.proxy.h2exchange import H2Exchange
from edgeproxy.proxy.h2tunnel import StreamTransport
from edgeproxy.proxy.tunnel import Tunnel, TunnelEnd

if TYPE_CHECKING:
    from edgeproxy.config.tlspolicy import TLSPolicy
    from edgeproxy.core.protocol import H2Limits
    from edgeproxy.proxy.exchange import Listener
    from edgeproxy.upstream.h1client import UpgradedConnection

__all__ = ["H2Channel", "H2Stream"]

_GONE = Failure(ConnectionDone())
_GONE.cleanFailure()

#: A method, and a field name, is a token (RFC 9110 9.1, 5.1): h2 checks
#: neither, and HTTP/1.1 upstream cannot carry anything else.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: What a request-target may not hold on its way to HTTP/1.1: controls, a
#: space (it would split the request line), and a fragment (never sent).
_NOT_IN_PATH = re.compile(rb"[\x00-\x20\x7f#]")
#: The client's own, never passed on for a WebSocket over HTTP/2: edgeproxy
#: makes the key, and the upgrade fields are edgeproxy's to send.
_WEBSOCKET_DROPPED = frozenset({b"sec-websocket-key", b"upgrade"})


class _PerSecond:
    """Events counted in one-second windows: over ``limit`` in one, too many."""

    __slots__ = ("count", "limit", "start")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.start = float("-inf")
        self.count = 0

    def hit(self, now: float) -> bool:
        if now - self.start >= 1.0:
            self.start = now
            self.count = 0
        self.count += 1
        return self.count > self.limit


class H2Stream:
    """One HTTP/2 stream: the :class:`~.exchange.Channel` of its exchange,
    and the sink of its response (:class:`~.h2exchange.StreamSink`)."""

    exchange: H2Exchange | None = None
    #: The client sent END_STREAM (or reset the stream).
    request_ended = False
    #: The response was ended by edgeproxy (its END_STREAM queued, or a reset).
    response_ended = False
    #: END_STREAM waits for the held data to go out.
    _end_pending = False
    #: The stream is over for edgeproxy: reset, or ended both ways.
    closed = False
    #: Since when held response data has waited for the client's window.
    stalled_since: float | None = None
    _producer: IPushProducer | None = None
    _producer_paused = False
    #: ``pause_request_body``: received bytes not acknowledged yet.
    _body_paused = False
    _body_paused_at = 0.0
    _unacked = 0
    #: A WebSocket over HTTP/2 (RFC 8441): the tunnel once the backend
    #: switched (None before, and once the client's side of it is over).
    tunnel: Tunnel | None = None
    #: The stream is (or was) a tunnel: its end is the tunnel's business.
    tunnelled = False
    #: DATA that came before the tunnel opened (unacknowledged: bounded by
    #: the stream's window); None for every other stream.
    _early: list[bytes] | None = None

    def __init__(self, connection: H2Channel, stream_id: int) -> None:
        self.connection = connection
        self.stream_id = stream_id
        self.factory: Listener = connection.factory
        self.clock_seconds: Callable[[], float] = connection.clock_seconds
        self._held: deque[bytes] = deque()
        self._held_bytes = 0

    # -- the Channel: the connection's facts -----------------------------------------

    @property
    def draining(self) -> bool:
        return self.connection.draining

    @property
    def covered_host(self) -> str | None:
        return self.connection.covered_host

    @property
    def client_ip(self) -> str:
        return self.connection.client_ip

    @property
    def peer_trusted(self) -> bool:
        return self.connection.peer_trusted

    @property
    def replaces_forwarding(self) -> bool:
        return self.connection.replaces_forwarding

    @property
    def met_policy(self) -> TLSPolicy | None:
        return self.connection.met_policy

    @property
    def client_subject(self) -> bytes | None:
        return self.connection.client_subject

    def covers(self, host: str) -> bool:
        return self.connection.covers(host)

    def meets(self, policy: TLSPolicy) -> bool:
        return self.connection.meets(policy)

    def tls_details(self) -> tuple[str | None, str | None]:
        return self.connection.tls_details()

    def write_now(self, data: bytes) -> None:
        """HTTP/1.1 bytes: never on a stream (its exchange frames its own)."""
        raise NotImplementedError("an HTTP/2 stream takes frames, not bytes")

    # -- the Channel: the exchange's turn --------------------------------------------

    def run_queue(self) -> None:
        """Streams are answered at once, side by side: process the exchange
        as soon as its request is whole, or at once for a streamed body
        (``request_buffering=False``)."""
        exchange = self.exchange
        if (
            exchange is not None
            and (exchange.complete or exchange.body_stream is not None)
            and not exchange.processing
        ):
            exchange.process()

    def request_done(self, request: Exchange) -> None:
        """The exchange's response is whole (some of it may still wait for the
        client's window)."""
        self._settle()

    def _settle(self) -> None:
        """Once the response is all sent: the stream is over, or, if the
        client is still sending (an early 413, a refusal), the rest of its
        body is not wanted: RST_STREAM(NO_ERROR) (RFC 9113 8.1)."""
        if self.tunnelled:
            self._tunnel_settle()
            return
        exchange = self.exchange
        if (
            self.closed
            or exchange is None
            or not exchange.finished
            or not self.response_ended
            or self._end_pending
        ):
            return
        if self.request_ended:
            self.connection.stream_over(self)
        else:
            self.request_ended = True
            self.connection.reset_stream(self, ErrorCodes.NO_ERROR)

    def close(self) -> None:
        """Cut this stream off (not the connection)."""
        self.abort()

    def register_body_producer(self, producer: IPushProducer | None) -> None:
        self._producer = producer
        self._producer_paused = False
        if producer is not None and (
            self.connection.write_paused or self._held_bytes > self.connection.max_stream_buffer
        ):
            self._producer_paused = True
            producer.pauseProducing()

    # -- streamed request bodies: the exchange holds the client back ------------------

    @property
    def body_held(self) -> bool:
        """The exchange holds the client's body back (the backend is slow)."""
        return self._body_paused

    def pause_request_body(self) -> None:
        """Stop acknowledging this stream's DATA: the client's window closes
        and it stops sending (the rest of the connection goes on).  The
        time it is held so is not the client's: it does not count against
        its body deadline (``Exchange.body_wait``)."""
        if not self._body_paused:
            self._body_paused = True
            self._body_paused_at = self.connection.clock_seconds()

    def resume_request_body(self) -> None:
        """Acknowledge what was held back; the client sends on."""
        if self._body_paused and self.exchange is not None:
            self.exchange.body_wait += self.connection.clock_seconds() - self._body_paused_at
        self._body_paused = False
        unacked, self._unacked = self._unacked, 0
        if unacked and not self.closed:
            self.connection.open_stream_window(self, unacked)

    # -- the request --------------------------------------------------------------

    def head(self, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        method = path = authority = protocol = None
        host: bytes | None = None
        fields: list[tuple[bytes, bytes]] = []
        names_ok = True
        length: bytes | None = None
        for name, value in headers:
            if name[:1] == b":":
                # h2 has refused unknown, repeated and misplaced pseudo-fields.
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
                elif name == b":authority":
                    authority = value
                elif name == b":protocol":
                    protocol = value
                continue
            if name == b"host":
                host = value
                continue
            if name == b"content-length":
                length = value
            elif _TOKEN.fullmatch(name) is None:
                names_ok = False
            fields.append((name, value))
        if ended and length is not None and length.strip() != b"0":
            # Malformed (a stream error): a content-length for a body that
            # ended with the HEADERS (RFC 9113 8.1.1; h2 checks a length
            # against DATA frames only).  Forwarded, the length would leave
            # an upstream connection waiting for a body.
            self.connection.log.info(
                "HTTP/2 stream {stream} from {client} reset: malformed ({why})",
                stream=self.stream_id,
                client=self.connection.client_ip,
                why="content-length without a body",
            )
            self.connection.reset_stream(self, ErrorCodes.PROTOCOL_ERROR)
            return
        error: EdgeProxyError | None = None
        if protocol is not None:
            # An extended CONNECT (RFC 8441 4; h2 has checked it is a
            # CONNECT with :scheme and :path): the one protocol edgeproxy
            # tunnels is WebSocket, sent upstream as an HTTP/1.1 handshake.
            fields = [f for f in fields if f[0] not in _WEBSOCKET_DROPPED]
            if protocol.lower() != b"websocket":
                error = NotImplementedMethod()
            elif ended:
                error = BadRequest(Reason.BAD_FRAMING)  # a tunnel closed before it opens
            else:
                method = b"GET"
                fields.append((b"upgrade", b"websocket"))
                if not any(name == b"sec-websocket-version" for name, _ in fields):
                    fields.append((b"sec-websocket-version", VERSION))
        if error is not None:
            pass  # (the extended CONNECT's answer stands)
        elif method is None or _TOKEN.fullmatch(method) is None:
            error = BadRequest(Reason.BAD_REQUEST_LINE)
        elif path is None or _NOT_IN_PATH.search(path) is not None:
            error = BadRequest(Reason.BAD_TARGET)
        elif not names_ok:
            error = BadRequest(Reason.BAD_HEADER)
        if authority is not None:
            if (
                error is None
                and host is not None
                and normalise_host(host) != normalise_host(authority)
            ):
                # RFC 9113 8.3.1: Host must name what :authority names.
                error = BadRequest(Reason.BAD_HOST)
            host = authority
        if host is not None:
            # Routed, and sent upstream, by the authority the request names.
            fields.insert(0, (b"host", host))
        exchange = self.exchange = H2Exchange(
            self, self, method or b"-", path or b"", fields, not ended
        )
        if error is not None:
            exchange.reject(error)
        else:
            try:
                exchange.head_received(b"2", True)
            except RejectRequest as e:
                exchange.reject(e.error)
            else:
                if protocol is not None:
                    self._websocket(exchange)
                    return
        if ended:
            self.body_ended()
        else:
            # A refused request, or a streamed body's, goes on at once.
            self.run_queue()

    def _websocket(self, exchange: H2Exchange) -> None:
        """A WebSocket over HTTP/2, routed: refused on a ``websocket=False``
        route (403), otherwise forwarded as an upgrade with a key of
        edgeproxy's.  It has no request body: what the client sends is the
        tunnel's, held (not acknowledged) until the tunnel opens."""
        exchange.upgrade_requested()
        if exchange.upgrade is not None:
            exchange.websocket_key = key_from(secrets.token_bytes(16))
            self._early = []
            self.pause_request_body()
        exchange.body_complete()
        self.run_queue()

    def data(self, data: bytes, flow_controlled: int) -> None:
        tunnel = self.tunnel
        exchange = self.exchange
        if tunnel is not None:
            tunnel.client_data(data)
        elif self._early is not None:
            self._early.append(data)
        elif exchange is not None and not exchange.complete:
            exchange.body_received(data)
        if self._body_paused and not self.closed:
            # Only this stream's window stays shut: the connection's is given
            # back at once, or a few held streams would stall every other.
            self._unacked += flow_controlled
            if flow_controlled:
                self.connection.open_connection_window(flow_controlled)
        else:
            # Taken (spooled, or dropped): the client may send as much again.
            self.connection.acknowledge(self, flow_controlled)

    def body_ended(self) -> None:
        self.request_ended = True
        if self.tunnelled:
            # The client closed its side: so does the tunnel (the upstream
            # after what it was sent), and so does edgeproxy's side.
            self._tunnel_end(_GONE)
            self.tunnel_close()
            return
        exchange = self.exchange
        if exchange is None:
            return
        if not exchange.complete:
            exchange.body_complete()
        self.run_queue()
        self._settle()

    # -- the response (StreamSink) -------------------------------------------------

    def send_headers(self, headers: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        if self.closed:
            return
        if end_stream:
            self.response_ended = True
        self.connection.send_headers(self, headers, end_stream)

    def send_interim(self, headers: list[tuple[bytes, bytes]]) -> None:
        if not self.closed and not self.response_ended:
            self.connection.send_headers(self, headers, False)

    def send_data(self, data: bytes) -> None:
        if self.closed:
            return
        self._held.append(data)
        self._held_bytes += len(data)
        self.pump()
        if (
            self._held_bytes > self.connection.max_stream_buffer
            and self._producer is not None
            and not self._producer_paused
        ):
            self._producer_paused = True
            self._producer.pauseProducing()

    def end_stream(self) -> None:
        if self.closed:
            return
        self.response_ended = True
        if self._held:
            self._end_pending = True
        else:
            self.connection.end_stream(self)

    def abort(self) -> None:
        """The response broke off: RST_STREAM(INTERNAL_ERROR)."""
        if not self.closed:
            self.connection.reset_stream(self, ErrorCodes.INTERNAL_ERROR)

    def pump(self) -> None:
        """Send what the client's window allows of the held data."""
        if not self._held or self.closed:
            return
        connection = self.connection
        sent = connection.send_held(self, self._held)
        self._held_bytes -= sent
        if self._held:
            if self.stalled_since is None:
                self.stalled_since = self.clock_seconds()
            return
        self.stalled_since = None
        if self._end_pending:
            self._end_pending = False
            connection.end_stream(self)
            self._settle()
            return
        self.resume_producer()

    def _give_back(self) -> None:
        """The stream goes: what ``pause_request_body`` held back of its
        window no longer matters (the connection's was given back as it came)."""
        self._unacked = 0
        self._early = None

    # -- a WebSocket over HTTP/2: the tunnel's client side (.h2tunnel) -----------------

    def start_tunnel(self, request: Exchange, upstream: UpgradedConnection) -> Tunnel | None:
        """The backend switched (the 200 is queued): from now on the
        stream's DATA goes to ``upstream`` and what it sends comes back as
        DATA, through a :class:`~.tunnel.Tunnel`.  None if the stream is gone."""
        if self.closed:
            return None
        factory = self.connection.factory
        # The tunnel is logged when it closes, perhaps after the connection:
        # what the TLS connection says now, from then on.
        details = self.tls_details()
        self.tls_details = lambda: details  # type: ignore[method-assign]
        tunnel = self.tunnel = Tunnel(
            factory.clock,
            factory.settings.tunnel_idle_timeout,
            StreamTransport(self),
            upstream.transport,
            request.tunnel_closed,
        )
        self.tunnelled = True
        metrics = factory.metrics
        if metrics is not None:
            metrics.tunnel_opened()
        upstream.attach(tunnel)
        early, self._early = self._early, None
        # What came early is taken now: the client may send as much again
        # (unless the upstream pauses it, on this very write).
        self.resume_request_body()
        tunnel.start(b"".join(early) if early else b"", upstream.rest)
        return tunnel

    def tunnel_close(self) -> None:
        """The tunnel closes this side: END_STREAM once what is held has
        gone; RST_STREAM(CONNECT_ERROR) if the upstream failed."""
        if self.closed or self.response_ended:
            return
        tunnel = self.tunnel
        if tunnel is not None and tunnel.end is TunnelEnd.UPSTREAM_ERROR:
            self.connection.reset_stream(self, ErrorCodes.CONNECT_ERROR)
            return
        self.end_stream()
        if not self._end_pending:
            self._tunnel_settle()

    def tunnel_abort(self) -> None:
        if not self.closed:
            self.connection.reset_stream(self, ErrorCodes.CANCEL)

    def _tunnel_settle(self) -> None:
        """edgeproxy's END_STREAM is out: this side of the tunnel is over.
        A client still sending is told to stop (RST_STREAM NO_ERROR)."""
        if self.closed or not self.response_ended or self._end_pending:
            return
        self._tunnel_end(_GONE)
        if self.request_ended:
            self.connection.stream_over(self)
        else:
            self.request_ended = True
            self.connection.reset_stream(self, ErrorCodes.NO_ERROR)

    def _tunnel_end(self, reason: Failure) -> None:
        tunnel, self.tunnel = self.tunnel, None
        if tunnel is not None:
            tunnel.client_lost(reason)

    def resume_producer(self) -> None:
        producer = self._producer
        if (
            producer is not None
            and self._producer_paused
            and self._held_bytes <= self.connection.max_stream_buffer
            and not self.connection.write_paused
        ):
            self._producer_paused = False
            producer.resumeProducing()

    def pause_producer(self) -> None:
        producer = self._producer
        if producer is not None and not self._producer_paused:
            self._producer_paused = True
            producer.pauseProducing()

    # -- the end ----------------------------------------------------------------

    def lost(self, reason: Failure) -> None:
        """The stream is gone (reset by either side, or the connection lost):
        its exchange learns the client went away; nothing refers back."""
        self._give_back()
        self.closed = True
        self._held.clear()
        self._held_bytes = 0
        self._producer = None
        exchange, self.exchange = self.exchange, None
        if self.tunnelled:
            # The tunnel's exchange ends with the tunnel (tunnel_closed).
            self._tunnel_end(reason)
        elif exchange is not None:
            exchange.connection_lost(reason)

    def released(self) -> None:
        """Ended both ways: let go of the exchange (it refers back here)."""
        self._give_back()
        self.closed = True
        self._producer = None
        self.exchange = None
        self._tunnel_end(_GONE)


class H2Channel(ProxyChannel):
    """An HTTP/2 client connection (entered through :meth:`take_over`)."""

    log = Logger(namespace="edgeproxy.request")
    _h2: H2Connection
    _streams: dict[int, H2Stream]
    _guard: HeaderBlockGuard
    _limits: H2Limits
    #: Response bytes held per stream before its producer is paused.
    max_stream_buffer: int
    write_paused = False
    _batching = False
    #: The write of queued frames at the end of this reactor turn (_flush_soon).
    _flush_call: IDelayedCall | None = None
    _goaway_sent = False
    #: When a header block began arriving (None: none open).
    _block_started: float | None = None
    #: When the connection last had no stream open.
    _idle_since = 0.0
    _had_stream = False
    _headers_priority: PriorityUpdated | None = None

    @classmethod
    def take_over(cls, channel: ProxyChannel) -> None:
        """Make ``channel``, whose TLS handshake negotiated ``h2``, an HTTP/2
        connection.  Its class changes, so the TLS layer, the connection
        tracker and the metrics keep the one object they know."""
        channel.__class__ = cls
        cast(H2Channel, channel)._start()

    def _start(self) -> None:
        factory = self.factory
        limits = self._limits = factory.settings.h2_limits
        self.max_stream_buffer = limits.max_stream_buffer
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._streams = {}
        self._guard = HeaderBlockGuard()
        self._resets = _PerSecond(limits.max_resets_per_second)
        self._control = _PerSecond(limits.max_control_frames_per_second)
        config = H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_inbound_headers=True,
            normalize_inbound_headers=True,
            # What is sent is made here: lower-case names, no connection fields.
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        h2 = self._h2 = H2Connection(config)
        # Current from the start (not pending the client's ACK): the first
        # frames are held to them too.
        h2.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
                SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_list_size,
                SettingCodes.MAX_FRAME_SIZE: limits.max_frame_size,
                SettingCodes.INITIAL_WINDOW_SIZE: limits.initial_window_size,
                SettingCodes.ENABLE_PUSH: 0,
                # WebSocket over HTTP/2 (RFC 8441): extended CONNECT.
                SettingCodes.ENABLE_CONNECT_PROTOCOL: 1,
            },
        )
        h2.max_inbound_frame_size = limits.max_frame_size
        h2.decoder.max_header_list_size = limits.max_header_list_size
        h2.initiate_connection()
        extra = limits.connection_window_size - 65_535
        if extra > 0:
            h2.increment_flow_control_window(extra)
        self._idle_since = self.clock_seconds()
        metrics = factory.metrics
        if metrics is not None:
            metrics.h2_connection(True)
        self._flush()
        self._schedule()

    # -- input ------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._input_closed:
            return
        block = self._guard.feed(data)
        if block:
            if block > self._limits.max_header_list_size:
                self._calm("header_block", ErrorCodes.ENHANCE_YOUR_CALM)
                return
            if self._block_started is None:
                self._block_started = self.clock_seconds()
        else:
            self._block_started = None
        h2 = self._h2
        try:
            events = h2.receive_data(data)
        except ProtocolError as e:
            # h2 has queued its GOAWAY with the error's code.
            cause = "header_list" if isinstance(e, DenialOfServiceError) else "protocol_error"
            self.log.info(
                "HTTP/2 connection error from {client}: {cause} ({error})",
                client=self.client_ip,
                cause=cause,
                error=str(e),
            )
            self._goaway_sent = True
            self._end_connection(cause)
            return
        self._batching = True
        try:
            for event in events:
                handler = _HANDLERS.get(type(event))
                if handler is not None:
                    handler(self, event)
                if self._closed:
                    return
        finally:
            self._batching = False
        self._flush()

    def _on_request(self, event: RequestReceived) -> None:
        stream_id = event.stream_id
        if self._goaway_sent:
            # Opened after our GOAWAY: not processed, the client may retry it.
            self._h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        if self._judge_peer:
            self._judge()
        # Priority given in the HEADERS frame comes as an event of its own:
        # not a PRIORITY frame, so not counted as one.
        self._headers_priority = event.priority_updated
        stream = H2Stream(self, stream_id)
        self._streams[stream_id] = stream
        self._had_stream = True
        metrics = self.factory.metrics
        if metrics is not None:
            metrics.h2_stream(True)
        assert event.headers is not None
        stream.head(list(event.headers), event.stream_ended is not None)

    def _on_data(self, event: DataReceived) -> None:
        stream = self._streams.get(event.stream_id)
        length = event.flow_controlled_length or 0
        if stream is None:
            # A stream edgeproxy refused or finished: its data still counted
            # against the window.
            if length:
                self._h2.acknowledge_received_data(length, event.stream_id)
            return
        stream.data(event.data or b"", length)

    def _on_stream_ended(self, event: StreamEnded) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is not None:
            stream.body_ended()

    def _on_reset(self, event: StreamReset) -> None:
        if event.remote_reset and self._resets.hit(self.clock_seconds()):
            self._calm("rapid_reset", ErrorCodes.ENHANCE_YOUR_CALM)
            return
        stream = self._streams.pop(event.stream_id, None)
        if stream is not None:
            self._stream_gone(stream)
            stream.lost(_GONE)

    def _on_window(self, event: WindowUpdated) -> None:
        if event.stream_id:
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream.pump()
        else:
            self._pump_all()

    def _on_settings(self, event: RemoteSettingsChanged) -> None:
        if self._control.hit(self.clock_seconds()):
            self._calm("control_flood", ErrorCodes.ENHANCE_YOUR_CALM)
            return
        if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            self._pump_all()

    def _on_priority(self, event: PriorityUpdated) -> None:
        if event is self._headers_priority:
            self._headers_priority = None
            return
        self._on_control(event)

    def _on_control(self, event: object) -> None:
        if self._control.hit(self.clock_seconds()):
            self._calm("control_flood", ErrorCodes.ENHANCE_YOUR_CALM)

    def _on_goaway(self, event: ConnectionTerminated) -> None:
        # The client is done with the connection (h2 sends nothing after it).
        self._input_closed = True
        self.close()

    # -- output -----------------------------------------------------------------------

    def _flush(self) -> None:
        if self._batching or self._closed:
            return
        data = self._h2.data_to_send()
        if data:
            self._write(data)

    def _flush_soon(self) -> None:
        """Write what the response side queued once this reactor turn is
        over, not frame by frame: a response's HEADERS, DATA and END_STREAM,
        and the frames of every stream answered in the same turn, become one
        TLS write (one record, one send) instead of one each.  The turn ends
        before the next poll, so nothing waits on a timer."""
        if self._batching or self._closed or self._flush_call is not None:
            return
        self._flush_call = self.factory.clock.callLater(0, self._flush_due)

    def _flush_due(self) -> None:
        self._flush_call = None
        self._flush()

    def close(self) -> None:
        """Close once what is queued has been written."""
        if not self._closed:
            self._batching = False
            self._flush()
        super().close()

    def send_headers(
        self, stream: H2Stream, headers: list[tuple[bytes, bytes]], end_stream: bool
    ) -> None:
        try:
            self._h2.send_headers(stream.stream_id, headers, end_stream=end_stream)
        except ProtocolError as e:
            self._cannot_send(stream, e)
            return
        self._flush_soon()

    def _cannot_send(self, stream: H2Stream, error: ProtocolError) -> None:
        """h2 refused to send on ``stream`` (closed under it): the stream is lost."""
        self.log.debug("HTTP/2 stream {stream} closed under its response: {error}",
                       stream=stream.stream_id, error=str(error))
        if self._streams.pop(stream.stream_id, None) is not None:
            self._stream_gone(stream)
        stream.lost(_GONE)

    def send_held(self, stream: H2Stream, held: deque[bytes]) -> int:
        """Send what the windows allow of ``held`` (consumed from the left);
        returns the bytes sent."""
        h2 = self._h2
        stream_id = stream.stream_id
        frame = h2.max_outbound_frame_size
        sent = 0
        while held:
            window = h2.local_flow_control_window(stream_id)
            if window <= 0:
                break
            chunk = held[0]
            size = len(chunk)
            if size > window:
                held[0] = chunk[window:]
                chunk = chunk[:window]
                size = window
            else:
                held.popleft()
            at = 0
            try:
                while at < size:
                    h2.send_data(stream_id, chunk[at : at + frame])
                    at += frame
            except ProtocolError as e:
                self._cannot_send(stream, e)
                return sent
            sent += size
        if sent:
            self._flush_soon()
        return sent

    def end_stream(self, stream: H2Stream) -> None:
        try:
            self._h2.end_stream(stream.stream_id)
        except ProtocolError as e:
            self._cannot_send(stream, e)
            return
        self._flush_soon()

    def acknowledge(self, stream: H2Stream, size: int) -> None:
        self._h2.acknowledge_received_data(size, stream.stream_id)
        self._flush_soon()

    def open_connection_window(self, size: int) -> None:
        """Give back ``size`` bytes of the connection's window alone (a held
        stream's data: its own window stays shut)."""
        try:
            self._h2.increment_flow_control_window(size)
        except ProtocolError:
            return  # closing: nothing more is read
        self._flush_soon()

    def open_stream_window(self, stream: H2Stream, size: int) -> None:
        """Give back ``size`` bytes of one stream's window (its held data taken)."""
        try:
            self._h2.increment_flow_control_window(size, stream.stream_id)
        except (ProtocolError, KeyError):
            return  # the stream or the connection is closing
        self._flush_soon()

    def reset_stream(self, stream: H2Stream, code: ErrorCodes) -> None:
        if self._streams.pop(stream.stream_id, None) is not None:
            self._stream_gone(stream)
        try:
            self._h2.reset_stream(stream.stream_id, code)
        except ProtocolError:
            pass  # closed both ways already
        self._flush_soon()
        if code == ErrorCodes.NO_ERROR:
            stream.released()
        else:
            stream.lost(_GONE)

    def stream_over(self, stream: H2Stream) -> None:
        """Ended both ways, its response all sent."""
        if self._streams.pop(stream.stream_id, None) is not None:
            self._stream_gone(stream)
        stream.released()

    def _stream_gone(self, stream: H2Stream) -> None:
        metrics = self.factory.metrics
        if metrics is not None:
            metrics.h2_stream(False)
        if not self._streams:
            self._idle_since = self.clock_seconds()
            if self.draining:
                self.close()

    def _pump_all(self) -> None:
        for stream in list(self._streams.values()):
            stream.pump()

    # -- write-side flow control ---------------------------------------------------

    def pauseProducing(self) -> None:
        """The client is not reading: pause every response, and read nothing
        more from it (whatever it sends would have to be answered)."""
        if self.write_paused:
            return
        self.write_paused = True
        for stream in list(self._streams.values()):
            stream.pause_producer()
        transport: Any = self.transport
        if transport is not None:
            transport.pauseProducing()

    def resumeProducing(self) -> None:
        if not self.write_paused:
            return
        self.write_paused = False
        transport: Any = self.transport
        if transport is not None and not self._closed:
            transport.resumeProducing()
        for stream in list(self._streams.values()):
            stream.resume_producer()

    # -- closing ------------------------------------------------------------------

    def drain(self) -> None:
        """GOAWAY: the streams in flight finish, no new one is taken."""
        self.draining = True
        if not self._goaway_sent and not self._closed:
            self._goaway_sent = True
            # Written here, not with h2's close_connection: h2 sends nothing
            # more on a connection once it has sent GOAWAY, and the streams
            # in flight are to finish.
            self._flush()
            goaway = GoAwayFrame(0)
            goaway.last_stream_id = self._h2.highest_inbound_stream_id
            goaway.error_code = ErrorCodes.NO_ERROR
            self._write(goaway.serialize())
        if not self._streams:
            self.close()

    def _calm(self, cause: str, code: ErrorCodes) -> None:
        """A flood: GOAWAY with ``code`` and close."""
        self.log.info(
            "HTTP/2 connection from {client} closed: {cause}", client=self.client_ip, cause=cause
        )
        if not self._goaway_sent:
            self._goaway_sent = True
            self._h2.close_connection(code)
        self._end_connection(cause)

    def _end_connection(self, cause: str) -> None:
        self._input_closed = True
        self._batching = False
        metrics = self.factory.metrics
        if metrics is not None:
            metrics.h2_goaway(cause)
        self._flush()
        self.close()

    # -- deadlines ----------------------------------------------------------------------

    def _schedule(self) -> None:
        if self._closed:
            return
        now = self.clock_seconds()
        deadline = self._next_deadline(now)
        self._timer = self.factory.clock.callLater(max(deadline - now, 0.0), self._check_deadline)

    def _next_deadline(self, now: float) -> float:
        factory = self.factory
        # A stream stalled since the last look is due no sooner than a window
        # timeout from then: looking again at least that often finds it in time.
        nearest = now + min(factory.deadline_step, self._limits.window_timeout)
        if self._block_started is not None:
            nearest = min(nearest, self._block_started + factory.header_timeout)
        if not self._streams:
            wait = factory.timeout if self._had_stream else factory.header_timeout
            return min(nearest, self._idle_since + wait)
        rate = factory.body_min_rate
        window_timeout = self._limits.window_timeout
        for stream in self._streams.values():
            exchange = stream.exchange
            if exchange is not None and not exchange.complete:
                body = exchange.started + factory.body_timeout
                if rate:
                    body += exchange.body_bytes / rate
                nearest = min(nearest, body)
            if stream.stalled_since is not None:
                nearest = min(nearest, stream.stalled_since + window_timeout)
        return nearest

    def _check_deadline(self) -> None:
        self._timer = None
        if self._closed:
            return
        factory = self.factory
        now = self.clock_seconds() + 1e-6
        metrics = factory.metrics
        if self._block_started is not None and self._block_started + factory.header_timeout <= now:
            self._timed_out("header")
            return
        if not self._streams:
            wait = factory.timeout if self._had_stream else factory.header_timeout
            if self._idle_since + wait <= now:
                self._timed_out("keepalive" if self._had_stream else "no_request")
                return
        rate = factory.body_min_rate
        window_timeout = self._limits.window_timeout
        for stream in list(self._streams.values()):
            exchange = stream.exchange
            if exchange is None:
                continue
            if not exchange.complete and not stream.body_held:
                body = exchange.started + factory.body_timeout + exchange.body_wait
                if rate:
                    body += exchange.body_bytes / rate
                if body <= now:
                    if metrics is not None:
                        metrics.client_timed_out("body")
                    if exchange.body_stream is not None and exchange.processing:
                        # A streamed body the client stopped sending: its
                        # upstream exchange is given up (408, or the stream reset).
                        exchange.stream_failed(RequestTimeout(Reason.BODY_TIMEOUT))
                    else:
                        exchange.reject(RequestTimeout(Reason.BODY_TIMEOUT))
                        exchange.discarding = True
                        stream.run_queue()
                    continue
            stalled = stream.stalled_since
            if stalled is not None and stalled + window_timeout <= now:
                if metrics is not None:
                    metrics.client_timed_out("window")
                record = exchange.record
                record.outcome = Outcome.CLIENT_TIMEOUT
                record.reason = Reason.WINDOW_TIMEOUT
                self.reset_stream(stream, ErrorCodes.CANCEL)
        self._flush()
        self._schedule()

    def _timed_out(self, deadline: str) -> None:
        metrics = self.factory.metrics
        if metrics is not None:
            metrics.client_timed_out(deadline)
        if not self._goaway_sent:
            self._goaway_sent = True
            self._h2.close_connection(ErrorCodes.NO_ERROR)
        self._input_closed = True
        self._flush()
        self.close()

    def connectionLost(self, reason: Failure = _GONE) -> None:
        self._closed = True
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()
        streams, self._streams = self._streams, {}
        metrics = self.factory.metrics
        for stream in streams.values():
            if metrics is not None:
                metrics.h2_stream(False)
            stream.lost(reason)
        if metrics is not None:
            metrics.h2_connection(False)
        super().connectionLost(reason)


_HANDLERS: dict[type, Callable[[H2Channel, Any], None]] = {
    RequestReceived: H2Channel._on_request,
    DataReceived: H2Channel._on_data,
    StreamEnded: H2Channel._on_stream_ended,
    StreamReset: H2Channel._on_reset,
    WindowUpdated: H2Channel._on_window,
    RemoteSettingsChanged: H2Channel._on_settings,
    PingReceived: H2Channel._on_control,
    PriorityUpdated: H2Channel._on_priority,
    ConnectionTerminated: H2Channel._on_goaway,
}
