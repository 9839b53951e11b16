"""
One request on a downstream connection: its head as received (``(name,
value)`` pairs), its spooled body, the route it matched, and the response
written for it.  Routing happens as soon as the head is in, so a body limit
applies before the body is read; errors and the http->https redirect are
answered here, everything else goes to the :class:`~edgeproxy.proxy.forward.Forwarder`.
The connection it arrived on (parsing, pipelining, timers, flow control) is
:mod:`edgeproxy.proxy.h1channel`.
"""

from __future__ import annotations

import io
import ipaddress
import random
import secrets
import tempfile
from collections.abc import Callable
from typing import IO, TYPE_CHECKING

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES

from edgeproxy.config import Route
from edgeproxy.config.routing import RouteMatch, VirtualHostTable
from edgeproxy.config.settings import IPNetwork
from edgeproxy.core.errors import (
    BadRequest,
    BodyTooLarge,
    EdgeProxyError,
    MisdirectedRequest,
    NoRoute,
    NotImplementedCoding,
    NoVirtualHost,
    Outcome,
    Reason,
    VersionNotSupported,
)
from edgeproxy.core.hostnames import normalise_host

if TYPE_CHECKING:
    from edgeproxy.cluster.snapshot import Snapshot
    from edgeproxy.proxy.interfaces import Channel, Listener

__all__ = ["BadRequest", "ProxyRequest", "RejectRequest", "StopParsing", "split_target"]

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


class RejectRequest(Exception):
    """Raised inside parser callbacks: stop parsing, answer ``error``, close."""

    def __init__(self, error: EdgeProxyError) -> None:
        super().__init__(error)
        self.error = error


