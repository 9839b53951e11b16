"""
421 Misdirected Request through the real ``twistd edgeproxy``: a request on a
TLS connection whose certificate (chosen by the client's SNI name) does not
cover the request's host is refused, so a client that verified app.test's
certificate cannot reach blog.test through it.  A certificate that covers
both names (a SAN list, a wildcard) serves both; a client without SNI and
the plain-HTTP listener are routed by Host as before.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import trustme

from tests.e2e.conftest import write_config
from tests.e2e.harness import BackendServer, ProxyProcess, raw_exchange, request

CONFIG = """
from edgeproxy.config import Cluster, Route, VirtualHost

app = Cluster("app", endpoints=["{app}"])
blog = Cluster("blog", endpoints=["{blog}"])
virtual_hosts = [
    VirtualHost(["app.test", "www.app.test"], routes=[Route("/", app)]),
    VirtualHost(["blog.test", "*.blog.test"], routes=[Route("/", blog)]),
    VirtualHost(["plain.test"], routes=[Route("/", blog, plain_http=True)]),
]
"""


@dataclass
class Site:
    proxy: ProxyProcess
    ca: trustme.CA
    app: BackendServer
    blog: BackendServer

    @property
    def port(self) -> int:
        return self.proxy.ports["https"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("misdirected")
    certs = tmp / "certs"
    certs.mkdir()
    # One certificate per site, plus one SAN list and one wildcard covering
    # names of both.  The default certificate covers neither site.
    for stem, names in [
        ("app", ["app.test"]),
        ("blog", ["blog.test"]),
        ("both", ["www.app.test", "news.blog.test"]),
        ("wild", ["*.blog.test"]),
        ("default", ["default.test"]),
    ]:
        ca.issue_cert(*names).private_key_and_cert_chain_pem.write_to_path(
            str(certs / f"{stem}.pem")
        )
    app, blog = BackendServer("app").start(), BackendServer("blog").start()
    config = write_config(tmp / "site.py", CONFIG.format(app=app.address, blog=blog.address))
    proxy = ProxyProcess(tmp, config, certs).start()
    try:
        yield Site(proxy, ca, app, blog)
    finally:
        proxy.stop()
        app.stop()
        blog.stop()


def connect(site: Site, sni: str | None) -> http.client.HTTPConnection:
    """One TLS connection to the proxy that sends ``sni`` and verifies the
    certificate for it (without SNI: for nothing)."""
    ctx = ssl.create_default_context()
    site.ca.configure_trust(ctx)
    if sni is None:
        ctx.check_hostname = False
    sock = socket.create_connection(("127.0.0.1", site.port), 5.0)
    conn = http.client.HTTPConnection("127.0.0.1", site.port, timeout=5.0)
    conn.sock = ctx.wrap_socket(sock, server_hostname=sni)
    return conn


def get(conn: http.client.HTTPConnection, host: str) -> tuple[int, bytes, str]:
    response, body = request(conn, "GET", "/x", host)
    return response.status, body, response.reason


def backend_of(body: bytes) -> str:
    name: str = json.loads(body)["backend"]
    return name


def test_host_not_covered_by_the_sni_certificate_is_421(site: Site) -> None:
    conn = connect(site, "app.test")
    try:
        before = site.blog.requests
        status, body, reason = get(conn, "blog.test")
        assert (status, reason, body) == (421, "Misdirected Request", b"421 misdirected request\n")
        assert site.blog.requests == before
        # The connection stays usable for the site its certificate covers.
        status, body, _ = get(conn, "app.test")
        assert (status, backend_of(body)) == (200, "app")
        # The absolute form's authority is the request's host too.
        response, body = request(conn, "GET", "http://blog.test/x", "blog.test")
        assert response.status == 421
        # So is a name on the same site the certificate does not list.
        assert get(conn, "www.app.test")[0] == 421
    finally:
        conn.close()
    site.proxy.wait_for_output(
        r'"GET /x HTTP/1\.1" 421 .* vhost=- .*outcome=rejected reason=misdirected_request'
    )


def test_san_list_certificate_serves_both_sites(site: Site) -> None:
    conn = connect(site, "www.app.test")
    try:
        status, body, _ = get(conn, "www.app.test")
        assert (status, backend_of(body)) == (200, "app")
        status, body, _ = get(conn, "news.blog.test")
        assert (status, backend_of(body)) == (200, "blog")
        assert get(conn, "blog.test")[0] == 421
    finally:
        conn.close()


def test_wildcard_certificate_serves_every_name_it_covers(site: Site) -> None:
    conn = connect(site, "a.blog.test")
    try:
        for host in ("a.blog.test", "b.blog.test", "B.Blog.Test.:443"):
            status, body, _ = get(conn, host)
            assert (status, backend_of(body)) == (200, "blog")
        # One label only, as for certificate selection.
        assert get(conn, "x.y.blog.test")[0] == 421
        assert get(conn, "blog.test")[0] == 421
    finally:
        conn.close()


def test_unknown_sni_served_the_default_certificate_gets_421_for_other_hosts(site: Site) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    sock = socket.create_connection(("127.0.0.1", site.port), 5.0)
    conn = http.client.HTTPConnection("127.0.0.1", site.port, timeout=5.0)
    conn.sock = ctx.wrap_socket(sock, server_hostname="unknown.test")
    try:
        assert get(conn, "app.test")[0] == 421
        # The name it sent in SNI is not misdirected (no other site is reached):
        # it is routed, and no virtual host serves it.
        assert get(conn, "unknown.test")[0] == 404
        assert get(conn, "blog.test")[0] == 421
    finally:
        conn.close()


def test_without_sni_the_request_is_routed_by_host(site: Site) -> None:
    conn = connect(site, None)
    try:
        status, body, _ = get(conn, "app.test")
        assert (status, backend_of(body)) == (200, "app")
        status, body, _ = get(conn, "blog.test")
        assert (status, backend_of(body)) == (200, "blog")
    finally:
        conn.close()


def test_plain_http_listener_never_answers_421(site: Site) -> None:
    port = site.proxy.ports["http"]
    raw = raw_exchange(port, b"GET /x HTTP/1.1\r\nHost: plain.test\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 "), raw[:200]
    raw = raw_exchange(port, b"GET /x HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 308 "), raw[:200]
