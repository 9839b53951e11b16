"""
Limits, the pending queue, retries, outlier ejection and stickiness, driven
through ProxyFactory, Forwarder and UpstreamClient in memory: a
``MemoryReactorClock`` stands in for the network and ``StringTransport`` for
every socket (the pattern of ``test_proxy_unit.py``).

Upstream answers carry ``Connection: close`` unless a test says otherwise,
so every request to an endpoint opens a connection of its own and
``reactor.tcpClients`` tells where each request went.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from edgeproxy.config import (
    Cluster,
    ConsistentHash,
    HealthCheck,
    Limits,
    OutlierDetection,
    RetryPolicy,
    Route,
    Split,
    VirtualHost,
)
from edgeproxy.config.routing import SplitChooser
from edgeproxy.core.selection import stable_roll
from edgeproxy.proxy.h1channel import ProxyFactory
from tests.memproxy import TCPLikeTransport, make_config, proxy_factory

HOST = b"shop.example"


def answer(status: int = 200, body: bytes = b"ok", *, close: bool = True) -> bytes:
    phrase = {
        200: b"OK",
        500: b"Internal Server Error",
        502: b"Bad Gateway",
        503: b"Service Unavailable",
        504: b"Gateway Timeout",
    }[status]
    head = b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\n" % (status, phrase, len(body))
    if close:
        head += b"Connection: close\r\n"
    return head + b"\r\n" + body


class Client:
    """One downstream connection."""

    def __init__(self, factory: ProxyFactory) -> None:
        self.channel: Any = factory.buildProtocol(IPv4Address("TCP", "192.0.2.9", 5555))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.9", 5555))
        self.channel.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    def value(self) -> bytes:
        return self.transport.value()

    def status(self) -> int | None:
        out = self.value()
        if not out:
            return None
        return int(out.split(b" ", 2)[1])

    def header(self, name: bytes) -> list[bytes]:
        head = self.value().split(b"\r\n\r\n", 1)[0]
        found = []
        for line in head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower():
                found.append(value.strip())
        return found

    def body(self) -> bytes:
        return self.value().split(b"\r\n\r\n", 1)[1]


class Upstream:
    """One upstream connection edgeproxy opened."""

    def __init__(self, protocol: Any, transport: TCPLikeTransport, address: str) -> None:
        self.protocol = protocol
        self.transport = transport
        self.address = address

    def respond(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def lose(self, reason: Exception) -> None:
        self.protocol.connectionLost(Failure(reason))


class Harness:
    def __init__(self, *routes: Route, tls: bool = True) -> None:
        self.reactor = MemoryReactorClock()
        config = make_config(VirtualHost([HOST.decode()], routes=list(routes)))
        self.factory, self.pipeline = proxy_factory(self.reactor, config, tls=tls)
        self.snapshot = self.pipeline.snapshot
        self._accepted = 0

    def request(self, raw: bytes) -> Client:
        client = Client(self.factory)
        client.send(raw)
        return client

    def get(self, path: bytes = b"/", headers: bytes = b"") -> Client:
        return self.request(
            b"GET " + path + b" HTTP/1.1\r\nHost: " + HOST + b"\r\n" + headers + b"\r\n"
        )

    def post(self, path: bytes = b"/", body: bytes = b"data") -> Client:
        return self.request(
            b"POST "
            + path
            + b" HTTP/1.1\r\nHost: "
            + HOST
            + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
            + body
        )

    @property
    def connections(self) -> int:
        return len(self.reactor.tcpClients)

    def accept(self) -> Upstream:
        """Complete the next connection edgeproxy started."""
        host, port, factory, _timeout, _bind = self.reactor.tcpClients[self._accepted]
        self._accepted += 1
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = TCPLikeTransport()
        protocol.makeConnection(transport)
        return Upstream(protocol, transport, f"{host}:{port}")

    def refuse(self) -> None:
        factory = self.reactor.tcpClients[self._accepted][2]
        self._accepted += 1
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))

    def runtime(self, name: str) -> Any:
        return self.snapshot.clusters[name]


def solo(**options: Any) -> Harness:
    """A harness whose one route goes to cluster "solo", of one endpoint."""
    return Harness(Route("/", Cluster("solo", endpoints=["10.0.0.1:80"], **options)))


#: One connection to "solo" at a time, and 3 s to wait for it.
ONE_SLOT_3S: dict[str, Any] = {
    "connect_timeout": 3.0,
    "response_timeout": 60.0,
    "limits": Limits(max_connections_per_endpoint=1),
}


# -- limits --------------------------------------------------------------------


def test_max_requests_overflow_is_503_at_once_without_upstream() -> None:
    h = solo(limits=Limits(1))
    first = h.get(b"/a")
    assert h.connections == 1
    second = h.get(b"/b")
    assert second.status() == 503
    assert second.header(b"x-edgeproxy-limit") == [b"max_requests"]
    assert h.connections == 1
    assert h.runtime("solo").counters.overflows == {"max_requests": 1}
    # The first is untouched and, once over, frees its place.
    h.accept().respond(answer(200, b"one"))
    assert first.status() == 200
    assert first.body() == b"one"
    third = h.get(b"/c")
    assert third.value() == b""
    assert h.connections == 2
    h.accept().respond(answer(200, b"three"))
    assert third.body() == b"three"
    assert h.runtime("solo").counters.in_flight == 0


def test_pending_queue_waits_for_a_slot_and_sheds_beyond_max_pending() -> None:
    h = solo(limits=Limits(max_connections_per_endpoint=1, max_pending=1))
    counters = h.runtime("solo").counters
    first = h.get(b"/1")
    assert h.connections == 1
    second = h.get(b"/2")
    assert second.value() == b""
    assert h.connections == 1
    assert counters.pending == 1
    third = h.get(b"/3")
    assert third.status() == 503
    assert third.header(b"x-edgeproxy-limit") == [b"max_pending"]
    assert h.connections == 1
    assert counters.overflows == {"max_pending": 1}
    # The first finishes: the second goes now, on a connection of its own.
    up1 = h.accept()
    assert up1.transport.value().startswith(b"GET /1 ")
    up1.respond(answer(200, b"first"))
    assert first.body() == b"first"
    assert h.connections == 2
    assert counters.pending == 0
    up2 = h.accept()
    assert up2.transport.value().startswith(b"GET /2 ")
    up2.respond(answer(200, b"second"))
    assert second.status() == 200
    assert second.body() == b"second"
    assert counters.in_flight == 0


def test_waiting_request_whose_client_leaves_is_dropped_from_the_queue() -> None:
    h = solo(limits=Limits(max_connections_per_endpoint=1))
    first = h.get(b"/1")
    second = h.get(b"/2")
    counters = h.runtime("solo").counters
    assert counters.pending == 1
    second.channel.connectionLost(Failure(ConnectionLost()))
    assert counters.pending == 0
    assert counters.in_flight == 1
    h.accept().respond(answer(200))
    assert first.status() == 200
    assert h.connections == 1
    assert counters.in_flight == 0


def test_pending_request_times_out_after_connect_timeout() -> None:
    h = solo(**ONE_SLOT_3S)
    h.get(b"/1")
    h.accept()
    waiting = h.get(b"/2")
    h.reactor.advance(2.9)
    assert waiting.value() == b""
    h.reactor.advance(0.1)
    counters = h.runtime("solo").counters
    assert counters.pending == 0
    assert waiting.status() == 503
    assert waiting.header(b"x-edgeproxy-limit") == [b"pending_timeout"]
    assert counters.overflows == {"pending_timeout": 1}
    assert h.connections == 1
    assert counters.in_flight == 1


def test_freed_slot_a_woken_retry_cannot_use_goes_to_the_next_waiter() -> None:
    cluster = Cluster(
        "api",
        endpoints=["10.0.0.1:80", "10.0.0.2:80"],
        connect_timeout=3.0,
        response_timeout=60.0,
        limits=Limits(max_connections_per_endpoint=1),
    )
    h = Harness(Route("/", cluster))
    counters = h.runtime("api").counters
    h.get(b"/a")
    up_a = h.accept()
    h.get(b"/b")
    up_b = h.accept()
    assert {up_a.address, up_b.address} == {"10.0.0.1:80", "10.0.0.2:80"}
    # a's retry may only go to b's endpoint, which is busy: a waits.
    up_a.respond(answer(503))
    assert counters.pending == 1
    # c takes a's old endpoint; d waits behind a.
    c = h.get(b"/c")
    up_c = h.accept()
    assert up_c.address == up_a.address
    h.get(b"/d")
    assert counters.pending == 2
    assert h.connections == 3
    # c is over: its endpoint is free.  a cannot use it, d can.
    up_c.respond(answer(200))
    assert c.status() == 200
    assert h.connections == 4
    up_d = h.accept()
    assert up_d.address == up_a.address
    assert up_d.transport.value().startswith(b"GET /d ")
    assert counters.pending == 1


# -- retries ---------------------------------------------------------------------


API = Cluster("api", endpoints=["10.0.0.1:80", "10.0.0.2:80"])


@pytest.mark.parametrize("status", [502, 503, 504])
def test_retry_status_of_get_is_retried_on_the_other_endpoint(status: int) -> None:
    h = Harness(Route("/", API))
    client = h.get(b"/x")
    first = h.accept()
    first.respond(answer(status, b"bad"))
    assert client.value() == b""
    assert h.connections == 2
    second = h.accept()
    assert {first.address, second.address} == {"10.0.0.1:80", "10.0.0.2:80"}
    assert second.transport.value().startswith(b"GET /x ")
    second.respond(answer(200, b"good"))
    assert client.status() == 200
    assert client.body() == b"good"
    counters = h.runtime("api").counters
    assert counters.retries_total == 1
    assert counters.retries_in_flight == 0
    assert counters.in_flight == 0


def test_retry_status_on_both_endpoints_gives_the_last_answer() -> None:
    h = Harness(Route("/", API))
    client = h.get(b"/x")
    h.accept().respond(answer(503, b"first"))
    h.accept().respond(answer(503, b"second"))
    assert client.status() == 503
    assert client.body() == b"second"
    assert h.connections == 2


@pytest.mark.parametrize("status", [502, 503, 504])
def test_retry_status_of_post_is_not_retried(status: int) -> None:
    h = Harness(Route("/", API))
    client = h.post(b"/x")
    h.accept().respond(answer(status, b"upstream says no"))
    assert client.status() == status
    assert client.body() == b"upstream says no"
    assert h.connections == 1
    assert h.runtime("api").counters.retries_total == 0


def test_status_outside_retry_statuses_is_not_retried() -> None:
    h = Harness(Route("/", API))
    client = h.get(b"/x")
    h.accept().respond(answer(500, b"oops"))
    assert client.status() == 500
    assert h.connections == 1


def test_retry_status_with_nowhere_else_to_go_passes_the_answer_through() -> None:
    cluster = Cluster(
        "api", endpoints=["10.0.0.1:80", "10.0.0.2:80"], health_check=HealthCheck(fall=1)
    )
    h = Harness(Route("/", cluster))
    runtime = h.runtime("api")
    runtime.endpoints[1].health.record_fail("timeout")
    client = h.get(b"/x")
    up = h.accept()
    assert up.address == "10.0.0.1:80"
    up.respond(answer(503, b"maintenance"))
    assert h.connections == 1
    # As with a one-endpoint cluster (or both endpoints answering 503): the
    # upstream's answer, not a 502 of edgeproxy's own.
    assert client.status() == 503
    assert client.body() == b"maintenance"
    assert runtime.counters.retries_total == 0


def test_connection_lost_after_send_is_retried_for_get() -> None:
    h = Harness(Route("/", API))
    client = h.get(b"/x")
    first = h.accept()
    assert first.transport.value().startswith(b"GET /x ")
    first.lose(ConnectionLost())
    assert client.value() == b""
    assert h.connections == 2
    second = h.accept()
    assert second.address != first.address
    second.respond(answer(200, b"good"))
    assert client.status() == 200
    assert client.body() == b"good"


def test_connection_lost_after_send_is_502_for_post() -> None:
    h = Harness(Route("/", API))
    client = h.post(b"/x", b"pay me")
    first = h.accept()
    assert first.transport.value().startswith(b"POST /x ")
    first.lose(ConnectionLost())
    assert client.status() == 502
    assert h.connections == 1


def test_connect_failure_of_post_is_retried() -> None:
    """Never sent: any method may go elsewhere."""
    h = Harness(Route("/", API))
    client = h.post(b"/x")
    h.refuse()
    assert h.connections == 2
    h.accept().respond(answer(200, b"made"))
    assert client.body() == b"made"


def test_a_failure_of_an_unknown_kind_is_logged_and_answered_502() -> None:
    h = Harness(Route("/", Cluster("api", endpoints=["10.0.0.1:80", "10.0.0.2:80"])))
    client = h.post()
    connecting = h.reactor.tcpClients[0][2]
    with capturedLogs() as events:
        connecting._exchange.fail(ValueError("boom"))
    assert client.status() == 502
    assert h.connections == 1  # a POST that may have been sent is not retried
    (logged,) = [e for e in events if e.get("log_failure") is not None]
    assert logged["log_failure"].check(ValueError)
    assert logged["log_format"] == "unexpected upstream failure"


def test_exhausted_retry_budget_means_no_retry() -> None:
    stingy = Cluster(
        "api",
        endpoints=["10.0.0.1:80", "10.0.0.2:80"],
        retries=RetryPolicy(min_retries=0, budget_percent=0.0),
    )
    h = Harness(Route("/", stingy))
    client = h.get(b"/x")
    h.accept().respond(answer(503, b"first"))
    assert client.status() == 503
    assert client.body() == b"first"
    assert h.connections == 1
    counters = h.runtime("api").counters
    assert counters.retries_refused == 1
    assert counters.retries_total == 0

    # A request that was never sent is retried outside the budget: it adds
    # no load, and failing it would fail what a healthy endpoint can serve.
    refused = h.get(b"/y")
    h.refuse()
    assert h.connections == 3
    h.accept().respond(answer(200, b"second"))
    assert refused.body() == b"second"
    assert counters.retries_refused == 1


def test_retry_budget_is_shared_by_concurrent_requests() -> None:
    one = Cluster(
        "api",
        endpoints=["10.0.0.1:80", "10.0.0.2:80"],
        retries=RetryPolicy(min_retries=1, budget_percent=0.0),
    )
    h = Harness(Route("/", one))
    a = h.get(b"/a")
    b = h.get(b"/b")
    up_a, up_b = h.accept(), h.accept()
    up_a.respond(answer(503, b"a1"))
    # a's retry holds the one place in the budget...
    assert h.connections == 3
    up_b.respond(answer(503, b"b1"))
    # ...so b gets its first answer.
    assert b.status() == 503
    assert b.body() == b"b1"
    assert h.connections == 3
    h.accept().respond(answer(200, b"a2"))
    assert a.body() == b"a2"
    assert h.runtime("api").counters.retries_in_flight == 0


# -- outlier detection -------------------------------------------------------------


def ejecting(consecutive: int = 2, endpoints: int = 2) -> Cluster:
    return Cluster(
        "api",
        endpoints=[f"10.0.0.{i}:80" for i in range(1, endpoints + 1)],
        outlier_detection=OutlierDetection(
            consecutive, base_ejection_time=30.0, sole_endpoint_answers=True
        ),
        retries=RetryPolicy(1),
    )


def serve(h: Harness, bad: str, status: int) -> str:
    """One GET; ``bad`` answers ``status``, the others 200.  Returns where it went."""
    client = h.get(b"/")
    up = h.accept()
    up.respond(answer(status if up.address == bad else 200))
    assert client.status() == (status if up.address == bad else 200)
    return up.address


def test_failure_statuses_eject_the_endpoint() -> None:
    h = Harness(Route("/", ejecting(2)))
    runtime = h.runtime("api")
    went = [serve(h, "10.0.0.1:80", 500) for _ in range(4)]
    assert went.count("10.0.0.1:80") == 2
    bad = runtime.endpoints[0]
    assert bad.failures == 2
    assert bad.breaker.is_ejected()
    assert [serve(h, "10.0.0.1:80", 500) for _ in range(4)] == ["10.0.0.2:80"] * 4


def test_a_2xx_resets_the_failure_count() -> None:
    h = Harness(Route("/", ejecting(2, endpoints=1)))
    runtime = h.runtime("api")
    for status in (503, 200, 503, 200, 503):
        client = h.get(b"/")
        h.accept().respond(answer(status))
        assert client.status() == status
    breaker = runtime.endpoints[0].breaker
    assert not breaker.is_ejected()
    assert breaker.status().consecutive_failures == 1
    assert runtime.endpoints[0].failures == 3


def test_statuses_outside_failure_statuses_do_not_count() -> None:
    cluster = Cluster(
        "api",
        endpoints=["10.0.0.1:80"],
        outlier_detection=OutlierDetection(1, failure_statuses=[503], sole_endpoint_answers=True),
        retries=RetryPolicy(1),
    )
    h = Harness(Route("/", cluster))
    client = h.get(b"/")
    h.accept().respond(answer(500))
    assert client.status() == 500
    assert not h.runtime("api").endpoints[0].breaker.is_ejected()


def test_all_endpoints_ejected_is_503_with_retry_after_and_no_connection() -> None:
    h = Harness(Route("/", ejecting(1, endpoints=1)))
    client = h.get(b"/")
    h.accept().respond(answer(502))
    assert client.status() == 502
    assert h.runtime("api").endpoints[0].breaker.is_ejected()

    shed = h.get(b"/")
    assert shed.status() == 503
    assert shed.header(b"retry-after") == [b"30"]
    assert shed.header(b"x-edgeproxy-limit") == []
    assert h.connections == 1

    h.reactor.advance(12.5)
    later = h.get(b"/")
    assert later.header(b"retry-after") == [b"18"]
    assert h.connections == 1


def test_ejected_endpoint_gets_one_probe_after_the_ejection() -> None:
    h = Harness(Route("/", ejecting(1, endpoints=1)))
    h.get(b"/")
    h.accept().respond(answer(503))
    h.reactor.advance(30)
    probe = h.get(b"/")
    assert h.connections == 2
    # While the probe is out, nothing else goes there.
    other = h.get(b"/")
    assert other.status() == 503
    assert h.connections == 2
    h.accept().respond(answer(200, b"back"))
    assert probe.body() == b"back"
    again = h.get(b"/")
    assert h.connections == 3
    h.accept().respond(answer(200))
    assert again.status() == 200


def test_connection_lost_mid_body_counts_as_a_failure() -> None:
    h = Harness(Route("/", ejecting(1, endpoints=1)))
    client = h.get(b"/")
    up = h.accept()
    up.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    up.lose(ConnectionLost())
    assert client.transport.disconnecting
    assert not client.value().endswith(b"0\r\n\r\n")
    assert h.runtime("api").endpoints[0].breaker.is_ejected()


def test_idle_timeout_of_a_read_until_close_body_cuts_the_client() -> None:
    cluster = Cluster("api", endpoints=["10.0.0.1:80"], idle_timeout=5.0)
    h = Harness(Route("/", cluster))
    client = h.get(b"/")
    up = h.accept()
    # No Content-Length, not chunked: the body runs until the connection closes.
    up.respond(b"HTTP/1.1 200 OK\r\n\r\npart")
    h.reactor.advance(5)
    assert up.transport.producerState == "stopped"
    # Stopping the producer closes the upstream socket.
    up.lose(ConnectionDone())
    assert client.transport.disconnecting
    # No last chunk: the client must not take the short body for a whole one.
    assert not client.value().endswith(b"0\r\n\r\n")


# -- stickiness ----------------------------------------------------------------------


BLUE = Cluster("blue", endpoints=["10.0.1.1:80"])
GREEN = Cluster("green", endpoints=["10.0.2.1:80"])
CLUSTER_OF = {"10.0.1.1:80": "blue", "10.0.2.1:80": "green"}


def sticky_split() -> Split:
    return Split({BLUE: 1, GREEN: 1}, sticky="cookie:variant")


def where(h: Harness, client: Client) -> str:
    up = h.accept()
    up.respond(answer(200))
    assert client.status() == 200
    return CLUSTER_OF[up.address]


def test_sticky_split_sets_a_secure_cookie_on_tls_and_keeps_the_cluster() -> None:
    h = Harness(Route("/", sticky_split()), tls=True)
    for _ in range(4):
        first = h.get(b"/")
        cluster = where(h, first)
        (cookie,) = first.header(b"set-cookie")
        pair, *attributes = cookie.split(b"; ")
        name, _, token = pair.partition(b"=")
        assert name == b"variant"
        assert len(token) >= 16
        assert attributes == [b"Path=/", b"HttpOnly", b"SameSite=Lax", b"Secure"]
        for _ in range(3):
            again = h.get(b"/", b"Cookie: variant=" + token + b"\r\n")
            assert where(h, again) == cluster
            assert again.header(b"set-cookie") == []


def test_sticky_cookie_is_not_secure_on_plain_http() -> None:
    h = Harness(Route("/", sticky_split(), plain_http=True), tls=False)
    client = h.get(b"/")
    where(h, client)
    (cookie,) = client.header(b"set-cookie")
    assert cookie.endswith(b"; Path=/; HttpOnly; SameSite=Lax")


def test_sticky_cookie_value_picks_the_cluster_deterministically() -> None:
    split = sticky_split()
    h = Harness(Route("/", split))
    chooser = SplitChooser(split)
    expected = {v: chooser.choose(stable_roll(v)).name for v in (b"u%d" % i for i in range(16))}
    assert set(expected.values()) == {"blue", "green"}
    for value, name in expected.items():
        for _ in range(2):
            client = h.get(b"/", b"Cookie: other=1; variant=" + value + b"\r\n")
            assert where(h, client) == name


def test_consistent_hash_on_a_header_keeps_the_endpoint() -> None:
    hashed = Cluster(
        "api",
        endpoints=[f"10.0.0.{i}:80" for i in range(1, 5)],
        policy=ConsistentHash(key="header:x-user"),
    )
    h = Harness(Route("/", hashed))
    seen: dict[bytes, str] = {}
    for _round in range(3):
        for user in (b"user-%d" % i for i in range(12)):
            client = h.get(b"/", b"X-User: " + user + b"\r\n")
            up = h.accept()
            up.respond(answer(200))
            assert client.status() == 200
            assert seen.setdefault(user, up.address) == up.address
    assert len(set(seen.values())) > 1


# -- a Split steers around a side with nothing available --------------------------

CHECKED_GREEN = Cluster(
    "green", endpoints=["10.0.2.1:80"], health_check=HealthCheck(rise=1, fall=1)
)


def token_for(h: Harness, side: str) -> bytes:
    """A sticky cookie value that the route's Split sends to ``side``."""
    target = h.snapshot.config.virtual_hosts[0].routes[0].target
    assert isinstance(target, Split)
    chooser = SplitChooser(target)
    return next(
        value
        for value in (b"u%d" % i for i in range(100))
        if chooser.choose(stable_roll(value)).name == side
    )


