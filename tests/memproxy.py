"""
The test kit for the request path, in memory: the proxy's downstream and
forwarding side wired on a ``MemoryReactorClock`` that stands in for the
network (:func:`proxy_factory`), a client connected to it
(:func:`connect_client`), and the upstream connections it asks for, picked
from ``reactor.tcpClients`` and accepted or refused by hand
(:func:`accept_upstream`, :func:`refuse_upstream`).
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from edgeproxy.cluster.snapshot import Snapshot
from edgeproxy.config import VirtualHost
from edgeproxy.config.load import LoadedConfig
from edgeproxy.config.routing import RoutingTable
from edgeproxy.config.settings import Settings
from edgeproxy.ops.accesslog import AccessLog
from edgeproxy.proxy.forward import Forwarder
from edgeproxy.proxy.h1channel import ProxyChannel, ProxyFactory
from edgeproxy.proxy.pipeline import Pipeline
from edgeproxy.ratelimit.registry import RateLimits
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
    reactor: MemoryReactorClock,
    config: LoadedConfig,
    *,
    tls: bool = True,
    seed: int = 1,
    settings: Settings | None = None,
    rate_limits: RateLimits | None = None,
) -> tuple[ProxyFactory, Pipeline]:
    """A started downstream factory and its pipeline on ``reactor`` (rate
    limits in memory on ``reactor`` unless ``rate_limits`` says otherwise)."""
    rng = random.Random(seed)
    settings = settings or Settings()
    pipeline = Pipeline(
        Snapshot.build(config, reactor, rng),
        Forwarder(UpstreamClient(reactor), via=b"1.1 edgeproxy", clock=reactor, rng=rng),
        settings=settings,
        https_port=lambda: 8443,
        rate_limits=rate_limits,
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


#: The client address the kit's connections come from.
CLIENT = IPv4Address("TCP", "192.0.2.9", 5555)


def connect_client(
    factory: ProxyFactory, transport: StringTransport | None = None
) -> tuple[ProxyChannel, StringTransport]:
    """A client connection to ``factory``'s listener, from :data:`CLIENT`."""
    channel = factory.buildProtocol(CLIENT)
    if transport is None:
        transport = StringTransport(peerAddress=CLIENT)
    channel.makeConnection(transport)
    return channel, transport


def accept_upstream(
    reactor: MemoryReactorClock, index: int = -1
) -> tuple[Any, StringTransport, str]:
    """Complete the upstream connection the proxy asked for (the last one by
    default): its protocol, its transport, and ``host:port``."""
    host, port, factory, _timeout, _bind = reactor.tcpClients[index]
    protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport, f"{host}:{port}"


def refuse_upstream(
    reactor: MemoryReactorClock, index: int = -1, reason: Exception | None = None
) -> None:
    """Fail the upstream connection the proxy asked for (refused by default)."""
    factory = reactor.tcpClients[index][2]
    factory.clientConnectionFailed(None, Failure(reason or ConnectionRefusedError()))


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
