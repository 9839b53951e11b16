"""
The downstream side: an HTTP/1.1 server protocol on llhttp (Node.js's parser,
through ``httptools``) that routes a request as soon as its head is in (so a
body limit applies before the body is read), spools the body, answers errors
and redirects itself, and hands everything else to the
:class:`~edgeproxy.forward.Forwarder`.

twisted.web's ``HTTPChannel`` did this job first; it parses in Python, line
by line, and builds a ``Headers`` object and a ``Request`` with a dozen
Deferred-bearing attributes per request, which cost more than the rest of the
proxy together.  What it gave for free is done here explicitly:

- framing: llhttp is strict (no obs-fold, no bare CR or LF, no
  ``Content-Length`` with ``Transfer-Encoding``, no duplicate
  ``Content-Length``, valid chunk sizes); a transfer coding other than
  ``chunked`` gets 501 and a version other than HTTP/1.0 or 1.1 gets 505
  (2.0 and up) or 400.  After a 4xx/5xx about framing the connection closes,
  since whatever follows cannot be trusted to be framed right;
- limits: the request line plus headers at most :data:`MAX_HEAD_BYTES`
  in :data:`MAX_HEADERS` lines (else 431);
- pipelining: requests are answered one at a time, in order; reading stops
  while a complete request waits behind the one being answered;
- ``Expect: 100-continue`` is answered when the body is wanted;
- keep-alive: HTTP/1.1 unless ``Connection: close``, HTTP/1.0 only with
  ``Connection: keep-alive``; one inactivity timer per connection
  (``--keepalive-timeout``) covers both an idle connection and a client
  that stalls mid-request;
- response framing: ``Content-Length`` when the upstream gave one, else
  chunked (HTTP/1.1 clients) or close-delimited (HTTP/1.0 clients); no body
  for ``HEAD``, 1xx, 204 and 304;
- write-side backpressure: the channel is the transport's producer and
  passes pause/resume on to whatever produces the response body.
"""

from __future__ import annotations

import io
import ipaddress
import random
import secrets
import tempfile
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import IO, TYPE_CHECKING, Any

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserInvalidMethodError,
    HttpParserUpgrade,
    HttpRequestParser,
)
from OpenSSL import SSL
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener, IPushProducer
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES
from zope.interface import implementer

from edgeproxy.config import Route
from edgeproxy.errors import (
    BadRequest,
    BodyTooLarge,
    EdgeProxyError,
    HeadTooLarge,
    NoRoute,
    NotImplementedCoding,
    NotImplementedMethod,
    NoVirtualHost,
    VersionNotSupported,
)
from edgeproxy.hostnames import normalise_host
from edgeproxy.netutil import set_no_delay
from edgeproxy.routing import RouteMatch, VirtualHostTable
from edgeproxy.settings import IPNetwork

if TYPE_CHECKING:
    from edgeproxy.forward import Forwarder
    from edgeproxy.metrics import Metrics
    from edgeproxy.snapshot import Snapshot

__all__ = [
    "MAX_HEADERS",
    "MAX_HEAD_BYTES",
    "BadRequest",
    "ConnectionTracker",
    "ProxyChannel",
    "ProxyFactory",
    "ProxyRequest",
]

#: Largest request line plus header block, in bytes (nginx: 1 KiB + 4 x 8 KiB buffers).
MAX_HEAD_BYTES = 16 * 1024
#: Most header lines in one request.
MAX_HEADERS = 500
#: Request bodies up to this size are spooled in memory, larger ones to a temporary file.
SPOOL_IN_MEMORY = 100_000

_NO_BODY_STATUSES = frozenset({204, 304})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"


