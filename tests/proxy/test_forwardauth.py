"""The forward-authentication stage (edgeproxy.proxy.forwardauth) on the
in-memory proxy: the question the auth service gets, a 2xx passing the
request on with the listed headers copied (a client's own removed), a
denial (401 with WWW-Authenticate, 302) passed back whole, failing closed
(refused, timed out, broken, oversized), positive answers kept per
credential, counters, no cyclic garbage; a failure's cause logged once
until the auth service answers again; an ``https://`` auth service asked
through its TLS pool, which reloads keep while a route uses it."""

from __future__ import annotations

import ipaddress
import random
from functools import partial
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure

from edgeproxy.cluster.snapshot import Snapshot
from edgeproxy.config import Cluster, ForwardAuth, Route, UpstreamTLS, VirtualHost
from edgeproxy.config.settings import Settings
from edgeproxy.proxy.forwardauth import ForwardAuthStage
from edgeproxy.proxy.pipeline import Pipeline, auth_tls_files
from tests.memproxy import make_config, proxy_factory
from tests.proxy.test_no_cycles import SocketLike, garbage_in_fresh_interpreter, garbage_of

WEB = Cluster("web", endpoints=["10.0.0.1:80"], outlier_detection=None)
AUTH = ForwardAuth(
    "http://10.0.0.53:9400/check?site=shop",
    request_headers=["Authorization", "Cookie"],
    response_headers=["X-User", "X-Groups"],
)
CACHED = ForwardAuth(
    "http://10.0.0.53:9400/check",
    request_headers=["Authorization"],
    response_headers=["X-User"],
    cache_for=30.0,
    cache_max_entries=2,
)
CONFIG = make_config(
    VirtualHost(
        ["shop.example"],
        routes=[
            Route("/", WEB),
            Route("/app/", WEB, auth=AUTH, strip_prefix=True),
            Route("/cached/", WEB, auth=CACHED),
            Route(
                "/tiny/",
                WEB,
                auth=ForwardAuth("http://10.0.0.53:9400/", timeout=2.0, max_response_body=10),
            ),
        ],
    )
)
ALLOW = b"HTTP/1.1 200 OK\r\nX-User: alice\r\nX-Other: no\r\nContent-Length: 0\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Rig:
    def __init__(self, *, tls: bool = True, settings: Settings | None = None) -> None:
        self.reactor = MemoryReactorClock()
        self.factory, self.pipeline = proxy_factory(
            self.reactor, CONFIG, tls=tls, settings=settings
        )
        self.started = 0

    def client(self, request: bytes, ip: str = "192.0.2.9") -> StringTransport:
        address = IPv4Address("TCP", ip, 5555)
        channel = self.factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        channel.makeConnection(transport)
        channel.dataReceived(request)
        return transport

    def attempts(self) -> list[str]:
        return [f"{host}:{port}" for host, port, *_ in self.reactor.tcpClients[self.started :]]

    def accept(self, expect: str) -> tuple[Any, StringTransport]:
        """The next connection the proxy started, to ``expect``, gets through."""
        host, port, factory, _, _ = self.reactor.tcpClients[self.started]
        assert f"{host}:{port}" == expect
        self.started += 1
        protocol: Any = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def refuse(self) -> None:
        factory = self.reactor.tcpClients[self.started][2]
        self.started += 1
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))  # type: ignore[arg-type]


def get(path: bytes, extra: bytes = b"", method: bytes = b"GET") -> bytes:
    return b"%s %s HTTP/1.1\r\nHost: shop.example\r\n%s\r\n" % (method, path, extra)


def head_lines(raw: bytes) -> list[bytes]:
    return raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def header(raw: bytes, name: bytes) -> list[bytes]:
    prefix = name.lower() + b": "
    return [
        line[len(prefix) :] for line in head_lines(raw)[1:] if line.lower().startswith(prefix)
    ]


