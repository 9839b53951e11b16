"""
Forwarding, the last stage of every route that does not redirect: to its
cluster (:class:`ForwardStage`) or to the share of a Split its roll picks
(:class:`SplitStage`).  Then take a slot on an available endpoint (within the
cluster's limits), send the request through the pool, feed the outcome to the
endpoint's breaker, retry where it is safe and the budget allows, and relay
the response back.
"""

from __future__ import annotations

import operator
import random
import re
import secrets
from collections.abc import Callable, Iterable
from typing import IO, TYPE_CHECKING, Any
from typing import Protocol as TypingProtocol

from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from edgeproxy.cluster.runtime import FULL, ClusterRuntime, Lease, NoSlot
from edgeproxy.config import Endpoint, Split
from edgeproxy.config.upstreamtls import UpstreamTLSFiles
from edgeproxy.core.backends import HIDDEN, REWRITTEN, hide_backend_line
from edgeproxy.core.errors import (
    EdgeProxyError,
    LimitExceeded,
    NoHealthyUpstream,
    Reason,
    UpstreamResponseFailed,
    UpstreamUnexpectedFailure,
)
from edgeproxy.core.headers import upstream_request_headers
from edgeproxy.core.retry import Retry, decide_retry
from edgeproxy.core.selection import request_hash_key, stable_roll
from edgeproxy.core.websocket import accept_for
from edgeproxy.net.clienttls import ClientTLS
from edgeproxy.net.failures import upstream_error
from edgeproxy.proxy.exchange import Exchange, Stage
from edgeproxy.proxy.relay import ResponseRelay
from edgeproxy.upstream.h1client import (
    BodySource,
    H1Response,
    UpgradedConnection,
    UpstreamClient,
)

if TYPE_CHECKING:
    from edgeproxy.cluster.snapshot import Snapshot
    from edgeproxy.config.routing import SplitChooser
    from edgeproxy.proxy.exchange import Exchange

__all__ = ["Forwarder"]

# Framing is edgeproxy's to decide on each hop; Expect is answered here
# (100 Continue) and the body spooled, or streamed once wanted; the request id is edgeproxy's.
_NOT_FORWARDED = frozenset({b"content-length", b"expect", b"x-request-id"})
#: From a peer that is not a trusted forwarder, once some are configured, the
#: forwarding chain it sent is forged or ours to start: replaced, not extended.
_NOT_FORWARDED_UNTRUSTED = _NOT_FORWARDED | {b"x-forwarded-for", b"forwarded"}
_NOT_RETURNED = frozenset({b"x-request-id"})
# With hide_backend: also what says which backend answered, and what may name it.
_NOT_RETURNED_HIDING = _NOT_RETURNED | HIDDEN
_WATCHED = _NOT_RETURNED_HIDING | REWRITTEN
_CONTROL = re.compile(rb"[\r\n\x00]")
_DROPPING: dict[tuple[frozenset[bytes], bytes], frozenset[bytes]] = {}


def _dropping(base: frozenset[bytes], header: bytes) -> frozenset[bytes]:
    """``base`` and a virtual host's client subject header (one set per
    header name configured, so :func:`upstream_request_headers` finds it in
    its cache)."""
    key = (base, header)
    found = _DROPPING.get(key)
    if found is None:
        if len(_DROPPING) >= 256:
            _DROPPING.clear()
        found = _DROPPING[key] = base | {header.lower()}
    return found


_first = operator.itemgetter(0)
_second = operator.itemgetter(1)
_LOST = Failure(ConnectionDone())


def _cookie_name(spec: str) -> bytes | None:
    return spec[len("cookie:") :].encode("ascii") if spec.startswith("cookie:") else None


class _Cancellable(TypingProtocol):
    def cancel(self) -> object: ...


