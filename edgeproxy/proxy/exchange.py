"""
The exchange: one request and its response, whatever protocol the client
spoke.  It holds the request head as received (``(name, value)`` pairs), the
client's facts (through its :class:`~.interfaces.Channel`), the spooled body,
the route it matched with that route's stage chain (:mod:`.stages`), and one
typed :class:`ExchangeRecord` of what happened, which the access log and the
metrics read.

Routing happens as soon as the head is in, so the route's head-time stages
(the body limit) act before the body is read.  On a route with
``request_buffering=False`` the body is not spooled but streamed upstream as
it arrives (:class:`~.streambody.StreamedBody`), and the exchange is
processed without waiting for it; it asks its channel to stop and resume
taking the body only through ``pause_request_body`` and
``resume_request_body``.  When its turn comes the exchange runs its chain;
the last stage forwards it.  The response side (send a head, body chunks
with backpressure, finish, abort) is the protocol's: the HTTP/1.1 framing
is :class:`edgeproxy.proxy.h1exchange.H1Exchange`, and nothing past the
channel knows which protocol it is.
"""

from __future__ import annotations

import io
import itertools
import random
import secrets
import tempfile
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, Protocol

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES

from edgeproxy.config import Route
from edgeproxy.config.routing import RouteMatch, VirtualHostTable
from edgeproxy.config.settings import Settings
from edgeproxy.config.tlspolicy import TLSPolicy
from edgeproxy.core.addresses import Networks, forwarded_client, forwarded_elements
from edgeproxy.core.errors import (
    BadRequest,
    BodyTooLarge,
    EdgeProxyError,
    MisdirectedRequest,
    NoRoute,
    NotImplementedMethod,
    NoVirtualHost,
    Outcome,
    Reason,
    UpgradeRefused,
    VersionNotSupported,
)
from edgeproxy.core.framing import request_framing
from edgeproxy.core.headers import upgrade_offer
from edgeproxy.core.hostnames import normalise_host
from edgeproxy.core.paths import has_dot_segment
from edgeproxy.proxy.interfaces import AccessSink, ProxyMetrics
from edgeproxy.proxy.streambody import StreamedBody
from edgeproxy.proxy.tunnel import TunnelEnd

if TYPE_CHECKING:
    from edgeproxy.cluster.snapshot import Snapshot
    from edgeproxy.upstream.h1client import UpgradedConnection

__all__ = [
    "BadRequest",
    "Channel",
    "Dispatch",
    "Exchange",
    "ExchangeRecord",
    "Handler",
    "Listener",
    "Plan",
    "RejectRequest",
    "ResponseObserver",
    "RouteChain",
    "Stage",
    "StopParsing",
    "split_target",
]


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


class Dispatch(Protocol):
    """Where the current configuration's plan is read, once per request
    (:class:`edgeproxy.proxy.pipeline.Pipeline`)."""

    @property
    def plan(self) -> Plan: ...


class Listener(Protocol):
    """The listener a connection was accepted on (:class:`.h1channel.ProxyFactory`)."""

    @property
    def tls(self) -> bool: ...
    @property
    def settings(self) -> Settings: ...
    @property
    def metrics(self) -> ProxyMetrics | None: ...
    @property
    def access_log(self) -> AccessSink: ...
    @property
    def pipeline(self) -> Dispatch: ...
    @property
    def trusted(self) -> Networks | None: ...


class Channel(Protocol):
    """The client connection an exchange arrived on, as the exchange uses it."""

    @property
    def factory(self) -> Listener: ...
    @property
    def draining(self) -> bool: ...
    @property
    def covered_host(self) -> str | None: ...
    @property
    def client_ip(self) -> str: ...
    @property
    def peer_trusted(self) -> bool: ...
    @property
    def replaces_forwarding(self) -> bool: ...
    @property
    def met_policy(self) -> TLSPolicy | None: ...
    @property
    def client_subject(self) -> bytes | None: ...
    def clock_seconds(self) -> float: ...
    def covers(self, host: str) -> bool: ...
    def meets(self, policy: TLSPolicy) -> bool: ...
    def tls_details(self) -> tuple[str | None, str | None]: ...
    def write_now(self, data: bytes) -> None: ...
    def register_body_producer(self, producer: IPushProducer | None) -> None: ...
    def pause_request_body(self) -> None:
        """Stop taking the request body being received (a streamed body
        whose upstream is full, or that no upstream takes yet): HTTP/1.1
        stops reading the connection, HTTP/2 withholds the stream's
        WINDOW_UPDATE.  Time so spent is not held against the client."""
    def resume_request_body(self) -> None:
        """Take the request body again (see :meth:`pause_request_body`)."""
    def request_done(self, request: Exchange) -> None: ...
    def run_queue(self) -> None: ...
    def close(self) -> None: ...


