"""
Honest answers and honest records, through the real ``twistd edgeproxy`` over
TLS: interim (1xx) responses forwarded, 400 for a method that is not a token
and 501 for one that is, an outcome and a reason on every access line, 499 for
clients that go away, and refusals counted by reason in /metrics.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests.e2e.harness import BackendServer, ProxyProcess, client_context, free_port

CONFIG = """
from edgeproxy.config import Cluster, Route, VirtualHost

virtual_hosts = [
    VirtualHost(
        ["shop.example"],
        routes=[
            Route("/raw/", Cluster("raw", endpoints=["{raw}"])),
            Route("/hold/", Cluster("held", endpoints=["{held}"])),
            Route("/refused/", Cluster("refused", endpoints=["127.0.0.1:{refused_port}"])),
        ],
    ),
]
"""

WAIT = 10.0
HOST = b"Host: shop.example\r\n"
EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
FINAL = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class RawBackend:
    """A backend on a plain socket, for what http.server cannot send: 1xx
    responses.  ``/raw/hints`` sends 103 then 200 at once; ``/raw/hints-held``
    sends 103, then 200 only once ``release`` is set; ``/raw/continue`` reads
    the body, then sends ``100 Continue`` and 200."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.release = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._listener.getsockname()[1]}"

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(WAIT)
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
                needed = int(length.group(1)) if length else 0
                while len(buffer) < needed:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                buffer = buffer[needed:]
                path = head.split(b" ", 2)[1]
                if path == b"/raw/hints":
                    conn.sendall(EARLY_HINTS + FINAL)
                elif path == b"/raw/hints-held":
                    conn.sendall(EARLY_HINTS)
                    self.release.wait(WAIT)
                    conn.sendall(FINAL)
                elif path == b"/raw/continue":
                    conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n" + FINAL)
                else:
                    conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        except OSError:
            return
        finally:
            conn.close()

    def stop(self) -> None:
        self._stopped.set()
        self.release.set()
        self._thread.join(5)
        self._listener.close()


@dataclass
class Setup:
    proxy: ProxyProcess
    raw: RawBackend
    held: BackendServer
    ctx: ssl.SSLContext

    def connect(self, sni: str | None = "shop.example") -> ssl.SSLSocket:
        sock = socket.create_connection(("127.0.0.1", self.proxy.ports["https"]), WAIT)
        if sni is not None:
            return self.ctx.wrap_socket(sock, server_hostname=sni)
        # Without SNI (an old client, a probe by address): routed by Host alone.
        self.ctx.check_hostname = False
        try:
            return self.ctx.wrap_socket(sock)
        finally:
            self.ctx.check_hostname = True

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.proxy.ports['admin']}/metrics"
        with urllib.request.urlopen(url, timeout=WAIT) as answer:
            return str(answer.read().decode())


def start(tmp_path: Path, certs_dir: Path, ca: trustme.CA, *args: str) -> Setup:
    raw = RawBackend()
    held = BackendServer("held").start()
    site = tmp_path / "site.py"
    site.write_text(CONFIG.format(raw=raw.address, held=held.address, refused_port=free_port()))
    proxy = ProxyProcess(tmp_path, site, certs_dir, args).start()
    return Setup(proxy, raw, held, client_context(ca.cert_pem.bytes()))


@pytest.fixture
def setup(tmp_path: Path, certs_dir: Path, ca: trustme.CA) -> Iterator[Setup]:
    s = start(tmp_path, certs_dir, ca)
    yield s
    s.proxy.stop()
    s.raw.stop()
    s.held.stop()


def read_until(sock: ssl.SSLSocket, done: Callable[[bytes], bool], data: bytes = b"") -> bytes:
    deadline = time.monotonic() + WAIT
    while not done(data):
        if time.monotonic() > deadline:
            raise AssertionError(f"incomplete after {WAIT}s: {data!r}")
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"closed early: {data!r}")
        data += chunk
    return data


def ends_with_final(data: bytes) -> bool:
    return data.endswith(b"\r\n\r\nok")


# -- 1xx -------------------------------------------------------------------------------------