class Forwarder:
    """What every forwarding stage shares: the process's upstream pool, the
    ``Via`` value, the clock and the randomness of Split rolls."""

    log = Logger(namespace="edgeproxy.forward")

    def __init__(
        self,
        upstream: UpstreamClient,
        *,
        via: bytes,
        clock: IReactorTime,
        rng: random.Random | None = None,
    ) -> None:
        self.upstream = upstream
        self.clock = clock
        #: The `Via` value every hop of this process adds (forwarding, forward auth).
        self.via = self._via = via
        # RFC 9110 7.6.3: Via names the protocol the request came in (an
        # HTTP/1.0 or HTTP/2 client's request says so), then the pseudonym.
        pseudonym = via.partition(b" ")[2] or via
        self._vias = {b"HTTP/1.0": b"1.0 " + pseudonym, b"HTTP/2": b"2 " + pseudonym}
        self._random = rng or random.Random()
        #: A pool per distinct ``upstream_tls`` (its settings and files), kept
        #: across reloads that leave it alone: connections and TLS sessions too.
        self._tls_pools: dict[UpstreamTLSFiles, UpstreamClient] = {}

    def upstream_for(self, tls: UpstreamTLSFiles | None) -> UpstreamClient:
        """The pool for a cluster with ``upstream_tls`` files ``tls`` (None: plain)."""
        if tls is None:
            return self.upstream
        pool = self._tls_pools.get(tls)
        if pool is None:
            settings = tls.settings
            pool = self._tls_pools[tls] = UpstreamClient(
                self.upstream.reactor,
                limits=self.upstream.limits,
                tls=ClientTLS(
                    ca_pem=tls.ca_pem,
                    client_pem=tls.client_pem,
                    server_name=settings.server_name,
                    verify=settings.verify,
                ),
            )
        return pool

    def pools(self) -> list[UpstreamClient]:
        """Every pool: the plain one and each TLS setting's."""
        return [self.upstream, *self._tls_pools.values()]

    def keep_tls_pools(self, used: Iterable[UpstreamTLSFiles]) -> None:
        """Close the TLS pools no cluster uses any more (after a reload)."""
        keep = set(used)
        for tls in [tls for tls in self._tls_pools if tls not in keep]:
            self._tls_pools.pop(tls).close()

    def close(self) -> Deferred[None]:
        """Close every pool's idle connections."""
        pools = [self.upstream, *self._tls_pools.values()]
        self._tls_pools.clear()
        return gatherResults([pool.close() for pool in pools]).addCallback(lambda _: None)

    def split_roll(self, request: Exchange, split: Split) -> tuple[float, bytes | None]:
        """A roll for the split: random, or stable for a sticky client (and the
        cookie to give a client that has none yet)."""
        if split.sticky is None:
            return self._random.random(), None
        key = _hash_key(request, split.sticky)
        if key is not None:
            return stable_roll(key), None
        name = _cookie_name(split.sticky)
        if name is None:
            return self._random.random(), None
        token = secrets.token_urlsafe(16).encode("ascii")
        cookie = name + b"=" + token + b"; Path=/; HttpOnly; SameSite=Lax"
        if request.tls:
            cookie += b"; Secure"
        return stable_roll(token), cookie


class ForwardStage(Stage):
    """The last stage of a route whose target is a cluster.  ``backends``
    (the endpoints' authorities, :func:`~edgeproxy.core.backends.backend_authorities`)
    hides them in responses; None leaves responses as they come."""

    def __init__(
        self,
        forwarder: Forwarder,
        runtime: ClusterRuntime,
        *,
        backends: frozenset[bytes] | None = None,
    ) -> None:
        self._forwarder = forwarder
        self._runtime = runtime
        self._name = runtime.cluster.name
        self._backends = backends

    def handle(self, exchange: Exchange) -> None:
        exchange.record.cluster = self._name
        (
            (_Exchange if exchange.body_stream is None else _Streamed)
            if exchange.upgrade is None
            else _Upgrading
        )(
            self._forwarder, exchange, self._runtime, None, None, 0.0, self._backends
        ).start()

    def __repr__(self) -> str:
        return f"<ForwardStage {self._name}>"


