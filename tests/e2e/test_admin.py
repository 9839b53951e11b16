"""
The admin listener of the real proxy: ``/readyz``, ``/status`` and the HTML
page at ``/``, the latter loaded in a real headless Chromium.
"""

from __future__ import annotations

import datetime
import html
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.e2e.conftest import write_config
from tests.e2e.harness import (
    BackendServer,
    ProxyProcess,
    client_context,
    free_port,
    https_connection,
    request,
)

HOSTILE_CLUSTER = "<b>legacy</b>"

CONFIG = """
from edgeproxy.config import Cluster, HealthCheck, OutlierDetection, Route, VirtualHost

shop = Cluster(
    "shop-api",
    endpoints=["{live}", "{dead}"],
    health_check=HealthCheck(path="/healthz", interval=0.3, timeout=0.5, rise=1, fall=1, jitter=0.0),
    outlier_detection=OutlierDetection(consecutive_failures=3, base_ejection_time=30.0),
    connect_timeout=1.0,
)
legacy = Cluster({hostile!r}, endpoints=["{live}"])
virtual_hosts = [
    VirtualHost(
        ["shop.example", "*.shop.example"],
        routes=[Route("/", shop), Route("/legacy/", legacy, strip_prefix=True)],
    )
]
"""


@dataclass
class Admin:
    proxy: ProxyProcess
    live: BackendServer
    dead: str
    ca: trustme.CA

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.proxy.ports['admin']}"

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=5) as response:
                return response.status, dict(response.headers.items()), response.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers.items()), e.read()

    def status(self) -> dict[str, Any]:
        code, _, body = self.get("/status")
        assert code == 200
        document: dict[str, Any] = json.loads(body)
        return document

    def endpoint(self, address: str) -> dict[str, Any]:
        for entry in self.status()["clusters"]["shop-api"]["endpoints"]:
            if entry["endpoint"] == address:
                return entry  # type: ignore[no-any-return]
        raise KeyError(address)


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


@pytest.fixture
def admin(
    tmp_path: Path,
    ca: trustme.CA,
    backends: Callable[[str], BackendServer],
    proxies: Callable[..., ProxyProcess],
) -> Admin:
    certs = tmp_path / "certs"
    certs.mkdir()
    ca.issue_cert("shop.example", "*.shop.example").private_key_and_cert_chain_pem.write_to_path(
        str(certs / "shop.pem")
    )
    # Expires in ten and a half days: highlighted on the page.
    soon = datetime.datetime.now(tz=datetime.UTC) + datetime.timedelta(days=10, hours=12)
    ca.issue_cert("soon.example", not_after=soon).private_key_and_cert_chain_pem.write_to_path(
        str(certs / "soon.pem")
    )
    live = backends("live")
    dead = f"127.0.0.1:{free_port()}"
    config = write_config(
        tmp_path / "site.py",
        CONFIG.format(live=live.address, dead=dead, hostile=HOSTILE_CLUSTER),
    )
    proxy = proxies(tmp_path, config, certs)
    env = Admin(proxy, live, dead, ca)
    _wait(lambda: env.get("/readyz")[0] == 200, 10, "/readyz answers 200")
    _wait(
        lambda: (
            env.endpoint(live.address)["health"]["state"] == "healthy"
            and env.endpoint(dead)["health"]["state"] == "unhealthy"
        ),
        10,
        "health checks settle",
    )
    return env


def _send_traffic(env: Admin, n: int) -> None:
    ctx = client_context(env.ca.cert_pem.bytes())
    for _ in range(n):
        conn = https_connection(env.proxy.ports["https"], "shop.example", ctx)
        try:
            response, _ = request(conn, "GET", "/", "shop.example")
            assert response.status == 200
        finally:
            conn.close()


