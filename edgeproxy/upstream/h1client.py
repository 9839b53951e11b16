"""
A lean HTTP/1.1 client with a persistent connection pool, for the
forwarding path.

Agent's generality (any body producer, pipelining hooks, a line-based
parser written in Python) costs more than the proxy does; this client does
one thing: send a request head (and a spooled body, or one streamed as it
arrives: :class:`BodySource`) on a pooled connection and hand back the
response head as soon as it is parsed, the body streaming through
``deliverBody`` with backpressure.  Parsing is llhttp's (Node.js's parser,
through ``httptools``), as the tokenizer; the framing decisions are
:mod:`edgeproxy.core.framing`'s (``response_framing``,
``response_keep_alive``), strict because an upstream response that frames
differently from what we think would desynchronise a pooled connection:

- a ``Transfer-Encoding`` other than exactly ``chunked``, ``Content-Length``
  together with ``Transfer-Encoding``, several ``Content-Length``s, invalid
  chunk framing, a head over ``max_response_head_bytes``
  (:class:`~edgeproxy.core.protocol.HTTPLimits`), a version other than
  HTTP/1.0 or 1.1, ``101 Switching Protocols`` to a request that did not
  ask to upgrade: the response fails and the connection is closed;
- ``101 Switching Protocols`` is accepted only for a request sent as an
  upgrade (``send(..., on_upgrade=...)``) and only with an ``Upgrade``
  header: the connection then leaves the pool for good and is handed over,
  with whatever followed the 101 head, as an :class:`UpgradedConnection`
  (the proxy splices it to the client's);
- a connection goes back to the pool only after a complete response with
  keep-alive semantics (HTTP/1.1 without ``Connection: close``, framed by
  length or chunks, the request fully written) and only if nothing at all
  followed the response: a byte after it (a body sent with a ``HEAD``
  answer, a second response) closes the connection instead.  A 204 or 304
  whose head announces a body (``Content-Length`` above 0,
  ``Transfer-Encoding``) closes the connection too: were the upstream to
  send that body after all, in a later segment, it would be read as the
  next request's response.  (A HEAD answer's ``Content-Length`` is normal:
  it describes the GET body.)
- a pooled connection closed by the upstream before any byte of the
  response arrived is retried once on a fresh connection for idempotent
  methods (as Agent does).

Only the injected reactor is used: ``connectTCP`` (IP literals) or a
``HostnameEndpoint`` (names), and ``callLater`` for every timer.  Failures
are :mod:`edgeproxy.core.errors` types.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence
from typing import IO, Any
from typing import Protocol as TypingProtocol

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser
from OpenSSL import SSL
from twisted.internet import error as ierror
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import (
    IConnector,
    IDelayedCall,
    IHandshakeListener,
    IProtocol,
    IPullProducer,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from zope.interface import implementer

from edgeproxy.config import Endpoint
from edgeproxy.core.addresses import is_ip_literal
from edgeproxy.core.errors import (
    UpstreamConnectFailed,
    UpstreamResponseFailed,
    UpstreamTimeout,
)
from edgeproxy.core.framing import (
    CHUNKED,
    UNTIL_CLOSE,
    Framing,
    response_framing,
    response_keep_alive,
)
from edgeproxy.core.headers import HOP_BY_HOP
from edgeproxy.core.protocol import HTTPLimits
from edgeproxy.core.retry import IDEMPOTENT_METHODS
from edgeproxy.net.clienttls import ClientTLS
from edgeproxy.net.endpoints import set_no_delay
from edgeproxy.net.failures import upstream_error

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_IDLE_PER_ENDPOINT",
    "IDEMPOTENT_METHODS",
    "BodySink",
    "BodySource",
    "H1Response",
    "TunnelSide",
    "UpgradedConnection",
    "UpstreamClient",
]

#: Idle upstream connections kept per endpoint.
DEFAULT_MAX_IDLE_PER_ENDPOINT = 64
#: Seconds an idle pooled upstream connection is kept (backends often close at 60-75 s).
DEFAULT_IDLE_TIMEOUT = 50.0

_RESPONSE_DONE = Failure(ResponseDone("Response body fully received"))
#: The body protocol of a response whose body was taken whole (whole_body).
_DELIVERED: IProtocol = Protocol()
# What on_header keeps out of the relayed headers: the hop-by-hop ones (RFC
# 9110 7.6.1), and Content-Length, which is framing and handled apart (kept
# for HEAD, where it describes the representation).
_FRAMING = HOP_BY_HOP | {b"content-length"}
_METHOD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET_FORBIDDEN = re.compile(rb"[\x00-\x20\x7f]")
#: What a reason phrase may not hold (RFC 9112 4: HTAB, SP, VCHAR, obs-text);
#: llhttp refuses only CR and LF in it, and the phrase is relayed to the client.
_PHRASE_FORBIDDEN = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_HOST_LINE = re.compile(rb"\r\nhost:", re.IGNORECASE)
_COLON_SPACE = b": "
# Connection tokens that name no header kept anyway ("close", or the
# hop-by-hop Keep-Alive): the usual "Connection: keep-alive" filters nothing.
_NAMELESS_TOKENS = frozenset({b"close", b"keep-alive"})


#: The parser of every closed connection (it never parses again; no callbacks).
_CLOSED_PARSER = HttpResponseParser(object())

#: Called with an interim (1xx) response's status, reason phrase and
#: end-to-end headers as ``(lower-case name, b"Name: value")``.
InformationalCallback = Callable[[int, bytes, list[tuple[bytes, bytes]]], object]


class TunnelSide(TypingProtocol):
    """Where an upgraded connection's input goes (:class:`edgeproxy.proxy.tunnel.Tunnel`)."""

    def upstream_data(self, data: bytes) -> None: ...
    def upstream_lost(self, reason: Failure) -> None: ...


class _ProtocolViolation(Exception):
    """The upstream's response cannot be trusted (raised inside parser callbacks)."""


class _Trailing(Exception):
    """Bytes followed the complete response (raised inside parser callbacks)."""


def _host_value(endpoint: Endpoint) -> bytes:
    host = endpoint.host
    if ":" in host:
        host = f"[{host}]"
    if endpoint.port == 80:
        return host.encode("ascii")
    return f"{host}:{endpoint.port}".encode("ascii")


@implementer(IResponse)
class H1Response:
    """The parts of ``IResponse`` the forwarder uses; the body streams through
    :meth:`deliverBody`."""

    request: Any = None
    previousResponse: IResponse | None = None

    def __init__(
        self,
        exchange: _Exchange,
        version: tuple[bytes, int, int],
        code: int,
        phrase: bytes,
        header_fields: list[tuple[bytes, bytes]],
        length: int | object,
    ) -> None:
        self.version = version
        self.code = code
        self.phrase = phrase
        #: End-to-end headers as ``(lower-case name, b"Name: value")``, one
        #: per line, in order, hop-by-hop ones removed: the line as it goes
        #: on, and its name lower-cased once, while parsing, for whoever
        #: filters them next.
        self.header_fields = header_fields
        self.length = length
        self._exchange = exchange

    @property
    def header_pairs(self) -> list[tuple[bytes, bytes]]:
        """End-to-end headers as ``(name, value)`` lines, in order."""
        pairs = []
        for _lname, line in self.header_fields:
            name, _, value = line.partition(b": ")
            pairs.append((name, value))
        return pairs

    @property
    def headers(self) -> Headers:
        """:attr:`header_pairs` as twisted's ``Headers`` (built on demand)."""
        headers = Headers()
        for name, value in self.header_pairs:
            headers.addRawHeader(name, value)
        return headers

    def deliverBody(self, protocol: IProtocol) -> None:
        self._exchange.deliver_body(protocol)

    def whole_body(self) -> bytes | None:
        """The body, if all of it arrived with the head and cleanly ended;
        else None, and it streams through :meth:`deliverBody` as usual."""
        return self._exchange.whole_body()

    def setPreviousResponse(self, response: IResponse) -> None:
        self.previousResponse = response


