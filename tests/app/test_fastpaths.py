"""edgeproxy.app.fastpaths: which fast paths a process runs, the TLS layer the https
listeners get, and the start-up line."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from cryptography.hazmat.bindings.openssl.binding import Binding
from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from edgeproxy.app import fastpaths
from edgeproxy.app.fastpaths import FastPaths
from edgeproxy.app.tap import Options
from edgeproxy.config.settings import Settings
from edgeproxy.net import writethrough
from edgeproxy.tls import server as tlsserver
from edgeproxy.tls.certificates import CertificateIndex, SNIConnectionCreator
from tests.tls.test_server_symbols import Without


@implementer(IStreamServerEndpoint)
class RecordingEndpoint:
    def __init__(self) -> None:
        self.factories: list[Any] = []

    def listen(self, protocolFactory: Any) -> Any:
        self.factories.append(protocolFactory)
        return succeed(None)


@pytest.fixture(autouse=True)
def restore() -> Iterator[None]:
    was_installed = writethrough.installed()
    yield
    tlsserver.use_direct_openssl(False)
    if not was_installed:
        writethrough.uninstall()


@pytest.fixture
def creator() -> SNIConnectionCreator:
    return SNIConnectionCreator(CertificateIndex.empty)


def start_up_line(events: Sequence[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    [event] = [e for e in events if e.get("log_namespace") == "edgeproxy.fastpaths"]
    assert event["log_level"] is LogLevel.info
    return formatEvent(event), event


def listening_factory(paths: FastPaths, creator: SNIConnectionCreator) -> tuple[Any, Factory]:
    app = Factory.forProtocol(Protocol)
    wrapped = RecordingEndpoint()
    paths.tls_endpoint(creator, wrapped).listen(app)
    [factory] = wrapped.factories
    return factory, app


def test_by_default_everything_is_on(creator: SNIConnectionCreator) -> None:
    paths = FastPaths()
    assert paths.tls == fastpaths.TLS_OPENSSL_DIRECT
    assert tlsserver.direct_openssl()
    factory, app = listening_factory(paths, creator)
    assert isinstance(factory, tlsserver.TLSServerFactory) and factory.wrapped is app
    with capturedLogs() as events:
        paths.install(MemoryReactor())
    text, event = start_up_line(events)
    # Not an epoll reactor: the lean dispatch stays off by itself.
    assert text == "fast paths: tls=openssl-direct writethrough=on fastpoll=off"
    assert (event["tls"], event["writethrough"], event["fastpoll"]) == (
        "openssl-direct",
        "on",
        "off",
    )
    assert event["reasons"] == []
    assert writethrough.installed()


def test_no_fast_paths_is_twisted_everywhere(creator: SNIConnectionCreator) -> None:
    writethrough.uninstall()
    paths = FastPaths(enabled=False)
    assert paths.tls == fastpaths.TLS_TWISTED
    factory, app = listening_factory(paths, creator)
    # Twisted's own TLS layer, with edgeproxy's SNI connection creator.
    assert isinstance(factory, TLSMemoryBIOFactory)
    assert factory.wrappedFactory is app
    # A connection starts on the creator's bootstrap context (SNI picks the certificate).
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4000))
    protocol.makeConnection(StringTransport())
    assert protocol.getHandle().get_context() is creator._context
    protocol.connectionLost(Failure(ConnectionDone()))
    with capturedLogs() as events:
        paths.install(MemoryReactor())
    text, event = start_up_line(events)
    assert text == "fast paths: tls=twisted writethrough=off fastpoll=off (--no-fast-paths)"
    assert event["reasons"] == ["--no-fast-paths"]
    assert not writethrough.installed()


def test_a_missing_symbol_is_named_in_the_start_up_line(
    creator: SNIConnectionCreator, monkeypatch: pytest.MonkeyPatch
) -> None:
    binding = Binding()
    monkeypatch.setattr(
        tlsserver, "_bindings", lambda: (Without(binding.lib, "SSL_pending"), binding.ffi)
    )
    paths = FastPaths()
    assert paths.tls == fastpaths.TLS_PYOPENSSL
    assert paths.missing == "SSL_pending"
    factory, _ = listening_factory(paths, creator)
    assert isinstance(factory, tlsserver.TLSServerFactory)  # edgeproxy's layer, public calls
    with capturedLogs() as events:
        paths.install(MemoryReactor())
    text, _ = start_up_line(events)
    assert text == (
        "fast paths: tls=pyopenssl writethrough=on fastpoll=off "
        "(direct OpenSSL calls off: SSL_pending missing)"
    )


def test_the_option() -> None:
    options = Options()
    options.parseOptions([])
    assert options["settings"].fast_paths is True
    options = Options()
    options.parseOptions(["--no-fast-paths"])
    assert options["settings"].fast_paths is False
    assert Settings().fast_paths is True
