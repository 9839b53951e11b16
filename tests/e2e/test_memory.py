"""
Bounded memory after attacks: clients that abort mid-response (and upstreams
that fail) leave nothing in reference cycles in the real ``twistd edgeproxy``.

A slow reader's connection lives long enough for its objects to reach the
collector's oldest generation; whatever cycle they end in then waits for a
full collection, which edgeproxy makes rare.  So every aborted reader used to
keep its channel, request, relay, transports and buffers (~115 KB) until then,
and rounds of them grew the process by hundreds of MB.

The proxy is observed from outside: ``gcprobe/sitecustomize.py`` (on its
``PYTHONPATH``, test-only) opens a window on the collector on SIGUSR2 in which
every object found in a cycle is kept instead of freed, and reports them on
the next SIGUSR2.  Deterministic: it does not depend on when the collector
would have run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.e2e.harness import BackendServer, ProxyProcess, client_context, free_port

PROBE = Path(__file__).resolve().parent / "gcprobe"
#: Aborted readers per kind (plain and TLS).
READERS = 100
#: Far more than the socket buffers hold: every reader aborts mid-body.
BODY = 8 << 20
WAIT = 20.0

CONFIG = """
from edgeproxy.config import Cluster, Route, VirtualHost

# No outlier detection: every request must take its failing path to the
# endpoint (ejection, on by default, would answer 503 without trying).
files = Cluster("files", endpoints=["{backend}"], outlier_detection=None)
gone = Cluster("gone", endpoints=["127.0.0.1:{refused}"], outlier_detection=None)
virtual_hosts = [
    VirtualHost(["files.example", "127.0.0.1"], routes=[
        Route("/", files, plain_http=True),
        Route("/gone/", gone, plain_http=True),
    ]),
]
"""


class Probe:
    def __init__(self, proxy: ProxyProcess, path: Path) -> None:
        self.proxy = proxy
        self.path = path

    def _signal(self, window: str) -> dict[str, Any]:
        self.path.unlink(missing_ok=True)
        os.kill(self.proxy.pid, signal.SIGUSR2)
        deadline = time.monotonic() + WAIT
        while not self.path.exists():
            assert time.monotonic() < deadline, "the probe did not answer"
            time.sleep(0.05)
        report: dict[str, Any] = json.loads(self.path.read_text())
        assert report["window"] == window
        return report

    def open(self) -> None:
        self._signal("open")

    def garbage(self) -> dict[str, int]:
        garbage: dict[str, int] = self._signal("closed")["garbage"]
        return garbage


@pytest.fixture
def env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ProxyProcess, Probe, ssl.SSLContext]]:
    ca = trustme.CA()
    certs = tmp_path / "certs"
    certs.mkdir()
    ca.issue_cert("files.example").private_key_and_cert_chain_pem.write_to_path(
        str(certs / "files.pem")
    )
    backend = BackendServer("files").start()
    config = tmp_path / "sites.py"
    config.write_text(CONFIG.format(backend=backend.address, refused=free_port()))
    paths = [str(PROBE), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    monkeypatch.setenv("EDGEPROXY_GC_PROBE", str(tmp_path / "gc.json"))
    proxy = ProxyProcess(tmp_path, config, certs).start()
    try:
        yield proxy, Probe(proxy, tmp_path / "gc.json"), client_context(ca.cert_pem.bytes())
    finally:
        proxy.stop()
        backend.stop()


def _connect(proxy: ProxyProcess, tls: ssl.SSLContext | None) -> socket.socket:
    port = proxy.ports["https" if tls is not None else "http"]
    sock = socket.create_connection(("127.0.0.1", port), WAIT)
    if tls is not None:
        return tls.wrap_socket(sock, server_hostname="files.example")
    return sock


def aborted_reader(proxy: ProxyProcess, tls: ssl.SSLContext | None) -> None:
    """Ask for a large body, take the start of it, reset the connection."""
    sock = _connect(proxy, tls)
    sock.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: files.example\r\n\r\n" % BODY)
    got = b""
    while len(got) < 100_000:
        data = sock.recv(65536)
        assert data, "the proxy closed first"
        got += data
    assert got.startswith(b"HTTP/1.1 200 ")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def failed_upstream(proxy: ProxyProcess, path: bytes) -> bytes:
    """A request whose upstream fails; everything the proxy answers."""
    sock = _connect(proxy, None)
    sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: files.example\r\nConnection: close\r\n\r\n")
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    sock.close()
    return b"".join(chunks)


def sockets_of(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return count


def until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.05)


def test_aborted_readers_and_failed_upstreams_leave_no_cyclic_garbage(
    env: tuple[ProxyProcess, Probe, ssl.SSLContext],
) -> None:
    proxy, probe, tls = env
    idle = sockets_of(proxy.pid)

    def everything(readers: int) -> None:
        for _ in range(readers):
            aborted_reader(proxy, None)
            aborted_reader(proxy, tls)
        for _ in range(max(1, readers // 10)):
            # The backend promises 1000 bytes and closes after 10.
            assert failed_upstream(proxy, b"/close").startswith(b"HTTP/1.1 200 ")
            assert failed_upstream(proxy, b"/gone/").startswith(b"HTTP/1.1 502 ")
        # Every connection of those (client and upstream) closed by the proxy.
        until(lambda: sockets_of(proxy.pid) <= idle)

    everything(5)  # warm: lazy imports, caches, the first handshake
    probe.open()
    everything(READERS)
    garbage = probe.garbage()
    assert garbage == {}