def test_allowed_the_question_then_the_request_with_the_copied_headers() -> None:
    rig = Rig()
    client = rig.client(
        get(
            b"/app/orders?id=7",
            b"Authorization: Bearer good\r\nCookie: s=1\r\nX-User: mallory\r\n"
            b"x-user: eve\r\nX-Groups: admin\r\nAccept: */*\r\n",
            method=b"DELETE",
        )
    )
    assert rig.attempts() == ["10.0.0.53:9400"]  # nothing forwarded before the answer
    auth, auth_transport = rig.accept("10.0.0.53:9400")
    question = auth_transport.value()
    # A GET of the auth URL, without a body, whatever the client's method.
    assert head_lines(question)[0] == b"GET /check?site=shop HTTP/1.1"
    assert question.endswith(b"\r\n\r\n")
    assert header(question, b"Host") == [b"10.0.0.53:9400"]
    assert header(question, b"X-Forwarded-Method") == [b"DELETE"]
    assert header(question, b"X-Forwarded-Uri") == [b"/app/orders?id=7"]
    assert header(question, b"X-Forwarded-For") == [b"192.0.2.9"]
    assert header(question, b"X-Forwarded-Proto") == [b"https"]
    assert header(question, b"X-Forwarded-Host") == [b"shop.example"]
    assert header(question, b"Authorization") == [b"Bearer good"]
    assert header(question, b"Cookie") == [b"s=1"]
    assert len(header(question, b"X-Request-Id")[0]) == 32
    # Only the listed request headers: not the client's X-User, not Accept.
    assert header(question, b"X-User") == header(question, b"Accept") == []
    assert header(question, b"Content-Length") == []
    auth.dataReceived(ALLOW)
    assert client.value() == b""
    web, web_transport = rig.accept("10.0.0.1:80")
    forwarded = web_transport.value()
    assert head_lines(forwarded)[0] == b"DELETE /orders?id=7 HTTP/1.1"
    # The auth service's X-User; the client's two forged ones and its X-Groups gone.
    assert header(forwarded, b"X-User") == [b"alice"]
    assert header(forwarded, b"X-Groups") == []
    assert header(forwarded, b"X-Other") == []
    assert header(forwarded, b"Authorization") == [b"Bearer good"]
    assert header(forwarded, b"X-Request-Id") == header(question, b"X-Request-Id")
    web.dataReceived(OK)
    assert client.value().startswith(b"HTTP/1.1 200 OK\r\n")
    assert client.value().endswith(b"\r\n\r\nok")
    counters = rig.pipeline.auth.counters_for("shop.example/app/")
    assert (counters.allowed, counters.denied, counters.unavailable) == (1, 0, 0)
    # The auth connection went back to the pool and is used again.
    rig.client(get(b"/app/again", b"Authorization: Bearer good\r\n"))
    assert rig.attempts() == []
    assert b"GET /check?site=shop HTTP/1.1" in auth_transport.value()


def test_several_copied_lines_keep_their_order_and_a_route_without_auth_is_untouched() -> None:
    rig = Rig()
    rig.client(get(b"/app/x"))
    auth, _ = rig.accept("10.0.0.53:9400")
    auth.dataReceived(
        b"HTTP/1.1 204 No Content\r\nX-Groups: a\r\nx-user: bob\r\nX-Groups: b\r\n\r\n"
    )
    _, web_transport = rig.accept("10.0.0.1:80")
    forwarded = web_transport.value()
    assert header(forwarded, b"X-Groups") == [b"a", b"b"]
    assert header(forwarded, b"X-User") == [b"bob"]
    # A route without auth forwards the client's X-User as it is.
    rig.client(get(b"/plain", b"X-User: mallory\r\n"))
    _, plain = rig.accept("10.0.0.1:80")
    assert header(plain.value(), b"X-User") == [b"mallory"]


