"""
The accept-time limits through the real ``twistd edgeproxy``
(``--max-connections``, ``--max-connections-per-client``,
``--max-connection-rate-per-client``, ``--deny``), from several client
addresses on loopback: a connection over a limit is closed at accept without
a byte (no ServerHello, no TLS layer: the handshake counters do not move),
counted in ``edgeproxy_connections_refused_total``, while other clients are
served; a place is given back when its connection closes.  With the PROXY
protocol the client is the one the header names, not the balancer.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.certutil import client_context
from tests.e2e.conftest import check_tls_layer, write_config
from tests.e2e.harness import BackendServer, ProxyProcess, request
from tests.e2e.test_proxy_protocol import v1_header, v2_header

CONFIG = """
from edgeproxy.config import Cluster, Route, VirtualHost

app = Cluster("app", endpoints=["{app}"])
virtual_hosts = [VirtualHost(["shop.example"], routes=[Route("/", app, plain_http=True)])]
"""

HOST = "shop.example"


@pytest.fixture
def certs(tmp_path: Path, ca: trustme.CA) -> Path:
    directory = tmp_path / "certs"
    directory.mkdir()
    ca.issue_cert(HOST).private_key_and_cert_chain_pem.write_to_path(str(directory / "shop.pem"))
    return directory


@pytest.fixture
def start(
    tmp_path: Path, certs: Path, backend: BackendServer
) -> Iterator[Callable[..., ProxyProcess]]:
    started: list[ProxyProcess] = []

    def make(*args: str, https: bool = True, http: bool = True) -> ProxyProcess:
        config = write_config(tmp_path / "site.py", CONFIG.format(app=backend.address))
        proxy = ProxyProcess(tmp_path, config, certs, args, https=https, http=http).start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


class Client:
    """One client connection from ``source``: TLS (or plain HTTP) and one request."""

    def __init__(
        self, port: int, source: str, ctx: ssl.SSLContext | None, header: bytes = b""
    ) -> None:
        sock = socket.create_connection(("127.0.0.1", port), 5, source_address=(source, 0))
        sock.sendall(header)
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        self.conn.sock = ctx.wrap_socket(sock, server_hostname=HOST) if ctx else sock

    def get(self) -> int:
        response, _ = request(self.conn, "GET", "/", HOST)
        return response.status

    def close(self) -> None:
        self.conn.close()


def served(port: int, source: str, ctx: ssl.SSLContext | None) -> Client:
    """A connection from ``source`` that was let in: a request over it is answered."""
    client = Client(port, source, ctx)
    assert client.get() == 200
    return client


def closed_at_accept(port: int, source: str) -> None:
    """A connection from ``source`` is closed by the proxy without a byte: it sends
    nothing and waits, so the proxy's close is a clean FIN, never a reset."""
    with socket.create_connection(("127.0.0.1", port), 5, source_address=(source, 0)) as sock:
        assert sock.recv(1) == b""


def metrics(proxy: ProxyProcess) -> str:
    url = f"http://127.0.0.1:{proxy.ports['admin']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as answer:
        text: str = answer.read().decode()
    return text


def sample(text: str, name: str, labels: str = "") -> float:
    """The value of one sample (``labels`` as in the text, e.g. ``reason="deny"``); 0 if absent."""
    line = re.search(
        rf"^{name}{{{re.escape(labels)}}} (\S+)$" if labels else rf"^{name} (\S+)$", text, re.M
    )
    return float(line.group(1)) if line else 0.0


def refused(proxy: ProxyProcess) -> dict[str, float]:
    text = metrics(proxy)
    return {
        reason: sample(text, "edgeproxy_connections_refused_total", f'reason="{reason}"')
        for reason in ("max_connections", "per_client", "rate", "deny")
    }


def handshakes(proxy: ProxyProcess) -> tuple[float, float]:
    """TLS handshakes completed, and TLS connections that ended before theirs did."""
    text = metrics(proxy)
    done = sum(
        float(v) for v in re.findall(r"^edgeproxy_tls_handshakes_total\{[^}]*\} (\S+)$", text, re.M)
    )
    failed = sum(
        float(v)
        for v in re.findall(r"^edgeproxy_tls_handshake_failures_total\{[^}]*\} (\S+)$", text, re.M)
    )
    return done, failed


