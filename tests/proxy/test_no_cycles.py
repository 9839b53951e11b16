"""
A proxied request leaves no reference cycles behind: everything it allocated is
freed by reference counting.  Cyclic garbage made the collector run every few
hundred requests and stop the process for milliseconds each time (p99), so this
guards the hot paths: a small response whole in one read, a streamed body, and
an edgeproxy error answer.

It guards the abort and error paths too.  A connection that lives long (a slow
reader) outlives the young generations, so whatever cycle it ends in waits
for a full collection, which ``heap.settle`` makes rare: aborted slow readers
once kept ~115 KB each (buffers included) until then, and an attack of them
grew the process by hundreds of MB.  Here in memory (``MemoryReactorClock``,
transports that close the way the reactor closes a socket): the client closing
or resetting mid-body, before the head, while connecting, while waiting for a
slot, behind a pipelined request; the keep-alive timeout; a rejected request;
the upstream refusing, resetting, timing out, truncating the body, going idle,
answering garbage.  ``tests/socketcycles.py`` runs the same kinds of aborts over
real sockets (TCP and TLS) on the real reactor.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from collections.abc import Callable
from functools import cache, partial
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import (
    ConnectionAborted,
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
    TimeoutError,
)
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger
from twisted.python.failure import Failure

from edgeproxy.config import Cluster, Limits, Route, VirtualHost
from tests.memproxy import TCPLikeTransport, make_config, proxy_factory
from tests.socketcycles import NAMED, SCENARIOS

ROOT = Path(__file__).resolve().parents[2]
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


#: twisted.logger's buffer of events before logging begins (_DEFAULT_BUFFER_SIZE).
_LOG_BUFFER = 200
_flush_log = Logger(namespace="tests.no_cycles")


def garbage_of(step: Callable[[], None], warm: int = 5, runs: int = 20) -> list[str]:
    """The types of the cyclic garbage ``runs`` runs of ``step`` leave."""
    for _ in range(warm):  # warm: pools, caches
        step()
    # Until logging begins, Twisted keeps the last 200 log events (and what
    # they refer to): push earlier tests' events out now, so that what they
    # held is not freed, and counted, inside the window below.
    for _ in range(_LOG_BUFFER):
        _flush_log.debug("flushing the log buffer before counting garbage")
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(runs):
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

    if name == "tunnel":
        return garbage_of(TunnelRig().step)

    def not_found() -> None:
        rig.client.clear()
        rig.channel.dataReceived(b"GET /x HTTP/1.1\r\nHost: other.example\r\n\r\n")
        assert rig.client.value().startswith(b"HTTP/1.1 404")

    return garbage_of(not_found)


class TunnelRig:
    """One proxy, on which each :meth:`step` is a WebSocket: the 101, bytes
    both ways, the client closes, then the upstream."""

    def __init__(self) -> None:
        self.reactor = MemoryReactorClock()
        web = Cluster("web", endpoints=["10.0.0.1:80"])
        config = make_config(VirtualHost(["shop.example"], routes=[Route("/", web)]))
        self.factory, _ = proxy_factory(self.reactor, config, tls=True)

    def step(self) -> None:
        reactor = self.reactor
        client_address = IPv4Address("TCP", "192.0.2.9", 5555)
        channel = self.factory.buildProtocol(client_address)
        client = TCPLikeTransport(peerAddress=client_address)
        channel.makeConnection(client)
        channel.dataReceived(
            b"GET /chat HTTP/1.1\r\nHost: shop.example\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\n\r\nearly"
        )
        host, port, upstream_factory, _, _ = reactor.tcpClients.pop()
        upstream: Any = upstream_factory.buildProtocol(IPv4Address("TCP", host, port))
        upstream_transport = TCPLikeTransport()
        upstream.makeConnection(upstream_transport)
        upstream.dataReceived(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\n\r\nhello"
        )
        channel.dataReceived(b"ping")
        upstream.dataReceived(b"pong")
        assert client.value().endswith(b"hellopong")
        assert upstream_transport.value().endswith(b"earlyping")
        channel.connectionLost(Failure(ConnectionDone()))
        assert upstream_transport.disconnecting
        upstream.connectionLost(Failure(ConnectionDone()))
        reactor.advance(0)


def garbage_in_fresh_interpreter(module: str, function: str, name: str) -> list[str]:
    """``module.function(name)``'s garbage types, run in a fresh interpreter:
    in the test process, other tests' objects can turn into garbage meanwhile."""
    code = f"import json; from {module} import {function}; print(json.dumps({function}({name!r})))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=True,
    ).stdout
    found: list[str] = json.loads(out.strip().splitlines()[-1])
    return found


