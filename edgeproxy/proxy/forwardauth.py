"""
The forward-authentication stage: ``Route(..., auth=ForwardAuth(...))``
(docs/forward-auth.md).  In the request's turn, before the cache and the
forwarding, it asks the route's auth service about the request and waits
for the answer, as nginx's ``auth_request`` and Traefik's ForwardAuth do:

- the question is a ``GET`` of the auth URL without a body, through the
  process's upstream pool (:class:`~edgeproxy.upstream.h1client.UpstreamClient`,
  the same persistent connections as forwarding), carrying the listed
  request headers, ``X-Forwarded-Method`` and ``X-Forwarded-Uri`` (the
  request as the client sent it), the forwarding headers a backend would get
  (``X-Forwarded-For``/``-Proto``/``-Host``, ``Forwarded``, ``Via``, under
  the same ``--trusted-source`` rule) and ``X-Request-Id``;
- a 2xx passes the request on with the answer's listed response headers
  added (the client's own lines of those names are removed first, whatever
  the answer, so that none can be forged);
- anything else is the answer: the auth service's status, headers (not the
  hop-by-hop ones) and body, at most ``max_response_body`` bytes of it;
- no usable answer within ``timeout`` (refused, unreachable, slow, broken,
  a denial too long to pass on, an ``https://`` service whose certificate
  does not verify) fails closed: 503 ``auth_unavailable``, its cause logged
  once until the auth service answers again.

An ``https://`` auth service's ``upstream`` is the TLS pool of its ``tls``
setting (the pipeline's choice), verified and resuming sessions as a
cluster's; nothing here differs.

With ``cache_for``, a 2xx is kept per credential (a BLAKE2b digest of the
listed request headers' values) for that long, with the headers it copied,
at most ``cache_max_entries`` per route and kind of listener.
"""

from __future__ import annotations

import hashlib
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from edgeproxy.config import ForwardAuth
from edgeproxy.core.errors import (
    AuthUnavailable,
    EdgeProxyError,
    Outcome,
    Reason,
    UpstreamUnexpectedFailure,
)
from edgeproxy.core.headers import upstream_request_headers
from edgeproxy.net.failures import upstream_error
from edgeproxy.proxy.exchange import Exchange, Stage
from edgeproxy.upstream.h1client import H1Response, UpstreamClient

__all__ = ["RESULTS", "AuthCounters", "AuthDecisions", "ForwardAuthStage", "auth_name"]

#: What the stage did with a request, as the metrics label it.
RESULTS = ("allowed", "cached", "denied", "unavailable")
_FORWARDING = frozenset({b"x-forwarded-for", b"forwarded"})
#: Not passed back from a denial: the request id is edgeproxy's.
_NOT_RETURNED = frozenset({b"x-request-id"})
_GET = b"GET"


def auth_name(vhost_name: str, prefix: str) -> str:
    """The name a route's auth decisions go by in the metrics: ``<first host><prefix>``."""
    return f"{vhost_name}{prefix}"


class AuthCounters:
    """What one route's forward authentication decided (they only go up)."""

    __slots__ = RESULTS

    def __init__(self) -> None:
        #: The auth service answered 2xx: passed on.
        self.allowed = 0
        #: Passed on by a 2xx kept from earlier (``cache_for``).
        self.cached = 0
        #: Any other answer, given to the client.
        self.denied = 0
        #: No usable answer: 503.
        self.unavailable = 0


class AuthDecisions:
    """Every route's :class:`AuthCounters`, kept across reloads."""

    def __init__(self) -> None:
        self._counters: dict[str, AuthCounters] = {}

    def counters_for(self, name: str) -> AuthCounters:
        counters = self._counters.get(name)
        if counters is None:
            counters = self._counters[name] = AuthCounters()
        return counters

    def figures(self) -> list[tuple[str, AuthCounters]]:
        return sorted(self._counters.items())


