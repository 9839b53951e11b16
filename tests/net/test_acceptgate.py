"""The accept gate in memory: a refused connection gets no protocol at all
(the port closes the socket), an accepted one gets the wrapped factory's own
protocol (nothing between it and the transport) and gives its places back
when its connection is lost, on every path; the PROXY-protocol listener
judges the client its header names; refusals are logged at most once a
second."""

from __future__ import annotations

import gc
import ipaddress
from typing import Any

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory
from twisted.python.failure import Failure

from edgeproxy.core.connlimits import AcceptLimits, Refusal
from edgeproxy.net.acceptgate import (
    AcceptGate,
    GateEndpoint,
    GateFactory,
    client_key,
    open_files_limit,
)
from edgeproxy.tls.server import TLSServerEndpoint


class Recorder(Protocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost: list[Failure] = []

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.append(reason)


class Counting(Factory):
    def __init__(self) -> None:
        self.built: list[tuple[Any, Recorder]] = []

    def buildProtocol(self, addr: Any) -> Recorder:
        protocol = Recorder()
        self.built.append((addr, protocol))
        return protocol


def peer(host: str, port: int = 40000) -> IPv4Address | IPv6Address:
    if ":" in host:
        return IPv6Address("TCP", host, port)
    return IPv4Address("TCP", host, port)


def make(
    limits: AcceptLimits, *, proxied: bool = False
) -> tuple[AcceptGate, GateFactory, Counting, Clock]:
    clock = Clock()
    gate = AcceptGate(limits, clock, pending_timeout=30.0)
    wrapped = Counting()
    return gate, GateFactory(gate, wrapped, "https", proxied=proxied), wrapped, clock


def connect(factory: Any, addr: Any) -> tuple[Any, StringTransport]:
    protocol = factory.buildProtocol(addr)
    transport = StringTransport(peerAddress=addr)
    if protocol is not None:
        protocol.makeConnection(transport)
    return protocol, transport


def test_a_refused_connection_builds_nothing() -> None:
    gate, factory, wrapped, _ = make(AcceptLimits(max_per_client=1))
    first = factory.buildProtocol(peer("127.0.0.2"))
    assert isinstance(first, Recorder)
    assert factory.buildProtocol(peer("127.0.0.2")) is None
    assert len(wrapped.built) == 1
    assert factory.buildProtocol(peer("127.0.0.3")) is not None
    assert gate.gate.refused == {Refusal.PER_CLIENT: 1}


def test_the_accepted_protocol_is_the_wrapped_ones_and_releases_once() -> None:
    gate, factory, wrapped, _ = make(AcceptLimits(max_connections=5, max_per_client=1))
    protocol, transport = connect(factory, peer("127.0.0.2"))
    assert protocol is wrapped.built[0][1]
    assert protocol.transport is transport  # nothing in between
    assert gate.gate.per_client == {"127.0.0.2": 1}
    protocol.connectionLost(Failure(ConnectionAborted()))
    assert (gate.gate.open_connections, gate.gate.per_client) == (0, {})
    assert [r.type for r in protocol.lost] == [ConnectionAborted]
    # The hook is gone (no cycle left behind); a second call reaches the protocol only.
    assert "connectionLost" not in vars(protocol)
    protocol.connectionLost(Failure(ConnectionDone()))
    assert gate.gate.open_connections == 0
    assert len(protocol.lost) == 2


def test_a_protocol_that_raises_in_connection_lost_still_gives_its_place_back() -> None:
    class Boom(Protocol):
        def connectionLost(self, reason: Failure = connectionDone) -> None:
            raise RuntimeError("boom")

    class Raising(Factory):
        def buildProtocol(self, addr: Any) -> Protocol:
            return Boom()

    clock = Clock()
    gate = AcceptGate(AcceptLimits(max_per_client=1), clock)
    factory = GateFactory(gate, Raising(), "http")
    protocol = factory.buildProtocol(peer("127.0.0.2"))
    assert protocol is not None
    with pytest.raises(RuntimeError):
        protocol.connectionLost(Failure(ConnectionDone()))
    assert gate.gate.per_client == {}


def test_a_connection_lost_set_on_the_instance_is_kept() -> None:
    class Own(Factory):
        def buildProtocol(self, addr: Any) -> Protocol:
            protocol = Protocol()
            protocol.connectionLost = seen.append  # type: ignore[method-assign,assignment]
            return protocol

    seen: list[Failure] = []
    gate = AcceptGate(AcceptLimits(max_per_client=1), Clock())
    protocol = GateFactory(gate, Own(), "http").buildProtocol(peer("127.0.0.2"))
    assert protocol is not None
    reason = Failure(ConnectionDone())
    protocol.connectionLost(reason)
    assert seen == [reason]
    assert protocol.connectionLost == seen.append
    assert gate.gate.per_client == {}


def test_a_wrapped_factory_that_builds_nothing_holds_nothing() -> None:
    class Nothing(Factory):
        def buildProtocol(self, addr: Any) -> None:
            return None

    gate = AcceptGate(AcceptLimits(max_per_client=1), Clock())
    factory = GateFactory(gate, Nothing(), "http")
    assert factory.buildProtocol(peer("127.0.0.2")) is None
    assert (gate.gate.open_connections, gate.gate.per_client, gate.gate.refused) == (0, {}, {})


def test_unix_peers_meet_the_process_cap_only() -> None:
    gate, factory, _, _ = make(AcceptLimits(max_connections=1, max_per_client=1))
    protocol, _ = connect(factory, UNIXAddress(None))
    assert protocol is not None
    assert factory.buildProtocol(UNIXAddress(None)) is None
    protocol.connectionLost(Failure(ConnectionDone()))
    assert gate.gate.open_connections == 0


def test_mapped_and_v6_clients_are_counted_by_their_canonical_text() -> None:
    assert client_key("127.0.0.2") == "127.0.0.2"
    assert client_key("::ffff:127.0.0.2") == "127.0.0.2"
    assert client_key("2001:db8:0:0:0:0:0:7") == "2001:db8::7"
    gate, factory, _, _ = make(AcceptLimits(max_per_client=1))
    assert factory.buildProtocol(peer("::ffff:127.0.0.2")) is not None
    assert factory.buildProtocol(IPv4Address("TCP", "127.0.0.2", 1)) is None


def test_no_limits_means_no_gate() -> None:
    gate = AcceptGate(AcceptLimits(max_connections=0, max_per_client=0), Clock())
    endpoint: Any = ListeningEndpoint()
    assert gate.endpoint(endpoint, "https") is endpoint
    assert isinstance(AcceptGate(AcceptLimits(), Clock()).endpoint(endpoint, "https"), GateEndpoint)


class ListeningEndpoint:
    def __init__(self) -> None:
        self.factory: Any = None

    def listen(self, factory: Any) -> None:
        self.factory = factory


class Creator:
    def __init__(self) -> None:
        self.asked = 0

    def serverConnectionForTLS(self, protocol: Any) -> Any:
        self.asked += 1
        raise AssertionError("no TLS for a refused connection")


def test_the_gate_sits_under_tls() -> None:
    raw = ListeningEndpoint()
    gate = AcceptGate(AcceptLimits(deny=(ipaddress.ip_network("127.0.0.2/32"),)), Clock())
    creator = Creator()
    app = Counting()
    TLSServerEndpoint(creator, gate.endpoint(raw, "https")).listen(app)  # type: ignore[arg-type]
    assert isinstance(raw.factory, GateFactory)
    assert "(TLS)" in raw.factory.logPrefix()
    assert raw.factory.buildProtocol(peer("127.0.0.2")) is None
    assert (creator.asked, app.built) == (0, [])
    assert raw.factory.buildProtocol(peer("127.0.0.3")) is not None


def test_a_descriptor_limit_below_the_cap_is_warned_about() -> None:
    gate = AcceptGate(AcceptLimits(max_connections=10_000), Clock())
    with capturedLogs() as events:
        assert gate.check_open_files(20_000)
        assert gate.check_open_files(None)
        assert not gate.check_open_files(1024)
    assert [(e["soft_limit"], e["cap"]) for e in events] == [(1024, 10_000)]
    assert AcceptGate(AcceptLimits(max_connections=0), Clock()).check_open_files(1024)
    assert open_files_limit() is None or open_files_limit() > 0


# --- the refusal log ---------------------------------------------------------------------


def test_refusals_are_logged_at_most_once_a_second() -> None:
    gate, factory, _, clock = make(
        AcceptLimits(max_per_client=1, deny=(ipaddress.ip_network("10.0.0.0/8"),))
    )
    connect(factory, peer("127.0.0.2"))
    with capturedLogs() as events:
        assert factory.buildProtocol(peer("127.0.0.2")) is None
        assert [e["reason"] for e in events] == ["per_client"]
        assert events[0]["client"] == "127.0.0.2"
        for _ in range(500):
            factory.buildProtocol(peer("127.0.0.2"))
        factory.buildProtocol(peer("10.1.1.1"))
        assert len(events) == 1
        clock.advance(1.0)
        assert len(events) == 2
        summary = events[1]
        assert summary["count"] == 501
        assert summary["counts"] == {"per_client": 500, "deny": 1}
        assert summary["client"] == "10.1.1.1"
        clock.advance(1.0)  # a quiet second: no line, and the window closes
        assert len(events) == 2
        assert clock.getDelayedCalls() == []
        factory.buildProtocol(peer("127.0.0.2"))
        assert len(events) == 3
    gate.stop()
    assert clock.getDelayedCalls() == []


# --- PROXY protocol ------------------------------------------------------------------------

HEADER = b"PROXY TCP4 203.0.113.9 127.0.0.1 5555 443\r\n"


def proxied(limits: AcceptLimits) -> tuple[AcceptGate, HAProxyWrappingFactory, Counting, Clock]:
    gate, factory, wrapped, clock = make(limits, proxied=True)
    return gate, HAProxyWrappingFactory(factory), wrapped, clock


def test_the_proxy_header_names_the_client_judged_before_the_protocol_is_built() -> None:
    gate, front, wrapped, _ = proxied(AcceptLimits(max_per_client=1))
    wrapper, transport = connect(front, peer("10.0.0.5"))
    assert wrapped.built == []
    wrapper.dataReceived(HEADER)
    assert wrapped.built == []  # the header alone decides nothing yet
    wrapper.dataReceived(b"hello")
    [(addr, protocol)] = wrapped.built
    assert addr.host == "203.0.113.9"
    assert protocol.received == [b"hello"]
    assert wrapper.wrappedProtocol is protocol  # the placeholder is out of the way
    assert gate.gate.per_client == {"203.0.113.9": 1}
    wrapper.dataReceived(b"more")
    assert protocol.received == [b"hello", b"more"]
    # The same client through the same balancer: refused, no protocol built.
    second, second_transport = connect(front, peer("10.0.0.5"))
    second.dataReceived(HEADER + b"hello")
    assert len(wrapped.built) == 1
    assert second_transport.disconnected
    second.connectionLost(Failure(ConnectionAborted()))
    # Another client through the same balancer is fine.
    third, _ = connect(front, peer("10.0.0.5"))
    third.dataReceived(HEADER.replace(b"203.0.113.9", b"203.0.113.10") + b"x")
    assert len(wrapped.built) == 2
    wrapper.connectionLost(Failure(ConnectionDone()))
    third.connectionLost(Failure(ConnectionDone()))
    assert (gate.gate.open_connections, gate.gate.per_client) == (0, {})
    assert gate.gate.refused == {Refusal.PER_CLIENT: 1}


def test_deny_judges_the_proxied_client_not_the_balancer() -> None:
    gate, front, wrapped, _ = proxied(AcceptLimits(deny=(ipaddress.ip_network("203.0.113.0/24"),)))
    wrapper, transport = connect(front, peer("203.0.113.1"))  # the balancer is in the range
    wrapper.dataReceived(HEADER.replace(b"203.0.113.9", b"198.51.100.1") + b"x")
    assert len(wrapped.built) == 1
    denied, denied_transport = connect(front, peer("10.0.0.5"))
    denied.dataReceived(HEADER + b"x")
    assert denied_transport.disconnected and len(wrapped.built) == 1
    assert gate.gate.refused == {Refusal.DENY: 1}


def test_a_proxied_connection_that_never_speaks_times_out_and_gives_its_place_back() -> None:
    gate, front, wrapped, clock = proxied(AcceptLimits(max_connections=1, max_per_client=1))
    wrapper, transport = connect(front, peer("10.0.0.5"))
    assert gate.gate.open_connections == 1
    assert connect(front, peer("10.0.0.5"))[1].disconnected  # over the process cap at accept
    clock.advance(29.0)
    assert not transport.disconnected
    clock.advance(1.0)
    assert transport.disconnected
    wrapper.connectionLost(Failure(ConnectionAborted()))
    assert gate.gate.open_connections == 0
    assert wrapped.built == []
    assert gate.gate.refused == {Refusal.MAX_CONNECTIONS: 1}


def test_a_proxied_listener_without_per_client_rules_builds_at_accept() -> None:
    gate, front, wrapped, clock = proxied(AcceptLimits(max_connections=3, max_per_client=0))
    wrapper, _ = connect(front, peer("10.0.0.5"))
    assert len(wrapped.built) == 1 and clock.getDelayedCalls() == []
    wrapper.dataReceived(HEADER + b"x")
    assert wrapped.built[0][1].received == [b"x"]
    wrapper.connectionLost(Failure(ConnectionDone()))
    assert gate.gate.open_connections == 0


def garbage_after_one_connection(front: Any, wrapped: Counting, data: bytes) -> int:
    """Objects only the cycle collector frees, left by one connection through ``front``."""
    gc.collect()
    gc.disable()
    try:
        protocol, transport = connect(front, peer("10.0.0.5"))
        protocol.dataReceived(data)
        protocol.connectionLost(Failure(ConnectionDone()))
        del protocol, transport
        wrapped.built.clear()
        return gc.collect()
    finally:
        gc.enable()


def test_a_gated_connection_leaves_no_cycle() -> None:
    _, factory, wrapped, _ = make(AcceptLimits(max_per_client=2, rate=5.0, burst=5))
    assert garbage_after_one_connection(factory, wrapped, b"x") == 0


def test_a_judged_proxied_connection_leaves_no_more_than_the_proxy_wrapper_does() -> None:
    # Twisted's PROXY wrapper leaves its directlyProvides spec in a cycle of its own.
    plain = Counting()
    baseline = garbage_after_one_connection(HAProxyWrappingFactory(plain), plain, HEADER + b"x")
    _, front, wrapped, _ = proxied(AcceptLimits(max_per_client=2))
    assert garbage_after_one_connection(front, wrapped, HEADER + b"x") == baseline