def split_target(target: bytes) -> tuple[bytes | None, bytes] | None:
    """Split a request-target into (authority or None, origin-form path+query).

    Origin form ``/p?q`` gives ``(None, b"/p?q")``; absolute form
    ``http://h:1/p?q`` gives ``(b"h:1", b"/p?q")``.  Anything else is None.
    """
    if target.startswith(b"/"):
        return None, target
    lowered = target[:8].lower()
    for scheme in (b"http://", b"https://"):
        if lowered.startswith(scheme):
            rest = target[len(scheme) :]
            cut = len(rest)
            for sep in (b"/", b"?"):
                i = rest.find(sep)
                if 0 <= i < cut:
                    cut = i
            authority, path = rest[:cut], rest[cut:]
            if not authority or b"@" in authority:
                return None
            if not path.startswith(b"/"):
                path = b"/" + path
            return authority, path
    return None


class _Reject(Exception):
    """Raised inside parser callbacks: stop parsing, answer ``error``, close."""

    def __init__(self, error: EdgeProxyError) -> None:
        super().__init__(error)
        self.error = error


class _StopParsing(Exception):
    """Raised inside parser callbacks: nothing more is read on this connection."""


class ProxyRequest:
    """One request on a downstream connection: its head as received, its
    spooled body, where it was routed, and the response written for it."""

    log = Logger(namespace="edgeproxy.request")

    # Filled in when the head is complete, read by process() and the access log.
    snapshot: Snapshot | None = None
    vhost: VirtualHostTable | None = None
    route: Route | None = None
    match: RouteMatch | None = None
    target: bytes = b""
    host: bytes | None = None
    error: EdgeProxyError | None = None
    cluster_name: str | None = None
    endpoint: str | None = None
    upstream_status: int | None = None
    attempts: int = 0
    outcome: str = "ok"
    upstream_time: float | None = None
    request_id: str | None = None
    #: The body, positioned at its start once complete; None when there is none.
    content: IO[bytes] | None = None
    #: The body's length when the request had one (Content-Length or chunked), else None.
    body_length: int | None = None
    #: Request body bytes received so far.
    body_bytes: int = 0
    #: The response: status, body bytes written (not counting framing).
    code: int = 200
    sentLength: int = 0
    finished: bool = False
    #: The whole request (head and body) has been received.
    complete: bool = False
    #: process() has been called.
    processing: bool = False
    #: Rejected before its body was read: the rest of the body is dropped.
    discarding: bool = False
    _disconnected: bool = False
    _body_limit: int = 0
    _expect_continue: bool = False
    _incoming_request_id: bytes | None = None
    _no_body: bool = False
    _chunked: bool = False
    _head: bytes | None = None
    _logged: bool = False
    _watchers: list[Callable[[Failure | None], object]] | None = None

    def __init__(
        self,
        channel: ProxyChannel,
        method: bytes,
        uri: bytes,
        version: bytes,
        headers: list[tuple[bytes, bytes]],
        persistent: bool,
    ) -> None:
        self.channel = channel
        self.factory: ProxyFactory = channel.factory
        self.started = channel.clock_seconds()
        self.method = method
        self.uri = uri
        self.clientproto = b"HTTP/" + version
        self.http11 = version == b"1.1"
        self.headers = headers
        self.persistent = persistent

    # -- the head is in --------------------------------------------------------

    def head_received(self, version: bytes, front: bool) -> None:
        """Check framing, route, open the body spool.  Raises :class:`_Reject`
        for what must stop the connection."""
        if version != b"1.1" and version != b"1.0":
            raise _Reject(VersionNotSupported() if version >= b"2" else BadRequest())
        hosts: list[bytes] = []
        content_length: bytes | None = None
        coding: bytes | None = None
        for name, value in self.headers:
            lname = name.lower()
            if lname == b"host":
                hosts.append(value)
            elif lname == b"content-length":
                content_length = value
            elif lname == b"transfer-encoding":
                # Several lines are one list (RFC 9110 5.3); llhttp looks at the last only.
                coding = value if coding is None else coding + b"," + value
            elif lname == b"expect":
                self._expect_continue = value.strip().lower() == b"100-continue"
            elif lname == b"x-request-id":
                # One id or none: several are as good as a forged one.
                self._incoming_request_id = value if self._incoming_request_id is None else b""
        if coding is not None:
            if not self.http11:
                # RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 means faulty framing (nginx: 400).
                raise _Reject(BadRequest())
            if coding.strip().lower() != b"chunked":
                # Decoding gzip and the like is the origin's job; a proxy that
                # strips Transfer-Encoding must not pass on a body still coded.
                raise _Reject(NotImplementedCoding())
        if len(hosts) > 1 or (not hosts and self.http11):
            # RFC 9112 3.2: an HTTP/1.1 request without Host is answered 400,
            # even in absolute form.
            raise _Reject(BadRequest())
        self.host = hosts[0].strip() if hosts else None
        factory = self.factory
        self.snapshot = snapshot = factory.forwarder.snapshot
        try:
            self._route(snapshot)
        except BadRequest as e:
            raise _Reject(e) from None
        except EdgeProxyError as e:
            self.error = e
        route = self.route
        limit = factory.settings.max_body_size
        if route is not None and route.max_body_size is not None:
            limit = route.max_body_size
        self._body_limit = limit
        if content_length is not None:
            length = int(content_length)  # llhttp let only digits through
            if length > limit:
                self.reject_early(BodyTooLarge())
                return
            self.body_length = 0
            if length:
                self.content = io.BytesIO() if length <= SPOOL_IN_MEMORY else _temporary_file()
        elif coding is not None:
            self.body_length = 0
            self.content = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
            length = -1
        else:
            length = 0
        if self._expect_continue and length and front and self.http11:
            self.channel.write_now(_CONTINUE)

    def _route(self, snapshot: Snapshot) -> None:
        split = split_target(self.uri)
        if split is None:
            raise BadRequest()
        authority, self.target = split
        if authority is None:
            if self.host is None:
                raise NoVirtualHost()  # HTTP/1.0 without Host
            authority = self.host
        elif authority != self.host:
            # RFC 9112 3.2.2: the target's authority replaces Host, so the
            # upstream sees the site the request was routed by.
            self.headers = [(n, v) for n, v in self.headers if n.lower() != b"host"]
            self.headers.append((b"Host", authority))
            self.host = authority
        host = normalise_host(authority)
        if host is None:
            raise BadRequest()
        self.vhost = vhost = snapshot.routing.find_virtual_host(host)
        if vhost is None:
            raise NoVirtualHost()
        self.match = match = vhost.match(self.target)
        if match is None:
            raise NoRoute()
        self.route = match.route

    def body_received(self, data: bytes) -> None:
        if self.discarding:
            return
        self.body_bytes += len(data)
        if self.body_bytes > self._body_limit:
            self.reject_early(BodyTooLarge())
            return
        content = self.content
        if content is not None:
            content.write(data)

    def body_complete(self) -> None:
        self.complete = True
        content = self.content
        if content is not None:
            self.body_length = self.body_bytes
            content.seek(0)

    def reject(self, error: EdgeProxyError) -> None:
        """The request cannot be served as sent: answer ``error`` (when its
        turn comes) and close the connection."""
        self.error = error
        self.persistent = False
        self.complete = True
        if isinstance(error, BodyTooLarge):
            self.outcome = "rejected"
        self._discard_body()

    def reject_early(self, error: EdgeProxyError) -> None:
        """Answer ``error`` before the body is read (as soon as it is this
        request's turn); the body is still parsed, and dropped, so the client
        is not reset before it reads the answer."""
        self.reject(error)
        self.discarding = True
        self.channel.run_queue()

    def _discard_body(self) -> None:
        content, self.content = self.content, None
        if content is not None:
            content.close()

    # -- its turn ----------------------------------------------------------------

    def process(self) -> None:
        self.processing = True
        self._assign_request_id()
        if self.error is not None:
            self.respond_error(self.error)
            return
        route = self.route
        assert route is not None and self.vhost is not None
        if not self.factory.tls and not route.plain_http:
            self._redirect_to_https()
            return
        self.factory.forwarder.forward(self)

    @property
    def client_ip(self) -> str:
        """The client's address as text, IPv6 in canonical form (a PROXY v2
        header gives it uncompressed), ``"-"`` when there is none."""
        return self.channel.client_ip

    def getHeader(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower case), or None."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def getCookie(self, name: bytes) -> bytes | None:
        """The value of cookie ``name`` from the ``Cookie`` headers, or None."""
        for key, value in self.headers:
            if key.lower() != b"cookie":
                continue
            for pair in value.split(b";"):
                cookie, sep, cookie_value = pair.strip().partition(b"=")
                if sep and cookie == name:
                    return cookie_value
        return None

    def _assign_request_id(self) -> None:
        """Keep a trusted client's ``X-Request-Id``, else make one; it goes
        upstream, back to the client and into the access log."""
        incoming = self._incoming_request_id
        if incoming and _is_request_id(incoming):
            trusted = self.factory.settings.trusted_sources
            if trusted and _address_in(self.client_ip, trusted):
                self.request_id = incoming.decode("ascii")
        if self.request_id is None:
            self.request_id = _new_request_id()

    # -- the response --------------------------------------------------------------

    def send_head(
        self,
        code: int,
        phrase: bytes,
        headers: list[tuple[bytes, bytes]],
        length: int | None,
    ) -> None:
        """Start the response.  ``headers`` are end-to-end headers; framing
        (``Content-Length``, chunking, ``Connection``) and ``X-Request-Id``
        are added here.  ``length`` is the body's length, None when unknown.
        The head is written with the first body bytes (one TLS record, one
        segment for a small response)."""
        self.code = code
        lines = [b"HTTP/1.1 %d %s" % (code, phrase)]
        for name, value in headers:
            lines.append(name + b": " + value)
        if self.request_id is not None:
            lines.append(b"X-Request-Id: " + self.request_id.encode("ascii"))
        if self.method == b"HEAD" or code in _NO_BODY_STATUSES or code < 200:
            self._no_body = True
        elif length is not None:
            lines.append(b"Content-Length: %d" % length)
        elif self.http11:
            lines.append(b"Transfer-Encoding: chunked")
            self._chunked = True
        else:
            # An HTTP/1.0 client learns where the body ends from the close.
            self.persistent = False
        channel = self.channel
        if channel.draining:
            self.persistent = False
        if not self.persistent:
            lines.append(b"Connection: close")
        elif not self.http11:
            lines.append(b"Connection: keep-alive")
        lines.append(b"\r\n")
        self._head = b"\r\n".join(lines)

    def write(self, data: bytes) -> None:
        if not data or self._no_body or self.finished or self._disconnected:
            return
        self.sentLength += len(data)
        if self._chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        head, self._head = self._head, None
        self.channel.write_now(data if head is None else head + data)

    def flush_head(self) -> None:
        """Send the head now if no body bytes came with it (a slow first byte
        must not hold the head back)."""
        head, self._head = self._head, None
        if head is not None:
            self.channel.write_now(head)

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self.channel.register_body_producer(producer)

    def unregisterProducer(self) -> None:
        self.channel.register_body_producer(None)

    def finish(self) -> None:
        if self.finished or self._disconnected:
            return
        self.finished = True
        head, self._head = self._head, None
        tail = _LAST_CHUNK if self._chunked else b""
        if head is not None or tail:
            self.channel.write_now(tail if head is None else head + tail)
        self._access_log()
        self._notify(None)
        self.channel.request_done(self)

    def loseConnection(self) -> None:
        """Cut the client connection (a body that broke off upstream must not
        look complete to the client)."""
        self.persistent = False
        self.channel.close()

    def when_over(self, callback: Callable[[Failure | None], object]) -> None:
        """Call ``callback`` once the response is finished (with None) or the
        client went away first (with the reason)."""
        if self.finished:
            callback(None)
        elif self._disconnected:
            callback(Failure(ConnectionDone()))
        elif self._watchers is None:
            self._watchers = [callback]
        else:
            self._watchers.append(callback)

    def notifyFinish(self) -> Deferred[None]:
        """:meth:`when_over` as a Deferred, as twisted.web's requests have it."""
        d: Deferred[None] = Deferred()
        self.when_over(lambda failure: d.callback(None) if failure is None else d.errback(failure))
        return d

    def _notify(self, failure: Failure | None) -> None:
        watchers, self._watchers = self._watchers, None
        for watcher in watchers or ():
            watcher(failure)

    # -- answers made here ---------------------------------------------------

    def respond_error(self, error: EdgeProxyError) -> None:
        self.error = error
        if self._disconnected or self.finished:
            return
        if isinstance(error, BadRequest):
            # Whatever follows a malformed request cannot be trusted to be framed right.
            self.persistent = False
        body = _error_body(error)
        headers = [(b"Content-Type", b"text/plain; charset=utf-8")]
        headers.extend(error.extra_headers())
        self.send_head(error.status_hint, _reason(error.status_hint), headers, len(body))
        self.write(body)
        self.finish()

    def _redirect_to_https(self) -> None:
        # Redirect to the name the client used (without its port), not the
        # configured pattern: a wildcard matched it.
        host = normalise_host(self.host or b"") or ""
        if ":" in host:
            host = f"[{host}]"
        port = self.factory.https_port()
        location = f"https://{host}" + (f":{port}" if port not in (None, 443) else "")
        body = b"redirecting to https\n"
        self.outcome = "redirect"
        self.send_head(
            308,
            b"Permanent Redirect",
            [
                (b"Location", location.encode("ascii") + self.target),
                (b"Content-Type", b"text/plain; charset=utf-8"),
            ],
            len(body),
        )
        self.write(body)
        self.finish()

    # -- the end -----------------------------------------------------------

    def connection_lost(self, reason: Failure) -> None:
        if self.finished:
            return
        self._disconnected = True
        if not self._logged:
            if self.outcome == "ok":
                self.outcome = "client_closed"
            self._access_log()
        self._discard_body()
        self._notify(reason)

    def _access_log(self) -> None:
        if self._logged:
            return
        self._logged = True
        self.factory.access_log.log_request(self, self.channel.clock_seconds() - self.started)