Handler = Callable[["Exchange"], None]


class Stage:
    """One per-route behaviour on the request path (Envoy's HTTP filter,
    Caddy's handler).  A route's stages are made once, when a configuration
    is installed, and chained (:class:`RouteChain`); a stage overrides
    either method or both:

    - :meth:`on_head` runs as soon as the request head is routed, before
      the body is read: it may refuse the request
      (``exchange.reject_early(error)``) or set what the body may be;
    - :meth:`handle` runs in the request's turn, once the body is in (a
      streamed body, :attr:`Exchange.body_stream`: as soon as the head is
      routed and the request is first in line; see :attr:`whole_body_methods`): it may
      answer the exchange itself (``exchange.respond(...)`` or
      ``exchange.respond_error(...)``), pass it on (``self.next(exchange)``),
      or watch and change the response on its way back
      (``exchange.observe_response(observer)``) and pass it on.

    The last stage answers every exchange it is given (forwarding does).
    """

    #: The next stage's :meth:`handle`, set when the chain is made.
    next: Handler
    #: Methods whose whole body this stage reads (``exchange.content``): on a
    #: route with ``request_buffering=False`` their bodies are still spooled.
    whole_body_methods: frozenset[bytes] = frozenset()

    def on_head(self, exchange: Exchange) -> None:
        """At head time (the default does nothing and is never called)."""

    def handle(self, exchange: Exchange) -> None:
        """In the request's turn (the default passes it on and is skipped)."""
        self.next(exchange)


class RouteChain:
    """A route's stages for one kind of listener, linked once.  Stages that
    do not override :meth:`Stage.on_head` are not called at head time, nor
    those that do not override :meth:`Stage.handle` in the request's turn:
    a route pays only for what its stages do."""

    __slots__ = ("at_head", "run", "spooled_methods", "stages", "streams")

    def __init__(self, stages: Sequence[Stage], *, stream_bodies: bool = False) -> None:
        self.stages = tuple(stages)
        #: Request bodies go upstream as they arrive (``request_buffering=False``),
        #: but for the methods some stage reads whole.
        self.streams = stream_bodies
        self.spooled_methods = frozenset().union(*(s.whole_body_methods for s in self.stages))
        self.at_head = tuple(s for s in self.stages if type(s).on_head is not Stage.on_head)
        handling = [s for s in self.stages if type(s).handle is not Stage.handle]
        if not handling:
            raise ValueError("a route's chain needs a stage that answers")
        for stage, after in itertools.pairwise(handling):
            stage.next = after.handle
        self.run: Handler = handling[0].handle

    def __repr__(self) -> str:
        streams = " (streamed bodies)" if self.streams else ""
        return f"<RouteChain {' -> '.join(type(s).__name__ for s in self.stages)}{streams}>"


class Plan:
    """What the request path runs on: a configuration's snapshot and every
    route's chain, per kind of listener (``chains[tls]``, keyed by the
    route's ``id``).  Made whole when a configuration is installed and
    swapped as one reference; a request keeps the plan it was routed with."""

    __slots__ = ("chains", "snapshot", "unrouted_at_head")

    def __init__(
        self,
        snapshot: Snapshot,
        plain: dict[int, RouteChain],
        tls: dict[int, RouteChain],
        unrouted_at_head: tuple[Stage, ...],
    ) -> None:
        self.snapshot = snapshot
        self.chains = (plain, tls)
        #: Head-time stages for a request no route matched (the listener's body limit).
        self.unrouted_at_head = unrouted_at_head


class ResponseObserver(Protocol):
    """Sees a response on its way to the client (a stage's way to wrap the
    response sink): the head before it is framed (``lines`` may be changed),
    each body chunk as written, and the end, whole or not."""

    def response_head(self, code: int, lines: list[bytes], length: int | None) -> None: ...
    def response_body(self, data: bytes) -> None: ...
    def response_end(self, complete: bool) -> None: ...


