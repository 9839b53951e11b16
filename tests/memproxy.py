"""
The proxy's downstream and forwarding side wired in memory, for unit tests:
a ``MemoryReactorClock`` stands in for the network, so upstream connections
are picked from ``reactor.tcpClients`` and driven by hand.
"""

from __future__ import annotations

import random

from twisted.internet.testing import MemoryReactorClock, StringTransport

from edgeproxy.cluster.snapshot import Snapshot
from edgeproxy.config import VirtualHost
from edgeproxy.config.load import LoadedConfig
from edgeproxy.config.routing import RoutingTable
from edgeproxy.config.settings import Settings
from edgeproxy.ops.accesslog import AccessLog
from edgeproxy.proxy.forward import Forwarder
from edgeproxy.proxy.h1channel import ProxyFactory
from edgeproxy.proxy.pipeline import Pipeline
from edgeproxy.upstream.h1client import UpstreamClient


def make_config(*vhosts: VirtualHost) -> LoadedConfig:
    """A loaded configuration of ``vhosts``, as configload would make it."""
    clusters = {c.name: c for v in vhosts for r in v.routes for c in r.clusters}
    return LoadedConfig(
        virtual_hosts=vhosts,
        files=("test.py",),
        clusters=clusters,
        routing=RoutingTable.from_virtual_hosts(vhosts),
    )


def proxy_factory(
    reactor: MemoryReactorClock, config: LoadedConfig, *, tls: bool = True, seed: int = 1
) -> tuple[ProxyFactory, Pipeline]:
    """A started downstream factory and its pipeline on ``reactor``."""
    rng = random.Random(seed)
    settings = Settings()
    pipeline = Pipeline(
        Snapshot.build(config, reactor, rng),
        Forwarder(UpstreamClient(reactor), via=b"1.1 edgeproxy", clock=reactor, rng=rng),
        settings=settings,
        https_port=lambda: 8443,
    )
    factory = ProxyFactory(
        pipeline,
        tls=tls,
        settings=settings,
        access_log=AccessLog(reactor),
        clock=reactor,
    )
    factory.startFactory()
    return factory, pipeline


class TCPLikeTransport(StringTransport):
    """A StringTransport whose producer methods behave like a TCP connection's
    (``twisted.internet.abstract.FileDescriptor``): stopping closes it, and
    pausing or resuming a closing connection does nothing instead of raising.

    twisted's client resumes the body transport right after the body protocol's
    ``makeConnection``, even when that protocol (``forward._Discard``) has
    stopped it already; a real socket ignores that.
    """

    def stopProducing(self) -> None:
        super().stopProducing()
        self.loseConnection()

    def pauseProducing(self) -> None:
        if self.producerState != "stopped":
            super().pauseProducing()

    def resumeProducing(self) -> None:
        if self.producerState != "stopped" and not self.disconnecting:
            super().resumeProducing()
