"""
End-to-end test harness: real backends on 127.0.0.1 (threads in the test
process) and the real ``twistd edgeproxy`` in a subprocess.  Everything binds
ephemeral ports on loopback and every wait is bounded.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

TWISTD = str(Path(sys.executable).with_name("twistd"))
STARTUP_TIMEOUT = 20.0


def _after(path: str, marker: str) -> str:
    return path[path.index(marker) + len(marker) :].split("/")[0]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: BackendServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        # Headers and body are separate writes here; without this, Nagle and
        # delayed ACKs add 40 ms to every response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.open_sockets.add(self.connection)

    def finish(self) -> None:
        self.server.open_sockets.discard(self.connection)
        super().finish()
        self.server.record_connection(self.client_address)

    def _read_body(self) -> tuple[int, str]:
        digest = hashlib.sha256()
        total = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                remaining = size
                while remaining:
                    chunk = self.rfile.read(min(remaining, 1 << 16))
                    digest.update(chunk)
                    total += len(chunk)
                    remaining -= len(chunk)
                self.rfile.readline()
        else:
            remaining = int(self.headers.get("Content-Length", "0"))
            while remaining:
                chunk = self.rfile.read(min(remaining, 1 << 16))
                if not chunk:
                    break
                digest.update(chunk)
                total += len(chunk)
                remaining -= len(chunk)
        return total, digest.hexdigest()

    def _handle(self) -> None:
        self.server.requests += 1
        length, sha = self._read_body()
        path = self.path
        if self.server.hang:
            # A hung backend: answers nothing until the proxy gives up.
            self._wait_for_peer_close(self.server.hang)
            self.close_connection = True
            return
        if self.server.fail_status is not None:
            body = b"failing\n"
            self.send_response(self.server.fail_status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        # Behaviour markers may follow a route prefix: /api/status/500.
        bare = path.split("?")[0]
        if "/hold/" in bare:
            # Wait up to N seconds for the proxy to give up on us (EOF).
            if self._wait_for_peer_close(float(_after(bare, "/hold/"))):
                self.server.peer_closed += 1
                self.close_connection = True
                return
        if "/slow/" in bare:
            time.sleep(float(_after(bare, "/slow/")))
        if "/status/" in bare:
            code = int(_after(bare, "/status/"))
            body = f"status {code}\n".encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if "/bytes/" in bare:
            self._stream_bytes(int(_after(bare, "/bytes/")))
            return
        if bare.endswith("/dup"):
            body = b"dup\n"
            self.send_response(200)
            self.send_header("Set-Cookie", "a=1")
            self.send_header("X-Dup", "one")
            self.send_header("Set-Cookie", "b=2")
            self.send_header("X-Dup", "two")
            self.send_header("Connection", "X-Secret, keep-alive")
            self.send_header("X-Secret", "internal")
            self.send_header("Keep-Alive", "timeout=5")
            self.send_header("Proxy-Connection", "keep-alive")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if bare.endswith("/close"):
            # Truncated response: promise more than is sent.
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        body = json.dumps(
            {
                "backend": self.server.name,
                "method": self.command,
                "path": path,
                "version": self.request_version,
                "headers": [[k, v] for k, v in self.headers.items()],
                "body_length": length,
                "body_sha256": sha,
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _wait_for_peer_close(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            readable, _, _ = select.select([self.connection], [], [], 0.05)
            if readable:
                try:
                    if self.connection.recv(1, socket.MSG_PEEK) == b"":
                        return True
                except ConnectionResetError:  # an aborted connection
                    return True
        return False

    def _stream_bytes(self, n: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(n))
        self.end_headers()
        block = b"0123456789abcdef" * 4096  # 64 KiB
        remaining = n
        while remaining:
            piece = block[: min(len(block), remaining)]
            self.wfile.write(piece)
            remaining -= len(piece)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _handle


class ThreadedServer(ThreadingHTTPServer):
    """An ``http.server`` backend serving from a thread of its own (a thread
    per connection) until ``stop()``: :class:`BackendServer`,
    :class:`~tests.e2e.tlsbackend.TLSBackend` for upstream TLS, and the
    scripted and auth servers of the cache and forward-auth tests."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, handler: type[BaseHTTPRequestHandler], port: int = 0, host: str = "127.0.0.1"
    ) -> None:
        super().__init__((host, port), handler)
        self.host = host
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(5)


