"""
The admin listener (loopback by default).

- ``/healthz``: the process is alive (``ok``); for liveness probes.
- ``/readyz``: every listener is bound, the configuration is loaded and the
  certificate directory has been scanned at least once (200 ``ready``);
  otherwise 503 with the reasons, one a line.  For readiness probes.
- ``/status``: everything below as JSON (see :func:`status`).
- ``/metrics``: Prometheus text format.
- ``POST /cache/purge?url=<absolute URL>`` or ``?prefix=<absolute URL prefix>``:
  remove what the caches store for that URL (every variant) or under that
  prefix; answers ``{"purged": <objects removed>}``.
- ``/``: a small HTML page rendered from ``/status``
  (:func:`edgeproxy.ops.adminpage.render_page`), refreshed every few seconds.
"""

from __future__ import annotations

import datetime
import json
import math
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from edgeproxy import __version__
from edgeproxy.config import RateLimit, Split
from edgeproxy.ops.adminpage import render_page
from edgeproxy.ratelimit.registry import RESULTS

if TYPE_CHECKING:
    from twisted.internet.interfaces import IListeningPort, IReactorTime

    from edgeproxy.cache.registry import CacheCounters
    from edgeproxy.cache.store import StoreFigures
    from edgeproxy.cluster.snapshot import Snapshot
    from edgeproxy.ops.metrics import Metrics
    from edgeproxy.ratelimit.registry import DecisionCounters
    from edgeproxy.tls.certificates import CertificateIndex

__all__ = [
    "PAGE_CSP",
    "CacheView",
    "ListenerView",
    "ServiceView",
    "admin_site",
    "readiness",
    "status",
]


