"""
The fast paths through the real ``twistd edgeproxy``: the start-up line that
names them, ``--no-fast-paths`` (Twisted's own TLS layer, write and event
dispatch) serving every feature the same, and the fallbacks when what a fast
path relies on is missing:

* a ``cryptography`` without ``SSL_pending`` (a ``sitecustomize`` removes it
  from the bindings before edgeproxy starts): TLS on pyOpenSSL's public calls;
* a Twisted shipped without source (its transport modules as ``.pyc`` only, in
  a copy of the package put first on the path): Twisted's own ``write``.

The TLS tests of test_tls.py, test_large_bodies.py and test_proxy_protocol.py
run on both TLS layers (the ``tls_layer`` fixture).
"""

from __future__ import annotations

import http.client
import json
import py_compile
import re
import shutil
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

import twisted
from tests.certutil import client_context
from tests.e2e.conftest import write_config
from tests.e2e.harness import BackendServer, ProxyProcess, https_connection, request

CONFIG = """
from edgeproxy.config import Cluster, Route, VirtualHost

app = Cluster("app", endpoints=["{app}"])
virtual_hosts = [VirtualHost(["shop.example"], routes=[Route("/", app)])]
"""

ON = "tls=openssl-direct writethrough=on fastpoll=on"

#: Run in the proxy's interpreter before anything imports edgeproxy: the
#: bindings as a cryptography release without SSL_pending would have them.
WITHOUT_SSL_PENDING = """
from cryptography.hazmat.bindings.openssl.binding import Binding

_lib = Binding().lib
_lib.SSL_pending
del _lib.SSL_pending
"""


@dataclass
class Env:
    tmp: Path
    config: Path
    certs: Path
    app: BackendServer
    ca: trustme.CA

    def start(self, *args: str, env: dict[str, str] | None = None) -> ProxyProcess:
        return ProxyProcess(self.tmp, self.config, self.certs, args, env=env).start()


@pytest.fixture
def env(
    tmp_path: Path, certs_dir: Path, ca: trustme.CA, backends: Callable[[str], BackendServer]
) -> Iterator[Env]:
    app = backends("app")
    yield Env(
        tmp_path,
        write_config(tmp_path / "site.py", CONFIG.format(app=app.address)),
        certs_dir,
        app,
        ca,
    )


def get(
    proxy: ProxyProcess, ca: trustme.CA, path: str = "/", **kwargs: object
) -> tuple[int, bytes]:
    conn = https_connection(proxy.ports["https"], "shop.example", client_context(ca))
    try:
        response, body = request(conn, "GET", path, "shop.example", **kwargs)  # type: ignore[arg-type]
        return response.status, body
    finally:
        conn.close()


def keep_alive_exchanges(proxy: ProxyProcess, ca: trustme.CA, count: int = 20) -> None:
    """``count`` requests on one connection, then 1 MiB each way."""
    conn = https_connection(proxy.ports["https"], "shop.example", client_context(ca))
    try:
        for i in range(count):
            response, body = request(conn, "GET", f"/n/{i}", "shop.example")
            assert response.status == 200 and json.loads(body)["path"] == f"/n/{i}"
        response, body = request(conn, "GET", f"/bytes/{1 << 20}", "shop.example")
        assert response.status == 200 and len(body) == 1 << 20
        response, body = request(conn, "POST", "/up", "shop.example", body=b"u" * (1 << 20))
        assert response.status == 200 and json.loads(body)["body_length"] == 1 << 20
    finally:
        conn.close()


def fast_path_lines(proxy: ProxyProcess) -> list[str]:
    return [line for line in list(proxy.output) if "fast paths: " in line]


def test_the_start_up_line_names_the_fast_paths(env: Env) -> None:
    proxy = env.start()
    try:
        assert proxy.fast_paths() == ON
        [line] = fast_path_lines(proxy)
        assert "[edgeproxy.fastpaths#info]" in line
        assert get(proxy, env.ca)[0] == 200
        # Said before the listeners open, once.
        text = "".join(proxy.output)
        assert text.index("fast paths: ") < text.index("edgeproxy https listener on")
    finally:
        proxy.stop()


