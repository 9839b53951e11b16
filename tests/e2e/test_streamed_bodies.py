"""
Streamed request bodies through the real ``twistd edgeproxy`` over TLS: a
route with ``request_buffering=False`` forwards an upload as it arrives (the
backend sees its first bytes while the client still holds the rest back),
chunked uploads go upstream chunked, the body limit answers 413 mid-stream,
and a large upload goes through with the proxy's peak RSS bounded.
(``bench/upload.py`` runs the multi-GB version, with the buffered route for
comparison.)
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.e2e.harness import ProxyProcess, client_context
from tests.e2e.uploadkit import (
    UploadBackend,
    expected_sha256,
    pattern,
    peak_rss_kib,
    read_response,
    tls_socket,
    upload,
)

HOST = "up.example"
LIMIT = 600 * 1024 * 1024
#: The bounded-RSS upload: large against any window or buffer (a spooled
#: route would hold it on disk; a leak would show plainly).
LARGE = 512 * 1024 * 1024
PEAK_RSS_LIMIT_KIB = 200 * 1024

CONFIG = """
from edgeproxy.config import Cluster, Route, VirtualHost

up = Cluster("up", endpoints=["{backend}"])
virtual_hosts = [
    VirtualHost(["{host}"], routes=[
        Route("/small/", up, request_buffering=False, max_body_size=1000000),
        Route("/", up, request_buffering=False, max_body_size={limit}),
    ]),
]
"""


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ProxyProcess, UploadBackend, ssl.SSLContext]]:
    tmp = tmp_path_factory.mktemp("streamed")
    ca = trustme.CA()
    certs = tmp / "certs"
    certs.mkdir()
    ca.issue_cert(HOST).private_key_and_cert_chain_pem.write_to_path(str(certs / "up.pem"))
    backend = UploadBackend().start()
    config: Path = tmp / "sites.py"
    config.write_text(CONFIG.format(backend=backend.address, host=HOST, limit=LIMIT))
    proxy = ProxyProcess(tmp, config, certs).start()
    try:
        yield proxy, backend, client_context(ca.cert_pem.bytes())
    finally:
        proxy.stop()
        backend.stop()


def test_the_backend_sees_the_first_bytes_before_the_client_sends_the_rest(env) -> None:  # type: ignore[no-untyped-def]
    proxy, backend, ctx = env
    size = 8 * 1024 * 1024
    backend.first_bytes.clear()
    sock = tls_socket(proxy.ports["https"], HOST, ctx)
    try:
        sock.sendall(f"PUT /x HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {size}\r\n\r\n".encode())
        blocks = pattern(size)
        sock.sendall(next(blocks))
        # The rest is held back until the backend has seen the first bytes:
        # a spooling proxy would wait for the whole body, and this would fail.
        assert backend.first_bytes.wait(15), "the backend saw nothing of the body"
        for block in blocks:
            sock.sendall(block)
        status, headers, body = read_response(sock)
    finally:
        sock.close()
    assert status == 200
    info = json.loads(body)
    assert info == {
        "length": size,
        "sha256": expected_sha256(size),
        "framing": "length",
        "content_length": str(size),
    }


def test_a_chunked_upload_is_forwarded_chunked(env) -> None:  # type: ignore[no-untyped-def]
    proxy, backend, ctx = env
    size = 3 * 1024 * 1024 + 123
    sock = tls_socket(proxy.ports["https"], HOST, ctx)
    try:
        status, headers, body, _ = upload(sock, HOST, "/c", size, chunked=True)
        # The connection is kept: a second upload on it.
        status2, _, body2, _ = upload(sock, HOST, "/c", 1000, chunked=False)
    finally:
        sock.close()
    assert status == 200
    info = json.loads(body)
    assert info["framing"] == "chunked" and info["content_length"] is None
    assert info["length"] == size and info["sha256"] == expected_sha256(size)
    assert status2 == 200 and json.loads(body2)["length"] == 1000


def test_over_the_limit_mid_stream_is_413(env) -> None:  # type: ignore[no-untyped-def]
    proxy, backend, ctx = env
    sock = tls_socket(proxy.ports["https"], HOST, ctx)
    try:
        sock.sendall(
            f"PUT /small/x HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        sent = 0
        try:
            for block in pattern(4 * 1024 * 1024):
                sock.sendall(b"%x\r\n%s\r\n" % (len(block), block))
                sent += len(block)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # the proxy stopped reading after its answer
        status, headers, body = read_response(sock)
    finally:
        sock.close()
    assert status == 413
    assert headers.get("connection") == "close"
    line = proxy.wait_for_output(r'"PUT /small/x HTTP/1.1" 413', timeout=10)
    assert "reason=body_too_large" in line


def test_a_large_upload_streams_with_bounded_peak_memory(env) -> None:  # type: ignore[no-untyped-def]
    proxy, backend, ctx = env
    sock = tls_socket(proxy.ports["https"], HOST, ctx, timeout=120)
    try:
        status, headers, body, seconds = upload(sock, HOST, "/large", LARGE)
    finally:
        sock.close()
    assert status == 200
    info = json.loads(body)
    assert info["length"] == LARGE and info["sha256"] == expected_sha256(LARGE)
    peak = peak_rss_kib(proxy.pid)
    print(f"\n{LARGE >> 20} MiB streamed in {seconds:.1f} s, proxy peak RSS {peak >> 10} MiB")
    assert peak < PEAK_RSS_LIMIT_KIB, peak