def test_early_hints_reach_the_client_before_the_response(setup: Setup) -> None:
    with setup.connect() as sock:
        sock.sendall(b"GET /raw/hints-held HTTP/1.1\r\n" + HOST + b"\r\n")
        # The 103 arrives while the upstream still holds its final response back.
        hints = read_until(sock, lambda d: d.count(b"\r\n\r\n") >= 1)
        assert hints == EARLY_HINTS
        setup.raw.release.set()
        rest = read_until(sock, ends_with_final)
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nContent-Length: 2\r\n" in rest


def test_early_hints_then_response_in_one_segment(setup: Setup) -> None:
    with setup.connect() as sock:
        sock.sendall(b"GET /raw/hints HTTP/1.1\r\n" + HOST + b"\r\n")
        data = read_until(sock, ends_with_final)
    assert data.startswith(EARLY_HINTS + b"HTTP/1.1 200 OK\r\n")
    assert data.count(b"HTTP/1.1 ") == 2


def test_http10_client_gets_no_interim_response(setup: Setup) -> None:
    with setup.connect() as sock:
        sock.sendall(b"GET /raw/hints HTTP/1.0\r\n" + HOST + b"\r\n")
        data = read_until(sock, ends_with_final)
    # The final response only: one status line, and not the hint's Link header
    # (the request id is random hex, so "103" alone could appear in it).
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert data.count(b"HTTP/1.") == 1
    assert b"\r\nLink:" not in data