def test_a_401_goes_back_as_sent_with_its_header_and_body_and_nothing_is_forwarded() -> None:
    rig = Rig()
    client = rig.client(get(b"/app/x", b"Authorization: Bearer bad\r\n"))
    auth, _ = rig.accept("10.0.0.53:9400")
    auth.dataReceived(
        b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"shop\"\r\n"
        b"Content-Type: application/json\r\nX-Request-Id: theirs\r\nConnection: close\r\n"
        b"Content-Length: 22\r\n\r\n{\"error\":\"bad token\"}\n"
    )
    answer = client.value()
    assert head_lines(answer)[0] == b"HTTP/1.1 401 Unauthorized"
    assert header(answer, b"WWW-Authenticate") == [b'Bearer realm="shop"']
    assert header(answer, b"Content-Type") == [b"application/json"]
    assert header(answer, b"Content-Length") == [b"22"]
    assert header(answer, b"X-Request-Id") != [b"theirs"]
    assert header(answer, b"Connection") == []
    assert answer.endswith(b'\r\n\r\n{"error":"bad token"}\n')
    assert rig.attempts() == []
    counters = rig.pipeline.auth.counters_for("shop.example/app/")
    assert (counters.allowed, counters.denied) == (0, 1)


def test_a_redirect_to_a_login_page_goes_back_as_sent_in_pieces() -> None:
    rig = Rig()
    client = rig.client(get(b"/app/x"))
    auth, _ = rig.accept("10.0.0.53:9400")
    auth.dataReceived(b"HTTP/1.1 302 Found\r\nLocation: https://login.example/?next=/app/x\r\n")
    auth.dataReceived(b"Set-Cookie: state=abc\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nlo")
    assert client.value() == b""
    auth.dataReceived(b"gin\r\n0\r\n\r\n")
    answer = client.value()
    assert head_lines(answer)[0] == b"HTTP/1.1 302 Found"
    assert header(answer, b"Location") == [b"https://login.example/?next=/app/x"]
    assert header(answer, b"Set-Cookie") == [b"state=abc"]
    assert header(answer, b"Transfer-Encoding") == []
    assert answer.endswith(b"\r\n\r\nlogin")
    assert header(answer, b"Content-Length") == [b"5"]
    assert rig.attempts() == []


