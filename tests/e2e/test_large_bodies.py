"""
Bodies stream with bounded memory, both ways, and a client that goes away
cancels its upstream request.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.e2e.conftest import check_tls_layer
from tests.e2e.harness import (
    BackendServer,
    ProxyProcess,
    client_context,
    https_connection,
    iter_body,
)

#: The issue's 1 GB: buffering any sizeable part of it would show plainly in RSS.
BIG = 1024 * 1024 * 1024
#: What "a few MB" means here, in KiB of RSS growth.
RSS_ALLOWANCE_KIB = 24 * 1024

CONFIG = """
from edgeproxy.config import Cluster, Route, VirtualHost

files = Cluster("files", endpoints=["{backend}"])
virtual_hosts = [
    VirtualHost(["files.example"], routes=[Route("/", files, max_body_size={limit})]),
]
"""


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, tls_layer: tuple[str, ...]
) -> Iterator[tuple[ProxyProcess, BackendServer, ssl.SSLContext]]:
    """One proxy per TLS layer: every test below runs on edgeproxy's and on Twisted's."""
    tmp = tmp_path_factory.mktemp("large")
    ca = trustme.CA()
    certs = tmp / "certs"
    certs.mkdir()
    ca.issue_cert("files.example").private_key_and_cert_chain_pem.write_to_path(
        str(certs / "files.pem")
    )
    backend = BackendServer("files").start()
    config: Path = tmp / "sites.py"
    config.write_text(CONFIG.format(backend=backend.address, limit=2 * BIG))
    proxy = ProxyProcess(tmp, config, certs, tls_layer).start()
    try:
        check_tls_layer(proxy, tls_layer)
        yield proxy, backend, client_context(ca.cert_pem.bytes())
    finally:
        proxy.stop()
        backend.stop()


def _warm_up(proxy: ProxyProcess, ctx: ssl.SSLContext) -> None:
    # One small exchange first, so imports and pools are not counted as growth.
    conn = https_connection(proxy.ports["https"], "files.example", ctx)
    conn.request("GET", "/bytes/1000000", headers={"Host": "files.example"})
    conn.getresponse().read()
    conn.close()


def test_large_download_streams_with_bounded_memory(env) -> None:  # type: ignore[no-untyped-def]
    proxy, backend, ctx = env
    _warm_up(proxy, ctx)
    before = proxy.rss_kib()
    peak = before
    conn = https_connection(proxy.ports["https"], "files.example", ctx, timeout=60)
    conn.request("GET", f"/bytes/{BIG}", headers={"Host": "files.example"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Length") == str(BIG)
    received = 0
    deadline = time.monotonic() + 240
    while True:
        chunk = response.read(1 << 20)
        if not chunk:
            break
        received += len(chunk)
        if received % (32 << 20) < (1 << 20):
            peak = max(peak, proxy.rss_kib())
        assert time.monotonic() < deadline
    conn.close()
    assert received == BIG
    assert peak - before < RSS_ALLOWANCE_KIB, (before, peak)


def test_slow_reader_pauses_the_upstream(env) -> None:  # type: ignore[no-untyped-def]
    """A client that stops reading must not make the proxy buffer the body."""
    proxy, backend, ctx = env
    _warm_up(proxy, ctx)
    before = proxy.rss_kib()
    sock = ctx.wrap_socket(
        socket.create_connection(("127.0.0.1", proxy.ports["https"]), 30),
        server_hostname="files.example",
    )
    try:
        sock.sendall(f"GET /bytes/{BIG} HTTP/1.1\r\nHost: files.example\r\n\r\n".encode())
        sock.recv(65536)  # the headers and a first piece, then stop reading
        time.sleep(3)  # let any unbounded buffering show (bounded: nothing to poll for)
        grown = proxy.rss_kib() - before
    finally:
        sock.close()
    assert grown < RSS_ALLOWANCE_KIB, grown


def test_large_upload_is_spooled_with_bounded_memory(env) -> None:  # type: ignore[no-untyped-def]
    proxy, backend, ctx = env
    _warm_up(proxy, ctx)
    before = proxy.rss_kib()
    peak = before
    conn = https_connection(proxy.ports["https"], "files.example", ctx, timeout=120)
    conn.putrequest("POST", "/upload", skip_host=True)
    conn.putheader("Host", "files.example")
    conn.putheader("Content-Length", str(BIG))
    conn.endheaders()
    sent = 0
    for chunk in iter_body(BIG, 1 << 20):
        conn.send(chunk)
        sent += len(chunk)
        if sent % (32 << 20) == 0:
            peak = max(peak, proxy.rss_kib())
    response = conn.getresponse()
    info = json.loads(response.read())
    conn.close()
    assert response.status == 200
    assert info["body_length"] == BIG
    assert peak - before < RSS_ALLOWANCE_KIB, (before, peak)


def test_client_disconnect_cancels_upstream(env) -> None:  # type: ignore[no-untyped-def]
    proxy, backend, ctx = env
    requests_before = backend.requests
    sock = ctx.wrap_socket(
        socket.create_connection(("127.0.0.1", proxy.ports["https"]), 10),
        server_hostname="files.example",
    )
    sock.sendall(b"GET /hold/20 HTTP/1.1\r\nHost: files.example\r\n\r\n")
    deadline = time.monotonic() + 10
    while backend.requests == requests_before and time.monotonic() < deadline:
        time.sleep(0.02)
    before = backend.peer_closed
    sock.close()
    # The backend sees its connection closed long before its 20 s hold ends.
    while backend.peer_closed == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert backend.peer_closed == before + 1
    line = proxy.wait_for_output(r'"GET /hold/20 HTTP/1.1"', timeout=10)
    assert "outcome=client_closed" in line
