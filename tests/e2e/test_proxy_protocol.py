"""
PROXY protocol (v1 and v2) on listeners described as ``haproxy:tcp:...``: the
header comes before TLS, and the client address edgeproxy uses (the access
log, ``X-Forwarded-For``, ``Forwarded``) is the one in the header.

The last test is the fleet in miniature: a small PROXY-protocol-speaking L4
front (a thread here, haproxy's ``send-proxy-v2`` in production) alternating
connections between two edgeproxy processes (one of them with ``--workers 2``)
that share a backend; every client's address survives both hops.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from tests.certutil import client_context
from tests.e2e.conftest import check_tls_layer, write_config
from tests.e2e.harness import BackendServer, ProxyProcess, request

CONFIG = """
from edgeproxy.config import Cluster, Route, VirtualHost

app = Cluster("app", endpoints=["{app}"])
virtual_hosts = [VirtualHost(["shop.example"], routes=[Route("/", app, plain_http=True)])]
"""

LOOPBACK = "haproxy:tcp:0:interface=127.0.0.1"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v1_header(src: str, dst: str, sport: int, dport: int) -> bytes:
    family = "TCP6" if ":" in src else "TCP4"
    return f"PROXY {family} {src} {dst} {sport} {dport}\r\n".encode("ascii")


def v2_header(src: str, dst: str, sport: int, dport: int) -> bytes:
    if ":" in src:
        family, packed = 0x21, socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(
            socket.AF_INET6, dst
        )
    else:
        family, packed = 0x11, socket.inet_aton(src) + socket.inet_aton(dst)
    addresses = packed + struct.pack("!HH", sport, dport)
    # Version 2, command PROXY; then the family/transport byte and the length.
    return V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(addresses)) + addresses


def exchange(
    port: int,
    header: bytes,
    ctx: ssl.SSLContext | None,
    source: str = "127.0.0.1",
) -> tuple[int, dict[str, str]]:
    """Connect from ``source``, write ``header``, then (TLS and) one request; the
    headers the backend saw."""
    sock = socket.create_connection(("127.0.0.1", port), 5, source_address=(source, 0))
    try:
        sock.sendall(header)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.sock = ctx.wrap_socket(sock, server_hostname="shop.example") if ctx else sock
        response, body = request(conn, "GET", "/", "shop.example")
        seen = dict(json.loads(body)["headers"]) if response.status == 200 else {}
        return response.status, seen
    finally:
        sock.close()


def start_proxy(tmp_path: Path, certs: Path, app: BackendServer, *args: str) -> ProxyProcess:
    tmp_path.mkdir(exist_ok=True)
    config = write_config(tmp_path / "site.py", CONFIG.format(app=app.address))
    proxy = ProxyProcess(
        tmp_path,
        config,
        certs,
        ["--https", LOOPBACK, "--http", LOOPBACK, *args],
        https=False,
        http=False,  # "--http none" first; the haproxy listener above is kept
    ).start()
    proxy.wait_for_output(r"edgeproxy http listener on", 5)
    assert {"https", "http"} <= set(proxy.ports), proxy.ports
    return proxy


@pytest.fixture(scope="module")
def proxy(
    tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA, tls_layer: tuple[str, ...]
) -> Iterator[ProxyProcess]:
    """One edgeproxy with PROXY protocol on both listeners, shared by the tests below;
    one per TLS layer (edgeproxy's and Twisted's)."""
    workdir = tmp_path_factory.mktemp("proxy-protocol")
    certs = workdir / "certs"
    certs.mkdir()
    ca.issue_cert("shop.example").private_key_and_cert_chain_pem.write_to_path(
        str(certs / "shop.pem")
    )
    app = BackendServer("app").start()
    proxy = start_proxy(workdir / "proxy", certs, app, *tls_layer)
    check_tls_layer(proxy, tls_layer)
    yield proxy
    proxy.stop()
    app.stop()


def access_clients(proxy: ProxyProcess) -> list[str]:
    return [
        m.group(1)
        for line in list(proxy.output)
        if (m := re.search(r"\[edgeproxy\.access#info[^\]]*\] (\S+) - - ", line))
    ]


@pytest.mark.parametrize(
    ("make_header", "client"),
    [
        (v1_header, "203.0.113.9"),
        (v2_header, "203.0.113.9"),
        (v1_header, "2001:db8::7"),
        (v2_header, "2001:db8::7"),
    ],
    ids=["v1", "v2", "v1-ipv6", "v2-ipv6"],
)
def test_https_client_address_comes_from_the_proxy_header(
    proxy: ProxyProcess,
    ca: trustme.CA,
    make_header: Callable[[str, str, int, int], bytes],
    client: str,
) -> None:
    local = "2001:db8::1" if ":" in client else "127.0.0.1"
    header = make_header(client, local, 5555, 443)
    mark = len(proxy.output)
    status, seen = exchange(proxy.ports["https"], header, client_context(ca))
    assert status == 200
    address = ipaddress.ip_address(client)
    # Twisted's v2 parser writes IPv6 addresses uncompressed (2001:db8:0:0:0:0:0:7);
    # edgeproxy puts the canonical text everywhere.
    assert seen["X-Forwarded-For"] == str(address)
    assert seen["X-Forwarded-Proto"] == "https"
    node = f'"[{address}]"' if address.version == 6 else client
    assert seen["Forwarded"].startswith(f"for={node};proto=https")
    line = proxy.wait_for_output(r"\[edgeproxy\.access#info\] .*\"GET / HTTP/1.1\" 200 ", 5, mark)
    assert line.split("] ", 1)[1].split(" ", 1)[0] == str(address)


def test_plain_http_listener_reads_the_header_too(proxy: ProxyProcess) -> None:
    status, seen = exchange(proxy.ports["http"], v1_header("198.51.100.4", "127.0.0.1", 4000, 80), None)
    assert status == 200
    assert seen["X-Forwarded-For"] == "198.51.100.4"
    assert seen["X-Forwarded-Proto"] == "http"


def test_a_connection_without_the_header_is_closed(proxy: ProxyProcess, ca: trustme.CA) -> None:
    # A direct TLS client: its ClientHello is not a PROXY header, so the
    # connection is dropped before any TLS (the listener trusts only its front).
    sock = socket.create_connection(("127.0.0.1", proxy.ports["https"]), 5)
    # The hello was read, so the close is a FIN (no reset) before any TLS byte.
    with pytest.raises(ssl.SSLEOFError):
        client_context(ca).wrap_socket(sock, server_hostname="shop.example")
    sock.close()
    # And the listener still works for the next, well-behaved connection.
    status, _ = exchange(
        proxy.ports["https"], v1_header("203.0.113.9", "127.0.0.1", 1, 443), client_context(ca)
    )
    assert status == 200


# --- two edgeproxy processes behind a PROXY-protocol-speaking L4 front ----------------------


class L4Front:
    """A tiny L4 balancer: round-robin over ``targets``, PROXY v2 header with the
    real client address first, then bytes both ways (haproxy ``mode tcp`` +
    ``send-proxy-v2``)."""

    def __init__(self, targets: list[int]) -> None:
        self.targets = targets
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.chosen: list[int] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, (src, sport) = self.listener.accept()
            except TimeoutError:
                continue
            target = self.targets[len(self.chosen) % len(self.targets)]
            self.chosen.append(target)
            upstream = socket.create_connection(("127.0.0.1", target), 5)
            upstream.sendall(v2_header(src, "127.0.0.1", sport, self.port))
            for a, b in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=self._pipe, args=(a, b), daemon=True)
                thread.start()
                self._threads.append(thread)

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        source.settimeout(10)
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self._stop.set()
        self._accept.join(5)
        self.listener.close()
        for thread in self._threads:
            thread.join(5)


def test_two_proxies_behind_a_proxy_protocol_front_keep_client_addresses(
    tmp_path: Path, certs_dir: Path, ca: trustme.CA, backends: Callable[[str], BackendServer]
) -> None:
    app = backends("app")
    first = start_proxy(tmp_path / "a", certs_dir, app)
    second = start_proxy(tmp_path / "b", certs_dir, app, "--workers", "2")
    front = L4Front([first.ports["https"], second.ports["https"]])
    try:
        ctx = client_context(ca)
        sources = [f"127.0.0.{2 + i % 5}" for i in range(20)]
        for source in sources:
            sock = socket.create_connection(("127.0.0.1", front.port), 5, source_address=(source, 0))
            conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=5)
            conn.sock = ctx.wrap_socket(sock, server_hostname="shop.example")
            response, body = request(conn, "GET", "/", "shop.example")
            conn.close()
            assert response.status == 200
            assert dict(json.loads(body)["headers"])["X-Forwarded-For"] == source
        assert front.chosen == [first.ports["https"], second.ports["https"]] * 10
        # A response can reach the client before its access line reaches the
        # output (the line is logged right after the response is written).
        deadline = time.monotonic() + 10
        while len(access_clients(first) + access_clients(second)) < len(sources):
            assert time.monotonic() < deadline, "access lines missing"
            time.sleep(0.05)
        assert sorted(access_clients(first) + access_clients(second)) == sorted(sources)
        assert sorted(access_clients(first)) == sorted(sources[0::2])
    finally:
        front.close()
        first.stop()
        second.stop()
