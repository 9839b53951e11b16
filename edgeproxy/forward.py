"""
Forwarding one routed request: pick the cluster (or a Split's share), pick an
endpoint, send it upstream through the pool, retry a request that was never
sent on another endpoint, and relay the response back.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from edgeproxy.config import Endpoint, Split
from edgeproxy.errors import EdgeProxyError, UpstreamResponseFailed
from edgeproxy.headers import downstream_response_headers, upstream_request_headers
from edgeproxy.relay import ResponseRelay
from edgeproxy.upstream import UpstreamClient

if TYPE_CHECKING:
    from edgeproxy.request import ProxyRequest
    from edgeproxy.snapshot import ClusterState, Snapshot

__all__ = ["Forwarder"]

#: A request that never reached an endpoint is tried at most this many times in all.
MAX_ATTEMPTS = 2

# Framing is edgeproxy's to decide on each hop; Expect was already answered
# (twisted.web sent 100 Continue) and the body is spooled.
_NOT_FORWARDED = (b"content-length", b"expect")


class Forwarder:
    """Sends routed requests upstream; holds the current :class:`Snapshot`."""

    log = Logger(namespace="edgeproxy.forward")

    def __init__(
        self,
        snapshot: Snapshot,
        upstream: UpstreamClient,
        *,
        via: bytes,
        rng: random.Random | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.upstream = upstream
        self._via = via
        self._random = rng or random.Random()

    def swap(self, snapshot: Snapshot) -> None:
        """Install a new configuration; requests in flight keep theirs."""
        self.snapshot = snapshot

    def forward(self, request: ProxyRequest) -> None:
        route = request.route
        snapshot = request.snapshot
        assert route is not None and snapshot is not None
        target_spec = route.target
        if isinstance(target_spec, Split):
            cluster = snapshot.splits[id(target_spec)].choose(self._random.random())
        else:
            cluster = target_spec
        state = snapshot.clusters[cluster.name]
        request.cluster_name = cluster.name
        _Exchange(self, request, state).start()


class _Exchange:
    """One downstream request's trip upstream (with at most one retry)."""

    def __init__(self, forwarder: Forwarder, request: ProxyRequest, state: ClusterState) -> None:
        self._forwarder = forwarder
        self._request = request
        self._state = state
        self._tried: list[Endpoint] = []
        self._pending: Deferred[IResponse] | None = None
        self._client_gone = False
        self._method = request.method
        assert request.match is not None
        self._target = request.match.forward_path
        self._headers = self._upstream_headers()
        body = request.content
        self._body = body
        self._body_length: int | None = None
        if body is not None and (
            request.requestHeaders.hasHeader(b"content-length")
            or request.requestHeaders.hasHeader(b"transfer-encoding")
        ):
            body.seek(0, 2)
            self._body_length = body.tell()
        self._finished = request.notifyFinish()
        self._finished.addErrback(self._on_client_gone)

    def _upstream_headers(self) -> Headers:
        request = self._request
        client = request.getClientAddress()
        client_ip = getattr(client, "host", "unknown")
        rewritten = upstream_request_headers(
            request.requestHeaders.getAllRawHeaders(),
            client_ip=client_ip,
            proto="https" if request.factory.tls else "http",
            host=request.getHeader(b"host"),
            via=self._forwarder._via,
        )
        headers = Headers()
        for name, values in rewritten:
            if name.lower() not in _NOT_FORWARDED:
                headers.setRawHeaders(name, values)
        return headers

    def _on_client_gone(self, failure: Failure) -> None:
        self._client_gone = True
        if self._pending is not None:
            self._pending.cancel()

    def start(self) -> None:
        endpoint = self._state.policy.pick(self._tried)
        if endpoint is None:
            # Only reachable on a retry with every endpoint tried.
            self._fail(UpstreamResponseFailed())
            return
        self._tried.append(endpoint)
        request = self._request
        request.endpoint = str(endpoint)
        request.attempts = len(self._tried)
        cluster = self._state.cluster
        d = self._forwarder.upstream.request(
            endpoint,
            self._method,
            self._target,
            self._headers,
            self._body,
            self._body_length,
            connect_timeout=cluster.connect_timeout,
            response_timeout=cluster.response_timeout,
        )
        self._pending = d
        d.addCallbacks(self._on_response, self._on_error)

    def _on_error(self, failure: Failure) -> None:
        self._pending = None
        if self._client_gone or failure.check(CancelledError):
            return
        error = failure.value
        if not isinstance(error, EdgeProxyError):
            self._forwarder.log.failure("unexpected upstream failure", failure)
            error = UpstreamResponseFailed()
        if (
            error.never_sent
            and len(self._tried) < MAX_ATTEMPTS
            and len(self._tried) < len(self._state.cluster.endpoints)
        ):
            self._forwarder.log.info(
                "retrying {cluster} on another endpoint after {error} from {endpoint}",
                cluster=self._state.cluster.name,
                error=type(error).__name__,
                endpoint=self._request.endpoint,
            )
            self.start()
            return
        self._fail(error)

    def _fail(self, error: EdgeProxyError) -> None:
        request = self._request
        request.outcome = type(error).__name__
        request.respond_error(error)

    def _on_response(self, response: IResponse) -> None:
        self._pending = None
        request = self._request
        request.upstream_status = response.code
        if self._client_gone:
            # Nobody to relay to; drop the body (and with it the connection).
            response.deliverBody(_Discard())
            return
        request.setResponseCode(response.code, response.phrase)
        out = request.responseHeaders
        for name, values in downstream_response_headers(response.headers.getAllRawHeaders()):
            out.setRawHeaders(name, values)
        if response.length is not UNKNOWN_LENGTH and request.method != b"HEAD":
            out.setRawHeaders(b"content-length", [b"%d" % response.length])
        relay = ResponseRelay(request, request.notifyFinish())
        relay.done.addCallback(self._on_body_done)
        response.deliverBody(relay)

    def _on_body_done(self, complete: bool) -> None:
        request = self._request
        if self._client_gone or request.finished:
            return
        if complete:
            request.finish()
            return
        # The upstream broke off mid-body: the client must not take a short
        # body for a whole one, so its connection is cut too.
        request.outcome = "upstream_truncated"
        # loseConnection, not abort: what was relayed is flushed first, so the
        # client sees a short body rather than nothing.
        request.loseConnection()


class _Discard:
    """A body sink that drops everything (and stops the producer at once)."""

    def makeConnection(self, transport: Any) -> None:
        transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        pass
