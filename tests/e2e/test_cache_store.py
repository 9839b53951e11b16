"""
The cache's stores and its operations end to end: the disk store surviving a
restart and shared by ``--workers`` processes, purging on the admin listener,
the figures on ``/status`` and ``/metrics``, and ``--check``'s listing.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import trustme

from tests.e2e.cachekit import Reply, ScriptedBackend
from tests.e2e.harness import TWISTD, ProxyProcess, client_context, https_connection

HOST = "cache.example"
_ACCESS = re.compile(r"\[edgeproxy\.access#info worker=(\d+) pid=(\d+)\] .*\" (\d{3}) ")

CONFIG = """
from edgeproxy.config import Cache, Cluster, Route, VirtualHost

origin = Cluster("origin", endpoints=["{origin}"])
virtual_hosts = [
    VirtualHost(
        ["{host}"],
        routes=[
            Route("/disk/", origin, cache=Cache(store="disk:{directory}", max_bytes=2**20)),
            Route("/mem/", origin, cache=Cache(max_bytes=2**20)),
        ],
    ),
]
"""


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, trustme.CA]:
    ca = trustme.CA()
    directory = tmp_path_factory.mktemp("cache-certs")
    ca.issue_cert(HOST).private_key_and_cert_chain_pem.write_to_path(str(directory / "c.pem"))
    return directory, ca


@pytest.fixture
def origin() -> Iterator[ScriptedBackend]:
    backend = ScriptedBackend().start()
    try:
        yield backend
    finally:
        backend.stop()


def write_config(tmp_path: Path, origin: ScriptedBackend) -> Path:
    directory = tmp_path / "cache"
    config = tmp_path / "sites.py"
    config.write_text(CONFIG.format(origin=origin.address, host=HOST, directory=directory))
    return config


def get(proxy: ProxyProcess, ca: trustme.CA, path: str) -> tuple[int, str, bytes]:
    """One GET on a connection of its own (so that --workers spread them)."""
    conn = https_connection(proxy.ports["https"], HOST, client_context(ca.cert_pem.bytes()))
    try:
        conn.request("GET", path, headers={"Host": HOST})
        response = conn.getresponse()
        return response.status, response.headers["Cache-Status"] or "", response.read()
    finally:
        conn.close()


def admin(proxy: ProxyProcess, method: str, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.ports["admin"], timeout=5)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def served(proxy: ProxyProcess, path: str) -> set[int]:
    """The workers whose access log shows ``path``."""
    return set(list_served(proxy, path))


FRESH = Reply(headers=[("Cache-Control", "max-age=600")], body=b"stored once")


def test_the_disk_store_survives_a_restart(
    tmp_path: Path, certs: tuple[Path, trustme.CA], origin: ScriptedBackend
) -> None:
    certs_dir, ca = certs
    config = write_config(tmp_path, origin)
    origin.script("/disk/a", FRESH)
    proxy = ProxyProcess(tmp_path, config, certs_dir).start()
    try:
        assert get(proxy, ca, "/disk/a")[2] == b"stored once"
    finally:
        proxy.stop()
    proxy = ProxyProcess(tmp_path, config, certs_dir).start()
    try:
        status, cache_status, body = get(proxy, ca, "/disk/a")
        assert (status, body) == (200, b"stored once")
        assert cache_status.startswith("edgeproxy; hit")
    finally:
        proxy.stop()
    assert origin.count("/disk/a") == 1


def test_two_workers_fill_the_disk_store_once_between_them(
    tmp_path: Path, certs: tuple[Path, trustme.CA], origin: ScriptedBackend
) -> None:
    certs_dir, ca = certs
    config = write_config(tmp_path, origin)
    origin.script("/disk/shared", FRESH)
    origin.script("/mem/own", FRESH)
    proxy = ProxyProcess(tmp_path, config, certs_dir, ["--workers", "2"]).start()
    try:
        deadline = time.monotonic() + 30
        sent = 0
        # New connections until both workers have answered both (the kernel spreads them).
        while sent < 10 or min(len(served(proxy, p)) for p in ("/disk/shared", "/mem/own")) < 2:
            assert time.monotonic() < deadline and sent < 400, proxy.output[-5:]
            status, _, body = get(proxy, ca, "/disk/shared")
            assert (status, body) == (200, b"stored once")
            get(proxy, ca, "/mem/own")
            sent += 1
    finally:
        proxy.stop()
    assert origin.count("/disk/shared") == 1
    # Memory stores are each worker's own: one fill per worker.
    assert origin.count("/mem/own") == 2


def test_purge_by_url_and_by_prefix_on_the_admin_listener(
    tmp_path: Path, certs: tuple[Path, trustme.CA], origin: ScriptedBackend
) -> None:
    certs_dir, ca = certs
    config = write_config(tmp_path, origin)
    for path in ("/mem/a", "/mem/b", "/mem/dir/c", "/disk/d"):
        origin.script(path, FRESH)
    proxy = ProxyProcess(tmp_path, config, certs_dir).start()
    try:
        for path in ("/mem/a", "/mem/b", "/mem/dir/c", "/disk/d"):
            get(proxy, ca, path)
        assert admin(proxy, "POST", f"/cache/purge?url=https://{HOST}/mem/a") == (
            200,
            b'{"purged": 1}\n',
        )
        assert admin(proxy, "POST", f"/cache/purge?prefix=https://{HOST}/mem/dir/") == (
            200,
            b'{"purged": 1}\n',
        )
        assert admin(proxy, "POST", f"/cache/purge?url=https://{HOST}/disk/d")[1] == (
            b'{"purged": 1}\n'
        )
        assert admin(proxy, "POST", "/cache/purge?url=ftp://x/")[0] == 400
        assert admin(proxy, "POST", "/cache/purge")[0] == 400
        assert admin(proxy, "GET", f"/cache/purge?url=https://{HOST}/mem/b")[0] == 405
        for path in ("/mem/a", "/mem/b", "/mem/dir/c", "/disk/d"):
            get(proxy, ca, path)
        proxy.wait_for_output(r"cache purge by prefix https://cache\.example/mem/dir/: 1 objects")
    finally:
        proxy.stop()
    counts = {p: origin.count(p) for p in ("/mem/a", "/mem/b", "/mem/dir/c", "/disk/d")}
    assert counts == {"/mem/a": 2, "/mem/b": 1, "/mem/dir/c": 2, "/disk/d": 2}


def test_status_and_metrics_show_each_caches_figures(
    tmp_path: Path, certs: tuple[Path, trustme.CA], origin: ScriptedBackend
) -> None:
    certs_dir, ca = certs
    config = write_config(tmp_path, origin)
    origin.script("/mem/x", FRESH)
    proxy = ProxyProcess(tmp_path, config, certs_dir).start()
    try:
        for _ in range(3):
            get(proxy, ca, "/mem/x")
        status, body = admin(proxy, "GET", "/status")
        caches = {c["name"]: c for c in json.loads(body)["caches"]}
        mem = caches[f"memory:{HOST}/mem/"]
        assert (mem["objects"], mem["hits"], mem["misses"], mem["stored"]) == (1, 2, 1, 1)
        assert mem["max_bytes"] == 2**20 and mem["bytes"] > len(b"stored once")
        routes = json.loads(body)["virtual_hosts"][0]["routes"]
        assert [r["cache"] for r in routes] == [f"disk:{tmp_path / 'cache'}", "memory"]
        _, metrics = admin(proxy, "GET", "/metrics")
        text = metrics.decode()
        label = f'cache="memory:{HOST}/mem/"'
        assert f'edgeproxy_cache_requests_total{{{label},result="hit"}} 2.0' in text
        assert f'edgeproxy_cache_requests_total{{{label},result="miss"}} 1.0' in text
        assert f"edgeproxy_cache_objects{{{label}}} 1.0" in text
        _, page = admin(proxy, "GET", "/")
        assert b"<h2>Caches</h2>" in page and f"memory:{HOST}/mem/".encode() in page
    finally:
        proxy.stop()


def test_check_lists_cached_routes_and_warns_when_memory_caches_outgrow_the_machine(
    tmp_path: Path, certs: tuple[Path, trustme.CA], origin: ScriptedBackend
) -> None:
    certs_dir, _ = certs
    config = write_config(tmp_path, origin)
    args = [TWISTD, "--pidfile=", "edgeproxy", "--check", "--config", str(config)]
    args += ["--certs", str(certs_dir)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"cache: {HOST}/disk/ -> disk:{tmp_path / 'cache'}, max_bytes 1 MiB" in done.stdout
    assert f"cache: {HOST}/mem/ -> memory, max_bytes 1 MiB, max_object_bytes" in done.stdout
    huge = tmp_path / "huge.py"
    huge.write_text(
        config.read_text().replace(
            "Cache(max_bytes=2**20)", "Cache(max_bytes=2**40, max_object_bytes=2**20)"
        )
    )
    args = [TWISTD, "--pidfile=", "edgeproxy", "--check", "--config", str(huge)]
    args += ["--certs", str(certs_dir), "--workers", "4"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert done.returncode == 0
    warning = (
        "the memory caches may hold 1 TiB per process, 4 TiB with --workers 4: more than 50% "
        "of this machine's"
    )
    assert any(
        line.startswith("warning: ") and warning in line for line in done.stderr.splitlines()
    ), done.stderr


def test_an_unusable_cache_directory_is_a_clear_error_at_start_and_a_rejected_reload(
    tmp_path: Path, certs: tuple[Path, trustme.CA], origin: ScriptedBackend
) -> None:
    certs_dir, ca = certs
    config = write_config(tmp_path, origin)
    good = config.read_text()
    bad = good.replace(f"disk:{tmp_path / 'cache'}", "disk:/proc/edgeproxy-cache")
    config.write_text(bad)
    args = [TWISTD, "--pidfile=", "-n", "edgeproxy", "--config", str(config)]
    args += ["--certs", str(certs_dir), "--https", "tcp:0:interface=127.0.0.1", "--http", "none"]
    args += ["--admin", "none"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert done.returncode != 0
    problem = "/proc/edgeproxy-cache: cannot use it as a cache directory: No such file or directory"
    assert problem in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr

    config.write_text(good)
    origin.script("/mem/r", FRESH)
    proxy = ProxyProcess(tmp_path, config, certs_dir).start()
    try:
        get(proxy, ca, "/mem/r")
        start = len(proxy.output)
        config.write_text(bad)
        assert proxy.process is not None
        proxy.process.send_signal(signal.SIGHUP)
        line = proxy.wait_for_output(r"reload rejected", start=start)
        assert problem in line
        status, cache_status, body = get(proxy, ca, "/mem/r")
        assert (status, body) == (200, b"stored once")
        assert cache_status.startswith("edgeproxy; hit")
    finally:
        proxy.stop()


def test_check_refuses_a_cache_directory_that_cannot_be_made(
    tmp_path: Path, certs: tuple[Path, trustme.CA], origin: ScriptedBackend
) -> None:
    certs_dir, _ = certs
    config = write_config(tmp_path, origin)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    config.write_text(config.read_text().replace(str(tmp_path / "cache"), str(blocker / "cache")))
    args = [TWISTD, "--pidfile=", "edgeproxy", "--check", "--config", str(config)]
    args += ["--certs", str(certs_dir)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert done.returncode == 1
    assert (
        f"error: {config}:9: cache directory '{blocker / 'cache'}' cannot be used: "
        f"{blocker} is not a directory"
    ) in done.stderr


def test_concurrent_misses_on_two_workers_reach_the_origin_once_with_a_disk_store(
    tmp_path: Path, certs: tuple[Path, trustme.CA], origin: ScriptedBackend
) -> None:
    certs_dir, ca = certs
    config = write_config(tmp_path, origin)
    proxy = ProxyProcess(tmp_path, config, certs_dir, ["--workers", "2"]).start()
    try:
        # Until the kernel has spread one round's connections over both workers.
        for attempt in range(6):
            path = f"/disk/herd{attempt}"
            origin.script(path, Reply(headers=[("Cache-Control", "max-age=600")], delay=1.0))
            with ThreadPoolExecutor(max_workers=12) as pool:
                results = list(pool.map(lambda p: get(proxy, ca, p), [path] * 12))
            assert {(status, body) for status, _, body in results} == {(200, b"body")}
            assert origin.count(path) == 1
            deadline = time.monotonic() + 5
            while len(list_served(proxy, path)) < 12 and time.monotonic() < deadline:
                time.sleep(0.05)
            if len(set(list_served(proxy, path))) == 2:
                break
        else:
            raise AssertionError("the requests never reached both workers")
    finally:
        proxy.stop()


def list_served(proxy: ProxyProcess, path: str) -> list[int]:
    """The worker of each access-log line for ``path``."""
    return [
        int(m.group(1))
        for line in list(proxy.output)
        if f" {path} " in line and (m := _ACCESS.search(line))
    ]
