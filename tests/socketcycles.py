"""
The abort and error paths of ``tests/proxy/test_no_cycles.py`` over real sockets:
the proxy (``EdgeProxyService``, as ``twistd edgeproxy`` starts it) on the
real reactor, a backend and the clients in threads with blocking sockets, all
on 127.0.0.1, in one fresh interpreter::

    python -m tests.socketcycles          # prints {scenario: [garbage types]} as JSON

Real sockets catch what the in-memory rig cannot: Twisted's own TCP objects
(a connector and its transport), the reactor closing a socket, the TLS layer
under a client that aborts, a named endpoint's connection attempt.

Each scenario runs a few times to warm up, then several times with the
collector off and ``DEBUG_SAVEALL`` on; once the proxy has let go of every
socket (the reactor's readers and writers are back to the listeners), one
collection finds whatever those runs left in cycles.  The backend and the
clients run in threads of this process, so they must leave no cycles either:
they catch ``OSError`` without keeping the exception.
"""

from __future__ import annotations

import gc
import json
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import blockingCallFromThread

from edgeproxy.app.service import EdgeProxyService
from edgeproxy.config.settings import Settings
from edgeproxy.tls.devcert import make_dev_certificate

reactor: Any = _reactor

WARM = 2
RUNS = 6
#: Every wait in a scenario is bounded by this many seconds.
WAIT = 10.0
BIG = 8 << 20
#: The upstream timers of the timeout scenarios, in seconds.
SHORT = 0.1
#: The keep-alive, header and body timeouts: long enough for a TLS handshake on a busy machine.
KEEPALIVE = 1.0
#: (warm-up runs, measured runs) where the default costs too much time.
FEWER_RUNS = {"keep-alive timeout": (1, 2), "TLS keep-alive timeout": (1, 2)}


def _rst_close(sock: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0), as a killed client does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Backend:
    """An HTTP/1.1 origin on 127.0.0.1 whose answer depends on the path:
    ``/big`` (an 8 MiB body, sent as fast as it is taken), ``/truncate`` (a
    body cut short), ``/stall`` (part of a body, then silence), ``/hang`` (no
    answer), ``/reset`` (a reset instead of an answer), else a small 200."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = int(self.sock.getsockname()[1])
        #: Set when a request has arrived (for clients that must not close earlier).
        self.got_request = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(WAIT)
        try:
            while self._answer(conn):
                pass
        except OSError:
            pass
        finally:
            conn.close()

    def _answer(self, conn: socket.socket) -> bool:
        """Answer one request; False when the connection is done."""
        head = b""
        while b"\r\n\r\n" not in head:
            data = conn.recv(65536)
            if not data:
                return False
            head += data
        path = head.split(b" ", 2)[1]
        self.got_request.set()
        if b"/big" in path:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG)
            block = b"x" * 65536
            for _ in range(BIG // len(block)):
                conn.sendall(block)
            return True
        if b"/truncate" in path:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 65536)
            return False
        if b"/stall" in path or b"/hang" in path:
            if b"/stall" in path:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
            while conn.recv(65536):  # until the proxy gives up
                pass
            return False
        if b"/reset" in path:
            _rst_close(conn)
            return False
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True


def _config(backend: int, refused: int) -> str:
    return f"""
