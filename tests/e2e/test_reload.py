"""
Reload and drain through the real proxy: blue/green by editing the config
and SIGHUP under load with zero failed requests, a broken config rejected,
--watch-config, and SIGTERM letting requests in flight finish.
"""

from __future__ import annotations

import json
import signal
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests.e2e.harness import BackendServer, ProxyProcess, client_context, https_connection, request
from tests.e2e.test_resilience import SteadyLoad, wait_until

HOST = "app.example"

SPLIT = """
from edgeproxy.config import Cluster, Route, Split, VirtualHost

blue = Cluster("blue", endpoints=["{blue}"])
green = Cluster("green", endpoints=["{green}"])
virtual_hosts = [
    VirtualHost(["app.example"], routes=[Route("/", Split({{blue: {b}, green: {g}}}))]),
]
"""


# Put before SPLIT: the import sleeps while the marker file exists (so the
# first load, at start-up, is fast) and says when it has begun.
SLOW = """
import pathlib
import time

if pathlib.Path({marker!r}).exists():
    pathlib.Path({started!r}).touch()
    time.sleep({seconds})
"""


@dataclass
class Env:
    proxy: ProxyProcess
    ctx: ssl.SSLContext
    site: Path
    blue: BackendServer
    green: BackendServer

    def write(self, b: int, g: int) -> None:
        # Write then rename: a reload never sees half a file.
        tmp = self.site.with_suffix(".tmp")
        tmp.write_text(SPLIT.format(blue=self.blue.address, green=self.green.address, b=b, g=g))
        tmp.rename(self.site)

    def write_slow(self, b: int, g: int, seconds: float) -> Path:
        """A config whose import takes ``seconds`` from now on; returns the file
        that appears when a load of it begins."""
        marker, started = self.site.with_name("slow.marker"), self.site.with_name("slow.started")
        text = SLOW.format(marker=str(marker), started=str(started), seconds=seconds)
        text += SPLIT.format(blue=self.blue.address, green=self.green.address, b=b, g=g)
        tmp = self.site.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.rename(self.site)
        marker.touch()
        return started

    def status(self) -> dict:  # type: ignore[type-arg]
        url = f"http://127.0.0.1:{self.proxy.ports['admin']}/status"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]

    def backend(self) -> str:
        conn = https_connection(self.proxy.ports["https"], HOST, self.ctx)
        try:
            response, body = request(conn, "GET", "/", HOST)
            assert response.status == 200
            return json.loads(body)["backend"]  # type: ignore[no-any-return]
        finally:
            conn.close()


def start(tmp_path: Path, *args: str) -> Env:
    ca = trustme.CA()
    certs = tmp_path / "certs"
    certs.mkdir()
    ca.issue_cert(HOST).private_key_and_cert_chain_pem.write_to_path(str(certs / "app.pem"))
    sites = tmp_path / "sites"
    sites.mkdir()
    env = Env(
        proxy=None,  # type: ignore[arg-type]
        ctx=client_context(ca.cert_pem.bytes()),
        site=sites / "app.py",
        blue=BackendServer("blue").start(),
        green=BackendServer("green").start(),
    )
    env.write(100, 0)
    env.proxy = ProxyProcess(tmp_path, sites, certs, args).start()
    return env


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    made = start(tmp_path)
    yield made
    made.proxy.stop()
    made.blue.stop()
    made.green.stop()


class _LoadEnv:
    """What SteadyLoad needs: the proxy and a client context."""

    def __init__(self, env: Env) -> None:
        self.proxy = env.proxy
        self.ctx = env.ctx


def test_blue_green_switch_by_sighup_under_load_fails_nothing(env: Env) -> None:
    assert env.backend() == "blue"
    with SteadyLoad(_LoadEnv(env), limit=30) as load:  # type: ignore[arg-type]
        wait_until(lambda: len(load.results) >= 30, 10, "load running on blue")
        env.write(0, 100)
        env.proxy.process.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        switched = wait_until(lambda: load.served_by("green", 0) > 0, 10, "green serving")
        since = time.monotonic()
        wait_until(lambda: load.served_by("green", since) >= 30, 10, "load running on green")
    failed = [r for r in load.results if r[1] != 200]
    assert failed == [], failed
    after = [backend for t, _, backend in load.results if t >= since]
    assert set(after) == {"green"}
    status = env.status()["config"]
    assert status["generation"] == 2 and status["last_reload"]["outcome"] == "ok"
    assert switched < 5