class SplitStage(Stage):
    """The last stage of a route whose target is a Split: the roll picks the
    side (random, or stable for a sticky client); a side with no endpoint up
    gives its share to the others (:meth:`SplitChooser.fallback`)."""

    def __init__(
        self,
        forwarder: Forwarder,
        split: Split,
        chooser: SplitChooser,
        snapshot: Snapshot,
        *,
        backends: frozenset[bytes] | None = None,
    ) -> None:
        self._forwarder = forwarder
        self._split = split
        self._chooser = chooser
        self._snapshot = snapshot
        self._backends = backends

    def handle(self, exchange: Exchange) -> None:
        chooser = self._chooser
        snapshot = self._snapshot
        roll, set_cookie = self._forwarder.split_roll(exchange, self._split)
        runtime = snapshot.clusters[chooser.choose(roll).name]
        # One flag of the chosen side, kept on its transitions; the other
        # sides are looked at only when it has nothing.
        if not runtime.available():
            runtime = _split_fallback(snapshot, chooser, roll, runtime)
        exchange.record.cluster = runtime.cluster.name
        (
            (_Exchange if exchange.body_stream is None else _Streamed)
            if exchange.upgrade is None
            else _Upgrading
        )(
            self._forwarder, exchange, runtime, set_cookie, chooser, roll, self._backends
        ).start()

    def __repr__(self) -> str:
        return f"<SplitStage {self._chooser!r}>"


def _split_fallback(
    snapshot: Snapshot, chooser: SplitChooser, roll: float, chosen: ClusterRuntime
) -> ClusterRuntime:
    """The side that takes over the share of a chosen side with nothing available,
    or the chosen side itself when no side has anything (it answers 503)."""
    clusters = snapshot.clusters
    fallback = chooser.fallback(roll, lambda cluster: clusters[cluster.name].available())
    return chosen if fallback is None else clusters[fallback.name]


def _hash_key(request: Exchange, spec: str) -> bytes | None:
    return request_hash_key(
        spec,
        client_ip=request.client_ip,
        header=request.getHeader,
        cookie=request.getCookie,
    )


