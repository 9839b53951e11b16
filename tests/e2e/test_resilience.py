"""
Resilience through the real proxy: a backend that dies, fails or hangs under
steady traffic is taken out and brought back; limits shed bursts; consistent
hashing and sticky splits keep clients in place.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme

from tests.e2e.harness import BackendServer, ProxyProcess, client_context, https_connection, request

HOST = "app.example"


@dataclass
class Env:
    proxy: ProxyProcess
    ctx: ssl.SSLContext
    backends: dict[str, BackendServer] = field(default_factory=dict)

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:  # type: ignore[type-arg]
        conn = https_connection(self.proxy.ports["https"], HOST, self.ctx, timeout=15)
        try:
            response, body = request(conn, "GET", path, HOST, headers=headers)
            return response.status, dict(response.getheaders()), body
        finally:
            conn.close()

    def status(self) -> dict:  # type: ignore[type-arg]
        url = f"http://127.0.0.1:{self.proxy.ports['admin']}/status"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]

    def endpoint_status(self, cluster: str, backend: BackendServer) -> dict:  # type: ignore[type-arg]
        for entry in self.status()["clusters"][cluster]["endpoints"]:
            if entry["endpoint"] == backend.address:
                return entry  # type: ignore[no-any-return]
        raise KeyError(backend.address)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition``; return the seconds it took, fail after ``timeout``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)
    return time.monotonic() - start


@pytest.fixture
def make_env(tmp_path: Path) -> Iterator[Callable[[str, list[str]], Env]]:
    """Start backends by name and a proxy whose config text uses {name} for their addresses."""
    made: list[Env] = []
    ca = trustme.CA()

    def make(config: str, names: list[str]) -> Env:
        certs = tmp_path / "certs"
        certs.mkdir(exist_ok=True)
        ca.issue_cert(HOST).private_key_and_cert_chain_pem.write_to_path(str(certs / "app.pem"))
        backends = {name: BackendServer(name).start() for name in names}
        site = tmp_path / "site.py"
        site.write_text(config.format(**{n: b.address for n, b in backends.items()}))
        proxy = ProxyProcess(tmp_path, site, certs).start()
        env = Env(proxy, client_context(ca.cert_pem.bytes()), backends)
        made.append(env)
        return env

    yield make
    for env in made:
        env.proxy.stop()
        for backend in env.backends.values():
            try:
                backend.stop()
            except OSError:
                pass


class SteadyLoad:
    """Sequential GETs over keep-alive connections in a thread, bounded in time."""

    def __init__(self, env: Env, path: str = "/", limit: float = 30.0) -> None:
        self.env = env
        self.path = path
        self.limit = limit
        self.results: list[tuple[float, int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        conn = https_connection(self.env.proxy.ports["https"], HOST, self.env.ctx, timeout=10)
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                response, body = request(conn, "GET", self.path, HOST)
                backend = json.loads(body)["backend"] if response.status == 200 else ""
                self.results.append((time.monotonic(), response.status, backend))
            except (OSError, http.client.HTTPException):
                self.results.append((time.monotonic(), 0, ""))
                conn.close()
                conn = https_connection(self.env.proxy.ports["https"], HOST, self.env.ctx, timeout=10)
            time.sleep(0.01)
        conn.close()

    def __enter__(self) -> SteadyLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def served_by(self, name: str, since: float) -> int:
        return sum(1 for t, status, backend in self.results if t >= since and backend == name)


KILL_CONFIG = """
from edgeproxy.config import Cluster, HealthCheck, OutlierDetection, Route, VirtualHost

