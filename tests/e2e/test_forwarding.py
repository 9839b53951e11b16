"""
The real ``twistd edgeproxy`` with real TLS in front of real backends:
routing, splits, headers both ways, pooling, errors and redirects.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import trustme

from tests.e2e.harness import (
    BackendServer,
    ProxyProcess,
    client_context,
    free_port,
    https_connection,
    raw_exchange,
    request,
)

CONFIG = """
from edgeproxy.config import Cluster, Endpoint, Route, Split, VirtualHost

api = Cluster("api", endpoints=["{api1}", "{api2}"])
web_v1 = Cluster("web-v1", endpoints=["{web1}"])
web_v2 = Cluster("web-v2", endpoints=[Endpoint("127.0.0.1", {web2_port})])
dead = Cluster("dead", endpoints=["127.0.0.1:{dead_port}"], connect_timeout=2.0)
half_dead = Cluster("half-dead", endpoints=["127.0.0.1:{dead_port}", "{api1}"])
slow = Cluster("slow", endpoints=["{api1}"], response_timeout=0.5)

virtual_hosts = [
    VirtualHost(
        ["shop.example", "*.shop.example"],
        routes=[
            Route("/api/", api),
            Route("/strip/", api, strip_prefix=True),
            Route("/dead/", dead),
            Route("/half-dead/", half_dead),
            Route("/slow/", slow),
            Route("/small/", api, max_body_size=1000),
            Route("/plain/", api, plain_http=True),
            Route("/", Split({{web_v1: 90, web_v2: 10}})),
        ],
    ),
    VirtualHost(["127.0.0.1"], routes=[Route("/", web_v1)]),
]
"""


@dataclass
class Setup:
    proxy: ProxyProcess
    api1: BackendServer
    api2: BackendServer
    web1: BackendServer
    web2: BackendServer
    ca: trustme.CA
    ctx: ssl.SSLContext

    @property
    def https_port(self) -> int:
        return self.proxy.ports["https"]

    def conn(self, sni: str | None = "shop.example"):  # type: ignore[no-untyped-def]
        return https_connection(self.https_port, sni, self.ctx)

    def get(self, path: str, host: str = "shop.example", **kw):  # type: ignore[no-untyped-def]
        conn = self.conn()
        try:
            return request(conn, kw.pop("method", "GET"), path, host, **kw)
        finally:
            conn.close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("forwarding")
    ca = trustme.CA()
    certs = tmp / "certs"
    certs.mkdir()
    ca.issue_cert("shop.example", "*.shop.example").private_key_and_cert_chain_pem.write_to_path(
        str(certs / "shop.pem")
    )
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(certs / "default.pem")
    )
    servers = [BackendServer(name).start() for name in ("api1", "api2", "web1", "web2")]
    api1, api2, web1, web2 = servers
    config = tmp / "sites.py"
    config.write_text(
        CONFIG.format(
            api1=api1.address,
            api2=api2.address,
            web1=web1.address,
            web2_port=web2.port,
            dead_port=free_port(),
        )
    )
    proxy = ProxyProcess(tmp, config, certs).start()
    ctx = client_context(ca.cert_pem.bytes())
    try:
        yield Setup(proxy, api1, api2, web1, web2, ca, ctx)
    finally:
        proxy.stop()
        for server in servers:
            server.stop()


def echo(body: bytes) -> dict:  # type: ignore[type-arg]
    return json.loads(body)  # type: ignore[no-any-return]


def header_values(info: dict, name: str) -> list[str]:  # type: ignore[type-arg]
    return [v for k, v in info["headers"] if k.lower() == name.lower()]


def test_routes_by_longest_prefix_and_balances_round_robin(setup: Setup) -> None:
    seen = []
    for _ in range(4):
        response, body = setup.get("/api/items?x=1")
        assert response.status == 200
        info = echo(body)
        assert info["path"] == "/api/items?x=1"
        seen.append(info["backend"])
    assert sorted(seen) == ["api1", "api1", "api2", "api2"]


def test_prefix_needs_trailing_slash_match(setup: Setup) -> None:
    # "/api" is not under Route("/api/"): it falls to "/" (the web split).
    response, body = setup.get("/api")
    assert echo(body)["backend"] in ("web1", "web2")


def test_strip_prefix(setup: Setup) -> None:
    response, body = setup.get("/strip/a/b?q=1")
    assert echo(body)["path"] == "/a/b?q=1"


def test_wildcard_host_and_unknown_host(setup: Setup) -> None:
    response, body = setup.get("/api/x", host="eu.shop.example")
    assert response.status == 200
    response, body = setup.get("/api/x", host="SHOP.EXAMPLE.:443")
    assert response.status == 200
    # Without SNI: on a connection for shop.example it would be misdirected (421).
    conn = https_connection(setup.https_port, None, setup.ctx)
    setup.ctx.check_hostname = False
    try:
        response, body = request(conn, "GET", "/", "other.example")
    finally:
        setup.ctx.check_hostname = True
        conn.close()
    assert response.status == 404
    assert b"127.0.0.1" not in body


def test_ip_literal_virtual_host(setup: Setup) -> None:
    conn = https_connection(setup.https_port, None, setup.ctx)
    setup.ctx.check_hostname = False
    try:
        response, body = request(conn, "GET", "/x", f"127.0.0.1:{setup.https_port}")
    finally:
        setup.ctx.check_hostname = True
        conn.close()
    assert response.status == 200
    assert echo(body)["backend"] == "web1"


def test_split_ratio(setup: Setup) -> None:
    counts = {"web1": 0, "web2": 0}
    conn = setup.conn()
    try:
        for _ in range(400):
            response, body = request(conn, "GET", "/", "shop.example")
            counts[echo(body)["backend"]] += 1
    finally:
        conn.close()
    # 90/10 of 400: binomial sd is 6, so 40 +- 24 is a 4-sigma band.
    assert 16 <= counts["web2"] <= 64, counts


def test_forwarded_headers_and_host(setup: Setup) -> None:
    response, body = setup.get(
        "/api/h",
        headers={"X-Forwarded-For": "203.0.113.7", "Forwarded": "for=203.0.113.7"},
    )
    info = echo(body)
    assert header_values(info, "Host") == ["shop.example"]
    assert header_values(info, "X-Forwarded-For") == ["203.0.113.7, 127.0.0.1"]
    assert header_values(info, "X-Forwarded-Proto") == ["https"]
    assert header_values(info, "X-Forwarded-Host") == ["shop.example"]
    forwarded = header_values(info, "Forwarded")
    assert forwarded and forwarded[0].startswith("for=203.0.113.7")
    assert "for=127.0.0.1;proto=https;host=shop.example" in forwarded[0]
    assert header_values(info, "Via") == ["1.1 edgeproxy"]


def test_hop_by_hop_request_headers_removed(setup: Setup) -> None:
    response, body = setup.get(
        "/api/h",
        headers={
            "Connection": "keep-alive, X-Private",
            "X-Private": "secret",
            "Keep-Alive": "timeout=5",
            "Proxy-Connection": "keep-alive",
            "TE": "trailers",
            "Upgrade": "h2c",
            "X-End-To-End": "kept",
        },
    )
    names = {k.lower() for k, _ in echo(body)["headers"]}
    for gone in ("x-private", "keep-alive", "proxy-connection", "te", "upgrade"):
        assert gone not in names
    assert "x-end-to-end" in names


def test_duplicate_request_headers_kept_in_order(setup: Setup) -> None:
    conn = setup.conn()
    try:
        conn.putrequest("GET", "/api/dup-req", skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", "shop.example")
        conn.putheader("X-Dup", "first")
        conn.putheader("X-Dup", "second")
        conn.endheaders()
        info = echo(conn.getresponse().read())
    finally:
        conn.close()
    assert header_values(info, "X-Dup") == ["first", "second"]


def test_response_headers_duplicates_and_hop_by_hop(setup: Setup) -> None:
    response, body = setup.get("/api/dup")
    assert response.status == 200
    assert body == b"dup\n"
    assert response.headers.get_all("Set-Cookie") == ["a=1", "b=2"]
    assert response.headers.get_all("X-Dup") == ["one", "two"]
    for gone in ("X-Secret", "Keep-Alive", "Proxy-Connection"):
        assert response.headers.get(gone) is None
    # Nothing invented: no Content-Type (the backend sent none), and no
    # Server of edgeproxy's making in place of the backend's (hidden by default).
    assert response.headers.get("Content-Type") is None
    assert response.headers.get_all("Server") is None


def test_upstream_connections_are_pooled(setup: Setup) -> None:
    before = len(setup.web1.connections) + len(setup.web2.connections)
    conn = setup.conn()
    try:
        for _ in range(100):
            response, _ = request(conn, "GET", "/", "shop.example")
            assert response.status == 200
    finally:
        conn.close()
    opened = len(setup.web1.connections) + len(setup.web2.connections) - before
    assert opened <= 4


def test_unreachable_upstream_is_502_without_address(setup: Setup) -> None:
    response, body = setup.get("/dead/x")
    assert response.status == 502
    assert b"127.0.0.1" not in body and b"dead" not in body
    assert len(body) < 100


def test_connect_failure_is_retried_on_another_endpoint(setup: Setup) -> None:
    for _ in range(4):
        response, body = setup.get("/half-dead/x", method="POST", body=b"payload")
        assert response.status == 200
        assert echo(body)["backend"] == "api1"
        assert echo(body)["body_length"] == 7


def test_slow_upstream_is_504(setup: Setup) -> None:
    response, body = setup.get("/slow/2")
    assert response.status == 504
    assert b"127.0.0.1" not in body


def test_truncated_upstream_body_cuts_client_connection(setup: Setup) -> None:
    import http.client

    conn = setup.conn()
    try:
        conn.putrequest("GET", "/api/close", skip_host=True)
        conn.putheader("Host", "shop.example")
        conn.endheaders()
        response = conn.getresponse()
        # The 10 bytes the upstream sent, then the close: the client sees a
        # short body, never a whole one.
        with pytest.raises(http.client.IncompleteRead) as short:
            response.read()
        assert (short.value.partial, short.value.expected) == (b"x" * 10, 990)
    finally:
        conn.close()


def test_http_redirects_to_https(setup: Setup) -> None:
    http_port = setup.proxy.ports["http"]
    raw = raw_exchange(http_port, b"GET /api/x?y=1 HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n")
    head = raw.split(b"\r\n\r\n")[0].decode()
    assert head.startswith("HTTP/1.1 308")
    assert f"Location: https://shop.example:{setup.https_port}/api/x?y=1" in head


def test_http_unknown_host_is_404_and_plain_route_served(setup: Setup) -> None:
    http_port = setup.proxy.ports["http"]
    raw = raw_exchange(http_port, b"GET / HTTP/1.1\r\nHost: nope.example\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 404")
    raw = raw_exchange(http_port, b"GET /plain/x HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200")
    info = json.loads(raw.split(b"\r\n\r\n", 1)[1])
    assert header_values(info, "X-Forwarded-Proto") == ["http"]


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /api/x HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /api/x HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"GET /api/x HTTP/1.1\r\nHost: shop.example\r\nBad Header: x\r\n\r\n",
        b"GET /api/x HTTP/1.1 extra\r\nHost: shop.example\r\n\r\n",
        b"GET /api/x HTTP/1.1\r\n\r\n",
        b"GET /api/x HTTP/1.1\r\nHost: shop.example\r\nHost: other.example\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: shop.example\r\n\r\n",
        b"GET /api/x HTTP/1.1\r\nHost: shop example\r\n\r\n",
    ],
)
def test_malformed_requests_get_400_and_are_not_forwarded(setup: Setup, raw: bytes) -> None:
    before = setup.api1.requests + setup.api2.requests
    answer = raw_exchange(setup.https_port, raw, setup.ctx, "shop.example")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert setup.api1.requests + setup.api2.requests == before


def test_absolute_form_target(setup: Setup) -> None:
    answer = raw_exchange(
        setup.https_port,
        b"GET https://shop.example/api/abs?q HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
        setup.ctx,
        "shop.example",
    )
    assert answer.startswith(b"HTTP/1.1 200")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["path"] == "/api/abs?q"


def test_body_over_route_limit_is_413(setup: Setup) -> None:
    before = setup.api1.requests + setup.api2.requests
    response, body = setup.get("/small/x", method="POST", body=b"x" * 2000)
    assert response.status == 413
    response, body = setup.get("/small/x", method="POST", body=b"x" * 500)
    assert response.status == 200
    assert setup.api1.requests + setup.api2.requests == before + 1


def test_chunked_body_over_limit_is_413(setup: Setup) -> None:
    chunk = b"x" * 600
    data = (
        b"POST /small/x HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n" % (len(chunk), chunk) * 3
        + b"0\r\n\r\n"
    )
    answer = raw_exchange(setup.https_port, data, setup.ctx, "shop.example")
    assert answer.startswith(b"HTTP/1.1 413")


def test_chunked_upload_is_forwarded_with_length(setup: Setup) -> None:
    data = (
        b"POST /api/up HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    answer = raw_exchange(setup.https_port, data, setup.ctx, "shop.example")
    assert answer.startswith(b"HTTP/1.1 200")
    info = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert info["body_length"] == 11
    assert header_values(info, "Content-Length") == ["11"]
    assert header_values(info, "Transfer-Encoding") == []


def test_head_keeps_content_length(setup: Setup) -> None:
    response, body = setup.get("/api/h", method="HEAD")
    assert response.status == 200
    assert body == b""
    assert response.headers.get("Content-Length") not in (None, "0")


def test_access_log_line(setup: Setup) -> None:
    start = len(setup.proxy.output)
    setup.get("/api/logged?x=1", headers={"User-Agent": "pytest-agent"})
    line = setup.proxy.wait_for_output(r"GET /api/logged\?x=1", start=start)
    assert "[edgeproxy.access#info]" in line
    assert '"GET /api/logged?x=1 HTTP/1.1" 200' in line
    assert '"pytest-agent"' in line
    assert "vhost=shop.example route=/api/ cluster=api endpoint=127.0.0.1:" in line
    assert "upstream_status=200" in line
    assert "duration=" in line


def test_metrics_endpoint(setup: Setup) -> None:
    import urllib.request

    for _ in range(3):
        setup.get("/api/m")
    setup.get("/", host="other.example")
    url = f"http://127.0.0.1:{setup.proxy.ports['admin']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    lines = text.splitlines()

    def value(prefix: str) -> float:
        found = [line for line in lines if line.startswith(prefix)]
        assert found, f"{prefix} not in metrics"
        return float(found[0].rsplit(" ", 1)[1])

    assert value('edgeproxy_requests_total{cluster="api",route="/api/",status_class="2xx",vhost="shop.example"}') >= 3
    assert value('edgeproxy_requests_total{cluster="-",route="-",status_class="4xx",vhost="-"}') >= 1
    assert value('edgeproxy_tls_handshakes_total{version="TLSv1.3"}') >= 4
    assert value(f'edgeproxy_endpoint_available{{cluster="api",endpoint="{setup.api1.address}"}}') == 1
    assert value('edgeproxy_certificate_expiry_timestamp_seconds{source=') > 1.7e9
    assert value('edgeproxy_request_duration_seconds_count{route="/api/",vhost="shop.example"}') >= 3
    assert value('edgeproxy_active_connections{listener="https"}') >= 0
    assert value("edgeproxy_config_generation") == 1