class _Exchange:
    """One downstream request's trip upstream, with its retries."""

    #: Who takes a 101 (:class:`_Upgrading`); None: a 101 is a bad response.
    _upgrade_taker: Callable[[UpgradedConnection], object] | None = None

    def __init__(
        self,
        forwarder: Forwarder,
        request: Exchange,
        runtime: ClusterRuntime,
        set_cookie: bytes | None,
        chooser: SplitChooser | None,
        roll: float,
        backends: frozenset[bytes] | None = None,
    ) -> None:
        self._forwarder = forwarder
        #: The endpoints' authorities to hide in the response (None: none hidden).
        self._backends = backends
        self._request = request
        self._runtime = runtime
        self._cluster = runtime.cluster
        self._set_cookie = set_cookie
        #: The Split the cluster was picked from (None for a plain route), and
        #: the roll, to find another side for a request its side could not send.
        self._chooser = chooser
        self._roll = roll
        #: The Split's sides this request may still move to (made on its first move).
        self._sides_left: set[str] | None = None
        self._tried: list[Endpoint] = []
        self._lease: Lease | None = None
        #: The upstream exchange waiting for its head, or the wait for a free slot.
        self._pending: _Cancellable | None = None
        self._client_gone = False
        self._last_error: EdgeProxyError | None = None
        self._attempt_started = 0.0
        self._method = request.method
        assert request.match is not None
        self._target = request.match.forward_path
        self._headers = self._upstream_headers()
        policy = self._cluster.policy
        key_spec = getattr(policy, "key", None)
        self._hash_key = _hash_key(request, key_spec) if isinstance(key_spec, str) else None
        self._body: IO[bytes] | BodySource | None = request.content
        self._body_length = request.body_length if request.content is not None else None
        self._relay: ResponseRelay | None = None
        request.when_over(self._on_request_over)

    def _upstream_headers(self) -> list[tuple[bytes, bytes]]:
        request = self._request
        channel = request.channel
        vhost = request.vhost
        subject_header = vhost.client_subject_header if vhost is not None else None
        drop = _NOT_FORWARDED_UNTRUSTED if channel.replaces_forwarding else _NOT_FORWARDED
        if subject_header is not None:
            drop = _dropping(drop, subject_header)
        kept = upstream_request_headers(
            request.headers,
            # Each hop appends the address it was reached from.
            client_ip=channel.client_ip,
            proto="https" if request.factory.tls else "http",
            host=request.host,
            via=self._forwarder._vias.get(request.clientproto, self._forwarder._via),
            drop=drop,
        )
        if subject_header is not None and request.factory.tls:
            # Only ever the verified subject: the client's own was dropped above.
            subject = request.channel.client_subject
            if subject is not None:
                kept.append((subject_header, subject))
        request_id = request.record.request_id
        if request_id is not None:
            kept.append((b"X-Request-Id", request_id.encode("ascii")))
        # llhttp already refused CR, LF and NUL in what the client sent; the
        # check stays so that no upstream parser is ever shown one, whatever
        # the parser lets through.  One search over every value (a C loop),
        # the per-header filter only if it hits.
        if _CONTROL.search(b"|".join(map(_second, kept))) is None:
            return kept
        return [(name, value) for name, value in kept if not _CONTROL.search(value)]

    # -- bookkeeping ---------------------------------------------------------

    def _on_request_over(self, failure: Failure | None) -> None:
        """The downstream request finished, or its client went away."""
        lease = self._lease
        if failure is None:
            if lease is not None:
                lease.release()
            return
        self._client_gone = True
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
        # Before the relay hears of it: the upstream body it cuts short is
        # no fault of the endpoint's.
        if lease is not None:
            lease.release(cancelled=True)
        if self._relay is not None:
            self._relay.client_gone()

    # -- attempts --------------------------------------------------------------

    def start(self) -> None:
        lease = self._lease = self._runtime.admit(self._tried)
        if lease is None:
            self._fail(LimitExceeded(Reason.MAX_REQUESTS))
            return
        self._attempt()

    def _attempt(self) -> None:
        lease = self._lease
        assert lease is not None
        choice = lease.take_endpoint(self._hash_key)
        if isinstance(choice, NoSlot):
            if self._client_gone:
                return  # its lease is released: there was nothing to take
            if choice is FULL:
                self._wait_for_slot()
                return
            runtime = self._runtime
            last = self._last_error
            error = last or NoHealthyUpstream(runtime.retry_after())
            # A side can be "available" and still have no endpoint to give (each
            # one half-open with its single probe out): like a side with
            # nothing up, its request goes to another side when nothing was sent.
            if (
                self._chooser is not None
                and (last is None or last.never_sent)
                and self._other_side(error)
            ):
                return
            if self._tried:
                # A retry found nowhere else to go: report the last failure's kind.
                self._fail(last or UpstreamResponseFailed())
            else:
                self._fail(error)
            return
        self._attempt_started = self._forwarder.clock.seconds()
        endpoint = choice.endpoint
        request = self._request
        record = request.record
        record.endpoint = str(endpoint)
        record.attempts = len(self._tried)
        # The cluster's pool: plain, or TLS with the cluster's settings.
        exchange = self._runtime.upstream.send(
            endpoint,
            self._method,
            self._target,
            self._headers,
            self._body,
            self._body_length,
            connect_timeout=self._cluster.connect_timeout,
            response_timeout=self._cluster.response_timeout,
            on_response=self._on_response,
            on_error=self._on_error,
            on_informational=self._on_informational,
            on_upgrade=self._upgrade_taker,
        )
        # (It may have answered already, an error found at once.)
        self._pending = exchange if exchange.waiting() else None

    def _wait_for_slot(self) -> None:
        lease = self._lease
        assert lease is not None
        d = lease.wait_for_slot()
        if d is None:
            self._fail(LimitExceeded(Reason.MAX_PENDING))
            return
        self._pending = d

        def slot_free(_: None) -> None:
            self._pending = None
            self._attempt()

        def gave_up(failure: Failure) -> None:
            self._pending = None
            error = failure.value
            if isinstance(error, LimitExceeded):
                self._fail(error)
            # else: cancelled because the client went away.

        d.addCallbacks(slot_free, gave_up)

    def _may_retry(self, error: EdgeProxyError | None, status: int | None) -> bool:
        """Whether to retry the request (the budget spent if so).  Not asked
        once the client is gone."""
        lease = self._lease
        assert lease is not None
        decision = decide_retry(
            self._cluster.retries,
            len(self._tried),
            self._method,
            status,
            error,
            lease,
        )
        return decision is not Retry.NO and lease.spend_retry(decision)

    def _retry(self, why: str) -> None:
        self._forwarder.log.info(
            "retrying {cluster} elsewhere after {why} from {endpoint}",
            cluster=self._cluster.name,
            why=why,
            endpoint=self._request.record.endpoint,
        )
        assert self._lease is not None
        self._lease.end_attempt()
        self._attempt()

    def _on_error(self, failure: Failure) -> None:
        self._pending = None
        if self._client_gone or failure.check(CancelledError):
            return
        error = upstream_error(failure)
        if isinstance(error, UpstreamUnexpectedFailure):
            self._forwarder.log.failure("unexpected upstream failure", failure)
        self._last_error = error
        lease = self._lease
        assert lease is not None
        lease.failed(error.reason, reached=not error.never_sent)
        if self._may_retry(error, None):
            self._retry(type(error).__name__)
            return
        if error.never_sent and self._chooser is not None and self._other_side(error):
            return
        self._fail(error)

    def _other_side(self, error: EdgeProxyError) -> bool:
        """Move a request that its Split side could not send anywhere (every
        endpoint of that side refused or was tried, or none would take it) to
        another side; whether it did.

        The same rules as a retry within a cluster: never sent, so safe for
        any method and outside the retry budget, and within ``attempts``.  The
        side is the one the Split's fallback gives for this request's roll,
        so a sticky client lands where it will be sent once its side is out.
        A request that had tried nothing is not counted as a retry.
        """
        assert self._chooser is not None
        if self._client_gone or len(self._tried) >= self._cluster.retries.attempts:
            return False
        snapshot = self._request.snapshot
        assert snapshot is not None
        current = self._cluster.name
        # Each side at most once per request: two sides that both look
        # available but give nothing must not pass a request back and forth.
        left = self._sides_left
        if left is None:
            left = self._sides_left = set(snapshot.clusters)
        left.discard(current)
        clusters = snapshot.clusters
        side = self._chooser.fallback(
            self._roll, lambda c: c.name in left and clusters[c.name].available()
        )
        if side is None:
            return False
        runtime = clusters[side.name]
        lease = runtime.admit(self._tried)
        if lease is None:
            return False  # that side is full: the error stands
        if self._tried:
            self._forwarder.log.info(
                "retrying {cluster} on split side {other} after {why} from {endpoint}",
                cluster=current,
                other=side.name,
                why=type(error).__name__,
                endpoint=self._request.record.endpoint,
            )
            lease.spend_retry(Retry.OUTSIDE_BUDGET)
        assert self._lease is not None
        self._lease.release()
        self._lease = lease
        self._runtime = runtime
        self._cluster = runtime.cluster
        self._request.record.cluster = side.name
        # The endpoints tried stay tried (one may be in both sides); a retry
        # picks any free endpoint, so the hash key no longer matters.
        self._attempt()
        return True

    def _fail(self, error: EdgeProxyError) -> None:
        # Done with the cluster: what the request held there goes back now,
        # not when its answer is written.
        if self._lease is not None:
            self._lease.release()
        self._request.respond_error(error)

    def _on_informational(
        self, code: int, phrase: bytes, fields: list[tuple[bytes, bytes]]
    ) -> None:
        """A 1xx before the response: passed on at once (RFC 9110 15.2)."""
        if not self._client_gone:
            lines = [line for lname, line in fields if lname not in _NOT_RETURNED]
            self._request.send_informational(code, phrase, lines)

    def _on_response(self, response: H1Response) -> None:
        self._pending = None
        request = self._request
        record = request.record
        record.upstream_status = response.code
        record.upstream_time = self._forwarder.clock.seconds() - self._attempt_started
        lease = self._lease
        assert lease is not None
        lease.answered(response.code)
        if self._client_gone:
            response.deliverBody(_Discard())
            return
        if self._may_retry(None, response.code):
            # The body is not wanted: dropping it closes that connection.
            response.deliverBody(_Discard())
            self._retry(f"status {response.code}")
            return
        lines = self._returned(response.header_fields)
        if self._set_cookie is not None:
            lines.append(b"Set-Cookie: " + self._set_cookie)
        length = response.length
        body = response.whole_body()
        if body is not None:
            # The whole body came with the head (most small responses): no
            # relay, no timer, and a length even if the upstream chunked it.
            request.send_head_lines(response.code, response.phrase, lines, len(body))
            request.write(body)
            self._on_body_done(None)
            return
        request.send_head_lines(
            response.code, response.phrase, lines, length if isinstance(length, int) else None
        )
        self._relay = relay = ResponseRelay(
            request,
            clock=self._forwarder.clock,
            idle_timeout=self._cluster.idle_timeout,
            on_done=self._on_body_done,
        )
        response.deliverBody(relay)
        relay.arm()
        request.flush_head()

    def _returned(self, fields: list[tuple[bytes, bytes]]) -> list[bytes]:
        """The response's lines passed on to the client, a final response's
        or a 101's.  Ours wins over an X-Request-Id the upstream may echo, so
        client and log agree; with hide_backend, what names the backends goes
        too.  h1client already left out the hop-by-hop headers.  Each test
        is one C-level ``isdisjoint``; nothing to drop is the usual case."""
        if self._backends is None:
            if _NOT_RETURNED.isdisjoint(map(_first, fields)):
                return list(map(_second, fields))
            return [line for lname, line in fields if lname not in _NOT_RETURNED]
        if _WATCHED.isdisjoint(map(_first, fields)):
            return list(map(_second, fields))
        if REWRITTEN.isdisjoint(map(_first, fields)):
            return [line for lname, line in fields if lname not in _NOT_RETURNED_HIDING]
        return self._hiding(fields, self._backends)

    def _hiding(
        self, fields: list[tuple[bytes, bytes]], backends: frozenset[bytes]
    ) -> list[bytes]:
        """The response's lines without what names the backends (hide_backend)."""
        request = self._request
        public = (b"https://" if request.tls else b"http://") + (request.host or b"")
        lines = []
        for lname, line in fields:
            if lname in _NOT_RETURNED_HIDING:
                continue
            if lname in REWRITTEN:
                line = hide_backend_line(lname, line, backends, public)
            lines.append(line)
        return lines

    def _on_body_done(self, broke_off: Reason | None) -> None:
        self._relay = None
        request = self._request
        lease = self._lease
        assert lease is not None
        if broke_off is not None:
            lease.body_failed(broke_off)
        lease.end_attempt()
        if self._client_gone or request.finished:
            return
        if broke_off is None:
            request.finish()
            return
        # The upstream broke off (or went quiet) mid-body: the client must not
        # take a short body for a whole one, so its connection is cut too.
        request.break_off(broke_off)