class UpgradedConnection:
    """An upstream connection that answered ``101 Switching Protocols``: out
    of the pool for good, read no more until :meth:`attach`.  ``rest`` is
    what followed the 101 head in the same read (the new protocol's first
    bytes)."""

    def __init__(
        self,
        conn: _Connection,
        phrase: bytes,
        header_fields: list[tuple[bytes, bytes]],
        upgrade: bytes,
        rest: bytes,
    ) -> None:
        self._conn: _Connection | None = conn
        self.phrase = phrase
        #: End-to-end headers of the 101, as :attr:`H1Response.header_fields`.
        self.header_fields = header_fields
        #: The protocol(s) the upstream switched to (its ``Upgrade`` value).
        self.upgrade = upgrade
        self.rest = rest

    @property
    def transport(self) -> Any:
        conn = self._conn
        return conn.transport if conn is not None else None

    def attach(self, tunnel: TunnelSide) -> None:
        """From now on the connection's input and its loss go to ``tunnel``."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.attach(tunnel)

    def abort(self) -> None:
        """Nobody takes it over (the client went away): close it."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort()


@implementer(IPushProducer)
class _BodyTransport:
    """What ``deliverBody``'s protocol sees as its transport: the upstream
    socket while this response's body is being read, a no-op afterwards (the
    connection may serve another request by then)."""

    def __init__(self, exchange: _Exchange) -> None:
        self._exchange = exchange

    def pauseProducing(self) -> None:
        conn = self._exchange.body_connection()
        if conn is not None:
            conn.consumer_pause()

    def resumeProducing(self) -> None:
        conn = self._exchange.body_connection()
        if conn is not None:
            conn.consumer_resume()

    def stopProducing(self) -> None:
        conn = self._exchange.body_connection()
        if conn is not None:
            # The body is unread: the connection cannot be reused.
            self._exchange.stopped = True
            conn.stop()


@implementer(IPullProducer)
class _BodyWriter:
    """Streams a spooled request body from its file as the socket drains."""

    def __init__(self, conn: _Connection, body: IO[bytes], remaining: int, chunk: int) -> None:
        self._conn = conn
        self._body = body
        self._remaining = remaining
        self._chunk = chunk
        self._stopped = False

    def resumeProducing(self) -> None:
        if self._stopped:
            return
        chunk = self._body.read(min(self._chunk, self._remaining))
        conn = self._conn
        if not chunk:
            # The spooled body is shorter than announced: the framing is lost.
            self._stopped = True
            conn.body_written(False)
            return
        self._remaining -= len(chunk)
        conn.write(chunk)
        if self._remaining <= 0:
            self._stopped = True
            conn.body_written(True)

    def stopProducing(self) -> None:
        self._stopped = True


class BodySink(TypingProtocol):
    """Where a :class:`BodySource` pushes its body: an upstream connection's
    writer while the request is being sent."""

    def data(self, data: bytes) -> None: ...
    def end(self) -> None: ...


class BodySource:
    """A request body sent as it arrives (a route's ``request_buffering=False``)
    rather than from a spool: the proxy's side implements it.

    The connection that sends the request calls :meth:`connect` once, with
    its writer; the source pushes each piece with ``sink.data`` and ends with
    ``sink.end()``.  The writer is the upstream transport's push producer:
    a full socket buffer calls :meth:`pauseProducing` (the source stops
    reading its client) and a drained one :meth:`resumeProducing`.
    :meth:`stopProducing` says the connection takes no more (the response
    ended first, the exchange was cancelled or failed); the source lets go
    of the sink then.  Once :attr:`started`, the body cannot be sent again:
    neither this client nor its caller retries it."""

    #: The body's length when known (``Content-Length`` upstream); None:
    #: unknown, sent chunked.
    length: int | None = None
    #: Some of it was handed to a connection.
    started: bool = False

    def connect(self, sink: BodySink) -> None:
        raise NotImplementedError

    def pauseProducing(self) -> None:
        raise NotImplementedError

    def resumeProducing(self) -> None:
        raise NotImplementedError

    def stopProducing(self) -> None:
        raise NotImplementedError


@implementer(IPushProducer)
class _StreamWriter:
    """Writes a streamed request body on its connection as the source pushes
    it (chunk-encoded when its length is unknown); the upstream transport's
    push producer, so a full socket buffer pauses the source."""

    __slots__ = ("_chunked", "_conn", "_exchange", "_left", "_source", "paused")

    def __init__(self, conn: _Connection, exchange: _Exchange, source: BodySource) -> None:
        self._conn: _Connection | None = conn
        self._exchange: _Exchange | None = exchange
        self._source: BodySource | None = source
        self._chunked = source.length is None
        #: What the Content-Length sent still promises (unused when chunked).
        self._left = source.length or 0
        self.paused = False

    def start(self) -> None:
        source = self._source
        assert source is not None
        source.started = True
        source.connect(self)

    def data(self, data: bytes) -> None:
        conn = self._conn
        if conn is None or not data:
            return
        exchange = self._exchange
        if exchange is not None:
            exchange.body_progress()
        if self._chunked:
            conn.write(b"%x\r\n%s\r\n" % (len(data), data))
            return
        self._left -= len(data)
        if self._left < 0:
            # More than the Content-Length sent: the excess would be read
            # upstream as another request (the client's framing is checked
            # before; this is the backstop).
            self._broken()
            return
        conn.write(data)

    def end(self) -> None:
        conn = self._conn
        if conn is None:
            return
        if self._chunked:
            conn.write(b"0\r\n\r\n")
        elif self._left:
            # Less than the Content-Length sent: the connection would wait
            # for the rest, or take the next request as it.
            self._broken()
            return
        exchange = self._exchange
        self._release()
        if exchange is not None:
            exchange.body_progress()
        conn.body_written(True)

    def _broken(self) -> None:
        """The body does not match the length sent: the exchange fails and
        the connection is closed, never reused."""
        conn = self._conn
        source = self._source
        self._release()
        if source is not None:
            source.stopProducing()
        if conn is not None:
            conn.body_written(False)

    def _release(self) -> None:
        # Each refers back (connection -> writer, source -> writer): let go.
        self._conn = self._exchange = self._source = None

    # IPushProducer, for the upstream transport:

    def pauseProducing(self) -> None:
        self.paused = True
        if self._source is not None:
            self._source.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        exchange = self._exchange
        if exchange is not None:
            exchange.body_progress()
        if self._source is not None:
            self._source.resumeProducing()

    def stopProducing(self) -> None:
        source = self._source
        self._release()
        if source is not None:
            source.stopProducing()

    def flowing(self) -> bool:
        """Sending, and the upstream takes what comes: what is awaited is the client."""
        return self._conn is not None and not self.paused


