"""
Forward authentication through the real ``twistd edgeproxy``, with a real
auth server (``http.server`` on 127.0.0.1, deciding by the
``Authorization`` header) and a backend that echoes what it got: allowed
with ``X-User`` copied, a client's forged ``X-User`` stripped, denied (401
with its ``WWW-Authenticate`` and body), redirected to a login page, and
failing closed (503) when the auth server is down.  An ``https://`` auth
server (the same one behind Python's ``ssl``, with a certificate from its
own CA): verified against a DNS name with SNI, or an IP with ``server_name``;
one that does not verify against the route's CA gets no question and the
request a 503 ``auth_unavailable``, the cause in the log; ``verify=False``
is loud at start-up.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import ssl
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
import trustme

from tests.e2e.harness import BackendServer, ProxyProcess, ThreadedServer, free_port

CONFIG = """
from edgeproxy.config import Cluster, ForwardAuth, Route, VirtualHost

app = Cluster("app", endpoints=["{backend}"])
auth = ForwardAuth(
    "http://{auth}/check",
    request_headers=["Authorization", "Cookie"],
    response_headers=["X-User"],
    timeout=2.0,
)
down = ForwardAuth("http://127.0.0.1:{down_port}/check", timeout=2.0)
virtual_hosts = [
    VirtualHost(
        ["app.example"],
        routes=[
            Route("/", app, plain_http=True),
            Route("/app/", app, plain_http=True, auth=auth),
            Route("/down/", app, plain_http=True, auth=down),
        ],
    ),
]
"""


class _AuthHandler(BaseHTTPRequestHandler):
    server: AuthServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.record(self.command, self.path, [[k, v] for k, v in self.headers.items()])
        token = self.headers.get("Authorization", "")
        if token.startswith("Bearer ") and token[7:] in ("alice", "bob"):
            self._answer(200, [("X-User", token[7:]), ("X-Not-Copied", "1")], b"")
        elif token == "Bearer nobody":
            self._answer(403, [("Content-Type", "text/plain")], b"not for you\n")
        elif not token:
            target = self.headers.get("X-Forwarded-Uri", "/")
            self._answer(302, [("Location", f"https://login.example/?next={target}")], b"")
        else:
            self._answer(
                401,
                [("WWW-Authenticate", 'Bearer realm="app", error="invalid_token"'),
                 ("Content-Type", "text/plain")],
                b"invalid token\n",
            )

    def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class AuthServer(ThreadedServer):
    def __init__(self) -> None:
        super().__init__(_AuthHandler)
        self.questions: list[tuple[str, str, list[list[str]]]] = []

    def record(self, method: str, path: str, headers: list[list[str]]) -> None:
        with self._lock:
            self.questions.append((method, path, headers))


class TLSAuthServer(AuthServer):
    """The auth server behind TLS, with ``context``'s certificate; the SNI
    of every handshake kept."""

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__()
        self.context = context
        self.server_names: list[str | None] = []
        context.sni_callback = self._sni

    def _sni(self, sslobj: Any, name: str | None, context: ssl.SSLContext) -> None:
        self.server_names.append(name)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        # The handshake happens on the first read, in the connection's thread.
        return (
            self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False),
            address,
        )

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a refused handshake: nothing to print


Rig = tuple[ProxyProcess, BackendServer, AuthServer]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("forwardauth")
    (tmp / "certs").mkdir()
    backend = BackendServer("app").start()
    auth = AuthServer().start()
    config = tmp / "site.py"
    config.write_text(
        CONFIG.format(backend=backend.address, auth=auth.address, down_port=free_port())
    )
    process = ProxyProcess(tmp, config, tmp / "certs", https=False).start()
    try:
        yield process, backend, auth
    finally:
        process.stop()
        backend.stop()
        auth.stop()


def fetch(
    proxy: ProxyProcess, path: str, headers: dict[str, str], source: str = "127.0.0.2"
) -> tuple[int, http.client.HTTPMessage, bytes]:
    conn = http.client.HTTPConnection(
        "127.0.0.1", proxy.ports["http"], timeout=10, source_address=(source, 0)
    )
    try:
        conn.request("POST", path, body=b"payload", headers={"Host": "app.example", **headers})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def echoed(body: bytes, name: str) -> list[str]:
    got = json.loads(body)
    return [v for k, v in got["headers"] if k.lower() == name.lower()]


def test_allowed_with_x_user_copied_and_a_forged_one_stripped(rig: Rig) -> None:
    process, backend, auth = rig
    before = len(auth.questions)
    status, _, body = fetch(
        process,
        "/app/orders?id=3",
        {"Authorization": "Bearer alice", "X-User": "admin", "Cookie": "s=1"},
    )
    assert status == 200
    got = json.loads(body)
    assert got["method"] == "POST" and got["path"] == "/app/orders?id=3"
    assert got["body_length"] == len(b"payload")
    assert echoed(body, "X-User") == ["alice"]
    assert echoed(body, "X-Not-Copied") == []
    method, path, headers = auth.questions[before]
    asked = {k.lower(): v for k, v in headers}
    assert (method, path) == ("GET", "/check")
    assert asked["x-forwarded-method"] == "POST"
    assert asked["x-forwarded-uri"] == "/app/orders?id=3"
    assert asked["x-forwarded-for"] == "127.0.0.2"
    assert asked["x-forwarded-proto"] == "http"
    assert asked["x-forwarded-host"] == "app.example"
    assert asked["authorization"] == "Bearer alice"
    assert asked["cookie"] == "s=1"
    assert "x-user" not in asked and "content-length" not in asked
    assert asked["x-request-id"] == echoed(body, "X-Request-Id")[0]
    # Another client, another user.
    status, _, body = fetch(process, "/app/x", {"Authorization": "Bearer bob"}, "127.0.0.3")
    assert (status, echoed(body, "X-User")) == (200, ["bob"])


def test_denied_401_passes_its_header_and_body_and_nothing_reaches_the_backend(rig: Rig) -> None:
    process, backend, _ = rig
    before = backend.requests
    status, headers, body = fetch(process, "/app/x", {"Authorization": "Bearer forged"})
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Bearer realm="app", error="invalid_token"'
    assert body == b"invalid token\n"
    status, headers, body = fetch(process, "/app/x", {"Authorization": "Bearer nobody"})
    assert (status, body) == (403, b"not for you\n")
    assert backend.requests == before
    process.wait_for_output(r"\" 401 .*reason=auth_denied")


def test_redirected_to_the_login_page(rig: Rig) -> None:
    process, backend, _ = rig
    before = backend.requests
    status, headers, _ = fetch(process, "/app/account?tab=2", {})
    assert status == 302
    assert headers["Location"] == "https://login.example/?next=/app/account?tab=2"
    assert backend.requests == before


def test_fails_closed_when_the_auth_server_is_down(rig: Rig) -> None:
    process, backend, _ = rig
    before = backend.requests
    status, _, body = fetch(process, "/down/x", {"Authorization": "Bearer alice"})
    assert (status, body) == (503, b"503 service unavailable\n")
    assert backend.requests == before
    process.wait_for_output(r"\" 503 .*reason=auth_unavailable")


def test_a_route_without_auth_is_not_asked_about(rig: Rig) -> None:
    process, _, auth = rig
    before = len(auth.questions)
    status, _, body = fetch(process, "/open", {"X-User": "mallory"})
    assert (status, echoed(body, "X-User")) == (200, ["mallory"])
    assert len(auth.questions) == before


def test_the_decisions_are_in_the_metrics(rig: Rig) -> None:
    process, _, _ = rig
    fetch(process, "/down/x", {})
    conn = http.client.HTTPConnection("127.0.0.1", process.ports["admin"], timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    assert 'edgeproxy_auth_decisions_total{result="unavailable",route="app.example/down/"}' in text
    assert 'edgeproxy_auth_decisions_total{result="allowed",route="app.example/app/"}' in text


TLS_CONFIG = """
from edgeproxy.config import Cluster, ForwardAuth, Route, UpstreamTLS, VirtualHost