class _Streamed(_Exchange):
    """A request whose body streams upstream as it arrives (a route with
    ``request_buffering=False``).  It is sent as soon as its turn comes,
    with the body the client has sent so far, and the rest follows.  Once
    any of the body has gone to an endpoint it cannot be sent again: no
    retry, no move to another Split side (one that has not started, a
    connection refused, still may).  A body that breaks off on the client's
    side (past the body limit, past the client's deadline) gives the
    upstream exchange up, as a client that goes away does."""

    def __init__(
        self,
        forwarder: Forwarder,
        request: Exchange,
        runtime: ClusterRuntime,
        set_cookie: bytes | None,
        chooser: SplitChooser | None,
        roll: float,
        backends: frozenset[bytes] | None = None,
    ) -> None:
        super().__init__(forwarder, request, runtime, set_cookie, chooser, roll, backends)
        stream = request.body_stream
        assert stream is not None
        self._stream = stream
        self._body = stream
        self._body_length = stream.length
        stream.owner = self._body_broke

    def _body_broke(self, error: EdgeProxyError) -> None:
        """The client's body broke off: nothing more goes upstream (the
        exchange answers the client, :meth:`Exchange.stream_failed`)."""
        self._forwarder.log.info(
            "streamed request body to {cluster} broke off: {reason}",
            cluster=self._cluster.name,
            reason=error.reason,
        )
        self._on_request_over(Failure(error))

    def _on_response(self, response: H1Response) -> None:
        if not self._stream.ended:
            # Answered before the whole body came: the rest of it will be
            # dropped and the connection closed; the head says so.
            self._request.persistent = False
        super()._on_response(response)

    def _may_retry(self, error: EdgeProxyError | None, status: int | None) -> bool:
        if self._stream.started:
            return False
        return super()._may_retry(error, status)

    def _other_side(self, error: EdgeProxyError) -> bool:
        if self._stream.started:
            return False
        return super()._other_side(error)


