"""
The shipped example, end to end: ``python examples/run.py`` in a subprocess,
on ephemeral ports (proxy listeners and demo backends) and a temporary
certificate directory, checked over real TLS against the generated dev
certificate.  Every wait is bounded.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "examples" / "run.py"
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0

_BANNER = re.compile(r"edgeproxy is up: try curl -k https://localhost:(\d+)/ ")
_LISTENER = re.compile(r"edgeproxy (https|http|admin) listener on [0-9.]+:(\d+)")
_BACKEND = re.compile(r"demo backend (\S+) listening on 127\.0\.0\.1:(\d+)")
_PID = re.compile(r"run\.py: started (the demo backends|\S+twistd\S*) .*\(pid (\d+)\)")


class Example:
    """``examples/run.py`` as a subprocess, its output collected by a thread."""

    def __init__(self, certs: Path) -> None:
        self.certs = certs
        self.output: list[str] = []
        self._lines = threading.Condition()
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(RUN),
                "--certs",
                str(certs),
                "--backend-ports",
                "0,0,0,0",
                "--https",
                "tcp:0:interface=127.0.0.1",
                "--http",
                "tcp:0:interface=127.0.0.1",
                "--admin",
                "tcp:0:interface=127.0.0.1",
            ],
            cwd=certs.parent,  # so nothing (twistd.pid, ./certs) lands in the repository
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._lines:
                self.output.append(line)
                self._lines.notify_all()
        with self._lines:
            self._lines.notify_all()

    @property
    def text(self) -> str:
        with self._lines:
            return "".join(self.output)

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        with self._lines:
            while True:
                for line in self.output:
                    match = pattern.search(line)
                    if match:
                        return match
                if self.process.poll() is not None:
                    # Let the pump catch up with the last lines first.
                    self._lines.wait(0.5)
                    if not any(pattern.search(line) for line in self.output):
                        raise AssertionError(
                            f"run.py exited ({self.process.returncode}) before printing "
                            f"{pattern.pattern!r}:\n" + "".join(self.output)
                        )
                    continue
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"no {pattern.pattern!r} within {timeout}s:\n" + "".join(self.output)
                    )
                self._lines.wait(0.1)

    def all(self, pattern: re.Pattern[str]) -> list[re.Match[str]]:
        with self._lines:
            return [m for line in self.output if (m := pattern.search(line))]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture
def example(tmp_path: Path) -> Iterator[Example]:
    running = Example(tmp_path / "certs")
    try:
        running.wait_for(_BANNER, STARTUP_TIMEOUT)
        yield running
    finally:
        running.stop()
        # If anything went wrong, make sure no child outlives the test.
        for match in running.all(_PID):
            _kill_quietly(int(match.group(2)))


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _dev_cert_context(certs: Path) -> ssl.SSLContext:
    """Trust exactly the self-signed certificate run.py generated."""
    pem = (certs / "default.pem").read_text()
    blocks = re.findall(
        r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", pem, flags=re.DOTALL
    )
    assert len(blocks) == 1, pem
    ctx = ssl.create_default_context(cadata=blocks[0])
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    return ctx


def _get(
    port: int, sni: str, path: str, ctx: ssl.SSLContext, conn: http.client.HTTPSConnection | None
) -> tuple[http.client.HTTPSConnection, int, dict[str, object]]:
    """GET ``path`` from the proxy on 127.0.0.1, with ``sni`` as SNI and Host."""
    if conn is None:
        conn = http.client.HTTPSConnection(sni, port, context=ctx, timeout=10)
        sock = socket.create_connection(("127.0.0.1", port), 10)
        conn.sock = ctx.wrap_socket(sock, server_hostname=sni)
    conn.request("GET", path, headers={"Host": f"{sni}:{port}"})
    response = conn.getresponse()
    body = response.read()
    assert response.getheader("Content-Type") == "application/json", body
    return conn, response.status, json.loads(body)


def _refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 2).close()
    except ConnectionRefusedError:
        return True
    return False


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_example_serves_https_and_cleans_up(example: Example, tmp_path: Path) -> None:
    https_port = int(example.wait_for(_BANNER, 1).group(1))
    listeners = {m.group(1): int(m.group(2)) for m in example.all(_LISTENER)}
    assert listeners["https"] == https_port
    backends = {m.group(1): int(m.group(2)) for m in example.all(_BACKEND)}
    assert set(backends) == {"api-1", "api-2", "web-v1", "web-v2"}
    pids = {m.group(1): int(m.group(2)) for m in example.all(_PID)}
    assert len(pids) == 2, example.text
    ctx = _dev_cert_context(example.certs)

    # "/" reaches a web backend, over TLS verified against the dev certificate
    # for "localhost", on one kept-alive connection.
    conn = None
    for _ in range(5):
        conn, status, answer = _get(https_port, "localhost", "/?q=1", ctx, conn)
        assert status == 200
        assert answer["backend"] in ("web-v1", "web-v2")
        assert answer["port"] == backends[str(answer["backend"])]
        assert answer["method"] == "GET"
        assert answer["path"] == "/?q=1"
        assert answer["host"] == f"localhost:{https_port}"
        assert answer["x-forwarded-proto"] == "https"
        assert answer["x-forwarded-for"] == "127.0.0.1"
        assert answer["x-forwarded-host"] == f"localhost:{https_port}"
    assert conn is not None
    conn.close()

    # "/api/" reaches the api cluster, path unchanged.
    conn = None
    for _ in range(6):
        conn, status, answer = _get(https_port, "localhost", "/api/hello", ctx, conn)
        assert status == 200
        assert answer["backend"] in ("api-1", "api-2")
        assert answer["port"] == backends[str(answer["backend"])]
        assert answer["path"] == "/api/hello"
    assert conn is not None
    conn.close()

    # SNI and Host shop.example (what curl --resolve does) work too, and so
    # does a one-label wildcard name.
    for name in ("shop.example", "www.shop.example"):
        conn, status, answer = _get(https_port, name, "/api/x", ctx, None)
        conn.close()
        assert status == 200 and answer["backend"] in ("api-1", "api-2"), answer
        assert answer["host"] == f"{name}:{https_port}"

    # "/static/" is cached: the second answer comes from the proxy's cache.
    conn, status, answer = _get(https_port, "localhost", "/static/logo.svg", ctx, None)
    assert status == 200 and answer["backend"] == "web-v1"
    statuses = []
    for _ in range(2):
        conn.request("GET", "/static/logo.svg", headers={"Host": f"localhost:{https_port}"})
        response = conn.getresponse()
        assert json.loads(response.read()) == answer
        statuses.append(response.getheader("Cache-Status") or "")
    conn.close()
    assert all(s.startswith("edgeproxy; hit; ttl=") for s in statuses), statuses

    # "/upload/" streams a chunked body to the api cluster as it arrives.
    upload = http.client.HTTPSConnection("127.0.0.1", https_port, context=ctx, timeout=30)
    upload.request(
        "PUT", "/upload/big", body=iter([b"x" * 65536] * 64),
        headers={"Host": f"localhost:{https_port}"}, encode_chunked=True,
    )
    response = upload.getresponse()
    answer = json.loads(response.read())
    upload.close()
    assert response.status == 200 and answer["backend"] in ("api-1", "api-2"), answer
    assert (answer["method"], answer["body-length"]) == ("PUT", 64 * 65536)

    # HTTP/2 (curl --http2 over the dev certificate), to the backend in HTTP/1.1.
    curl = subprocess.run(
        ["curl", "-sS", "--http2", "--cacert", str(example.certs / "default.pem"),
         "-w", "\n%{http_version}", f"https://localhost:{https_port}/api/h2"],
        capture_output=True, text=True, timeout=30, check=True,
    )
    body, _, version = curl.stdout.rpartition("\n")
    assert version == "2", curl.stdout
    assert json.loads(body)["path"] == "/api/h2"

    # Plain http redirects to https on the proxy's https port.
    plain = http.client.HTTPConnection("127.0.0.1", listeners["http"], timeout=10)
    plain.request("GET", "/api/hello?x=1", headers={"Host": "localhost"})
    response = plain.getresponse()
    response.read()
    plain.close()
    assert response.status == 308
    assert response.getheader("Location") == f"https://localhost:{https_port}/api/hello?x=1"

    # SIGTERM stops the proxy and the backends; nothing is left behind.
    example.process.send_signal(signal.SIGTERM)
    # Like twistd, run.py dies by the signal that stopped it, after cleaning up.
    assert example.process.wait(STOP_TIMEOUT) == -signal.SIGTERM, example.text
    for pid in pids.values():
        assert _gone(pid), (pid, example.text)
    for port in [*listeners.values(), *backends.values()]:
        assert _refuses(port), (port, example.text)
    assert "demo backends stopped" in example.text
    assert "Traceback" not in example.text, example.text
    assert not (tmp_path / "twistd.pid").exists()
    temp_config = re.search(r"run\.py: using (\S+), a copy", example.text)
    assert temp_config is not None, example.text
    assert not Path(temp_config.group(1)).exists()
