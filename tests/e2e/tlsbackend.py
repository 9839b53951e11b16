"""
A TLS backend for the end-to-end tests of ``Cluster.upstream_tls``: Python's
``http.server`` behind Python's ``ssl`` on 127.0.0.1, with its own
certificate, recording per connection whether its handshake completed, the
SNI the client sent and whether the session was resumed.
"""

from __future__ import annotations

import socket
import ssl
from http.server import BaseHTTPRequestHandler
from typing import Any

import attrs

from tests.e2e.harness import ThreadedServer


@attrs.define
class Handshake:
    """One connection's TLS handshake as the backend saw it."""

    ok: bool
    session_reused: bool = False
    server_name: str | None = None
    client_subject: str | None = None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: TLSBackend

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        conn: ssl.SSLSocket = self.request
        conn.settimeout(5.0)
        try:
            conn.do_handshake()
        except (OSError, ssl.SSLError):
            self.server.record(Handshake(ok=False))
            raise
        peer = conn.getpeercert()
        subject = None
        if peer:
            subject = dict(item for rdn in peer.get("subject", ()) for item in rdn).get(
                "commonName"
            )
        self.server.record(
            Handshake(
                ok=True,
                session_reused=conn.session_reused,
                server_name=self.server.sni.pop(id(conn), None),
                client_subject=subject,
            )
        )
        super().setup()

    def do_GET(self) -> None:
        self.server.requests += 1
        body = f"{self.server.name} {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        if "/close" in self.path:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)


class TLSBackend(ThreadedServer):
    """``TLSBackend("app", context).start()``: serves on ``address`` until ``stop()``."""

    def __init__(self, name: str, context: ssl.SSLContext) -> None:
        super().__init__(_Handler)
        self.name = name
        self.context = context
        self.requests = 0
        self.handshakes: list[Handshake] = []
        #: The SNI of each connection in its handshake, by its SSLObject's id.
        self.sni: dict[int, str | None] = {}
        context.sni_callback = self._sni

    def _sni(self, sslobj: Any, name: str | None, context: ssl.SSLContext) -> None:
        self.sni[id(sslobj)] = name

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        # The handshake happens in the connection's thread (see _Handler.setup).
        return (
            self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False),
            address,
        )

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a refused handshake is recorded; nothing to print

    def record(self, handshake: Handshake) -> None:
        with self._lock:
            self.handshakes.append(handshake)

