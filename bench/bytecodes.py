"""
The deterministic yardstick: Python bytecodes executed per proxied request.

wrk figures on a shared VM move by tens of percent between minutes; the number
of bytecodes the interpreter runs for one request does not.  This drives N
keep-alive GETs through the real downstream channel, forwarder and pooled
upstream client in one process (``tests.memproxy``: a ``MemoryReactorClock``
for the network, ``StringTransport`` both ways, a canned 1 000-byte upstream
response) and counts opcode events with ``sys.settrace``.  What it leaves out
is the reactor, the sockets and TLS (~250 bytecodes a plain request under wrk).

With ``--tls`` the channel sits on edgeproxy's TLS layer (a self-signed
certificate, a Python ``ssl`` client over memory BIOs, TLS 1.3), so the count
includes the TLS layer's Python per request; the client's work is left out.

With ``--cached`` the route has ``cache=Cache()`` and the upstream response
``Cache-Control: max-age=3600``: the warm-up's first request fills the cache and
every counted request must be a hit (``Cache-Status: edgeproxy; hit``), so the
count is what a cache hit costs, nothing going upstream.

Run from the repository root: ``.venv/bin/python bench/bytecodes.py [--requests 500]``
(add ``--access-log`` to count the access log's share too, ``--tls`` for https,
``--cached`` for cache hits, ``--by-function`` for each function's share, to see where
a change went).
"""

from __future__ import annotations

import argparse
import datetime
import ssl
import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from edgeproxy.config import Cache, Cluster, Route, VirtualHost
from tests.memproxy import make_config, proxy_factory

REQUEST = b"GET /x HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sat, 05 Dec 2026 20:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 1000\r\nConnection: keep-alive\r\n\r\n"
    + b"x"
    * 1000
)
#: --cached: the same response, fresh for an hour to a shared cache.
CACHED_RESPONSE = RESPONSE.replace(
    b"Connection: keep-alive\r\n", b"Connection: keep-alive\r\nCache-Control: max-age=3600\r\n"
)
HIT = b"Cache-Status: edgeproxy; hit"


class _TCPTransport(StringTransport):
    """What the TLS layer passes on to a TCP transport, besides the bytes."""

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


class _TLSClient:
    """A Python ``ssl`` client joined to the server's TLS layer through memory BIOs."""

    def __init__(self, server: Any, transport: StringTransport) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.ssl = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname="shop.example")
        self.server = server
        self.transport = transport
        for _ in range(20):
            try:
                self.ssl.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.pump()
        self.pump()

    def pump(self) -> None:
        data = self.outgoing.read()
        if data:
            self.server.dataReceived(data)
        self.incoming.write(self.transport.value())
        self.transport.clear()

    def send(self, data: bytes) -> None:
        self.ssl.write(data)
        self.pump()

    def received(self) -> bytes:
        self.pump()
        out = bytearray()
        while True:
            try:
                chunk = self.ssl.read(65536)
            except ssl.SSLWantReadError:
                return bytes(out)
            if not chunk:
                return bytes(out)
            out += chunk


def _tls_creator() -> Any:
    from edgeproxy.tls import server as tlsserver

    # Start-up's job (the direct OpenSSL calls), where this version has it.
    use_direct = getattr(tlsserver, "use_direct_openssl", None)
    if use_direct is not None:
        use_direct()
    from edgeproxy.tls.certificates import CertificateIndex, SNIConnectionCreator, parse_certificate
    from edgeproxy.tls.devcert import make_dev_certificate

    pem = make_dev_certificate(["shop.example"])
    loaded = parse_certificate("/certs/default.pem", pem, is_default=True)
    index = CertificateIndex.build([loaded], datetime.datetime.now(datetime.UTC))
    return SNIConnectionCreator(lambda: index)


class _Rig:
    def __init__(self, access_log: bool, tls: bool = False, cache: Cache | None = None) -> None:
        self.reactor = MemoryReactorClock()
        web = Cluster("web", endpoints=["10.0.0.1:80"])
        route = Route("/", web) if cache is None else Route("/", web, cache=cache)
        config = make_config(VirtualHost(["shop.example"], routes=[route]))
        self.factory, _ = proxy_factory(self.reactor, config, tls=True)
        if not access_log:
            self.factory.access_log.log_request = lambda *a, **k: None  # type: ignore[method-assign]
        peer = IPv4Address("TCP", "192.0.2.9", 5555)
        self.channel = self.factory.buildProtocol(peer)
        self.client = _TCPTransport(peerAddress=peer)
        self.tls: _TLSClient | None = None
        if tls:
            from edgeproxy.tls.server import TLSServerProtocol

            server = TLSServerProtocol(_tls_creator(), self.channel)
            server.makeConnection(self.client)
            self.tls = _TLSClient(server, self.client)
        else:
            self.channel.makeConnection(self.client)
        self.upstream: tuple[Any, StringTransport] | None = None
        #: Answers that were not cache hits (--cached).
        self.misses = 0

    def request(self) -> None:
        self.client.clear()
        if self.tls is not None:
            self.tls.send(REQUEST)
        else:
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
        answer = self.tls.received() if self.tls is not None else self.client.value()
        if not answer.endswith(b"x" * 1000):
            raise SystemExit("bytecodes.py: the proxied response did not arrive whole")