class _Exchange:
    """One request: its callbacks, deadline, head and body delivery."""

    #: An upgrade request's taker of a 101 (:class:`_UpgradeExchange`); a
    #: class attribute here, so other requests pay nothing for it.
    on_upgrade: Callable[[UpgradedConnection], object] | None = None

    __slots__ = (
        "answered",
        "body",
        "body_length",
        "chunks",
        "client",
        "conn",
        "connect_timeout",
        "connecting",
        "deadline",
        "endpoint",
        "finished",
        "head",
        "lost_delivered",
        "method",
        "on_error",
        "on_informational",
        "on_response",
        "protocol",
        "response_timeout",
        "retried",
        "stopped",
        "timer",
        "waiting_for_head",
    )

    #: Seconds the response head may take (set by ``send``).
    response_timeout: float

    def __init__(
        self,
        client: UpstreamClient,
        endpoint: Endpoint,
        method: bytes,
        head: bytes,
        body: IO[bytes] | BodySource | None,
        body_length: int,
        connect_timeout: float,
        on_response: Callable[[H1Response], object],
        on_error: Callable[[Failure], object],
        on_informational: InformationalCallback | None = None,
    ) -> None:
        self.client = client
        self.endpoint = endpoint
        self.method = method
        self.head = head
        self.body = body
        self.body_length = body_length
        self.connect_timeout = connect_timeout
        # The head (or the failure) goes to one of these; both are let go of
        # once either is used: they refer back to this exchange (through
        # the caller, which holds it), and that cycle would leave every
        # request's objects to the garbage collector instead of reference
        # counting.
        self.on_response: Callable[[H1Response], object] | None = on_response
        self.on_error: Callable[[Failure], object] | None = on_error
        self.on_informational = on_informational
        self.waiting_for_head = True
        #: When the response head is due (reactor time); set when sent.
        self.deadline = 0.0
        #: The exchange's own response timer: while it connects, or on a fresh
        #: connection.  On a pooled connection the connection's timer watches
        #: the deadline instead (see _Connection.watch_head).
        self.timer: IDelayedCall | None = None
        self.conn: _Connection | None = None
        self.connecting: _Connecting | None = None
        self.retried = False
        # Whether the head was handed over (not the response itself: the
        # response refers to this exchange, and the cycle would outlive it).
        self.answered = False
        # Body delivery: chunks wait here until deliverBody; finished is the
        # Failure the body protocol's connectionLost gets, once known.
        self.protocol: IProtocol | None = None
        self.chunks: list[bytes] = []
        self.finished: Failure | None = None
        self.lost_delivered = False
        self.stopped = False
        #: (``response_timeout``, the seconds the head may take, is set by
        #: ``send``; a streamed body's timing counts from its last move.)

    # -- the head ------------------------------------------------------------

    def waiting(self) -> bool:
        """Still waiting for the response head (not failed, cancelled or answered)."""
        return self.waiting_for_head

    def fail(self, error: Exception) -> None:
        if not self.waiting_for_head:
            return
        self.waiting_for_head = False
        self._stop_timer()
        on_error = self.on_error
        self.on_response = self.on_error = self.on_informational = None
        assert on_error is not None
        on_error(Failure(error))

    def respond(self, response: H1Response) -> None:
        self.answered = True
        self.waiting_for_head = False
        self._stop_timer()
        on_response = self.on_response
        self.on_response = self.on_error = self.on_informational = None
        assert on_response is not None
        on_response(response)

    def cancel(self) -> None:
        """The caller went away before the head arrived: neither callback will
        be called; the connection is closed."""
        if not self.waiting_for_head:
            return
        self.waiting_for_head = False
        self.on_response = self.on_error = self.on_informational = None
        self._stop_timer()
        self._abandon()

    def _stop_timer(self) -> None:
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def timeout(self) -> None:
        self.timer = None
        if not self.waiting():
            return
        left = self.time_left()
        if left > 0:
            self.timer = self.client.reactor.callLater(left, self.timeout)
            return
        self._abandon()
        self.fail(UpstreamTimeout())

    def time_left(self) -> float:
        """Seconds until the response head is due.  For a streamed body the
        deadline runs only while edgeproxy waits on the upstream: from the
        body's last write, or while the upstream takes none of it; while the
        upstream takes what comes, it is the client that is awaited (the
        client's body deadline governs that)."""
        now = self.client.reactor.seconds()
        conn = self.conn
        writer = conn.writer if conn is not None else None
        if isinstance(writer, _StreamWriter) and writer.flowing():
            self.deadline = now + self.response_timeout
        return self.deadline - now

    def body_progress(self) -> None:
        """A streamed body moved (written, resumed, or ended): the response
        deadline counts from now."""
        self.deadline = self.client.reactor.seconds() + self.response_timeout

    def _abandon(self) -> None:
        connecting, self.connecting = self.connecting, None
        if connecting is not None:
            connecting.abandon()
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()

    # -- the body --------------------------------------------------------------

    def body_connection(self) -> _Connection | None:
        """The connection while this response's body is still being read from it."""
        conn = self.conn
        if conn is None or self.finished is not None or self.stopped:
            return None
        return conn

    def deliver_body(self, protocol: IProtocol) -> None:
        if self.protocol is not None:
            raise RuntimeError("deliverBody called twice")
        self.protocol = protocol
        protocol.makeConnection(_BodyTransport(self))  # type: ignore[arg-type]
        chunks, self.chunks = self.chunks, []
        for chunk in chunks:
            if self.stopped or self.lost_delivered:
                return
            protocol.dataReceived(chunk)
        if self.lost_delivered:
            return
        if self.finished is not None:
            self.lost_delivered = True
            protocol.connectionLost(self.finished)
            return
        conn = self.conn
        if conn is not None:
            conn.body_consumer_ready()

    def whole_body(self) -> bytes | None:
        if self.protocol is not None or self.finished is not _RESPONSE_DONE:
            return None
        # Delivered here, not through a protocol: deliverBody must not follow.
        self.protocol = _DELIVERED
        self.lost_delivered = True
        chunks, self.chunks = self.chunks, []
        return b"".join(chunks)

    def body_data(self, data: bytes) -> None:
        protocol = self.protocol
        if protocol is None:
            self.chunks.append(data)
        elif not self.stopped:
            protocol.dataReceived(data)

    def body_done(self, reason: Failure) -> None:
        if self.finished is not None:
            return
        self.finished = reason
        self.conn = None
        protocol = self.protocol
        if protocol is not None and not self.lost_delivered:
            self.lost_delivered = True
            # Let go of the body's protocol: its transport refers back here.
            self.protocol = _DELIVERED
            protocol.connectionLost(reason)


class _UpgradeExchange(_Exchange):
    """An upgrade request (``Connection: upgrade``): a 101 is its answer too."""

    __slots__ = ("on_upgrade",)

    def switched(self, upgraded: UpgradedConnection) -> None:
        """A 101 answered this upgrade request: ``upgraded`` goes to ``on_upgrade``."""
        self.answered = True
        self.waiting_for_head = False
        self._stop_timer()
        on_upgrade = self.on_upgrade
        self.on_response = self.on_error = self.on_informational = None
        self.on_upgrade = None
        assert on_upgrade is not None
        on_upgrade(upgraded)


def _nothing() -> None:
    pass


