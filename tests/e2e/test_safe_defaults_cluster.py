"""
Safe cluster defaults through the real ``twistd edgeproxy`` (issue 13): a dead
endpoint leaves the rotation with no configuration, a Split steers around a
side with nothing available, health checks are quiet in the log, and a
cluster no route uses is shown, checked and kept across a reload.
"""

from __future__ import annotations

import json
import signal
import ssl
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from edgeproxy.config import Cluster, Split
from edgeproxy.config.routing import SplitChooser
from edgeproxy.core.selection import stable_roll
from tests.e2e.harness import (
    BackendServer,
    ProxyProcess,
    client_context,
    free_port,
    https_connection,
    request,
)

HOST = "app.example"


class Proxy:
    """A running proxy, its site file and a client for it."""

    def __init__(self, tmp_path: Path, ca: trustme.CA) -> None:
        self.tmp_path = tmp_path
        self.ctx: ssl.SSLContext = client_context(ca.cert_pem.bytes())
        certs = tmp_path / "certs"
        certs.mkdir()
        ca.issue_cert(HOST).private_key_and_cert_chain_pem.write_to_path(str(certs / "app.pem"))
        self.certs = certs
        self.site = tmp_path / "site.py"
        self.process: ProxyProcess | None = None

    def start(self, config: str) -> ProxyProcess:
        self.site.write_text(config)
        self.process = ProxyProcess(self.tmp_path, self.site, self.certs).start()
        return self.process

    def rewrite(self, config: str) -> None:
        """Replace the site file and SIGHUP; wait for the reload to be logged."""
        assert self.process is not None and self.process.process is not None
        start = len(self.process.output)
        tmp = self.site.with_suffix(".tmp")
        tmp.write_text(config)
        tmp.rename(self.site)
        self.process.process.send_signal(signal.SIGHUP)
        self.process.wait_for_output(r"configuration reloaded", start=start)

    def get(self, path: str = "/", headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        assert self.process is not None
        conn = https_connection(self.process.ports["https"], HOST, self.ctx, timeout=15)
        try:
            response, body = request(conn, "GET", path, HOST, headers=headers)
            return response.status, body
        finally:
            conn.close()

    def admin(self, path: str) -> bytes:
        assert self.process is not None
        url = f"http://127.0.0.1:{self.process.ports['admin']}{path}"
        with urllib.request.urlopen(url, timeout=5) as response:
            body: bytes = response.read()
            return body

    def clusters(self) -> dict[str, Any]:
        clusters: dict[str, Any] = json.loads(self.admin("/status"))["clusters"]
        return clusters

    def endpoint(self, cluster: str, address: str) -> dict[str, Any]:
        for entry in self.clusters()[cluster]["endpoints"]:
            if entry["endpoint"] == address:
                return entry  # type: ignore[no-any-return]
        raise KeyError(address)


@pytest.fixture
def proxy(tmp_path: Path, ca: trustme.CA) -> Iterator[Proxy]:
    made = Proxy(tmp_path, ca)
    yield made
    if made.process is not None:
        made.process.stop()


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def backend_of(body: bytes) -> str:
    name: str = json.loads(body)["backend"]
    return name


# -- a dead endpoint leaves the rotation without any configuration ------------------

DEAD_ENDPOINT = """
from edgeproxy.config import Cluster, Route, VirtualHost

pair = Cluster("pair", endpoints=["{live}", "{dead}"])
opted_out = Cluster("opted-out", endpoints=["{live}", "{dead}"], outlier_detection=None)
virtual_hosts = [
    VirtualHost(["app.example"], routes=[Route("/", pair), Route("/opted-out/", opted_out)]),
]
"""


def test_a_dead_endpoint_leaves_the_rotation_without_any_configuration(
    proxy: Proxy, backends: Callable[[str], BackendServer]
) -> None:
    live = backends("live")
    dead = f"127.0.0.1:{free_port()}"
    process = proxy.start(DEAD_ENDPOINT.format(live=live.address, dead=dead))
    conn = https_connection(process.ports["https"], HOST, proxy.ctx, timeout=15)
    try:
        for prefix in ("/", "/opted-out/"):
            statuses = Counter(
                request(conn, "GET", prefix + "x", HOST)[0].status for _ in range(40)
            )
            assert statuses == {200: 40}, (prefix, statuses)
    finally:
        conn.close()
    entry = proxy.endpoint("pair", dead)
    # Five refused connections (each retried on the live endpoint), then out for 30 s.
    assert entry["requests"] == 5 and entry["failures"] == 5, entry
    assert entry["available"] is False
    assert entry["breaker"]["state"] == "open" and entry["breaker"]["ejections"] == 1
    assert 15 < entry["breaker"]["ejected_for"] <= 30
    # outlier_detection=None keeps the endpoint in: every second request pays a refusal.
    entry = proxy.endpoint("opted-out", dead)
    assert entry["failures"] == 20 and entry["available"] is True and entry["breaker"] is None


# -- a Split steers around a side that has nothing available -------------------------

SPLIT = """
from edgeproxy.config import Cluster, Route, Split, VirtualHost

a = Cluster("a", endpoints=["{a}"])
b = Cluster("b", endpoints=["{b}"])
virtual_hosts = [VirtualHost(["app.example"], routes=[Route("/", Split({{a: 50, b: 50}}))])]
"""


def test_a_split_sends_a_dead_sides_share_to_the_other_side(
    proxy: Proxy, backends: Callable[[str], BackendServer]
) -> None:
    a = backends("a")
    dead = f"127.0.0.1:{free_port()}"
    proxy.start(SPLIT.format(a=a.address, b=dead))
    served = [proxy.get("/x") for _ in range(60)]
    # Side b's first five requests meet refusals (each then retried on a, as
    # it was never sent) that take its endpoint out; after that b gets none.
    assert [status for status, _ in served] == [200] * 60
    assert {backend_of(body) for _, body in served} == {"a"}
    entry = proxy.endpoint("b", dead)
    assert entry["available"] is False and entry["requests"] == 5, entry
    assert proxy.clusters()["a"]["retries"] == 5


STICKY_SPLIT = """
from edgeproxy.config import Cluster, HealthCheck, Route, Split, VirtualHost

check = HealthCheck("/healthz", interval=0.2, timeout=0.5, rise=1, fall=1, jitter=0.0)
a = Cluster("a", endpoints=["{a}"], health_check=check)
b = Cluster("b", endpoints=["{b}"], health_check=check)
c = Cluster("c", endpoints=["{c}"], health_check=check)
virtual_hosts = [
    VirtualHost(
        ["app.example"],
        routes=[Route("/", Split({{a: 1, b: 1, c: 1}}, sticky="cookie:side"))],
    ),
]
"""


def sticky_cookies(side: str, count: int) -> list[str]:
    """Cookie values whose stable roll the a/b/c split sends to ``side``."""
    clusters = [Cluster(name, endpoints=["127.0.0.1:1"]) for name in "abc"]
    chooser = SplitChooser(Split(dict.fromkeys(clusters, 1), sticky="cookie:side"))
    values = (f"client-{i}" for i in range(10_000))
    return [v for v in values if chooser.choose(stable_roll(v.encode())).name == side][:count]


def test_a_sticky_client_of_a_down_side_keeps_one_other_side_until_its_own_is_back(
    proxy: Proxy, backends: Callable[[str], BackendServer]
) -> None:
    servers = {name: backends(name) for name in "abc"}
    proxy.start(STICKY_SPLIT.format(**{n: s.address for n, s in servers.items()}))
    cookies = sticky_cookies("b", 30)

    def sides() -> list[str]:
        served = []
        for value in cookies:
            status, body = proxy.get("/x", headers={"Cookie": f"side={value}"})
            assert status == 200
            served.append(backend_of(body))
        return served

    assert sides() == ["b"] * 30
    servers["b"].fail_status = 503  # its health checks fail
    wait_until(lambda: not proxy.endpoint("b", servers["b"].address)["available"], 5, "b out")
    fallback = sides()
    assert set(fallback) == {"a", "c"}, fallback
    assert sides() == fallback  # each client keeps its fallback side
    servers["b"].fail_status = None
    wait_until(lambda: proxy.endpoint("b", servers["b"].address)["available"], 5, "b back")
    assert sides() == ["b"] * 30


# -- health checks are quiet ----------------------------------------------------------

CHECKED = """
from edgeproxy.config import Cluster, HealthCheck, Route, VirtualHost

pair = Cluster(
    "pair",
    endpoints=["{live}", "{dead}"],
    health_check=HealthCheck("/healthz", interval=0.2, timeout=0.5, rise=2, fall=2),
)
virtual_hosts = [VirtualHost(["app.example"], routes=[Route("/", pair)])]
"""


def test_health_checks_log_failures_and_transitions_only(
    proxy: Proxy, backends: Callable[[str], BackendServer]
) -> None:
    live = backends("live")
    dead = f"127.0.0.1:{free_port()}"
    process = proxy.start(CHECKED.format(live=live.address, dead=dead))
    started = live.requests
    # Ten intervals: twenty checks or so of each endpoint.
    wait_until(lambda: live.requests - started >= 20, 10, "twenty checks of the live endpoint")
    log = "".join(process.output)
    assert "Starting factory" not in log and "Stopping factory" not in log, log
    failed = [line for line in process.output if "health check failed" in line]
    # The dead endpoint's refusals: logged once, not once per check.
    assert len(failed) == 1 and f"pair/{dead} health check failed: connect refused" in failed[0]
    assert any(f"pair/{dead} health healthy -> unhealthy" in line for line in process.output)
    assert not any(f"pair/{live.address}" in line for line in process.output), log


# -- every cluster is visible ---------------------------------------------------------

BLUE_GREEN = """
from edgeproxy.config import Cluster, HealthCheck, Route, VirtualHost

check = HealthCheck("/healthz", interval=0.2, timeout=0.5, rise=1, fall=1, jitter=0.0)
blue = Cluster("blue", endpoints=["{blue}"], health_check=check)
green = Cluster("green", endpoints=["{green}"], health_check=check)
virtual_hosts = [VirtualHost(["app.example"], routes=[Route("/", {live})])]
"""


def test_an_idle_cluster_is_shown_checked_and_kept_across_a_reload(
    proxy: Proxy, backends: Callable[[str], BackendServer]
) -> None:
    blue, green = backends("blue"), backends("green")
    config = BLUE_GREEN.replace("{blue}", blue.address).replace("{green}", green.address)
    proxy.start(config.replace("{live}", "blue"))
    assert backend_of(proxy.get()[1]) == "blue"
    # Green serves no route, yet it is checked, and shown in /status, /metrics and the page.
    wait_until(lambda: green.requests >= 2, 5, "green health-checked")
    clusters = proxy.clusters()
    assert clusters["green"]["idle"] is True and clusters["blue"]["idle"] is False
    assert clusters["green"]["endpoints"][0]["health"]["consecutive_passes"] >= 1
    metrics = proxy.admin("/metrics").decode()
    assert f'edgeproxy_endpoint_available{{cluster="green",endpoint="{green.address}"}} 1.0' in (
        metrics
    )
    assert b"idle: no route uses it" in proxy.admin("/")
    # An operator sees green go bad before switching to it...
    green.fail_status = 503
    wait_until(lambda: not proxy.endpoint("green", green.address)["available"], 5, "green out")
    transitions = proxy.clusters()["green"]["recent_transitions"]
    assert [(t["old"], t["new"]) for t in transitions] == [("healthy", "unhealthy")]
    # ...and the switch keeps green's runtime: its state and history carry over.
    proxy.rewrite(config.replace("{live}", "green"))
    clusters = proxy.clusters()
    assert clusters["green"]["idle"] is False and clusters["blue"]["idle"] is True
    assert clusters["green"]["recent_transitions"] == transitions
    assert clusters["green"]["endpoints"][0]["available"] is False
    green.fail_status = None
    wait_until(lambda: proxy.endpoint("green", green.address)["available"], 5, "green back")
    assert backend_of(proxy.get()[1]) == "green"