class _CachedRig(_Rig):
    """--cached: the upstream connection answers only what reached it (the
    first request's fill); every other request must be a hit."""

    def __init__(self, access_log: bool, tls: bool = False) -> None:
        super().__init__(access_log, tls, Cache())

    def request(self) -> None:
        self.client.clear()
        if self.tls is not None:
            self.tls.send(REQUEST)
        else:
            self.channel.dataReceived(REQUEST)
        if self.upstream is None:
            host, port, factory, _, _ = self.reactor.tcpClients[0]
            protocol: Any = factory.buildProtocol(IPv4Address("TCP", host, port))
            transport = StringTransport()
            protocol.makeConnection(transport)
            self.upstream = (protocol, transport)
        _deliver_cached(self)
        answer = self.tls.received() if self.tls is not None else self.client.value()
        if not answer.endswith(b"x" * 1000):
            raise SystemExit("bytecodes.py: the response did not arrive whole")
        if HIT not in answer:
            self.misses += 1


def count(
    requests: int,
    access_log: bool,
    tls: bool = False,
    by_function: Counter[str] | None = None,
    cached: bool = False,
) -> float:
    rig = _CachedRig(access_log, tls) if cached else _Rig(access_log, tls)
    deliver = _deliver_cached if cached else _deliver_upstream
    for _ in range(20):  # warm: pool connection, caches (and, with --cached, the fill)
        rig.request()
    rig.misses = 0
    opcodes = 0

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        nonlocal opcodes
        frame.f_trace_opcodes = True
        if event == "opcode":
            opcodes += 1
            if by_function is not None:
                code = frame.f_code
                by_function[f"{Path(code.co_filename).name}:{code.co_qualname}"] += 1
        return tracer

    tls_client = rig.tls

    def traced_request() -> None:
        # The client's side of TLS is not edgeproxy's work: only the server's is counted.
        if tls_client is not None:
            tls_client.ssl.write(REQUEST)
            data = tls_client.outgoing.read()
            rig.client.clear()
            sys.settrace(tracer)
            tls_client.server.dataReceived(data)
            deliver(rig)
            sys.settrace(None)
            answer = tls_client.received()
            if not answer.endswith(b"x" * 1000):
                raise SystemExit("bytecodes.py: the proxied response did not arrive whole")
            if cached and HIT not in answer:
                rig.misses += 1
        else:
            sys.settrace(tracer)
            rig.request()
            sys.settrace(None)

    try:
        for _ in range(requests):
            traced_request()
    finally:
        sys.settrace(None)
    if rig.misses:
        raise SystemExit(f"bytecodes.py: {rig.misses} counted requests were not cache hits")
    return opcodes / requests


def _deliver_upstream(rig: _Rig) -> None:
    assert rig.upstream is not None
    protocol, transport = rig.upstream
    transport.clear()
    protocol.dataReceived(RESPONSE)
    rig.reactor.advance(0)


def _deliver_cached(rig: _Rig) -> None:
    assert rig.upstream is not None
    protocol, transport = rig.upstream
    if not transport.value():
        return  # a hit: nothing went upstream
    transport.clear()
    protocol.dataReceived(CACHED_RESPONSE)
    rig.reactor.advance(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--access-log", action="store_true", help="count the access log too")
    parser.add_argument("--tls", action="store_true", help="through edgeproxy's TLS layer")
    parser.add_argument(
        "--cached", action="store_true", help="a route with cache=Cache(): count cache hits"
    )
    parser.add_argument(
        "--by-function", action="store_true", help="also list each function's share per request"
    )
    args = parser.parse_args()
    functions: Counter[str] | None = Counter() if args.by_function else None
    per_request = count(args.requests, args.access_log, args.tls, functions, args.cached)
    kind = ("https" if args.tls else "http") + (" cache-hit" if args.cached else "")
    if functions is not None:
        for name, n in sorted(functions.items(), key=lambda item: (-item[1], item[0])):
            print(f"{n / args.requests:8.1f}  {name}")
    print(f"{per_request:.0f} bytecodes per {kind} request ({args.requests} requests)")


if __name__ == "__main__":
    main()