def test_no_fast_paths_serves_every_feature_on_twisteds_path(env: Env) -> None:
    log = env.tmp / "access.jsonl"
    proxy = env.start("--no-fast-paths", "--access-log", str(log), "--access-log-format", "json")
    try:
        assert proxy.fast_paths() == ("tls=twisted writethrough=off fastpoll=off (--no-fast-paths)")
        # Handshake, ALPN, keep-alive, bodies both ways.
        for offered in (("h2", "http/1.1"), ("http/1.1",)):
            ctx = client_context(env.ca, alpn=offered)
            tls = ctx.wrap_socket(
                socket.create_connection(("127.0.0.1", proxy.ports["https"]), 5),
                server_hostname="shop.example",
            )
            assert tls.selected_alpn_protocol() == offered[0]
            tls.close()
        keep_alive_exchanges(proxy, env.ca)

        # The channel heard handshakeCompleted: the TLS version is counted and logged.
        url = f"http://127.0.0.1:{proxy.ports['admin']}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            metrics = answer.read().decode()
        [handshakes] = [
            line
            for line in metrics.splitlines()
            if line.startswith('edgeproxy_tls_handshakes_total{version="TLSv1.3"}')
        ]
        assert float(handshakes.rsplit(" ", 1)[1]) >= 2
        deadline = time.monotonic() + 5
        while not (log.exists() and log.read_text().count("\n") >= 22):
            assert time.monotonic() < deadline, "access lines missing"
            time.sleep(0.1)
        entry = json.loads(log.read_text().splitlines()[0])
        assert (entry["tls_version"], entry["sni"]) == ("TLSv1.3", "shop.example")

        # http -> https redirect.
        plain = http.client.HTTPConnection("127.0.0.1", proxy.ports["http"], timeout=5)
        response, _ = request(plain, "GET", "/r", "shop.example")
        plain.close()
        assert response.status == 308
        assert response.getheader("Location", "").startswith("https://shop.example")

        # SIGTERM drains: a request in flight over TLS still gets its answer.
        results: list[int] = []
        slow = threading.Thread(target=lambda: results.append(get(proxy, env.ca, "/slow/1.5")[0]))
        before = env.app.requests
        slow.start()
        deadline = time.monotonic() + 5
        while env.app.requests == before:
            assert time.monotonic() < deadline, "slow request never reached the backend"
            time.sleep(0.02)
        assert proxy.process is not None
        proxy.process.send_signal(signal.SIGTERM)
        slow.join(15)
        assert results == [200]
        assert proxy.process.wait(15) == -signal.SIGTERM
        assert "Traceback" not in "".join(proxy.output)
    finally:
        proxy.stop()


def test_workers_each_say_which_path_they_run(env: Env) -> None:
    proxy = env.start("--workers", "2", "--no-fast-paths")
    try:
        pattern = (
            r"\[edgeproxy\.fastpaths#info worker=(\d) pid=\d+\] fast paths: "
            r"tls=twisted writethrough=off fastpoll=off \(--no-fast-paths\)"
        )
        deadline = time.monotonic() + 15
        while (
            len({m.group(1) for line in fast_path_lines(proxy) if (m := re.search(pattern, line))})
            < 2
        ):
            assert time.monotonic() < deadline, "".join(proxy.output)
            time.sleep(0.1)
        assert [get(proxy, env.ca)[0] for _ in range(20)] == [200] * 20
    finally:
        proxy.stop()


def test_a_cryptography_without_ssl_pending_falls_back_to_pyopenssl(env: Env) -> None:
    site = env.tmp / "site-packages"
    site.mkdir()
    (site / "sitecustomize.py").write_text(WITHOUT_SSL_PENDING)
    proxy = env.start(env={"PYTHONPATH": str(site)})
    try:
        assert proxy.fast_paths() == (
            "tls=pyopenssl writethrough=on fastpoll=on "
            "(direct OpenSSL calls off: SSL_pending missing)"
        )
        warning = proxy.wait_for_output(r"\[edgeproxy\.tlsserver#warn\]")
        assert "direct OpenSSL calls off: SSL_pending is missing" in warning
        # Every request works (before: every one failed on the missing symbol).
        keep_alive_exchanges(proxy, env.ca)
        assert "Traceback" not in "".join(proxy.output)
    finally:
        proxy.stop()


def twisted_without_transport_source(into: Path) -> Path:
    """A copy of the installed Twisted (symlinks) whose ``internet/abstract``
    and ``internet/tcp`` are compiled ``.pyc`` files without their source,
    as a Twisted shipped without source has them; returns the directory to
    put first on the path."""
    source = Path(twisted.__file__).parent
    copy = into / "twisted"
    # dropin.cache is left out: Twisted may rewrite it, and must not through a link.
    shutil.copytree(
        source, copy, copy_function=_link, ignore=shutil.ignore_patterns("dropin.cache")
    )
    for name in ("abstract", "tcp"):
        (copy / "internet" / f"{name}.py").unlink()
        py_compile.compile(
            str(source / "internet" / f"{name}.py"),
            cfile=str(copy / "internet" / f"{name}.pyc"),
            # Where the source would be: a built .pyc names its own location.
            dfile=str(copy / "internet" / f"{name}.py"),
            doraise=True,
        )
    return into


def _link(source: str, destination: str) -> None:
    Path(destination).symlink_to(source)


def test_twisted_without_source_starts_on_twisteds_write(env: Env) -> None:
    path = twisted_without_transport_source(env.tmp / "sourceless")
    proxy = env.start(env={"PYTHONPATH": str(path)})
    try:
        assert proxy.fast_paths() == "tls=openssl-direct writethrough=off fastpoll=on"
        warning = proxy.wait_for_output(r"\[edgeproxy\.writethrough#warn\]")
        assert "cannot read Twisted's source" in warning
        keep_alive_exchanges(proxy, env.ca)
        plain = http.client.HTTPConnection("127.0.0.1", proxy.ports["http"], timeout=5)
        response, _ = request(plain, "GET", "/r", "shop.example")
        plain.close()
        assert response.status == 308
    finally:
        proxy.stop()
