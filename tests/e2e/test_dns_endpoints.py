"""
Endpoints given by name through the real proxy: ``app.internal:PORT``
resolved with ``--resolver`` at a DNS server on loopback (tests/e2e/dnsserver.py)
whose answers the test rewrites.  The name goes from two backends to three
to one with steady traffic following within one ``resolve_every`` and no
request failing; a DNS server that goes away leaves the last set serving;
with active checks a new address waits for its first passing check; a request
in flight on an address that leaves finishes.
Backends listen on 127.0.0.2, .3 and .4, all on the same port (A records
carry no port).
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from tests.e2e.harness import BackendServer, ProxyProcess, client_context, https_connection, request

HOST = "app.example"
RESOLVE_EVERY = 0.5
#: What a change may take beyond ``resolve_every``: the query and a loaded machine.
SLACK = 0.4
REPO = Path(__file__).resolve().parents[2]

CONFIG = """
from edgeproxy.config import Cluster, HealthCheck, Route, VirtualHost

app = Cluster(
    "app", endpoints=["app.internal:{port}"], resolve_every={every}, health_check={check}
)
virtual_hosts = [VirtualHost(["app.example"], routes=[Route("/", app)])]
"""
#: Active checks fast enough for a test: a new address is in after one pass.
CHECK = "HealthCheck('/health', interval=0.2, timeout=1.0, jitter=0.0)"


class DNSServer:
    """tests/e2e/dnsserver.py in a subprocess, answering from a file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.set([])
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.dnsserver", str(path)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        match = re.match(r"dns on (\d+)", line)
        assert match, line
        self.port = int(match.group(1))

    def set(self, addresses: list[str]) -> None:
        # Written whole and renamed: the server never reads half a file.
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"app.internal": addresses}))
        tmp.replace(self.path)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(5)


