"""
Streamed request bodies (``Route(..., request_buffering=False)``), in memory:
the body reaches the upstream as it arrives, framed as the client framed it
(``Content-Length`` or chunked), with backpressure both ways (a full
upstream socket stops the proxy reading the client), the body limit and the
client's body deadline enforced mid-stream, no retry once a byte went
upstream, a client that goes away aborting the upstream exchange, and no
cyclic garbage left on any of those paths.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from edgeproxy.config import Cache, Cluster, Route, VirtualHost
from edgeproxy.config.settings import Settings
from tests.memproxy import make_config, proxy_factory
from tests.proxy.test_no_cycles import ROOT, SocketLike, garbage_of

HOST = b"Host: up.example\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def head(method: bytes = b"POST", *lines: bytes) -> bytes:
    return method + b" /up HTTP/1.1\r\n" + HOST + b"".join(line + b"\r\n" for line in lines) + b"\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Rig:
    """A proxy with one streamed route (and a buffered one at /buffered/)."""

    def __init__(
        self,
        *,
        endpoints: tuple[str, ...] = ("10.0.0.1:80",),
        settings: Settings | None = None,
        max_body_size: int | None = None,
        cache: bool = False,
    ) -> None:
        self.reactor = MemoryReactorClock()
        web = Cluster("web", endpoints=list(endpoints), outlier_detection=None)
        extra: dict[str, Any] = {}
        if cache:
            extra["cache"] = Cache()
        routes = [
            Route(
                "/",
                web,
                request_buffering=False,
                max_body_size=max_body_size,
                **extra,
            ),
            Route("/buffered/", web),
        ]
        config = make_config(VirtualHost(["up.example"], routes=routes))
        self.factory, _ = proxy_factory(self.reactor, config, tls=True, settings=settings)
        self._started = 0

    def client(self, data: bytes = b"") -> SocketLike:
        address = IPv4Address("TCP", "192.0.2.9", 5555)
        channel: Any = self.factory.buildProtocol(address)
        transport = SocketLike(self.reactor, channel, peerAddress=address)
        channel.makeConnection(transport)
        if data:
            channel.dataReceived(data)
        return transport

    def attempts(self) -> int:
        return len(self.reactor.tcpClients) - self._started

    def accept(self) -> SocketLike:
        host, port, factory, _, _ = self.reactor.tcpClients[self._started]
        self._started += 1
        protocol: Any = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = SocketLike(self.reactor, protocol)
        protocol.makeConnection(transport)
        return transport

    def refuse(self) -> None:
        factory = self.reactor.tcpClients[self._started][2]
        self._started += 1
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))

    def turn(self, seconds: float = 0) -> None:
        self.reactor.advance(seconds)
        self.reactor.advance(0)


def send(client: SocketLike, data: bytes) -> None:
    client.protocol.dataReceived(data)


def answer(upstream: SocketLike, data: bytes) -> None:
    upstream.protocol.dataReceived(data)


# -- forwarded as it arrives ----------------------------------------------------------


def test_a_content_length_body_reaches_the_upstream_before_it_is_complete() -> None:
    rig = Rig()
    client = rig.client(head(b"POST", b"Content-Length: 1000000") + b"a" * 1000)
    upstream = rig.accept()
    sent = upstream.value()
    assert sent.startswith(b"POST /up HTTP/1.1\r\n")
    assert b"\r\nContent-Length: 1000000\r\n" in sent
    assert b"transfer-encoding" not in sent.lower()
    assert sent.endswith(b"\r\n\r\n" + b"a" * 1000)
    send(client, b"b" * 5000)
    assert upstream.value().endswith(b"a" * 1000 + b"b" * 5000)
    send(client, b"c" * (1_000_000 - 6000))
    answer(upstream, OK)
    rig.turn()
    assert client.value().startswith(b"HTTP/1.1 200 OK")
    assert client.value().endswith(b"ok")
    assert len(upstream.value().partition(b"\r\n\r\n")[2]) == 1_000_000
    # Whole on both sides: the upstream connection goes back to the pool and
    # the client's is kept.
    assert not upstream.disconnecting and not client.disconnecting
    send(client, head(b"POST", b"Content-Length: 3") + b"xyz")
    assert rig.attempts() == 0  # the pooled connection took it
    assert upstream.value().endswith(b"\r\n\r\nxyz")


def test_a_chunked_body_is_forwarded_chunked_as_it_arrives() -> None:
    rig = Rig()
    client = rig.client(head(b"PUT", b"Transfer-Encoding: chunked") + chunk(b"first"))
    upstream = rig.accept()
    sent = upstream.value()
    assert b"\r\nTransfer-Encoding: chunked\r\n" in sent
    assert b"content-length" not in sent.lower()
    assert sent.endswith(b"\r\n\r\n5\r\nfirst\r\n")
    send(client, chunk(b"second piece"))
    assert upstream.value().endswith(b"5\r\nfirst\r\nc\r\nsecond piece\r\n")
    send(client, b"0\r\n\r\n")
    assert upstream.value().endswith(b"c\r\nsecond piece\r\n0\r\n\r\n")
    answer(upstream, OK)
    rig.turn()
    assert client.value().startswith(b"HTTP/1.1 200 OK")
    assert not client.disconnecting


def test_the_buffered_route_still_spools_the_whole_body_first() -> None:
    rig = Rig()
    client = rig.client(
        b"POST /buffered/x HTTP/1.1\r\n" + HOST + b"Content-Length: 10\r\n\r\n12345"
    )
    assert rig.attempts() == 0
    send(client, b"67890")
    upstream = rig.accept()
    assert upstream.value().endswith(b"\r\nContent-Length: 10\r\n\r\n1234567890")


def test_a_get_on_a_cached_streamed_route_is_spooled_for_its_fill() -> None:
    rig = Rig(cache=True)
    client = rig.client(head(b"GET", b"Content-Length: 4") + b"ab")
    assert rig.attempts() == 0  # spooled: nothing sent before the body is whole
    send(client, b"cd")
    upstream = rig.accept()
    assert upstream.value().endswith(b"\r\n\r\nabcd")


# -- backpressure ---------------------------------------------------------------------


def test_a_full_upstream_socket_stops_reading_the_client_until_it_drains() -> None:
    rig = Rig()
    client = rig.client(head(b"POST", b"Transfer-Encoding: chunked") + chunk(b"x" * 100))
    upstream = rig.accept()
    assert client.producerState == "producing"
    upstream.producer.pauseProducing()  # the upstream socket buffer is full
    assert client.producerState == "paused"
    # What was already read on its way is held, not written to the full socket.
    before = upstream.value()
    send(client, chunk(b"y" * 100))
    assert upstream.value() == before
    upstream.producer.resumeProducing()
    assert client.producerState == "producing"
    assert upstream.value().endswith(chunk(b"y" * 100))


def test_the_body_waits_in_a_bounded_window_until_a_connection_takes_it() -> None:
    window = Settings().http_limits.request_stream_window
    rig = Rig()
    client = rig.client(head(b"POST", b"Content-Length: %d" % (4 * window)))
    send(client, b"a" * (window // 2))
    assert client.producerState == "producing"
    send(client, b"b" * window)
    assert client.producerState == "paused"  # past the window: not read
    upstream = rig.accept()
    assert client.producerState == "producing"
    assert upstream.value().endswith(b"a" * (window // 2) + b"b" * window)


def test_expect_100_continue_is_answered_when_a_connection_takes_the_body() -> None:
    rig = Rig(settings=Settings(body_timeout=1.0, body_min_rate=0))
    client = rig.client(head(b"POST", b"Content-Length: 5", b"Expect: 100-continue"))
    assert client.value() == b""
    assert client.producerState == "paused"  # nothing is wanted yet
    rig.turn(2)  # past the body deadline: waiting for our 100 is not the client's time
    assert client.value() == b""
    upstream = rig.accept()
    assert client.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert client.producerState == "producing"
    send(client, b"hello")
    assert upstream.value().endswith(b"\r\n\r\nhello")
    assert b"expect" not in upstream.value().lower()
    answer(upstream, b"HTTP/1.1 100 Continue\r\n\r\n" + OK)  # not repeated
    rig.turn()
    assert client.value() == b"HTTP/1.1 100 Continue\r\n\r\n" + client.value()[25:]
    assert client.value().count(b"100 Continue") == 1


# -- limits and deadlines -------------------------------------------------------------


def test_past_the_limit_mid_stream_the_upstream_exchange_is_given_up_and_413_sent() -> None:
    rig = Rig(max_body_size=1000)
    client = rig.client(head(b"POST", b"Transfer-Encoding: chunked") + chunk(b"a" * 600))
    upstream = rig.accept()
    assert upstream.value().endswith(chunk(b"a" * 600))
    send(client, chunk(b"b" * 600))
    assert upstream.disconnecting  # aborted: never reused with half a request
    assert not upstream.value().endswith(chunk(b"b" * 600))
    assert client.value().startswith(b"HTTP/1.1 413 ")
    assert b"Connection: close" in client.value()
    rig.turn()
    assert upstream.closed


def test_past_the_limit_after_the_response_started_the_client_is_cut_off() -> None:
    rig = Rig(max_body_size=1000)
    client = rig.client(head(b"POST", b"Transfer-Encoding: chunked") + chunk(b"a" * 600))
    upstream = rig.accept()
    answer(upstream, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nsome")
    rig.turn()
    assert client.value().startswith(b"HTTP/1.1 200 OK")
    send(client, chunk(b"b" * 600))
    assert client.disconnecting
    rig.turn()
    assert upstream.closed
    assert client.closed


def test_a_content_length_over_the_limit_is_413_at_head_time_with_nothing_sent() -> None:
    rig = Rig(max_body_size=1000)
    client = rig.client(head(b"POST", b"Content-Length: 5000"))
    assert client.value().startswith(b"HTTP/1.1 413 ")
    assert rig.attempts() == 0


SHORT = Settings(body_timeout=10.0, body_min_rate=0, header_timeout=10.0)


def test_the_body_deadline_does_not_run_while_a_slow_upstream_pauses_the_client() -> None:
    rig = Rig(settings=SHORT)
    client = rig.client(head(b"POST", b"Content-Length: 100") + b"a" * 10)
    upstream = rig.accept()
    upstream.producer.pauseProducing()
    rig.turn(8)
    rig.turn(15)  # past the body deadline, all of it paused by the upstream
    # (within the cluster's response_timeout, 30 s, which then runs instead)
    assert client.value() == b""
    assert not client.disconnecting
    upstream.producer.resumeProducing()
    rig.turn(8)  # 8 s of the client's own: still within its 10
    assert not client.disconnecting
    send(client, b"b" * 90)
    answer(upstream, OK)
    rig.turn()
    assert client.value().startswith(b"HTTP/1.1 200 OK")


def test_a_client_that_stalls_on_its_own_is_timed_out_and_the_upstream_aborted() -> None:
    rig = Rig(settings=SHORT)
    client = rig.client(head(b"POST", b"Content-Length: 100") + b"a" * 10)
    upstream = rig.accept()
    rig.turn(11)
    rig.turn(11)
    assert client.value().startswith(b"HTTP/1.1 408 ")
    assert upstream.disconnecting
    rig.turn()
    assert client.closed and upstream.closed


def test_the_upstream_response_deadline_runs_while_the_upstream_takes_nothing() -> None:
    rig = Rig(settings=Settings(body_timeout=1000.0, body_min_rate=0))
    client = rig.client(head(b"POST", b"Content-Length: 100") + b"a" * 10)
    upstream = rig.accept()
    rig.turn(60)  # flowing, the client slow but in time: no upstream timeout
    assert client.value() == b""
    upstream.producer.pauseProducing()
    for _ in range(10):
        rig.turn(10)  # the upstream takes nothing for longer than its response timeout
    assert client.value().startswith(b"HTTP/1.1 504 ")
    assert upstream.closed


# -- retries --------------------------------------------------------------------------


def test_no_retry_once_the_body_started_streaming() -> None:
    rig = Rig(endpoints=("10.0.0.1:80", "10.0.0.2:80"))
    client = rig.client(head(b"PUT", b"Content-Length: 100") + b"a" * 10)
    upstream = rig.accept()
    assert upstream.value().endswith(b"a" * 10)
    upstream.lost(ConnectionLost())  # a buffered PUT would be retried
    rig.turn()
    assert rig.attempts() == 0
    assert client.value().startswith(b"HTTP/1.1 502 ")


def test_a_stream_that_has_not_started_is_retried_elsewhere() -> None:
    rig = Rig(endpoints=("10.0.0.1:80", "10.0.0.2:80"))
    client = rig.client(head(b"POST", b"Content-Length: 10") + b"a" * 4)
    rig.refuse()  # never connected: nothing of the body went anywhere
    rig.turn()
    upstream = rig.accept()
    send(client, b"b" * 6)
    assert upstream.value().endswith(b"\r\n\r\naaaabbbbbb")
    answer(upstream, OK)
    rig.turn()
    assert client.value().startswith(b"HTTP/1.1 200 OK")


# -- early answers and going away -----------------------------------------------------


def test_an_answer_before_the_body_ends_closes_both_connections() -> None:
    rig = Rig()
    client = rig.client(head(b"POST", b"Content-Length: 1000") + b"a" * 10)
    upstream = rig.accept()
    answer(upstream, b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
    rig.turn()
    assert client.value().startswith(b"HTTP/1.1 403 Forbidden")
    assert b"Connection: close" in client.value()
    assert upstream.closed  # half a request on it: not pooled
    send(client, b"b" * 990)  # the rest is read and dropped (lingering close)
    rig.turn(60)
    assert client.closed


def test_a_client_gone_mid_upload_aborts_the_upstream_exchange() -> None:
    rig = Rig()
    client = rig.client(head(b"POST", b"Content-Length: 1000") + b"a" * 10)
    upstream = rig.accept()
    client.lost(ConnectionLost())
    rig.turn()
    assert upstream.closed
    assert rig.factory.pipeline.plan.snapshot is not None
    assert rig.factory.pipeline.forwarder.upstream.idle_connections("10.0.0.1:80") == 0


def test_a_pipelined_request_is_parsed_only_once_the_streamed_body_is_whole() -> None:
    rig = Rig()
    client = rig.client(head(b"POST", b"Content-Length: 6") + b"abc")
    upstream = rig.accept()
    assert upstream.value().endswith(b"abc")
    send(client, b"def" + head(b"GET"))
    # The GET is parsed (and queued) once the body is whole; sent in its turn.
    assert b"GET /up" not in upstream.value()
    answer(upstream, OK)
    rig.turn()
    assert upstream.value().partition(b"abcdef")[2].startswith(b"GET /up HTTP/1.1\r\n")
    answer(upstream, OK)
    rig.turn()
    assert client.value().count(b"HTTP/1.1 200 OK") == 2


# -- no cyclic garbage ------------------------------------------------------------------


def streamed_whole(rig: Rig) -> None:
    client = rig.client(head(b"POST", b"Transfer-Encoding: chunked") + chunk(b"a" * 100))
    upstream = rig.accept()
    send(client, chunk(b"b" * 100) + b"0\r\n\r\n")
    answer(upstream, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    rig.turn()
    assert client.value().startswith(b"HTTP/1.1 200")
    client.loseConnection()
    rig.turn()


def streamed_paused_then_client_gone(rig: Rig) -> None:
    client = rig.client(head(b"POST", b"Content-Length: 1000") + b"a" * 10)
    upstream = rig.accept()
    upstream.producer.pauseProducing()
    client.lost(ConnectionLost())
    rig.turn()
    assert upstream.closed


def streamed_held_then_client_gone(rig: Rig) -> None:
    client = rig.client(head(b"POST", b"Content-Length: 1000") + b"a" * 10)
    client.lost(ConnectionLost())
    rig.turn()
    rig.accept()
    rig.turn()


def streamed_too_large(rig: Rig) -> None:
    client = rig.client(head(b"POST", b"Transfer-Encoding: chunked") + chunk(b"a" * 600))
    upstream = rig.accept()
    send(client, chunk(b"b" * 600))
    rig.turn()
    assert client.value().startswith(b"HTTP/1.1 413")
    assert upstream.closed
    rig.turn(60)


def streamed_timed_out(rig: Rig) -> None:
    client = rig.client(head(b"POST", b"Content-Length: 100") + b"a" * 10)
    upstream = rig.accept()
    rig.turn(11)
    rig.turn(11)
    assert client.value().startswith(b"HTTP/1.1 408")
    rig.turn()
    assert upstream.closed


def streamed_answered_early(rig: Rig) -> None:
    client = rig.client(head(b"POST", b"Content-Length: 1000") + b"a" * 10)
    upstream = rig.accept()
    answer(upstream, b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
    rig.turn()
    send(client, b"b" * 990)
    rig.turn(60)
    assert client.closed


SCENARIOS: dict[str, Callable[[Rig], None]] = {
    "whole": streamed_whole,
    "paused, then the client goes": streamed_paused_then_client_gone,
    "held, then the client goes": streamed_held_then_client_gone,
    "413 mid-stream": streamed_too_large,
    "client body deadline": streamed_timed_out,
    "answered before the body ends": streamed_answered_early,
}


def scenarios() -> dict[str, list[str]]:
    results = {}
    for name, step in SCENARIOS.items():
        rig = Rig(max_body_size=1000, settings=SHORT)
        try:
            results[name] = garbage_of(partial(step, rig), warm=3, runs=10)
        except AssertionError as e:
            results[name] = [f"the scenario failed: {e!r}"]
    return results


_results: dict[str, list[str]] = {}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_a_streamed_exchange_leaves_no_cyclic_garbage(name: str) -> None:
    if not _results:
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                "import json; from tests.proxy.test_streamed_bodies import scenarios; "
                "print(json.dumps(scenarios()))",
            ],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=ROOT,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        _results.update(json.loads(out.stdout.strip().splitlines()[-1]))
    assert _results[name] == []
