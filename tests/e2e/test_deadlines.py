"""
The deadlines for slow clients through the real ``twistd edgeproxy``, with
short ones (``--header-timeout 1 --body-timeout 1 --body-min-rate 1000
--keepalive-timeout 2``): a slowloris client (127.0.0.2) trickling its head
and a slow-POST client trickling its body each get 408 and a closed
connection at their deadline, while a client from 127.0.0.3 is served
meanwhile; so is a TLS handshake trickled byte by byte (the first request's
deadline counts from the accept); a normal POST, and one slower than the body
timeout at a decent rate, pass; an idle connection gets the keep-alive time.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import time
from collections.abc import Iterator

import pytest

from edgeproxy.tls.devcert import make_dev_certificate
from tests.e2e.harness import BackendServer, ProxyProcess

CONFIG = """
from edgeproxy.config import Cluster, Route, VirtualHost

app = Cluster("app", endpoints=["{backend}"])
virtual_hosts = [VirtualHost(["app.example"], routes=[Route("/", app, plain_http=True)])]
"""

DEADLINES = [
    "--header-timeout", "1",
    "--body-timeout", "1",
    "--body-min-rate", "1000",
    "--keepalive-timeout", "2",
]  # fmt: skip
HEAD = b"GET /slowloris HTTP/1.1\r\nHost: app.example\r\nX-Pad: " + b"a" * 100 + b"\r\n\r\n"
#: Every trickle ends by here whatever the proxy does.
MOST = 3.0


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyProcess, BackendServer]]:
    tmp = tmp_path_factory.mktemp("deadlines")
    (tmp / "certs").mkdir()
    (tmp / "certs" / "default.pem").write_bytes(make_dev_certificate(["app.example"]))
    backend = BackendServer("app").start()
    config = tmp / "site.py"
    config.write_text(CONFIG.format(backend=backend.address))
    process = ProxyProcess(tmp, config, tmp / "certs", DEADLINES).start()
    try:
        yield process, backend
    finally:
        process.stop()
        backend.stop()


def connect(proxy: ProxyProcess, source: str, listener: str = "http") -> socket.socket:
    sock = socket.create_connection(
        ("127.0.0.1", proxy.ports[listener]), timeout=5, source_address=(source, 0)
    )
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_to_end(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while data := sock.recv(65536):
            chunks.append(data)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def trickle(sock: socket.socket, data: bytes, every: float, meanwhile: object = None) -> bytes:
    """Send ``data`` a few bytes every ``every`` seconds until the proxy
    answers (or ``MOST`` seconds pass); its answer, read to the end."""
    end = time.monotonic() + MOST
    for i in range(0, len(data), 10):
        if time.monotonic() > end:
            break
        try:
            sock.sendall(data[i : i + 10])
        except (BrokenPipeError, ConnectionResetError):
            break
        if callable(meanwhile) and i == 30:
            meanwhile()
        readable, _, _ = select.select([sock], [], [], every)
        if readable:
            break
    return read_to_end(sock)


def get(proxy: ProxyProcess, source: str, path: str) -> int:
    conn = http.client.HTTPConnection(
        "127.0.0.1", proxy.ports["http"], timeout=5, source_address=(source, 0)
    )
    try:
        conn.request("GET", path, headers={"Host": "app.example"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_a_slowloris_client_gets_408_at_the_header_deadline_while_others_are_served(
    proxy: tuple[ProxyProcess, BackendServer],
) -> None:
    process, backend = proxy
    before = backend.requests
    served: list[int] = []
    sock = connect(process, "127.0.0.2")
    start = time.monotonic()
    try:
        answer = trickle(
            sock, HEAD, every=0.1, meanwhile=lambda: served.append(get(process, "127.0.0.3", "/x"))
        )
    finally:
        sock.close()
    elapsed = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
    assert 0.9 < elapsed < 1.8
    assert served == [200]  # the other client, while the slow one was trickling
    assert backend.requests == before + 1


def test_a_slow_post_gets_408_shortly_after_the_body_timeout(
    proxy: tuple[ProxyProcess, BackendServer],
) -> None:
    # 100 bytes a second against a minimum of 1000: the deadline moves by a
    # tenth of a second a second, so the cut comes at about 1.1 s.
    process, backend = proxy
    before = backend.requests
    sock = connect(process, "127.0.0.2")
    try:
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: app.example\r\nContent-Length: 100000\r\n\r\n")
        start = time.monotonic()
        answer = trickle(sock, b"b" * 100_000, every=0.1)
    finally:
        sock.close()
    elapsed = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
    assert 1.0 < elapsed < 1.8
    assert backend.requests == before  # nothing of it went upstream


@pytest.mark.parametrize(("pieces", "every"), [(1, 0.0), (20, 0.1)], ids=["at once", "over 2 s"])
def test_a_post_at_a_decent_rate_passes(
    proxy: tuple[ProxyProcess, BackendServer], pieces: int, every: float
) -> None:
    # 20 kB: at once, or 1 kB every 0.1 s (10 kB/s, ten times the minimum
    # rate, twice as long as the body timeout).
    process, _ = proxy
    body = b"p" * 20_000
    sock = connect(process, "127.0.0.3")
    try:
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: app.example\r\nContent-Length: 20000\r\n")
        sock.sendall(b"Connection: close\r\n\r\n")
        size = len(body) // pieces
        for i in range(pieces):
            sock.sendall(body[i * size : (i + 1) * size])
            time.sleep(every)
        answer = read_to_end(sock)
    finally:
        sock.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert json.loads(payload)["body_length"] == len(body)


def test_a_connection_that_never_sends_is_closed_at_the_header_deadline(
    proxy: tuple[ProxyProcess, BackendServer],
) -> None:
    process, _ = proxy
    sock = connect(process, "127.0.0.2")
    start = time.monotonic()
    try:
        assert read_to_end(sock) == b""  # closed, nothing said
    finally:
        sock.close()
    assert 0.9 < time.monotonic() - start < 1.8


def test_a_trickled_tls_handshake_is_cut_at_the_header_deadline(
    proxy: tuple[ProxyProcess, BackendServer],
) -> None:
    # A TLS record header announcing 512 bytes of handshake, then the bytes
    # ten at a time: the first request's deadline counts from the accept.
    process, _ = proxy
    sock = connect(process, "127.0.0.2", "https")
    start = time.monotonic()
    try:
        answer = trickle(sock, b"\x16\x03\x01\x02\x00" + b"\x01" * 512, every=0.1)
    finally:
        sock.close()
    assert answer == b""
    assert 0.9 < time.monotonic() - start < 1.8


def test_an_idle_connection_gets_the_keepalive_time_not_the_header_timeout(
    proxy: tuple[ProxyProcess, BackendServer],
) -> None:
    process, _ = proxy
    conn = http.client.HTTPConnection(
        "127.0.0.1", process.ports["http"], timeout=5, source_address=("127.0.0.3", 0)
    )
    try:
        statuses = []
        for _ in range(2):
            conn.request("GET", "/again", headers={"Host": "app.example"})
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
            if len(statuses) == 1:
                sock = conn.sock
                time.sleep(1.5)  # longer than --header-timeout, within --keepalive-timeout
        assert statuses == [200, 200]
        assert conn.sock is sock  # the same connection both times
    finally:
        conn.close()