pair = Cluster(
    "pair",
    endpoints=["{a}", "{b}"],
    health_check=HealthCheck(path="/healthz", interval=0.3, timeout=0.5, rise=2, fall=2, jitter=0.0),
    outlier_detection=OutlierDetection(consecutive_failures=3, base_ejection_time=1.0),
    connect_timeout=1.0,
)
virtual_hosts = [VirtualHost(["app.example"], routes=[Route("/", pair)])]
"""


def test_killed_backend_is_taken_out_and_brought_back(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env(KILL_CONFIG, ["a", "b"])
    b = env.backends["b"]
    port = b.port
    with SteadyLoad(env) as load:
        wait_until(lambda: load.served_by("b", 0) >= 5, 10, "b serves traffic")
        killed_at = time.monotonic()
        b.kill()
        # Out within the fall threshold (2 checks at 0.3 s) plus a check's timeout.
        took = wait_until(
            lambda: not env.endpoint_status("pair", b)["available"], 5, "b marked unavailable"
        )
        out_at = time.monotonic()
        time.sleep(0.5)
        assert load.served_by("b", out_at) == 0
        # Restarted on the same port: back after the rise threshold.
        env.backends["b"] = b = BackendServer("b", port).start()
        back = wait_until(lambda: env.endpoint_status("pair", b)["available"], 5, "b back")
        wait_until(lambda: load.served_by("b", time.monotonic() - 1) > 0, 5, "b serves again")
    failed = [r for r in load.results if r[1] != 200]
    # Every request was a GET that could be retried on "a": none may fail.
    assert failed == [], failed
    assert took < 3.0 and back < 3.0
    status = env.status()["clusters"]["pair"]
    causes = [t["cause"] for t in status["recent_transitions"]]
    assert causes, status
    del killed_at


FAILING_CONFIG = """
from edgeproxy.config import Cluster, OutlierDetection, RetryPolicy, Route, VirtualHost

pair = Cluster(
    "pair",
    endpoints=["{a}", "{b}"],
    outlier_detection=OutlierDetection(consecutive_failures=3, base_ejection_time=1.0),
    retries=RetryPolicy(attempts=1),
)
virtual_hosts = [VirtualHost(["app.example"], routes=[Route("/", pair)])]
"""


def test_backend_answering_500_is_ejected_probed_and_restored(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env(FAILING_CONFIG, ["a", "b"])
    b = env.backends["b"]
    b.fail_status = 500
    statuses = Counter(env.get("/x")[0] for _ in range(12))
    # Round robin: b got 3 requests (its failures), then was ejected.
    assert statuses[500] == 3, statuses
    entry = env.endpoint_status("pair", b)
    assert entry["breaker"]["state"] == "open", entry
    assert entry["breaker"]["ejections"] == 1
    # While it is out, a serves everything.
    assert all(env.get("/x")[0] == 200 for _ in range(6))
    # After the ejection time one probe goes to b; it fails again: out for longer.
    wait_until(lambda: env.endpoint_status("pair", b)["breaker"]["state"] != "open", 3, "probe time")
    codes = [env.get("/x")[0] for _ in range(4)]
    assert codes.count(500) == 1, codes
    entry = env.endpoint_status("pair", b)
    assert entry["breaker"]["state"] == "open" and entry["breaker"]["ejections"] == 2, entry
    # Healed: the next probe closes the breaker and b is back in rotation.
    b.fail_status = None
    wait_until(lambda: env.endpoint_status("pair", b)["breaker"]["state"] != "open", 4, "probe")
    backends = Counter(json.loads(env.get("/x")[2])["backend"] for _ in range(6))
    assert backends["b"] >= 2, backends
    assert env.endpoint_status("pair", b)["breaker"]["state"] == "closed"


HANG_CONFIG = """
from edgeproxy.config import Cluster, OutlierDetection, RetryPolicy, Route, VirtualHost

pair = Cluster(
    "pair",
    endpoints=["{a}", "{b}"],
    response_timeout=0.5,
    outlier_detection=OutlierDetection(consecutive_failures=2, base_ejection_time=30.0),
    retries=RetryPolicy(attempts=1),
)
virtual_hosts = [VirtualHost(["app.example"], routes=[Route("/", pair)])]
"""


def test_hanging_backend_gives_504_then_is_ejected(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env(HANG_CONFIG, ["a", "b"])
    env.backends["b"].hang = 10.0
    results = []
    for _ in range(8):
        start = time.monotonic()
        status, headers, body = env.get("/x")
        results.append((status, time.monotonic() - start))
    timeouts = [elapsed for status, elapsed in results if status == 504]
    assert len(timeouts) == 2, results
    assert all(0.4 < elapsed < 3.0 for elapsed in timeouts), results
    assert [s for s, _ in results].count(200) == 6
    assert env.endpoint_status("pair", env.backends["b"])["breaker"]["state"] == "open"


BURST_CONFIG = """
from edgeproxy.config import Cluster, Limits, Route, VirtualHost

