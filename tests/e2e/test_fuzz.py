"""
Fuzzing the real ``twistd edgeproxy`` over sockets (issue 16, "Strict paths
and targets"): batches of client connections, each sending hypothesis-made
valid and mutated requests (tests/fuzzkit.py), most on the plain listener and
a few over TLS, all at once.  The backend is a raw socket server that reads
what it receives with h11 and the strict head checks of the kit.

Each connection must end, closed by the proxy, within a short bound (the
keep-alive timeout is half a second, and covers a client stalled
mid-request), with well-formed responses before the close; nothing
malformed reaches the backend, and an unmutated request that reaches it has
its method and body.  After the storm the proxy serves a valid request and
has logged no failure.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import trustme
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.e2e.harness import ProxyProcess, client_context
from tests.fuzzkit import (
    BackendReader,
    Received,
    Sent,
    connection_of,
    forwarding_problems,
    read_responses,
    reads,
    sent,
)

CONFIG = """
from edgeproxy.config import Cluster, Route, VirtualHost

app = Cluster("app", endpoints=["{backend}"])
virtual_hosts = [VirtualHost(["shop.example"], routes=[Route("/", app, plain_http=True)])]
"""
KEEPALIVE = 0.5
#: How long a connection may stay open after its last byte was sent: the
#: keep-alive timeout and ample slack for a shared machine.
CLOSE_WITHIN = KEEPALIVE + 4.0
#: Connections per batch (one hypothesis example), of which TLS.
BATCH = 20
TLS_PER_BATCH = 2
REFUSALS = {400, 414, 431, 501, 505}
LETTERS = "abcdefghijklmnopqrstuvwxyz"
_PROBLEM = re.compile(r"#(warn|error|critical)\]|Traceback|Unhandled")


class RawBackend:
    """A backend on 127.0.0.1 that reads every connection with
    :class:`~tests.fuzzkit.BackendReader` and answers each request 200."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.readers: list[BackendReader] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._listener.getsockname()[1]}"

    def start(self) -> RawBackend:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        reader = BackendReader(conn.sendall)
        with self._lock:
            self.readers.append(reader)
        conn.settimeout(0.5)
        with conn:
            while not self._stopped.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    data = b""
                with self._lock:
                    reader.feed(data)
                if not data or reader.must_close or reader.problems:
                    return

    def received(self) -> list[Received]:
        with self._lock:
            return [r for reader in self.readers for r in reader.requests]

    def problems(self) -> list[str]:
        with self._lock:
            return [p for reader in self.readers for p in reader.problems]


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA
) -> Iterator[tuple[ProxyProcess, RawBackend, ssl.SSLContext]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    certs = tmp / "certs"
    certs.mkdir()
    for name, file in (("shop.example", "shop.pem"), ("default.test", "default.pem")):
        ca.issue_cert(name).private_key_and_cert_chain_pem.write_to_path(str(certs / file))
    backend = RawBackend().start()
    config = tmp / "site.py"
    config.write_text(CONFIG.format(backend=backend.address))
    proxy = ProxyProcess(
        tmp,
        config,
        certs,
        [
            *("--keepalive-timeout", str(KEEPALIVE)),
            *("--header-timeout", str(KEEPALIVE)),
            *("--body-timeout", str(KEEPALIVE)),
            *("--access-log", "off"),
        ],
    ).start()
    ctx = client_context(ca.cert_pem.bytes())
    try:
        yield proxy, backend, ctx
    finally:
        proxy.stop()
        backend.stop()


def exchange(
    port: int, pieces: list[bytes], ctx: ssl.SSLContext | None
) -> tuple[bytes, bool, bool]:
    """Send ``pieces`` on a new connection, then read until the proxy closes
    it (or CLOSE_WITHIN passes).  Returns what was read, whether the proxy
    closed, and whether the connection was reset (a close before the client
    stopped sending can reset it, and lose unread data)."""
    sock = socket.create_connection(("127.0.0.1", port), 5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if ctx is not None:
        sock = ctx.wrap_socket(sock, server_hostname="shop.example")
    chunks: list[bytes] = []
    reset = False
    with sock:
        try:
            for piece in pieces:
                sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            reset = True
        deadline = time.monotonic() + CLOSE_WITHIN
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return b"".join(chunks), False, reset
            except (ConnectionResetError, ssl.SSLError):
                return b"".join(chunks), True, True
            if not chunk:
                return b"".join(chunks), True, reset
            chunks.append(chunk)


@st.composite
def batches(draw: st.DrawFn) -> list[tuple[Sent, list[bytes]]]:
    batch = []
    # Marks the requests of this batch's connections: a request of an
    # earlier batch that reaches the backend late is not taken for one of these.
    nonce = uuid.uuid4().hex
    for letter in LETTERS[:BATCH]:
        sent_ = draw(sent(max_requests=3, mutate=True, connection=letter * 5 + nonce))
        batch.append((sent_, reads(draw, sent_.data)))
    return batch


STORM = settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    # Shrinking a batch over sockets takes minutes: the first failing batch is reported.
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def check_batch(
    proxy: ProxyProcess,
    backend: RawBackend,
    ctx: ssl.SSLContext,
    batch: list[tuple[Sent, list[bytes]]],
) -> None:
    """One batch of connections at once; what each got, and what reached the backend."""

    def run(i: int) -> tuple[bytes, bool, bool]:
        tls = i < TLS_PER_BATCH
        return exchange(proxy.ports["https" if tls else "http"], batch[i][1], ctx if tls else None)

    with ThreadPoolExecutor(BATCH) as pool:
        results = list(pool.map(run, range(BATCH)))
    for (sent_, _), (data, closed, reset) in zip(batch, results, strict=True):
        assert closed, f"still open {CLOSE_WITHIN} s after {sent_.data[:300]!r}; read {data!r}"
        answers, problems = read_responses(data, closed=not reset)
        assert not problems, problems
        for i, answer in enumerate(answers):
            if answer.status in REFUSALS:
                assert i == len(answers) - 1 and answer.closes(), sent_.data[:300]
    assert not backend.problems(), backend.problems()
    received = backend.received()
    assert all(r.complete for r in received)
    for sent_, _ in batch:
        marker = connection_of(sent_.requests[0].target)
        mine = [r for r in received if connection_of(r.target) == marker]
        mismatches = forwarding_problems(sent_, mine)
        assert not mismatches, mismatches


def test_mutated_requests_over_sockets(
    setup: tuple[ProxyProcess, RawBackend, ssl.SSLContext],
) -> None:
    """A storm of BATCH x 15 connections, then a valid request over plain
    HTTP and TLS is served, and the proxy logged no failure."""
    proxy, backend, ctx = setup

    @STORM
    @given(batch=batches())
    def storm(batch: list[tuple[Sent, list[bytes]]]) -> None:
        check_batch(proxy, backend, ctx, batch)

    storm()
    # The storm was not all refused: many requests reached the backend.
    assert len(backend.received()) > 100
    for port, tls in ((proxy.ports["http"], None), (proxy.ports["https"], ctx)):
        request = b"GET /after HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n"
        data, closed, reset = exchange(port, [request], tls)
        answers, problems = read_responses(data, closed=closed)
        assert not problems and not reset
        assert [a.status for a in answers] == [200]
    assert proxy.process is not None and proxy.process.poll() is None
    logged = [line for line in proxy.output if _PROBLEM.search(line)]
    assert not logged, "".join(logged[:20])
