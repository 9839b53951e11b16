"""
The request-head limits as options of the real ``twistd edgeproxy``
(``--max-request-line``, ``--max-header-bytes``, ``--max-headers``): past
each the client gets its status and the connection closes, and nothing
reaches the backend.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import TWISTD, BackendServer, ProxyProcess, raw_exchange

CONFIG = """
from edgeproxy.config import Cluster, Route, VirtualHost

app = Cluster("app", endpoints=["{backend}"])
virtual_hosts = [VirtualHost(["app.example"], routes=[Route("/", app, plain_http=True)])]
"""


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyProcess, BackendServer]]:
    tmp = tmp_path_factory.mktemp("limits")
    (tmp / "certs").mkdir()
    backend = BackendServer("app").start()
    config = tmp / "site.py"
    config.write_text(CONFIG.format(backend=backend.address))
    limits = ["--max-request-line", "100", "--max-header-bytes", "300", "--max-headers", "5"]
    process = ProxyProcess(tmp, config, tmp / "certs", limits, https=False).start()
    try:
        yield process, backend
    finally:
        process.stop()
        backend.stop()


def status_of(proxy: ProxyProcess, head: bytes) -> bytes:
    answer = raw_exchange(proxy.ports["http"], head)
    return answer.split(b"\r\n", 1)[0]


HOST = b"Host: app.example\r\n"


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /" + b"a" * 99 + b" HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n", b"200"),
        (b"GET /" + b"a" * 100 + b" HTTP/1.1\r\n" + HOST + b"\r\n", b"414"),
        (b"GET / HTTP/1.1\r\n" + HOST + b"X-Pad: " + b"v" * 300 + b"\r\n\r\n", b"431"),
        (b"GET / HTTP/1.1\r\n" + HOST + b"".join(b"X-%d: v\r\n" % i for i in range(5)) + b"\r\n", b"431"),
    ],
    ids=["target of 100 bytes", "target of 101 bytes", "header block over 300", "6 header lines"],
)
def test_each_limit_answers_its_status(
    proxy: tuple[ProxyProcess, BackendServer], head: bytes, status: bytes
) -> None:
    process, backend = proxy
    before = backend.requests
    line = status_of(process, head)
    assert line.split(b" ")[1] == status, line
    assert backend.requests == before + (status == b"200")


def test_a_limit_must_be_positive(tmp_path: Path) -> None:
    done = subprocess.run(
        [TWISTD, "edgeproxy", "--max-headers", "0", "--check"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert done.returncode != 0
    assert "must be at least 1" in done.stdout + done.stderr
