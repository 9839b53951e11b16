"""
``allow``/``deny`` through the real ``twistd edgeproxy``, from two client
addresses (127.0.0.2 and 127.0.0.3 on loopback): each is judged by its own
address, refused ones get 403 and nothing reaches the backend.
"""

from __future__ import annotations

import http.client
import re
from collections.abc import Iterator

import pytest

from tests.e2e.harness import BackendServer, ProxyProcess

CONFIG = """
from edgeproxy.config import Cluster, Route, VirtualHost

app = Cluster("app", endpoints=["{backend}"])
virtual_hosts = [
    VirtualHost(
        ["app.example"],
        routes=[
            Route("/", app, plain_http=True),
            Route("/two-only/", app, plain_http=True, allow=["127.0.0.2"]),
            Route("/not-three/", app, plain_http=True, deny=["127.0.0.3/32"]),
        ],
    ),
    VirtualHost(["staff.example"], routes=[Route("/", app, plain_http=True)], allow=["10.0.0.0/8"]),
]
"""


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyProcess, BackendServer]]:
    tmp = tmp_path_factory.mktemp("access")
    (tmp / "certs").mkdir()
    backend = BackendServer("app").start()
    config = tmp / "site.py"
    config.write_text(CONFIG.format(backend=backend.address))
    process = ProxyProcess(tmp, config, tmp / "certs", https=False).start()
    try:
        yield process, backend
    finally:
        process.stop()
        backend.stop()


def status(proxy: ProxyProcess, source: str, host: str, path: str) -> int:
    conn = http.client.HTTPConnection(
        "127.0.0.1", proxy.ports["http"], timeout=5, source_address=(source, 0)
    )
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("source", "host", "path", "expected"),
    [
        ("127.0.0.2", "app.example", "/two-only/x", 200),
        ("127.0.0.3", "app.example", "/two-only/x", 403),
        ("127.0.0.2", "app.example", "/not-three/x", 200),
        ("127.0.0.3", "app.example", "/not-three/x", 403),
        ("127.0.0.3", "app.example", "/x", 200),
        ("127.0.0.2", "staff.example", "/x", 403),
    ],
)
def test_each_client_is_judged_by_its_own_address(
    proxy: tuple[ProxyProcess, BackendServer], source: str, host: str, path: str, expected: int
) -> None:
    process, backend = proxy
    before = backend.requests
    assert status(process, source, host, path) == expected
    assert backend.requests == before + (expected == 200)
    if expected == 403:
        escaped = re.escape(source)
        process.wait_for_output(rf"\] {escaped} - - .*\" 403 .*reason=forbidden")