def test_split_sends_a_down_sides_share_to_the_other_side() -> None:
    h = Harness(Route("/", Split({BLUE: 1, CHECKED_GREEN: 1})))
    green = h.runtime("green").endpoints[0]
    green.health.record_fail("connect refused")
    assert not h.runtime("green").available()
    assert [where(h, h.get(b"/")) for _ in range(20)] == ["blue"] * 20
    green.health.record_pass()
    assert set(where(h, h.get(b"/")) for _ in range(20)) == {"blue", "green"}


def test_sticky_split_client_of_a_down_side_is_served_elsewhere_until_it_is_back() -> None:
    h = Harness(Route("/", Split({BLUE: 1, CHECKED_GREEN: 1}, sticky="cookie:variant")))
    cookie = b"Cookie: variant=" + token_for(h, "green") + b"\r\n"
    assert where(h, h.get(b"/", cookie)) == "green"
    green = h.runtime("green").endpoints[0]
    green.health.record_fail("connect refused")
    for _ in range(3):
        client = h.get(b"/", cookie)
        assert where(h, client) == "blue"
        assert client.header(b"set-cookie") == []  # it keeps its own side's cookie
    green.health.record_pass()
    assert where(h, h.get(b"/", cookie)) == "green"


def test_split_with_every_side_down_answers_503_from_the_chosen_side() -> None:
    slow_blue = Cluster("blue", endpoints=["10.0.1.1:80"], health_check=HealthCheck(rise=3, fall=1))
    h = Harness(Route("/", Split({slow_blue: 1, CHECKED_GREEN: 1}, sticky="cookie:variant")))
    h.runtime("blue").endpoints[0].health.record_fail("timeout")
    h.runtime("green").endpoints[0].health.record_fail("timeout")
    # Retry-After is the chosen side's: interval * rise, 6 s for blue, 2 s for green.
    for side, wait in (("blue", b"6"), ("green", b"2")):
        client = h.get(b"/", b"Cookie: variant=" + token_for(h, side) + b"\r\n")
        assert client.status() == 503
        assert client.header(b"retry-after") == [wait]
    assert h.connections == 0


