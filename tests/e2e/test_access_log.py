"""
--access-log and --access-log-format json through the real proxy, and
request ids: made for untrusted clients, kept from trusted ones, passed
upstream, returned and logged.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import trustme

from tests.e2e.harness import BackendServer, ProxyProcess, client_context, https_connection, request

CONFIG = """
from edgeproxy.config import Cluster, Route, VirtualHost

virtual_hosts = [VirtualHost(["app.example"], routes=[Route("/", Cluster("app", endpoints=["{backend}"]))])]
"""

KEYS = {
    "time", "client", "method", "host", "path", "status", "bytes", "duration", "vhost", "route",
    "cluster", "endpoint", "upstream_status", "upstream_time", "attempts", "tls_version", "sni",
    "request_id", "cache",
}


def start(tmp_path: Path, *args: str) -> tuple[ProxyProcess, BackendServer, object]:
    ca = trustme.CA()
    certs = tmp_path / "certs"
    certs.mkdir()
    ca.issue_cert("app.example").private_key_and_cert_chain_pem.write_to_path(str(certs / "a.pem"))
    backend = BackendServer("app").start()
    site = tmp_path / "site.py"
    site.write_text(CONFIG.format(backend=backend.address))
    proxy = ProxyProcess(tmp_path, site, certs, args).start()
    return proxy, backend, client_context(ca.cert_pem.bytes())


def get(proxy: ProxyProcess, ctx: object, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    conn = https_connection(proxy.ports["https"], "app.example", ctx)  # type: ignore[arg-type]
    try:
        return request(conn, "GET", "/x?y=1", "app.example", headers=headers)
    finally:
        conn.close()


def read_lines(path: Path, count: int) -> list[dict]:  # type: ignore[type-arg]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if path.exists():
            lines = [json.loads(line) for line in path.read_text().splitlines() if line]
            if len(lines) >= count:
                return lines
        time.sleep(0.1)  # the file sink flushes every second
    raise AssertionError(f"fewer than {count} lines in {path}")


def test_json_access_log_file_and_request_ids(tmp_path: Path) -> None:
    log = tmp_path / "access.jsonl"
    proxy, backend, ctx = start(
        tmp_path, "--access-log", str(log), "--access-log-format", "json"
    )
    try:
        response, body = get(proxy, ctx, {"X-Request-Id": "client-chosen"})
        made = response.getheader("X-Request-Id")
        # Not a trusted source: the client's id is replaced by one of ours.
        assert made and made != "client-chosen" and len(made) == 32
        sent = dict((k.lower(), v) for k, v in json.loads(body)["headers"])
        assert sent["x-request-id"] == made
        entry = read_lines(log, 1)[0]
        assert KEYS <= set(entry), KEYS - set(entry)
        assert entry["request_id"] == made
        assert entry["path"] == "/x?y=1" and entry["status"] == 200
        assert entry["vhost"] == "app.example" and entry["cluster"] == "app"
        assert entry["tls_version"] == "TLSv1.3" and entry["sni"] == "app.example"
        assert entry["time"].endswith("Z")
        # The access lines do not go through the twistd log any more.
        assert not any("edgeproxy.access" in line for line in proxy.output)
    finally:
        proxy.stop()
        backend.stop()


def test_trusted_source_keeps_its_request_id(tmp_path: Path) -> None:
    proxy, backend, ctx = start(tmp_path, "--trusted-source", "127.0.0.0/8")
    try:
        response, body = get(proxy, ctx, {"X-Request-Id": "trace-123"})
        assert response.getheader("X-Request-Id") == "trace-123"
        sent = dict((k.lower(), v) for k, v in json.loads(body)["headers"])
        assert sent["x-request-id"] == "trace-123"
        line = proxy.wait_for_output(r"request_id=trace-123")
        assert "[edgeproxy.access#info]" in line
    finally:
        proxy.stop()
        backend.stop()


def test_access_log_off_logs_no_requests_but_still_counts_them(tmp_path: Path) -> None:
    proxy, backend, ctx = start(tmp_path, "--access-log", "off")
    try:
        for _ in range(3):
            response, _body = get(proxy, ctx)
            assert response.status == 200
        with urllib.request.urlopen(
            f"http://127.0.0.1:{proxy.ports['admin']}/metrics", timeout=5
        ) as answer:
            metrics = answer.read().decode()
        counted = [
            line
            for line in metrics.splitlines()
            if line.startswith("edgeproxy_requests_total{") and 'status_class="2xx"' in line
        ]
        assert counted and float(counted[0].rsplit(" ", 1)[1]) == 3.0, counted
    finally:
        proxy.stop()
        backend.stop()
    output = "".join(proxy.output)
    assert "edgeproxy https listener" in output  # the output was read at all
    assert '"GET /x?y=1 HTTP/1.1" 200' not in output
