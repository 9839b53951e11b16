"""
``--trusted-source``: forwarding headers from a trusted forwarder are kept and
appended to, and name the client; from anyone else they are replaced.  Driven
in memory (tests/memproxy.py); the client connects from 192.0.2.9.
"""

from __future__ import annotations

import ipaddress

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from edgeproxy.config import Cluster, Route, VirtualHost
from edgeproxy.config.settings import Settings
from edgeproxy.proxy.exchange import Exchange
from tests.memproxy import accept_upstream, connect_client, make_config, proxy_factory

APP = Cluster("app", endpoints=["10.0.0.1:80"])
CONFIG = make_config(
    VirtualHost(
        ["shop.example"],
        routes=[
            Route("/closed/", APP, deny=["203.0.113.0/24"]),
            Route("/", APP),
        ],
    )
)


def forwarded(
    head: bytes, *, trusted: tuple[str, ...], peer: str = "192.0.2.9"
) -> tuple[bytes, Exchange | None, StringTransport]:
    """What the upstream is sent for ``head`` from ``peer``, the exchange
    (None once answered) and the client's transport."""
    reactor = MemoryReactorClock()
    settings = Settings(trusted_sources=tuple(ipaddress.ip_network(n) for n in trusted))
    factory, _ = proxy_factory(reactor, CONFIG, settings=settings)
    address = IPv4Address("TCP", peer, 5555)
    channel, client = connect_client(factory, StringTransport(peerAddress=address))
    channel.dataReceived(head)
    exchange = channel.requests[0] if channel.requests else None
    if not reactor.tcpClients:
        return b"", exchange, client
    _, upstream, _ = accept_upstream(reactor)
    return upstream.value(), exchange, client


HEAD = (
    b"GET / HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-For: 203.0.113.7, 10.1.1.1\r\n"
    b"Forwarded: for=203.0.113.7\r\nX-Request-Id: from-outside\r\n\r\n"
)


def test_without_trusted_sources_the_chain_is_appended_unverified() -> None:
    sent, exchange, _ = forwarded(HEAD, trusted=())
    assert b"X-Forwarded-For: 203.0.113.7, 10.1.1.1, 192.0.2.9\r\n" in sent
    assert b"Forwarded: for=203.0.113.7, for=192.0.2.9;" in sent
    assert exchange is not None and exchange.client_ip == "192.0.2.9"
    assert b"X-Request-Id: from-outside" not in sent


def test_from_an_untrusted_peer_the_chain_is_replaced() -> None:
    sent, exchange, _ = forwarded(HEAD, trusted=("10.0.0.0/8",))
    assert b"X-Forwarded-For: 192.0.2.9\r\n" in sent
    assert b"203.0.113.7" not in sent
    assert b"Forwarded: for=192.0.2.9;" in sent
    assert exchange is not None and exchange.client_ip == "192.0.2.9"
    assert b"X-Request-Id: from-outside" not in sent


def test_from_a_trusted_peer_the_chain_is_kept_and_names_the_client() -> None:
    sent, exchange, _ = forwarded(
        HEAD.replace(b"GET / ", b"GET /open "), trusted=("10.0.0.0/8", "192.0.2.9/32")
    )
    # The peer is appended: each hop adds the address it was reached from.
    assert b"X-Forwarded-For: 203.0.113.7, 10.1.1.1, 192.0.2.9\r\n" in sent
    assert b"Forwarded: for=203.0.113.7, for=192.0.2.9;" in sent
    assert exchange is not None and exchange.client_ip == "203.0.113.7"
    assert exchange.peer_ip == "192.0.2.9"
    assert b"X-Request-Id: from-outside\r\n" in sent


def test_forwarded_names_the_client_when_there_is_no_x_forwarded_for() -> None:
    head = b'GET / HTTP/1.1\r\nHost: shop.example\r\nForwarded: for="[2001:db8::7]:99"\r\n\r\n'
    _, exchange, _ = forwarded(head, trusted=("192.0.2.0/24",))
    assert exchange is not None and exchange.client_ip == "2001:db8::7"


def test_rules_judge_the_client_a_trusted_forwarder_names() -> None:
    head = HEAD.replace(b"GET / ", b"GET /closed/x ")
    sent, exchange, client = forwarded(head, trusted=("10.0.0.0/8", "192.0.2.9/32"))
    assert sent == b""
    assert client.value().startswith(b"HTTP/1.1 403 ")
    # The same chain from an untrusted peer: its claim is not believed, and not held against it.
    sent, exchange, client = forwarded(head, trusted=("10.0.0.0/8",))
    assert exchange is not None and exchange.client_ip == "192.0.2.9"
    assert sent.startswith(b"GET /closed/x HTTP/1.1\r\n")


def test_an_ipv4_client_of_a_dual_stack_listener_is_its_ipv4_address() -> None:
    from twisted.internet.address import IPv6Address

    reactor = MemoryReactorClock()
    factory, _ = proxy_factory(reactor, CONFIG)
    transport = StringTransport(peerAddress=IPv6Address("TCP", "::ffff:192.0.2.7", 5555))
    channel, _ = connect_client(factory, transport)
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: shop.example\r\n\r\n")
    assert channel.requests[0].client_ip == "192.0.2.7"
    _, upstream, _ = accept_upstream(reactor)
    assert b"X-Forwarded-For: 192.0.2.7\r\n" in upstream.value()


def test_the_peer_is_judged_once_a_proxy_protocol_header_has_named_it() -> None:
    """Behind Twisted's PROXY protocol wrapper the channel is connected before
    the header is read: the peer it names is judged, not the balancer."""
    reactor = MemoryReactorClock()
    trusted = ("198.51.100.0/24", "10.0.0.0/8")
    settings = Settings(trusted_sources=tuple(ipaddress.ip_network(n) for n in trusted))
    factory, _ = proxy_factory(reactor, CONFIG, settings=settings)
    # The balancer (192.0.2.1) is not trusted: were it judged, the chain would be replaced.
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 5555))
    channel, _ = connect_client(factory, transport)
    transport.peerAddr = IPv4Address("TCP", "198.51.100.4", 4000)  # the header, read
    channel.dataReceived(HEAD)
    assert channel.requests[0].client_ip == "203.0.113.7"
    _, upstream, _ = accept_upstream(reactor)
    assert b"X-Forwarded-For: 203.0.113.7, 10.1.1.1, 198.51.100.4\r\n" in upstream.value()
