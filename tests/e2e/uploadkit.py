"""
An upload backend and client for the streamed-body tests and
``bench/upload.py``: the backend reads a request body (``Content-Length`` or
chunked) as it comes, discards it, and answers its length, its SHA-256 and
how it was framed, as JSON; it tells (an :class:`threading.Event`) when the
first body bytes of a request arrived, so a test can hold the rest of its
upload back until then.  The client generates its body on the fly.
"""

from __future__ import annotations

import hashlib
import json
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Iterator

BLOCK = 1 << 20


class _Reader:
    """Buffered reads from a socket (the head's lines, the chunk framing).
    What is left is ``buffer[pos:]``: reading a line or a piece moves
    ``pos`` instead of copying the rest, so a chunked body of many pieces
    costs no more than a sized one (the bench measures the proxy, not this)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.pos = 0

    def fill(self) -> bool:
        data = self.sock.recv(1 << 20)
        if not data:
            return False
        rest = self.buffer[self.pos :] if self.pos < len(self.buffer) else b""
        self.buffer = rest + data if rest else data
        self.pos = 0
        return True

    def line(self) -> bytes | None:
        while True:
            end = self.buffer.find(b"\r\n", self.pos)
            if end >= 0:
                line = self.buffer[self.pos : end]
                self.pos = end + 2
                return line
            if not self.fill():
                return None

    def take(self, n: int) -> Iterator[bytes]:
        """``n`` bytes, as they arrive."""
        while n > 0:
            if self.pos >= len(self.buffer) and not self.fill():
                raise ConnectionError("body cut short")
            end = min(self.pos + n, len(self.buffer))
            piece = memoryview(self.buffer)[self.pos : end]
            self.pos = end
            n -= len(piece)
            yield piece  # type: ignore[misc]


class _Handler(socketserver.BaseRequestHandler):
    server: UploadBackend

    def handle(self) -> None:
        reader = _Reader(self.request)
        while True:
            request_line = reader.line()
            if not request_line:
                return
            headers: dict[str, str] = {}
            while True:
                line = reader.line()
                if line is None:
                    return
                if not line:
                    break
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            digest = hashlib.sha256()
            count = 0
            first = True
            chunked = headers.get("transfer-encoding", "").lower() == "chunked"
            try:
                for piece in self._body(reader, headers, chunked):
                    if first:
                        first = False
                        self.server.first_bytes.set()
                    digest.update(piece)
                    count += len(piece)
            except ConnectionError:
                return
            body = json.dumps(
                {
                    "length": count,
                    "sha256": digest.hexdigest(),
                    "framing": "chunked" if chunked else "length",
                    "content_length": headers.get("content-length"),
                }
            ).encode()
            self.request.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )

    @staticmethod
    def _body(reader: _Reader, headers: dict[str, str], chunked: bool) -> Iterator[bytes]:
        if not chunked:
            yield from reader.take(int(headers.get("content-length", "0")))
            return
        while True:
            size_line = reader.line()
            if size_line is None:
                raise ConnectionError("chunked body cut short")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                while reader.line():  # trailers, then the empty line
                    pass
                return
            yield from reader.take(size)
            if reader.line() != b"":
                raise ConnectionError("bad chunk framing")


class UploadBackend(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        #: Set when a request's first body bytes arrive (clear it before a request).
        self.first_bytes = threading.Event()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def start(self) -> UploadBackend:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def pattern(size: int, seed: int = 7) -> Iterator[bytes]:
    """``size`` bytes, in blocks of at most :data:`BLOCK`, made on the fly."""
    block = hashlib.sha256(str(seed).encode()).digest() * (BLOCK // 32)
    left = size
    while left > 0:
        piece = block[: min(BLOCK, left)]
        left -= len(piece)
        yield piece


def expected_sha256(size: int, seed: int = 7) -> str:
    digest = hashlib.sha256()
    for piece in pattern(size, seed):
        digest.update(piece)
    return digest.hexdigest()


def tls_socket(port: int, host: str, ctx: ssl.SSLContext, timeout: float = 30.0) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", port), timeout)
    return ctx.wrap_socket(sock, server_hostname=host)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length (or until close): status, headers, body."""
    reader = _Reader(sock)
    status_line = reader.line() or b""
    status = int(status_line.split()[1]) if status_line else 0
    headers: dict[str, str] = {}
    while True:
        line = reader.line()
        if not line:
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = b"".join(reader.take(int(headers["content-length"])))
    else:
        while reader.fill():
            pass
        body = reader.buffer
    return status, headers, body


def upload(
    sock: socket.socket,
    host: str,
    path: str,
    size: int,
    *,
    chunked: bool = False,
    on_block: Callable[[int], None] | None = None,
) -> tuple[int, dict[str, str], bytes, float]:
    """PUT ``size`` generated bytes; the response and the seconds it took."""
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
    started = time.monotonic()
    sock.sendall(f"PUT {path} HTTP/1.1\r\nHost: {host}\r\n{framing}\r\n\r\n".encode())
    sent = 0
    for piece in pattern(size):
        sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        sent += len(piece)
        if on_block is not None:
            on_block(sent)
    if chunked:
        sock.sendall(b"0\r\n\r\n")
    status, headers, body = read_response(sock)
    return status, headers, body, time.monotonic() - started


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident set (``VmHWM``), in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM")