class _Connecting(ClientFactory):
    """One TCP connection attempt for an exchange."""

    noisy = False

    def __init__(self, client: UpstreamClient, exchange: _Exchange) -> None:
        self._client = client
        self._key = str(exchange.endpoint)
        self._exchange: _Exchange | None = exchange
        self._connector: IConnector | None = None
        self._attempt: Deferred[Any] | None = None
        #: Twisted's socket being connected (IP literals; see clientConnectionFailed).
        self._socket: Any = None
        #: A TLS connection whose TCP connection is up, in its handshake, and
        #: the timer that holds the handshake to what is left of connect_timeout.
        self._handshaking: _TLSConnection | None = None
        self._handshake_timer: IDelayedCall | None = None
        self._started = 0.0

    def start(self) -> None:
        exchange = self._exchange
        assert exchange is not None
        endpoint = exchange.endpoint
        reactor: Any = self._client.reactor
        tls = self._client.tls
        factory: Any = self
        if tls is not None:
            self._started = reactor.seconds()
            # (A WrappingFactory: connection failures reach this factory.)
            factory = TLSMemoryBIOFactory(
                tls.creator_for(endpoint.host, endpoint.port), True, self
            )
            factory.noisy = False
        if is_ip_literal(endpoint.host):
            connector = reactor.connectTCP(
                endpoint.host, endpoint.port, factory, timeout=exchange.connect_timeout
            )
            self._connector = connector
            self._socket = getattr(connector, "transport", None)
        else:
            ep = HostnameEndpoint(
                reactor, endpoint.host, endpoint.port, timeout=exchange.connect_timeout
            )
            d = ep.connect(factory)
            self._attempt = d
            d.addErrback(self._endpoint_failed)

    def buildProtocol(self, addr: Any) -> _Connection:
        if self._client.tls is not None:
            return _TLSConnection(self._client, self._key, self)
        return _Connection(self._client, self._key, self)

    def tcp_connected(self, conn: _TLSConnection) -> None:
        """A TLS connection's TCP connection is up; its handshake follows."""
        self._connector = None
        self._attempt = None
        self._socket = None
        self._handshaking = conn
        exchange = self._exchange
        if exchange is not None:
            reactor: Any = self._client.reactor
            left = self._started + exchange.connect_timeout - reactor.seconds()
            self._handshake_timer = reactor.callLater(max(0.0, left), self._handshake_timed_out)

    def _handshake_timed_out(self) -> None:
        """connect_timeout covers the TLS handshake too: a backend that takes
        the TCP connection and says nothing is a connect timeout."""
        self._handshake_timer = None
        handshaking, self._handshaking = self._handshaking, None
        self._failed(Failure(ierror.TimeoutError()))
        if handshaking is not None:
            handshaking.abort()

    def _stop_handshake_timer(self) -> None:
        timer, self._handshake_timer = self._handshake_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def connected(self, conn: _Connection) -> None:
        """The TCP handshake finished: send the request, or close if nobody waits."""
        exchange, self._exchange = self._exchange, None
        self._connector = None
        self._attempt = None
        self._socket = None
        self._handshaking = None
        self._stop_handshake_timer()
        if exchange is None or not exchange.waiting():
            conn.abort()
            return
        exchange.connecting = None
        conn.start(exchange, reused=False)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        # The connector refers to this factory: no cycle through it.
        self._connector = None
        sock, self._socket = self._socket, None
        if sock is not None and "doRead" in vars(sock):
            # While connecting, Twisted's client socket points its doRead and
            # doWrite at its own doConnect (bound methods: a cycle), and only
            # a successful connect takes them away.  After a failure doConnect
            # does nothing; neither does this (the reactor may still call one
            # in the event being handled).
            sock.doRead = sock.doWrite = _nothing
        self._failed(reason)

    def _endpoint_failed(self, reason: Failure) -> None:
        self._attempt = None
        self._failed(reason)

    def handshake_failed(self, reason: Failure) -> None:
        """A TLS connection was lost before its handshake completed."""
        self._handshaking = None
        self._stop_handshake_timer()
        self._failed(reason)

    def _failed(self, reason: Failure) -> None:
        exchange, self._exchange = self._exchange, None
        if exchange is None or not exchange.waiting():
            return
        exchange.connecting = None
        exchange.fail(upstream_error(reason, connecting=True))

    def abandon(self) -> None:
        """The exchange gave up (timeout, cancel): stop connecting."""
        self._exchange = None
        connector, self._connector = self._connector, None
        if connector is not None:
            connector.stopConnecting()
        attempt, self._attempt = self._attempt, None
        if attempt is not None:
            attempt.cancel()
        self._stop_handshake_timer()
        handshaking, self._handshaking = self._handshaking, None
        if handshaking is not None:
            handshaking.abort()


class _State(enum.Enum):
    """Where an upstream connection is in its request/response cycle."""

    #: No exchange: connecting for its first one, or idle in the pool.
    IDLE = "idle"
    #: The request went out (its body may still be being written); nothing
    #: of the response yet, or fewer than the 7 bytes of its ``HTTP/1.``
    #: (kept in ``_prefix``).
    SENT = "sent"
    #: Reading a response head, interim (1xx) or final.
    HEAD = "head"
    #: An interim (1xx) head is parsed; the next head follows.
    INTERIM = "interim"
    #: The final head is parsed and handed on; reading its body.
    BODY = "body"
    #: The final response is complete; the exchange is being finished.
    DONE = "done"
    #: Switched protocols after a 101: out of the pool, spliced to a client.
    UPGRADED = "upgraded"
    #: The connection is gone (``connectionLost``).
    CLOSED = "closed"


# The hot path compares with these (one global load each).
_IDLE, _SENT, _HEAD, _INTERIM, _BODY, _DONE, _UPGRADED, _CLOSED = _State

#: Every move a connection makes, as h11's ``_state.py``: (state, what
#: happens) -> next state.  Each assignment of ``_state`` below is one of
#: these (tests/test_upstream_states.py checks that, and that each happens);
#: the connection can be lost in any state.  A failure that rules out reuse
#: (``_reusable``) is a verdict kept apart, not a state: the connection still
#: runs through these states until it is closed.
_TRANSITIONS: dict[tuple[_State, str], _State] = {
    (_IDLE, "start"): _SENT,  # start(): the request goes out
    (_SENT, "prefix"): _HEAD,  # the response begins with "HTTP/1."
    (_HEAD, "interim head"): _INTERIM,  # on_headers_complete of a 1xx
    (_INTERIM, "interim end"): _HEAD,  # on_message_complete of that 1xx
    (_HEAD, "final head"): _BODY,  # on_headers_complete, a body follows
    (_HEAD, "final head, no body"): _DONE,  # ... none does (HEAD, 204, 304)
    (_BODY, "body end"): _DONE,  # on_message_complete, or _raw_body's last byte
    (_DONE, "message end"): _DONE,  # llhttp's own end of a bodiless response
    (_DONE, "released"): _IDLE,  # _finish_exchange: pooled, or about to close
    (_DONE, "switched"): _UPGRADED,  # _switch: a 101 to an upgrade request
    **{(state, "lost"): _CLOSED for state in _State},  # connectionLost
}


