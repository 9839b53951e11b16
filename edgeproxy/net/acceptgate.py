"""
The accept gate: connection limits and ``--deny`` judged when a connection is
accepted, under TLS, so a refused connection costs a ``close()`` and nothing
else (no TLS layer is built, no ServerHello is sent).

:class:`AcceptGate` is one per process (the limits are shared by every client
listener); :meth:`AcceptGate.endpoint` wraps a listener's raw endpoint, so
its factory is the one the TCP port calls.  Its ``buildProtocol`` asks
:class:`~edgeproxy.core.connlimits.ConnectionGate` and returns None for a
refused connection (the port closes the socket at once), else the wrapped
factory's protocol, unwrapped: the only thing added to an accepted
connection is its ``connectionLost``, which gives the place back first.
Reads and writes never pass through the gate.

On a PROXY-protocol listener (``haproxy:`` prefix) the TCP peer is the
balancer.  The process-wide cap is judged at accept; the per-client rules
judge the client the header names, at the first bytes after the header
(the TLS ClientHello, or the HTTP request), still before the TLS layer is
built: until then the connection's protocol is a placeholder that holds
nothing but a timer.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.interfaces import (
    IDelayedCall,
    ILoggingContext,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from edgeproxy.core.connlimits import AcceptLimits, ConnectionGate, Refusal

__all__ = [
    "FD_RESERVE",
    "AcceptGate",
    "GateEndpoint",
    "GateFactory",
    "RefusalLog",
    "client_key",
    "open_files_limit",
]

log = Logger(namespace="edgeproxy.acceptgate")

#: Descriptors a process needs besides its client connections: listeners,
#: pooled upstream connections, health checks, log and cache files.
FD_RESERVE = 256


def client_key(host: str) -> str:
    """The text a client address is counted under: IPv4-mapped IPv6 as IPv4,
    IPv6 compressed (Twisted's PROXY v2 parser writes it uncompressed)."""
    if ":" not in host:
        return host
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def open_files_limit() -> int | None:
    """The process's soft limit on open descriptors; None when unlimited or unknown."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY else int(soft)


class RefusalLog:
    """Refusals as log lines, at most one a second: the first at once, then,
    while they go on, one summary line per second with the counts by reason."""

    def __init__(self, clock: IReactorTime, interval: float = 1.0) -> None:
        self._clock = clock
        self._interval = interval
        #: Refusals since the last line, by reason; None: quiet (no line for a while).
        self._window: dict[Refusal, int] | None = None
        self._last = ""
        self._call: IDelayedCall | None = None

    def refused(self, reason: Refusal, client: str, listener: str) -> None:
        window = self._window
        if window is not None:
            window[reason] = window.get(reason, 0) + 1
            self._last = client
            return
        log.info(
            "connection from {client} closed at accept on {listener}: {reason}",
            client=client,
            listener=listener,
            reason=reason.value,
        )
        self._window = {}
        self._call = self._clock.callLater(self._interval, self._flush)

    def _flush(self) -> None:
        window = self._window
        self._call = None
        if not window:
            self._window = None
            return
        log.info(
            "closed {count} more connection(s) at accept in the last {seconds:g} s "
            "({reasons}; the last from {client})",
            count=sum(window.values()),
            seconds=self._interval,
            reasons=" ".join(f"{reason.value}={n}" for reason, n in sorted(window.items())),
            counts={reason.value: n for reason, n in window.items()},
            client=self._last,
        )
        self._window = {}
        self._call = self._clock.callLater(self._interval, self._flush)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._window = None


class AcceptGate:
    """The process's connection limits, and the endpoints that apply them."""

    def __init__(
        self, limits: AcceptLimits, clock: IReactorTime, *, pending_timeout: float = 75.0
    ) -> None:
        self.gate = ConnectionGate(limits)
        self.clock = clock
        self.refusals = RefusalLog(clock)
        #: How long a PROXY-protocol connection may take to send its header and
        #: first bytes before it is dropped (it holds a place meanwhile).
        self.pending_timeout = pending_timeout

    @property
    def limits(self) -> AcceptLimits:
        return self.gate.limits

    def endpoint(
        self, wrapped: IStreamServerEndpoint, kind: str, *, proxied: bool = False
    ) -> IStreamServerEndpoint:
        """``wrapped`` with the gate on its connections; ``proxied``: a
        PROXY-protocol endpoint (the client is the one its header names)."""
        if not self.limits.active:
            return wrapped
        return GateEndpoint(self, wrapped, kind, proxied)

    def check_open_files(self, soft_limit: int | None) -> bool:
        """Warn when the descriptor limit would stop accepts before
        ``--max-connections`` does; whether it is enough."""
        cap = self.limits.max_connections
        if soft_limit is None or not cap or soft_limit >= cap + FD_RESERVE:
            return True
        log.warn(
            "the open-files limit ({soft_limit}) is below --max-connections ({cap}) plus "
            "{reserve}: accepts will fail (EMFILE) before the cap is reached; raise it "
            "(ulimit -n, systemd LimitNOFILE=) or lower --max-connections",
            soft_limit=soft_limit,
            cap=cap,
            reserve=FD_RESERVE,
        )
        return False

    def stop(self) -> None:
        self.refusals.stop()


@implementer(IStreamServerEndpoint)
class GateEndpoint:
    def __init__(
        self, gate: AcceptGate, wrapped: IStreamServerEndpoint, kind: str, proxied: bool
    ) -> None:
        self.gate = gate
        self.wrapped = wrapped
        self.kind = kind
        self.proxied = proxied

    def listen(self, protocolFactory: IProtocolFactory) -> Any:
        factory = GateFactory(self.gate, protocolFactory, self.kind, proxied=self.proxied)
        return self.wrapped.listen(factory)


@implementer(IProtocolFactory, ILoggingContext)
class GateFactory:
    """Asks the gate at ``buildProtocol``; builds ``wrapped``'s protocol only
    for a connection it lets in."""

    def __init__(
        self,
        gate: AcceptGate,
        wrapped: IProtocolFactory,
        kind: str,
        *,
        proxied: bool = False,
    ) -> None:
        self.accept_gate = gate
        self.gate = gate.gate
        self.wrapped = wrapped
        self.kind = kind
        self.proxied = proxied
        self._seconds = gate.clock.seconds

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()

    def logPrefix(self) -> str:
        prefix = getattr(self.wrapped, "logPrefix", None)
        return str(prefix()) if prefix is not None else type(self.wrapped).__name__

    def buildProtocol(self, addr: Any) -> IProtocol | None:
        if self.proxied:
            return self._build_proxied(addr)
        host = getattr(addr, "host", None)
        gate = self.gate
        if host is None:  # not an IP peer (a UNIX socket): the process-wide cap only
            refusal = gate.open()
            if refusal is not None:
                self.accept_gate.refusals.refused(refusal, "-", self.kind)
                return None
            return self._built(addr, gate.close)
        client = host if ":" not in host else client_key(host)
        refusal = gate.admit(client, self._seconds())
        if refusal is not None:
            self.accept_gate.refusals.refused(refusal, client, self.kind)
            return None
        return self._built(addr, _Leave(gate, client))

    def _built(self, addr: Any, release: Any) -> IProtocol | None:
        try:
            protocol = self.wrapped.buildProtocol(addr)
        except BaseException:
            release()
            raise
        if protocol is None:
            release()
            return None
        hold(protocol, release)
        return protocol

    def _build_proxied(self, addr: Any) -> IProtocol | None:
        gate = self.gate
        refusal = gate.open()
        if refusal is not None:
            # The PROXY wrapper cannot take None: a protocol that closes at once.
            self.accept_gate.refusals.refused(refusal, getattr(addr, "host", "-"), self.kind)
            return _Refused()
        if not gate.limits.per_client:
            return self._built(addr, gate.close)
        return _PendingPeer(self)

    def judge(self, transport: Any) -> IProtocol | None:
        """The client a PROXY header named (the transport's peer by now):
        its protocol, built and holding its places, or None (refused)."""
        gate = self.gate
        peer = transport.getPeer()
        host = getattr(peer, "host", None)
        if host is None:
            return self._built(peer, gate.close)
        client = client_key(host)
        refusal = gate.join(client, self._seconds())
        if refusal is not None:
            gate.close()
            self.accept_gate.refusals.refused(refusal, client, self.kind)
            return None
        return self._built(peer, _Leave(gate, client))


class _Leave:
    """Gives a connection's places back (once: it is called from ``connectionLost``)."""

    __slots__ = ("client", "gate")

    def __init__(self, gate: ConnectionGate, client: str) -> None:
        self.gate = gate
        self.client = client

    def __call__(self) -> None:
        self.gate.release(self.client)


class _Hold:
    """A protocol's ``connectionLost`` while it holds places: gives them back
    (first, so a raising protocol cannot keep them), then calls the protocol's
    own.  It puts that back in its place, which also ends the reference cycle
    it makes."""

    __slots__ = ("own", "protocol", "release")

    def __init__(self, protocol: IProtocol, release: Any) -> None:
        self.protocol: IProtocol | None = protocol
        self.release = release
        # Set on the instance rather than its class (seldom): kept to be put back.
        self.own = vars(protocol).get("connectionLost")

    def __call__(self, reason: Failure) -> None:
        protocol, self.protocol = self.protocol, None
        if protocol is None:
            return
        self.release()
        if self.own is None:
            del protocol.connectionLost
        else:
            protocol.connectionLost = self.own  # type: ignore[method-assign]
            self.own = None
        protocol.connectionLost(reason)


def hold(protocol: IProtocol, release: Any) -> None:
    """``release()`` when ``protocol``'s connection is lost."""
    protocol.connectionLost = _Hold(protocol, release)  # type: ignore[method-assign]


class _Refused(Protocol):
    """A PROXY-protocol connection over the process-wide cap."""

    def makeConnection(self, transport: Any) -> None:
        transport.abortConnection()


class _PendingPeer(Protocol):
    """A PROXY-protocol connection until the client its header names is
    known: the first bytes after the header decide whether it stays."""

    def __init__(self, factory: GateFactory) -> None:
        self._factory: GateFactory | None = factory
        self._timer: IDelayedCall | None = None
        # The real protocol, when the transport is not a PROXY wrapper it can be put into.
        self._inner: IProtocol | None = None

    def connectionMade(self) -> None:
        factory = self._factory
        assert factory is not None
        gate = factory.accept_gate
        self._timer = gate.clock.callLater(gate.pending_timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        inner = self._inner
        if inner is not None:
            inner.dataReceived(data)
            return
        factory, self._factory = self._factory, None
        if factory is None:
            return  # refused, the close under way
        self._stop_timer()
        transport: Any = self.transport
        protocol = factory.judge(transport)
        if protocol is None:
            transport.abortConnection()
            return
        if getattr(transport, "wrappedProtocol", None) is self:
            # From now on the PROXY wrapper hands bytes straight to the real protocol.
            transport.wrappedProtocol = protocol
            self.transport = None
        else:
            self._inner = protocol
        protocol.makeConnection(transport)
        protocol.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_timer()
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.connectionLost(reason)
        factory, self._factory = self._factory, None
        if factory is not None:  # never judged: it held the process-wide place only
            factory.gate.close()
        self.transport = None

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
