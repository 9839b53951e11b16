"""
Access logging: one event per request through ``twisted.logger``, in the
combined log format plus edgeproxy's routing fields.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.logger import Logger

__all__ = ["AccessLog", "combined_time"]

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

_cached_second = -1
_cached_text = ""


def combined_time(now: float) -> str:
    """``25/Nov/2026:20:55:16 +0000``, cached per second (it is on every request)."""
    global _cached_second, _cached_text
    second = int(now)
    if second != _cached_second:
        t = time.gmtime(second)
        _cached_text = (
            f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"
        )
        _cached_second = second
    return _cached_text


def _text(value: bytes | None) -> str:
    if not value:
        return "-"
    return value.decode("latin-1").replace('"', "%22")


class AccessLog:
    """Emits ``edgeproxy.access`` events; the line is formatted only if an observer renders it."""

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        # An instance attribute: a Logger on the class would take the class's
        # name as its namespace instead of the stable "edgeproxy.access".
        self.log = Logger(namespace="edgeproxy.access")

    def log_request(self, request: Any, duration: float) -> None:
        client = request.getClientAddress()
        headers = request.requestHeaders
        vhost = request.vhost
        route = request.route
        self.log.info(
            '{client} - - [{time}] "{method} {uri} {protocol}" {status} {bytes} '
            '"{referer}" "{user_agent}" vhost={vhost} route={route} cluster={cluster} '
            "endpoint={endpoint} upstream_status={upstream_status} attempts={attempts} "
            "outcome={outcome} duration={duration:.4f}",
            client=getattr(client, "host", "-"),
            time=combined_time(self._clock.seconds()),
            method=_text(request.method),
            uri=_text(request.uri),
            protocol=_text(request.clientproto),
            status=request.code,
            bytes=request.sentLength,
            referer=_text(headers.getRawHeaders(b"referer", [b""])[0]),
            user_agent=_text(headers.getRawHeaders(b"user-agent", [b""])[0]),
            vhost=vhost.vhost_name if vhost is not None else "-",
            route=route.prefix if route is not None else "-",
            cluster=request.cluster_name or "-",
            endpoint=request.endpoint or "-",
            upstream_status=request.upstream_status or "-",
            attempts=request.attempts,
            outcome=request.outcome,
            duration=duration,
        )