class _Connection(Protocol):
    """One upstream connection: idle in the pool or serving one exchange.

    Its progress through a request and response is one :class:`_State`
    (``_state``); besides it, a few flags that are not stages: whether it may
    be reused (``_reusable``, once false for good), whether the request is
    written whole, and who paused reading."""

    #: After a 101: where the input goes (:meth:`attach`).
    _tunnel: TunnelSide | None = None
    #: A 101's response while llhttp finishes with its head (see _switch).
    _switching: UpgradedConnection | None = None
    #: The ``Upgrade`` value of the head being parsed, with that head's
    #: header list (which tells a stale value from a fresh one for free).
    _upgrade_header: tuple[list[tuple[bytes, bytes]], bytes] | None = None

    def __init__(self, client: UpstreamClient, key: str, factory: _Connecting | None) -> None:
        self.key = key
        self.idle_since = 0.0
        self.lost: Deferred[None] | None = None
        self._client = client
        self._factory = factory
        self._parser = HttpResponseParser(self)
        self._exchange: _Exchange | None = None
        self._reusable = True  # false once anything rules out another request
        self._reused = False  # the current exchange came to an idle pooled connection
        self._paused = False
        self._writer: _BodyWriter | _StreamWriter | None = None
        self._request_written = False
        self._head_timer: IDelayedCall | None = None
        # Checked on every read, so kept here rather than looked up.
        self._max_head_bytes = client.limits.max_response_head_bytes

        # Set while the first bytes of a response are fewer than its "HTTP/1.".
        self._prefix = b""
        # The final head's framing (set before anything reads it).
        self._framing: Framing = 0
        self._phrase = b""
        self._reset_message_state()

    def _reset_message_state(self) -> None:
        self._state = _IDLE
        self._consumer_paused = False
        # Bytes read since parsing last got somewhere that llhttp does not
        # hold on to: the heads so far (1xx ones included), then since the
        # last body bytes (trailers, chunk extensions).
        self._pending_bytes = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._connection_tokens: list[bytes] | None = None
        self._content_length: bytes | None = None
        self._transfer_encoding: bytes | None = None
        self._response: H1Response | None = None
        # Content-Length body bytes not yet seen, and how many of them are
        # read past llhttp (see _raw_body).
        self._length_left = 0
        self._raw_left = 0

    # -- life cycle --------------------------------------------------------------

    def connectionMade(self) -> None:
        transport: Any = self.transport
        set_no_delay(transport)
        if hasattr(transport, "bufferSize"):
            # Larger reads: a big body costs fewer trips through the parser
            # and the relay (Twisted reads 64 KiB at a time by default).
            transport.bufferSize = self._client.limits.upstream_read_size
        factory, self._factory = self._factory, None
        if factory is not None:
            factory.connected(self)

    def start(self, exchange: _Exchange, *, reused: bool) -> None:
        """Send ``exchange``'s request on this (fresh or pooled) connection."""
        self._exchange = exchange
        exchange.conn = self
        self._reused = reused
        self._state = _SENT
        transport: Any = self.transport
        body = exchange.body
        if body is None:
            self._request_written = True
            transport.write(exchange.head)
            return
        if isinstance(body, BodySource):
            self._start_stream(exchange, body)
            return
        body.seek(0)
        length = exchange.body_length
        chunk = self._client.limits.upstream_body_chunk
        if length <= chunk:
            data = body.read(length)
            if len(data) != length:
                self._request_written = False
                self._reusable = False
                exchange.fail(UpstreamConnectFailed())
                self.abort()
                return
            self._request_written = True
            transport.write(exchange.head + data)
            return
        self._request_written = False
        transport.write(exchange.head)
        self._writer = _BodyWriter(self, body, length, chunk)
        transport.registerProducer(self._writer, False)

    def _start_stream(self, exchange: _Exchange, source: BodySource) -> None:
        """Send the head, then the body as its source pushes it; a full
        socket buffer pauses the source (the writer is the transport's push
        producer)."""
        self._request_written = False
        if source.started:
            # A body already (partly) sent elsewhere cannot be sent again.
            self._reusable = False
            exchange.fail(UpstreamResponseFailed())
            self.abort()
            return
        transport: Any = self.transport
        transport.write(exchange.head)
        writer = self._writer = _StreamWriter(self, exchange, source)
        transport.registerProducer(writer, True)
        writer.start()

    def write(self, data: bytes) -> None:
        transport: Any = self.transport
        transport.write(data)

    @property
    def writer(self) -> _BodyWriter | _StreamWriter | None:
        """The request body's writer while it is being sent."""
        return self._writer

    def body_written(self, whole: bool) -> None:
        writer, self._writer = self._writer, None
        if writer is not None and self._state is not _CLOSED:
            transport: Any = self.transport
            transport.unregisterProducer()
        if whole:
            self._request_written = True
            return
        self._reusable = False
        exchange = self._exchange
        if exchange is not None:
            exchange.fail(UpstreamResponseFailed())
        self.abort()

    def _stop_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.stopProducing()
            if self._state is not _CLOSED:
                transport: Any = self.transport
                transport.unregisterProducer()

    def is_usable(self) -> bool:
        transport: Any = self.transport
        return (
            self._state is _IDLE
            and self._reusable
            and transport is not None
            and not transport.disconnecting
        )

    def watch_head(self, response_timeout: float) -> None:
        """Time the head of the exchange about to start on this pooled connection.

        One timer per connection, moved on for each exchange and left running
        when the head arrives: on a busy connection each request then costs
        a ``reset`` (a later time is only recorded until the timer comes due)
        instead of a new ``DelayedCall`` and its cancellation."""
        timer = self._head_timer
        if timer is not None and timer.active():
            timer.reset(response_timeout)
        else:
            self._head_timer = self._client.reactor.callLater(
                response_timeout, self._head_timer_due
            )

    def _head_timer_due(self) -> None:
        self._head_timer = None
        exchange = self._exchange
        if exchange is None or exchange.timer is not None or not exchange.waiting():
            return
        left = exchange.time_left()
        if left > 0:
            self.watch_head(left)
        else:
            exchange.timeout()

    def _stop_head_timer(self) -> None:
        timer, self._head_timer = self._head_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def abort(self) -> None:
        """Close at once; nothing more is expected from this connection."""
        self._reusable = False
        self._stop_head_timer()
        self._stop_writer()
        exchange, self._exchange = self._exchange, None
        if exchange is not None and exchange.answered:
            exchange.body_done(Failure(ResponseFailed([Failure(ierror.ConnectionAborted())])))
        if exchange is not None:
            exchange.conn = None
        if self._state is _CLOSED:
            return
        transport: Any = self.transport
        if transport is None:
            return
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            transport.loseConnection()

    def close(self) -> None:
        """Close an idle connection politely."""
        self._reusable = False
        self._stop_head_timer()
        if self._state is not _CLOSED and self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        state, self._state = self._state, _CLOSED
        self._reusable = False
        self._stop_head_timer()
        writer, self._writer = self._writer, None
        if isinstance(writer, _StreamWriter):
            # The streamed body's source lets go of its sink.
            writer.stopProducing()
        # The parser refers back to this connection: no cycle left for the GC.
        self._parser = _CLOSED_PARSER
        self._response = None
        # Twisted's TCP client socket and its connector refer to each other
        # for good once connected (only a failed attempt unlinks them), and
        # everything of this connection hangs off that cycle: unlink them.
        connector = getattr(self.transport, "connector", None)
        if connector is not None:
            connector.transport = None
        self._client._forget(self)
        lost, self.lost = self.lost, None
        exchange, self._exchange = self._exchange, None
        if exchange is not None:
            self._exchange_lost(exchange, reason, state)
        self._switching = None
        tunnel = self._tunnel
        if tunnel is not None:
            self._tunnel = None
            tunnel.upstream_lost(reason)
        if lost is not None:
            lost.callback(None)

    def _exchange_lost(self, exchange: _Exchange, reason: Failure, state: _State) -> None:
        if not exchange.answered:
            if not exchange.waiting():
                return
            exchange.conn = None
            if (
                self._reused
                and state is _SENT
                and not self._prefix
                and not exchange.retried
                and exchange.method in IDEMPOTENT_METHODS
                and not isinstance(exchange.body, BodySource)
            ):
                # A pooled connection the upstream had closed: try once afresh.
                exchange.retried = True
                self._client._connect(exchange)
                return
            exchange.fail(UpstreamResponseFailed())
            return
        if state is _DONE:
            exchange.body_done(_RESPONSE_DONE)
        elif self._framing == UNTIL_CLOSE:
            exchange.body_done(Failure(PotentialDataLoss()))
        else:
            exchange.body_done(Failure(ResponseFailed([reason])))

    # -- backpressure from the body's consumer ------------------------------------------

    def pause(self) -> None:
        if not self._paused and self._state is not _CLOSED:
            self._paused = True
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def resume(self) -> None:
        if self._paused and self._state is not _CLOSED:
            self._paused = False
            self.transport.resumeProducing()  # type: ignore[union-attr]

    def stop(self) -> None:
        """The body's consumer wants no more: the connection cannot be reused."""
        self._reusable = False
        self._stop_writer()
        exchange, self._exchange = self._exchange, None
        if exchange is not None:
            exchange.conn = None
        if self._state is not _CLOSED:
            self._paused = False
            self.transport.stopProducing()  # type: ignore[union-attr]
            # A TCP transport closes when stopped; make sure of it.
            self.transport.loseConnection()  # type: ignore[union-attr]
        if exchange is not None:
            exchange.body_done(Failure(ResponseFailed([Failure(ierror.ConnectionAborted())])))

    def consumer_pause(self) -> None:
        """The body's consumer cannot take more (its client reads slowly)."""
        self._consumer_paused = True
        self.pause()

    def consumer_resume(self) -> None:
        self._consumer_paused = False
        self.resume()

    def body_consumer_ready(self) -> None:
        # deliverBody came after the head: reading was paused meanwhile.  The
        # consumer may have paused it itself while taking the bytes that came
        # with the head (its client's buffer was already full): then it stays
        # paused until the consumer resumes it.
        if not self._consumer_paused:
            self.resume()

    # -- parsing ---------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        exchange = self._exchange
        if exchange is None:
            tunnel = self._tunnel
            if tunnel is not None:
                tunnel.upstream_data(data)
                return
            # An idle connection must not talk: whatever it is (a 408, a
            # late byte), the connection is out of step.  Drop it.
            self._reusable = False
            self._client._forget(self)
            self.abort()
            return
        if self._raw_left:
            self._raw_body(exchange, data)
            return
        if self._state is _SENT:
            # The response's first bytes: "HTTP/1." (llhttp would take RTSP/
            # or ICE/ too), which may take more than one read.
            if not self._prefix and data.startswith(b"HTTP/1."):
                self._state = _HEAD
            elif not self._check_prefix(data):
                self._violation(exchange)
                return
        self._pending_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade as upgrade:
            # The 101's head is parsed (on_headers_complete took it, for an
            # upgrade request); what follows is the new protocol's.
            if self._switching is None or self._exchange is not exchange:
                self._switching = None
                self._violation(exchange)
            else:
                self._switch(exchange, data[upgrade.args[0] :])
            return
        except HttpParserError:
            if self._state is _DONE and self._exchange is exchange:
                # Something followed a complete response (a body sent with a
                # HEAD answer, a second response): the response stands, the
                # connection goes.
                self._reusable = False
            elif self._exchange is exchange:
                self._violation(exchange)
                return
        if self._exchange is not exchange:
            return
        if self._pending_bytes > self._max_head_bytes:
            # A head too large, or (after it) trailers or chunk extensions
            # without end that llhttp would keep buffering.
            self._violation(exchange)
            return
        if self._length_left > 0 and self._state is _BODY:
            self._raw_left = self._length_left
        self._after_parse(exchange)

    def _switch(self, exchange: _Exchange, rest: bytes) -> None:
        """The connection leaves the pool for good: hand it over, not read
        until its taker attaches a tunnel."""
        upgraded, self._switching = self._switching, None
        assert upgraded is not None
        upgraded.rest = rest
        self._reusable = False
        self._stop_head_timer()
        self._exchange = None
        exchange.conn = None
        self._state = _UPGRADED
        # The parser refers back to this connection: no cycle left for the GC.
        self._parser = _CLOSED_PARSER
        self.pause()
        assert isinstance(exchange, _UpgradeExchange)  # (on_upgrade was checked)
        exchange.switched(upgraded)

    def attach(self, tunnel: TunnelSide) -> None:
        """A tunnel takes this upgraded connection over: read again."""
        if self._state is not _UPGRADED:
            return
        self._tunnel = tunnel
        self.resume()

    def _raw_body(self, exchange: _Exchange, data: bytes) -> None:
        """The rest of a Content-Length body, read past llhttp.

        Once the head is parsed, a body of known length needs no parser:
        handing each read on as it is saves llhttp's copy of every chunk
        (httptools makes a new bytes object per ``on_body``), about a tenth
        of the CPU a large body costs.  llhttp, left mid-body, is replaced
        by a fresh parser for whatever follows the body."""
        left = self._raw_left
        if len(data) < left:
            self._raw_left = left - len(data)
            exchange.body_data(data)
            return
        self._raw_left = 0
        rest = b""
        if len(data) > left:
            data, rest = data[:left], data[left:]
        exchange.body_data(data)
        if self._exchange is not exchange:
            return  # the body's consumer closed the connection
        self._state = _DONE
        self._parser = HttpResponseParser(self)
        if rest:
            try:
                self._parser.feed_data(rest)
            except HttpParserError:
                # on_message_begin refused bytes after a complete response:
                # the response stands, the connection goes.
                self._reusable = False
        self._after_parse(exchange)

    def _after_parse(self, exchange: _Exchange) -> None:
        """Hand over the head once parsed; finish the exchange once complete."""
        response = self._response
        fire = response is not None and not exchange.answered
        if self._state is _DONE:
            if not self._request_written:
                # Answered before the request body was all sent: this
                # connection's framing is no longer ours to trust.
                self._reusable = False
                self._stop_writer()
            self._finish_exchange()
        if fire:
            assert response is not None
            exchange.respond(response)
            if (
                exchange.protocol is None
                and exchange.finished is None
                and self._exchange is exchange
            ):
                # Nobody reads the body yet: stop reading until deliverBody.
                self.pause()

    def _check_prefix(self, data: bytes) -> bool:
        """The response must start with ``HTTP/1.`` (checked across reads)."""
        prefix = self._prefix + data[:7]
        if len(prefix) >= 7:
            self._prefix = b""
            self._state = _HEAD
            return prefix[:7] == b"HTTP/1."
        self._prefix = prefix
        return b"HTTP/1.".startswith(prefix)

    def _violation(self, exchange: _Exchange) -> None:
        self._reusable = False
        if not exchange.answered:
            exchange.fail(UpstreamResponseFailed())
        self.abort()

    def _finish_exchange(self) -> None:
        """The response is complete and the request written: release the
        connection (or close it), then end the body."""
        exchange, self._exchange = self._exchange, None
        if exchange is None:
            return
        reusable = self._reusable
        method_was_head = exchange.method == b"HEAD"
        self._reset_message_state()
        if method_was_head:
            # llhttp cannot be told a response had no body; start afresh.
            self._parser = HttpResponseParser(self)
        exchange.conn = None
        if reusable:
            if self._paused:
                self._paused = False
                self.transport.resumeProducing()  # type: ignore[union-attr]
            self._client._release(self)
        else:
            self.close()
        if exchange.answered:
            exchange.body_done(_RESPONSE_DONE)
        else:
            # The head is delivered by dataReceived right after this.
            exchange.finished = _RESPONSE_DONE

    # httptools callbacks; they run inside feed_data.

    def on_message_begin(self) -> None:
        if self._state is _DONE:
            raise _Trailing()
        self._phrase = b""

    def on_status(self, phrase: bytes) -> None:
        if _PHRASE_FORBIDDEN.search(phrase) is not None:
            raise _ProtocolViolation()
        self._phrase += phrase

    def on_header(self, name: bytes, value: bytes) -> None:
        # Past the final head (BODY or DONE, exactly when it is made into a
        # response): trailer fields, or bytes after the response, not relayed.
        # The cheaper test of the two, as this runs for every header line.
        if self._response is not None:
            if self._state is _DONE:
                raise _Trailing()
            return
        lname = name.lower()
        if lname not in _FRAMING:
            self._headers.append((lname, name + b": " + value))
        elif lname == b"content-length":
            self._content_length = value
        else:
            if lname == b"connection":
                tokens = self._connection_tokens
                if tokens is None:
                    tokens = self._connection_tokens = []
                tokens.extend(t.strip().lower() for t in value.split(b","))
            elif lname == b"upgrade":
                # Kept only for a 101 (see _switching_head); several lines are one list.
                headers_now = self._headers
                prior = self._upgrade_header
                if prior is not None and prior[0] is headers_now:
                    value = prior[1] + b", " + value
                self._upgrade_header = (headers_now, value)
            elif lname == b"transfer-encoding":
                # Several lines are one list (RFC 9110 5.3).
                te = self._transfer_encoding
                self._transfer_encoding = value if te is None else te + b"," + value

    def on_headers_complete(self) -> None:
        exchange = self._exchange
        if exchange is None:
            raise _Trailing()
        parser = self._parser
        code = parser.get_status_code()
        http_version = parser.get_http_version()
        if http_version != "1.1" and http_version != "1.0":
            raise _ProtocolViolation()
        head = exchange.method == b"HEAD"
        cl = self._content_length
        # Raises UpstreamResponseFailed for a framing not to be relayed.
        framing = response_framing(head, code, cl, self._transfer_encoding)
        if code < 200:
            if code == 101:
                self._switching_head(exchange)
                return
            # An interim 1xx (101 raises HttpParserUpgrade instead): handed
            # to whoever asked for them, without its hop-by-hop headers.
            self._state = _INTERIM
            headers, self._headers = self._headers, []
            tokens, self._connection_tokens = self._connection_tokens, None
            self._content_length = None
            self._transfer_encoding = None
            on_informational = exchange.on_informational
            if on_informational is not None:
                if tokens is not None and not _NAMELESS_TOKENS.issuperset(tokens):
                    headers = [field for field in headers if field[0] not in tokens]
                on_informational(code, self._phrase, headers)
            return
        self._framing = framing
        self._pending_bytes = 0
        tokens = self._connection_tokens
        http11 = http_version == "1.1"
        headers = self._headers
        if tokens is not None and not _NAMELESS_TOKENS.issuperset(tokens):
            headers = [field for field in headers if field[0] not in tokens]
        length: int | object
        if framing >= 0:
            length = self._length_left = framing
            self._state = _BODY
        elif framing == CHUNKED or framing == UNTIL_CLOSE:
            length = UNKNOWN_LENGTH
            self._state = _BODY
        else:
            # NO_BODY or IGNORED_BODY: complete already.
            length = 0
            if head and cl is not None and b"content-length" not in (tokens or ()):
                headers.append((b"content-length", b"Content-Length: " + cl.strip()))
            self._state = _DONE
        if not response_keep_alive(http11, tokens, framing):
            self._reusable = False
        version = (b"HTTP", 1, 1 if http11 else 0)
        self._response = H1Response(exchange, version, code, self._phrase, headers, length)

    def _switching_head(self, exchange: _Exchange) -> None:
        """A 101's head: the answer to an upgrade request that names what it
        switched to (``Upgrade``), else a protocol violation.  llhttp raises
        HttpParserUpgrade right after it (see dataReceived)."""
        upgrade = self._upgrade_header
        headers = self._headers
        if exchange.on_upgrade is None or upgrade is None or upgrade[0] is not headers:
            raise _ProtocolViolation()
        self._upgrade_header = None
        tokens = self._connection_tokens
        if tokens is not None and not _NAMELESS_TOKENS.issuperset(tokens):
            headers = [field for field in headers if field[0] not in tokens]
        self._switching = UpgradedConnection(self, self._phrase, headers, upgrade[1], b"")

    def on_body(self, data: bytes) -> None:
        state = self._state
        if state is not _BODY:
            if state is _DONE:
                raise _Trailing()
            # A 1xx has no content.
            raise _ProtocolViolation()
        self._pending_bytes = 0
        self._length_left -= len(data)
        exchange = self._exchange
        if exchange is not None:
            exchange.body_data(data)

    def on_message_complete(self) -> None:
        if self._state is _INTERIM:
            self._state = _HEAD
            return
        self._state = _DONE


