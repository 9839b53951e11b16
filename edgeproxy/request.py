"""
The downstream side: twisted.web's HTTP/1.1 parser with a request class that
routes as soon as the headers are in (so a body limit applies before the body
is read), answers errors and redirects itself, and hands everything else to
the :class:`~edgeproxy.forward.Forwarder`.

``twisted.web.http.Request`` is used directly rather than
``twisted.web.server.Request``: the latter invents ``Server``, ``Date`` and
``Content-Type`` headers and walks a resource tree, neither of which a proxy
wants.
"""

from __future__ import annotations

import io
import ipaddress
import random
import secrets
from typing import TYPE_CHECKING, Any

from OpenSSL import SSL
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from zope.interface import implementer

from edgeproxy.config import Route
from edgeproxy.errors import BodyTooLarge, EdgeProxyError, NoRoute, NoVirtualHost
from edgeproxy.hostnames import normalise_host
from edgeproxy.netutil import set_no_delay
from edgeproxy.routing import RouteMatch, VirtualHostTable
from edgeproxy.settings import IPNetwork

if TYPE_CHECKING:
    from edgeproxy.forward import Forwarder
    from edgeproxy.metrics import Metrics
    from edgeproxy.snapshot import Snapshot

__all__ = ["BadRequest", "ProxyChannel", "ProxyFactory", "ProxyRequest"]


class BadRequest(EdgeProxyError):
    status_hint = 400
    public_message = "bad request"


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


class ProxyRequest(http.Request):
    """One request on a downstream connection."""

    log = Logger(namespace="edgeproxy.request")

    # Filled in by gotLength (headers complete), read by process() and the access log.
    snapshot: Snapshot | None = None
    vhost: VirtualHostTable | None = None
    route: Route | None = None
    match: RouteMatch | None = None
    target: bytes = b""
    error: EdgeProxyError | None = None
    cluster_name: str | None = None
    endpoint: str | None = None
    upstream_status: int | None = None
    attempts: int = 0
    outcome: str = "ok"
    upstream_time: float | None = None
    request_id: str | None = None

    _body_limit: int = 0
    #: Request body bytes received so far.
    body_bytes: int = 0
    _rejected_early: bool = False
    _linger: IDelayedCall | None = None
    _logged: bool = False

    def __init__(self, channel: ProxyChannel, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)
        # twisted.web drops request.channel when the request ends; the access
        # log still wants the connection's TLS details then.
        self.tls_channel = channel
        self.factory: ProxyFactory = channel.factory
        self.started = self.factory.clock.seconds()

    # -- header time -------------------------------------------------------

    def gotLength(self, length: int | None) -> None:
        factory = self.factory
        self.snapshot = snapshot = factory.forwarder.snapshot
        self._body_limit = factory.settings.max_body_size
        try:
            self._route_request(snapshot)
        except EdgeProxyError as e:
            self.error = e
        if self.route is not None and self.route.max_body_size is not None:
            self._body_limit = self.route.max_body_size
        if length is not None and length > self._body_limit:
            self._reject_early(BodyTooLarge())
            return
        super().gotLength(length)

    def _route_request(self, snapshot: Snapshot) -> None:
        channel = self.channel
        # The request line is only on the channel until the body is in; the
        # route must be known now so its body limit applies.
        raw_target: bytes = getattr(channel, "_path", b"")
        # Known now, though twisted.web sets them only once the body is in:
        # an early 413 is logged with them.
        self.method = getattr(channel, "_command", b"-")
        self.uri = raw_target
        self.clientproto = getattr(channel, "_version", b"-")
        split = split_target(raw_target)
        if split is None:
            raise BadRequest()
        authority, self.target = split
        hosts = self.requestHeaders.getRawHeaders(b"host")
        if hosts is not None and len(hosts) > 1:
            raise BadRequest()
        if authority is None:
            if hosts is None:
                if getattr(channel, "_version", b"HTTP/1.1") == b"HTTP/1.1":
                    raise BadRequest()
                raise NoVirtualHost()
            authority = hosts[0]
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

    def handleContentChunk(self, data: bytes) -> None:
        if self._rejected_early:
            return
        self.body_bytes += len(data)
        if self.body_bytes > self._body_limit:
            self._reject_early(BodyTooLarge())
            return
        assert self.content is not None  # gotLength made it
        self.content.write(data)

    def _reject_early(self, error: EdgeProxyError) -> None:
        """Answer before the body is read, then close.

        The rest of the body is read and dropped for up to
        ``lingering_timeout`` seconds, so the client is not reset before it
        reads the answer.
        """
        self.error = error
        self._rejected_early = True
        # twisted.web would otherwise send "100 Continue" after our answer.
        self.requestHeaders.removeHeader(b"expect")
        if self.content is not None:
            self.content.close()
        # twisted.web still looks at the (dropped) body once it is complete.
        self.content = io.BytesIO()
        self.code = error.status_hint
        self.outcome = "rejected"
        body = _error_body(error)
        transport = self.channel.transport
        assert transport is not None  # still receiving the body
        transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (error.status_hint, http.RESPONSES.get(error.status_hint, b"Error"), len(body), body)
        )
        self.sentLength = len(body)
        self.channel.persistent = False
        self._access_log()
        self._linger = self.factory.clock.callLater(
            self.factory.settings.lingering_timeout, self._close_after_reject
        )

    def _close_after_reject(self) -> None:
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        if self.channel is not None:
            # HTTPChannel.loseConnection, not the transport's: the channel is
            # registered as the transport's producer and a TLS transport
            # waits for producers to go before it closes.
            self.channel.loseConnection()

    # -- body complete -----------------------------------------------------

    def process(self) -> None:
        if self._rejected_early:
            self._close_after_reject()
            return
        self._assign_request_id()
        if self.error is not None:
            self.respond_error(self.error)
            return
        assert self.route is not None and self.vhost is not None
        if not self.factory.tls and not self.route.plain_http:
            self._redirect_to_https()
            return
        self.factory.forwarder.forward(self)

    _client_ip: str | None = None

    @property
    def client_ip(self) -> str:
        """The client's address as text, IPv6 in canonical form (a PROXY v2
        header gives it uncompressed), ``"-"`` when there is none."""
        if self._client_ip is None:
            host = getattr(self.getClientAddress(), "host", None) or "-"
            if ":" in host:
                try:
                    host = str(ipaddress.ip_address(host))
                except ValueError:
                    pass
            self._client_ip = host
        return self._client_ip

    def _assign_request_id(self) -> None:
        """Keep a trusted client's ``X-Request-Id``, else make one; it goes
        upstream, back to the client and into the access log."""
        incoming = self.requestHeaders.getRawHeaders(b"x-request-id")
        if incoming and len(incoming) == 1 and _is_request_id(incoming[0]):
            trusted = self.factory.settings.trusted_sources
            if trusted and _address_in(self.client_ip, trusted):
                self.request_id = incoming[0].decode("ascii")
        if self.request_id is None:
            self.request_id = _new_request_id()
            self.requestHeaders.setRawHeaders(b"x-request-id", [self.request_id.encode("ascii")])
        self.responseHeaders.setRawHeaders(b"x-request-id", [self.request_id.encode("ascii")])

    # -- answers made here ---------------------------------------------------

    def respond_error(self, error: EdgeProxyError) -> None:
        self.error = error
        if self._disconnected or self.finished:
            return
        body = _error_body(error)
        self.setResponseCode(error.status_hint)
        headers = self.responseHeaders
        if error.status_hint == 400 and self.channel is not None:
            # Whatever follows a malformed request cannot be trusted to be framed right.
            self.channel.persistent = False
            headers.setRawHeaders(b"connection", [b"close"])
        headers.setRawHeaders(b"content-type", [b"text/plain; charset=utf-8"])
        headers.setRawHeaders(b"content-length", [b"%d" % len(body)])
        for name, value in error.extra_headers():
            headers.addRawHeader(name, value)
        self.write(body)
        self.finish()

    def _redirect_to_https(self) -> None:
        # Redirect to the name the client used (without its port), not the
        # configured pattern: a wildcard matched it.
        authority = self.requestHeaders.getRawHeaders(b"host", [b""])[0]
        host = normalise_host(authority) or ""
        if ":" in host:
            host = f"[{host}]"
        port = self.factory.https_port()
        location = f"https://{host}" + (f":{port}" if port not in (None, 443) else "")
        body = b"redirecting to https\n"
        self.setResponseCode(308)
        self.responseHeaders.setRawHeaders(b"location", [location.encode("ascii") + self.target])
        self.responseHeaders.setRawHeaders(b"content-type", [b"text/plain; charset=utf-8"])
        self.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(body)])
        self.outcome = "redirect"
        self.write(body)
        self.finish()

    # -- the end -----------------------------------------------------------

    def finish(self) -> None:
        super().finish()
        self._access_log()

    def connectionLost(self, reason: Failure) -> None:
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        if not self.finished and not self._logged:
            self.outcome = "client_closed"
        super().connectionLost(reason)
        self._access_log()

    def _access_log(self) -> None:
        if self._logged:
            return
        self._logged = True
        self.factory.access_log.log_request(self, self.factory.clock.seconds() - self.started)


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


