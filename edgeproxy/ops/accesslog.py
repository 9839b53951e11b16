"""
Access logging: one record per request, written as a combined-format line
(plus edgeproxy's routing fields) or as a JSON object, either through
``twisted.logger`` (the default) or straight to a file or stdout
(``--access-log``), which keeps the formatting off the logger's hot path.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

if TYPE_CHECKING:
    from edgeproxy.ops.metrics import Metrics
    from edgeproxy.proxy.interfaces import ExchangeView

__all__ = [
    "ACCESS_LOG_FORMATS",
    "AccessLog",
    "AccessRecord",
    "FileSink",
    "combined_time",
    "format_combined",
    "format_json",
]

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


def _text(value: bytes | str | None) -> str:
    if not value:
        return "-"
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return value.replace('"', "%22")


# Methods and protocol versions are few (llhttp takes only the registered
# methods and HTTP/1.x): their text is made once.
_SHORT_TEXT: dict[bytes, str] = {}


def _short_text(value: bytes) -> str:
    text = _SHORT_TEXT.get(value)
    if text is None:
        text = _text(value)
        if len(_SHORT_TEXT) < 256:
            _SHORT_TEXT[value] = text
    return text


# Not frozen: one is made for every request, and a frozen class builds itself
# with an ``object.__setattr__`` call per field (22 of them).
@attrs.define
class AccessRecord:
    """What is logged about one request; the JSON keys are these names."""

    time: float
    client: str
    method: str
    host: str
    path: str
    protocol: str
    status: int
    bytes: int
    duration: float
    referer: str
    user_agent: str
    vhost: str | None
    route: str | None
    cluster: str | None
    endpoint: str | None
    upstream_status: int | None
    upstream_time: float | None
    attempts: int
    outcome: str
    reason: str | None
    tls_version: str | None
    sni: str | None
    request_id: str | None
    cache: str | None


def _referer_and_agent(headers: list[tuple[bytes, bytes]]) -> tuple[bytes | None, bytes | None]:
    """The first ``Referer`` and ``User-Agent`` values, in one pass (only names
    of their lengths are lower-cased)."""
    referer = agent = None
    for name, value in headers:
        length = len(name)
        if length == 7:
            if referer is None and name.lower() == b"referer":
                referer = value
        elif length == 10 and agent is None and name.lower() == b"user-agent":
            agent = value
    return referer, agent


def access_record(request: ExchangeView, now: float, duration: float) -> AccessRecord:
    vhost = request.vhost
    route = request.route
    record = request.record
    tls_version, sni = request.tls_details()
    referer, user_agent = _referer_and_agent(request.headers)
    host = request.host or b""
    return AccessRecord(
        time=now,
        client=request.client_ip,
        method=_short_text(request.method),
        host=_text(host),
        path=_text(request.uri),
        protocol=_short_text(request.clientproto),
        status=record.status,
        bytes=record.sent,
        duration=duration,
        referer=_text(referer),
        user_agent=_text(user_agent),
        vhost=vhost.vhost_name if vhost is not None else None,
        route=route.prefix if route is not None else None,
        cluster=record.cluster,
        endpoint=record.endpoint,
        upstream_status=record.upstream_status,
        upstream_time=record.upstream_time,
        attempts=record.attempts,
        outcome=record.outcome,
        reason=record.reason,
        tls_version=tls_version,
        sni=sni,
        request_id=record.request_id,
        cache=record.cache,
    )


def format_combined(r: AccessRecord) -> str:
    """The combined log format, then edgeproxy's fields as ``key=value``."""
    upstream_time = f"{r.upstream_time:.4f}" if r.upstream_time is not None else "-"
    return (
        f'{r.client} - - [{combined_time(r.time)}] "{r.method} {r.path} {r.protocol}" '
        f'{r.status} {r.bytes} "{r.referer}" "{r.user_agent}" '
        f"vhost={r.vhost or '-'} route={r.route or '-'} cluster={r.cluster or '-'} "
        f"endpoint={r.endpoint or '-'} upstream_status={r.upstream_status or '-'} "
        f"upstream_time={upstream_time} attempts={r.attempts} outcome={r.outcome} "
        f"reason={r.reason or '-'} "
        f"duration={r.duration:.4f} tls={r.tls_version or '-'} sni={r.sni or '-'} "
        f"request_id={r.request_id or '-'} cache={r.cache or '-'}"
    )