class StopParsing(Exception):
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
    #: What happened and why (None while nothing went wrong), for the access log.
    outcome: Outcome = Outcome.OK
    reason: Reason | None = None
    upstream_time: float | None = None
    request_id: str | None = None
    #: The body, positioned at its start once complete; None when there is none.
    content: IO[bytes] | None = None
    #: The body's length when the request had one (Content-Length or chunked), else None.
    body_length: int | None = None
    #: Request body bytes received so far.
    body_bytes: int = 0
    #: The response: status (0 until its head is made), body bytes written
    #: (not counting framing).
    code: int = 0
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
    #: edgeproxy answered ``Expect: 100-continue`` itself.
    _continued: bool = False
    _incoming_request_id: bytes | None = None
    _no_body: bool = False
    _chunked: bool = False
    _head: bytes | None = None
    _logged: bool = False
    _watchers: list[Callable[[Failure | None], object]] | None = None

    def __init__(
        self,
        channel: Channel,
        method: bytes,
        uri: bytes,
        version: bytes,
        headers: list[tuple[bytes, bytes]],
        persistent: bool,
    ) -> None:
        self.channel = channel
        self.factory: Listener = channel.factory
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
            raise RejectRequest(VersionNotSupported() if version >= b"2" else BadRequest())
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
                raise RejectRequest(BadRequest(Reason.BAD_FRAMING))
            if coding.strip().lower() != b"chunked":
                # Decoding gzip and the like is the origin's job; a proxy that
                # strips Transfer-Encoding must not pass on a body still coded.
                raise RejectRequest(NotImplementedCoding())
        if len(hosts) > 1 or (not hosts and self.http11):
            # RFC 9112 3.2: an HTTP/1.1 request without Host is answered 400,
            # even in absolute form.
            raise RejectRequest(BadRequest(Reason.BAD_HOST))
        self.host = hosts[0].strip() if hosts else None
        factory = self.factory
        self.snapshot = snapshot = factory.forwarder.snapshot
        try:
            self._route(snapshot)
        except BadRequest as e:
            raise RejectRequest(e.with_traceback(None)) from None
        except EdgeProxyError as e:
            # Without its traceback: the traceback's frames hold this request,
            # which would make a cycle only the garbage collector can free.
            self.error = e.with_traceback(None)
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
            if length > SPOOL_IN_MEMORY:
                self.content = tempfile.TemporaryFile()
            elif length:
                self.content = io.BytesIO()
        elif coding is not None:
            self.body_length = 0
            self.content = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
            length = -1
        else:
            length = 0
        if self._expect_continue and length and front and self.http11:
            self._continued = True
            self.channel.write_now(_CONTINUE)

    def _route(self, snapshot: Snapshot) -> None:
        split = split_target(self.uri)
        if split is None:
            raise BadRequest(Reason.BAD_TARGET)
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
            raise BadRequest(Reason.BAD_HOST)
        channel = self.channel
        if host != channel.covered_host and not channel.covers(host):
            raise MisdirectedRequest()
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

    def send_informational(self, code: int, phrase: bytes, lines: list[bytes]) -> None:
        """An interim (1xx) response from the upstream, written at once: a
        proxy must forward them (RFC 9110 15.2), to HTTP/1.1 clients only
        (HTTP/1.0 ones do not expect them).  ``lines`` are its end-to-end
        headers as ``b"Name: value"`` (no framing: a 1xx has no content).  A
        ``100 Continue`` is not repeated when edgeproxy sent its own."""
        if (
            not self.http11
            or self.code
            or self.finished
            or self._disconnected
            or (code == 100 and self._continued)
        ):
            return
        lines.insert(0, b"HTTP/1.1 %d %s" % (code, phrase))
        lines.append(b"\r\n")
        self.channel.write_now(b"\r\n".join(lines))

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
        self.send_head_lines(code, phrase, list(map(b": ".join, headers)), length)

    def send_head_lines(
        self, code: int, phrase: bytes, lines: list[bytes], length: int | None
    ) -> None:
        """:meth:`send_head` with the headers already as ``b"Name: value"``
        lines (which this takes over and adds to)."""
        self.code = code
        lines.insert(0, b"HTTP/1.1 %d %s" % (code, phrase))
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

    def _notify(self, failure: Failure | None) -> None:
        watchers, self._watchers = self._watchers, None
        for watcher in watchers or ():
            watcher(failure)

    # -- answers made here ---------------------------------------------------

    def respond_error(self, error: EdgeProxyError) -> None:
        self.error = error
        if self._disconnected or self.finished:
            return
        self.outcome = outcome = error.outcome
        self.reason = reason = error.reason
        metrics = self.factory.metrics
        if metrics is not None:
            metrics.count_outcome(outcome, reason)
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
        self.outcome = Outcome.REDIRECT
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

    def break_off(self, reason: Reason) -> None:
        """The response cannot be completed (the upstream broke off or went
        quiet mid-body): cut the client connection, so that a short body is
        not taken for a whole one, and log why."""
        self.outcome = Outcome.UPSTREAM_ERROR
        self.reason = reason
        self.loseConnection()

    def timed_out(self) -> None:
        """The client stopped sending this request for the keep-alive timeout;
        the connection is being closed (logged as nginx does, 408)."""
        if not self.finished and self.outcome is Outcome.OK:
            self.outcome = Outcome.CLIENT_TIMEOUT
            self.reason = Reason.REQUEST_TIMEOUT
            self.code = 408

    def connection_lost(self, reason: Failure) -> None:
        if self.finished:
            return
        self._disconnected = True
        if not self._logged:
            if self.outcome is Outcome.OK:
                # Whatever was written, the response is not whole: 499, as nginx.
                self.outcome = Outcome.CLIENT_CLOSED
                if not self.complete:
                    self.reason = Reason.REQUEST_INCOMPLETE
                elif not self.processing:
                    self.reason = Reason.QUEUED
                elif not self.code:
                    self.reason = Reason.AWAITING_RESPONSE
                else:
                    self.reason = Reason.RESPONSE_INCOMPLETE
                self.code = 499
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


#: Reason phrases of statuses edgeproxy answers that twisted.web's table lacks.
_MORE_REASONS = {421: b"Misdirected Request", 431: b"Request Header Fields Too Large"}


def _reason(status: int) -> bytes:
    return RESPONSES.get(status) or _MORE_REASONS.get(status, b"Error")


def _error_body(error: EdgeProxyError) -> bytes:
    return b"%d %s\n" % (error.status_hint, error.public_message.encode("ascii"))