def _error_body(error: EdgeProxyError) -> bytes:
    return b"%d %s\n" % (error.status_hint, error.public_message.encode("ascii"))


_CONNECTION_DONE = Failure(ConnectionDone())


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


@implementer(IHandshakeListener)
class ProxyChannel(http.HTTPChannel):
    requestFactory = ProxyRequest  # type: ignore[assignment]
    factory: ProxyFactory
    _handshake_done = False

    def connectionMade(self) -> None:
        super().connectionMade()
        set_no_delay(self.transport)
        self.factory.connections.add(self)
        metrics = self.factory.metrics
        if metrics is not None:
            metrics.connection_opened(self.factory.kind)

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

    def drain(self) -> None:
        """Finish the request in progress, if any, then close; take no more."""
        self.persistent = False
        if not self.requests:
            self.loseConnection()

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        super().connectionLost(reason)
        self.factory.connections.remove(self)
        metrics = self.factory.metrics
        if metrics is None:
            return
        metrics.connection_closed(self.factory.kind)
        if self.factory.tls and not self._handshake_done:
            # A scanner, a refused SNI name, a client that distrusts the certificate...
            failed = "tls_error" if reason.check(SSL.Error) else "closed_before_handshake"
            metrics.tls_failures.labels(failed).inc()


class ProxyFactory(http.HTTPFactory):
    """Builds downstream connections for one listener (TLS or plain)."""

    protocol = ProxyChannel  # type: ignore[assignment]

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
        super().__init__(timeout=settings.keepalive_timeout, reactor=clock)
        self.forwarder = forwarder
        self.tls = tls
        self.kind = "https" if tls else "http"
        self.metrics = metrics
        self.connections = connections if connections is not None else ConnectionTracker()
        self.settings = settings
        self.access_log = access_log
        self.clock = clock
        self.https_port = https_port

    def log(self, request: Any) -> None:
        # Access logging is done by ProxyRequest itself, once, for every outcome.
        pass