_RECORD_FIELDS = tuple(field.name for field in attrs.fields(AccessRecord))
_json_encode = json.JSONEncoder(separators=(",", ":")).encode
_cached_json_second = -1
_cached_json_time = ""


def _rfc3339(now: float) -> str:
    global _cached_json_second, _cached_json_time
    second = int(now)
    if second != _cached_json_second:
        _cached_json_time = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _cached_json_second = second
    return f"{_cached_json_time}.{int(now % 1 * 1000):03d}Z"


def format_json(r: AccessRecord) -> str:
    """One JSON object with stable keys (see :class:`AccessRecord`); time in RFC 3339."""
    # getattr over the field names, not attrs.asdict: this runs per request.
    fields = {name: getattr(r, name) for name in _RECORD_FIELDS}
    fields["time"] = _rfc3339(r.time)
    return _json_encode(fields)


ACCESS_LOG_FORMATS: dict[str, Callable[[AccessRecord], str]] = {
    "combined": format_combined,
    "json": format_json,
}


class FileSink:
    """Writes lines to a file (or stdout), buffered, flushed every second and on stop."""

    def __init__(self, path: str, clock: IReactorTime) -> None:
        self.path = path
        self._file: IO[str] = (
            sys.stdout if path == "-" else open(path, "a", encoding="utf-8", buffering=1 << 16)
        )
        self._flusher = LoopingCall(self.flush)
        self._flusher.clock = clock

    def start(self) -> None:
        if not self._flusher.running:
            self._flusher.start(1.0, now=False)

    def write(self, line: str) -> None:
        self._file.write(line + "\n")

    def flush(self) -> None:
        self._file.flush()

    def reopen(self) -> None:
        """After log rotation moved the file away (SIGHUP/SIGUSR1)."""
        if self.path == "-":
            return
        self._file.close()
        self._file = open(self.path, "a", encoding="utf-8", buffering=1 << 16)

    def stop(self) -> None:
        if self._flusher.running:
            self._flusher.stop()
        self.flush()


class AccessLog:
    """One access record per request: to ``twisted.logger`` (namespace
    ``edgeproxy.access``), or, when a sink is given, straight to it, or
    nowhere (``enabled=False``: ``--access-log off``).  Metrics are observed
    for every request either way."""

    def __init__(
        self,
        clock: IReactorTime,
        *,
        sink: FileSink | None = None,
        fmt: str = "combined",
        metrics: Metrics | None = None,
        enabled: bool = True,
    ) -> None:
        self._clock = clock
        self._sink = sink
        self._metrics = metrics
        self._format = ACCESS_LOG_FORMATS[fmt]
        self._enabled = enabled
        # An instance attribute: a Logger on the class would take the class's
        # name as its namespace instead of the stable "edgeproxy.access".
        self.log = Logger(namespace="edgeproxy.access")

    def log_request(self, request: ExchangeView, duration: float) -> None:
        metrics = self._metrics
        if metrics is not None:
            what = request.record
            metrics.observe(
                request.vhost.vhost_name if request.vhost is not None else None,
                request.route.prefix if request.route is not None else None,
                what.cluster,
                what.status,
                duration,
                what.upstream_time,
                request.body_bytes,
                what.sent,
            )
        if not self._enabled:
            return
        record = access_record(request, self._clock.seconds(), duration)
        line = self._format(record)
        if self._sink is not None:
            self._sink.write(line)
        else:
            # The record rides on the event for structured observers.
            self.log.info("{access_line}", access_line=line, access=record)
