"""``allow``/``deny`` on a route and its virtual host (edgeproxy.proxy.stages.AccessRules):
403 at head time, before the body is read, nothing forwarded."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock

from edgeproxy.config import Cluster, Route, VirtualHost
from edgeproxy.proxy.stages import AccessRules, BodyLimit
from tests.memproxy import connect_client, make_config, proxy_factory

# The kit's clients come from 192.0.2.9.
WEB = Cluster("web", endpoints=["10.0.0.1:80"])
CONFIG = make_config(
    VirtualHost(
        ["shop.example"],
        routes=[
            Route("/open/", WEB),
            Route("/denied/", WEB, deny=["192.0.2.0/24"]),
            Route("/office/", WEB, allow=["10.0.0.0/8", "2001:db8::/32"]),
            Route("/mine/", WEB, allow="192.0.2.9"),
            Route("/mine-but/", WEB, allow=["192.0.2.0/24"], deny=["192.0.2.9/32"]),
        ],
    ),
    VirtualHost(["staff.example"], routes=[Route("/", WEB)], allow=["10.0.0.0/8"]),
    VirtualHost(
        ["both.example"], routes=[Route("/", WEB, allow=["192.0.2.9"])], allow=["10.0.0.0/8"]
    ),
)


def status(host: bytes, path: bytes, declared: int = 0) -> tuple[bytes, int]:
    """The status line of the answer to a POST (none yet: forwarded) and the
    upstream connections asked for; ``declared`` is its Content-Length (no body sent)."""
    reactor = MemoryReactorClock()
    factory, _ = proxy_factory(reactor, CONFIG)
    channel: Any
    channel, transport = connect_client(factory)
    length = b"Content-Length: %d\r\n" % declared if declared else b""
    channel.dataReceived(b"POST %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (path, host, length))
    return transport.value().split(b"\r\n", 1)[0], len(reactor.tcpClients)


@pytest.mark.parametrize(
    ("host", "path", "allowed"),
    [
        (b"shop.example", b"/open/x", True),
        (b"shop.example", b"/denied/x", False),
        (b"shop.example", b"/office/x", False),
        (b"shop.example", b"/mine/x", True),
        (b"shop.example", b"/mine-but/x", False),  # deny wins over allow
        (b"staff.example", b"/x", False),  # the virtual host's allow
        (b"both.example", b"/x", False),  # both lists must allow it
    ],
)
def test_allow_and_deny(host: bytes, path: bytes, allowed: bool) -> None:
    line, upstreams = status(host, path)
    if allowed:
        assert (line, upstreams) == (b"", 1)  # forwarded: waiting for the upstream
    else:
        assert (line, upstreams) == (b"HTTP/1.1 403 Forbidden", 0)


def test_a_refused_client_gets_403_even_for_a_body_over_the_limit() -> None:
    # The first refusal is the answer: the address, before the body limit.
    line, _ = status(b"shop.example", b"/denied/x", declared=65 * 2**20)
    assert line == b"HTTP/1.1 403 Forbidden"


def test_only_routes_with_rules_get_the_stage_and_it_comes_first() -> None:
    _, pipeline = proxy_factory(MemoryReactorClock(), CONFIG)
    routes = {r.prefix: r for r in CONFIG.virtual_hosts[0].routes}
    chains = pipeline.plan.chains[True]
    assert type(chains[id(routes["/open/"])].stages[0]) is BodyLimit
    assert [type(s) for s in chains[id(routes["/denied/"])].stages[:2]] == [AccessRules, BodyLimit]


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (["10.0.0.0/33"], ValueError, "not an address or network"),
        (["nonsense"], ValueError, "not an address or network"),
        ([10], TypeError, "a network must be a string"),
        (b"10.0.0.0/8", TypeError, "allow and deny are lists"),
    ],
)
def test_networks_are_checked(value: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        Route("/", WEB, allow=value)  # type: ignore[arg-type]
    with pytest.raises(error, match=message):
        VirtualHost(["a.example"], routes=[Route("/", WEB)], deny=value)  # type: ignore[arg-type]


def test_a_refused_request_without_a_body_keeps_its_connection() -> None:
    """As nginx does for a 403 or a 429: nothing of the request is left to
    read, so the next one on the connection is served."""
    reactor = MemoryReactorClock()
    factory, _ = proxy_factory(reactor, CONFIG)
    channel: Any
    channel, transport = connect_client(factory)
    channel.dataReceived(
        b"GET /denied/x HTTP/1.1\r\nHost: shop.example\r\n\r\n"
        b"GET /open/x HTTP/1.1\r\nHost: shop.example\r\n\r\n"
    )
    assert transport.value().startswith(b"HTTP/1.1 403 ")
    assert b"Connection: close" not in transport.value()
    assert not transport.disconnecting
    assert len(reactor.tcpClients) == 1  # the second request, forwarded


def test_a_refused_request_with_a_body_closes_after_the_answer() -> None:
    """Its body is read and dropped (lingering), and the connection closes:
    what follows would have to be found after a body edgeproxy did not want."""
    reactor = MemoryReactorClock()
    factory, _ = proxy_factory(reactor, CONFIG)
    channel: Any
    channel, transport = connect_client(factory)
    channel.dataReceived(
        b"POST /denied/x HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 4\r\n\r\nbody"
    )
    assert transport.value().startswith(b"HTTP/1.1 403 ")
    assert b"Connection: close" in transport.value()
    assert transport.disconnecting
    assert reactor.tcpClients == []