class _Upgrading(_Exchange):
    """An upgrade request's trip upstream (``request.upgrade``: WebSocket...).
    It is sent with ``Connection: Upgrade`` and its ``Upgrade``; a 101
    splices the client to that upstream connection (the exchange's
    ``switch_protocols``), which leaves the pool for good; the lease, with
    its place in the cluster's limits and its endpoint slot, is held until
    the tunnel is over (the exchange is then over).  Any other answer is
    relayed as usual."""

    @property
    def _upgrade_taker(self) -> Callable[[UpgradedConnection], object]:  # type: ignore[override]
        return self._on_upgrade

    def _upstream_headers(self) -> list[tuple[bytes, bytes]]:
        headers = super()._upstream_headers()
        upgrade = self._request.upgrade
        assert upgrade is not None
        headers.append((b"Connection", b"Upgrade"))
        headers.append((b"Upgrade", upgrade))
        key = self._request.websocket_key
        if key is not None:
            headers.append((b"Sec-WebSocket-Key", key))
        return headers

    def _on_response(self, response: H1Response) -> None:
        """A WebSocket over HTTP/2 takes a 2xx for the tunnel open (RFC 8441
        5): a backend's 2xx to the handshake is not passed on as one."""
        if (
            self._request.websocket_key is not None
            and 200 <= response.code < 300
            and not self._client_gone
        ):
            self._pending = None
            self._request.record.upstream_status = response.code
            assert self._lease is not None
            self._lease.answered(response.code)
            response.deliverBody(_Discard())
            self._bad_switch(f"status {response.code}")
            return
        super()._on_response(response)

    def _bad_switch(self, why: str) -> None:
        self._forwarder.log.info(
            "WebSocket handshake refused from {endpoint}: {why}",
            endpoint=self._request.record.endpoint,
            why=why,
        )
        self._fail(UpstreamResponseFailed("bad websocket handshake"))

    def _on_upgrade(self, upgraded: UpgradedConnection) -> None:
        self._pending = None
        request = self._request
        record = request.record
        record.upstream_status = 101
        record.upstream_time = self._forwarder.clock.seconds() - self._attempt_started
        lease = self._lease
        assert lease is not None
        lease.answered(101)
        if self._client_gone:
            upgraded.abort()
            return
        key = request.websocket_key
        if key is not None:
            # edgeproxy made the key: the accept is edgeproxy's to check
            # (RFC 6455 4.1), and the client cannot (RFC 8441 has none).
            accept = [v for n, v in upgraded.header_fields if n == b"sec-websocket-accept"]
            if (
                upgraded.upgrade.strip().lower() != b"websocket"
                or len(accept) != 1
                or accept[0].partition(b":")[2].strip() != accept_for(key)
            ):
                upgraded.abort()
                self._bad_switch("Sec-WebSocket-Accept does not match")
                return
        lines = self._returned(upgraded.header_fields)
        if not request.switch_protocols(upgraded.phrase, lines, upgraded):
            upgraded.abort()


class _Discard(Protocol):
    """A body sink that drops everything (and stops the producer at once)."""

    def makeConnection(self, transport: Any) -> None:
        transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure = _LOST) -> None:
        pass
