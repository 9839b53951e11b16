"""
A proxied request leaves no reference cycles behind: everything it allocated is
freed by reference counting.  Cyclic garbage made the collector run every few
hundred requests and stop the process for milliseconds each time (p99), so this
guards the hot paths: a small response whole in one read, a streamed body, and
an edgeproxy error answer.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
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


def garbage_of(step: Callable[[], None]) -> list[str]:
    """The types of the cyclic garbage 20 runs of ``step`` leave."""
    for _ in range(5):  # warm: pools, caches
        step()
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(20):
            step()
        gc.collect()
        return sorted({type(o).__qualname__ for o in gc.garbage})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def scenario(name: str) -> list[str]:
    rig = Rig()
    if name == "whole":
        return garbage_of(lambda: rig.exchange([RESPONSE]))
    if name == "streamed":
        return garbage_of(lambda: rig.exchange([RESPONSE[:100], RESPONSE[100:600], RESPONSE[600:]]))
    if name == "interim":
        hints = b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
        return garbage_of(lambda: rig.exchange([hints, RESPONSE]))

    def not_found() -> None:
        rig.client.clear()
        rig.channel.dataReceived(b"GET /x HTTP/1.1\r\nHost: other.example\r\n\r\n")
        assert rig.client.value().startswith(b"HTTP/1.1 404")

    return garbage_of(not_found)


# In a fresh interpreter: in the test process, other tests' objects can turn
# into garbage while these run.
@pytest.mark.parametrize("name", ["whole", "streamed", "interim", "error"])
def test_a_request_leaves_no_cyclic_garbage(name: str) -> None:
    code = f"import json; from tests.test_no_cycles import scenario; print(json.dumps(scenario({name!r})))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
        check=True,
    ).stdout
    assert json.loads(out.strip().splitlines()[-1]) == []
