"""``VirtualHost(hsts=HSTS(...))``: ``Strict-Transport-Security`` on every
response of the virtual host over TLS (relayed, made by edgeproxy, from the
cache), in place of any the backend sends; never over plain http."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock, StringTransport

from edgeproxy.config import HSTS, Cluster, Route, VirtualHost
from tests.memproxy import accept_upstream, connect_client, make_config, proxy_factory

WEB = Cluster("web", endpoints=["10.0.0.1:80"])
CONFIG = make_config(
    VirtualHost(
        ["shop.example"],
        routes=[Route("/app/", WEB, plain_http=True)],
        hsts=HSTS(max_age=600, include_subdomains=False),
    ),
    VirtualHost(["plain.example"], routes=[Route("/", WEB)]),
)
STS = b"Strict-Transport-Security: max-age=600\r\n"


def exchange(tls: bool, host: bytes, path: bytes, answer: bytes | None = None) -> bytes:
    reactor = MemoryReactorClock()
    factory, _ = proxy_factory(reactor, CONFIG, tls=tls)
    channel: Any
    channel, transport = connect_client(factory)
    channel.dataReceived(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, host))
    if answer is not None:
        protocol, _, _ = accept_upstream(reactor)
        protocol.dataReceived(answer)
    assert isinstance(transport, StringTransport)
    return transport.value().split(b"\r\n\r\n")[0] + b"\r\n"


def test_a_relayed_response_over_tls_carries_the_virtual_hosts_policy_only() -> None:
    head = exchange(
        True,
        b"shop.example",
        b"/app/x",
        b"HTTP/1.1 200 OK\r\nStrict-Transport-Security: max-age=5\r\nContent-Length: 0\r\n\r\n",
    )
    assert head.count(b"Strict-Transport-Security") == 1 and STS in head


def test_an_answer_made_by_edgeproxy_over_tls_carries_it_too() -> None:
    head = exchange(True, b"shop.example", b"/nowhere")
    assert head.startswith(b"HTTP/1.1 404 ") and STS in head


@pytest.mark.parametrize(("host", "path"), [(b"shop.example", b"/app/x"), (b"plain.example", b"/")])
def test_never_over_plain_http_and_never_for_another_virtual_host(host: bytes, path: bytes) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    plain = exchange(False, host, path, answer if host == b"shop.example" else None)
    assert b"Strict-Transport-Security" not in plain
    if host == b"plain.example":
        assert b"Strict-Transport-Security" not in exchange(True, host, path, answer)


def test_the_header_value_follows_the_settings() -> None:
    assert HSTS().value == "max-age=31536000; includeSubDomains"
    assert HSTS(63072000, preload=True).value == "max-age=63072000; includeSubDomains; preload"
    assert HSTS(0, include_subdomains=False).value == "max-age=0"
    with pytest.raises(ValueError, match="preload needs"):
        HSTS(600, preload=True)
    with pytest.raises(ValueError, match="preload needs"):
        HSTS(include_subdomains=False, preload=True)
    with pytest.raises(TypeError):
        VirtualHost(["a.example"], routes=[Route("/", WEB)], hsts="max-age=1")  # type: ignore[arg-type]