def wait_for_open(proxy: ProxyProcess, listener: str, count: int) -> None:
    """Until the proxy has seen closes down to ``count`` open connections on ``listener``."""
    deadline = time.monotonic() + 5
    while sample(metrics(proxy), "edgeproxy_active_connections", f'listener="{listener}"') != count:
        assert time.monotonic() < deadline, f"{listener} connections never came down to {count}"
        time.sleep(0.02)


def test_per_client_cap_closes_the_third_at_accept_and_frees_on_close(
    start: Callable[..., ProxyProcess], ca: trustme.CA, tls_layer: tuple[str, ...]
) -> None:
    proxy = start("--max-connections-per-client", "2", *tls_layer)
    check_tls_layer(proxy, tls_layer)
    port, ctx = proxy.ports["https"], client_context(ca)
    first, second = served(port, "127.0.0.2", ctx), served(port, "127.0.0.2", ctx)
    assert handshakes(proxy) == (2, 0)
    closed_at_accept(port, "127.0.0.2")
    # The plain listener counts toward the same client's cap.
    closed_at_accept(proxy.ports["http"], "127.0.0.2")
    other = served(port, "127.0.0.3", ctx)
    assert refused(proxy) == {"max_connections": 0, "per_client": 2, "rate": 0, "deny": 0}
    # No TLS work for the refused ones: three handshakes, the served ones, and no failure.
    assert handshakes(proxy) == (3, 0)
    proxy.wait_for_output(r"connection from 127\.0\.0\.2 closed at accept on https: per_client")
    first.close()
    wait_for_open(proxy, "https", 2)
    third = served(port, "127.0.0.2", ctx)
    closed_at_accept(port, "127.0.0.2")
    # A keep-alive connection keeps its place between requests.
    assert second.get() == 200
    for client in (second, third, other):
        client.close()
    wait_for_open(proxy, "https", 0)
    assert refused(proxy)["per_client"] == 3


def test_max_connections_covers_every_client_listener(
    start: Callable[..., ProxyProcess], ca: trustme.CA
) -> None:
    proxy = start("--max-connections", "2")
    ctx = client_context(ca)
    https, plain = proxy.ports["https"], proxy.ports["http"]
    first = served(https, "127.0.0.2", ctx)
    second = served(plain, "127.0.0.3", None)
    closed_at_accept(https, "127.0.0.4")
    closed_at_accept(plain, "127.0.0.4")
    assert refused(proxy)["max_connections"] == 2
    assert handshakes(proxy) == (1, 0)
    # The admin listener is not counted.
    assert "edgeproxy_connections_refused_total" in metrics(proxy)
    second.close()
    wait_for_open(proxy, "http", 0)
    served(https, "127.0.0.4", ctx).close()
    first.close()


def test_the_connection_rate_allows_a_burst_per_client(
    start: Callable[..., ProxyProcess], ca: trustme.CA
) -> None:
    # One new connection every 10 s after a burst of 3: the fourth within 10 s is refused.
    proxy = start("--max-connection-rate-per-client", "0.1:3")
    ctx = client_context(ca)
    port = proxy.ports["https"]
    for _ in range(3):
        served(port, "127.0.0.2", ctx).close()
    closed_at_accept(port, "127.0.0.2")
    served(port, "127.0.0.3", ctx).close()
    assert refused(proxy) == {"max_connections": 0, "per_client": 0, "rate": 1, "deny": 0}
    assert handshakes(proxy) == (4, 0)


def test_deny_closes_at_accept_on_https_and_http(
    start: Callable[..., ProxyProcess], ca: trustme.CA
) -> None:
    proxy = start("--deny", "127.0.0.2/32", "--deny", "192.0.2.0/24")
    ctx = client_context(ca)
    for port in (proxy.ports["https"], proxy.ports["http"]):
        closed_at_accept(port, "127.0.0.2")
    served(proxy.ports["https"], "127.0.0.3", ctx).close()
    served(proxy.ports["http"], "127.0.0.3", None).close()
    assert refused(proxy) == {"max_connections": 0, "per_client": 0, "rate": 0, "deny": 2}
    assert handshakes(proxy) == (1, 0)