class Load:
    """Sequential GETs over a keep-alive connection in a thread, bounded in time."""

    def __init__(self, proxy: ProxyProcess, ctx: ssl.SSLContext, limit: float = 8.0) -> None:
        self.proxy = proxy
        self.ctx = ctx
        self.limit = limit
        self.results: list[tuple[float, int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        conn = https_connection(self.proxy.ports["https"], HOST, self.ctx, timeout=5)
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                response, body = request(conn, "GET", "/", HOST)
                backend = json.loads(body)["backend"] if response.status == 200 else ""
                self.results.append((time.monotonic(), response.status, backend))
            except (OSError, http.client.HTTPException):
                self.results.append((time.monotonic(), 0, ""))
                conn.close()
                conn = https_connection(self.proxy.ports["https"], HOST, self.ctx, timeout=5)
            time.sleep(0.005)
        conn.close()

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def backends(self, since: float, until: float = float("inf")) -> set[str]:
        return {b for t, _, b in self.results if since <= t < until}

    def failures(self) -> list[tuple[float, int, str]]:
        return [r for r in self.results if r[1] != 200]


class Env:
    def __init__(
        self,
        proxy: ProxyProcess,
        ctx: ssl.SSLContext,
        dns: DNSServer,
        backends: dict[str, BackendServer],
    ) -> None:
        self.proxy, self.ctx, self.dns, self.backends = proxy, ctx, dns, backends
        self.port = backends["b2"].port

    def admin(self, path: str) -> bytes:
        url = f"http://127.0.0.1:{self.proxy.ports['admin']}{path}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read()  # type: ignore[no-any-return]

    def name_status(self) -> dict:  # type: ignore[type-arg]
        status = json.loads(self.admin("/status"))
        return status["clusters"]["app"]["names"][f"app.internal:{self.port}"]  # type: ignore[no-any-return]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


@pytest.fixture
def make_env(tmp_path: Path) -> Iterator[Callable[[str], Env]]:
    """An Env whose cluster has ``health_check`` (config text) and whose
    name resolves to 127.0.0.2 and 127.0.0.3."""
    made: list[tuple[ProxyProcess, DNSServer, list[BackendServer]]] = []

    def make(check: str) -> Env:
        proxy, dns, backends = _start(tmp_path, check)
        made.append((proxy, dns, backends))
        proxy.start()
        return Env(proxy, client_context(CA.cert_pem.bytes()), dns, {b.name: b for b in backends})

    try:
        yield make
    finally:
        for proxy, dns, backends in made:
            proxy.stop()
            dns.stop()
            for backend in backends:
                backend.stop()


CA = trustme.CA()


@pytest.fixture
def env(make_env: Callable[[str], Env]) -> Env:
    return make_env("None")


def _start(tmp_path: Path, check: str) -> tuple[ProxyProcess, DNSServer, list[BackendServer]]:
    ca = CA
    certs = tmp_path / "certs"
    certs.mkdir()
    ca.issue_cert(HOST).private_key_and_cert_chain_pem.write_to_path(str(certs / "app.pem"))
    first = BackendServer("b2", host="127.0.0.2").start()
    backends = [first] + [
        BackendServer(f"b{i}", first.port, host=f"127.0.0.{i}").start() for i in (3, 4)
    ]
    dns = DNSServer(tmp_path / "answers.json")
    dns.set(["127.0.0.2", "127.0.0.3"])
    site = tmp_path / "site.py"
    site.write_text(CONFIG.format(port=first.port, every=RESOLVE_EVERY, check=check))
    proxy = ProxyProcess(
        tmp_path, site, certs, extra_args=["--resolver", f"127.0.0.1:{dns.port}"]
    )
    return proxy, dns, backends


def test_traffic_follows_the_name_from_two_to_three_to_one(env: Env) -> None:
    port = env.port
    wait_until(
        lambda: env.name_status()["addresses"] == ["127.0.0.2", "127.0.0.3"],
        5,
        "the name resolved",
    )
    with Load(env.proxy, env.ctx) as load:
        time.sleep(0.5)
        three = time.monotonic()
        env.dns.set(["127.0.0.2", "127.0.0.3", "127.0.0.4"])
        time.sleep(RESOLVE_EVERY + SLACK + 0.5)
        one = time.monotonic()
        env.dns.set(["127.0.0.3"])
        time.sleep(RESOLVE_EVERY + SLACK + 0.5)
        end = time.monotonic()
    assert load.failures() == []
    assert len(load.results) > 50
    assert load.backends(0, three) == {"b2", "b3"}
    assert load.backends(three + RESOLVE_EVERY + SLACK, one) == {"b2", "b3", "b4"}
    assert load.backends(one + RESOLVE_EVERY + SLACK, end) == {"b3"}
    # /status, /metrics and the admin page show the name and its addresses.
    status = env.name_status()
    assert (status["state"], status["addresses"]) == ("resolved", ["127.0.0.3"])
    metrics = env.admin("/metrics").decode()
    assert (
        f'edgeproxy_endpoint_name_address{{address="127.0.0.3",cluster="app",'
        f'name="app.internal:{port}"}} 1.0'
    ) in metrics
    assert len(re.findall(r"^edgeproxy_endpoint_name_address\{", metrics, re.M)) == 1
    page = env.admin("/").decode()
    assert f"app.internal:{port}" in page and "127.0.0.3" in page
    # The addresses that left drained, and their pooled connections were closed.
    wait_until(
        lambda: not env.backends["b2"].open_sockets and not env.backends["b4"].open_sockets,
        2,
        "the idle connections to the addresses that left closed",
    )
    assert env.backends["b3"].open_sockets


def test_an_address_joins_after_its_first_passing_check(make_env: Callable[[str], Env]) -> None:
    env = make_env(CHECK)
    wait_until(
        lambda: env.name_status()["addresses"] == ["127.0.0.2", "127.0.0.3"],
        5,
        "the name resolved",
    )
    b4 = env.backends["b4"]
    b4.fail_status = 503
    with Load(env.proxy, env.ctx) as load:
        env.dns.set(["127.0.0.2", "127.0.0.3", "127.0.0.4"])
        wait_until(
            lambda: "127.0.0.4" in env.name_status()["addresses"], 2, "the new address resolved"
        )
        # Listed, checked (and failing): no request goes to it.
        wait_until(lambda: b4.requests >= 3, 3, "checks of the new address")
        time.sleep(0.3)
        healthy = time.monotonic()
        b4.fail_status = None
        wait_until(lambda: "b4" in load.backends(healthy), 2, "traffic to the new address")
    assert load.failures() == []
    assert len(load.results) > 20
    # Before its check passed, every response came from the first two.
    assert load.backends(0, healthy) == {"b2", "b3"}


def test_a_resolver_that_goes_away_keeps_the_last_set(env: Env) -> None:
    wait_until(
        lambda: env.name_status()["addresses"] == ["127.0.0.2", "127.0.0.3"],
        5,
        "the name resolved",
    )
    env.dns.stop()
    start = len(env.proxy.output)
    with Load(env.proxy, env.ctx) as load:
        # Queries time out (1 s, then 2 s) and the name's state turns "failed".
        wait_until(lambda: env.name_status()["state"] == "failed", 6, "the resolution failed")
        failed = time.monotonic()
        time.sleep(RESOLVE_EVERY * 2)
    assert load.failures() == []
    assert load.backends(failed, float("inf")) == {"b2", "b3"}
    assert env.name_status()["addresses"] == ["127.0.0.2", "127.0.0.3"]
    env.proxy.wait_for_output(r"resolving app\.internal:\d+ failed .*keeping its addresses", 1, start)


def test_a_request_in_flight_on_an_address_that_leaves_finishes(env: Env) -> None:
    wait_until(
        lambda: env.name_status()["addresses"] == ["127.0.0.2", "127.0.0.3"],
        5,
        "the name resolved",
    )
    answers: list[tuple[int, str]] = []

    def slow() -> None:
        conn = https_connection(env.proxy.ports["https"], HOST, env.ctx, timeout=10)
        try:
            response, body = request(conn, "GET", "/slow/2", HOST)
            answers.append((response.status, json.loads(body)["backend"]))
        finally:
            conn.close()

    # Round robin: one on each address.
    threads = [threading.Thread(target=slow) for _ in range(2)]
    for thread in threads:
        thread.start()
    b2, b3 = env.backends["b2"], env.backends["b3"]
    wait_until(lambda: b2.requests > 0 and b3.requests > 0, 2, "both busy")
    env.dns.set(["127.0.0.3"])

    def draining() -> list[dict]:  # type: ignore[type-arg]
        endpoints = json.loads(env.admin("/status"))["clusters"]["app"]["endpoints"]
        return [e for e in endpoints if e["draining"]]

    wait_until(lambda: bool(draining()), RESOLVE_EVERY + SLACK + 0.5, "127.0.0.2 draining")
    leaving = draining()
    assert [(e["endpoint"], e["in_flight"]) for e in leaving] == [(f"127.0.0.2:{env.port}", 1)]
    for thread in threads:
        thread.join(10)
    assert sorted(answers) == [(200, "b2"), (200, "b3")]
    wait_until(lambda: not draining(), 1, "the drained address gone from /status")
