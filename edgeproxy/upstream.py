"""
The pooled upstream HTTP/1.1 client: one per process, shared by every cluster.

It is :class:`edgeproxy.h1client.H1Client`, a lean HTTP/1.1 client over a
persistent pool, with the process's pool settings; ``h1client`` is the one
module where client failures become edgeproxy's errors
(:mod:`edgeproxy.errors`), so callers decide retries from the error *type*.
Health checks keep using treq/Agent.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

from edgeproxy.config import Endpoint
from edgeproxy.h1client import H1Client

__all__ = ["DEFAULT_IDLE_TIMEOUT", "DEFAULT_MAX_IDLE_PER_ENDPOINT", "UpstreamClient"]

#: Idle upstream connections kept per endpoint.
DEFAULT_MAX_IDLE_PER_ENDPOINT = 64
#: Seconds an idle pooled upstream connection is kept (backends often close at 60-75 s).
DEFAULT_IDLE_TIMEOUT = 50.0


class UpstreamClient(H1Client):
    """The process's upstream pool (see :meth:`H1Client.request`)."""

    def __init__(
        self,
        reactor: IReactorTime,
        *,
        max_idle_per_endpoint: int = DEFAULT_MAX_IDLE_PER_ENDPOINT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        super().__init__(
            reactor, max_idle_per_endpoint=max_idle_per_endpoint, idle_timeout=idle_timeout
        )

    def idle_connections(self, endpoint: Endpoint | str) -> int:
        """Idle pooled connections to ``endpoint`` (for tests and metrics)."""
        return super().idle_connections(str(endpoint))