def test_broken_config_is_rejected_and_the_old_one_keeps_serving(env: Env) -> None:
    start_line = len(env.proxy.output)
    env.site.write_text("this is not python(\n")
    env.proxy.process.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    line = env.proxy.wait_for_output(r"reload rejected", start=start_line)
    assert str(env.site) in line
    assert env.backend() == "blue"
    last = env.status()["config"]["last_reload"]
    assert last["outcome"] == "error" and str(env.site) in last["problems"][0]
    assert env.status()["config"]["generation"] == 1


def test_watch_config_reloads_on_change(tmp_path: Path) -> None:
    made = start(tmp_path, "--watch-config")
    try:
        assert made.backend() == "blue"
        made.write(0, 100)
        wait_until(lambda: made.backend() == "green", 8, "reloaded by --watch-config")
    finally:
        made.proxy.stop()
        made.blue.stop()
        made.green.stop()


def test_sigterm_drains_requests_in_flight(env: Env) -> None:
    results: list[int] = []

    def slow() -> None:
        conn = https_connection(env.proxy.ports["https"], HOST, env.ctx, timeout=15)
        response, _ = request(conn, "GET", "/slow/2", HOST)
        results.append(response.status)
        conn.close()

    thread = threading.Thread(target=slow)
    thread.start()
    wait_until(lambda: env.blue.requests > 0, 5, "slow request in flight")
    stopping_at = time.monotonic()
    env.proxy.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    # New connections are refused once the listeners close.
    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", env.proxy.ports["https"]), 0.5).close()
            return False
        except OSError:
            return True


    wait_until(refused, 5, "listener closed")
    thread.join(15)
    assert results == [200]
    # twistd shuts down cleanly, then dies by the signal it got, as Twisted does.
    assert env.proxy.process.wait(15) == -signal.SIGTERM  # type: ignore[union-attr]
    assert "Traceback" not in "".join(env.proxy.output)
    assert time.monotonic() - stopping_at >= 1.0  # it waited for the request


def timed_backend(env: Env) -> tuple[float, str]:
    began = time.monotonic()
    backend = env.backend()
    return time.monotonic() - began, backend


def test_a_slow_reload_does_not_stall_requests(env: Env) -> None:
    assert env.backend() == "blue"
    started = env.write_slow(0, 100, seconds=3)
    env.proxy.process.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    wait_until(started.exists, 5, "the slow load began")
    began = time.monotonic()
    during: list[tuple[float, str]] = []
    while time.monotonic() - began < 2.0:
        during.append(timed_backend(env))
    # The old configuration answers, at normal speed, while the new one loads.
    assert len(during) >= 5, during
    assert {backend for _, backend in during} == {"blue"}, during
    assert max(seconds for seconds, _ in during) < 0.5, during
    wait_until(lambda: env.backend() == "green", 10, "the slow configuration taken in")
    config = env.status()["config"]
    assert config["generation"] == 2 and config["last_reload"]["outcome"] == "ok"
    env.proxy.wait_for_output(r"configuration reloaded \(generation 2, loaded in [2-9]\.\d+ s\)")


def test_a_reload_past_the_limit_is_rejected_and_the_old_config_serves(tmp_path: Path) -> None:
    made = start(tmp_path, "--reload-timeout", "1")
    try:
        assert made.backend() == "blue"
        start_line = len(made.proxy.output)
        started = made.write_slow(0, 100, seconds=3)
        sent = time.monotonic()
        made.proxy.process.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        line = made.proxy.wait_for_output(r"reload rejected", timeout=5, start=start_line)
        rejected_after = time.monotonic() - sent
        assert started.exists()
        assert (
            f"{made.site.parent}: loading the configuration took longer than 1 s "
            "(--reload-timeout); "
            "the running configuration stays"
        ) in line
        assert 0.9 < rejected_after < 2.5, rejected_after
        seconds, backend = timed_backend(made)
        assert backend == "blue" and seconds < 0.5
        last = made.status()["config"]["last_reload"]
        assert last["outcome"] == "error" and "--reload-timeout" in last["problems"][0]
        # The load's thread ends later; what it loaded is not taken in.
        made.proxy.wait_for_output(
            r"rejected for taking too long ended after [2-9]\.\d s", timeout=8, start=start_line
        )
        assert made.backend() == "blue"
        assert made.status()["config"]["generation"] == 1
    finally:
        made.proxy.stop()
        made.blue.stop()
        made.green.stop()


def test_sigterm_does_not_wait_for_a_load_that_never_ends(env: Env) -> None:
    started = env.write_slow(0, 100, seconds=600)
    env.proxy.process.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    wait_until(started.exists, 5, "the endless load began")
    assert env.backend() == "blue"
    stopping_at = time.monotonic()
    env.proxy.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    assert env.proxy.process.wait(15) == -signal.SIGTERM  # type: ignore[union-attr]
    assert time.monotonic() - stopping_at < 10
