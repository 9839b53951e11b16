"""
The admin listener (loopback by default): ``/healthz`` and a JSON ``/status``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

if TYPE_CHECKING:
    from edgeproxy.service import EdgeProxyService

__all__ = ["admin_site"]


class _Healthz(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return b"ok\n"


class _Status(Resource):
    isLeaf = True

    def __init__(self, proxy: EdgeProxyService) -> None:
        super().__init__()
        self._proxy = proxy

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(status(self._proxy), indent=2).encode("utf-8") + b"\n"


def status(proxy: EdgeProxyService) -> dict[str, Any]:
    snapshot = proxy.forwarder.snapshot
    config = snapshot.config
    index = proxy.certificate_index
    return {
        "config": {"files": list(config.files)},
        "virtual_hosts": [
            {
                "names": list(vhost.names),
                "routes": [
                    {
                        "prefix": route.prefix,
                        "clusters": [c.name for c in route.clusters],
                        "strip_prefix": route.strip_prefix,
                        "plain_http": route.plain_http,
                    }
                    for route in vhost.routes
                ],
            }
            for vhost in config.virtual_hosts
        ],
        "clusters": {name: runtime.status() for name, runtime in snapshot.clusters.items()},
        "certificates": [
            {
                "source": cert.source,
                "names": list(cert.names),
                "not_after": cert.not_after.isoformat(),
                "default": cert.is_default,
            }
            for cert in index.certificates
        ],
    }


class _Metrics(Resource):
    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return generate_latest(self._registry)


def admin_site(proxy: EdgeProxyService) -> Site:
    root = Resource()
    root.putChild(b"healthz", _Healthz())
    root.putChild(b"status", _Status(proxy))
    root.putChild(b"metrics", _Metrics(proxy.metrics.registry))
    site = Site(root)
    site.noisy = False
    return site
