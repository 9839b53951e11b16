"""
The deterministic yardstick: Python bytecodes executed per proxied request.

wrk figures on a shared VM move by tens of percent between minutes; the number
of bytecodes the interpreter runs for one request does not.  This drives N
keep-alive GETs through the real downstream channel, forwarder and pooled
upstream client in one process (``tests.memproxy``: a ``MemoryReactorClock``
for the network, ``StringTransport`` both ways, a canned 1 000-byte upstream
response) and counts opcode events with ``sys.settrace``.  What it leaves out
is the reactor, the sockets and TLS (~250 bytecodes a plain request under wrk).

Run from the repository root: ``.venv/bin/python bench/bytecodes.py [--requests 500]``
(add ``--access-log`` to count the access log's share too).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from edgeproxy.config import Cluster, Route, VirtualHost
from tests.memproxy import make_config, proxy_factory

REQUEST = b"GET /x HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sat, 05 Dec 2026 20:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 1000\r\nConnection: keep-alive\r\n\r\n"
    + b"x"
    * 1000
)


class _Rig:
    def __init__(self, access_log: bool) -> None:
        self.reactor = MemoryReactorClock()
        web = Cluster("web", endpoints=["10.0.0.1:80"])
        config = make_config(VirtualHost(["shop.example"], routes=[Route("/", web)]))
        self.factory, _ = proxy_factory(self.reactor, config, tls=True)
        if not access_log:
            self.factory.access_log.log_request = lambda *a, **k: None  # type: ignore[method-assign]
        peer = IPv4Address("TCP", "192.0.2.9", 5555)
        self.channel = self.factory.buildProtocol(peer)
        self.client = StringTransport(peerAddress=peer)
        self.channel.makeConnection(self.client)
        self.upstream: tuple[Any, StringTransport] | None = None

    def request(self) -> None:
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
        protocol.dataReceived(RESPONSE)
        self.reactor.advance(0)
        if not self.client.value().endswith(b"x" * 1000):
            raise SystemExit("bytecodes.py: the proxied response did not arrive whole")


def count(requests: int, access_log: bool) -> float:
    rig = _Rig(access_log)
    for _ in range(20):  # warm: pool connection, caches
        rig.request()
    opcodes = 0

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        nonlocal opcodes
        frame.f_trace_opcodes = True
        if event == "opcode":
            opcodes += 1
        return tracer

    sys.settrace(tracer)
    try:
        for _ in range(requests):
            rig.request()
    finally:
        sys.settrace(None)
    return opcodes / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--access-log", action="store_true", help="count the access log too")
    args = parser.parse_args()
    per_request = count(args.requests, args.access_log)
    print(f"{per_request:.0f} bytecodes per request ({args.requests} requests)")


if __name__ == "__main__":
    main()
