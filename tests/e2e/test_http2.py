"""
HTTP/2 to clients through the real ``twistd edgeproxy`` over real TLS, on both
TLS layers: curl ``--http2``, ``h2load`` (nghttp2), httpx with ``http2=True``
(many streams on one connection), 421 and coalescing by the certificate's
names, the route's stages (cache, rate limit, forward auth) on an h2 route,
the access log line, ``--no-http2``, and the metrics.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import httpx
import pytest
import trustme

from tests.e2e.conftest import check_tls_layer, write_config
from tests.e2e.harness import BackendServer, ProxyProcess

CONFIG = """
from edgeproxy.config import (
    Cache, Cluster, ForwardAuth, RateLimit, Route, VirtualHost,
)

app = Cluster("app", endpoints=["{app}"])
virtual_hosts = [
    VirtualHost(["app.test", "www.app.test"], routes=[
        Route("/cached/", app, cache=Cache()),
        Route("/limited/", app, rate_limit=RateLimit(0.01, burst=2)),
        Route("/private/", app, auth=ForwardAuth("http://{auth}/check")),
        Route("/", app),
    ]),
    VirtualHost(["other.test"], routes=[Route("/", app)]),
]
"""


class _Backend(BackendServer):
    """The harness's backend with a listen backlog for many streams' worth of
    new upstream connections at once (socketserver's default is 5)."""

    request_queue_size = 1024


class _AuthHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        ok = self.headers.get("Authorization") == "Bearer yes"
        body = b"ok" if ok else b"no"
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@dataclass
class Site:
    proxy: ProxyProcess
    ca: trustme.CA
    ca_file: Path
    access_log: Path
    backend: BackendServer

    @property
    def port(self) -> int:
        return self.proxy.ports["https"]

    def url(self, host: str, path: str) -> str:
        return f"https://{host}:{self.port}{path}"

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def client(self) -> httpx.Client:
        """One connection to 127.0.0.1 whose SNI is app.test (``get`` below)."""
        return httpx.Client(
            http2=True,
            verify=self.context(),
            timeout=20.0,
            base_url=f"https://127.0.0.1:{self.port}",
            headers={"host": "app.test"},
        )


def get(client: httpx.Client, path: str, host: str = "app.test", **headers: str) -> httpx.Response:
    """GET over the client's one connection (SNI app.test), for ``host``."""
    return client.get(
        path, headers={"host": host, **headers}, extensions={"sni_hostname": "app.test"}
    )


def _resolve(host: str, port: int) -> list[str]:
    return ["--resolve", f"{host}:{port}:127.0.0.1"]


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory,
    ca: trustme.CA,
    tls_layer: tuple[str, ...],
) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("http2")
    certs = tmp / "certs"
    certs.mkdir()
    ca.issue_cert("app.test", "www.app.test").private_key_and_cert_chain_pem.write_to_path(
        str(certs / "app.pem")
    )
    ca.issue_cert("other.test").private_key_and_cert_chain_pem.write_to_path(
        str(certs / "other.pem")
    )
    ca_file = tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    backend = _Backend("app").start()
    auth = ThreadingHTTPServer(("127.0.0.1", 0), _AuthHandler)
    Thread(target=auth.serve_forever, daemon=True).start()
    config = write_config(
        tmp / "sites.py",
        CONFIG.format(app=backend.address, auth=f"127.0.0.1:{auth.server_address[1]}"),
    )
    access_log = tmp / "access.log"
    proxy = ProxyProcess(
        tmp, config, certs, ("--access-log", str(access_log), *tls_layer)
    ).start()
    check_tls_layer(proxy, tls_layer)
    try:
        yield Site(proxy, ca, ca_file, access_log, backend)
    finally:
        proxy.stop()
        auth.shutdown()
        auth.server_close()
        backend.stop()


def test_curl_speaks_http2(site: Site) -> None:
    result = subprocess.run(
        [
            "curl", "--http2", "-sS", "-i", "--cacert", str(site.ca_file),
            *_resolve("app.test", site.port), site.url("app.test", "/hello?x=1"),
        ],
        capture_output=True, text=True, timeout=30, check=True,
    )
    assert result.stdout.startswith("HTTP/2 200")
    body = json.loads(result.stdout.split("\n\n", 1)[1])
    assert body["path"] == "/hello?x=1"
    assert body["version"] == "HTTP/1.1"  # HTTP/1.1 to the backend, as ever
    headers = {k.lower(): v for k, v in body["headers"]}
    assert headers["host"] == f"app.test:{site.port}"
    assert headers["x-forwarded-proto"] == "https"


def test_curl_posts_a_body(site: Site, tmp_path: Path) -> None:
    payload = tmp_path / "body"
    payload.write_bytes(b"z" * 300_000)
    result = subprocess.run(
        [
            "curl", "--http2", "-sS", "--cacert", str(site.ca_file),
            *_resolve("app.test", site.port), "--data-binary", f"@{payload}",
            site.url("app.test", "/upload"),
        ],
        capture_output=True, text=True, timeout=30, check=True,
    )
    body = json.loads(result.stdout)
    assert body["method"] == "POST"
    assert body["body_length"] == 300_000


