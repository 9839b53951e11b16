"""
A proxied request leaves no reference cycles behind: everything it allocated is
freed by reference counting.  Cyclic garbage made the collector run every few
hundred requests and stop the process for milliseconds each time (p99), so this
guards the hot paths: a small response whole in one read, a streamed body, and
an edgeproxy error answer.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from edgeproxy.config import Cluster, Route, VirtualHost
from tests.memproxy import make_config, proxy_factory

REQUEST = b"GET /x HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: t\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000


class Rig:
    def __init__(self) -> None:
        self.reactor = MemoryReactorClock()
        web = Cluster("web", endpoints=["10.0.0.1:80"])
        config = make_config(VirtualHost(["shop.example"], routes=[Route("/", web)]))
        self.factory, _ = proxy_factory(self.reactor, config, tls=True)
        self.channel = self.factory.buildProtocol(IPv4Address("TCP", "192.0.2.9", 5555))
        self.client = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.9", 5555))
        self.channel.makeConnection(self.client)
        self.upstream: tuple[Any, StringTransport] | None = None

    def exchange(self, reads: list[bytes]) -> None:
        self.client.clear()
        self.channel.dataReceived(REQUEST)
        if self.upstream is None:
            host, port, factory, _, _ = self.reactor.tcpClients[0]
            protocol: Any = factory.buildProtocol(IPv4Address("TCP", host, port))
            transport = StringTransport()
            protocol.makeConnection(transport)
            self.upstream = (protocol, transport)
        protocol, transport = self.upstream
        transport.clear()
        for data in reads:
            protocol.dataReceived(data)
        self.reactor.advance(0)
        assert self.client.value().endswith(b"x" * 1000)


@pytest.fixture
def garbage_of() -> Iterator[Callable[[Callable[[], None]], list[object]]]:
    def run(step: Callable[[], None]) -> list[object]:
        for _ in range(5):  # warm: pools, caches
            step()
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(20):
                step()
            gc.collect()
            return list(gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()

    yield run


def test_small_response_whole_in_one_read(garbage_of: Callable[..., list[object]]) -> None:
    rig = Rig()
    assert garbage_of(lambda: rig.exchange([RESPONSE])) == []


def test_streamed_response(garbage_of: Callable[..., list[object]]) -> None:
    rig = Rig()
    assert garbage_of(lambda: rig.exchange([RESPONSE[:100], RESPONSE[100:600], RESPONSE[600:]])) == []


def test_error_answered_by_edgeproxy(garbage_of: Callable[..., list[object]]) -> None:
    rig = Rig()

    def not_found() -> None:
        rig.client.clear()
        rig.channel.dataReceived(b"GET /x HTTP/1.1\r\nHost: other.example\r\n\r\n")
        assert rig.client.value().startswith(b"HTTP/1.1 404")

    assert garbage_of(not_found) == []