def test_a_full_side_is_not_steered_around() -> None:
    """Full (every slot taken) is a limit, answered by the side's own queue and 503."""
    small_green = Cluster(
        "green",
        endpoints=["10.0.2.1:80"],
        limits=Limits(max_connections_per_endpoint=1, max_pending=0),
    )
    h = Harness(Route("/", Split({BLUE: 1, small_green: 1}, sticky="cookie:variant")))
    cookie = b"Cookie: variant=" + token_for(h, "green") + b"\r\n"
    first = h.get(b"/", cookie)
    assert h.connections == 1
    second = h.get(b"/", cookie)
    assert second.status() == 503
    assert second.header(b"x-edgeproxy-limit") == [b"max_pending"]
    assert h.connections == 1
    assert where(h, first) == "green"


# -- outlier detection by default ----------------------------------------------------


def test_by_default_a_refusing_endpoint_leaves_the_rotation_after_five_attempts() -> None:
    pair = Cluster("api", endpoints=["10.0.0.1:80", "10.0.0.2:80"])
    h = Harness(Route("/", pair))
    refused = 0
    for _ in range(40):
        client = h.get(b"/")
        while client.status() is None:
            host, port = h.reactor.tcpClients[h._accepted][:2]
            if host == "10.0.0.1":
                h.refuse()
                refused += 1
            else:
                h.accept().respond(answer(200))
        assert client.status() == 200
    assert refused == 5
    dead = h.runtime("api").endpoints[0]
    assert not dead.up()
    assert dead.breaker.retry_after() == 30.0