@pytest.mark.parametrize("name", ["whole", "streamed", "interim", "error", "tunnel"])
def test_a_request_leaves_no_cyclic_garbage(name: str) -> None:
    assert garbage_in_fresh_interpreter("tests.proxy.test_no_cycles", "scenario", name) == []


# -- abort and error paths, in memory ----------------------------------------------


GET = b"GET /x HTTP/1.1\r\nHost: shop.example\r\n\r\n"
#: The head of a body far larger than what the scenarios send of it.
BIG_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n"
SMALL_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
#: One connection per endpoint, so a second request waits for a slot.
ONE_SLOT = Limits(10, max_connections_per_endpoint=1)


class SocketLike(TCPLikeTransport):
    """A :class:`TCPLikeTransport` also closed the way the reactor closes a
    TCP socket (``tcp.Connection``, ``abstract.FileDescriptor``):
    ``connectionLost`` comes on a later turn, after the registered producer
    was stopped and let go of.  :meth:`lost` is the peer closing first."""

    def __init__(self, clock: MemoryReactorClock, protocol: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._clock = clock
        self.protocol = protocol
        self.closed = False

    def loseConnection(self) -> None:
        self._close(ConnectionDone())

    def abortConnection(self) -> None:
        self._close(ConnectionAborted())

    def _close(self, why: Exception) -> None:
        if not self.disconnecting:
            self.disconnecting = True
            self._clock.callLater(0, self.lost, why)

    def lost(self, why: Exception) -> None:
        if self.closed:
            return
        self.closed = self.disconnecting = True
        producer, self.producer = self.producer, None
        if producer is not None:
            producer.stopProducing()
        protocol, self.protocol = self.protocol, None
        protocol.connectionLost(Failure(why))


class AbortRig:
    """A fresh client connection per run, and fresh upstream connections."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.reactor = MemoryReactorClock()
        extra: dict[str, Any] = {"limits": limits} if limits is not None else {}
        # No outlier detection: every run must take its failing path to the
        # endpoint (ejection, on by default, would answer 503 without trying).
        web = Cluster("web", endpoints=["10.0.0.1:80"], outlier_detection=None, **extra)
        config = make_config(VirtualHost(["shop.example"], routes=[Route("/", web)]))
        self.factory, _ = proxy_factory(self.reactor, config, tls=True)
        self.cluster = web
        self._started = 0

    def client(self, data: bytes = GET) -> SocketLike:
        address = IPv4Address("TCP", "192.0.2.9", 5555)
        channel: Any = self.factory.buildProtocol(address)
        transport = SocketLike(self.reactor, channel, peerAddress=address)
        channel.makeConnection(transport)
        if data:
            channel.dataReceived(data)
        return transport

    def _next_attempt(self) -> tuple[str, int, Any]:
        host, port, factory, _, _ = self.reactor.tcpClients[self._started]
        self._started += 1
        return host, port, factory

    def accept(self) -> SocketLike:
        """The next upstream connection the proxy started gets through."""
        host, port, factory = self._next_attempt()
        protocol: Any = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = SocketLike(self.reactor, protocol)
        protocol.makeConnection(transport)
        return transport

    def refuse(self, why: Exception) -> None:
        factory = self._next_attempt()[2]
        factory.clientConnectionFailed(None, Failure(why))

    def skip(self) -> None:
        """The next attempt was abandoned by the proxy: it never completes."""
        self._next_attempt()

    def turn(self, seconds: float = 0) -> None:
        self.reactor.advance(seconds)
        self.reactor.advance(0)


def _status(transport: SocketLike) -> bytes:
    return transport.value()[:12]


def client_mid_body(rig: AbortRig, why: Exception) -> None:
    client = rig.client()
    upstream = rig.accept()
    upstream.protocol.dataReceived(BIG_HEAD + b"x" * 5000)
    rig.turn()
    assert _status(client) == b"HTTP/1.1 200"
    client.lost(why)
    rig.turn()
    assert upstream.closed


def client_paused_mid_body(rig: AbortRig) -> None:
    client = rig.client()
    upstream = rig.accept()
    client.producer.pauseProducing()  # a slow reader: the proxy stops reading upstream
    upstream.protocol.dataReceived(BIG_HEAD + b"x" * 5000)
    rig.turn()
    assert upstream.producerState == "paused"
    client.lost(ConnectionLost())
    rig.turn()
    assert upstream.closed


def client_before_head(rig: AbortRig) -> None:
    client = rig.client()
    upstream = rig.accept()
    client.lost(ConnectionLost())
    rig.turn()
    assert upstream.closed


def client_while_connecting(rig: AbortRig) -> None:
    client = rig.client()
    client.lost(ConnectionDone())
    rig.turn()
    rig.skip()


def client_behind_pipelined(rig: AbortRig) -> None:
    client = rig.client(GET + GET + GET)
    upstream = rig.accept()
    upstream.protocol.dataReceived(BIG_HEAD + b"x" * 100)
    client.lost(ConnectionLost())
    rig.turn()
    assert upstream.closed


def client_waiting_for_slot(rig: AbortRig) -> None:
    first = rig.client()
    upstream = rig.accept()
    second = rig.client()
    second.lost(ConnectionLost())
    rig.turn()
    upstream.protocol.dataReceived(SMALL_CLOSE)
    rig.turn()
    assert first.value().endswith(b"ok")
    first.lost(ConnectionDone())
    rig.turn()


def slot_wait_times_out(rig: AbortRig) -> None:
    first = rig.client()
    upstream = rig.accept()
    second = rig.client()
    rig.turn(rig.cluster.connect_timeout + 1)
    assert _status(second) == b"HTTP/1.1 503"
    upstream.protocol.dataReceived(SMALL_CLOSE)
    rig.turn()
    first.lost(ConnectionDone())
    second.lost(ConnectionDone())
    rig.turn()


def keepalive_timeout(rig: AbortRig, data: bytes) -> None:
    client = rig.client(data)
    rig.turn(rig.factory.timeout + 1)
    assert client.closed


def idle_after_response(rig: AbortRig) -> None:
    client = rig.client()
    rig.accept().protocol.dataReceived(SMALL_CLOSE)
    rig.turn()
    rig.turn(rig.factory.timeout + 1)
    assert client.closed


def bad_request(rig: AbortRig) -> None:
    client = rig.client(b"GET /x HTTP/1.1\r\nHost: shop.example\r\nBad Header\r\n\r\n")
    rig.turn()
    assert _status(client) == b"HTTP/1.1 400"
    assert client.closed


def refused_at_head(rig: AbortRig, data: bytes, status: bytes) -> None:
    # Refused as soon as its head is in (a 400 for two Hosts): the parser is
    # stopped from inside a callback, and the exception must not keep its frames.
    client = rig.client(data)
    rig.turn()
    assert _status(client) == status
    assert client.closed


def body_too_large_then_reset(rig: AbortRig) -> None:
    # 413 before the body is read; the client goes while its body is being dropped.
    client = rig.client(
        b"POST /x HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 999999999999\r\n\r\nabc"
    )
    rig.turn()
    assert _status(client) == b"HTTP/1.1 413"
    client.lost(ConnectionLost())
    rig.turn()


def upstream_refuses(rig: AbortRig, why: Exception, status: bytes) -> None:
    client = rig.client()
    rig.refuse(why)
    rig.turn()
    assert _status(client) == status


def upstream_resets_before_head(rig: AbortRig) -> None:
    body = b"y" * 200_000  # spooled to a file, streamed as the socket drains
    client = rig.client(
        b"POST /x HTTP/1.1\r\nHost: shop.example\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    rig.accept().lost(ConnectionLost())
    rig.turn()
    assert _status(client) == b"HTTP/1.1 502"


def upstream_response_timeout(rig: AbortRig) -> None:
    client = rig.client()
    upstream = rig.accept()
    rig.turn(rig.cluster.response_timeout + 1)
    assert _status(client) == b"HTTP/1.1 504"
    assert upstream.closed


def upstream_truncates(rig: AbortRig) -> None:
    client = rig.client()
    upstream = rig.accept()
    upstream.protocol.dataReceived(BIG_HEAD + b"x" * 5000)
    upstream.lost(ConnectionLost())
    rig.turn()
    assert client.closed


def upstream_idle(rig: AbortRig) -> None:
    client = rig.client()
    upstream = rig.accept()
    upstream.protocol.dataReceived(BIG_HEAD + b"x" * 5000)
    rig.turn(rig.cluster.idle_timeout + 1)
    assert client.closed and upstream.closed


def upstream_answers_garbage(rig: AbortRig) -> None:
    client = rig.client()
    upstream = rig.accept()
    upstream.protocol.dataReceived(b"NOT HTTP\r\n\r\n")
    rig.turn()
    assert _status(client) == b"HTTP/1.1 502"
    assert upstream.closed


ABORTS: dict[str, tuple[Callable[[AbortRig], None], Limits | None]] = {
    "client closes mid-body": (lambda r: client_mid_body(r, ConnectionDone()), None),
    "client resets mid-body": (lambda r: client_mid_body(r, ConnectionLost()), None),
    "slow client resets mid-body": (client_paused_mid_body, None),
    "client resets before the head": (client_before_head, None),
    "client closes while connecting": (client_while_connecting, None),
    "client resets behind a pipelined request": (client_behind_pipelined, None),
    "client resets waiting for a slot": (client_waiting_for_slot, ONE_SLOT),
    "slot wait times out": (slot_wait_times_out, ONE_SLOT),
    "keep-alive timeout, idle": (lambda r: keepalive_timeout(r, b""), None),
    "keep-alive timeout, head half sent": (
        lambda r: keepalive_timeout(r, b"GET /x HTTP/1.1\r\nHo"),
        None,
    ),
    "keep-alive timeout after a response": (idle_after_response, None),
    "bad request": (bad_request, None),
    "two hosts, refused at head time": (
        lambda r: refused_at_head(
            r, b"GET /x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n", b"HTTP/1.1 400"
        ),
        None,
    ),
    "body too large, then reset": (body_too_large_then_reset, None),
    "upstream refuses": (
        lambda r: upstream_refuses(r, ConnectionRefusedError(), b"HTTP/1.1 502"),
        None,
    ),
    "upstream connect timeout": (
        lambda r: upstream_refuses(r, TimeoutError(), b"HTTP/1.1 504"),
        None,
    ),
    "upstream resets before the head": (upstream_resets_before_head, None),
    "upstream response timeout": (upstream_response_timeout, None),
    "upstream truncates the body": (upstream_truncates, None),
    "upstream idle mid-body": (upstream_idle, None),
    "upstream answers garbage": (upstream_answers_garbage, None),
}


def abort_scenarios() -> dict[str, list[str]]:
    """Each abort scenario's cyclic garbage (run in a fresh interpreter)."""
    results = {}
    for name, (step, limits) in ABORTS.items():
        rig = AbortRig(limits)
        try:
            results[name] = garbage_of(partial(step, rig), warm=3, runs=10)
        except AssertionError as e:
            results[name] = [f"the scenario failed: {e!r}"]
    return results


@cache
def _in_fresh_interpreter(code: str) -> dict[str, list[str]]:
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    results: dict[str, list[str]] = json.loads(out.stdout.strip().splitlines()[-1])
    return results


@pytest.mark.parametrize("name", list(ABORTS))
def test_an_aborted_or_failed_exchange_leaves_no_cyclic_garbage(name: str) -> None:
    results = _in_fresh_interpreter(
        "import json; from tests.proxy.test_no_cycles import abort_scenarios; "
        "print(json.dumps(abort_scenarios()))"
    )
    assert results[name] == []


# -- the same over real sockets --------------------------------------------------------

#: Over a named endpoint (``localhost:PORT``) a new upstream connection goes
#: through Twisted's ``HostnameEndpoint``, which leaves cycles of its own
#: (its wrapping factory and the connector, the resolver's thread-pool
#: closure, a class made per connection attempt): some 50 small objects per
#: connection.  What these tests hold it to: none of the exchange's objects
#: hang off them.
_EXCHANGE_TYPES = {
    "ProxyChannel",
    "H1Exchange",
    "ExchangeRecord",
    "ResponseRelay",
    "_UpstreamProducer",
    "_BodyTransport",
    "_Exchange",
    "H1Response",
    "TLSServerProtocol",
    "Server",
    "Failure",
    "ResponseFailed",
}


def _socket_results() -> dict[str, list[str]]:
    return _in_fresh_interpreter(
        "import json; from tests.socketcycles import main; print(json.dumps(main([])))"
    )


@pytest.mark.parametrize("name", [name for name in SCENARIOS if name not in NAMED])
def test_an_aborted_or_failed_exchange_over_sockets_leaves_no_cyclic_garbage(name: str) -> None:
    assert _socket_results()[name] == []


@pytest.mark.parametrize("name", sorted(NAMED))
def test_over_a_named_endpoint_no_object_of_the_exchange_is_left_in_cycles(name: str) -> None:
    assert not set(_socket_results()[name]) & _EXCHANGE_TYPES
