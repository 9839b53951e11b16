"""The direct OpenSSL path of edgeproxy.tls.server resolves every symbol it uses
at start-up, and one missing turns the whole path off: TLS then runs on
pyOpenSSL's public calls, with a warning naming what is missing.

In memory, as tests/tls/test_server.py: a Python ``ssl`` client on memory BIOs,
the TLS layer, a StringTransport.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import trustme
from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL
from twisted.logger import LogLevel, capturedLogs

from edgeproxy.tls import server as tlsserver
from edgeproxy.tls.certificates import SNIConnectionCreator
from tests.certutil import client_context, default_index, make_ca
from tests.tls.test_server import NAME, Pair

ALL_SYMBOLS = list(tlsserver.OPENSSL_SYMBOLS) + [f"ffi.{n}" for n in tlsserver.FFI_SYMBOLS]


class Without:
    """``target`` as a release without ``name`` would have it."""

    def __init__(self, target: Any, name: str) -> None:
        self._target = target
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        if attribute == self._name:
            raise AttributeError(attribute)
        return getattr(self._target, attribute)


@pytest.fixture(autouse=True)
def direct_off_afterwards() -> Iterator[None]:
    yield
    tlsserver.use_direct_openssl(False)


@pytest.fixture
def logged() -> Iterator[Sequence[dict[str, Any]]]:
    with capturedLogs() as events:
        yield events


def tls_log(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("log_namespace") == "edgeproxy.tlsserver"]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return make_ca()


@pytest.fixture(scope="module")
def creator(ca: trustme.CA) -> SNIConnectionCreator:
    index = default_index(ca, NAME)
    return SNIConnectionCreator(lambda: index)


def exchange(creator: SNIConnectionCreator, ca: trustme.CA) -> Pair:
    """A handshake and a request and response of 100 KiB each way."""
    pair = Pair(creator, client_context(ca))
    pair.handshake()
    request = b"POST / HTTP/1.1\r\n\r\n" + b"q" * 100_000
    pair.proto.dataReceived(pair.client_send(request))
    assert pair.app.received == request
    response = b"HTTP/1.1 200 OK\r\n\r\n" + b"r" * 100_000
    pair.proto.write(response)
    assert pair.client_read(len(response)) == response
    return pair


def uses_direct_calls(pair: Pair) -> bool:
    handles = (pair.proto._in_bio, pair.proto._out_bio, pair.proto._ssl)
    # One path or the other, never a mix.
    assert all(h is None for h in handles) or all(h is not None for h in handles), handles
    return pair.proto._ssl is not None


def test_every_name_the_direct_path_reads_is_in_the_tables() -> None:
    """The tables are the whole story: no ``_lib.X`` or ``_ffi.X`` outside them,
    and no pyOpenSSL internal read off a connection that is not checked."""
    tree = ast.parse(inspect.getsource(tlsserver))
    used: dict[str, set[str]] = {"_lib": set(), "_ffi": set(), "connection": set(), "c": set()}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id in used and not node.attr.startswith("__"):
                used[node.value.id].add(node.attr)
    assert used["_lib"] and used["_lib"] <= set(tlsserver.OPENSSL_SYMBOLS), used["_lib"]
    assert used["_ffi"] <= set(tlsserver.FFI_SYMBOLS), used["_ffi"]
    private = {name for name in used["connection"] | used["c"] if name.startswith("_")}
    assert private <= set(tlsserver.CONNECTION_METHODS + tlsserver.CONNECTION_ATTRIBUTES)


def test_everything_resolves_here_and_connections_call_openssl_directly(
    creator: SNIConnectionCreator, ca: trustme.CA, logged: Sequence[dict[str, Any]]
) -> None:
    assert tlsserver.use_direct_openssl() is None
    assert tlsserver.direct_openssl()
    assert uses_direct_calls(exchange(creator, ca))
    assert tls_log(logged) == []


def test_switched_off_connections_use_pyopenssl(
    creator: SNIConnectionCreator, ca: trustme.CA, logged: Sequence[dict[str, Any]]
) -> None:
    assert tlsserver.use_direct_openssl() is None
    assert tlsserver.use_direct_openssl(False) is None
    assert not tlsserver.direct_openssl()
    assert not uses_direct_calls(exchange(creator, ca))
    assert tls_log(logged) == []  # asked for, not a fallback


@pytest.mark.parametrize("missing", ALL_SYMBOLS)
def test_a_missing_symbol_turns_the_whole_direct_path_off(
    missing: str,
    creator: SNIConnectionCreator,
    ca: trustme.CA,
    monkeypatch: pytest.MonkeyPatch,
    logged: Sequence[dict[str, Any]],
) -> None:
    binding = Binding()
    lib: Any = binding.lib
    ffi: Any = binding.ffi
    if missing.startswith("ffi."):
        ffi = Without(ffi, missing.removeprefix("ffi."))
    else:
        lib = Without(lib, missing)
    monkeypatch.setattr(tlsserver, "_bindings", lambda: (lib, ffi))

    assert tlsserver.use_direct_openssl() == missing
    assert not tlsserver.direct_openssl()
    # TLS works, every call through pyOpenSSL.
    assert not uses_direct_calls(exchange(creator, ca))
    [event] = tls_log(logged)
    assert event["log_level"] is LogLevel.warn
    assert event["missing"] == missing
    assert "pyOpenSSL's public calls" in event["log_format"]


def test_a_cryptography_without_ssl_pending(
    creator: SNIConnectionCreator,
    ca: trustme.CA,
    monkeypatch: pytest.MonkeyPatch,
    logged: Sequence[dict[str, Any]],
) -> None:
    """The issue's example, for real: the binding itself lacks ``SSL_pending``
    (pyOpenSSL shares it; its calls TLS needs do not include it)."""
    lib = Binding().lib
    assert lib.SSL_pending is not None
    monkeypatch.delattr(lib, "SSL_pending")
    assert tlsserver.use_direct_openssl() == "SSL_pending"
    assert not uses_direct_calls(exchange(creator, ca))
    assert [e["missing"] for e in tls_log(logged)] == ["SSL_pending"]
    monkeypatch.undo()
    assert tlsserver.use_direct_openssl() is None


def test_a_failed_lookup_leaves_earlier_connections_working(
    creator: SNIConnectionCreator,
    ca: trustme.CA,
    monkeypatch: pytest.MonkeyPatch,
    logged: Sequence[dict[str, Any]],
) -> None:
    assert tlsserver.use_direct_openssl() is None
    earlier = exchange(creator, ca)
    assert uses_direct_calls(earlier)
    monkeypatch.setattr(
        tlsserver, "_bindings", lambda: (Without(Binding().lib, "BIO_read"), Binding().ffi)
    )
    assert tlsserver.use_direct_openssl() == "BIO_read"
    # The earlier connection still has every symbol it uses.
    earlier.proto.dataReceived(earlier.client_send(b"more"))
    assert earlier.app.received.endswith(b"more")
    earlier.proto.write(b"answer")
    assert earlier.client_read(6) == b"answer"
    assert not uses_direct_calls(exchange(creator, ca))


@pytest.mark.parametrize("name", tlsserver.CONNECTION_METHODS)
def test_a_missing_pyopenssl_method_turns_it_off(
    name: str, monkeypatch: pytest.MonkeyPatch, logged: Sequence[dict[str, Any]]
) -> None:
    monkeypatch.delattr(SSL.Connection, name)
    assert tlsserver.use_direct_openssl() == f"SSL.Connection.{name}"
    assert not tlsserver.direct_openssl()
    assert len(tls_log(logged)) == 1


@pytest.mark.parametrize("name", tlsserver.CONNECTION_ATTRIBUTES)
def test_a_missing_pyopenssl_connection_attribute_turns_it_off(
    name: str, monkeypatch: pytest.MonkeyPatch, logged: Sequence[dict[str, Any]]
) -> None:
    original = SSL.Connection.__init__

    def renamed(self: SSL.Connection, *args: Any) -> None:
        original(self, *args)
        setattr(self, "_renamed" + name, getattr(self, name))
        delattr(self, name)

    monkeypatch.setattr(SSL.Connection, "__init__", renamed)
    assert tlsserver.use_direct_openssl() == f"SSL.Connection().{name}"
    assert not tlsserver.direct_openssl()


def test_bindings_that_do_not_load(
    monkeypatch: pytest.MonkeyPatch, logged: Sequence[dict[str, Any]]
) -> None:
    def broken() -> tuple[Any, Any]:
        raise ImportError("no _openssl")

    monkeypatch.setattr(tlsserver, "_bindings", broken)
    assert tlsserver.use_direct_openssl() == "cryptography's OpenSSL bindings (no _openssl)"
    assert not tlsserver.direct_openssl()


def test_a_pyopenssl_that_cannot_build_the_probe_connection(
    monkeypatch: pytest.MonkeyPatch, logged: Sequence[dict[str, Any]]
) -> None:
    def refuse(method: int) -> SSL.Context:
        raise SSL.Error("no such method")

    monkeypatch.setattr(SSL, "Context", refuse)
    missing = tlsserver.use_direct_openssl()
    assert missing == "SSL.Connection() (no such method)"
    assert not tlsserver.direct_openssl()
