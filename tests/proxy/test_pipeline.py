"""The per-route stage chain (edgeproxy.proxy.exchange's Stage and RouteChain,
edgeproxy.proxy.pipeline): which stages each route gets, how a chain links
them, and that a stage can answer, pass on, or watch and change the response
(the worked example of docs/architecture.md), driven in memory."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from edgeproxy.config import Cluster, Route, Split, VirtualHost
from edgeproxy.config.settings import DEFAULT_MAX_BODY_SIZE
from edgeproxy.core.errors import Outcome
from edgeproxy.proxy.exchange import Exchange, RouteChain, Stage
from edgeproxy.proxy.forward import ForwardStage, SplitStage
from edgeproxy.proxy.stages import BodyLimit, HttpsRedirect
from tests.memproxy import accept_upstream, connect_client, make_config, proxy_factory

API = Cluster("api", endpoints=["10.0.0.1:80"])
WEB = Cluster("web", endpoints=["10.0.0.3:80"])
CONFIG = make_config(
    VirtualHost(
        ["shop.example"],
        routes=[
            Route("/api/", API),
            Route("/small/", WEB, max_body_size=10),
            Route("/open/", WEB, plain_http=True),
            Route("/", Split({WEB: 1, API: 1})),
        ],
    )
)
ROUTES = {route.prefix: route for route in CONFIG.virtual_hosts[0].routes}


def chain_of(prefix: str, *, tls: bool) -> RouteChain:
    _, pipeline = proxy_factory(MemoryReactorClock(), CONFIG, tls=tls)
    return pipeline.plan.chains[tls][id(ROUTES[prefix])]


def kinds(chain: RouteChain) -> list[type]:
    return [type(stage) for stage in chain.stages]


# -- what each route gets ----------------------------------------------------------


def test_a_cluster_route_on_tls_limits_the_body_then_forwards() -> None:
    chain = chain_of("/api/", tls=True)
    assert kinds(chain) == [BodyLimit, ForwardStage]
    limit = chain.stages[0]
    assert isinstance(limit, BodyLimit) and limit.limit == DEFAULT_MAX_BODY_SIZE
    assert chain.at_head == (limit,)
    assert chain.run == chain.stages[1].handle


def test_the_route_body_limit_wins_over_the_listener_default() -> None:
    limit = chain_of("/small/", tls=True).stages[0]
    assert isinstance(limit, BodyLimit) and limit.limit == 10


def test_plain_http_redirects_unless_the_route_allows_plain_http() -> None:
    assert kinds(chain_of("/api/", tls=False)) == [BodyLimit, HttpsRedirect]
    assert kinds(chain_of("/open/", tls=False)) == [BodyLimit, ForwardStage]
    assert kinds(chain_of("/open/", tls=True)) == [BodyLimit, ForwardStage]


def test_a_split_route_ends_with_the_split_choice() -> None:
    assert kinds(chain_of("/", tls=True)) == [BodyLimit, SplitStage]


def test_every_route_has_a_chain_for_each_listener_kind() -> None:
    _, pipeline = proxy_factory(MemoryReactorClock(), CONFIG)
    plain, tls = pipeline.plan.chains
    assert set(plain) == set(tls) == {id(route) for route in ROUTES.values()}
    assert [type(s) for s in pipeline.plan.unrouted_at_head] == [BodyLimit]


def test_a_swap_makes_new_chains_and_keeps_the_old_plan_whole() -> None:
    _, pipeline = proxy_factory(MemoryReactorClock(), CONFIG)
    old = pipeline.plan
    pipeline.swap(old.snapshot)
    assert pipeline.plan is not old
    assert (
        pipeline.plan.chains[True][id(ROUTES["/api/"])] is not old.chains[True][id(ROUTES["/api/"])]
    )
    assert old.chains[True][id(ROUTES["/api/"])].stages[0].limit == DEFAULT_MAX_BODY_SIZE  # type: ignore[attr-defined]


# -- how a chain links its stages -----------------------------------------------------


class Trace(Stage):
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    def handle(self, exchange: Exchange) -> None:
        self.log.append(self.name)
        self.next(exchange)


class Last(Stage):
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def handle(self, exchange: Exchange) -> None:
        self.log.append("last")


class HeadOnly(Stage):
    def on_head(self, exchange: Exchange) -> None:
        pass


def test_a_chain_runs_its_stages_in_order_and_skips_those_that_only_pass_on() -> None:
    log: list[str] = []
    head_only = HeadOnly()
    chain = RouteChain([Trace("a", log), head_only, Stage(), Trace("b", log), Last(log)])
    assert chain.at_head == (head_only,)
    chain.run(object())  # type: ignore[arg-type]
    assert log == ["a", "b", "last"]
    assert chain.run == chain.stages[0].handle


def test_a_chain_needs_a_stage_that_answers() -> None:
    with pytest.raises(ValueError, match="answers"):
        RouteChain([HeadOnly(), Stage()])


# -- the worked example of docs/architecture.md -------------------------------------


class DenyMethods(Stage):
    """Answers 405 for the methods it is given, before the body is read."""

    def __init__(self, methods: frozenset[bytes]) -> None:
        self.methods = methods

    def handle(self, exchange: Exchange) -> None:
        if exchange.method in self.methods:
            exchange.respond(405, [(b"Allow", b"GET, HEAD")], b"no\n", Outcome.REJECTED)
            return
        self.next(exchange)


class CountBytes(Stage):
    """Watches the response: adds a header, counts the body, hears the end."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def handle(self, exchange: Exchange) -> None:
        exchange.observe_response(self._Observer(self.seen))
        self.next(exchange)

    class _Observer:
        def __init__(self, seen: list[Any]) -> None:
            self.seen = seen
            self.body = 0

        def response_head(self, code: int, lines: list[bytes], length: int | None) -> None:
            lines.append(b"X-Stage: seen")
            self.seen.append(("head", code, length))

        def response_body(self, data: bytes) -> None:
            self.body += len(data)

        def response_end(self, complete: bool) -> None:
            self.seen.append(("end", complete, self.body))