small = Cluster("small", endpoints=["{a}"], limits=Limits(max_requests=4, max_pending=0))
virtual_hosts = [VirtualHost(["app.example"], routes=[Route("/", small)])]
"""


def test_burst_above_max_requests_is_shed_at_once(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env(BURST_CONFIG, ["a"])
    results: list[tuple[int, str | None, float]] = []
    lock = threading.Lock()

    def one() -> None:
        start = time.monotonic()
        status, headers, _ = env.get("/slow/1")
        with lock:
            results.append((status, headers.get("X-Edgeproxy-Limit"), time.monotonic() - start))

    threads = [threading.Thread(target=one) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    ok = [r for r in results if r[0] == 200]
    shed = [r for r in results if r[0] == 503]
    assert len(ok) == 4 and len(shed) == 8, results
    assert all(limit == "max_requests" for _, limit, _ in shed)
    # Shed at once, not after queueing behind the slow requests.
    assert all(elapsed < 0.9 for _, _, elapsed in shed), shed
    assert env.status()["clusters"]["small"]["overflows"]["max_requests"] == 8


HASH_CONFIG = """
from edgeproxy.config import Cluster, ConsistentHash, HealthCheck, Route, VirtualHost

ring = Cluster(
    "ring",
    endpoints=["{a}", "{b}", "{c}", "{d}"],
    policy=ConsistentHash(key="header:x-user"),
    health_check=HealthCheck(path="/healthz", interval=0.3, timeout=0.5, rise=1, fall=1, jitter=0.0),
)
virtual_hosts = [VirtualHost(["app.example"], routes=[Route("/", ring)])]
"""


def test_consistent_hash_keeps_keys_and_moves_only_the_removed_ones(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env(HASH_CONFIG, ["a", "b", "c", "d"])

    def placement() -> dict[str, str]:
        return {
            user: json.loads(env.get("/x", headers={"X-User": user})[2])["backend"]
            for user in (f"user-{i}" for i in range(60))
        }

    first = placement()
    assert placement() == first
    assert len(set(first.values())) == 4
    env.backends["d"].kill()
    wait_until(
        lambda: not env.endpoint_status("ring", env.backends["d"])["available"], 5, "d out"
    )
    after = placement()
    moved = {user for user in first if first[user] != after[user]}
    on_d = {user for user, backend in first.items() if backend == "d"}
    # Every key of the removed endpoint moves; Maglev may move a very few others.
    assert on_d <= moved
    assert len(moved - on_d) <= 3, moved - on_d


STICKY_CONFIG = """
from edgeproxy.config import Cluster, Route, Split, VirtualHost

blue = Cluster("blue", endpoints=["{a}"])
green = Cluster("green", endpoints=["{b}"])
virtual_hosts = [
    VirtualHost(["app.example"], routes=[Route("/", Split({{blue: 50, green: 50}}, sticky="cookie:ep_side"))]),
]
"""


def test_sticky_split_by_cookie(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env(STICKY_CONFIG, ["a", "b"])
    sides = Counter()
    for _ in range(30):
        status, headers, body = env.get("/x")
        cookie = headers["Set-Cookie"]
        assert cookie.startswith("ep_side=") and "HttpOnly" in cookie
        first = json.loads(body)["backend"]
        sides[first] += 1
        value = cookie.split(";")[0]
        for _ in range(3):
            status, headers, body = env.get("/x", headers={"Cookie": value})
            assert json.loads(body)["backend"] == first
            assert "Set-Cookie" not in headers
    assert sides["a"] > 3 and sides["b"] > 3, sides


ALL_OUT_CONFIG = """
from edgeproxy.config import Cluster, OutlierDetection, Route, VirtualHost

detection = OutlierDetection(consecutive_failures=2, base_ejection_time=20.0, sole_endpoint_answers=True)
strict = Cluster("strict", endpoints=["{a}"], outlier_detection=detection)
panicky = Cluster("panicky", endpoints=["{b}"], outlier_detection=detection, panic_mode=True)
virtual_hosts = [
    VirtualHost(["app.example"], routes=[Route("/strict/", strict), Route("/panic/", panicky)]),
]
"""


def test_all_endpoints_out_fails_fast_with_retry_after_unless_panic(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env(ALL_OUT_CONFIG, ["a", "b"])
    env.backends["a"].fail_status = 500
    env.backends["b"].fail_status = 500
    assert [env.get("/strict/x")[0] for _ in range(2)] == [500, 500]
    before = env.backends["a"].requests
    status, headers, body = env.get("/strict/x")
    assert status == 503
    assert body == b"503 no healthy upstream\n"
    assert 1 <= int(headers["Retry-After"]) <= 20
    assert env.backends["a"].requests == before
    # Panic mode: with its only endpoint ejected, the cluster still tries it.
    assert [env.get("/panic/x")[0] for _ in range(4)] == [500, 500, 500, 500]