# Request ids must be unique, not secret: a PRNG seeded from the OS is enough,
# and saves a getrandom() system call per request.
_ids = random.Random(secrets.randbits(128))


def _new_request_id() -> str:
    return f"{_ids.getrandbits(128):032x}"


def _is_request_id(value: bytes) -> bool:
    # Printable ASCII without spaces or quotes, of a sane length: it is logged and echoed.
    return 0 < len(value) <= 200 and all(0x21 <= b <= 0x7E and b != 0x22 for b in value)


def _address_in(address: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def _reason(status: int) -> bytes:
    if status == 431:  # not in twisted.web's table
        return b"Request Header Fields Too Large"
    return RESPONSES.get(status, b"Error")


def _error_body(error: EdgeProxyError) -> bytes:
    return b"%d %s\n" % (error.status_hint, error.public_message.encode("ascii"))


def _temporary_file() -> IO[bytes]:
    return tempfile.TemporaryFile()


_CONNECTION_DONE = Failure(ConnectionDone())


def _no_write(data: bytes) -> None:
    """A channel's write before it has a transport."""


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

    def __init__(self, factory: ProxyFactory) -> None:
        self.factory = factory
        self.clock_seconds: Callable[[], float] = factory.clock.seconds
        self._parser = HttpRequestParser(self)
        #: Requests whose head is in, oldest first; the first is the one being answered.
        self.requests: deque[ProxyRequest] = deque()
        self._parsing: ProxyRequest | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._in_head = False
        self._unparsed = 0
        self._input_closed = False
        self._reading_paused = False
        self._write_paused = False
        self._body_producer: IPushProducer | None = None
        self._closed = False
        self._write: Callable[[bytes], object] = _no_write
        self._last_data = 0.0
        self._timer: IDelayedCall | None = None
        self._linger: IDelayedCall | None = None
        self._processing_queue = False

    # -- the connection ----------------------------------------------------------

    def connectionMade(self) -> None:
        transport: Any = self.transport
        set_no_delay(transport)
        if isinstance(transport, TLSMemoryBIOProtocol):
            # Not BufferingTLSTransport's write, which holds small writes back
            # to the next reactor turn to join them: a response head and its
            # first body bytes already go out as one write, so the wait (a
            # callLater per response) would buy nothing.
            self._write = partial(TLSMemoryBIOProtocol.write, transport)
        else:
            self._write = transport.write
        # Told to pause when the client is slow to read; passed on to the body's producer.
        transport.registerProducer(self, True)
        factory = self.factory
        factory.connections.add(self)
        metrics = factory.metrics
        if metrics is not None:
            metrics.connection_opened(factory.kind)
        self._last_data = self.clock_seconds()
        self._timer = factory.clock.callLater(factory.timeout, self._timed_out)

    @property
    def client_ip(self) -> str:
        ip = self._client_ip
        if ip is None:
            peer = self.transport.getPeer() if self.transport is not None else None
            ip = getattr(peer, "host", None) or "-"
            if ":" in ip:
                try:
                    ip = str(ipaddress.ip_address(ip))
                except ValueError:
                    pass
            self._client_ip = ip
        return ip

    def handshakeCompleted(self) -> None:
        """Called by the TLS layer under this channel."""
        self._handshake_done = True
        metrics = self.factory.metrics
        if metrics is not None:
            version = None
            get_handle = getattr(self.transport, "getHandle", None)
            if get_handle is not None:
                version = get_handle().get_protocol_version_name()
            metrics.tls_handshakes.labels(version or "unknown").inc()

    def dataReceived(self, data: bytes) -> None:
        if self._input_closed:
            return
        self._last_data = self.clock_seconds()
        if self._in_head or self._parsing is None:
            self._unparsed += len(data)
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade as upgrade:
            self._upgraded(data[upgrade.args[0] :])
            return
        except HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, _StopParsing):
                return
            if isinstance(cause, _Reject):
                self._reject(cause.error)
            else:
                self.log.failure(
                    "request parsing failed", Failure(cause) if cause is not None else None
                )
                self._reject(EdgeProxyError())
            return
        except HttpParserInvalidMethodError:
            # A method llhttp does not know (it knows the IANA registry's).
            self._reject(NotImplementedMethod())
            return
        except HttpParserError:
            self._reject(BadRequest())
            return
        if self._in_head and self._unparsed > 4 * MAX_HEAD_BYTES:
            # llhttp keeps a header line being received in memory whole:
            # bound it even before the line ends.
            self._reject(HeadTooLarge())
            return
        self.run_queue()

    def _upgraded(self, rest: bytes) -> None:
        """llhttp stops at ``Upgrade``/``CONNECT``.  Upgrades are not proxied
        (Upgrade is hop-by-hop and dropped), so a plain request goes on as one."""
        request = self._parsing
        if request is not None and not request.complete:
            if request.body_length is not None:
                # An upgrade request with a body: too odd to frame safely.
                self._reject(BadRequest())
                return
            self.on_message_complete()
        last = self.requests[-1] if self.requests else None
        if last is not None and last.error is not None:
            # CONNECT and friends: answered 400, and the connection closes.
            self._input_closed = True
            return
        self._parser = HttpRequestParser(self)
        if rest:
            self.dataReceived(rest)
        else:
            self.run_queue()

    def _reject(self, error: EdgeProxyError) -> None:
        """Stop reading; answer ``error`` in turn, then close."""
        self._input_closed = True
        self._in_head = False
        request = self._parsing
        self._parsing = None
        if request is None:
            # The head did not parse: a request object just to answer and log it.
            request = ProxyRequest(
                self, b"-", self._url or b"-", b"1.1", self._headers, persistent=False
            )
            self.requests.append(request)
        request.reject(error)
        self.run_queue()

    # -- httptools callbacks; they run inside feed_data ------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._url = b""
        self._headers = []
        # The request line's method, spaces and version, and the blank line
        # (for GET): the callbacks below count the rest.
        self._head_size = 17

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > MAX_HEAD_BYTES:
            raise _Reject(HeadTooLarge())

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        self._head_size += len(name) + len(value) + 4
        if self._head_size > MAX_HEAD_BYTES or len(headers) >= MAX_HEADERS:
            raise _Reject(HeadTooLarge())
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._unparsed = 0
        parser = self._parser
        version = parser.get_http_version().encode("ascii")
        request = ProxyRequest(
            self,
            parser.get_method(),
            self._url,
            version,
            self._headers,
            parser.should_keep_alive() and not self.draining,
        )
        self._parsing = request
        self.requests.append(request)
        request.head_received(version, len(self.requests) == 1)
        if parser.should_upgrade() and request.body_length is not None:
            # llhttp would skip an upgrade request's body and parse it as the
            # next request.  Upgrades are not proxied; one with a body is refused.
            raise _Reject(BadRequest())

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
            raise _StopParsing()
        request.body_complete()
        # Processing starts once feed_data returns (run_queue), outside the parser.
        if request is not self.requests[0] and not self._reading_paused:
            # A pipelined request waits for the one before it: read no further.
            self._reading_paused = True
            transport: Any = self.transport
            transport.pauseProducing()

    # -- answering in order ------------------------------------------------------------

    def request_done(self, request: ProxyRequest) -> None:
        """``request`` has its whole response written."""
        requests = self.requests
        if requests and requests[0] is request:
            requests.popleft()
        else:  # pragma: no cover - only the first request is ever answered
            requests.remove(request)
        self._body_producer = None
        if not request.persistent or self.draining:
            if request is self._parsing:
                self._linger_then_close()
            else:
                self.close()
            return
        self.run_queue()
        if self._reading_paused and not self._input_closed and len(requests) <= 1:
            self._reading_paused = False
            if self.transport is not None:
                self.transport.resumeProducing()  # type: ignore[attr-defined]

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
                if first.processing or not first.complete:
                    break
                first.process()
        finally:
            self._processing_queue = False

    def write_now(self, data: bytes) -> None:
        if not self._closed and self.transport is not None:
            self._write(data)

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
        """Finish the request in progress, if any, then close; take no more."""
        self.draining = True
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
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resumeProducing()  # type: ignore[attr-defined]
        if self._linger is None:
            self._linger = self.factory.clock.callLater(
                self.factory.settings.lingering_timeout, self.close
            )

    def _timed_out(self) -> None:
        """The inactivity timer: an idle connection, or a client that stopped
        sending mid-request, is closed; one waiting for its answer is not."""
        self._timer = None
        if self._closed:
            return
        timeout = self.factory.timeout
        requests = self.requests
        busy = bool(requests) and requests[0].processing
        idle_for = self.clock_seconds() - self._last_data
        if busy or idle_for < timeout:
            self._timer = self.factory.clock.callLater(
                timeout if busy else timeout - idle_for, self._timed_out
            )
            return
        self.close()

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        self._closed = True
        self._input_closed = True
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
            metrics.tls_failures.labels(failed).inc()


class ProxyFactory(ServerFactory):
    """Builds downstream connections for one listener (TLS or plain)."""

    protocol = ProxyChannel  # type: ignore[assignment]
    noisy = False

    def __init__(
        self,
        forwarder: Forwarder,
        *,
        tls: bool,
        settings: Any,
        access_log: Any,
        clock: Any,
        https_port: Any = lambda: None,
        metrics: Metrics | None = None,
        connections: ConnectionTracker | None = None,
    ) -> None:
        self.forwarder = forwarder
        self.tls = tls
        self.kind = "https" if tls else "http"
        self.metrics = metrics
        self.connections = connections if connections is not None else ConnectionTracker()
        self.settings = settings
        self.timeout: float = settings.keepalive_timeout
        self.access_log = access_log
        self.clock = clock
        self.https_port = https_port

    def buildProtocol(self, addr: Any) -> ProxyChannel:  # type: ignore[override]
        return ProxyChannel(self)