def test_httpx_many_streams_on_one_connection(site: Site) -> None:
    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(
            http2=True,
            verify=site.context(),
            timeout=30.0,
            limits=limits,
            base_url=f"https://127.0.0.1:{site.port}",
            headers={"host": "app.test"},
        ) as client:
            sni = {"sni_hostname": "app.test"}
            return await asyncio.gather(
                client.get("/big/bytes/3000000", extensions=sni),
                *(client.get(f"/n/{i}", extensions=sni) for i in range(200)),
            )

    responses = asyncio.run(run())
    assert all(r.http_version == "HTTP/2" for r in responses)
    assert [r.status_code for r in responses] == [200] * 201, (
        [(r.status_code, r.text[:100]) for r in responses if r.status_code != 200],
        "".join(site.proxy.output[-30:]),
    )
    for i, response in enumerate(responses[1:]):
        assert response.json()["path"] == f"/n/{i}"
    assert len(responses[0].content) == 3_000_000


def test_h2load_all_succeed(site: Site) -> None:
    if shutil.which("h2load") is None:  # pragma: no cover - installed by .ci/run
        pytest.fail("h2load (nghttp2-client) is not installed")
    result = subprocess.run(
        [
            "h2load", "-n", "2000", "-c", "2", "-m", "50",
            "--connect-to", f"127.0.0.1:{site.port}",
            site.url("app.test", "/load"),
        ],
        capture_output=True, text=True, timeout=120,
    )
    assert "Application protocol: h2" in result.stdout, result.stdout + result.stderr
    match = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, "
                      r"(\d+) failed, (\d+) errored", result.stdout)
    assert match is not None, result.stdout
    total, done, succeeded, failed, errored = map(int, match.groups())
    assert (total, done, succeeded, failed, errored) == (2000, 2000, 2000, 0, 0)
    assert "status codes: 2000 2xx" in result.stdout


def test_misdirected_and_coalesced(site: Site) -> None:
    with site.client() as client:
        first = get(client, "/a")
        # Coalescing: www.app.test is on app.test's certificate, so the
        # same connection serves it.
        second = get(client, "/b", host="www.app.test")
        misdirected = get(client, "/c", host="other.test")
        after = get(client, "/d")
    assert first.http_version == second.http_version == "HTTP/2"
    assert second.status_code == 200
    assert ["host", "www.app.test"] in second.json()["headers"]
    assert misdirected.status_code == 421
    assert after.status_code == 200  # only that stream was refused


def test_stages_on_an_h2_route(site: Site) -> None:
    with site.client() as client:
        cached = [get(client, "/cached/thing") for _ in range(2)]
        limited = [get(client, "/limited/x").status_code for _ in range(3)]
        denied = get(client, "/private/x")
        allowed = get(client, "/private/x", authorization="Bearer yes")
    assert [r.http_version for r in cached] == ["HTTP/2", "HTTP/2"]
    assert cached[0].status_code == cached[1].status_code == 200
    # The cache stage saw both (the backend's answer is not storable).
    assert all(r.headers["cache-status"].startswith("edgeproxy") for r in cached)
    assert limited == [200, 200, 429]
    assert denied.status_code == 401
    assert allowed.status_code == 200


def test_access_log_says_http2(site: Site) -> None:
    with site.client() as client:
        get(client, "/logged-h2")
    deadline_lines = _wait_for(site.access_log, "/logged-h2")
    assert '"GET /logged-h2 HTTP/2" 200' in deadline_lines


def _wait_for(path: Path, needle: str, timeout: float = 10.0) -> str:
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists():
            for line in path.read_text().splitlines():
                if needle in line:
                    return line
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} not in {path}")


def test_metrics_count_h2_connections_and_streams(site: Site) -> None:
    with site.client() as client:
        get(client, "/counted")
        metrics = httpx.get(f"http://127.0.0.1:{site.proxy.ports['admin']}/metrics").text
        document = httpx.get(f"http://127.0.0.1:{site.proxy.ports['admin']}/status").json()
    assert re.search(r"^edgeproxy_h2_connections 1\.0$", metrics, re.M), metrics
    streams = re.search(r"^edgeproxy_h2_streams_total (\d+)\.0$", metrics, re.M)
    assert streams is not None and int(streams.group(1)) >= 1
    # /status, read while that h2 connection is open.
    http2 = document["connections"]["http2"]
    assert http2["connections"] == 1
    assert http2["streams_total"] == int(streams.group(1))
    assert http2["active_streams"] == 0
    assert document["connections"]["open"]["https"] >= 1


def test_no_http2_offers_http11_only(
    tmp_path: Path, ca: trustme.CA, tls_layer: tuple[str, ...]
) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    ca.issue_cert("app.test").private_key_and_cert_chain_pem.write_to_path(
        str(certs / "app.pem")
    )
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    backend = BackendServer("app").start()
    config = write_config(tmp_path / "sites.py", CONFIG.format(app=backend.address, auth="x:1"))
    proxy = ProxyProcess(tmp_path, config, certs, ("--no-http2", *tls_layer)).start()
    try:
        port = proxy.ports["https"]
        result = subprocess.run(
            ["curl", "--http2", "-sS", "-i", "--cacert", str(ca_file),
             *_resolve("app.test", port), f"https://app.test:{port}/plain"],
            capture_output=True, text=True, timeout=30, check=True,
        )
        assert result.stdout.startswith("HTTP/1.1 200")
    finally:
        proxy.stop()
        backend.stop()
