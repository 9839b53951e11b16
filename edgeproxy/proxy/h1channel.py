"""
The downstream connection: an HTTP/1.1 server protocol on llhttp (Node.js's
parser, through ``httptools``).  It turns bytes into
:class:`~edgeproxy.proxy.exchange.H1Exchange` objects and answers them one at a
time, in order.

twisted.web's ``HTTPChannel`` did this job first; it parses in Python, line
by line, and builds a ``Headers`` object and a ``Request`` with a dozen
Deferred-bearing attributes per request, which cost more than the rest of the
proxy together.  What it gave for free is done here explicitly:

- framing: llhttp is strict (no obs-fold, no bare CR or LF, no
  ``Content-Length`` with ``Transfer-Encoding``, no duplicate
  ``Content-Length``, valid chunk sizes); a transfer coding other than
  ``chunked`` gets 501, a method token llhttp does not know 501 (a method
  that is not a token, such as one with a control character, 400), and a version
  other than HTTP/1.0 or 1.1 gets 505 (2.0 and up) or 400.  After a
  4xx/5xx about framing the connection closes, since whatever follows cannot
  be trusted to be framed right;
- limits (:class:`~edgeproxy.core.protocol.HTTPLimits`, from the settings):
  the request line at most ``max_request_line`` bytes (else 414), the
  headers at most ``max_request_head_bytes`` in ``max_request_headers``
  lines (else 431);
- pipelining: requests are answered one at a time, in order; parsing stops
  while a complete request waits behind the one being answered, and what
  arrives meanwhile is held unparsed (reading stops past
  ``max_held_bytes``), so a client that goes away is still noticed;
- ``Expect: 100-continue`` is answered when the body is wanted;
- a streamed request body (a route with ``request_buffering=False``): its
  exchange is processed as soon as its head is routed and it is first in
  line, and the connection stops reading while the body's upstream is full
  (:meth:`ProxyChannel.pause_request_body`); the next pipelined request is
  parsed only once that body is whole;
- keep-alive (:func:`~edgeproxy.core.framing.request_keep_alive`): HTTP/1.1
  unless ``Connection: close``, HTTP/1.0 only with ``Connection: keep-alive``
  and without ``close``;
- deadlines for a slow client, whatever it keeps sending: a request head must
  be in within ``--header-timeout`` of its first byte (a connection's first
  request: of the accept, so a slow TLS handshake and a connection that never
  sends are covered), a body within ``--body-timeout`` of the end of its head
  plus one second per ``--body-min-rate`` bytes received (Apache
  mod_reqtimeout's ``body=N,MinRate=M``), and an idle connection is closed
  ``--keepalive-timeout`` after its last response.  Past a head or body
  deadline the client gets 408 and the connection closes (a connection that
  sent nothing is just closed, as nginx does, since browsers open spare
  ones); a request waiting for its answer is never timed out here (the
  cluster's timeouts govern it).  Time edgeproxy itself spends not reading
  (a pipelined request held behind one being answered, reading paused past
  ``max_held_bytes``) does not count: every clock restarts when a response
  is done.  There is one timer per connection, and reading a byte does not
  touch it: it fires at the nearest deadline or at the shortest of the three
  timeouts, whichever comes first, and works out then what is due, so a
  deadline that starts later is never missed and a request costs two clock
  readings (its first byte, its response's end);
- response framing (in ``H1Exchange.send_head``): ``Content-Length`` when
  the upstream gave one, else chunked (HTTP/1.1 clients) or close-delimited
  (HTTP/1.0 clients); no body for ``HEAD``, 1xx, 204 and 304;
- write-side backpressure: the channel is the transport's producer and
  passes pause/resume on to whatever produces the response body.
"""

from __future__ import annotations

import ipaddress
import re
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserInvalidMethodError,
    HttpParserInvalidURLError,
    HttpParserUpgrade,
    HttpRequestParser,
)
from OpenSSL import SSL
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from edgeproxy.core.addresses import Networks
from edgeproxy.core.errors import (
    BadRequest,
    EdgeProxyError,
    HeadTooLarge,
    NotImplementedMethod,
    Reason,
    RequestTimeout,
    UriTooLong,
)
from edgeproxy.core.framing import connection_tokens, request_keep_alive
from edgeproxy.core.hostnames import covered_by, normalise_host
from edgeproxy.net.endpoints import set_no_delay
from edgeproxy.proxy.exchange import Dispatch, Exchange, RejectRequest, StopParsing
from edgeproxy.proxy.h1exchange import H1Exchange
from edgeproxy.proxy.tunnel import Tunnel
from edgeproxy.tls.certificates import (
    certificate_names,
    client_subject,
    connection_policy,
    version_meets,
)