def test_by_default_a_sole_endpoint_is_not_ejected_for_its_answers() -> None:
    h = Harness(Route("/", Cluster("api", endpoints=["10.0.0.1:80"])))
    for _ in range(12):
        client = h.get(b"/")
        h.accept().respond(answer(500))
        assert client.status() == 500
    breaker = h.runtime("api").endpoints[0].breaker
    assert breaker.status().state == "closed"
    assert breaker.status().consecutive_failures == 0
    assert h.runtime("api").endpoints[0].failures == 12


def test_by_default_a_sole_endpoint_that_cannot_be_reached_is_ejected() -> None:
    h = Harness(Route("/", Cluster("api", endpoints=["10.0.0.1:80"])))
    for _ in range(5):
        client = h.get(b"/")
        h.refuse()
        assert client.status() == 502
    shed = h.get(b"/")
    assert shed.status() == 503
    assert shed.header(b"retry-after") == [b"30"]
    assert h.connections == 5
    # The probe after the ejection reaches it: any answer brings it back.
    h.reactor.advance(30)
    probe = h.get(b"/")
    h.accept().respond(answer(500))
    assert probe.status() == 500
    assert h.runtime("api").endpoints[0].breaker.status().state == "closed"


def test_a_request_its_split_side_could_not_send_is_retried_on_another_side() -> None:
    h = Harness(Route("/", Split({BLUE: 1, GREEN: 1}, sticky="cookie:variant")))
    cookie = b"Cookie: variant=" + token_for(h, "green") + b"\r\n"
    for n in range(1, 6):
        client = h.request(
            b"POST / HTTP/1.1\r\nHost: shop.example\r\n" + cookie + b"Content-Length: 2\r\n\r\nhi"
        )
        assert h.reactor.tcpClients[h._accepted][0] == "10.0.2.1"
        h.refuse()  # green refuses: never sent, so even a POST moves to blue
        assert where(h, client) == "blue"
        assert client.header(b"set-cookie") == []
        assert h.runtime("green").endpoints[0].failures == n
        assert h.runtime("blue").counters.retries_total == n
    # Five refusals ejected green: its clients now go straight to blue.
    assert not h.runtime("green").available()
    before = h.connections
    assert where(h, h.get(b"/", cookie)) == "blue"
    assert h.connections == before + 1
    assert h.runtime("green").counters.in_flight == h.runtime("blue").counters.in_flight == 0


