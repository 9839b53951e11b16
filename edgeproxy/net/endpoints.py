"""Socket options shared by the downstream and upstream sides."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.web.client import URI
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from edgeproxy.net.clienttls import ClientTLS

__all__ = ["DirectEndpointFactory", "set_no_delay"]


def set_no_delay(transport: Any) -> None:
    """Disable Nagle on the TCP socket under ``transport`` (under TLS too).

    A proxy relays small writes (headers, then body) that Nagle plus delayed
    ACKs would hold for 40 ms each.
    """
    for _ in range(3):
        set_it = getattr(transport, "setTcpNoDelay", None)
        if set_it is not None:
            try:
                set_it(True)
            except OSError:
                pass
            return
        transport = getattr(transport, "transport", None)
        if transport is None:
            return


@implementer(IStreamClientEndpoint)
class _QuietEndpoint:
    """Connects with the factory's ``noisy`` turned off.

    ``HTTPConnectionPool`` makes a factory per connection, and a factory logs
    "Starting factory" and "Stopping factory" (with the repr of the pool's
    callback) around each: for health checks, two lines per check per
    endpoint, all day.
    """

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self._endpoint = endpoint

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        if isinstance(protocolFactory, Factory):
            protocolFactory.noisy = False
        return self._endpoint.connect(protocolFactory)


@implementer(IAgentEndpointFactory)
class DirectEndpointFactory:
    """Plain TCP endpoints for ``Agent.usingEndpointFactory``, quiet in the log.

    An IP literal is connected to directly: ``HostnameEndpoint`` would resolve
    it in a thread and report a refused connection only after its 0.3 s
    attempt delay, which skews health checks of a dead endpoint.
    """

    def __init__(
        self,
        reactor: Any,
        connect_timeout: float,
        *,
        tls: Callable[[], ClientTLS | None] | None = None,
    ) -> None:
        self._reactor = reactor
        self._timeout = connect_timeout
        #: The TLS to wrap each connection in (read per connection: a
        #: reload may change it), as a cluster's ``upstream_tls``.
        self._tls = tls

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        endpoint = self._endpoint(uri)
        tls = self._tls() if self._tls is not None else None
        if tls is not None:
            host = uri.host.decode("ascii").strip("[]")
            endpoint = wrapClientTLS(tls.checking_creator_for(host, uri.port), endpoint)
        return _QuietEndpoint(endpoint)

    def _endpoint(self, uri: URI) -> IStreamClientEndpoint:
        host = uri.host.decode("ascii")
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return HostnameEndpoint(self._reactor, host, uri.port, timeout=self._timeout)
        if address.version == 4:
            return TCP4ClientEndpoint(self._reactor, host, uri.port, timeout=self._timeout)
        return TCP6ClientEndpoint(self._reactor, str(address), uri.port, timeout=self._timeout)