if TYPE_CHECKING:
    from edgeproxy.config.settings import Settings
    from edgeproxy.config.tlspolicy import TLSPolicy
    from edgeproxy.core.protocol import HTTPLimits
    from edgeproxy.proxy.interfaces import AccessSink, ProxyMetrics
    from edgeproxy.upstream.h1client import UpgradedConnection

__all__ = [
    "ConnectionTracker",
    "ProxyChannel",
    "ProxyFactory",
]

_CONNECTION_DONE = Failure(ConnectionDone())


def _no_write(data: bytes) -> None:
    """A channel's write before it has a transport, and after."""


#: The parser of every closed connection (it never parses again; no callbacks).
_CLOSED_PARSER = HttpRequestParser(object())

#: A method is a token (RFC 9110 9.1, 5.6.2); llhttp refuses any it does not know.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: How much of a refused method is looked at (and logged): methods are short.
_METHOD_SCAN = 64


#: A deadline less than this many seconds away is due: the timer fires at
#: ``now + (deadline - now)``, which float rounding may put a hair before it.
_DUE = 1e-6

#: A parser protocol without callbacks.
_NOTHING = object()


class _MessageStarts:
    """Counts llhttp's message starts (for :func:`_refused_method`)."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def on_message_begin(self) -> None:
        self.count += 1


def _parse_prefix(data: bytes, count: bool) -> tuple[int, bool]:
    """How many messages start in ``data`` (if ``count``; without, llhttp
    parses without calling back) and whether llhttp refuses it."""
    starts = _MessageStarts()
    try:
        HttpRequestParser(starts if count else _NOTHING).feed_data(data)
    except (HttpParserError, HttpParserUpgrade):
        return starts.count, True
    return starts.count, False


def _refused_method(data: bytes, from_boundary: bool) -> bytes:
    """The method (up to its space, or what arrived of it) of the request
    whose method llhttp refused while parsing ``data``.

    httptools does not say where in ``data`` llhttp stopped, so when ``data``
    was fed from a message boundary, fresh parsers over its prefixes find the
    refused byte and where that message started (a binary search each, only
    on this error path).  Otherwise the message began in an earlier read and
    the bytes before ``data`` were a prefix of a known method, so ``data``
    holds the rest of it."""
    start = 0
    if from_boundary:
        low, high = 1, len(data)
        while low < high:  # the shortest prefix llhttp refuses
            middle = (low + high) // 2
            if _parse_prefix(data[:middle], False)[1]:
                high = middle
            else:
                low = middle + 1
        starts = _parse_prefix(data[:low], True)[0]
        # Before the refused byte, only a prefix of a known method (the
        # longest is 13 bytes) belongs to that message.
        low, high = max(1, low - _METHOD_SCAN), low
        while low < high:  # the shortest prefix in which that message starts
            middle = (low + high) // 2
            if _parse_prefix(data[:middle], True)[0] >= starts:
                high = middle
            else:
                low = middle + 1
        start = low - 1
    end = data.find(b" ", start, start + _METHOD_SCAN)
    return data[start : end if end >= 0 else start + _METHOD_SCAN]


def _parse_error_reason(error: HttpParserError, in_head: bool, url: bytes) -> Reason:
    """Which part of the request llhttp refused.  llhttp says what it found
    only in words; the words are read here for the log's reason token
    alone (the answer is 400 whatever they say)."""
    if not in_head:
        return Reason.BAD_FRAMING  # chunked framing in the body
    if not url or isinstance(error, HttpParserInvalidURLError):
        return Reason.BAD_REQUEST_LINE
    words = str(error).lower()
    if "version" in words:
        return Reason.BAD_REQUEST_LINE
    if "content-length" in words or "transfer-encoding" in words:
        return Reason.BAD_FRAMING
    return Reason.BAD_HEADER


def _connection_options(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    return connection_tokens(value for name, value in headers if name.lower() == b"connection")


class ConnectionTracker:
    """The open client connections of every listener, for a graceful drain."""

    def __init__(self) -> None:
        self.channels: set[ProxyChannel] = set()
        self.draining = False
        self._waiters: list[Deferred[None]] = []

    def add(self, channel: ProxyChannel) -> None:
        self.channels.add(channel)
        if self.draining:
            channel.drain()

    def remove(self, channel: ProxyChannel) -> None:
        self.channels.discard(channel)
        if not self.channels:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def drain(self) -> Deferred[None]:
        """Close idle connections now and busy ones after their response;
        fires when none is left."""
        self.draining = True
        for channel in list(self.channels):
            channel.drain()
        if not self.channels:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def abort_all(self) -> None:
        for channel in list(self.channels):
            if channel.transport is not None:
                channel.transport.abortConnection()  # type: ignore[attr-defined]


@implementer(IHandshakeListener, IPushProducer)
class ProxyChannel(Protocol):
    """One client connection: parses requests, answers them one at a time."""

    log = Logger(namespace="edgeproxy.request")
    factory: ProxyFactory
    draining = False
    _handshake_done = False
    _client_ip: str | None = None
    #: The peer is a trusted forwarder (``--trusted-source``): its forwarding
    #: headers and ``X-Request-Id`` are believed.  Judged once, at the first
    #: request (after a PROXY header has named the peer).
    peer_trusted = False
    #: Some forwarders are trusted and the peer is not one: the forwarding
    #: chain it sent is replaced, not extended.
    replaces_forwarding = False
    _judge_peer = False
    #: The names the certificate served for the client's SNI name covers; a
    #: request for any other host gets 421.  None: nothing to check (plain
    #: HTTP, or a TLS client that sent no SNI).
    certificate_names: frozenset[str] | None = None
    #: The last host found covered, so a connection's requests for one site
    #: cost one comparison each.
    covered_host: str | None = None
    #: The client's SNI name (normalised): never misdirected on its connection.
    _sni_host: str | None = None
    #: The virtual host TLS policy the handshake was held to (None: the listener's).
    tls_policy: TLSPolicy | None = None
    #: The verified client certificate's subject (RFC 4514, UTF-8), with a ``client_ca``.
    client_subject: bytes | None = None
    #: The last virtual host policy found met, so a connection's requests
    #: for one site cost one comparison each.
    met_policy: TLSPolicy | None = None
    _tls_version: str | None = None
    #: After a ``101 Switching Protocols``: the splice this connection is one
    #: side of (its input goes there; no more HTTP is parsed).
    _tunnel: Tunnel | None = None

    def __init__(self, factory: ProxyFactory) -> None:
        self.factory = factory
        self.clock_seconds: Callable[[], float] = factory.clock.seconds
        # The limits checked per URL piece and header line, read there
        # without going through the factory.
        limits = factory.limits
        self._max_line = limits.max_request_line
        self._max_head_bytes = limits.max_request_head_bytes
        self._max_headers = limits.max_request_headers
        # What llhttp may buffer of a head that is still arriving.
        self._max_unparsed = 4 * (limits.max_request_line + limits.max_request_head_bytes)
        self._parser = HttpRequestParser(self)
        #: Requests whose head is in, oldest first; the first is the one being answered.
        self.requests: deque[H1Exchange] = deque()
        self._parsing: H1Exchange | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._in_head = False
        self._unparsed = 0
        self._input_closed = False
        self._reading_paused = False
        #: Input read behind a waiting pipelined request, not parsed yet (None
        #: when not holding; a bytearray: a trickle of small reads appends,
        #: never re-copies).
        self._held: bytearray | None = None
        self._write_paused = False
        self._body_producer: IPushProducer | None = None
        self._closed = False
        self._write: Callable[[bytes], object] = _no_write
        #: When the connection was accepted, when the request being parsed
        #: began, and when the last response was done (None before the first):
        #: the starts of the deadlines (see _deadline).
        self._accepted = 0.0
        self._head_started = 0.0
        self._answered_at: float | None = None
        self._timer: IDelayedCall | None = None
        self._linger: IDelayedCall | None = None
        #: Since when reading is paused for a streamed body (None: it is not):
        #: time the client is not held to (see _deadline; the request being
        #: parsed keeps the sum in ``body_wait``).
        self._body_paused_at: float | None = None
        self._processing_queue = False

    # -- the connection ----------------------------------------------------------

    def connectionMade(self) -> None:
        transport: Any = self.transport
        set_no_delay(transport)
        self._write = transport.write
        # Told to pause when the client is slow to read; passed on to the body's producer.
        transport.registerProducer(self, True)
        factory = self.factory
        factory.connections.add(self)
        metrics = factory.metrics
        if metrics is not None:
            metrics.connection_opened(factory.kind)
        self._accepted = self.clock_seconds()
        self._timer = factory.clock.callLater(factory.deadline_step, self._check_deadline)
        # The peer is judged at the first request: behind a PROXY protocol
        # wrapper the channel is connected before the header names the peer.
        self._judge_peer = factory.trusted is not None

    def _judge(self) -> None:
        """Judge the peer against ``--trusted-source``, once, at the first
        request (HTTP/1.1's or HTTP/2's): see :attr:`peer_trusted`."""
        self._judge_peer = False
        trusted = self.factory.trusted
        assert trusted is not None
        self.peer_trusted = self.client_ip in trusted
        self.replaces_forwarding = not self.peer_trusted

    @property
    def client_ip(self) -> str:
        ip = self._client_ip
        if ip is None:
            peer = self.transport.getPeer() if self.transport is not None else None
            ip = getattr(peer, "host", None) or "-"
            if ":" in ip:
                try:
                    address = ipaddress.IPv6Address(ip)
                except ValueError:
                    pass
                else:
                    # An IPv4 client of a dual-stack listener is its IPv4
                    # address, as the accept gate and the rules count it.
                    ip = str(address.ipv4_mapped or address)
            self._client_ip = ip
        return ip

    def handshakeCompleted(self) -> None:
        """Called by the TLS layer under this channel."""
        self._handshake_done = True
        get_handle = getattr(self.transport, "getHandle", None)
        connection = get_handle() if get_handle is not None else None
        if connection is not None:
            self._tls_version = connection.get_protocol_version_name()
            policy = self.tls_policy = connection_policy(connection)
            if policy is not None and policy.client_ca is not None:
                subject = client_subject(connection)
                if subject is None:
                    # Cannot happen after a handshake under the policy's
                    # verify mode; refuse rather than serve unverified.
                    self.transport.abortConnection()  # type: ignore[union-attr]
                    return
                self.client_subject = subject
            server_name = connection.get_servername()
            if server_name is not None:
                # The client named a site and verified a certificate for it:
                # it must not reach a site that certificate does not cover.
                # The site it named is never misdirected, even when it was
                # given the default certificate: no other site is reached,
                # and a new connection would get the same certificate.
                names = certificate_names(connection)
                self.certificate_names = names
                sni = normalise_host(server_name)  # cached, unlike normalise_name
                if names is not None and sni is not None:
                    self.covered_host = self._sni_host = sni
        factory = self.factory
        metrics = factory.metrics
        if metrics is not None:
            version = connection.get_protocol_version_name() if connection is not None else None
            metrics.tls_handshake(version or "unknown")
        http2 = factory.http2
        if http2 is not None and getattr(self.transport, "negotiatedProtocol", None) == b"h2":
            # HTTP/2 from here on (edgeproxy.proxy.h2channel); no llhttp.
            self._parser = _CLOSED_PARSER
            http2(self)

    def tls_details(self) -> tuple[str | None, str | None]:
        """The TLS version and SNI name of this connection (None, None on plain HTTP)."""
        get_handle = getattr(self.transport, "getHandle", None)
        if get_handle is None or not self.factory.tls:
            return None, None
        try:
            connection = get_handle()
            version = connection.get_protocol_version_name()
            name = connection.get_servername()
        except Exception:  # a connection torn down under us: log without it
            return None, None
        return version, name.decode("ascii", "replace") if name else None

    def covers(self, host: str) -> bool:
        """Whether this connection may serve ``host`` (normalised): it is the
        name the client sent in SNI, its certificate covers it, or there is no
        certificate to check against."""
        names = self.certificate_names
        if names is None or host == self._sni_host or covered_by(host, names):
            self.covered_host = host
            return True
        return False

    def meets(self, policy: TLSPolicy) -> bool:
        """Whether this connection's handshake meets a virtual host's TLS
        policy: its version is high enough and, with a ``client_ca``, the
        client certificate was verified against that same CA (a client may
        not name one host in SNI and another, stricter one in ``Host``)."""
        if policy.client_ca is not None:
            held = self.tls_policy
            if held is None or held.client_ca != policy.client_ca or self.client_subject is None:
                return False
        minimum = policy.min_version
        if minimum is not None and not version_meets(self._tls_version, minimum):
            return False
        self.met_policy = policy
        return True

    def dataReceived(self, data: bytes) -> None:
        if self._input_closed:
            if self._tunnel is not None:
                self._tunnel.client_data(data)
            return
        if self._held is not None:
            self._hold(data)
            return
        in_head = self._in_head
        parsing = self._parsing
        if in_head or parsing is None:
            self._unparsed += len(data)
        # A new list per message (on_message_begin): tells, on a refused
        # method, whether a message began in this read.
        headers = self._headers
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade as upgrade:
            self._upgraded(data[upgrade.args[0] :])
            return
        except HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, StopParsing | RejectRequest):
                # Its traceback's frames lead back to this one, which holds
                # it: a cycle per refused request, for the collector to find.
                cause.__traceback__ = None
            if isinstance(cause, StopParsing):
                return
            if isinstance(cause, RejectRequest):
                self._reject(cause.error)
            else:
                self.log.failure(
                    "request parsing failed", Failure(cause) if cause is not None else None
                )
                self._reject(EdgeProxyError())
            return
        except HttpParserInvalidMethodError:
            # A method llhttp does not know (it knows the IANA registry's):
            # 501 if it is a token, else the request line is malformed.
            at_boundary = not in_head and parsing is None
            if at_boundary or self._headers is headers:
                method = _refused_method(data, at_boundary)
            else:
                # A message ended inside this read, which began mid-message,
                # and the refused one began after it: where is not known, so
                # no guess (it could be the end of a body) is logged or judged.
                method = b""
            if _TOKEN.fullmatch(method):
                self._reject(NotImplementedMethod(), method)
            else:
                self._reject(BadRequest(Reason.BAD_REQUEST_LINE))
            return
        except HttpParserError as e:
            self._reject(BadRequest(_parse_error_reason(e, self._in_head, self._url)))
            return
        if self._in_head and self._unparsed > self._max_unparsed:
            # llhttp keeps a header line being received in memory whole:
            # bound it even before the line ends.
            self._reject(HeadTooLarge())
            return
        self.run_queue()

    def _upgraded(self, rest: bytes) -> None:
        """llhttp stops after a request with ``Connection: upgrade`` and
        ``Upgrade``.  One forwarded as an upgrade (``request.upgrade``):
        what follows its head is held, unparsed, until its answer: a 101
        hands it to the tunnel, any other answer has it parsed as the next
        request.  Any other (answered by edgeproxy, or offering only
        ``h2c``) goes on as a plain request and parsing starts afresh after
        it.  (``CONNECT`` never gets here: it is refused, 501, while its head
        is checked.)"""
        request = self._parsing
        if request is not None and not request.complete:
            if request.declared_length != 0:
                # An upgrade request with a body: too odd to frame safely.
                self._reject(BadRequest(Reason.BAD_FRAMING))
                return
            self.on_message_complete()
        self._parser = HttpRequestParser(self)
        requests = self.requests
        if requests and requests[-1].upgrade is not None and not self._input_closed:
            self._held = bytearray()
            if rest:
                self._hold(rest)
            self.run_queue()
            return
        if rest:
            self.dataReceived(rest)
        else:
            self.run_queue()

    def start_tunnel(self, request: Exchange, upstream: UpgradedConnection) -> Tunnel | None:
        """``request`` (the one being answered) got its 101: from now on this
        connection is one side of a tunnel to ``upstream``, with what the
        client sent after the request head.  None if the connection is
        closing already."""
        transport: Any = self.transport
        requests = self.requests
        if self._closed or transport is None or not requests or requests[0] is not request:
            return None
        requests.popleft()
        factory = self.factory
        if factory.tls:
            # The tunnel is logged when it closes, when the TLS connection
            # that tls_details reads is gone: what it says now, from then on.
            details = self.tls_details()
            self.tls_details = lambda: details  # type: ignore[method-assign]
        held, self._held = self._held, None
        self._input_closed = True
        self._in_head = False
        self._parsing = None
        self._parser = _CLOSED_PARSER
        self._body_producer = None
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        # The tunnel's producers replace this channel's.
        transport.unregisterProducer()
        if self._reading_paused:
            self._reading_paused = False
            transport.resumeProducing()
        tunnel = self._tunnel = Tunnel(
            factory.clock,
            factory.settings.tunnel_idle_timeout,
            transport,
            upstream.transport,
            request.tunnel_closed,
        )
        metrics = factory.metrics
        if metrics is not None:
            metrics.tunnel_opened()
        upstream.attach(tunnel)
        tunnel.start(bytes(held) if held else b"", upstream.rest)
        return tunnel

    def _reject(self, error: EdgeProxyError, method: bytes = b"-") -> None:
        """Stop reading; answer ``error`` in turn, then close."""
        self._input_closed = True
        in_head, self._in_head = self._in_head, False
        request = self._parsing
        self._parsing = None
        if request is None:
            # The head did not parse: a request object just to answer and log
            # it, with the method, target and version if the request line was
            # read (llhttp has the method once the target is in).
            version = b"1.1"
            url = self._url if in_head else b""
            if url:
                method = self._parser.get_method()
                parsed = self._parser.get_http_version()
                if parsed == "1.0":
                    version = b"1.0"
            request = H1Exchange(
                self, method, url or b"-", version, self._headers, persistent=False
            )
            self.requests.append(request)
        request.reject(error)
        self.run_queue()

    # -- httptools callbacks; they run inside feed_data ------------------------------

    def on_message_begin(self) -> None:
        if self._judge_peer:
            self._judge()
        self._in_head = True
        self._head_started = self.clock_seconds()
        self._url = b""
        self._headers = []
        # The header block's bytes (on_header counts them).
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._url = url = self._url + url
        if len(url) > self._max_line:
            raise RejectRequest(UriTooLong())

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self._max_head_bytes or len(headers) >= self._max_headers:
            raise RejectRequest(HeadTooLarge())
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._unparsed = 0
        parser = self._parser
        version = parser.get_http_version().encode("ascii")
        # Whether the connection persists is request_keep_alive's decision
        # (RFC 9112 9.3).  llhttp flags a "close" option while it parses:
        # for HTTP/1.1 its answer is that decision (tests/test_framing.py
        # checks), and costs no second look at the headers.  For HTTP/1.0 it
        # lets "keep-alive" win over "close", so the options are read here.
        request = H1Exchange(
            self,
            parser.get_method(),
            self._url,
            version,
            self._headers,
            (
                parser.should_keep_alive()
                if version == b"1.1"
                else request_keep_alive(False, _connection_options(self._headers))
            )
            and not self.draining,
        )
        self._parsing = request
        self.requests.append(request)
        request.head_received(version, len(self.requests) == 1)
        if parser.should_upgrade():
            # (A "Content-Length: 0" is no body.)
            if request.declared_length != 0:
                # llhttp would skip an upgrade request's body and parse it as
                # the next request: one with a body is refused (a WebSocket
                # handshake has none).
                raise RejectRequest(BadRequest(Reason.BAD_FRAMING))
            request.upgrade_requested()

    def on_body(self, data: bytes) -> None:
        request = self._parsing
        assert request is not None
        request.body_received(data)

    def on_message_complete(self) -> None:
        request = self._parsing
        assert request is not None
        self._parsing = None
        if request.discarding:
            # The connection closes after the rejection; nothing after it is read.
            self._input_closed = True
            if request.finished:
                self.close()
            raise StopParsing()
        request.body_complete()
        # Processing starts once feed_data returns (run_queue), outside the parser.
        if request is not self.requests[0] and self._held is None:
            # A pipelined request waits for the one before it: parse no
            # further.  Reading goes on (up to a limit) rather than stopping,
            # so that a client that closes is noticed, its queued requests
            # logged and the one upstream cancelled, without waiting for it.
            self._held = bytearray()

    def _hold(self, data: bytes) -> None:
        held = self._held
        assert held is not None  # called only while holding
        held += data
        if len(held) > self.factory.limits.max_held_bytes and not self._reading_paused:
            self._reading_paused = True
            transport: Any = self.transport
            transport.pauseProducing()

    def _resume_reading(self) -> None:
        """Parse what was held, and read on if that did not fill up again."""
        held, self._held = self._held, None
        if held:
            self.dataReceived(bytes(held))
        held = self._held
        if (
            self._reading_paused
            and not self._input_closed
            and (held is None or len(held) <= self.factory.limits.max_held_bytes)
            and self.transport is not None
            and self._body_paused_at is None
        ):
            self._reading_paused = False
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    # -- answering in order ------------------------------------------------------------

    def request_done(self, request: Exchange) -> None:
        """``request`` has its whole response written."""
        requests = self.requests
        if requests and requests[0] is request:
            requests.popleft()
        else:  # pragma: no cover - only the first request is ever answered
            requests.remove(request)  # type: ignore[arg-type]
        self._body_producer = None
        # The keep-alive time starts now, and so does the deadline of a
        # request that was parsed (or held) while this one was answered.
        self._answered_at = self.clock_seconds()
        if not request.persistent or self.draining:
            if request is self._parsing:
                self._linger_then_close()
            else:
                self.close()
            return
        self.run_queue()
        if (
            self._held is not None
            and not self._input_closed
            and len(requests) <= 1
            and (not requests or requests[0].upgrade is None)
        ):
            # (What follows an upgrade request waits for its answer: a 101
            # hands it to the tunnel, another answer has it parsed then.)
            self._resume_reading()

    def run_queue(self) -> None:
        """Process the first request if it is complete and waiting (answers
        written at once may finish it and start the next: loop, not recurse)."""
        if self._processing_queue:
            return
        self._processing_queue = True
        try:
            requests = self.requests
            while requests and not self._closed:
                first = requests[0]
                # A streamed body's exchange starts before the body is in.
                if first.processing or not (first.complete or first.body_stream is not None):
                    break
                first.process()
        finally:
            self._processing_queue = False

    def write_now(self, data: bytes) -> None:
        if not self._closed and self.transport is not None:
            self._write(data)

    # -- read-side flow control for a streamed request body ------------------------

    def pause_request_body(self) -> None:
        """Stop reading: the streamed body being received has nowhere to go."""
        if self._body_paused_at is not None or self._closed:
            return
        self._body_paused_at = self.clock_seconds()
        if not self._reading_paused and self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resume_request_body(self) -> None:
        paused = self._body_paused_at
        if paused is None:
            return
        self._body_paused_at = None
        parsing = self._parsing
        if parsing is not None:
            parsing.body_wait += self.clock_seconds() - paused
        if not self._reading_paused and not self._closed and self.transport is not None:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    # -- write-side flow control -----------------------------------------------------

    def register_body_producer(self, producer: IPushProducer | None) -> None:
        self._body_producer = producer
        if producer is not None and self._write_paused:
            producer.pauseProducing()

    def pauseProducing(self) -> None:
        self._write_paused = True
        if self._body_producer is not None:
            self._body_producer.pauseProducing()

    def resumeProducing(self) -> None:
        self._write_paused = False
        if self._body_producer is not None:
            self._body_producer.resumeProducing()

    def stopProducing(self) -> None:
        # The transport is going away; connectionLost does the rest.
        pass

    # -- closing -------------------------------------------------------------------------

    def drain(self) -> None:
        """Finish the request in progress, if any, then close; take no more.
        A tunnel is left to end by itself (or at the drain's deadline)."""
        self.draining = True
        if self._tunnel is not None:
            return
        if not self.requests and not self._in_head:
            self.close()

    def close(self) -> None:
        """Close after what was written has been sent."""
        if self._closed:
            return
        self._closed = True
        self._input_closed = True
        transport: Any = self.transport
        if transport is not None:
            # A TLS transport waits for its producer to go before it closes.
            transport.unregisterProducer()
            transport.loseConnection()

    def _linger_then_close(self) -> None:
        """After a 413 sent before the body was read: keep reading and dropping
        it, for at most ``lingering_timeout``, so the client is not reset
        before it reads the answer (nginx's lingering close)."""
        self._resume_reading()
        if self._linger is None:
            self._linger = self.factory.clock.callLater(
                self.factory.settings.lingering_timeout, self.close
            )

    def _deadline(self) -> float | None:
        """When the client's time for what it is sending now runs out; None
        while a request waits for its answer (nothing is expected of the
        client) or a refused body is being dropped (the lingering close
        bounds that)."""
        requests = self.requests
        parsing = self._parsing
        if requests and requests[0].processing and requests[0] is not parsing:
            return None
        factory = self.factory
        answered = self._answered_at
        if parsing is not None:
            if parsing.discarding or self._body_paused_at is not None:
                # (Paused: edgeproxy is not reading a streamed body; its
                # upstream is full or not there yet.)
                return None
            start = parsing.started
            if answered is not None and answered > start:
                start = answered  # parsed while an earlier request was answered
            rate = factory.body_min_rate
            return (
                start
                + factory.body_timeout
                + (parsing.body_bytes / rate if rate else 0.0)
                + parsing.body_wait
            )
        if answered is None:
            # The first request: from the accept, idle or not.
            return self._accepted + factory.header_timeout
        if self._in_head:
            return max(self._head_started, answered) + factory.header_timeout
        return answered + factory.timeout

    def _check_deadline(self) -> None:
        """The connection's timer.  It is never later than a deadline: it
        fires at the current one or one ``deadline_step`` (the shortest
        timeout) from now, whichever is sooner, and no deadline that begins
        meanwhile can end sooner than that."""
        self._timer = None
        if self._closed:
            return
        factory = self.factory
        deadline = self._deadline()
        left = None if deadline is None else deadline - self.clock_seconds()
        if left is None or left > _DUE:
            step = factory.deadline_step
            if left is not None and left < step:
                step = left
            self._timer = factory.clock.callLater(step, self._check_deadline)
            return
        parsing = self._parsing
        if parsing is not None:
            deadline_name = "body"
            if parsing.body_stream is not None and parsing.processing:
                # A streamed body the client stopped sending: its upstream
                # exchange is given up; 408 if no response has started, else
                # the connection is cut.
                self._input_closed = True
                parsing.stream_failed(RequestTimeout(Reason.BODY_TIMEOUT))
                self.close()
            elif parsing.processing:
                # Its response has begun: too late for a 408; cut it off.  (Not
                # for a spooled body: its request is processed once the body is
                # whole, and a refused one's body is the lingering close's.)
                parsing.timed_out()
                self.close()
            else:
                self._reject(RequestTimeout(Reason.BODY_TIMEOUT))
        elif self._in_head:
            deadline_name = "header"
            self._reject(RequestTimeout(Reason.HEADER_TIMEOUT))
        else:
            # Idle, or never sent a byte of a request: nothing to answer.
            deadline_name = "keepalive" if self._answered_at is not None else "no_request"
            self.close()
        metrics = factory.metrics
        if metrics is not None:
            metrics.client_timed_out(deadline_name)

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        self._closed = True
        self._input_closed = True
        tunnel = self._tunnel
        if tunnel is not None:
            self._tunnel = None
            tunnel.client_lost(reason)
        # The parser and the write function refer back to this channel (and
        # its transport): let go of them so reference counting, not the
        # garbage collector, frees the connection.
        self._parser = _CLOSED_PARSER
        self._write = _no_write
        # Each leads back here (through the request's channel): a request
        # still being parsed (its body discarded after an early 413), and the
        # body's producer (relay -> request) when the client went first.
        self._parsing = None
        self._body_producer = None
        for call in (self._timer, self._linger):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._linger = None
        requests, self.requests = self.requests, deque()
        for request in requests:
            request.connection_lost(reason)
        factory = self.factory
        factory.connections.remove(self)
        metrics = factory.metrics
        if metrics is None:
            return
        metrics.connection_closed(factory.kind)
        if factory.tls and not self._handshake_done:
            # A scanner, a refused SNI name, a client that distrusts the certificate...
            failed = "tls_error" if reason.check(SSL.Error) else "closed_before_handshake"
            metrics.tls_failed(failed)


class ProxyFactory(ServerFactory):
    """Builds downstream connections for one listener (TLS or plain)."""

    protocol = ProxyChannel  # type: ignore[assignment]
    noisy = False

    def __init__(
        self,
        pipeline: Dispatch,
        *,
        tls: bool,
        settings: Settings,
        access_log: AccessSink,
        clock: IReactorTime,
        metrics: ProxyMetrics | None = None,
        connections: ConnectionTracker | None = None,
        http2: Callable[[ProxyChannel], None] | None = None,
    ) -> None:
        self.pipeline = pipeline
        #: Makes a TLS connection whose ALPN chose ``h2`` an HTTP/2 one
        #: (``H2Channel.take_over``); None: HTTP/1.1 only.
        self.http2 = http2
        self.tls = tls
        self.kind = "https" if tls else "http"
        self.metrics = metrics
        self.connections = connections if connections is not None else ConnectionTracker()
        self.settings = settings
        self.limits: HTTPLimits = settings.http_limits
        self.timeout: float = settings.keepalive_timeout
        self.header_timeout: float = settings.header_timeout
        self.body_timeout: float = settings.body_timeout
        self.body_min_rate: int = settings.body_min_rate
        #: How often, at most, a connection's timer looks at its deadline.
        self.deadline_step: float = min(self.timeout, self.header_timeout, self.body_timeout)
        #: ``--trusted-source``: the forwarders whose headers are believed.
        self.trusted = Networks(settings.trusted_sources) if settings.trusted_sources else None
        self.access_log = access_log
        self.clock = clock

    def buildProtocol(self, addr: Any) -> ProxyChannel:  # type: ignore[override]
        return ProxyChannel(self)
