"""
Verified TLS to upstreams (``Cluster.upstream_tls``) through the real
``twistd edgeproxy``, to real TLS backends with their own CA made here:
a verified endpoint answers (no SNI for an IP literal, ``server_name`` sent
and verified); a wrong name, a wrong CA and a missing client certificate are
refused with 502 ``upstream_tls`` before any request reaches the backend, in
the access log and the metrics; mTLS works with ``client_cert``; later
connections resume the TLS session; an active health check over TLS takes an
endpoint whose certificate does not verify out; ``verify=False`` is loud.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.e2e.conftest import write_config
from tests.e2e.harness import ProxyProcess, request
from tests.e2e.tlsbackend import TLSBackend

CONFIG = """
from edgeproxy.config import Cluster, HealthCheck, Route, UpstreamTLS, VirtualHost

def tls(**kwargs):
    return UpstreamTLS(**kwargs)

clusters = {{
    "good": Cluster("good", endpoints=["{good}"], upstream_tls=tls(ca_file="pki/backend-ca.pem")),
    "named": Cluster(
        "named",
        endpoints=["{good}"],
        upstream_tls=tls(ca_file="pki/backend-ca.pem", server_name="backend.test"),
    ),
    "wrong-name": Cluster(
        "wrong-name",
        endpoints=["{good}"],
        upstream_tls=tls(ca_file="pki/backend-ca.pem", server_name="other.test"),
        retries=RETRIES,
    ),
    "wrong-ca": Cluster(
        "wrong-ca",
        endpoints=["{good}"],
        upstream_tls=tls(ca_file="pki/other-ca.pem"),
        retries=RETRIES,
    ),
    "mtls": Cluster(
        "mtls",
        endpoints=["{mtls}"],
        upstream_tls=tls(ca_file="pki/backend-ca.pem", client_cert="pki/client.pem"),
    ),
    "mtls-nocert": Cluster(
        "mtls-nocert",
        endpoints=["{mtls}"],
        upstream_tls=tls(ca_file="pki/backend-ca.pem"),
        retries=RETRIES,
    ),
    "resume": Cluster(
        "resume", endpoints=["{resume}"], upstream_tls=tls(ca_file="pki/backend-ca.pem")
    ),
    "resume12": Cluster(
        "resume12", endpoints=["{resume12}"], upstream_tls=tls(ca_file="pki/backend-ca.pem")
    ),
    "ejected": Cluster(
        "ejected",
        endpoints=["{impostor}"],
        upstream_tls=tls(ca_file="pki/backend-ca.pem"),
        retries=RETRIES,
    ),
    "checked": Cluster(
        "checked",
        endpoints=["{healthy}", "{impostor}"],
        upstream_tls=tls(ca_file="pki/backend-ca.pem"),
        health_check=HealthCheck("/health", interval=0.2, timeout=1.0, rise=1, fall=1),
    ),
    "stalled": Cluster(
        "stalled",
        endpoints=["{stalled}"],
        upstream_tls=tls(ca_file="pki/backend-ca.pem"),
        connect_timeout=0.5,
        retries=RETRIES,
    ),
    "insecure": Cluster(
        "insecure", endpoints=["{impostor}"], upstream_tls=tls(verify=False)
    ),
}}
virtual_hosts = [
    VirtualHost([name + ".test"], routes=[Route("/", cluster, plain_http=True)])
    for name, cluster in clusters.items()
]
"""

#: No retry: one attempt per request, so the counts below are exact.
RETRIES_SOURCE = "__import__('edgeproxy.config').config.RetryPolicy(attempts=1)"


def _server_context(ca: trustme.CA, *names: str, tls12: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(*names).configure_cert(ctx)
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


@pytest.fixture(scope="module")
def pki() -> dict[str, trustme.CA]:
    return {"backend": trustme.CA(), "other": trustme.CA(), "clients": trustme.CA()}


@pytest.fixture(scope="module")
def backends(pki: dict[str, trustme.CA]) -> Iterator[dict[str, TLSBackend]]:
    mtls_ctx = _server_context(pki["backend"], "backend.test", "127.0.0.1")
    mtls_ctx.verify_mode = ssl.CERT_REQUIRED
    pki["clients"].configure_trust(mtls_ctx)
    started = {
        "good": TLSBackend("good", _server_context(pki["backend"], "backend.test", "127.0.0.1")),
        "mtls": TLSBackend("mtls", mtls_ctx),
        "resume": TLSBackend(
            "resume", _server_context(pki["backend"], "backend.test", "127.0.0.1")
        ),
        # The checked cluster's good endpoint: its checks leave the others' counts alone.
        "healthy": TLSBackend(
            "healthy", _server_context(pki["backend"], "backend.test", "127.0.0.1")
        ),
        "resume12": TLSBackend(
            "resume12", _server_context(pki["backend"], "backend.test", "127.0.0.1", tls12=True)
        ),
        # A certificate for the right names from a CA nobody trusts.
        "impostor": TLSBackend(
            "impostor", _server_context(pki["other"], "backend.test", "127.0.0.1")
        ),
    }
    for backend in started.values():
        backend.start()
    try:
        yield started
    finally:
        for backend in started.values():
            backend.stop()


@pytest.fixture(scope="module")
def proxy(
    tmp_path_factory: pytest.TempPathFactory,
    pki: dict[str, trustme.CA],
    backends: dict[str, TLSBackend],
) -> Iterator[ProxyProcess]:
    tmp = tmp_path_factory.mktemp("upstream-tls")
    (tmp / "sites" / "pki").mkdir(parents=True)
    (tmp / "certs").mkdir()
    pki["backend"].cert_pem.write_to_path(str(tmp / "sites" / "pki" / "backend-ca.pem"))
    pki["other"].cert_pem.write_to_path(str(tmp / "sites" / "pki" / "other-ca.pem"))
    client = pki["clients"].issue_cert("edgeproxy@example.test", common_name="edgeproxy")
    client.private_key_and_cert_chain_pem.write_to_path(str(tmp / "sites" / "pki" / "client.pem"))
    # A port that takes the TCP connection (the kernel does) and never says a word of TLS.
    stalled = socket.socket()
    stalled.bind(("127.0.0.1", 0))
    stalled.listen(16)
    addresses = {name: b.address for name, b in backends.items()}
    addresses["stalled"] = f"127.0.0.1:{stalled.getsockname()[1]}"
    text = CONFIG.format(**addresses)
    text = text.replace("retries=RETRIES", f"retries={RETRIES_SOURCE}")
    # Relative paths: to the configuration file's directory, not twistd's.
    config = write_config(tmp / "sites" / "site.py", text)
    process = ProxyProcess(
        tmp, config, tmp / "certs", extra_args=["--access-log", "-", "--access-log-format", "json"]
    ).start()
    try:
        yield process
    finally:
        process.stop()
        stalled.close()


def _get(proxy: ProxyProcess, host: str, path: str = "/") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.ports["http"], timeout=10)
    try:
        response, body = request(conn, "GET", path, host)
        return response.status, body
    finally:
        conn.close()


def _admin(proxy: ProxyProcess, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.ports["admin"], timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().read()
    finally:
        conn.close()


def test_verified_endpoint_answers_without_sni_for_an_ip(
    proxy: ProxyProcess, backends: dict[str, TLSBackend]
) -> None:
    status, body = _get(proxy, "good.test", "/hello")
    assert (status, body) == (200, b"good /hello\n")
    last = backends["good"].handshakes[-1]
    assert last.ok
    assert last.server_name is None  # an IP literal is never sent as SNI


def test_server_name_is_sent_and_verified(
    proxy: ProxyProcess, backends: dict[str, TLSBackend]
) -> None:
    before = len(backends["good"].handshakes)
    status, body = _get(proxy, "named.test", "/named")
    assert (status, body) == (200, b"good /named\n")
    assert [h.server_name for h in backends["good"].handshakes[before:]] == ["backend.test"]


@pytest.mark.parametrize("host", ["wrong-name.test", "wrong-ca.test"])
def test_a_certificate_that_does_not_verify_gets_no_request(
    proxy: ProxyProcess, backends: dict[str, TLSBackend], host: str
) -> None:
    requests = backends["good"].requests
    start = len(proxy.output)
    status, body = _get(proxy, host, "/secret")
    assert status == 502
    assert backends["good"].requests == requests
    line = proxy.wait_for_output(r'"path":"/secret"', start=start)
    record = json.loads(line[line.index("{") :])
    assert record["reason"] == "upstream_tls"
    assert record["outcome"] == "upstream_error"
    assert record["cluster"] == host.removesuffix(".test")
    metrics = _admin(proxy, "/metrics").decode()
    assert 'edgeproxy_upstream_errors_total{reason="upstream_tls"}' in metrics


def test_a_handshake_that_never_ends_is_a_connect_timeout(proxy: ProxyProcess) -> None:
    """The handshake is part of connecting: ``connect_timeout`` covers it."""
    start = len(proxy.output)
    assert _get(proxy, "stalled.test", "/stalled")[0] == 504
    line = proxy.wait_for_output(r'"path":"/stalled"', start=start)
    assert json.loads(line[line.index("{") :])["reason"] == "connect_timeout"


def test_mtls_with_and_without_a_client_certificate(
    proxy: ProxyProcess, backends: dict[str, TLSBackend]
) -> None:
    status, body = _get(proxy, "mtls.test", "/m")
    assert (status, body) == (200, b"mtls /m\n")
    assert backends["mtls"].handshakes[-1].client_subject == "edgeproxy"
    requests = backends["mtls"].requests
    status, _ = _get(proxy, "mtls-nocert.test", "/m")
    assert status == 502
    assert backends["mtls"].requests == requests


@pytest.mark.parametrize("name", ["resume", "resume12"])
def test_new_connections_resume_the_session(
    proxy: ProxyProcess, backends: dict[str, TLSBackend], name: str
) -> None:
    """TLS 1.3 (tickets) and TLS 1.2 (the server's session cache) alike."""
    # The backend closes after each response: every request is a new connection.
    for n in range(4):
        assert _get(proxy, f"{name}.test", f"/close/{n}")[0] == 200
    handshakes = backends[name].handshakes
    assert len(handshakes) == 4
    assert [h.session_reused for h in handshakes] == [False, True, True, True]


def test_a_certificate_that_does_not_verify_is_a_connect_failure_that_ejects(
    proxy: ProxyProcess,
) -> None:
    """Outlier detection counts it as a failure to connect: five eject even
    the endpoint of a one-endpoint cluster."""
    for _ in range(5):
        assert _get(proxy, "ejected.test", "/e")[0] == 502
    [endpoint] = json.loads(_admin(proxy, "/status"))["clusters"]["ejected"]["endpoints"]
    assert endpoint["breaker"]["state"] == "open"
    assert endpoint["available"] is False
    assert _get(proxy, "ejected.test", "/e")[0] == 503


def test_health_checks_over_tls_take_an_unverified_endpoint_out(
    proxy: ProxyProcess, backends: dict[str, TLSBackend]
) -> None:
    deadline = time.monotonic() + 10
    while True:
        cluster = json.loads(_admin(proxy, "/status"))["clusters"]["checked"]
        states = {e["endpoint"]: e["health"] for e in cluster["endpoints"]}
        good = states[backends["healthy"].address]
        bad = states[backends["impostor"].address]
        if bad["state"] == "unhealthy" and good["last_check_at"] is not None:
            break
        assert time.monotonic() < deadline, states
        time.sleep(0.1)
    assert good["state"] == "healthy"
    assert bad["last_cause"].startswith("upstream tls")
    # Every request goes to the endpoint that verifies.
    for n in range(4):
        assert _get(proxy, "checked.test", f"/c{n}") == (200, f"healthy /c{n}\n".encode())


def test_verify_false_is_loud_and_accepts_any_certificate(
    proxy: ProxyProcess, backends: dict[str, TLSBackend]
) -> None:
    proxy.wait_for_output(r"cluster insecure: upstream_tls verify=False")
    assert _get(proxy, "insecure.test", "/i") == (200, b"impostor /i\n")


def test_a_reload_with_a_bad_file_keeps_the_running_configuration_and_a_good_one_applies(
    tmp_path: Path, pki: dict[str, trustme.CA], backends: dict[str, TLSBackend]
) -> None:
    site = (
        "from edgeproxy.config import Cluster, Route, UpstreamTLS, VirtualHost\n"
        "app = Cluster('app', endpoints=['{good}'], upstream_tls=UpstreamTLS(ca_file='{ca}'))\n"
        "virtual_hosts = [VirtualHost(['app.test'], routes=[Route('/', app, plain_http=True)])]\n"
    )
    pki["backend"].cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    config = write_config(
        tmp_path / "site.py", site.format(good=backends["good"].address, ca="ca.pem")
    )
    (tmp_path / "certs").mkdir()
    process = ProxyProcess(tmp_path, config, tmp_path / "certs").start()
    try:
        assert _get(process, "app.test", "/r")[0] == 200
        write_config(config, site.format(good=backends["good"].address, ca="missing.pem"))
        mark = len(process.output)
        assert process.process is not None
        process.process.send_signal(signal.SIGHUP)
        line = process.wait_for_output(r"reload rejected", start=mark)
        assert "missing.pem" in line and "cannot read" in line and "site.py:2" in line
        assert _get(process, "app.test", "/r")[0] == 200
        # A good reload to another CA: new connections are held to it (a new pool).
        pki["other"].cert_pem.write_to_path(str(tmp_path / "other.pem"))
        write_config(config, site.format(good=backends["good"].address, ca="other.pem"))
        mark = len(process.output)
        process.process.send_signal(signal.SIGHUP)
        process.wait_for_output(r"configuration reloaded", start=mark)
        assert _get(process, "app.test", "/r")[0] == 502
    finally:
        process.stop()


def test_check_warns_about_verify_false(tmp_path: Path) -> None:
    import subprocess
    import sys

    config = write_config(
        tmp_path / "site.py",
        "from edgeproxy.config import Cluster, Route, UpstreamTLS, VirtualHost\n"
        "app = Cluster('app', endpoints=['127.0.0.1:9'], upstream_tls=UpstreamTLS(verify=False))\n"
        "virtual_hosts = [VirtualHost(['a.test'], routes=[Route('/', app)])]\n",
    )
    twistd = str(Path(sys.executable).with_name("twistd"))
    result = subprocess.run(
        [twistd, "edgeproxy", "--config", str(config), "--certs", str(tmp_path), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "upstream_tls verify=False" in result.stdout + result.stderr
