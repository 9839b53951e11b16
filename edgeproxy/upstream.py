"""
The pooled upstream HTTP/1.1 client.

This is the one module where Twisted's client errors become edgeproxy's
(:mod:`edgeproxy.errors`): callers decide retries from the error *type*.
"""

from __future__ import annotations

import ipaddress
from typing import IO, Any

from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.python.failure import Failure
from twisted.web import _newclient
from twisted.web.client import (
    URI,
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    _HTTP11ClientFactory,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IResponse
from zope.interface import implementer

from edgeproxy.config import Endpoint
from edgeproxy.errors import (
    EdgeProxyError,
    UpstreamConnectFailed,
    UpstreamConnectTimeout,
    UpstreamResponseFailed,
    UpstreamTimeout,
)
from edgeproxy.netutil import set_no_delay

__all__ = ["UpstreamClient", "translate_failure"]

#: Idle upstream connections kept per endpoint.
DEFAULT_MAX_IDLE_PER_ENDPOINT = 64
#: Seconds an idle pooled upstream connection is kept (backends often close at 60-75 s).
DEFAULT_IDLE_TIMEOUT = 50.0


class _ConnectionHeaderStripping(_newclient.HTTP11ClientProtocol):
    """HTTP11ClientProtocol that also removes the headers a response's
    ``Connection`` header names.

    Agent moves ``Connection`` itself into the parser's private ``connHeaders``,
    out of reach of ``IResponse``, so the names it lists can only be stripped
    here.  The lean client of the performance issue replaces this.
    """

    def connectionMade(self) -> None:
        super().connectionMade()
        set_no_delay(self.transport)

    def request(self, request: Any) -> Deferred[IResponse]:
        d: Deferred[IResponse] = super().request(request)
        parser = getattr(self, "_parser", None)
        if parser is not None:

            def strip(response: IResponse) -> IResponse:
                for value in parser.connHeaders.getRawHeaders(b"connection", ()):
                    for token in value.split(b","):
                        name = token.strip()
                        if name:
                            response.headers.removeHeader(name)
                return response

            d.addCallback(strip)
        return d


class _PoolFactory(_HTTP11ClientFactory):
    noisy = False

    def buildProtocol(self, addr: Any) -> _ConnectionHeaderStripping:
        return _ConnectionHeaderStripping(self._quiescentCallback)


@implementer(IAgentEndpointFactory)
class _EndpointFactory:
    """Plain TCP endpoints; IP literals skip name resolution (a thread hop)."""

    def __init__(self, reactor: Any, connect_timeout: float) -> None:
        self._reactor = reactor
        self._timeout = connect_timeout

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        host = uri.host.decode("ascii")
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return HostnameEndpoint(self._reactor, host, uri.port, timeout=self._timeout)
        if address.version == 4:
            return TCP4ClientEndpoint(self._reactor, host, uri.port, timeout=self._timeout)
        return TCP6ClientEndpoint(self._reactor, str(address), uri.port, timeout=self._timeout)


def translate_failure(failure: Failure, timed_out: bool) -> EdgeProxyError:
    """Turn a failed ``Agent.request`` into edgeproxy's error type."""
    if timed_out:
        # Agent wraps our cancel in ResponseNeverReceived & co: the flag, not
        # the type, says the deadline passed.
        return UpstreamTimeout()
    if failure.check(ierror.TimeoutError):
        return UpstreamConnectTimeout()
    if failure.check(ierror.ConnectError, ierror.DNSLookupError, _newclient.RequestNotSent):
        return UpstreamConnectFailed()
    if failure.check(ierror.ConnectingCancelledError):
        return UpstreamConnectFailed()
    # ResponseFailed, ResponseNeverReceived, RequestTransmissionFailed, a
    # parse error: the request may have reached the upstream.
    return UpstreamResponseFailed()


def _hostport(endpoint: Endpoint) -> bytes:
    return str(endpoint).encode("ascii")


class UpstreamClient:
    """One persistent connection pool per process, shared by every cluster."""

    def __init__(
        self,
        reactor: IReactorTime,
        *,
        max_idle_per_endpoint: int = DEFAULT_MAX_IDLE_PER_ENDPOINT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        self._reactor = reactor
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = max_idle_per_endpoint
        self.pool.cachedConnectionTimeout = idle_timeout  # type: ignore[assignment]
        # Agent retries idempotent requests on a stale pooled connection once
        # by itself; keep that (it is exactly the "never really sent" case).
        self.pool._factory = _PoolFactory
        self._agents: dict[float, Agent] = {}

    def _agent(self, connect_timeout: float) -> Agent:
        agent = self._agents.get(connect_timeout)
        if agent is None:
            agent = Agent.usingEndpointFactory(
                self._reactor, _EndpointFactory(self._reactor, connect_timeout), self.pool
            )
            self._agents[connect_timeout] = agent
        return agent

    def request(
        self,
        endpoint: Endpoint,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: IO[bytes] | None,
        body_length: int | None,
        *,
        connect_timeout: float,
        response_timeout: float,
    ) -> Deferred[IResponse]:
        """Send one request; fires with the response once its headers arrived.

        Errbacks with an :class:`~edgeproxy.errors.EdgeProxyError`.
        ``response_timeout`` counts from now until the response headers.
        """
        producer = None
        if body is not None and body_length is not None:
            body.seek(0)
            producer = FileBodyProducer(body)
            producer.length = body_length
        uri = b"http://" + _hostport(endpoint) + target
        d = self._agent(connect_timeout).request(method, uri, headers, producer)
        timed_out = False

        def on_timeout() -> None:
            nonlocal timed_out
            timed_out = True
            d.cancel()

        call = self._reactor.callLater(response_timeout, on_timeout)

        def done(result: Any) -> Any:
            if call.active():
                call.cancel()
            if isinstance(result, Failure):
                if result.check(EdgeProxyError):
                    return result
                if result.check(CancelledError) and not timed_out:
                    # Cancelled by our caller (the client went away): keep it a cancel.
                    return result
                return Failure(translate_failure(result, timed_out))
            return result

        d.addBoth(done)
        return d

    def close(self) -> Deferred[None]:
        d: Deferred[None] = self.pool.closeCachedConnections()
        return d