class ForwardAuthStage(Stage):
    """A route's forward authentication (one per route and kind of listener,
    each with its own cache of positive answers)."""

    log = Logger()

    def __init__(
        self,
        auth: ForwardAuth,
        upstream: UpstreamClient,
        clock: IReactorTime,
        counters: AuthCounters,
        *,
        via: bytes,
    ) -> None:
        self.auth = auth
        self.upstream = upstream
        self.clock = clock
        self.counters = counters
        self.via = via
        self.endpoint = auth.endpoint
        self.target = auth.target.encode("ascii")
        self.authority = auth.authority.encode("ascii")
        self.timeout = auth.timeout
        self.max_body = auth.max_response_body
        self._asked = frozenset(name.lower().encode("ascii") for name in auth.request_headers)
        self._asked_order = tuple(name.lower().encode("ascii") for name in auth.request_headers)
        #: The copied headers: lower-case name -> the name as configured.
        self._copied = {
            name.lower().encode("ascii"): name.encode("ascii") for name in auth.response_headers
        }
        self._cache_for = auth.cache_for
        self._cache_max = auth.cache_max_entries
        #: Credential digest -> (until when, the headers the 2xx copied),
        #: oldest first (every entry lives ``cache_for``).
        self._cache: dict[bytes, tuple[float, list[tuple[bytes, bytes]]]] = {}
        #: Why the auth service last gave no answer, until it answers again
        #: (each cause logged once, not once per request).
        self.failing: str | None = None

    def __repr__(self) -> str:
        return f"<ForwardAuthStage {self.auth.url}>"

    def handle(self, exchange: Exchange) -> None:
        copied = self._copied
        if copied:
            headers = exchange.headers
            for name, _ in headers:
                if name.lower() in copied:
                    # Whatever the answer: a client's own X-User never goes on.
                    exchange.headers = [pair for pair in headers if pair[0].lower() not in copied]
                    break
        key = None
        if self._cache_for > 0:
            key = self.credential(exchange)
            found = self._cache.get(key)
            if found is not None:
                until, lines = found
                if until > self.clock.seconds():
                    self.counters.cached += 1
                    if lines:
                        exchange.headers = exchange.headers + lines
                    self.next(exchange)
                    return
                del self._cache[key]
        _Check(self, exchange, key).start()

    def credential(self, exchange: Exchange) -> bytes:
        """A digest of the request's credential: each listed request header's
        values, in the configured order (never the values themselves: they
        are secrets)."""
        digest = hashlib.blake2b(digest_size=16)
        asked = self._asked
        values: dict[bytes, list[bytes]] = {}
        for name, value in exchange.headers:
            lname = name.lower()
            if lname in asked:
                values.setdefault(lname, []).append(value)
        for lname in self._asked_order:
            for value in values.get(lname, ()):
                digest.update(b"%d:%s:%d:" % (len(lname), lname, len(value)))
                digest.update(value)
            digest.update(b";")
        return digest.digest()

    def question(self, exchange: Exchange) -> list[tuple[bytes, bytes]]:
        """The headers of the request to the auth service."""
        channel = exchange.channel
        asked = self._asked
        # The forwarding chain is extended as for a backend; from a peer that
        # may not extend it, it is started afresh.
        extend = not channel.replaces_forwarding
        passed = [
            pair
            for pair in exchange.headers
            if (lname := pair[0].lower()) in asked or (extend and lname in _FORWARDING)
        ]
        headers = upstream_request_headers(
            passed,
            client_ip=channel.client_ip,
            proto="https" if exchange.tls else "http",
            host=exchange.host,
            via=self.via,
        )
        headers.append((b"Host", self.authority))
        headers.append((b"X-Forwarded-Method", exchange.method))
        headers.append((b"X-Forwarded-Uri", exchange.target))
        request_id = exchange.record.request_id
        if request_id is not None:
            headers.append((b"X-Request-Id", request_id.encode("ascii")))
        return headers

    def remember(self, key: bytes, lines: list[tuple[bytes, bytes]]) -> None:
        cache = self._cache
        cache.pop(key, None)
        now = self.clock.seconds()
        # Oldest first: drop the expired ones, then the oldest if still full.
        for old in list(cache):
            if cache[old][0] > now and len(cache) < self._cache_max:
                break
            del cache[old]
        cache[key] = (now + self._cache_for, lines)

    def unavailable_because(self, cause: str) -> None:
        if cause != self.failing:
            self.failing = cause
            self.log.warn(
                "forward auth {url}: the auth service is unavailable ({cause}): "
                "its routes answer 503",
                url=self.auth.url,
                cause=cause,
            )

    def answering(self) -> None:
        if self.failing is not None:
            self.failing = None
            self.log.info("forward auth {url}: the auth service answers again", url=self.auth.url)

    def copied_lines(self, response: H1Response) -> list[tuple[bytes, bytes]]:
        """The answer's listed headers, to go on to the backend."""
        copied = self._copied
        lines = []
        for lname, line in response.header_fields:
            name = copied.get(lname)
            if name is not None:
                lines.append((name, line.partition(b":")[2].strip()))
        return lines