class ListenerView(Protocol):
    """What the admin pages read of a listener."""

    @property
    def kind(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def port(self) -> IListeningPort | None: ...


class CacheView(Protocol):
    """What the admin listener does with the caches
    (:class:`edgeproxy.cache.registry.CacheStores`)."""

    def figures(self) -> list[tuple[str, StoreFigures, CacheCounters]]: ...
    def purge_url(self, url: str) -> int: ...
    def purge_prefix(self, prefix: str) -> int: ...


class RateLimitView(Protocol):
    """The rate-limit store's figures and every route's decisions
    (:class:`edgeproxy.ratelimit.registry.RateLimits`)."""

    def figures(self) -> tuple[str, dict[str, float], list[tuple[str, DecisionCounters]]]: ...


class _HasSnapshot(Protocol):
    @property
    def snapshot(self) -> Snapshot: ...
    @property
    def caches(self) -> CacheView: ...
    @property
    def rate_limits(self) -> RateLimitView: ...


class _HasProblems(Protocol):
    @property
    def current_problems(self) -> Iterable[object]: ...


class _HasIndex(Protocol):
    @property
    def index(self) -> CertificateIndex: ...
    @property
    def directory(self) -> _HasProblems: ...


class ServiceView(Protocol):
    """What the admin pages read of the running service
    (:class:`edgeproxy.app.service.EdgeProxyService`), without importing the
    application layer that assembles them."""

    @property
    def reactor(self) -> IReactorTime: ...
    @property
    def pipeline(self) -> _HasSnapshot: ...
    @property
    def certificate_index(self) -> CertificateIndex: ...
    @property
    def certificates(self) -> _HasIndex: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def generation(self) -> int: ...
    @property
    def last_reload(self) -> dict[str, Any] | None: ...

    def listeners(self) -> Iterable[ListenerView]: ...


#: The admin page needs nothing but its own inline styles.
PAGE_CSP = b"default-src 'none'; style-src 'unsafe-inline'"

_DAY = 86400.0


def _no_store(request: Request) -> None:
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-content-type-options", b"nosniff")


class _Healthz(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        _no_store(request)
        return b"ok\n"


class _Readyz(Resource):
    isLeaf = True

    def __init__(self, proxy: ServiceView) -> None:
        super().__init__()
        self._proxy = proxy

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        _no_store(request)
        ready, reasons = readiness(self._proxy)
        if ready:
            return b"ready\n"
        request.setResponseCode(503)
        return ("not ready\n" + "".join(f"{r}\n" for r in reasons)).encode("utf-8")


def readiness(proxy: ServiceView) -> tuple[bool, list[str]]:
    """Whether the proxy can serve, and if not, why (short reasons)."""
    reasons: list[str] = []
    for listener in proxy.listeners():
        if listener.port is None:
            reasons.append(f"{listener.kind} listener {listener.description} is not bound")
    snapshot = getattr(proxy.pipeline, "snapshot", None)
    if snapshot is None or snapshot.config is None:
        reasons.append("configuration not loaded")
    # The watcher hands its directory's index over on its first scan (and on
    # every change); until then the proxy holds its own empty placeholder.
    if proxy.certificate_index is not proxy.certificates.index:
        reasons.append("certificate directory not scanned yet")
    return not reasons, reasons


def _address(listener: Any) -> str | None:
    if listener.port is None:
        return None
    host = listener.port.getHost()
    name = getattr(host, "name", None)  # UNIX sockets
    if isinstance(name, str | bytes):
        return name.decode("utf-8", "replace") if isinstance(name, bytes) else name
    address = getattr(host, "host", None)
    port = getattr(host, "port", None)
    if address is None or port is None:
        return str(host)
    if ":" in str(address):
        return f"[{address}]:{port}"
    return f"{address}:{port}"


def _route_split(target: object) -> list[dict[str, Any]] | None:
    if not isinstance(target, Split):
        return None
    return [{"cluster": cluster.name, "weight": weight} for cluster, weight in target.weights]


def status(proxy: ServiceView, started: float | None = None) -> dict[str, Any]:
    """The admin status document.

    ``started`` is the clock time the admin site was made (the uptime's origin);
    times in the document (``process.started_at``, ``recent_transitions[].at``)
    are seconds on the proxy's clock.
    """
    now = float(proxy.reactor.seconds())
    if started is None:
        started = now
    now_dt = datetime.datetime.fromtimestamp(now, tz=datetime.UTC)
    snapshot = proxy.pipeline.snapshot
    config = snapshot.config
    index = proxy.certificate_index
    ready, reasons = readiness(proxy)
    problems = [str(p) for p in proxy.certificates.directory.current_problems]
    return {
        "process": {
            "pid": os.getpid(),
            "uptime_seconds": round(max(0.0, now - started), 3),
            "started_at": started,
            "version": __version__,
        },
        "ready": {"ready": ready, "reasons": reasons},
        "listeners": [
            {
                "kind": listener.kind,
                "description": listener.description,
                "address": _address(listener),
            }
            for listener in proxy.listeners()
        ],
        "config": {
            "files": list(config.files),
            "generation": proxy.generation,
            "last_reload": proxy.last_reload,
        },
        "virtual_hosts": [
            {
                "names": list(vhost.names),
                "routes": [
                    {
                        "prefix": route.prefix,
                        "clusters": [c.name for c in route.clusters],
                        "split": _route_split(route.target),
                        "strip_prefix": route.strip_prefix,
                        "plain_http": route.plain_http,
                        "cache": None if route.cache is None else route.cache.store,
                        "rate_limit": _rate_limit(route.rate_limit),
                        "websocket": route.websocket,
                        "request_buffering": route.request_buffering,
                    }
                    for route in vhost.routes
                ],
            }
            for vhost in config.virtual_hosts
        ],
        "clusters": {
            # idle: defined at module level but used by no route (a blue/green pair's other side).
            name: {**runtime.status(), "idle": name not in config.clusters}
            for name, runtime in snapshot.clusters.items()
        },
        "certificates": [
            {
                "source": cert.source,
                "names": list(cert.names),
                "not_before": cert.not_before.isoformat(),
                "not_after": cert.not_after.isoformat(),
                # Whole days left, rounded down: 0 on the last day, negative once expired.
                "days_to_expiry": math.floor((cert.not_after - now_dt).total_seconds() / _DAY),
                "expired": now_dt >= cert.not_after,
                "default": cert.is_default,
            }
            for cert in index.certificates
        ],
        "certificate_problems": problems + list(index.warnings),
        "caches": [
            {
                "name": name,
                "objects": figures.objects,
                "bytes": figures.bytes,
                "max_bytes": figures.max_bytes,
                "evictions": figures.evictions,
                "hits": counters.hits,
                "stale": counters.stale,
                "misses": counters.misses,
                "collapsed": counters.collapsed,
                "revalidations": counters.revalidations,
                "not_modified": counters.revalidated,
                "stored": counters.stored,
                "not_stored": counters.not_stored,
            }
            for name, figures, counters in proxy.pipeline.caches.figures()
        ],
        "rate_limits": _rate_limits(proxy.pipeline.rate_limits),
        "connections": _connections(proxy.metrics),
    }


def _connections(metrics: Metrics) -> dict[str, Any]:
    """Client connections open now by listener kind, the HTTP/2 ones and
    their streams, and the tunnels after a ``101`` (WebSocket...)."""
    return {
        "open": dict(metrics.active_connections),
        "http2": {
            "connections": metrics.h2_connections,
            "active_streams": metrics.h2_active_streams,
            "streams_total": metrics.h2_streams,
        },
        "tunnels": {
            "open": metrics.tunnels_open,
            "closed": dict(metrics.tunnels_closed),
        },
    }


def _rate_limit(limit: RateLimit | None) -> dict[str, Any] | None:
    if limit is None:
        return None
    return {
        "rate": limit.rate,
        "burst": limit.burst,
        "key": limit.key,
        "on_store_error": limit.on_store_error,
    }


def _rate_limits(view: RateLimitView) -> dict[str, Any]:
    """The store (name, figures) and each route's decisions, by result."""
    store, figures, routes = view.figures()
    return {
        "store": store,
        **figures,
        "routes": {
            name: {result: getattr(counters, result) for result in RESULTS}
            for name, counters in routes
        },
    }


class _Status(Resource):
    isLeaf = True

    def __init__(self, proxy: ServiceView, started: float) -> None:
        super().__init__()
        self._proxy = proxy
        self._started = started

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        _no_store(request)
        return json.dumps(status(self._proxy, self._started), indent=2).encode("utf-8") + b"\n"


class _Page(Resource):
    isLeaf = True

    def __init__(self, proxy: ServiceView, started: float) -> None:
        super().__init__()
        self._proxy = proxy
        self._started = started

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        _no_store(request)
        request.setHeader(b"content-security-policy", PAGE_CSP)
        request.setHeader(b"x-frame-options", b"DENY")
        request.setHeader(b"referrer-policy", b"no-referrer")
        return render_page(status(self._proxy, self._started)).encode("utf-8")


class _Metrics(Resource):
    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return generate_latest(self._registry)


class _Purge(Resource):
    """``POST /cache/purge?url=...`` or ``?prefix=...``."""

    isLeaf = True
    log = Logger(namespace="edgeproxy.admin")

    def __init__(self, proxy: ServiceView) -> None:
        super().__init__()
        self._proxy = proxy

    def render_POST(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        _no_store(request)
        args = request.args or {}
        urls = args.get(b"url", [])
        prefixes = args.get(b"prefix", [])
        if len(urls) + len(prefixes) != 1:
            return _bad_purge(request, "give one url= or one prefix=")
        caches = self._proxy.pipeline.caches
        try:
            if urls:
                what, value = "url", urls[0].decode("utf-8")
                purged = caches.purge_url(value)
            else:
                what, value = "prefix", prefixes[0].decode("utf-8")
                purged = caches.purge_prefix(value)
        except (UnicodeDecodeError, ValueError) as e:
            return _bad_purge(request, str(e))
        self.log.info(
            "cache purge by {what} {value}: {purged} objects", what=what, value=value, purged=purged
        )
        return json.dumps({"purged": purged}).encode("ascii") + b"\n"


def _bad_purge(request: Request, why: str) -> bytes:
    request.setResponseCode(400)
    return json.dumps({"error": why}).encode("utf-8") + b"\n"


def admin_site(proxy: ServiceView) -> Site:
    started = float(proxy.reactor.seconds())
    root = Resource()
    root.putChild(b"", _Page(proxy, started))
    root.putChild(b"healthz", _Healthz())
    root.putChild(b"readyz", _Readyz(proxy))
    root.putChild(b"status", _Status(proxy, started))
    root.putChild(b"metrics", _Metrics(proxy.metrics.registry))
    cache = Resource()
    cache.putChild(b"purge", _Purge(proxy))
    root.putChild(b"cache", cache)
    site = Site(root)
    site.noisy = False
    return site
