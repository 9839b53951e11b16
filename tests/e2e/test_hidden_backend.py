"""
Hidden backends through the real ``twistd edgeproxy`` over TLS: by default
the upstream's ``Server`` and ``X-Powered-By`` are dropped and a redirect to
the backend's own address is rewritten to the host the client used;
``hide_backend=False`` passes them on.  The first virtual host also sends
``Strict-Transport-Security`` (``hsts=HSTS()``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trustme

from tests.e2e.cachekit import Reply, ScriptedBackend
from tests.e2e.harness import ProxyProcess, client_context, https_connection, request

CONFIG = """
from edgeproxy.config import HSTS, Cluster, Route, VirtualHost

app = Cluster("app", endpoints=["{origin}"])
virtual_hosts = [
    VirtualHost(["hidden.example"], routes=[Route("/", app)], hsts=HSTS()),
    VirtualHost(["open.example"], routes=[Route("/", app)], hide_backend=False),
]
"""


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ProxyProcess, ScriptedBackend, trustme.CA]]:
    tmp = tmp_path_factory.mktemp("hidden")
    ca = trustme.CA()
    certs = tmp / "certs"
    certs.mkdir()
    ca.issue_cert("hidden.example", "open.example").private_key_and_cert_chain_pem.write_to_path(
        str(certs / "c.pem")
    )
    origin = ScriptedBackend().start()
    origin.script(
        "/login",
        Reply(
            status=302,
            headers=[
                ("Location", f"http://{origin.address}/welcome?x=1"),
                ("X-Powered-By", "Express"),
                ("Server", "origin-server/1.0"),
            ],
            body=b"",
        ),
    )
    config = tmp / "sites.py"
    config.write_text(CONFIG.format(origin=origin.address))
    proxy = ProxyProcess(tmp, config, certs).start()
    try:
        yield proxy, origin, ca
    finally:
        proxy.stop()
        origin.stop()


def get(
    setup: tuple[ProxyProcess, ScriptedBackend, trustme.CA], host: str
) -> dict[str, list[str]]:
    proxy, _, ca = setup
    conn = https_connection(proxy.ports["https"], host, client_context(ca.cert_pem.bytes()))
    try:
        response, _ = request(conn, "GET", "/login", host)
        assert response.status == 302
        headers: dict[str, list[str]] = {}
        for name, value in response.getheaders():
            headers.setdefault(name.lower(), []).append(value)
        return headers
    finally:
        conn.close()


def test_the_backend_is_hidden_by_default(
    setup: tuple[ProxyProcess, ScriptedBackend, trustme.CA],
) -> None:
    headers = get(setup, "hidden.example")
    assert "server" not in headers and "x-powered-by" not in headers
    assert headers["location"] == ["https://hidden.example/welcome?x=1"]
    # (and this virtual host's HSTS policy, issue 16's TLS hardening)
    assert headers["strict-transport-security"] == ["max-age=31536000; includeSubDomains"]


def test_hide_backend_false_shows_what_the_backend_said(
    setup: tuple[ProxyProcess, ScriptedBackend, trustme.CA],
) -> None:
    _, origin, _ = setup
    headers = get(setup, "open.example")
    assert headers["server"] == ["origin-server/1.0"]
    assert headers["x-powered-by"] == ["Express"]
    assert headers["location"] == [f"http://{origin.address}/welcome?x=1"]
    assert "strict-transport-security" not in headers