def test_a_flood_of_refusals_is_logged_once_a_second(
    start: Callable[..., ProxyProcess], ca: trustme.CA
) -> None:
    proxy = start("--deny", "127.0.0.2/32")
    began = time.monotonic()
    for _ in range(100):
        closed_at_accept(proxy.ports["https"], "127.0.0.2")
    line = proxy.wait_for_output(r"closed \d+ more connection\(s\) at accept", 5)
    elapsed = time.monotonic() - began
    assert "deny=" in line
    assert refused(proxy)["deny"] == 100
    lines = [line for line in proxy.output if "at accept" in line]
    assert 2 <= len(lines) <= elapsed + 3


# --- PROXY protocol: the client is the one the header names ---------------------------------


def test_proxied_clients_are_judged_by_the_header_not_the_balancer(
    start: Callable[..., ProxyProcess], ca: trustme.CA
) -> None:
    listener = "haproxy:tcp:0:interface=127.0.0.1"
    proxy = start(
        "--https", listener, "--http", listener,
        "--max-connections-per-client", "1",
        "--deny", "203.0.113.66/32",
        https=False, http=False,
    )  # fmt: skip
    proxy.wait_for_output(r"edgeproxy http listener on", 5)
    ctx = client_context(ca)
    https, plain = proxy.ports["https"], proxy.ports["http"]

    def through(port: int, client: str, tls: bool, make_header: Any = v1_header) -> Client:
        # Every connection comes from the balancer, 127.0.0.1.
        return Client(
            port, "127.0.0.1", ctx if tls else None, make_header(client, "127.0.0.1", 5555, 443)
        )

    kept = through(https, "203.0.113.9", True)
    assert kept.get() == 200
    # The same client again (a v2 header this time): over its cap, before any TLS;
    # the proxy has read the header and the ClientHello, and resets the connection.
    with pytest.raises(ConnectionResetError):
        through(https, "203.0.113.9", True, v2_header)
    # Another client through the same balancer is served.
    other = through(https, "203.0.113.10", True)
    assert other.get() == 200
    # A denied client, on both listeners: reset once its header is read.
    with pytest.raises(ConnectionResetError):
        through(https, "203.0.113.66", True)
    denied = through(plain, "203.0.113.66", False)
    denied.conn.sock.sendall(b"GET / HTTP/1.1\r\nHost: shop.example\r\n\r\n")
    with pytest.raises(ConnectionResetError):
        denied.conn.sock.recv(1)
    denied.close()
    assert refused(proxy) == {"max_connections": 0, "per_client": 1, "rate": 0, "deny": 2}
    assert handshakes(proxy) == (2, 0)
    proxy.wait_for_output(r"connection from 203\.0\.113\.9 closed at accept on https: per_client")
    kept.close()
    wait_for_open(proxy, "https", 1)
    again = through(https, "203.0.113.9", True)
    assert again.get() == 200
    body = json.loads(request(again.conn, "GET", "/", HOST)[1])
    assert dict(body["headers"])["X-Forwarded-For"] == "203.0.113.9"
    again.close()
    other.close()


def test_every_worker_applies_the_limits(
    start: Callable[..., ProxyProcess], ca: trustme.CA
) -> None:
    # The workers parse the same options: whichever accepts, .2 is closed at accept.
    proxy = start("--workers", "2", "--deny", "127.0.0.2/32")
    for index in (0, 1):
        proxy.wait_for_output(rf"edgeproxy worker {index} serving", 10)
    ctx = client_context(ca)
    for _ in range(10):
        closed_at_accept(proxy.ports["https"], "127.0.0.2")
        served(proxy.ports["https"], "127.0.0.3", ctx).close()
    proxy.wait_for_output(r"closed at accept on https: deny", 5)


def test_a_trusted_forwarder_is_exempt_from_the_per_client_cap(
    start: Callable[..., ProxyProcess],
) -> None:
    """A balancer that does not send the PROXY protocol brings every client from
    its own address: named in --trusted-source, it is not held to one client's cap."""
    proxy = start(
        "--max-connections-per-client", "1", "--trusted-source", "127.0.0.2/32", https=False
    )
    port = proxy.ports["http"]
    forwarder = [served(port, "127.0.0.2", None) for _ in range(3)]
    client = served(port, "127.0.0.3", None)
    closed_at_accept(port, "127.0.0.3")
    assert refused(proxy)["per_client"] == 1
    for connection in [*forwarder, client]:
        connection.close()