from edgeproxy.config import Cluster, Route, VirtualHost
# No outlier detection: every scenario must take its failing path to the endpoint
# (ejection, on by default, would answer 503 without trying).
web = Cluster("web", endpoints=["127.0.0.1:{backend}"], outlier_detection=None)
slowhead = Cluster("slowhead", endpoints=["127.0.0.1:{backend}"], response_timeout={SHORT}, outlier_detection=None)
quiet = Cluster("quiet", endpoints=["127.0.0.1:{backend}"], idle_timeout={SHORT}, outlier_detection=None)
gone = Cluster("gone", endpoints=["127.0.0.1:{refused}"], outlier_detection=None)
named = Cluster("named", endpoints=["localhost:{backend}"], outlier_detection=None)
named_gone = Cluster("named_gone", endpoints=["localhost:{refused}"], outlier_detection=None)
virtual_hosts = [
    VirtualHost(["localhost"], routes=[
        Route("/", web, plain_http=True),
        Route("/slowhead/", slowhead, plain_http=True),
        Route("/quiet/", quiet, plain_http=True),
        Route("/gone/", gone, plain_http=True),
        Route("/named/", named, plain_http=True),
        Route("/named-gone/", named_gone, plain_http=True),
    ]),
]
"""


class Clients:
    """What the scenarios do, from the client side (in a thread)."""

    def __init__(self, http: int, https: int, backend: Backend) -> None:
        self.http = http
        self.https = https
        self.backend = backend
        self.tls = ssl.create_default_context()
        self.tls.check_hostname = False
        self.tls.verify_mode = ssl.CERT_NONE

    def connect(self, tls: bool) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.https if tls else self.http), WAIT)
        if tls:
            return self.tls.wrap_socket(sock, server_hostname="localhost")
        return sock

    def get(self, path: str, tls: bool = False, close: bool = False) -> socket.socket:
        sock = self.connect(tls)
        extra = "Connection: close\r\n" if close else ""
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n".encode())
        return sock

    @staticmethod
    def read(sock: socket.socket, at_least: int) -> bytes:
        got = b""
        while len(got) < at_least:
            data = sock.recv(65536)
            if not data:
                break
            got += data
        return got

    @staticmethod
    def read_to_end(sock: socket.socket) -> bytes:
        """Everything until the proxy closes (or resets) the connection."""
        chunks = []
        try:
            while data := sock.recv(65536):
                chunks.append(data)
        except ConnectionResetError:
            pass
        return b"".join(chunks)

    def mid_body(self, tls: bool, reset: bool) -> None:
        sock = self.get("/big", tls)
        assert self.read(sock, 200_000).startswith(b"HTTP/1.1 200 ")
        if reset:
            _rst_close(sock)
        else:
            sock.close()

    def before_head(self, tls: bool) -> None:
        self.backend.got_request.clear()
        sock = self.get("/hang", tls)
        assert self.backend.got_request.wait(WAIT)
        _rst_close(sock)

    def answer(self, path: str, tls: bool = False) -> bytes:
        sock = self.get(path, tls, close=True)
        try:
            return self.read_to_end(sock)
        finally:
            sock.close()

    def handshake_aborted(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.https), WAIT)
        # The start of a ClientHello record, then a reset.
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40)
        _rst_close(sock)

    def handshake_refused(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.https), WAIT)
        sock.sendall(b"\x16\x03\x01\x00\x05garbage")
        self.read_to_end(sock)
        sock.close()

    def keepalive_timeout(self, tls: bool) -> None:
        sock = self.connect(tls)
        sock.sendall(b"GET / HTTP/1.1\r\nHo")
        assert self.read_to_end(sock).startswith(b"HTTP/1.1 408 ")  # --header-timeout
        sock.close()


def _status(path: str, expected: bytes) -> Callable[[Clients], None]:
    def run(c: Clients) -> None:
        answer = c.answer(path)
        assert answer.startswith(b"HTTP/1.1 " + expected), answer[:100]

    return run


def _truncated(path: str, tls: bool = False) -> Callable[[Clients], None]:
    def run(c: Clients) -> None:
        answer = c.answer(path, tls)
        assert answer.startswith(b"HTTP/1.1 200 ") and len(answer) < 1_000_000

    return run


SCENARIOS: dict[str, Callable[[Clients], None]] = {
    "client closes mid-body": lambda c: c.mid_body(tls=False, reset=False),
    "client resets mid-body": lambda c: c.mid_body(tls=False, reset=True),
    "TLS client closes mid-body": lambda c: c.mid_body(tls=True, reset=False),
    "TLS client resets mid-body": lambda c: c.mid_body(tls=True, reset=True),
    "client resets before the head": lambda c: c.before_head(tls=False),
    "TLS client resets before the head": lambda c: c.before_head(tls=True),
    "TLS handshake aborted": Clients.handshake_aborted,
    "TLS handshake refused": Clients.handshake_refused,
    "keep-alive timeout": lambda c: c.keepalive_timeout(tls=False),
    "TLS keep-alive timeout": lambda c: c.keepalive_timeout(tls=True),
    "upstream refused": _status("/gone/", b"502"),
    "upstream resets": _status("/reset", b"502"),
    "upstream response timeout": _status("/slowhead/hang", b"504"),
    "upstream truncates the body": _truncated("/truncate"),
    "TLS upstream truncates the body": _truncated("/truncate", tls=True),
    "upstream idle mid-body": _truncated("/quiet/stall"),
    "named upstream refused": _status("/named-gone/", b"502"),
    "named upstream truncates the body": _truncated("/named/truncate"),
}
#: The scenarios whose upstream endpoint is a name (Twisted's HostnameEndpoint).
NAMED = frozenset({"named upstream refused", "named upstream truncates the body"})


def _busy_fds() -> int:
    return len(reactor.getReaders()) + len(reactor.getWriters())


def _start_saving() -> None:
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)


def _collect_saved() -> list[str]:
    try:
        gc.collect()
        return sorted({type(o).__qualname__ for o in gc.garbage})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def _settle(idle_fds: int) -> None:
    """Wait until the proxy has closed every connection of the runs."""
    deadline = time.monotonic() + WAIT
    while blockingCallFromThread(reactor, _busy_fds) > idle_fds:
        if time.monotonic() > deadline:
            raise AssertionError("the proxy kept connections open")
        time.sleep(0.02)
    # Let connectionLost's callers return, and the timers cancelled there go.
    blockingCallFromThread(reactor, lambda: None)


def _run_all(c: Clients, idle_fds: int, only: list[str]) -> dict[str, list[str]]:
    results: dict[str, list[str]] = {}
    for name, step in SCENARIOS.items():
        if only and name not in only:
            continue
        warm, runs = FEWER_RUNS.get(name, (WARM, RUNS))
        try:
            for _ in range(warm):
                step(c)
            _settle(idle_fds)
        except AssertionError as e:
            results[name] = [f"the scenario failed: {e!r}"]
            continue
        blockingCallFromThread(reactor, _start_saving)
        failed = None
        try:
            for _ in range(runs):
                step(c)
            _settle(idle_fds)
        except AssertionError as e:
            failed = f"the scenario failed: {e!r}"
        finally:
            results[name] = blockingCallFromThread(reactor, _collect_saved)
        if failed is not None:
            results[name].append(failed)
    return results


def main(only: list[str]) -> dict[str, list[str]]:
    backend = Backend()
    tmp = Path(tempfile.mkdtemp(prefix="socketcycles-"))
    (tmp / "site.py").write_text(_config(backend.port, _free_port()))
    certs = tmp / "certs"
    certs.mkdir()
    (certs / "default.pem").write_bytes(make_dev_certificate(["localhost"]))
    settings = Settings(
        config=str(tmp / "site.py"),
        certs=str(certs),
        https=("tcp:0:interface=127.0.0.1",),
        http=("tcp:0:interface=127.0.0.1",),
        admin=None,
        keepalive_timeout=KEEPALIVE,
        header_timeout=KEEPALIVE,
        body_timeout=KEEPALIVE,
        # Logged as in production (the access log runs on the abort paths too).
        access_log=str(tmp / "access.log"),
    )
    service = EdgeProxyService(settings, reactor)
    service.privilegedStartService()
    service.startService()
    ports = {s.kind: s.port.getHost().port for s in service if getattr(s, "port", None)}
    clients = Clients(ports["http"], ports["https"], backend)
    outcome: dict[str, Any] = {}

    def drive() -> None:
        try:
            idle_fds = blockingCallFromThread(reactor, _busy_fds)
            outcome["results"] = _run_all(clients, idle_fds, only)
        except BaseException as e:  # reported by the parent process
            outcome["error"] = f"{type(e).__name__}: {e}"
        finally:
            reactor.callFromThread(reactor.stop)

    def start() -> Deferred[None] | None:
        threading.Thread(target=drive, daemon=True).start()
        return None

    reactor.callWhenRunning(start)
    reactor.callLater(240, reactor.stop)
    reactor.run()
    if "error" in outcome:
        raise SystemExit(outcome["error"])
    results: dict[str, list[str]] = outcome["results"]
    return results


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
