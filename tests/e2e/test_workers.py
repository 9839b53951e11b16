"""
``twistd edgeproxy --workers 2`` for real: both workers serve the shared
listeners (told apart by the ``worker=I pid=P`` in their access-log lines, so
responses are unchanged), a worker killed with SIGKILL is restarted while the
other keeps serving, SIGHUP reaches the workers, and SIGTERM on the supervisor
(or even SIGKILL) leaves no worker behind.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import trustme

from tests.certutil import client_context
from tests.e2e.conftest import write_config
from tests.e2e.harness import BackendServer, ProxyProcess, https_connection, request

CONFIG = """
from edgeproxy.config import Cluster, Route, VirtualHost

app = Cluster("app", endpoints=["{app}"])
virtual_hosts = [VirtualHost(["shop.example"], routes=[Route("/", app)])]
"""

_ACCESS = re.compile(r"\[edgeproxy\.access#info worker=(\d+) pid=(\d+)\] .*\" (\d{3}) ")
_SERVING = re.compile(r"edgeproxy worker (\d+) serving \(pid (\d+)\)")


def children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def serving_workers(proxy: ProxyProcess, count: int = 2) -> dict[int, int]:
    """Wait until ``count`` workers say they serve; {index: pid} (the latest of each)."""
    found: dict[int, int] = {}

    def ready() -> bool:
        for line in list(proxy.output):
            match = _SERVING.search(line)
            if match:
                found[int(match.group(1))] = int(match.group(2))
        return len(found) >= count

    wait_for(ready, 15, f"{count} workers serving:\n" + "".join(proxy.output))
    return found


def access_pids(proxy: ProxyProcess) -> Counter[int]:
    return Counter(
        int(m.group(2)) for line in list(proxy.output) if (m := _ACCESS.search(line))
    )


def start(
    tmp_path: Path, certs_dir: Path, backends: Callable[[str], BackendServer]
) -> ProxyProcess:
    app = backends("app")
    config = write_config(tmp_path / "site.py", CONFIG.format(app=app.address))
    return ProxyProcess(tmp_path, config, certs_dir, ["--workers", "2"]).start()


def get(port: int, ca: trustme.CA) -> int:
    conn = https_connection(port, "shop.example", client_context(ca), timeout=5)
    try:
        response, body = request(conn, "GET", "/", "shop.example")
        assert json.loads(body)["backend"] == "app"
        return response.status
    finally:
        conn.close()


def test_two_workers_share_every_listener_and_follow_their_supervisor(
    tmp_path: Path, certs_dir: Path, ca: trustme.CA, backends: Callable[[str], BackendServer]
) -> None:
    proxy = start(tmp_path, certs_dir, backends)
    try:
        workers = serving_workers(proxy)
        assert set(workers.values()) == children(proxy.pid)
        with ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(lambda _: get(proxy.ports["https"], ca), range(200)))
        assert statuses == [200] * 200
        wait_for(lambda: sum(access_pids(proxy).values()) >= 200, 5, "200 access-log lines")
        by_pid = access_pids(proxy)
        assert set(by_pid) == set(workers.values()), by_pid
        # The admin listener is worker 0's.
        admin = http.client.HTTPConnection("127.0.0.1", proxy.ports["admin"], timeout=5)
        admin.request("GET", "/healthz")
        assert admin.getresponse().read() == b"ok\n"
        admin.close()

        # Workers never outlive their supervisor, even one killed by SIGKILL.
        assert proxy.process is not None
        proxy.process.kill()
        proxy.process.wait(5)
        pids = set(workers.values())
        wait_for(lambda: not any(alive(pid) for pid in pids), 5, f"workers {pids} to exit")
    finally:
        proxy.stop()


def test_killed_worker_is_restarted_and_sigterm_leaves_no_orphans(
    tmp_path: Path, certs_dir: Path, ca: trustme.CA, backends: Callable[[str], BackendServer]
) -> None:
    proxy = start(tmp_path, certs_dir, backends)
    try:
        workers = serving_workers(proxy)
        port = proxy.ports["https"]
        results: list[int | str] = []
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                try:
                    results.append(get(port, ca))
                except Exception as e:  # a connection the killed worker held
                    results.append(repr(e))

        thread = threading.Thread(target=client, daemon=True)
        thread.start()
        wait_for(lambda: len(results) >= 20, 10, "requests before the kill")
        mark = len(proxy.output)
        os.kill(workers[1], signal.SIGKILL)
        proxy.wait_for_output(r"worker 1 \(pid \d+\) killed by SIGKILL .* restarting in", 5, mark)
        started = proxy.wait_for_output(r"edgeproxy worker 1 started \(pid \d+\)", 5, mark)
        restarted = int(started.rsplit("(pid ", 1)[1].split(")")[0])
        proxy.wait_for_output(rf"edgeproxy worker 1 serving \(pid {restarted}\)", 10, mark)
        before = len(results)
        wait_for(lambda: len(results) >= before + 10, 10, "requests after the restart")
        stop.set()
        thread.join(10)
        failures = [r for r in results if r != 200]
        # At most the requests in flight on the killed worker (one client, one at a time).
        assert len(failures) <= 1, failures
        assert children(proxy.pid) == {workers[0], restarted}

        # SIGHUP is forwarded to every worker.
        mark = len(proxy.output)
        os.kill(proxy.pid, signal.SIGHUP)
        for pid in (workers[0], restarted):
            proxy.wait_for_output(rf"pid={pid}\] edgeproxy worker \d: SIGHUP", 5, mark)
        assert get(port, ca) == 200

        # SIGTERM stops everything, workers first.
        pids = children(proxy.pid)
        assert proxy.process is not None
        proxy.process.send_signal(signal.SIGTERM)
        # twistd re-raises the signal that stopped it, as the single process does.
        assert proxy.process.wait(10) == -signal.SIGTERM
        proxy.wait_for_output(r"edgeproxy worker 0 \(pid \d+\) stopped: exit code 0", 1)
        proxy.wait_for_output(r"Server Shut Down", 1)
        wait_for(lambda: not any(alive(pid) for pid in pids), 5, f"workers {pids} to exit")
    finally:
        proxy.stop()