def test_a_denial_of_a_head_request_sends_no_body() -> None:
    rig = Rig()
    client = rig.client(get(b"/app/x", method=b"HEAD"))
    auth, auth_transport = rig.accept("10.0.0.53:9400")
    assert head_lines(auth_transport.value())[0].startswith(b"GET ")
    auth.dataReceived(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\n\r\nno way")
    assert client.value().startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert client.value().endswith(b"\r\n\r\n")


def test_unreachable_fails_closed_with_503() -> None:
    rig = Rig()
    client = rig.client(get(b"/app/x"))
    rig.refuse()
    answer = client.value()
    assert head_lines(answer)[0] == b"HTTP/1.1 503 Service Unavailable"
    assert answer.endswith(b"\r\n\r\n503 service unavailable\n")
    assert rig.attempts() == []
    counters = rig.pipeline.auth.counters_for("shop.example/app/")
    assert counters.unavailable == 1


def test_no_answer_in_time_fails_closed_with_503_and_the_connection_is_dropped() -> None:
    rig = Rig()
    client = rig.client(get(b"/tiny/x"))
    _, auth_transport = rig.accept("10.0.0.53:9400")
    rig.reactor.advance(1.9)
    assert client.value() == b""
    rig.reactor.advance(0.2)
    assert head_lines(client.value())[0] == b"HTTP/1.1 503 Service Unavailable"
    assert auth_transport.disconnecting
    assert rig.attempts() == []


def test_a_slow_body_counts_against_the_same_timeout() -> None:
    rig = Rig()
    client = rig.client(get(b"/tiny/x"))
    auth, _ = rig.accept("10.0.0.53:9400")
    rig.reactor.advance(1.5)
    auth.dataReceived(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 5\r\n\r\nno")
    rig.reactor.advance(0.6)
    assert head_lines(client.value())[0] == b"HTTP/1.1 503 Service Unavailable"


def test_a_denial_longer_than_max_response_body_is_a_503_but_a_long_2xx_still_allows() -> None:
    rig = Rig()
    client = rig.client(get(b"/tiny/x"))
    auth, auth_transport = rig.accept("10.0.0.53:9400")
    auth.dataReceived(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 11\r\n\r\n0123456789")
    assert client.value() == b""
    auth.dataReceived(b"X")
    assert head_lines(client.value())[0] == b"HTTP/1.1 503 Service Unavailable"
    assert auth_transport.disconnecting
    client = rig.client(get(b"/tiny/x"))
    auth, _ = rig.accept("10.0.0.53:9400")
    auth.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 50)
    web, _ = rig.accept("10.0.0.1:80")
    web.dataReceived(OK)
    assert client.value().endswith(b"ok")


def test_a_broken_answer_fails_closed() -> None:
    rig = Rig()
    client = rig.client(get(b"/app/x"))
    auth, _ = rig.accept("10.0.0.53:9400")
    auth.dataReceived(b"NOT HTTP\r\n\r\n")
    assert head_lines(client.value())[0] == b"HTTP/1.1 503 Service Unavailable"
    client = rig.client(get(b"/app/x"))
    auth, _ = rig.accept("10.0.0.53:9400")
    auth.dataReceived(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 10\r\n\r\nabc")
    auth.connectionLost(ConnectionLost())
    assert head_lines(client.value())[0] == b"HTTP/1.1 503 Service Unavailable"


def test_the_access_log_says_why() -> None:
    rig = Rig()
    records: list[Any] = []
    rig.factory.access_log.log_request = lambda request, duration: records.append(  # type: ignore[method-assign,assignment]
        (request.record.status, request.record.outcome.value, request.record.reason)
    )
    rig.client(get(b"/app/x"))
    auth, _ = rig.accept("10.0.0.53:9400")
    auth.dataReceived(
        b"HTTP/1.1 401 Unauthorized\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    rig.client(get(b"/app/x"))
    rig.refuse()
    assert [(s, o, r and r.value) for s, o, r in records] == [
        (401, "rejected", "auth_denied"),
        (503, "rejected", "auth_unavailable"),
    ]


def test_a_client_gone_while_waiting_cancels_the_question() -> None:
    rig = Rig()
    address = IPv4Address("TCP", "192.0.2.9", 5555)
    channel = rig.factory.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    channel.makeConnection(transport)
    channel.dataReceived(get(b"/app/x"))
    _, auth_transport = rig.accept("10.0.0.53:9400")
    channel.connectionLost(Failure(ConnectionDone()))
    assert auth_transport.disconnecting
    rig.reactor.advance(10)
    assert rig.attempts() == []


def test_over_a_trusted_forwarder_the_chain_is_extended_and_from_others_replaced() -> None:
    rig = Rig(settings=Settings(trusted_sources=(ipaddress.ip_network("10.1.0.0/16"),)))
    rig.client(get(b"/app/x", b"X-Forwarded-For: 198.51.100.7\r\n"), ip="10.1.2.3")
    _, auth_transport = rig.accept("10.0.0.53:9400")
    assert header(auth_transport.value(), b"X-Forwarded-For") == [b"198.51.100.7, 10.1.2.3"]
    rig.client(get(b"/app/x", b"X-Forwarded-For: 198.51.100.7\r\n"), ip="192.0.2.9")
    _, auth_transport = rig.accept("10.0.0.53:9400")
    assert header(auth_transport.value(), b"X-Forwarded-For") == [b"192.0.2.9"]


def test_plain_http_listener_redirects_first_and_asks_nothing() -> None:
    rig = Rig(tls=False)
    client = rig.client(get(b"/app/x"))
    assert head_lines(client.value())[0] == b"HTTP/1.1 308 Permanent Redirect"
    assert rig.attempts() == []


def test_positive_answers_are_kept_per_credential_for_cache_for() -> None:
    rig = Rig()

    def ask(token: bytes, forged: bytes = b"") -> tuple[StringTransport, bool]:
        """The client's transport, and whether the auth service was asked."""
        client = rig.client(get(b"/cached/x", b"Authorization: " + token + b"\r\n" + forged))
        asked = bool(rig.attempts()) and rig.attempts()[0] == "10.0.0.53:9400"
        return client, asked

    client, asked = ask(b"one")
    assert asked
    auth, auth_transport = rig.accept("10.0.0.53:9400")
    auth.dataReceived(b"HTTP/1.1 200 OK\r\nX-User: one\r\nContent-Length: 0\r\n\r\n")
    web, web_transport = rig.accept("10.0.0.1:80")
    web.dataReceived(OK)
    # The same credential: not asked again; the kept X-User, a forged one removed.
    web_transport.clear()
    client, asked = ask(b"one", b"X-User: admin\r\n")
    assert not asked
    assert header(web_transport.value(), b"X-User") == [b"one"]
    web.dataReceived(OK)
    # Another credential is asked about.
    auth_transport.clear()
    client, asked = ask(b"two")
    assert b"Authorization: two" in auth_transport.value()
    auth.dataReceived(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
    assert client.value().startswith(b"HTTP/1.1 401")
    # A denial is not kept.
    auth_transport.clear()
    ask(b"two")
    assert b"Authorization: two" in auth_transport.value()
    auth.dataReceived(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
    counters = rig.pipeline.auth.counters_for("shop.example/cached/")
    assert (counters.allowed, counters.cached, counters.denied) == (1, 1, 2)
    # After cache_for, asked again.
    rig.reactor.advance(30.0)
    auth_transport.clear()
    ask(b"one")
    assert b"Authorization: one" in auth_transport.value()


def test_the_kept_answers_are_bounded() -> None:
    rig = Rig()
    stage = next(
        s
        for s in rig.pipeline.plan.chains[True][id(CONFIG.virtual_hosts[0].routes[2])].stages
        if isinstance(s, ForwardAuthStage)
    )
    for n in range(5):
        stage.remember(b"k%d" % n, [])
        rig.reactor.advance(1)
    assert list(stage._cache) == [b"k3", b"k4"]
    rig.reactor.advance(29)
    stage.remember(b"k5", [])
    assert list(stage._cache) == [b"k5"]


def test_the_credential_digest_tells_values_and_headers_apart() -> None:
    rig = Rig()
    stage = ForwardAuthStage(
        AUTH, rig.pipeline.forwarder.upstream, rig.reactor, rig.pipeline.auth.counters_for("x"), via=b"v"
    )

    class Fake:
        def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
            self.headers = headers

    keys = {
        stage.credential(Fake(h))  # type: ignore[arg-type]
        for h in (
            [],
            [(b"Authorization", b"a")],
            [(b"Cookie", b"a")],
            [(b"Authorization", b"a"), (b"Cookie", b"b")],
            [(b"Authorization", b"ab")],
            [(b"Authorization", b"a"), (b"Authorization", b"b")],
        )
    }
    assert len(keys) == 6
    assert stage.credential(Fake([(b"authorization", b"a"), (b"X", b"y")])) == stage.credential(  # type: ignore[arg-type]
        Fake([(b"Authorization", b"a")])  # type: ignore[arg-type]
    )


def test_counters_reach_the_metrics() -> None:
    from prometheus_client import generate_latest

    from edgeproxy.ops.metrics import Metrics
    from edgeproxy.tls.certificates import CertificateIndex

    rig = Rig()
    rig.client(get(b"/app/x"))
    rig.refuse()
    metrics = Metrics()
    metrics.watch(
        lambda: rig.pipeline.snapshot,
        CertificateIndex.empty,
        lambda: 1,
        auth=rig.pipeline.auth.figures,
    )
    text = generate_latest(metrics.registry).decode()
    assert 'edgeproxy_auth_decisions_total{result="unavailable",route="shop.example/app/"} 1.0' in text


# -- no cyclic garbage ----------------------------------------------------------------


class CycleRig:
    def __init__(self) -> None:
        self.reactor = MemoryReactorClock()
        self.factory, self.pipeline = proxy_factory(self.reactor, CONFIG, tls=True)
        self.started = 0

    def client(self, path: bytes) -> SocketLike:
        address = IPv4Address("TCP", "192.0.2.9", 5555)
        channel: Any = self.factory.buildProtocol(address)
        transport = SocketLike(self.reactor, channel, peerAddress=address)
        channel.makeConnection(transport)
        channel.dataReceived(get(path, b"Authorization: Bearer x\r\n"))
        return transport

    def accept(self) -> SocketLike:
        host, port, factory, _, _ = self.reactor.tcpClients[self.started]
        self.started += 1
        protocol: Any = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = SocketLike(self.reactor, protocol)
        protocol.makeConnection(transport)
        return transport

    def turn(self, seconds: float = 0) -> None:
        self.reactor.advance(seconds)
        self.reactor.advance(0)


CLOSE_ALLOW = b"HTTP/1.1 200 OK\r\nX-User: a\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
CLOSE_OK = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"


def allowed(rig: CycleRig) -> None:
    client = rig.client(b"/app/x")
    rig.accept().protocol.dataReceived(CLOSE_ALLOW)
    rig.accept().protocol.dataReceived(CLOSE_OK)
    rig.turn()
    assert client.value().endswith(b"ok")
    client.lost(ConnectionDone())
    rig.turn()


def denied_streamed(rig: CycleRig) -> None:
    client = rig.client(b"/app/x")
    auth = rig.accept()
    auth.protocol.dataReceived(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 4\r\n\r\nno")
    auth.protocol.dataReceived(b"pe")
    rig.turn()
    assert client.value().startswith(b"HTTP/1.1 401")
    client.lost(ConnectionDone())
    auth.lost(ConnectionDone())
    rig.turn()


def refused(rig: CycleRig) -> None:
    client = rig.client(b"/app/x")
    factory = rig.reactor.tcpClients[rig.started][2]
    rig.started += 1
    factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))  # type: ignore[arg-type]
    rig.turn()
    assert client.value().startswith(b"HTTP/1.1 503")
    client.lost(ConnectionDone())
    rig.turn()


def timed_out(rig: CycleRig) -> None:
    client = rig.client(b"/tiny/x")
    rig.accept()
    rig.turn(3)
    assert client.value().startswith(b"HTTP/1.1 503")
    client.lost(ConnectionDone())
    rig.turn()


def oversized(rig: CycleRig) -> None:
    client = rig.client(b"/tiny/x")
    rig.accept().protocol.dataReceived(
        b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 100\r\n\r\n" + b"x" * 50
    )
    rig.turn()
    assert client.value().startswith(b"HTTP/1.1 503")
    client.lost(ConnectionDone())
    rig.turn()


def client_gone_waiting(rig: CycleRig) -> None:
    client = rig.client(b"/app/x")
    auth = rig.accept()
    client.lost(ConnectionLost())
    rig.turn()
    assert auth.closed


SCENARIOS = {
    "allowed": allowed,
    "denied, body in two reads": denied_streamed,
    "refused": refused,
    "timed out": timed_out,
    "denial over max_response_body": oversized,
    "client gone while waiting": client_gone_waiting,
}


def scenario(name: str) -> list[str]:
    rig = CycleRig()
    return garbage_of(partial(SCENARIOS[name], rig), warm=3, runs=10)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_forward_auth_leaves_no_cyclic_garbage(name: str) -> None:
    assert garbage_in_fresh_interpreter("tests.proxy.test_forwardauth", "scenario", name) == []


def test_the_stage_sits_after_the_rate_limit_and_before_the_cache() -> None:
    from edgeproxy.config import Cache, RateLimit

    route = Route("/", WEB, auth=AUTH, cache=Cache(), rate_limit=RateLimit(rate=5.0), allow=["0.0.0.0/0"])
    config = make_config(VirtualHost(["shop.example"], routes=[route]))
    _, pipeline = proxy_factory(MemoryReactorClock(), config)
    assert isinstance(pipeline, Pipeline)
    names = [type(s).__name__ for s in pipeline.plan.chains[True][id(route)].stages]
    assert names == [
        "AccessRules",
        "RateLimitStage",
        "BodyLimit",
        "ForwardAuthStage",
        "CacheStage",
        "ForwardStage",
    ]


def test_a_failing_auth_service_is_logged_once_per_cause_until_it_answers() -> None:
    rig = Rig()
    with capturedLogs() as events:
        for _ in range(3):
            client = rig.client(get(b"/app/x"))
            rig.refuse()
            assert head_lines(client.value())[0] == b"HTTP/1.1 503 Service Unavailable"
        client = rig.client(get(b"/app/x"))
        auth, _ = rig.accept("10.0.0.53:9400")
        auth.dataReceived(
            b"HTTP/1.1 401 Unauthorized\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        )
        client = rig.client(get(b"/app/x"))
        rig.refuse()
    said = [formatEvent(e) for e in events if e.get("log_namespace", "").endswith("ForwardAuthStage")]
    url = "http://10.0.0.53:9400/check?site=shop"
    unavailable = f"forward auth {url}: the auth service is unavailable (connect refused)"
    assert [line.split(": its routes")[0] for line in said] == [
        unavailable,
        f"forward auth {url}: the auth service answers again",
        unavailable,
    ]


HTTPS_AUTH = ForwardAuth("https://auth.internal:9443/check", response_headers=["X-User"])


def test_an_https_auth_service_is_asked_through_its_tls_pool_kept_across_reloads() -> None:
    route = Route("/", WEB, auth=HTTPS_AUTH)
    config = make_config(VirtualHost(["shop.example"], routes=[route]))
    _, pipeline = proxy_factory(MemoryReactorClock(), config)
    forwarder = pipeline.forwarder
    [stage] = [
        s for s in pipeline.plan.chains[True][id(route)].stages if isinstance(s, ForwardAuthStage)
    ]
    files = auth_tls_files(route, config)
    assert files is not None and files.settings == UpstreamTLS()
    pool = stage.upstream
    assert pool is forwarder.upstream_for(files) and pool is not forwarder.upstream
    assert pool.tls is not None and pool.tls.name_for("auth.internal", 9443) == "auth.internal"
    # A reload that keeps the auth service keeps its pool (and its connections, its sessions).
    pipeline.swap(Snapshot.build(config, MemoryReactorClock(), random.Random(1)))
    assert pool in forwarder.pools()
    # One that drops it closes it.
    plain = Route("/", WEB)
    pipeline.swap(
        Snapshot.build(
            make_config(VirtualHost(["shop.example"], routes=[plain])),
            MemoryReactorClock(),
            random.Random(1),
        )
    )
    assert forwarder.pools() == [forwarder.upstream]


def test_an_auth_ca_file_that_was_not_loaded_is_never_skipped() -> None:
    route = Route(
        "/", WEB, auth=ForwardAuth("https://auth.internal/", tls=UpstreamTLS(ca_file="ca.pem"))
    )
    config = make_config(VirtualHost(["shop.example"], routes=[route]))
    with pytest.raises(ValueError, match="TLS files were not loaded"):
        auth_tls_files(route, config)
    assert auth_tls_files(Route("/", WEB, auth=AUTH), config) is None
