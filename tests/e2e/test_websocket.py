"""
WebSocket through the real ``twistd edgeproxy``, over the plain and the TLS
listeners (both TLS layers), to a real WebSocket server (the ``websockets``
package's asyncio server, in a thread) with a real client
(``websockets.sync.client``): many messages echoed, 8 MiB messages both
ways (backpressure through the splice), a close from either side with its
code, a backend that dies mid-session, a route that refuses upgrades, a
cluster limit that counts an open tunnel, the tunnel idle timeout, and the
access log line and metrics of each.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import trustme
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.e2e.conftest import check_tls_layer, write_config
from tests.e2e.harness import ProxyProcess, raw_exchange

#: Short, so the idle test is quick; every other test keeps its tunnel busy.
IDLE_TIMEOUT = 3.0

CONFIG = """
from edgeproxy.config import Cluster, Limits, Route, VirtualHost

ws = Cluster("ws", endpoints=["{backend}"])
one = Cluster("one", endpoints=["{backend}"], limits=Limits(max_requests=1))
virtual_hosts = [
    VirtualHost(
        ["shop.example"],
        routes=[
            Route("/", ws, plain_http=True),
            Route("/nows/", ws, plain_http=True, websocket=False),
            Route("/one/", one, plain_http=True),
        ],
    )
]
"""


class WebSocketBackend:
    """A ``websockets`` asyncio server in a thread of its own.  By path:
    ``/echo`` echoes every message; ``/server-close`` closes with 4000 after
    the first message; ``/die`` drops the TCP connection (a reset) after the
    first message; anything else echoes too."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self.opened = 0
        self._ready = threading.Event()
        self._stop: asyncio.Future[None] | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> WebSocketBackend:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = self.loop.create_future()
        async with serve(self._handle, "127.0.0.1", 0, max_size=None) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop

    async def _handle(self, ws: ServerConnection) -> None:
        self.opened += 1
        path = ws.request.path if ws.request is not None else "/"
        try:
            async for message in ws:
                if path.endswith("/server-close"):
                    await ws.close(4000, "server says bye")
                    return
                if path.endswith("/die"):
                    sock = ws.transport.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    ws.transport.abort()
                    return
                await ws.send(message)
        except ConnectionClosed:
            pass

    def stop(self) -> None:
        stop = self._stop
        if stop is not None:
            self.loop.call_soon_threadsafe(stop.set_result, None)
        self._thread.join(10)


@pytest.fixture(scope="module")
def ws_backend() -> Iterator[WebSocketBackend]:
    backend = WebSocketBackend().start()
    try:
        yield backend
    finally:
        backend.stop()


@pytest.fixture(scope="module")
def ws_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def proxy(
    tmp_path_factory: pytest.TempPathFactory,
    ws_backend: WebSocketBackend,
    ws_ca: trustme.CA,
    tls_layer: tuple[str, ...],
) -> Iterator[ProxyProcess]:
    tmp = tmp_path_factory.mktemp("websocket")
    certs = tmp / "certs"
    certs.mkdir()
    ws_ca.issue_cert("shop.example").private_key_and_cert_chain_pem.write_to_path(
        str(certs / "shop.pem")
    )
    config = write_config(
        tmp / "site.py", CONFIG.format(backend=f"127.0.0.1:{ws_backend.port}")
    )
    process = ProxyProcess(
        tmp,
        config,
        certs,
        extra_args=[
            "--access-log", "-", "--access-log-format", "json",
            "--tunnel-idle-timeout", str(IDLE_TIMEOUT),
            *tls_layer,
        ],
    ).start()
    try:
        check_tls_layer(process, tls_layer)
        yield process
    finally:
        process.stop()