def test_readyz_healthz_and_status(admin: Admin) -> None:
    code, headers, body = admin.get("/readyz")
    assert (code, body) == (200, b"ready\n")
    assert headers["Cache-Control"] == "no-store"
    code, _, body = admin.get("/healthz")
    assert (code, body) == (200, b"ok\n")
    code, _, body = admin.get("/metrics")
    assert code == 200 and b"# HELP" in body

    _send_traffic(admin, 3)
    document = admin.status()
    assert {
        "process",
        "ready",
        "listeners",
        "config",
        "virtual_hosts",
        "clusters",
        "certificates",
    } <= set(document)
    assert document["process"]["pid"] == admin.proxy.pid
    assert document["process"]["uptime_seconds"] >= 0
    assert document["process"]["version"]
    assert document["ready"] == {"ready": True, "reasons": []}
    kinds = {entry["kind"]: entry for entry in document["listeners"]}
    assert set(kinds) == {"https", "http", "admin"}
    assert kinds["admin"]["address"] == f"127.0.0.1:{admin.proxy.ports['admin']}"
    assert kinds["https"]["address"] == f"127.0.0.1:{admin.proxy.ports['https']}"
    assert kinds["https"]["description"] == "tcp:0:interface=127.0.0.1"
    routes = document["virtual_hosts"][0]["routes"]
    assert [r["prefix"] for r in routes] == ["/", "/legacy/"]
    assert routes[1]["clusters"] == [HOSTILE_CLUSTER]
    live = admin.endpoint(admin.live.address)
    assert live["available"] is True and live["requests"] >= 3
    assert admin.endpoint(admin.dead)["available"] is False
    by_names = {tuple(c["names"]): c for c in document["certificates"]}
    soon = by_names[("soon.example",)]
    assert soon["days_to_expiry"] == 10 and soon["expired"] is False
    assert {"source", "not_before", "not_after", "default"} <= set(soon)
    assert by_names[("shop.example", "*.shop.example")]["days_to_expiry"] > 14


def test_page_headers_and_unknown_paths(admin: Admin) -> None:
    code, _, _ = admin.get("/no-such-page")
    assert code == 404
    code, headers, body = admin.get("/")
    assert code == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Cache-Control"] == "no-store"
    assert headers["Content-Security-Policy"] == "default-src 'none'; style-src 'unsafe-inline'"
    assert b"<script" not in body.lower()


# -- the page in a real browser ---------------------------------------------------------------


@pytest.fixture
def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        message = (
            "chromium not installed: the admin page test needs Debian's chromium "
            "(apt-get install -y chromium); .ci/run installs it"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip("chromium not installed")
    return found


def _run_chromium(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, (
        f"chromium failed ({result.returncode}):\n{result.stderr[-3000:]}"
    )
    return result


def _row(dom: str, needle: str) -> str:
    """The serialised table row of ``dom`` that contains ``needle``."""
    for match in re.finditer(r"<tr\b.*?</tr>", dom, flags=re.S):
        if needle in match.group(0):
            return match.group(0)
    raise AssertionError(f"no row with {needle!r} in:\n{dom}")


def _text(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


def test_admin_page_in_headless_chromium(chromium: str, admin: Admin, tmp_path: Path) -> None:
    _send_traffic(admin, 3)
    document = admin.status()
    url = admin.base + "/"

    dom = _run_chromium(chromium, tmp_path / "profile", "--dump-dom", url).stdout
    screenshot = tmp_path / "page.png"
    _run_chromium(
        chromium,
        tmp_path / "profile",
        f"--screenshot={screenshot}",
        "--window-size=1200,900",
        "--hide-scrollbars",
        url,
    )

    assert "<h2>Clusters</h2>" in dom, dom
    # The cluster and each endpoint with its state and traffic.
    assert "shop-api" in dom
    live = _text(_row(dom, admin.live.address))
    assert "available" in live and "unavailable" not in live
    assert "health healthy" in live and "breaker closed" in live
    requests = admin.endpoint(admin.live.address)["requests"]
    assert requests >= 3 and str(requests) in live
    dead_row = _row(dom, admin.dead)
    assert 'class="bad"' in dead_row
    dead = _text(dead_row)
    assert "unavailable" in dead and "health unhealthy" in dead
    # The hostile cluster name is text, not markup.
    assert "<b>legacy</b>" not in dom
    assert html.escape(HOSTILE_CLUSTER, quote=False) in dom
    # Certificates: names and days to expiry, the soon-expiring one highlighted.
    certs = {tuple(c["names"]): c for c in document["certificates"]}
    shop_row = _row(dom, "shop.pem")
    days = certs[("shop.example", "*.shop.example")]["days_to_expiry"]
    assert "*.shop.example" in shop_row and f"{days} days" in _text(shop_row)
    soon_row = _row(dom, "soon.pem")
    assert 'class="warn"' in soon_row and "10 days" in _text(soon_row)
    # Routes and listeners.
    assert "*.shop.example" in dom and "/legacy/" in dom
    assert f"127.0.0.1:{admin.proxy.ports['https']}" in dom
    assert str(admin.proxy.pid) in dom

    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 10_000