class Rig:
    """The in-memory proxy with extra stages put in front of /api/'s forwarding."""

    def __init__(self, *extra: Stage) -> None:
        self.reactor = MemoryReactorClock()
        self.factory, self.pipeline = proxy_factory(self.reactor, CONFIG)
        chains = self.pipeline.plan.chains[True]
        route = ROUTES["/api/"]
        stages = list(chains[id(route)].stages)
        chains[id(route)] = RouteChain([stages[0], *extra, stages[-1]])
        self.channel, self.client = connect_client(self.factory)

    def upstream(self) -> Any:
        return accept_upstream(self.reactor)[0]


def test_a_stage_answers_without_forwarding() -> None:
    rig = Rig(DenyMethods(frozenset({b"DELETE"})))
    rig.channel.dataReceived(b"DELETE /api/x HTTP/1.1\r\nHost: shop.example\r\n\r\n")
    out = rig.client.value()
    assert out.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")
    assert b"\r\nAllow: GET, HEAD\r\n" in out and out.endswith(b"\r\n\r\nno\n")
    assert rig.reactor.tcpClients == []


def test_a_stage_passes_on_what_it_does_not_answer() -> None:
    rig = Rig(DenyMethods(frozenset({b"DELETE"})))
    rig.channel.dataReceived(b"GET /api/x HTTP/1.1\r\nHost: shop.example\r\n\r\n")
    assert len(rig.reactor.tcpClients) == 1


def test_a_stage_watches_and_changes_the_response_on_its_way_back() -> None:
    counter = CountBytes()
    rig = Rig(counter)
    rig.channel.dataReceived(b"GET /api/x HTTP/1.1\r\nHost: shop.example\r\n\r\n")
    rig.upstream().dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    out = rig.client.value()
    assert b"\r\nX-Stage: seen\r\n" in out and out.endswith(b"\r\n\r\nhello")
    assert counter.seen == [("head", 200, 5), ("end", True, 5)]


def test_an_observer_hears_a_response_that_never_ends() -> None:
    counter = CountBytes()
    rig = Rig(counter)
    rig.channel.dataReceived(b"GET /api/x HTTP/1.1\r\nHost: shop.example\r\n\r\n")
    upstream = rig.upstream()
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel")
    rig.channel.connectionLost(Failure(ConnectionDone()))
    assert counter.seen == [("head", 200, 10), ("end", False, 3)]
