"""
``--trusted-source`` through the real ``twistd edgeproxy``: 127.0.0.2 is a
trusted forwarder (a load balancer in front), 127.0.0.3 a client that forges
``X-Forwarded-For``.  The backend sees a chain it can believe, and the access
log and the rules see the client the forwarder names.
"""

from __future__ import annotations

import http.client
import json
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
            Route("/closed/", app, plain_http=True, deny=["203.0.113.0/24"]),
            Route("/", app, plain_http=True),
        ],
    ),
]
"""


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyProcess, BackendServer]]:
    tmp = tmp_path_factory.mktemp("trusted")
    (tmp / "certs").mkdir()
    backend = BackendServer("app").start()
    config = tmp / "site.py"
    config.write_text(CONFIG.format(backend=backend.address))
    process = ProxyProcess(
        tmp, config, tmp / "certs", ["--trusted-source", "127.0.0.2/32"], https=False
    ).start()
    try:
        yield process, backend
    finally:
        process.stop()
        backend.stop()


def get(proxy: ProxyProcess, source: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(
        "127.0.0.1", proxy.ports["http"], timeout=5, source_address=(source, 0)
    )
    try:
        conn.request("GET", path, headers={"Host": "app.example", **headers})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def seen_by_backend(body: bytes, name: str) -> list[str]:
    return [v for k, v in json.loads(body)["headers"] if k.lower() == name.lower()]


FORGED = {"X-Forwarded-For": "203.0.113.7", "Forwarded": "for=203.0.113.7", "X-Request-Id": "forged-1"}


def test_a_forged_chain_from_an_untrusted_client_is_replaced(
    proxy: tuple[ProxyProcess, BackendServer],
) -> None:
    process, _ = proxy
    status, body = get(process, "127.0.0.3", "/untrusted", FORGED)
    assert status == 200
    assert seen_by_backend(body, "X-Forwarded-For") == ["127.0.0.3"]
    assert seen_by_backend(body, "Forwarded") == ["for=127.0.0.3;proto=http;host=app.example"]
    assert seen_by_backend(body, "X-Request-Id") != ["forged-1"]
    process.wait_for_output(r"\] 127\.0\.0\.3 - - .*\"GET /untrusted ")


def test_a_trusted_forwarder_s_chain_is_kept_and_names_the_client(
    proxy: tuple[ProxyProcess, BackendServer],
) -> None:
    process, _ = proxy
    status, body = get(process, "127.0.0.2", "/trusted", FORGED)
    assert status == 200
    assert seen_by_backend(body, "X-Forwarded-For") == ["203.0.113.7, 127.0.0.2"]
    assert seen_by_backend(body, "Forwarded") == [
        "for=203.0.113.7, for=127.0.0.2;proto=http;host=app.example"
    ]
    assert seen_by_backend(body, "X-Request-Id") == ["forged-1"]
    process.wait_for_output(r"\] 203\.0\.113\.7 - - .*\"GET /trusted ")


def test_rules_judge_the_named_client_only_behind_a_trusted_forwarder(
    proxy: tuple[ProxyProcess, BackendServer],
) -> None:
    process, backend = proxy
    before = backend.requests
    assert get(process, "127.0.0.2", "/closed/x", FORGED)[0] == 403
    assert backend.requests == before
    process.wait_for_output(re.escape("] 203.0.113.7 - - ") + r".*\" 403 .*reason=forbidden")
    # Claimed by an untrusted client, the same address is neither believed nor held against it.
    assert get(process, "127.0.0.3", "/closed/x", FORGED)[0] == 200
