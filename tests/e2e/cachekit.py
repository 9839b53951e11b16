"""
A backend whose answers the test scripts, per path, for the cache's
end-to-end tests, and the requests it saw (to count what reached it and
read what the cache sent: its validators, its method).
"""

from __future__ import annotations

import email.utils
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.e2e.harness import ThreadedServer


@dataclass
class Reply:
    status: int = 200
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b"body"
    #: Interim responses sent first (e.g. 103 Early Hints).
    interim: Sequence[int] = ()
    #: Seconds to wait before answering.
    delay: float = 0.0
    #: Send the body chunked, in these pieces (with ``pause`` seconds between).
    chunks: Sequence[bytes] | None = None
    pause: float = 0.0
    #: Wait for this event (at most 10 s) after the first chunk.
    hold: threading.Event | None = None
    #: Promise the body's length but close after half of it.
    truncate: bool = False
    #: Close the connection without answering.
    drop: bool = False
    #: Add a Date header of now (as origins do) unless one is given.
    date: bool = True


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)


def http_date(offset: float = 0.0) -> str:
    return email.utils.formatdate(time.time() + offset, usegmt=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ScriptedBackend

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length", "0") or 0)
        if length:
            self.rfile.read(length)
        reply = self.server.take(
            Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
        )
        if reply.delay:
            time.sleep(reply.delay)
        if reply.drop:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        for code in reply.interim:
            self.send_response_only(code)
            self.send_header("Link", "</style.css>; rel=preload")
            self.end_headers()
        self.send_response_only(reply.status)
        names = {name.lower() for name, _ in reply.headers}
        if reply.date and "date" not in names:
            self.send_header("Date", http_date())
        for name, value in reply.headers:
            self.send_header(name, value)
        body = reply.body
        bodiless = self.command == "HEAD" or reply.status in (204, 304)
        if reply.chunks is not None and not bodiless:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i, chunk in enumerate(reply.chunks):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
                if i == 0 and reply.hold is not None:
                    reply.hold.wait(10)
                elif reply.pause:
                    time.sleep(reply.pause)
            self.wfile.write(b"0\r\n\r\n")
            return
        if reply.status not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if bodiless:
            return
        if reply.truncate:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle


class ScriptedBackend(ThreadedServer):
    """``backend.script("/p", Reply(...), Reply(...))``: the replies for
    ``/p`` (query ignored), in order, the last one repeated."""

    def __init__(self) -> None:
        super().__init__(_Handler)
        self._scripts: dict[str, list[Reply]] = {}
        self.seen: list[Seen] = []

    def script(self, path: str, *replies: Reply) -> None:
        with self._lock:
            self._scripts[path] = list(replies)

    def take(self, seen: Seen) -> Reply:
        path = seen.path.split("?")[0]
        with self._lock:
            self.seen.append(seen)
            replies = self._scripts.get(path)
            if not replies:
                return Reply(status=404, body=b"unscripted\n", headers=[("Cache-Control", "no-store")])
            return replies.pop(0) if len(replies) > 1 else replies[0]

    def requests(self, path: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.path.split("?")[0] == path]

    def count(self, path: str) -> int:
        return len(self.requests(path))