def test_100_continue_reaches_the_client_once(setup: Setup) -> None:
    with setup.connect() as sock:
        sock.sendall(
            b"POST /raw/continue HTTP/1.1\r\n"
            + HOST
            + b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        first = read_until(sock, lambda d: b"\r\n\r\n" in d)
        assert first == b"HTTP/1.1 100 Continue\r\n\r\n"  # edgeproxy's own
        sock.sendall(b"hello")
        rest = read_until(sock, ends_with_final)
    # The upstream's 100 Continue is not passed on a second time.
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n")
    assert (first + rest).count(b"100 Continue") == 1


def test_100_continue_edgeproxy_did_not_send_is_forwarded(setup: Setup) -> None:
    with setup.connect() as sock:
        sock.sendall(b"POST /raw/continue HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\n\r\nhello")
        data = read_until(sock, ends_with_final)
    assert data.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")


# -- 400 or 501, and every refusal logged with why ----------------------------------------------------

REFUSED = [
    # (request, status, the request as logged, outcome, reason)
    (
        b"G\x01T /x HTTP/1.1\r\n" + HOST + b"\r\n",
        400,
        '"- - HTTP/1.1"',
        "rejected",
        "bad_request_line",
    ),
    (
        b"FOO /x HTTP/1.1\r\n" + HOST + b"\r\n",
        501,
        '"FOO - HTTP/1.1"',
        "rejected",
        "method_not_implemented",
    ),
    (
        b"GET /bad-header HTTP/1.1\r\n" + HOST + b"X Foo: 1\r\n\r\n",
        400,
        '"GET /bad-header HTTP/1.1"',
        "rejected",
        "bad_header",
    ),
    (
        b"GET /big HTTP/1.1\r\n" + HOST + b"X-Big: " + b"a" * 17_000 + b"\r\n\r\n",
        431,
        '"GET /big HTTP/1.1"',
        "rejected",
        "header_too_large",
    ),
    (
        b"GET /two HTTP/2.0\r\n" + HOST + b"\r\n",
        505,
        '"GET /two HTTP/2.0"',
        "rejected",
        "version_not_supported",
    ),
    (
        b"GET /nowhere HTTP/1.1\r\nHost: elsewhere.example\r\n\r\n",
        404,
        '"GET /nowhere HTTP/1.1"',
        "no_route",
        "no_virtual_host",
    ),
    (
        # Over the connection set up for shop.example (SNI): not this certificate's site.
        b"GET /fronted HTTP/1.1\r\nHost: elsewhere.example\r\n\r\n",
        421,
        '"GET /fronted HTTP/1.1"',
        "rejected",
        "misdirected_request",
    ),
    (
        b"GET /raw-not-routed HTTP/1.1\r\n" + HOST + b"\r\n",
        404,
        '"GET /raw-not-routed HTTP/1.1"',
        "no_route",
        "no_route",
    ),
    (
        b"GET /refused/x HTTP/1.1\r\n" + HOST + b"\r\n",
        502,
        '"GET /refused/x HTTP/1.1"',
        "upstream_error",
        "connect_failed",
    ),
]


def test_refusals_are_answered_logged_with_why_and_counted(setup: Setup) -> None:
    for raw, status, logged, outcome, reason in REFUSED:
        sni = None if reason == "no_virtual_host" else "shop.example"
        with setup.connect(sni) as sock:
            sock.sendall(raw)
            head = read_until(sock, lambda d: b"\r\n\r\n" in d)
        assert head.startswith(b"HTTP/1.1 %d " % status), (raw[:40], head)
        request_id = re.search(rb"\r\nX-Request-Id: (\w+)\r\n", head)
        assert request_id is not None
        line = setup.proxy.wait_for_output("request_id=" + request_id.group(1).decode())
        assert f"{logged} {status} " in line, line
        assert f" outcome={outcome} reason={reason} " in line, line
    metrics = setup.metrics()
    counted = dict(
        re.findall(r'^edgeproxy_requests_rejected_total\{reason="(\w+)"\} (\S+)$', metrics, re.M)
    )
    # Refusals (rejected, no_route) by reason; an upstream's failure is not one.
    assert counted == {
        "bad_request_line": "1.0",
        "method_not_implemented": "1.0",
        "bad_header": "1.0",
        "header_too_large": "1.0",
        "version_not_supported": "1.0",
        "no_virtual_host": "1.0",
        "misdirected_request": "1.0",
        "no_route": "1.0",
    }


# -- 499 ----------------------------------------------------------------------------------------------


def test_pipelined_requests_of_a_client_that_goes_away_are_499(
    tmp_path: Path, certs_dir: Path, ca: trustme.CA
) -> None:
    log = tmp_path / "access.jsonl"
    s = start(tmp_path, certs_dir, ca, "--access-log", str(log), "--access-log-format", "json")
    count = 20
    try:
        with s.connect() as sock:
            # One write, one TLS record: edgeproxy reads them all at once.
            sock.sendall(
                b"".join(b"GET /hold/10/%d HTTP/1.1\r\n%s\r\n" % (i, HOST) for i in range(count))
            )
            deadline = time.monotonic() + WAIT
            while s.held.requests < 1:
                assert time.monotonic() < deadline, "the first request never reached the backend"
                time.sleep(0.02)
        # The client is gone: the first was waiting for its answer, the rest queued.
        deadline = time.monotonic() + WAIT
        records: list[dict[str, object]] = []
        while len(records) < count:
            assert time.monotonic() < deadline, f"{len(records)} access lines of {count}"
            time.sleep(0.2)  # the file sink flushes every second
            if log.exists():
                records = [json.loads(line) for line in log.read_text().splitlines() if line]
        assert len(records) == count
        assert [r["path"] for r in records] == [f"/hold/10/{i}" for i in range(count)]
        assert all((r["status"], r["outcome"]) == (499, "client_closed") for r in records)
        assert [r["reason"] for r in records] == ["awaiting_response"] + ["queued"] * (count - 1)
        assert [r["attempts"] for r in records] == [1] + [0] * (count - 1)
        metrics = s.metrics()
        # By status class, whatever the cluster label (the queued ones never chose one).
        classes: dict[str, float] = {}
        for status_class, value in re.findall(
            r'^edgeproxy_requests_total\{cluster="[^"]*",route="/hold/",status_class="(\w+)",'
            r'vhost="shop.example"\} (\S+)$',
            metrics,
            re.M,
        ):
            classes[status_class] = classes.get(status_class, 0.0) + float(value)
        assert classes == {"4xx": count}
    finally:
        s.proxy.stop()
        s.raw.stop()
        s.held.stop()