def test_a_half_open_side_with_its_probe_out_sends_the_rest_elsewhere() -> None:
    h = Harness(Route("/", Split({BLUE: 1, GREEN: 1}, sticky="cookie:variant")))
    cookie = b"Cookie: variant=" + token_for(h, "green") + b"\r\n"
    for _ in range(5):  # five refusals eject green (each request served by blue)
        client = h.get(b"/", cookie)
        h.refuse()
        assert where(h, client) == "blue"
    h.reactor.advance(30)  # the ejection is over: green is half-open
    assert h.runtime("green").available()
    retries = h.runtime("blue").counters.retries_total
    probe = h.get(b"/", cookie)
    assert h.reactor.tcpClients[h._accepted][0] == "10.0.2.1"  # the probe goes to green
    h._accepted += 1  # and stays out, unanswered
    # Green looks available but has nothing to give while its probe is out:
    # its clients are served by blue, not answered 503.
    for _ in range(3):
        assert where(h, h.get(b"/", cookie)) == "blue"
    # Nothing was sent to green for those: no retries counted.
    assert h.runtime("blue").counters.retries_total == retries
    assert probe.status() is None


def test_no_other_side_when_the_attempts_are_spent() -> None:
    green = Cluster("green", endpoints=["10.0.2.1:80"], retries=RetryPolicy(1))
    h = Harness(Route("/", Split({BLUE: 1, green: 1}, sticky="cookie:variant")))
    client = h.get(b"/", b"Cookie: variant=" + token_for(h, "green") + b"\r\n")
    h.refuse()
    assert client.status() == 502
    assert h.connections == 1
    assert h.runtime("green").counters.in_flight == 0


