"""
The pooled upstream HTTP/1.1 client.

This is the one module where client failures become edgeproxy's
(:mod:`edgeproxy.errors`): callers decide retries from the error *type*.
The forwarding path runs on :mod:`edgeproxy.h1client`, a lean HTTP/1.1
client over a persistent pool; health checks keep using treq/Agent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import IO

from twisted.internet import error as ierror
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from edgeproxy.config import Endpoint
from edgeproxy.errors import (
    EdgeProxyError,
    UpstreamConnectFailed,
    UpstreamConnectTimeout,
    UpstreamResponseFailed,
    UpstreamTimeout,
)
from edgeproxy.h1client import H1Client

__all__ = ["UpstreamClient", "translate_failure"]

#: Idle upstream connections kept per endpoint.
DEFAULT_MAX_IDLE_PER_ENDPOINT = 64
#: Seconds an idle pooled upstream connection is kept (backends often close at 60-75 s).
DEFAULT_IDLE_TIMEOUT = 50.0


def translate_failure(failure: Failure, timed_out: bool) -> EdgeProxyError:
    """Turn a Twisted client failure into edgeproxy's error type."""
    if timed_out:
        return UpstreamTimeout()
    if failure.check(ierror.TimeoutError):
        return UpstreamConnectTimeout()
    if failure.check(ierror.ConnectError, ierror.DNSLookupError, ierror.ConnectingCancelledError):
        return UpstreamConnectFailed()
    # Lost after sending, or an answer that did not parse: the request may
    # have reached the upstream.
    return UpstreamResponseFailed()


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
        self._client = H1Client(
            reactor, max_idle_per_endpoint=max_idle_per_endpoint, idle_timeout=idle_timeout
        )

    def request(
        self,
        endpoint: Endpoint,
        method: bytes,
        target: bytes,
        headers: Headers | Sequence[tuple[bytes, Sequence[bytes]]],
        body: IO[bytes] | None,
        body_length: int | None,
        *,
        connect_timeout: float,
        response_timeout: float,
    ) -> Deferred[IResponse]:
        """Send one request; fires with the response once its head arrived.

        Errbacks with an :class:`~edgeproxy.errors.EdgeProxyError`, or with
        ``CancelledError`` when the caller cancels (the connection is closed).
        ``response_timeout`` counts from now until the response head.
        """
        return self._client.request(
            endpoint,
            method,
            target,
            headers,
            body,
            body_length,
            connect_timeout=connect_timeout,
            response_timeout=response_timeout,
        )

    def idle_connections(self, endpoint: Endpoint) -> int:
        """Idle pooled connections to ``endpoint`` (for tests and metrics)."""
        return self._client.idle_connections(str(endpoint))

    def close(self) -> Deferred[None]:
        """Close the idle pooled connections; fires once they are closed."""
        return self._client.close()