class _Check:
    """One request's question to the auth service, until it is answered."""

    __slots__ = (
        "body",
        "exchange",
        "key",
        "pending",
        "response",
        "size",
        "stage",
        "timer",
        "transport",
    )

    def __init__(self, stage: ForwardAuthStage, exchange: Exchange, key: bytes | None) -> None:
        self.stage: ForwardAuthStage | None = stage
        self.exchange = exchange
        self.key = key
        self.pending: Any = None
        self.timer: IDelayedCall | None = None
        self.response: H1Response | None = None
        self.body: list[bytes] = []
        self.size = 0
        self.transport: IPushProducer | None = None

    def start(self) -> None:
        stage = self.stage
        assert stage is not None
        exchange = self.exchange
        self.timer = stage.clock.callLater(stage.timeout, self.timed_out)
        exchange.when_over(self.over)
        pending = stage.upstream.send(
            stage.endpoint,
            _GET,
            stage.target,
            stage.question(exchange),
            None,
            None,
            connect_timeout=stage.timeout,
            response_timeout=stage.timeout,
            on_response=self.answered,
            on_error=self.failed,
        )
        if self.stage is not None and pending.waiting():
            self.pending = pending

    # -- the answer ----------------------------------------------------------

    def answered(self, response: H1Response) -> None:
        self.pending = None
        if self.stage is None:
            response.deliverBody(_Drop())  # type: ignore[arg-type]
            return
        self.stage.answering()
        self.response = response
        body = response.whole_body()
        if body is not None:
            self.decide(body)
            return
        response.deliverBody(self)  # type: ignore[arg-type]

    def failed(self, failure: Failure) -> None:
        self.pending = None
        stage = self.stage
        if stage is None or failure.check(CancelledError):
            return
        error = upstream_error(failure)
        if isinstance(error, UpstreamUnexpectedFailure):
            stage.log.failure("unexpected failure asking the auth service", failure)
        self.unavailable(error.cause)

    def timed_out(self) -> None:
        self.timer = None
        if self.stage is None:
            return
        self.unavailable("no answer within timeout")

    # -- the answer's body, as its protocol --------------------------------------

    def makeConnection(self, transport: IPushProducer) -> None:
        self.transport = transport

    def dataReceived(self, data: bytes) -> None:
        if self.stage is None:
            return
        self.size += len(data)
        if self.size > self.stage.max_body:
            # (done() stops the rest of the body, and drops the connection.)
            response = self.response
            if response is not None and 200 <= response.code < 300:
                self.decide(b"")  # a 2xx's body is not used
            else:
                self.unavailable("a denial over max_response_body")
            return
        self.body.append(data)

    def connectionLost(self, reason: Failure) -> None:
        self.transport = None
        if self.stage is None:
            return
        # (PotentialDataLoss: an HTTP/1.0 body that ends with its connection.)
        if reason.check(ResponseDone, PotentialDataLoss):
            self.decide(b"".join(self.body))
        else:
            self.unavailable("the answer's body broke off")

    # -- the end -------------------------------------------------------------

    def decide(self, body: bytes) -> None:
        stage = self.stage
        response = self.response
        assert stage is not None and response is not None
        self.done()
        exchange = self.exchange
        try:
            if 200 <= response.code < 300:
                lines = stage.copied_lines(response)
                stage.counters.allowed += 1
                if self.key is not None:
                    stage.remember(self.key, lines)
                if lines:
                    exchange.headers = exchange.headers + lines
                stage.next(exchange)
                return
            stage.counters.denied += 1
            record = exchange.record
            record.outcome = Outcome.REJECTED
            record.reason = Reason.AUTH_DENIED
            metrics = exchange.factory.metrics
            if metrics is not None:
                metrics.count_outcome(Outcome.REJECTED, Reason.AUTH_DENIED)
            returned = [
                line for lname, line in response.header_fields if lname not in _NOT_RETURNED
            ]
            exchange.send_head_lines(response.code, response.phrase, returned, len(body))
            exchange.write(body)
            exchange.finish()
        except Exception:
            stage.log.failure("while applying the auth service's answer")
            if not exchange.finished:
                exchange.respond_error(EdgeProxyError())

    def unavailable(self, cause: str) -> None:
        stage = self.stage
        assert stage is not None
        self.done()
        stage.counters.unavailable += 1
        stage.unavailable_because(cause)
        self.exchange.respond_error(AuthUnavailable())

    def done(self) -> None:
        """Answered (or given up): nothing more is waited for."""
        self.stage = None
        self.response = None
        self.body = []
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.cancel()
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.stopProducing()

    def over(self, failure: Failure | None) -> None:
        """The exchange is over: answered, or its client went away first."""
        if self.stage is not None:
            self.done()


class _Drop:
    """A body nobody wants: stopped at once (the connection is not reused)."""

    def makeConnection(self, transport: IPushProducer) -> None:
        transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        pass