# -- whatever way a request ends, its lease gives everything back ------------------


def held(h: Harness) -> dict[str, tuple[int, int, int, list[int]]]:
    """What requests hold in each cluster: in flight, pending, retries in
    flight, and each endpoint's slots."""
    return {
        name: (
            rt.counters.in_flight,
            rt.counters.pending,
            rt.counters.retries_in_flight,
            [e.in_flight for e in rt.endpoints],
        )
        for name, rt in h.snapshot.clusters.items()
    }


def nothing_held(h: Harness) -> bool:
    return all(
        (in_flight, pending, retries) == (0, 0, 0) and not any(slots)
        for in_flight, pending, retries, slots in held(h).values()
    )


PAIR = Cluster(
    "api",
    endpoints=["10.0.0.1:80", "10.0.0.2:80"],
    connect_timeout=3.0,
    response_timeout=60.0,
    limits=Limits(max_requests=3, max_connections_per_endpoint=1),
)


def _answered(h: Harness) -> None:
    client = h.get(b"/")
    h.accept().respond(answer(200))
    assert client.status() == 200


def _streamed(h: Harness) -> None:
    client = h.get(b"/")
    up = h.accept()
    up.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc")
    assert not nothing_held(h)
    up.respond(b"def")
    assert client.body() == b"abcdef"