class ExchangeRecord:
    """What happened to one exchange, as the access log and the metrics read
    it.  Written by the exchange (status, bytes, outcome) and by the
    forwarding stage (cluster, endpoint, attempts, upstream status and time);
    defaults are class attributes, so a fresh record costs one allocation."""

    #: The response status (0 until a head is made; 499/408 as logged).
    status: int = 0
    #: Response body bytes written, not counting framing.
    sent: int = 0
    cluster: str | None = None
    endpoint: str | None = None
    attempts: int = 0
    upstream_status: int | None = None
    upstream_time: float | None = None
    outcome: Outcome = Outcome.OK
    #: Why, when something went wrong (None while nothing did).
    reason: Reason | None = None
    request_id: str | None = None
    #: What a route's cache did (hit, stale, collapsed, revalidated, miss,
    #: bypass); None on a route without one.
    cache: str | None = None


class Exchange:
    """One request and its response: the protocol-neutral part.  A channel
    makes one per request (HTTP/1.1: :class:`~.h1exchange.H1Exchange`) and
    calls :meth:`head_received`, :meth:`body_received`, :meth:`body_complete`
    and, in turn, :meth:`process`; the subclass supplies the response side
    (``send_head_lines``, ``write``, ``flush_head``, ``abort``,
    ``registerProducer``, ``unregisterProducer``, ``send_informational``, and
    ``_end_response``, the protocol's part of the shared :meth:`finish`)."""

    log = Logger(namespace="edgeproxy.request")

    # Filled in when the head is complete.
    snapshot: Snapshot | None = None
    vhost: VirtualHostTable | None = None
    route: Route | None = None
    match: RouteMatch | None = None
    #: The route's stage chain for this listener kind (None when not routed).
    chain: RouteChain | None = None
    target: bytes = b""
    host: bytes | None = None
    error: EdgeProxyError | None = None
    #: The body, positioned at its start once complete; None when there is
    #: none, or when it is streamed.
    content: IO[bytes] | None = None
    #: The body streamed upstream as it arrives (a route with
    #: ``request_buffering=False``): the exchange is processed at head time.
    body_stream: StreamedBody | None = None
    #: The body's length when the request had one (Content-Length or chunked), else None.
    body_length: int | None = None
    #: The length the request announced (Content-Length), negative for chunked
    #: (edgeproxy.core.framing.CHUNKED), 0 for none.
    declared_length: int = 0
    #: The framing of a request without Content-Length or Transfer-Encoding:
    #: none (HTTP/1.1), or CHUNKED for an HTTP/2 stream whose body ends with
    #: the stream (which sets ``declared_length`` to match).
    unframed_body: int = 0
    #: Request body bytes received so far, and the most the route allows.
    body_bytes: int = 0
    body_limit: int = 0
    #: Seconds the channel did not read this request's streamed body (its
    #: upstream full): not held against the client's body deadline.
    body_wait: float = 0.0
    finished: bool = False
    #: The whole request (head and body) has been received.
    complete: bool = False
    #: process() has been called.
    processing: bool = False
    #: Rejected before its body was read: the rest of the body is dropped.
    discarding: bool = False
    #: Refused at head time without a body to drop: answered in its turn,
    #: the connection kept.
    refused_early: bool = False
    _disconnected: bool = False
    _expect_continue: bool = False
    #: edgeproxy answered ``Expect: 100-continue`` itself.
    _continued: bool = False
    _incoming_request_id: bytes | None = None
    _client_ip: str | None = None
    _logged: bool = False
    _watchers: list[Callable[[Failure | None], object]] | None = None
    #: Stages watching the response (None on the plain path: one test per write).
    observers: list[ResponseObserver] | None = None
    #: ``Strict-Transport-Security`` for every response (its virtual host's ``hsts``, over TLS).
    hsts_line: bytes | None = None
    #: The ``Upgrade`` protocols to ask the upstream for (``websocket``): set
    #: at head time for an upgrade request that will be forwarded as one
    #: (:meth:`upgrade_requested`); None for every other request.
    upgrade: bytes | None = None
    #: The ``Sec-WebSocket-Key`` edgeproxy made for a WebSocket over HTTP/2
    #: (RFC 8441), sent upstream with the upgrade; the 101 must answer it.
    #: None for every other request (an HTTP/1.1 client sends its own).
    websocket_key: bytes | None = None

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
        self.record = ExchangeRecord()

    # -- the head is in --------------------------------------------------------

    def head_received(self, version: bytes, front: bool) -> None:
        """Check framing, route, run the route's head-time stages, open the
        body spool.  Raises :class:`RejectRequest` for what must stop the
        connection."""
        if version != b"1.1" and version != b"1.0" and version != b"2":
            raise RejectRequest(VersionNotSupported() if version >= b"2" else BadRequest())
        if self.method == b"CONNECT":
            # A forward proxy's method: never passed to a backend (in origin
            # form it would reach one, and turn a pooled connection into a tunnel).
            raise RejectRequest(NotImplementedMethod())
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
        if content_length is None and coding is None:
            length = self.unframed_body
        else:
            try:
                # A Content-Length, or CHUNKED (negative).
                length = self.declared_length = request_framing(self.http11, content_length, coding)
            except BadRequest as e:
                raise RejectRequest(e.with_traceback(None)) from None
        if len(hosts) > 1 or (not hosts and self.http11):
            # RFC 9112 3.2: an HTTP/1.1 request without Host is answered 400,
            # even in absolute form.
            raise RejectRequest(BadRequest(Reason.BAD_HOST))
        self.host = hosts[0].strip() if hosts else None
        factory = self.factory
        plan = factory.pipeline.plan
        self.snapshot = plan.snapshot
        try:
            self._route(plan)
        except BadRequest as e:
            raise RejectRequest(e.with_traceback(None)) from None
        except EdgeProxyError as e:
            # Without its traceback: the traceback's frames hold this request,
            # which would make a cycle only the garbage collector can free.
            self.error = e.with_traceback(None)
        chain = self.chain
        # Not routed (it is answered with its error): the listener's own limits.
        for stage in plan.unrouted_at_head if chain is None else chain.at_head:
            stage.on_head(self)
            if self.discarding or self.refused_early:
                return  # refused: the first refusal is the answer
        if length > 0:
            self.body_length = 0
            if chain is not None and chain.streams and self.method not in chain.spooled_methods:
                self._stream_body(length)
                return
            if length > factory.settings.http_limits.spool_in_memory:
                self.content = tempfile.TemporaryFile()
            else:
                self.content = io.BytesIO()
        elif length < 0:
            self.body_length = 0
            if chain is not None and chain.streams and self.method not in chain.spooled_methods:
                self._stream_body(None)
                return
            self.content = tempfile.SpooledTemporaryFile(
                max_size=factory.settings.http_limits.spool_in_memory
            )
        elif content_length is not None:
            self.body_length = 0
        if self._expect_continue and length and front and self.http11:
            self._continued = True
            self.send_continue()

    def _stream_body(self, length: int | None) -> None:
        """Stream the body upstream as it arrives: the exchange is ready to be
        processed now.  ``Expect: 100-continue`` is answered when the body is
        wanted (:meth:`body_wanted`: an upstream connection takes it), so a
        request refused before then (by its auth service, a full cluster)
        never makes the client send it; meanwhile the client is not read and
        the time is not its own."""
        channel = self.channel
        stream = self.body_stream = StreamedBody(
            self, channel, length, self.factory.settings.http_limits.request_stream_window
        )
        if self._expect_continue and self.http11:
            stream.hold_client()

    def body_wanted(self) -> None:
        """An upstream connection takes the streamed body."""
        if self._expect_continue and self.http11 and not self._continued:
            self._continued = True
            if not self._disconnected and not self.finished and not self.record.status:
                self.send_continue()

    def stream_failed(self, error: EdgeProxyError) -> None:
        """The streamed body of an exchange being processed cannot be
        completed (past the body limit, past the client's body deadline): the
        upstream exchange is given up (:class:`StreamedBody` tells its owner),
        the client gets ``error`` if no response has started, else its
        connection is cut; the connection is not kept either way."""
        self.persistent = False
        self.discarding = True
        stream = self.body_stream
        if stream is not None:
            stream.fail(error)
        if self.finished or self._disconnected:
            return
        record = self.record
        if not record.status:
            self.respond_error(error)
            return
        record.outcome = error.outcome
        record.reason = error.reason
        metrics = self.factory.metrics
        if metrics is not None:
            metrics.count_outcome(error.outcome, error.reason)
        self.abort()

    def _route(self, plan: Plan) -> None:
        split = split_target(self.uri)
        if split is None:
            raise BadRequest(Reason.BAD_TARGET)
        authority, self.target = split
        target = self.target
        # Only a path with "/.", "%2", "\\" or "%5" in it can hold a dot segment.
        if (
            b"/." in target or b"%2" in target or b"\\" in target or b"%5" in target
        ) and has_dot_segment(target.partition(b"?")[0]):
            raise BadRequest(Reason.BAD_TARGET)
        if authority is None:
            if self.host is None:
                raise NoVirtualHost()  # HTTP/1.0 without Host
            authority = self.host
        elif self.host is None:
            # HTTP/1.0 in absolute form without Host: the upstream gets the
            # site the request was routed by.
            self.headers.append((b"Host", authority))
            self.host = authority
        elif authority != self.host and normalise_host(authority) != normalise_host(self.host):
            # Two hosts in one request: which one a cache, a backend or a
            # log believes is a routing-confusion and poisoning vector
            # (HAProxy refuses it too).
            raise BadRequest(Reason.BAD_HOST)
        host = normalise_host(authority)
        if host is None:
            raise BadRequest(Reason.BAD_HOST)
        channel = self.channel
        if host != channel.covered_host and not channel.covers(host):
            raise MisdirectedRequest()
        self.vhost = vhost = plan.snapshot.routing.find_virtual_host(host)
        if vhost is None:
            raise NoVirtualHost()
        policy = vhost.tls_policy
        if (
            policy is not None
            and self.factory.tls
            and policy is not channel.met_policy
            and not channel.meets(policy)
        ):
            # Its handshake was not held to this host's TLS policy (another
            # name in SNI, or none): a new connection naming it would be.
            raise MisdirectedRequest()
        if vhost.hsts_line is not None and self.factory.tls:
            self.hsts_line = vhost.hsts_line
        self.match = match = vhost.match(self.target)
        if match is None:
            raise NoRoute()
        self.route = route = match.route
        self.chain = plan.chains[self.factory.tls][id(route)]

    def upgrade_requested(self) -> None:
        """The head asks to switch protocols (``Connection: upgrade`` and
        ``Upgrade``), and has no body.  A request edgeproxy answers itself
        (no route, refused at head time) and one that offers only ``h2c``
        go on as plain requests, the upgrade headers dropped; a route with
        ``websocket=False`` refuses it (403, ``upgrade_refused``); anything
        else is forwarded as an upgrade (:attr:`upgrade`)."""
        if self.chain is None or self.error is not None or self.discarding or self.refused_early:
            return
        offer = upgrade_offer(value for name, value in self.headers if name.lower() == b"upgrade")
        if offer is None:
            return
        route = self.route
        if route is not None and not route.websocket:
            self.reject_early(UpgradeRefused())
            return
        self.upgrade = offer

    def body_received(self, data: bytes) -> None:
        if self.discarding:
            return
        self.body_bytes += len(data)
        if self.body_bytes > self.body_limit:
            self.reject_early(BodyTooLarge())
            return
        content = self.content
        if content is not None:
            content.write(data)
            return
        stream = self.body_stream
        if stream is not None:
            stream.feed(data)

    def body_complete(self) -> None:
        self.complete = True
        content = self.content
        if content is not None:
            self.body_length = self.body_bytes
            content.seek(0)
        elif self.body_stream is not None:
            self.body_length = self.body_bytes
            self.body_stream.end()

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
        is not reset before it reads the answer, and the connection closes.
        A request without a body keeps its connection (nginx keeps it for a
        403 or a 429 too): nothing of it is left to read, and a client told
        to slow down should not pay a new TLS handshake for it."""
        if self.declared_length == 0 and not self.processing:
            self.error = error
            self.refused_early = True
            self.channel.run_queue()
            return
        if self.processing and self.body_stream is not None:
            # Streaming upstream already: give that up, answer if still possible.
            self.stream_failed(error)
            return
        self.reject(error)
        self.discarding = True
        self.channel.run_queue()

    def _discard_body(self) -> None:
        content, self.content = self.content, None
        if content is not None:
            content.close()
        stream = self.body_stream
        if stream is not None:
            stream.stop()

    # -- its turn ----------------------------------------------------------------

    def process(self) -> None:
        self.processing = True
        self._assign_request_id()
        chain = self.chain
        if self.error is not None or chain is None:
            self.respond_error(self.error or NoRoute())
            return
        chain.run(self)

    @property
    def client_ip(self) -> str:
        """The client's address as text, IPv6 in canonical form (a PROXY v2
        header gives it uncompressed), ``"-"`` when there is none: the peer's
        (:attr:`peer_ip`), or behind a trusted forwarder the one its
        forwarding headers name (:func:`~edgeproxy.core.addresses.forwarded_client`)."""
        channel = self.channel
        if not channel.peer_trusted:
            return channel.client_ip
        client = self._client_ip
        if client is None:
            client = self._client_ip = self._forwarded_client(channel.client_ip)
        return client

    @property
    def peer_ip(self) -> str:
        """The address of the connection's peer (or the PROXY protocol's client)."""
        return self.channel.client_ip

    def _forwarded_client(self, peer: str) -> str:
        x_forwarded_for = []
        forwarded = []
        for name, value in self.headers:
            lower = name.lower()
            if lower == b"x-forwarded-for":
                x_forwarded_for.append(value)
            elif lower == b"forwarded":
                forwarded.append(value)
        if not x_forwarded_for and not forwarded:
            return peer
        trusted = self.factory.trusted
        assert trusted is not None  # the peer is trusted by one of them
        return forwarded_client(forwarded_elements(x_forwarded_for, forwarded), peer, trusted)

    @property
    def tls(self) -> bool:
        """The client reached edgeproxy over TLS."""
        return self.factory.tls

    def tls_details(self) -> tuple[str | None, str | None]:
        """The TLS version and the SNI name the client sent, when over TLS."""
        return self.channel.tls_details()

    def observe_response(self, observer: ResponseObserver) -> None:
        """Have ``observer`` see the response (see :class:`ResponseObserver`)."""
        if self.observers is None:
            self.observers = [observer]
        else:
            self.observers.append(observer)

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
        record = self.record
        if incoming and _is_request_id(incoming) and self.channel.peer_trusted:
            record.request_id = incoming.decode("ascii")
        if record.request_id is None:
            record.request_id = _new_request_id()

    # -- the response side: the protocol's ---------------------------------------

    def send_continue(self) -> None:
        """Tell the client to send its body (HTTP/1.1 ``100 Continue``)."""
        raise NotImplementedError

    def send_informational(self, code: int, phrase: bytes, lines: list[bytes]) -> None:
        """An interim (1xx) response from the upstream, passed on where the
        client's protocol allows it.  ``lines`` are ``b"Name: value"``."""
        raise NotImplementedError

    def send_head_lines(
        self, code: int, phrase: bytes, lines: list[bytes], length: int | None
    ) -> None:
        """Start the response.  ``lines`` are its end-to-end headers as
        ``b"Name: value"`` (which this takes over); framing is the
        protocol's.  ``length`` is the body's length, None when unknown."""
        raise NotImplementedError

    def send_head(
        self,
        code: int,
        phrase: bytes,
        headers: list[tuple[bytes, bytes]],
        length: int | None,
    ) -> None:
        """:meth:`send_head_lines` with the headers as ``(name, value)`` pairs."""
        self.send_head_lines(code, phrase, list(map(b": ".join, headers)), length)

    def write(self, data: bytes) -> None:
        """A chunk of the response body."""
        raise NotImplementedError

    def flush_head(self) -> None:
        """Send the head now if no body bytes came with it."""
        raise NotImplementedError

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        """The response body's producer, paused while the client is slow."""
        raise NotImplementedError

    def unregisterProducer(self) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """The response is whole: the protocol sends its end
        (:meth:`_end_response`), then the exchange is over."""
        if self.finished or self._disconnected:
            return
        self.finished = True
        self._end_response()
        if not self.complete:
            # Answered while its streamed body still arrives (an upstream
            # that answered early, a refusal): the rest is read and dropped,
            # and the connection is not kept.
            self.persistent = False
            self.discarding = True
            self._discard_body()
        if self.observers is not None:
            for observer in self.observers:
                observer.response_end(True)
        self._access_log()
        self._notify(None)
        self.channel.request_done(self)

    def _end_response(self) -> None:
        """Send the end of the response: the head if it is still held, and
        whatever ends the body in the client's protocol."""
        raise NotImplementedError

    def abort(self) -> None:
        """Cut the client off mid-response (a body that broke off upstream
        must not look complete to the client)."""
        raise NotImplementedError

    def switch_protocols(
        self, phrase: bytes, lines: list[bytes], upstream: UpgradedConnection
    ) -> bool:
        """The upstream answered this upgrade request with ``101 Switching
        Protocols``: send the client that head (``lines``: its end-to-end
        headers as ``b"Name: value"``), then splice the client connection
        and ``upstream`` (:mod:`.tunnel`) until either closes.  False when
        the client is gone already (``upstream`` is then the caller's to
        close)."""
        raise NotImplementedError

    def tunnel_closed(self, end: TunnelEnd, from_client: int, from_upstream: int) -> None:
        """The tunnel after a 101 is over: the exchange is, logged with how
        the tunnel ended and, as its bytes sent, what the upstream sent
        through it."""
        record = self.record
        record.sent = from_upstream
        if end is TunnelEnd.IDLE_TIMEOUT:
            record.outcome = Outcome.CLIENT_TIMEOUT
            record.reason = Reason.IDLE_TIMEOUT
        elif end is TunnelEnd.UPSTREAM_ERROR:
            record.outcome = Outcome.UPSTREAM_ERROR
            record.reason = Reason.TRUNCATED
        metrics = self.factory.metrics
        if metrics is not None:
            if record.reason is not None:
                metrics.count_outcome(record.outcome, record.reason)
            metrics.tunnel_closed(end.value, from_client, from_upstream)
        self.finished = True
        self._access_log()
        self._notify(None)

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
        record = self.record
        record.outcome = outcome = error.outcome
        record.reason = reason = error.reason
        metrics = self.factory.metrics
        if metrics is not None:
            metrics.count_outcome(outcome, reason)
        if isinstance(error, BadRequest):
            # Whatever follows a malformed request cannot be trusted to be framed right.
            self.persistent = False
        headers = [(b"Content-Type", b"text/plain; charset=utf-8")]
        headers.extend(error.extra_headers())
        self.respond(error.status_hint, headers, _error_body(error), outcome)

    def respond(
        self,
        code: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        outcome: Outcome = Outcome.OK,
    ) -> None:
        """Answer with a whole response made here (a redirect, later a cached
        or refused one): for stages that answer instead of passing on."""
        self.record.outcome = outcome
        if not self.complete:
            # Its streamed body is still arriving: the rest will be dropped
            # and the connection closed (see finish); say so.
            self.persistent = False
        self.send_head(code, _reason(code), headers, len(body))
        self.write(body)
        self.finish()

    # -- the end -----------------------------------------------------------

    def break_off(self, reason: Reason) -> None:
        """The response cannot be completed (the upstream broke off or went
        quiet mid-body): cut the client connection, so that a short body is
        not taken for a whole one, and log why."""
        record = self.record
        record.outcome = Outcome.UPSTREAM_ERROR
        record.reason = reason
        self.abort()

    def timed_out(self) -> None:
        """The client was too slow sending this request's body after its
        response had started (no 408 can be sent then); the connection is
        being closed (logged as nginx does, 408)."""
        record = self.record
        if not self.finished and record.outcome is Outcome.OK:
            record.outcome = Outcome.CLIENT_TIMEOUT
            record.reason = Reason.BODY_TIMEOUT
            record.status = 408

    def connection_lost(self, reason: Failure) -> None:
        if self.finished:
            return
        self._disconnected = True
        if not self._logged:
            record = self.record
            if record.outcome is Outcome.OK:
                # Whatever was written, the response is not whole: 499, as nginx.
                record.outcome = Outcome.CLIENT_CLOSED
                if not self.complete:
                    record.reason = Reason.REQUEST_INCOMPLETE
                elif not self.processing:
                    record.reason = Reason.QUEUED
                elif not record.status:
                    record.reason = Reason.AWAITING_RESPONSE
                else:
                    record.reason = Reason.RESPONSE_INCOMPLETE
                record.status = 499
            self._access_log()
        if self.observers is not None:
            for observer in self.observers:
                observer.response_end(False)
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


#: Reason phrases of statuses edgeproxy answers that twisted.web's table lacks.
_MORE_REASONS = {
    421: b"Misdirected Request",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
}


def _reason(status: int) -> bytes:
    return RESPONSES.get(status) or _MORE_REASONS.get(status, b"Error")


def _error_body(error: EdgeProxyError) -> bytes:
    return b"%d %s\n" % (error.status_hint, error.public_message.encode("ascii"))
