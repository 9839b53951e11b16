"""
Rate limits through the real ``twistd edgeproxy``: 429 with ``Retry-After``
past a client's burst while another address (127.0.0.2 and 127.0.0.3 on
loopback) is still served, header keys, the client a trusted forwarder names,
and the Redis store on a real ``redis-server``: two proxies sharing it enforce
one budget, a Redis that goes away (or hangs) fails open or closed (logged
once, counted) and is used again once it is back.  Rates are 0.01/s: no token
comes back during a test.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeproxy.ratelimit.redis import RECOVERY_TIME
from tests.e2e.harness import BackendServer, ProxyProcess
from tests.redisserver import RedisServer, command

CONFIG = """
from edgeproxy.config import Cluster, RateLimit, Route, VirtualHost

app = Cluster("app", endpoints=["{backend}"])
virtual_hosts = [
    VirtualHost(
        ["app.example"],
        routes=[
            Route("/", app, plain_http=True),
            Route("/api/", app, plain_http=True, rate_limit=RateLimit(rate=0.01, burst={burst})),
            Route(
                "/keyed/",
                app,
                plain_http=True,
                rate_limit=RateLimit(rate=0.01, burst=2, key="header:X-Api-Key"),
            ),
            Route(
                "/strict/",
                app,
                plain_http=True,
                rate_limit=RateLimit(rate=0.01, burst=3, on_store_error="closed"),
            ),
        ],
    ),
]
"""


def start_proxy(
    tmp: Path, backend: BackendServer, *args: str, burst: int = 3, name: str = "p"
) -> ProxyProcess:
    directory = tmp / name
    directory.mkdir()
    (directory / "certs").mkdir()
    config = directory / "site.py"
    config.write_text(CONFIG.format(backend=backend.address, burst=burst))
    # An https listener on an ephemeral port too: without one, twistd would take tcp:8443.
    return ProxyProcess(directory, config, directory / "certs", args).start()


def get(
    proxy: ProxyProcess, source: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, str | None]:
    """The status and Retry-After of a GET from ``source``."""
    conn = http.client.HTTPConnection(
        "127.0.0.1", proxy.ports["http"], timeout=5, source_address=(source, 0)
    )
    try:
        conn.request("GET", path, headers={"Host": "app.example", **(headers or {})})
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("Retry-After")
    finally:
        conn.close()


def metric(proxy: ProxyProcess, name: str, **labels: str) -> float:
    """A sample of ``/metrics`` by its name and labels (in any order)."""
    url = f"http://127.0.0.1:{proxy.ports['admin']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    for match in re.finditer(r"^(\w+)(?:\{(.*)\})? (\S+)$", text, re.M):
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if match.group(1) == name and found == labels:
            return float(match.group(3))
    raise AssertionError(f"{name} {labels} not in /metrics")


@pytest.fixture(scope="module")
def backend() -> Iterator[BackendServer]:
    server = BackendServer("app").start()
    try:
        yield server
    finally:
        server.stop()


# -- the memory store ------------------------------------------------------------


@pytest.fixture(scope="module")
def memory_proxy(
    tmp_path_factory: pytest.TempPathFactory, backend: BackendServer
) -> Iterator[ProxyProcess]:
    process = start_proxy(tmp_path_factory.mktemp("rl-memory"), backend)
    try:
        yield process
    finally:
        process.stop()


def test_429_past_the_burst_while_another_client_is_served(
    memory_proxy: ProxyProcess, backend: BackendServer
) -> None:
    before = backend.requests
    answers = [get(memory_proxy, "127.0.0.2", "/api/x") for _ in range(4)]
    assert [status for status, _ in answers] == [200, 200, 200, 429]
    retry_after = answers[3][1]
    assert retry_after is not None and 1 <= int(retry_after) <= 100
    assert backend.requests == before + 3
    assert get(memory_proxy, "127.0.0.3", "/api/x")[0] == 200
    assert get(memory_proxy, "127.0.0.2", "/other")[0] == 200  # a route without a limit
    memory_proxy.wait_for_output(r"\] 127\.0\.0\.2 - - .*\" 429 .*reason=rate_limited")
    route = "app.example/api/"
    assert (
        metric(memory_proxy, "edgeproxy_rate_limit_decisions_total", route=route, result="limited")
        == 1
    )
    assert (
        metric(memory_proxy, "edgeproxy_rate_limit_decisions_total", route=route, result="allowed")
        == 4
    )
    assert metric(memory_proxy, "edgeproxy_requests_rejected_total", reason="rate_limited") == 1
    assert metric(memory_proxy, "edgeproxy_rate_limit_keys", store="memory") >= 2
    url = f"http://127.0.0.1:{memory_proxy.ports['admin']}/status"
    with urllib.request.urlopen(url, timeout=5) as response:
        document = json.load(response)
    limits = document["rate_limits"]
    assert (limits["store"], limits["routes"][route]["limited"]) == ("memory", 1)
    routes = {r["prefix"]: r for r in document["virtual_hosts"][0]["routes"]}
    assert routes["/api/"]["rate_limit"] == {
        "rate": 0.01,
        "burst": 3,
        "key": "client_ip",
        "on_store_error": "open",
    }
    assert routes["/"]["rate_limit"] is None


def test_a_header_key_is_one_client_whatever_its_address(memory_proxy: ProxyProcess) -> None:
    key = {"X-Api-Key": "team-a"}
    assert get(memory_proxy, "127.0.0.2", "/keyed/x", key)[0] == 200
    assert get(memory_proxy, "127.0.0.3", "/keyed/x", key)[0] == 200
    status, retry_after = get(memory_proxy, "127.0.0.2", "/keyed/x", key)
    assert status == 429 and retry_after is not None
    assert get(memory_proxy, "127.0.0.2", "/keyed/x", {"X-Api-Key": "team-b"})[0] == 200
    # Without the header there is no key: not limited.
    assert [get(memory_proxy, "127.0.0.2", "/keyed/x")[0] for _ in range(4)] == [200] * 4


# -- the Redis store ---------------------------------------------------------------


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


def connected(proxy: ProxyProcess, redis: RedisServer) -> ProxyProcess:
    proxy.wait_for_output(rf"rate limit store redis://127\.0\.0\.1:{redis.port} connected")
    return proxy


def test_two_proxies_sharing_redis_enforce_one_budget(
    tmp_path: Path, backend: BackendServer, redis: RedisServer
) -> None:
    args = ("--rate-limit-store", redis.url)
    a = start_proxy(tmp_path, backend, *args, burst=5, name="a")
    try:
        b = start_proxy(tmp_path, backend, *args, burst=5, name="b")
        try:
            connected(a, redis)
            connected(b, redis)
            statuses = [get(a, "127.0.0.2", "/api/x")[0] for _ in range(3)]
            statuses += [get(b, "127.0.0.2", "/api/x")[0] for _ in range(3)]
            assert statuses == [200] * 5 + [429]
            # Each proxy decided, one budget: 3 + 2 allowed, 1 limited.
            assert get(a, "127.0.0.3", "/api/x")[0] == 200
            route = "app.example/api/"
            limited = "edgeproxy_rate_limit_decisions_total"
            assert metric(b, limited, route=route, result="limited") == 1
            assert metric(a, limited, route=route, result="limited") == 0
            # The bucket lives in Redis, under the route's name, and expires.
            ttl = redis_ttl(redis, "edgeproxy:rl:app.example/api/:127.0.0.2")
            assert 0 < ttl <= 500_000
            # A header's value is never a key name, only its digest.
            assert get(a, "127.0.0.2", "/keyed/x", {"X-Api-Key": "sk-team-a"})[0] == 200
            digest = hashlib.blake2b(b"sk-team-a", digest_size=16).hexdigest()
            keys = sorted(k.decode() for k in command(redis.port, "KEYS", "edgeproxy:rl:*"))
            assert keys == [
                "edgeproxy:rl:app.example/api/:127.0.0.2",
                "edgeproxy:rl:app.example/api/:127.0.0.3",
                f"edgeproxy:rl:app.example/keyed/:#{digest}",
            ]
        finally:
            b.stop()
    finally:
        a.stop()


def redis_ttl(redis: RedisServer, key: str) -> int:
    ttl = command(redis.port, "PTTL", key)
    assert isinstance(ttl, int)
    return ttl


def test_redis_gone_fails_open_or_closed_and_back_limits_again(
    tmp_path: Path, backend: BackendServer, redis: RedisServer
) -> None:
    proxy = connected(start_proxy(tmp_path, backend, "--rate-limit-store", redis.url), redis)
    try:
        assert get(proxy, "127.0.0.2", "/strict/x")[0] == 200
        redis.stop()
        # on_store_error="open" (the default): served; "closed": 503.
        assert [get(proxy, "127.0.0.2", "/api/x")[0] for _ in range(5)] == [200] * 5
        status, retry_after = get(proxy, "127.0.0.2", "/strict/x")
        assert (status, retry_after) == (503, "1")
        proxy.wait_for_output(r"\" 503 .*reason=rate_limit_unavailable")
        route = "edgeproxy_rate_limit_decisions_total"
        assert metric(proxy, route, route="app.example/api/", result="failed_open") == 5
        assert metric(proxy, route, route="app.example/strict/", result="failed_closed") == 1
        assert metric(proxy, "edgeproxy_rate_limit_store_errors_total", store=redis.url) == 6
        assert metric(proxy, "edgeproxy_rate_limit_store_up", store=redis.url) == 0
        failed = rf"rate limit store {re.escape(redis.url)} failed"
        proxy.wait_for_output(failed)
        # Back (empty, on the same port): once reconnected, limits hold again.
        redis.start()
        deadline = time.monotonic() + 15
        while get(proxy, "127.0.0.9", "/strict/x")[0] == 503:
            assert time.monotonic() < deadline, "the proxy did not reconnect to redis"
            time.sleep(0.2)
        last_failure = time.monotonic()
        # The outage ends only once a decision succeeds RECOVERY_TIME after the last failure...
        assert metric(proxy, "edgeproxy_rate_limit_store_up", store=redis.url) == 0
        # ...but limits hold again at once.
        assert [get(proxy, "127.0.0.2", "/api/x")[0] for _ in range(4)] == [200, 200, 200, 429]
        time.sleep(max(0.0, last_failure + RECOVERY_TIME - time.monotonic()))
        assert get(proxy, "127.0.0.3", "/api/x")[0] == 200
        back = rf"rate limit store {re.escape(redis.url)} answers again"
        proxy.wait_for_output(back)
        assert metric(proxy, "edgeproxy_rate_limit_store_up", store=redis.url) == 1
        # One line when the outage began, one when it ended.
        output = "".join(proxy.output)
        assert len(re.findall(failed, output)) == 1
        assert len(re.findall(back, output)) == 1
    finally:
        proxy.stop()


def test_a_hung_redis_holds_no_request_past_the_decision_timeout(
    tmp_path: Path, backend: BackendServer, redis: RedisServer
) -> None:
    proxy = connected(start_proxy(tmp_path, backend, "--rate-limit-store", redis.url), redis)
    try:
        assert get(proxy, "127.0.0.2", "/api/x")[0] == 200
        redis.pause()
        started = time.monotonic()
        assert get(proxy, "127.0.0.2", "/api/x")[0] == 200  # open
        assert get(proxy, "127.0.0.2", "/strict/x")[0] == 503  # closed
        # Each waited for the 100 ms decision timeout, not for Redis.
        assert time.monotonic() - started < 1.5
        proxy.wait_for_output(r"failed: no answer within 100 ms")
        redis.resume()
        deadline = time.monotonic() + 15
        while get(proxy, "127.0.0.9", "/strict/x")[0] == 503:
            assert time.monotonic() < deadline, "the proxy did not use redis again"
            time.sleep(0.2)
        # Limits hold again.  (Another client: a decision that timed out may
        # still have been counted once Redis woke, or not, if the connection
        # was dropped first.)
        statuses = [get(proxy, "127.0.0.4", "/api/x")[0] for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
    finally:
        proxy.stop()


def test_behind_a_trusted_forwarder_the_client_it_names_is_the_key(
    tmp_path: Path, backend: BackendServer
) -> None:
    # 127.0.0.2 is a trusted load balancer; 127.0.0.3 is not.
    proxy = start_proxy(tmp_path, backend, "--trusted-source", "127.0.0.2/32", burst=2)
    try:

        def via_balancer(client: str) -> int:
            return get(proxy, "127.0.0.2", "/api/x", {"X-Forwarded-For": client})[0]

        assert [via_balancer("192.0.2.10") for _ in range(3)] == [200, 200, 429]
        assert via_balancer("192.0.2.11") == 200  # another client behind the same balancer
        # An untrusted peer's X-Forwarded-For is not believed: its own address is the key.
        forged = [
            get(proxy, "127.0.0.3", "/api/x", {"X-Forwarded-For": f"198.51.100.{i}"})[0]
            for i in range(3)
        ]
        assert forged == [200, 200, 429]
        proxy.wait_for_output(r"\] 192\.0\.2\.10 - - .*\" 429 .*reason=rate_limited")
    finally:
        proxy.stop()