app = Cluster("app", endpoints=["{backend}"])

def auth(url, tls):
    return ForwardAuth(url, tls=tls, response_headers=["X-User"], timeout=2.0)

virtual_hosts = [
    VirtualHost(
        ["app.example"],
        routes=[
            # A DNS name: verified against it, sent in SNI.
            Route("/dns/", app, plain_http=True,
                  auth=auth("https://localhost:{port}/check", UpstreamTLS(ca_file="pki/auth-ca.pem"))),
            Route("/named/", app, plain_http=True,
                  auth=auth("https://127.0.0.1:{port}/check",
                            UpstreamTLS(ca_file="pki/auth-ca.pem", server_name="auth.test"))),
            Route("/wrong-ca/", app, plain_http=True,
                  auth=auth("https://localhost:{port}/check", UpstreamTLS(ca_file="pki/other-ca.pem"))),
            Route("/insecure/", app, plain_http=True,
                  auth=auth("https://127.0.0.1:{port}/check", UpstreamTLS(verify=False))),
        ],
    ),
]
"""

TLSRig = tuple[ProxyProcess, BackendServer, TLSAuthServer]


@pytest.fixture(scope="module")
def tls_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSRig]:
    tmp = tmp_path_factory.mktemp("forwardauth-tls")
    (tmp / "certs").mkdir()
    (tmp / "sites" / "pki").mkdir(parents=True)
    ca, other = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(tmp / "sites" / "pki" / "auth-ca.pem"))
    other.cert_pem.write_to_path(str(tmp / "sites" / "pki" / "other-ca.pem"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost", "auth.test").configure_cert(context)
    backend = BackendServer("app").start()
    auth = TLSAuthServer(context)
    auth.start()
    config = tmp / "sites" / "site.py"
    config.write_text(TLS_CONFIG.format(backend=backend.address, port=auth.server_address[1]))
    # (An https listener on an ephemeral port: the module's other rig may hold the default one.)
    process = ProxyProcess(tmp, config, tmp / "certs").start()
    try:
        yield process, backend, auth
    finally:
        process.stop()
        backend.stop()
        auth.stop()


def test_a_verified_https_auth_service_allows_and_its_x_user_is_copied(tls_rig: TLSRig) -> None:
    process, _, auth = tls_rig
    before = len(auth.questions)
    status, _, body = fetch(process, "/dns/x", {"Authorization": "Bearer alice", "X-User": "eve"})
    assert (status, echoed(body, "X-User")) == (200, ["alice"])
    method, path, headers = auth.questions[before]
    assert (method, path) == ("GET", "/check")
    assert {k.lower(): v for k, v in headers}["host"] == f"localhost:{auth.server_address[1]}"
    assert "localhost" in auth.server_names
    # An IP literal, verified against server_name, which SNI sends.
    status, _, body = fetch(process, "/named/y", {"Authorization": "Bearer bob"}, "127.0.0.3")
    assert (status, echoed(body, "X-User")) == (200, ["bob"])
    assert "auth.test" in auth.server_names
    # A denial over TLS goes back as sent.
    status, _, body = fetch(process, "/dns/x", {"Authorization": "Bearer forged"})
    assert (status, body) == (401, b"invalid token\n")


def test_an_https_auth_service_that_does_not_verify_fails_closed(tls_rig: TLSRig) -> None:
    process, backend, auth = tls_rig
    requests, questions = backend.requests, len(auth.questions)
    status, _, body = fetch(process, "/wrong-ca/x", {"Authorization": "Bearer alice"})
    assert (status, body) == (503, b"503 service unavailable\n")
    assert (backend.requests, len(auth.questions)) == (requests, questions)
    process.wait_for_output(r"\" 503 .*reason=auth_unavailable")
    process.wait_for_output(
        r"forward auth https://localhost:\d+/check: the auth service is unavailable "
        r"\(upstream tls: certificate verify failed\)"
    )


def test_verify_false_is_loud_and_takes_any_certificate(tls_rig: TLSRig) -> None:
    process, _, _ = tls_rig
    process.wait_for_output(r"route app.example/insecure/: ForwardAuth tls verify=False")
    status, _, body = fetch(process, "/insecure/z", {"Authorization": "Bearer alice"})
    assert (status, echoed(body, "X-User")) == (200, ["alice"])


def test_a_reload_keeps_the_auth_services_pool_and_its_connection(tls_rig: TLSRig) -> None:
    process, _, auth = tls_rig
    assert fetch(process, "/dns/x", {"Authorization": "Bearer alice"})[0] == 200
    handshakes = len(auth.server_names)
    mark = len(process.output)
    assert process.process is not None
    process.process.send_signal(signal.SIGHUP)
    process.wait_for_output(r"configuration reloaded", start=mark)
    status, _, body = fetch(process, "/dns/x", {"Authorization": "Bearer bob"})
    assert (status, echoed(body, "X-User")) == (200, ["bob"])
    # Asked on the connection pooled before the reload: no new handshake.
    assert len(auth.server_names) == handshakes