@implementer(IHandshakeListener)
class _TLSConnection(_Connection):
    """An upstream connection over TLS (``Cluster.upstream_tls``): the
    request waits for the handshake, whose failure (a certificate that does
    not verify) is a failure to connect; the endpoint's TLS session is kept
    for its next connection.  Plain connections never meet this class."""

    _session_kept = False

    def connectionMade(self) -> None:
        # Not yet connected for the exchange: the handshake comes first.
        factory, self._factory = self._factory, None
        super().connectionMade()
        self._factory = factory
        if factory is not None:
            factory.tcp_connected(self)

    def handshakeCompleted(self) -> None:
        tls = self._client.tls
        handle = self._tls_handle()
        if tls is not None and handle is not None:
            if handle.get_protocol_version_name() != "TLSv1.3":
                # (TLS 1.3's resumable session comes with the tickets after the handshake.)
                self._keep_session()
        factory, self._factory = self._factory, None
        if factory is not None:
            factory.connected(self)

    def _tls_handle(self) -> Any:
        get_handle = getattr(self.transport, "getHandle", None)
        return get_handle() if get_handle is not None else None

    def _keep_session(self) -> None:
        tls = self._client.tls
        handle = self._tls_handle()
        if tls is None or handle is None:
            return
        host, _, port = self.key.rpartition(":")
        tls.remember(host.strip("[]"), int(port), handle)
        self._session_kept = True

    def _finish_exchange(self) -> None:
        if not self._session_kept:
            self._keep_session()
        super()._finish_exchange()

    def _exchange_lost(self, exchange: _Exchange, reason: Failure, state: _State) -> None:
        if (
            not exchange.answered
            and exchange.waiting()
            and state is _SENT
            and not self._prefix
            and reason.check(SSL.Error)
        ):
            # A TLS 1.3 server checks our certificate after our side of the
            # handshake is over: its refusal (an alert) arrives in place of
            # the response, and the request was never read.
            exchange.conn = None
            exchange.fail(upstream_error(reason))
            return
        super()._exchange_lost(exchange, reason, state)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        tcp: Any = getattr(self.transport, "transport", None)
        super().connectionLost(reason)
        # The TCP socket and its connector refer to each other (see above).
        connector = getattr(tcp, "connector", None)
        if connector is not None:
            connector.transport = None
        factory, self._factory = self._factory, None
        if factory is not None:
            tls = self._client.tls
            if tls is not None:
                # (A session that ends in a failed handshake is not offered again.)
                host, _, port = self.key.rpartition(":")
                tls.forget(host.strip("[]"), int(port))
            factory.handshake_failed(reason)


