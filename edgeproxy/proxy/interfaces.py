"""
What the proxy layer needs of its surroundings, as small protocols: the
connection an exchange arrived on, the listener that accepted it, and the
reports it makes (metrics, access records).  The HTTP/1.1 channel
(:mod:`.h1channel`) implements the first two; :mod:`edgeproxy.ops`
implements the reports; nothing here imports either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from twisted.internet.interfaces import IPushProducer

from edgeproxy.config.settings import Settings
from edgeproxy.core.errors import Outcome, Reason

if TYPE_CHECKING:
    from edgeproxy.cluster.snapshot import Snapshot
    from edgeproxy.proxy.exchange import ProxyRequest

__all__ = ["AccessSink", "Channel", "Dispatch", "Listener", "ProxyMetrics"]


class ProxyMetrics(Protocol):
    """The counters the request path keeps (:class:`edgeproxy.ops.metrics.Metrics`)."""

    def connection_opened(self, listener: str) -> None: ...
    def connection_closed(self, listener: str) -> None: ...
    def tls_handshake(self, version: str) -> None: ...
    def tls_failed(self, cause: str) -> None: ...
    def count_outcome(self, outcome: Outcome, reason: Reason | None) -> None: ...


class AccessSink(Protocol):
    """Where each finished exchange is recorded (:class:`edgeproxy.ops.accesslog.AccessLog`)."""

    def log_request(self, request: ProxyRequest, duration: float) -> None: ...


class Dispatch(Protocol):
    """The current configuration's routing, read once per request."""

    @property
    def snapshot(self) -> Snapshot: ...
    def forward(self, request: ProxyRequest) -> None: ...


class Listener(Protocol):
    """The listener a connection was accepted on (:class:`.h1channel.ProxyFactory`)."""

    tls: bool
    settings: Settings
    metrics: ProxyMetrics | None
    access_log: AccessSink

    @property
    def forwarder(self) -> Dispatch: ...
    def https_port(self) -> int | None: ...


class Channel(Protocol):
    """The connection an exchange arrived on, as the exchange uses it."""

    draining: bool
    covered_host: str | None
    clock_seconds: Callable[[], float]

    @property
    def factory(self) -> Listener: ...
    @property
    def client_ip(self) -> str: ...
    def covers(self, host: str) -> bool: ...
    def write_now(self, data: bytes) -> None: ...
    def register_body_producer(self, producer: IPushProducer | None) -> None: ...
    def request_done(self, request: ProxyRequest) -> None: ...
    def run_queue(self) -> None: ...
    def close(self) -> None: ...
