from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from tests.e2e.harness import BackendServer, ProxyProcess

#: The TLS layers the end-to-end TLS tests run on, as twistd arguments: edgeproxy's
#: fast paths, and the stock Twisted path everywhere.
TLS_LAYERS = {"fast-paths": (), "no-fast-paths": ("--no-fast-paths",)}
#: What the start-up line says for each.
TLS_LAYER_LINES = {
    "fast-paths": "tls=openssl-direct writethrough=on fastpoll=on",
    "no-fast-paths": "tls=twisted writethrough=off fastpoll=off (--no-fast-paths)",
}


@pytest.fixture(scope="module", params=list(TLS_LAYERS))
def tls_layer(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """The extra twistd arguments of one TLS layer: a test (or module fixture)
    that asks for it runs once on each."""
    return TLS_LAYERS[request.param]


def check_tls_layer(proxy: ProxyProcess, args: tuple[str, ...]) -> None:
    """``proxy`` runs on the TLS layer ``args`` asked for (its start-up line says so)."""
    name = next(name for name, given in TLS_LAYERS.items() if given == args)
    assert proxy.fast_paths() == TLS_LAYER_LINES[name]


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def backend() -> Iterator[BackendServer]:
    """One backend, "app", for a module's tests."""
    server = BackendServer("app").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def backends() -> Iterator[Callable[[str], BackendServer]]:
    started: list[BackendServer] = []

    def make(name: str, port: int = 0) -> BackendServer:
        server = BackendServer(name, port).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def certs_dir(tmp_path: Path, ca: trustme.CA) -> Path:
    """A certificate directory with shop.example (+ wildcard) and a default certificate."""
    directory = tmp_path / "certs"
    directory.mkdir()
    ca.issue_cert("shop.example", "*.shop.example").private_key_and_cert_chain_pem.write_to_path(
        str(directory / "shop.pem")
    )
    ca.issue_cert("default.test", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(directory / "default.pem")
    )
    return directory


@pytest.fixture
def proxies() -> Iterator[Callable[..., ProxyProcess]]:
    started: list[ProxyProcess] = []

    def make(workdir: Path, config: Path, certs: Path, *args: str, **kwargs: bool) -> ProxyProcess:
        proxy = ProxyProcess(workdir, config, certs, args, **kwargs)
        started.append(proxy)
        return proxy.start()

    yield make
    for proxy in started:
        proxy.stop()


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