class UpstreamClient:
    """The process's upstream pool, shared by every cluster: persistent
    HTTP/1.1 connections per endpoint and the requests on them."""

    def __init__(
        self,
        reactor: IReactorTime,
        *,
        max_idle_per_endpoint: int = DEFAULT_MAX_IDLE_PER_ENDPOINT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        limits: HTTPLimits | None = None,
        tls: ClientTLS | None = None,
    ) -> None:
        self.reactor = reactor
        self.limits = limits if limits is not None else HTTPLimits()
        #: TLS to every endpoint (a cluster's ``upstream_tls``); None: plain HTTP.
        self.tls = tls
        self._max_idle = max_idle_per_endpoint
        self._idle_timeout = idle_timeout
        self._idle: dict[str, list[_Connection]] = {}
        self._sweep_call: IDelayedCall | None = None
        self._closing = False

    # -- requests ----------------------------------------------------------------

    def request(
        self,
        endpoint: Endpoint,
        method: bytes,
        target: bytes,
        headers: Headers | Sequence[tuple[bytes, bytes]],
        body: IO[bytes] | None,
        body_length: int | None,
        *,
        connect_timeout: float,
        response_timeout: float,
    ) -> Deferred[IResponse]:
        """Send one request; fires with the response once its head arrived.

        Errbacks with an :class:`~edgeproxy.core.errors.EdgeProxyError`, or with
        ``CancelledError`` when the caller cancels (the connection is closed).
        ``response_timeout`` counts from now until the response head.

        ``headers`` is a ``Headers`` or, cheaper, ``(name, value)`` pairs (one
        per header line) whose names are tokens and whose values hold no CR, LF or NUL (the
        caller vouches for that; ``Headers`` does it itself)."""
        sent: list[_Exchange] = []

        def cancel(d: Deferred[IResponse]) -> None:
            # Neither callback follows; the Deferred fails with CancelledError.
            if sent:
                sent[0].cancel()

        d: Deferred[IResponse] = Deferred(cancel)
        sent.append(
            self.send(
                endpoint, method, target, headers, body, body_length,
                connect_timeout=connect_timeout, response_timeout=response_timeout,
                on_response=d.callback, on_error=d.errback,
            )
        )
        return d

    def send(
        self,
        endpoint: Endpoint,
        method: bytes,
        target: bytes,
        headers: Headers | Sequence[tuple[bytes, bytes]],
        body: IO[bytes] | BodySource | None,
        body_length: int | None,
        *,
        connect_timeout: float,
        response_timeout: float,
        on_response: Callable[[H1Response], object],
        on_error: Callable[[Failure], object],
        on_informational: InformationalCallback | None = None,
        on_upgrade: Callable[[UpgradedConnection], object] | None = None,
    ) -> _Exchange:
        """Send one request, as :meth:`request` (which is built on this) but
        without a Deferred (the proxy's hot path): exactly one of
        ``on_response`` (with the response, once its head arrived) and
        ``on_error`` (with the failure) is called, unless the returned
        exchange's ``cancel()`` is called first (then neither is).
        ``on_informational``, if given, is called for each interim (1xx)
        response before that, as it arrives (without it they are skipped).
        ``on_upgrade``, for a request sent as an upgrade (``Connection:
        upgrade``), takes a ``101 Switching Protocols`` instead of
        ``on_response``: the connection, out of the pool for good
        (:class:`UpgradedConnection`)."""
        if _METHOD.fullmatch(method) is None or not target or _TARGET_FORBIDDEN.search(target):
            raise ValueError("invalid method or request-target")
        pairs: Sequence[tuple[bytes, bytes]]
        if isinstance(headers, Headers):
            pairs = [(n, v) for n, values in headers.getAllRawHeaders() for v in values]
        else:
            pairs = headers
        lines = list(map(_COLON_SPACE.join, pairs))
        lines.insert(0, method + b" " + target + b" HTTP/1.1")
        if body is None:
            body_length = 0
            lines.append(b"Content-Length: 0\r\n\r\n" if method in (b"POST", b"PUT") else b"\r\n")
        elif body_length is not None:
            lines.append(b"Content-Length: %d\r\n\r\n" % body_length)
        elif isinstance(body, BodySource):
            # A streamed body of unknown length (the client's was chunked).
            body_length = -1
            lines.append(b"Transfer-Encoding: chunked\r\n\r\n")
        else:
            body = None
            body_length = 0
            lines.append(b"Content-Length: 0\r\n\r\n" if method in (b"POST", b"PUT") else b"\r\n")
        head = b"\r\n".join(lines)
        if _HOST_LINE.search(head) is None:
            # (Names are tokens: no other line can hold a CR LF then "host:".)
            head = head.replace(b"\r\n", b"\r\nHost: " + _host_value(endpoint) + b"\r\n", 1)
        if on_upgrade is None:
            exchange = _Exchange(
                self, endpoint, method, head, body, body_length, connect_timeout,
                on_response, on_error, on_informational,
            )
        else:
            exchange = _UpgradeExchange(
                self, endpoint, method, head, body, body_length, connect_timeout,
                on_response, on_error, on_informational,
            )
            exchange.on_upgrade = on_upgrade
        exchange.deadline = self.reactor.seconds() + response_timeout
        exchange.response_timeout = response_timeout
        conn = self._take(str(endpoint))
        if conn is None:
            self._connect(exchange)
        else:
            conn.watch_head(response_timeout)
            conn.start(exchange, reused=True)
        return exchange

    def _connect(self, exchange: _Exchange) -> None:
        if exchange.timer is None:
            # Its own timer from here on (a retry leaves the pooled connection
            # that watched its deadline).
            exchange.timer = self.reactor.callLater(
                max(0.0, exchange.deadline - self.reactor.seconds()), exchange.timeout
            )
        connecting = _Connecting(self, exchange)
        exchange.connecting = connecting
        connecting.start()

    # -- the pool ------------------------------------------------------------------

    def _take(self, key: str) -> _Connection | None:
        conns = self._idle.get(key)
        if not conns:
            return None
        now = self.reactor.seconds()
        while conns:
            conn = conns.pop()
            if conn.is_usable() and now - conn.idle_since < self._idle_timeout:
                return conn
            conn.close()
        return None

    def _release(self, conn: _Connection) -> None:
        if self._closing or self._max_idle <= 0:
            conn.close()
            return
        conns = self._idle.get(conn.key)
        if conns is None:
            conns = self._idle[conn.key] = []
        elif len(conns) >= self._max_idle:
            conns.pop(0).close()
        conn.idle_since = self.reactor.seconds()
        conns.append(conn)
        if self._sweep_call is None:
            self._sweep_call = self.reactor.callLater(self._idle_timeout, self._sweep)

    def _forget(self, conn: _Connection) -> None:
        conns = self._idle.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)

    def _sweep(self) -> None:
        """Close connections idle for ``idle_timeout``; come back for the next."""
        self._sweep_call = None
        now = self.reactor.seconds()
        timeout = self._idle_timeout
        earliest: float | None = None
        for key in list(self._idle):
            conns = self._idle[key]
            while conns and now - conns[0].idle_since >= timeout:
                conns.pop(0).close()
            if conns:
                first = conns[0].idle_since
                earliest = first if earliest is None else min(earliest, first)
            else:
                del self._idle[key]
        if earliest is not None:
            self._sweep_call = self.reactor.callLater(
                max(earliest + timeout - now, 0.0), self._sweep
            )

    def idle_connections(self, endpoint: Endpoint | str) -> int:
        """How many idle connections the pool holds for an endpoint (``host:port``)."""
        return len(self._idle.get(str(endpoint), ()))

    def close_idle(self, endpoint: Endpoint | str) -> None:
        """Close the idle connections to one endpoint (an address that left its name)."""
        for conn in self._idle.pop(str(endpoint), ()):
            conn.close()

    def close(self) -> Deferred[None]:
        """Close every idle connection; fires once they are closed."""
        self._closing = True
        if self._sweep_call is not None and self._sweep_call.active():
            self._sweep_call.cancel()
        self._sweep_call = None
        waits: list[Deferred[None]] = []
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                lost: Deferred[None] = Deferred()
                conn.lost = lost
                waits.append(lost)
                conn.close()
        done: Deferred[None] = gatherResults(waits).addCallback(_none)
        return done


def _none(_: object) -> None:
    return None