class BackendServer(ThreadedServer):
    def __init__(self, name: str, port: int = 0, host: str = "127.0.0.1") -> None:
        super().__init__(_Handler, port, host)
        self.name = name
        self.connections: set[tuple[str, int]] = set()
        self.requests = 0
        self.peer_closed = 0
        #: Answer every request (health checks too) with this status.
        self.fail_status: int | None = None
        #: Hold every request this many seconds without answering.
        self.hang = 0.0
        self.open_sockets: set[socket.socket] = set()

    def record_connection(self, address: tuple[str, int]) -> None:
        with self._lock:
            self.connections.add(address)

    def kill(self) -> None:
        """Die like a crashed process: stop listening and drop every open connection."""
        self.stop()
        for sock in list(self.open_sockets):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def free_port() -> int:
    """A port that was free a moment ago (for 'nothing listens here' tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_LISTENING = re.compile(r"edgeproxy (https|http|admin) listener on ([0-9.:a-f]+):(\d+)")


class ProxyProcess:
    """``twistd -n edgeproxy`` in a subprocess, on ephemeral loopback ports."""

    def __init__(
        self,
        workdir: Path,
        config: Path,
        certs: Path,
        extra_args: Sequence[str] = (),
        https: bool = True,
        http: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        #: Added to (or replacing) this process's environment for twistd.
        self.env = dict(env or {})
        args = [
            TWISTD,
            "--pidfile=",
            "-n",
            "edgeproxy",
            "--config",
            str(config),
            "--certs",
            str(certs),
            "--admin",
            "tcp:0:interface=127.0.0.1",
        ]
        if https:
            args += ["--https", "tcp:0:interface=127.0.0.1"]
        args += ["--http", "tcp:0:interface=127.0.0.1" if http else "none"]
        args += list(extra_args)
        self.args = args
        self._wanted = {"admin"} | ({"https"} if https else set()) | ({"http"} if http else set())
        self.ports: dict[str, int] = {}
        self.output: list[str] = []
        self._lines = threading.Condition()
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> ProxyProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.process = subprocess.Popen(
            self.args,
            cwd=self.workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        wanted = self._wanted
        deadline = time.monotonic() + STARTUP_TIMEOUT
        with self._lines:
            while not wanted <= set(self.ports):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("edgeproxy did not start:\n" + "".join(self.output))
                self._lines.wait(0.1)
        return self

    def _pump(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            with self._lines:
                self.output.append(line)
                match = _LISTENING.search(line)
                if match:
                    self.ports.setdefault(match.group(1), int(match.group(3)))
                self._lines.notify_all()

    def wait_for_output(self, pattern: str, timeout: float = 10.0, start: int = 0) -> str:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._lines:
            while True:
                for line in self.output[start:]:
                    if regex.search(line):
                        return line
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"no output matching {pattern!r} within {timeout}s:\n" + "".join(self.output)
                    )
                self._lines.wait(0.1)

    def fast_paths(self, timeout: float = 10.0) -> str:
        """What the (first) start-up line says after ``fast paths: ``."""
        line = self.wait_for_output(r"fast paths: ", timeout)
        return line.split("fast paths: ", 1)[1].strip()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def client_context(ca_pem: bytes | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if ca_pem is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cadata=ca_pem.decode("ascii"))
    return ctx


def https_connection(
    port: int, server_hostname: str | None, ctx: ssl.SSLContext, timeout: float = 10.0
) -> http.client.HTTPSConnection:
    """An HTTPS connection to the proxy on 127.0.0.1 that sends ``server_hostname`` as SNI."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=timeout)

    def connect() -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout)
        conn.sock = ctx.wrap_socket(sock, server_hostname=server_hostname)

    conn.connect = connect  # type: ignore[method-assign]
    return conn


def request(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    host: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[http.client.HTTPResponse, bytes]:
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", host)
    for name, value in (headers or {}).items():
        conn.putheader(name, value)
    if body is not None:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    response = conn.getresponse()
    return response, response.read()


def raw_exchange(port: int, data: bytes, tls_ctx: ssl.SSLContext | None = None,
                 server_hostname: str | None = None, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes or goes quiet."""
    sock = socket.create_connection(("127.0.0.1", port), timeout)
    if tls_ctx is not None:
        sock = tls_ctx.wrap_socket(sock, server_hostname=server_hostname)
    try:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        sock.close()


def iter_body(n: int, block: int = 1 << 16) -> Iterator[bytes]:
    piece = os.urandom(block)
    sent = 0
    while sent < n:
        chunk = piece[: min(block, n - sent)]
        sent += len(chunk)
        yield chunk