def _failed(h: Harness) -> None:
    client = h.post()
    h.accept().lose(ConnectionLost())
    assert client.status() == 502


def _retried(h: Harness) -> None:
    client = h.get(b"/")
    h.accept().respond(answer(503))
    assert h.runtime("api").counters.retries_in_flight == 1
    h.accept().respond(answer(200, b"again"))
    assert client.body() == b"again"


def _refused_then_retried(h: Harness) -> None:
    client = h.post()
    h.refuse()
    h.accept().respond(answer(200))
    assert client.status() == 200


def _gone_waiting_for_the_head(h: Harness) -> None:
    client = h.get(b"/")
    h.accept()
    client.channel.connectionLost(Failure(ConnectionLost()))


def _gone_mid_body(h: Harness) -> None:
    client = h.get(b"/")
    h.accept().respond(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    client.channel.connectionLost(Failure(ConnectionLost()))


def _gone_in_the_queue(h: Harness) -> None:
    first, second = h.get(b"/1"), h.get(b"/2")
    queued = h.get(b"/3")
    assert h.runtime("api").counters.pending == 1
    queued.channel.connectionLost(Failure(ConnectionLost()))
    h.accept().respond(answer(200))
    h.accept().respond(answer(200))
    assert (first.status(), second.status()) == (200, 200)
    assert h.connections == 2


@pytest.mark.parametrize(
    "scenario",
    [
        _answered,
        _streamed,
        _failed,
        _retried,
        _refused_then_retried,
        _gone_waiting_for_the_head,
        _gone_mid_body,
        _gone_in_the_queue,
    ],
)
def test_nothing_is_left_held_however_a_request_ends(scenario: Any) -> None:
    h = Harness(Route("/", PAIR))
    scenario(h)
    assert nothing_held(h), held(h)


def test_nothing_is_left_held_after_a_wait_for_a_slot_times_out() -> None:
    h = solo(**ONE_SLOT_3S)
    first = h.get(b"/1")
    up = h.accept()
    waiting, gone = h.get(b"/2"), h.get(b"/3")
    assert h.runtime("solo").counters.pending == 2
    gone.channel.connectionLost(Failure(ConnectionLost()))
    h.reactor.advance(3.0)
    assert waiting.header(b"x-edgeproxy-limit") == [b"pending_timeout"]
    up.respond(answer(200))
    assert first.status() == 200
    assert nothing_held(h), held(h)


def test_nothing_is_left_held_after_a_move_to_another_split_side() -> None:
    h = Harness(Route("/", Split({BLUE: 1, GREEN: 1}, sticky="cookie:variant")))
    cookie = b"Cookie: variant=" + token_for(h, "green") + b"\r\n"
    client = h.get(b"/", cookie)
    h.refuse()
    assert held(h)["green"] == (0, 0, 0, [0])
    assert held(h)["blue"] == (1, 0, 0, [1])
    assert where(h, client) == "blue"
    assert nothing_held(h), held(h)


def test_a_client_leaving_mid_body_is_no_fault_of_the_endpoint() -> None:
    h = Harness(Route("/", ejecting(1)))
    client = h.get(b"/")
    up = h.accept()
    up.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    client.channel.connectionLost(Failure(ConnectionLost()))
    assert up.transport.disconnecting
    runtime = h.runtime("api")
    assert [rt.failures for rt in runtime.endpoints] == [0, 0]
    assert runtime.available()
    assert not any(rt.breaker.is_ejected() for rt in runtime.endpoints)