@pytest.fixture(params=["http", "https"])
def scheme(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def open_ws(
    proxy: ProxyProcess, ca: trustme.CA, scheme: str, path: str, **kwargs: Any
) -> ClientConnection:
    """A WebSocket to ``path`` on shop.example through the proxy's listener for ``scheme``."""
    port = proxy.ports[scheme]
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    options: dict[str, Any] = {"sock": sock, "max_size": None, "open_timeout": 30}
    if scheme == "https":
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        options.update(ssl=ctx, server_hostname="shop.example")
    uri = f"{'wss' if scheme == 'https' else 'ws'}://shop.example:{port}{path}"
    return connect(uri, **options, **kwargs)


def access_lines(proxy: ProxyProcess, path: str, count: int = 1) -> list[dict[str, Any]]:
    """The JSON access lines for ``path`` (waiting, bounded, for ``count``)."""
    deadline = time.monotonic() + 10
    while True:
        found = []
        for line in list(proxy.output):
            start = line.find("{")
            if start < 0 or '"status"' not in line:
                continue
            try:
                record = json.loads(line[start:])
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("path", "").startswith(path):
                found.append(record)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def status(proxy: ProxyProcess) -> dict[str, Any]:
    url = f"http://127.0.0.1:{proxy.ports['admin']}/status"
    with urllib.request.urlopen(url, timeout=5) as response:
        document: dict[str, Any] = json.loads(response.read())
    return document


def metrics(proxy: ProxyProcess) -> str:
    url = f"http://127.0.0.1:{proxy.ports['admin']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text: str = response.read().decode()
    return text


def test_many_messages_are_echoed(proxy: ProxyProcess, ws_ca: trustme.CA, scheme: str) -> None:
    path = f"/echo/many-{scheme}"
    with open_ws(proxy, ws_ca, scheme, path) as ws:
        for i in range(1000):
            ws.send(f"message {i}")
            assert ws.recv(timeout=10) == f"message {i}"
        # Pipelined: many in flight at once.
        for i in range(200):
            ws.send(b"%d" % i)
        assert [ws.recv(timeout=10) for _ in range(200)] == [b"%d" % i for i in range(200)]
    [line] = access_lines(proxy, path)
    assert (line["status"], line["upstream_status"], line["outcome"]) == (101, 101, "ok")
    if scheme == "https":
        assert (line["tls_version"], line["sni"]) == ("TLSv1.3", "shop.example")
    assert line["bytes"] > 2000  # (frames, compressed: permessage-deflate)


def test_large_messages_go_through_with_backpressure(
    proxy: ProxyProcess, ws_ca: trustme.CA, scheme: str
) -> None:
    big = os.urandom(8 * 1024 * 1024)
    # Uncompressed: 8 MiB on the wire each way, through both splices' backpressure.
    with open_ws(proxy, ws_ca, scheme, f"/echo/large-{scheme}", compression=None) as ws:
        for n in range(3):
            message = big[n:] + big[:n]
            ws.send(message)
            assert ws.recv(timeout=60) == message


def test_a_close_from_the_client_reaches_the_server(
    proxy: ProxyProcess, ws_ca: trustme.CA, scheme: str
) -> None:
    path = f"/echo/client-close-{scheme}"
    with open_ws(proxy, ws_ca, scheme, path) as ws:
        ws.send("hello")
        assert ws.recv(timeout=10) == "hello"
        ws.close(1000, "client done")
        # The server's answer to the closing handshake came back through the proxy.
        rcvd = ws.protocol.close_rcvd
        assert rcvd is not None and (rcvd.code, rcvd.reason) == (1000, "client done")
    [line] = access_lines(proxy, path)
    assert (line["status"], line["outcome"]) == (101, "ok")


def test_a_close_from_the_server_reaches_the_client(
    proxy: ProxyProcess, ws_ca: trustme.CA, scheme: str
) -> None:
    with (
        open_ws(proxy, ws_ca, scheme, f"/x/server-close-{scheme}/server-close") as ws,
        pytest.raises(ConnectionClosed) as closed,
    ):
        ws.send("bye?")
        ws.recv(timeout=10)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4000, "server says bye")


def test_a_backend_that_dies_mid_session_closes_the_client(
    proxy: ProxyProcess, ws_ca: trustme.CA, scheme: str
) -> None:
    path = f"/x/die-{scheme}/die"
    with open_ws(proxy, ws_ca, scheme, path) as ws:
        ws.send("die now")
        started = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert time.monotonic() - started < 5  # no hang
    assert closed.value.rcvd is None  # no close frame: the connection just went
    [line] = access_lines(proxy, path)
    assert (line["status"], line["outcome"], line["reason"]) == (
        101, "upstream_error", "truncated"
    )


def test_a_route_with_websocket_false_refuses_the_upgrade(
    proxy: ProxyProcess, ws_ca: trustme.CA, scheme: str
) -> None:
    with pytest.raises(InvalidStatus) as refused:
        open_ws(proxy, ws_ca, scheme, f"/nows/{scheme}")
    assert refused.value.response.status_code == 403
    [line] = access_lines(proxy, f"/nows/{scheme}")
    assert (line["status"], line["outcome"], line["reason"]) == (
        403, "rejected", "upgrade_refused"
    )


def test_an_open_tunnel_counts_against_the_cluster_limit(
    proxy: ProxyProcess, ws_ca: trustme.CA, scheme: str
) -> None:
    with open_ws(proxy, ws_ca, scheme, f"/one/{scheme}") as ws:
        ws.send("held")
        assert ws.recv(timeout=10) == "held"
        ctx = None
        if scheme == "https":
            ctx = ssl.create_default_context()
            ws_ca.configure_trust(ctx)
        answer = raw_exchange(
            proxy.ports[scheme],
            b"GET /one/plain HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
            ctx,
            "shop.example",
        )
        assert answer.startswith(b"HTTP/1.1 503 ")
        assert b"X-Edgeproxy-Limit: max_requests" in answer
        # /status shows it open, and the cluster's one place taken by it.
        document = status(proxy)
        assert document["connections"]["tunnels"]["open"] >= 1
        assert document["clusters"]["one"]["in_flight"] == 1
    # Once the tunnel is closed, the place is free again.
    deadline = time.monotonic() + 10
    while True:
        with open_ws(proxy, ws_ca, scheme, f"/one/{scheme}-again") as ws:
            ws.send("again")
            if ws.recv(timeout=10) == "again":
                break
        assert time.monotonic() < deadline


def test_an_idle_tunnel_is_closed(proxy: ProxyProcess, ws_ca: trustme.CA, scheme: str) -> None:
    path = f"/echo/idle-{scheme}"
    with open_ws(proxy, ws_ca, scheme, path, ping_interval=None) as ws:
        ws.send("one")
        assert ws.recv(timeout=10) == "one"
        started = time.monotonic()
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=IDLE_TIMEOUT + 10)
        assert IDLE_TIMEOUT - 0.5 < time.monotonic() - started < IDLE_TIMEOUT + 5
    [line] = access_lines(proxy, path)
    assert (line["status"], line["outcome"], line["reason"]) == (
        101, "client_timeout", "idle_timeout"
    )
    text = metrics(proxy)
    assert 'edgeproxy_tunnels_total{end="idle_timeout"}' in text
    assert "edgeproxy_tunnels_open 0.0" in text
    tunnels = status(proxy)["connections"]["tunnels"]
    assert tunnels["open"] == 0 and tunnels["closed"]["idle_timeout"] >= 1
