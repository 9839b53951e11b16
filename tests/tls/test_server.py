"""Unit tests for edgeproxy.tls.server: the server-side TLS layer.

Everything runs in memory: a Python ``ssl`` client on memory BIOs, the
:class:`TLSServerProtocol` under test, a ``StringTransport`` below it and a
recording application protocol above it.  No sockets, no reactor, no sleeps.
"""

from __future__ import annotations

import gc
import ssl
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trustme
from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IHandshakeListener,
    IPushProducer,
    ISSLTransport,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from edgeproxy.tls import server as tlsserver
from edgeproxy.tls.certificates import CertificateIndex, SNIConnectionCreator
from edgeproxy.tls.server import TLSServerEndpoint, TLSServerFactory, TLSServerProtocol
from tests.certutil import client_context, default_index, make_ca

NAME = "shop.example"
TLS12 = ssl.TLSVersion.TLSv1_2
TLS13 = ssl.TLSVersion.TLSv1_3
VERSIONS = [(TLS12, "TLSv1.2"), (TLS13, "TLSv1.3")]


# --- fixtures -------------------------------------------------------------------------


@pytest.fixture(autouse=True, params=["bio-sizes", "exceptions"])
def bio_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test both ways: with OpenSSL called directly and the BIO sizes
    read (the normal path), and with pyOpenSSL's public calls only (empty BIOs
    found by reads that raise WantReadError), the fallback when a symbol of the
    direct path is missing."""
    if request.param == "exceptions":
        tlsserver.use_direct_openssl(False)
    else:
        assert tlsserver.use_direct_openssl() is None, "the direct path is not available"
    yield str(request.param)
    tlsserver.use_direct_openssl(False)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return make_ca()


@pytest.fixture(scope="module")
def index(ca: trustme.CA) -> CertificateIndex:
    # The default certificate: also served to clients without SNI.
    return default_index(ca, NAME)


@pytest.fixture
def creator(index: CertificateIndex) -> SNIConnectionCreator:
    return SNIConnectionCreator(lambda: index)


@pytest.fixture(scope="module")
def contexts(ca: trustme.CA) -> dict[Any, ssl.SSLContext]:
    """Client contexts, built once: pinned to TLS 1.2, 1.3, or either (None)."""
    return {v: client_context(ca, version=v) for v in (None, TLS12, TLS13)}


# --- helpers --------------------------------------------------------------------------


@implementer(IHandshakeListener)
class RecordingApp(Protocol):
    """The application protocol above the TLS layer: records what reaches it."""

    def __init__(
        self,
        on_made: Callable[[Any], None] | None = None,
        on_handshake: Callable[[Any], None] | None = None,
    ) -> None:
        self.events: list[str] = []
        self.chunks: list[bytes] = []
        self.handshakes = 0
        self.reasons: list[Failure] = []
        self.version_at_handshake: str | None = None
        self.alpn_at_handshake: bytes | None = None
        self._on_made = on_made
        self._on_handshake = on_handshake

    def makeConnection(self, transport: Any) -> None:
        self.events.append("makeConnection")
        Protocol.makeConnection(self, transport)

    def connectionMade(self) -> None:
        if self._on_made is not None:
            self._on_made(self.transport)

    def handshakeCompleted(self) -> None:
        self.handshakes += 1
        self.events.append("handshakeCompleted")
        transport: Any = self.transport
        self.version_at_handshake = transport.getHandle().get_protocol_version_name()
        self.alpn_at_handshake = transport.negotiatedProtocol
        if self._on_handshake is not None:
            self._on_handshake(transport)

    def dataReceived(self, data: bytes) -> None:
        self.events.append("dataReceived")
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.events.append("connectionLost")
        self.reasons.append(reason)

    @property
    def received(self) -> bytes:
        return b"".join(self.chunks)


class RecordingTransport(StringTransport):
    """A StringTransport that also counts writes, closes and aborts."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.write_sizes: list[int] = []
        self.lose_calls = 0
        self.abort_calls = 0

    def write(self, data: bytes) -> None:
        self.write_sizes.append(len(data))
        super().write(data)

    def writeSequence(self, data: Any) -> None:
        raise AssertionError("TLSServerProtocol should write() one joined buffer")

    def loseConnection(self) -> None:
        self.lose_calls += 1
        super().loseConnection()

    def abortConnection(self) -> None:
        self.abort_calls += 1
        super().abortConnection()


class Pair:
    """A Python ``ssl`` client wired to a TLSServerProtocol through memory BIOs."""

    def __init__(
        self,
        creator: Any,
        ctx: ssl.SSLContext,
        *,
        server_name: str | None = NAME,
        session: ssl.SSLSession | None = None,
        app: RecordingApp | None = None,
        transport: RecordingTransport | None = None,
        proto: TLSServerProtocol | None = None,
    ) -> None:
        """``proto``: a TLSServerProtocol already built (with its app); else one
        is built from ``creator`` and ``app``."""
        if proto is None:
            proto = TLSServerProtocol(creator, app if app is not None else RecordingApp())
        assert isinstance(proto.app, RecordingApp)
        self.app = proto.app
        self.proto = proto
        self.transport = transport if transport is not None else RecordingTransport()
        self.proto.makeConnection(self.transport)
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.client = ctx.wrap_bio(
            self.incoming, self.outgoing, server_hostname=server_name, session=session
        )

    def to_server(self) -> bytes:
        """Client's pending bytes -> one proto.dataReceived call."""
        data = self.outgoing.read()
        if data:
            self.proto.dataReceived(data)
        return data

    def to_client(self) -> bytes:
        """Everything the server wrote below -> the client's incoming BIO."""
        data = self.transport.value()
        self.transport.clear()
        if data:
            self.incoming.write(data)
        return data

    def try_handshake(self) -> ssl.SSLError | None:
        """Pump until nothing moves; the client's handshake error, if any."""
        client_done = False
        error: ssl.SSLError | None = None
        for _ in range(20):
            if not client_done and error is None:
                try:
                    self.client.do_handshake()
                    client_done = True
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError as e:
                    error = e
            moved = bool(self.to_server())
            moved = bool(self.to_client()) or moved
            if not moved and (client_done or error is not None):
                break
        return error

    def handshake(self) -> None:
        error = self.try_handshake()
        assert error is None, error
        assert self.app.handshakes == 1

    def client_send(self, *messages: bytes) -> bytes:
        """Client writes each message (one record each); returns the TLS bytes, unsent."""
        for message in messages:
            self.client.write(message)
        return self.outgoing.read()

    def client_read(self, n: int) -> bytes:
        """Deliver what the server wrote, then read exactly ``n`` plaintext bytes."""
        self.to_client()
        out = bytearray()
        while len(out) < n:
            out += self.client.read(n - len(out))
        return bytes(out)

    def client_pending(self) -> bytes:
        """All plaintext the client can read now (b"" if none)."""
        self.to_client()
        out = bytearray()
        while True:
            try:
                chunk = self.client.read(65536)
            except ssl.SSLWantReadError:
                return bytes(out)
            if not chunk:
                return bytes(out)
            out += chunk

    def client_reads_close_notify(self) -> bool:
        """Deliver what the server wrote; True if it ends with the server's close_notify."""
        self.to_client()
        try:
            while True:
                if self.client.read(65536) == b"":
                    return True
        except ssl.SSLZeroReturnError:
            return True
        except ssl.SSLWantReadError:
            return False

    def lose(self, reason: Failure | None = None) -> None:
        self.proto.connectionLost(reason if reason is not None else Failure(ConnectionDone()))


def is_alert_or_nothing(data: bytes) -> bool:
    """Nothing, or TLS alert records only (content type 21)."""
    while data:
        if len(data) < 5 or data[0] != 21:
            return False
        data = data[5 + int.from_bytes(data[3:5], "big"):]
    return True


# --- 1. handshake -----------------------------------------------------------------------


@pytest.mark.parametrize(("version", "name"), VERSIONS)
def test_handshake(creator, contexts, version, name) -> None:
    pair = Pair(creator, contexts[version])
    # makeConnection reaches the app at once, before any byte from the client.
    assert pair.app.events == ["makeConnection"]
    assert pair.app.transport is pair.proto
    assert pair.proto.negotiatedProtocol is None

    # ClientHello: the server answers, but the handshake is not complete yet.
    with pytest.raises(ssl.SSLWantReadError):
        pair.client.do_handshake()
    pair.to_server()
    assert pair.transport.value()
    assert pair.app.handshakes == 0

    pair.handshake()
    assert pair.app.events == ["makeConnection", "handshakeCompleted"]
    assert pair.app.handshakes == 1
    assert pair.client.version() == name
    assert pair.app.version_at_handshake == name
    handle = pair.proto.getHandle()
    assert isinstance(handle, SSL.Connection)
    assert handle.get_protocol_version_name() == name
    assert pair.proto.negotiatedProtocol == b"http/1.1"
    assert pair.app.alpn_at_handshake == b"http/1.1"
    assert pair.client.selected_alpn_protocol() == "http/1.1"
    assert pair.proto.getPeerCertificate() is None  # no client certificate asked for

    # More traffic does not repeat handshakeCompleted.
    pair.proto.dataReceived(pair.client_send(b"ping"))
    pair.proto.write(b"pong")
    assert pair.client_read(4) == b"pong"
    assert pair.app.handshakes == 1


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        (("http/1.1", "h2"), b"h2"),
        (("http/1.1",), b"http/1.1"),
        (("spdy/3",), None),
        (None, None),
    ],
)
def test_alpn(creator, ca, offered, expected) -> None:
    pair = Pair(creator, client_context(ca, alpn=offered))
    pair.handshake()
    assert pair.proto.negotiatedProtocol == expected


def test_handshake_without_sni_gets_default(creator, ca) -> None:
    pair = Pair(creator, client_context(), server_name=None)
    pair.handshake()
    handle = pair.proto.getHandle()
    assert handle is not None and handle.get_servername() is None


def test_finished_and_request_in_one_read(creator, contexts) -> None:
    """TLS 1.3: the client's Finished and its first request arrive together."""
    pair = Pair(creator, contexts[TLS13])
    for _ in range(5):
        try:
            pair.client.do_handshake()
            break
        except ssl.SSLWantReadError:
            pair.to_server()
            pair.to_client()
    assert pair.app.handshakes == 0
    request = b"GET / HTTP/1.1\r\nHost: shop.example\r\n\r\n"
    pair.proto.dataReceived(pair.client_send(request))
    assert pair.app.events == ["makeConnection", "handshakeCompleted", "dataReceived"]
    assert pair.app.received == request


def test_verifies_interfaces(creator, contexts) -> None:
    pair = Pair(creator, contexts[None])
    assert verifyObject(ISSLTransport, pair.proto)
    assert verifyObject(IPushProducer, pair.proto)


# --- 2. application data ------------------------------------------------------------


@pytest.mark.parametrize(("version", "name"), VERSIONS)
def test_data_both_ways(creator, contexts, version, name) -> None:
    pair = Pair(creator, contexts[version])
    pair.handshake()

    # Several records in one dataReceived call.
    messages = [b"GET /a HTTP/1.1\r\n", b"Host: shop.example\r\n", b"\r\n"]
    wire = pair.client_send(*messages)
    pair.proto.dataReceived(wire)
    assert pair.app.received == b"".join(messages)

    # One record split across two calls: nothing until it is whole.
    pair.app.chunks.clear()
    record = pair.client_send(b"x" * 5000)
    pair.proto.dataReceived(record[:100])
    assert pair.app.chunks == []
    pair.proto.dataReceived(record[100:])
    assert pair.app.received == b"x" * 5000

    # Byte by byte.
    pair.app.chunks.clear()
    for i, byte in enumerate(pair.client_send(b"slow")):
        pair.proto.dataReceived(bytes([byte]))
        if i == 0:
            assert pair.app.chunks == []
    assert pair.app.received == b"slow"

    # Server -> client: write and writeSequence.
    pair.proto.write(b"HTTP/1.1 200 OK\r\n")
    pair.proto.writeSequence([b"Content-Length: 2\r\n", b"\r\n", b"ok"])
    expected = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    assert pair.client_read(len(expected)) == expected
    assert pair.client_pending() == b""


def test_empty_write_writes_nothing(creator, contexts) -> None:
    pair = Pair(creator, contexts[None])
    pair.handshake()
    before = len(pair.transport.write_sizes)
    pair.proto.write(b"")
    pair.proto.writeSequence([])
    assert len(pair.transport.write_sizes) == before
    assert pair.transport.value() == b""


# --- 3. one transport write per application write -----------------------------------


@pytest.mark.parametrize(("version", "name"), VERSIONS)
def test_large_write_is_one_transport_write(creator, contexts, version, name) -> None:
    pair = Pair(creator, contexts[version])
    pair.handshake()
    pair.transport.write_sizes.clear()
    body = bytes(range(256)) * 4096  # 1 MiB, not all one byte value
    pair.proto.write(body)
    assert len(pair.transport.write_sizes) == 1
    assert pair.transport.write_sizes[0] > len(body)
    assert pair.client_read(len(body)) == body
    assert pair.client_pending() == b""


def test_openssl_takes_a_large_write_in_one_call(creator, contexts) -> None:
    # pyOpenSSL's default SSL_MODE_ENABLE_PARTIAL_WRITE would stop each
    # SSL_write after one 16 KiB record: one Python round trip per record.
    pair = Pair(creator, contexts[TLS13])
    pair.handshake()
    handle = pair.proto.getHandle()
    assert handle is not None
    assert handle.send(b"z" * 300_000) == 300_000


@pytest.mark.parametrize("size", [1, 100, 16383, 16384, 16385, 65536, 300_000])
def test_each_write_is_one_transport_write(creator, contexts, size) -> None:
    pair = Pair(creator, contexts[TLS12])
    pair.handshake()
    pair.transport.write_sizes.clear()
    for i in range(3):
        chunk = bytes([65 + i]) * size
        pair.proto.write(chunk)
        assert len(pair.transport.write_sizes) == i + 1
        assert pair.client_read(size) == chunk
    pair.proto.writeSequence([b"a" * size, b"b" * size])
    assert len(pair.transport.write_sizes) == 4
    assert pair.client_read(2 * size) == b"a" * size + b"b" * size


# --- 4. writes before the handshake ---------------------------------------------------


@pytest.mark.parametrize(("version", "name"), VERSIONS)
def test_early_writes_are_held_until_handshake(creator, contexts, version, name) -> None:
    app = RecordingApp(on_made=lambda t: t.write(b"first,"))
    pair = Pair(creator, contexts[version], app=app)
    assert pair.transport.value() == b""  # nothing can be sent before the handshake
    pair.proto.writeSequence([b"second,", b"third,"])
    with pytest.raises(ssl.SSLWantReadError):
        pair.client.do_handshake()
    pair.to_server()  # ClientHello
    pair.proto.write(b"fourth")
    pair.handshake()
    expected = b"first,second,third,fourth"
    assert pair.client_read(len(expected)) == expected
    # Later writes follow them.
    pair.proto.write(b"!")
    assert pair.client_read(1) == b"!"


def test_write_in_handshake_completed_follows_early_writes(creator, contexts) -> None:
    app = RecordingApp(
        on_made=lambda t: t.write(b"first,"), on_handshake=lambda t: t.write(b"late")
    )
    pair = Pair(creator, contexts[TLS13], app=app)
    pair.handshake()
    assert pair.client_pending() == b"first,late"


def _write_and_close(transport: Any) -> None:
    transport.write(b"503 bye")
    transport.loseConnection()


@pytest.mark.parametrize("where", ["connectionMade", "handshakeCompleted"])
def test_lose_connection_keeps_held_writes(creator, contexts, where) -> None:
    """ITransport.loseConnection: close after writing all pending data, even
    data held for the handshake."""
    if where == "connectionMade":
        app = RecordingApp(on_made=_write_and_close)
    else:
        app = RecordingApp(
            on_made=lambda t: t.write(b"503 "), on_handshake=lambda t: t.loseConnection()
        )
    pair = Pair(creator, contexts[TLS13], app=app)
    pair.try_handshake()
    expected = b"503 bye" if where == "connectionMade" else b"503 "
    assert pair.client_pending() == expected
    assert pair.transport.disconnecting


# --- 5. loseConnection -------------------------------------------------------------


@pytest.mark.parametrize(("version", "name"), VERSIONS)
def test_lose_connection_sends_close_notify(creator, contexts, version, name) -> None:
    pair = Pair(creator, contexts[version])
    pair.handshake()
    pair.proto.write(b"last words")
    pair.proto.loseConnection()
    assert pair.transport.disconnecting
    assert pair.transport.lose_calls == 1
    assert pair.proto.disconnecting
    # The data comes first, then close_notify.
    assert pair.client_read(10) == b"last words"
    assert pair.client_reads_close_notify()

    # Later writes are dropped; a second loseConnection does nothing more.
    writes = len(pair.transport.write_sizes)
    pair.proto.write(b"too late")
    pair.proto.writeSequence([b"too", b"late"])
    pair.proto.loseConnection()
    assert len(pair.transport.write_sizes) == writes
    assert pair.transport.value() == b""
    assert pair.transport.lose_calls == 1

    # The client's close_notify reply (or anything else) is ignored now.
    pair.client.write(b"ignored")
    pair.to_server()
    assert pair.app.chunks == []
    assert pair.transport.value() == b""

    pair.lose()
    assert pair.app.handshakes == 1
    assert len(pair.app.reasons) == 1
    assert pair.app.reasons[0].check(ConnectionDone)


def test_lose_connection_mid_handshake(creator, contexts) -> None:
    pair = Pair(creator, contexts[None])
    with pytest.raises(ssl.SSLWantReadError):
        pair.client.do_handshake()
    pair.to_server()
    pair.transport.clear()
    pair.proto.loseConnection()
    assert pair.transport.disconnecting
    assert pair.transport.value() == b""  # nothing to shut down yet
    pair.proto.write(b"dropped")
    pair.try_handshake()
    assert pair.app.handshakes == 0
    pair.lose()
    assert pair.app.reasons[0].check(ConnectionDone)


# --- 6. the client's close_notify --------------------------------------------------


@pytest.mark.parametrize(("version", "name"), VERSIONS)
def test_client_close_notify_is_answered(creator, contexts, version, name) -> None:
    pair = Pair(creator, contexts[version])
    pair.handshake()
    # Data then close_notify, in one read: the data still reaches the app.
    pair.client.write(b"bye")
    with pytest.raises(ssl.SSLWantReadError):
        pair.client.unwrap()
    pair.to_server()
    assert pair.app.received == b"bye"
    assert pair.transport.disconnecting
    assert pair.transport.lose_calls == 1
    # The server answered with its close_notify: the client's unwrap completes.
    pair.to_client()
    pair.client.unwrap()
    # Nothing reaches the app after that.
    pair.proto.dataReceived(b"\x17\x03\x03\x00\x05hello")
    assert pair.app.received == b"bye"
    assert pair.app.reasons == []

    reason = Failure(ConnectionDone())
    pair.lose(reason)
    assert pair.app.reasons == [reason]
    assert pair.app.events[-1] == "connectionLost"


# --- 7. handshake failures -----------------------------------------------------------


def _assert_failed_handshake(pair: Pair, written: bytes) -> None:
    assert is_alert_or_nothing(written), written[:40]
    assert pair.transport.disconnecting
    assert pair.app.handshakes == 0
    assert "handshakeCompleted" not in pair.app.events
    assert pair.app.reasons == []
    pair.lose(Failure(ConnectionDone()))
    assert len(pair.app.reasons) == 1
    assert pair.app.reasons[0].check(SSL.Error), pair.app.reasons[0]
    assert not pair.app.reasons[0].check(ConnectionDone)


def test_garbage_fails_handshake(creator, contexts) -> None:
    pair = Pair(creator, contexts[None])
    pair.proto.dataReceived(b"GET / HTTP/1.1\r\nHost: shop.example\r\n\r\n")
    written = pair.transport.value()
    _assert_failed_handshake(pair, written)


def test_garbage_after_failure_is_ignored(creator, contexts) -> None:
    pair = Pair(creator, contexts[None])
    pair.proto.dataReceived(b"\x16\x03\x01\x00\x05hello")  # a malformed ClientHello
    written = pair.transport.value()
    assert is_alert_or_nothing(written)
    assert written, "a malformed ClientHello gets an alert"
    pair.transport.clear()
    pair.proto.dataReceived(b"more garbage")
    assert pair.transport.value() == b""
    _assert_failed_handshake(pair, b"")


def test_no_shared_cipher_fails_handshake(creator, ca) -> None:
    ctx = client_context(ca, version=TLS12)
    ctx.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")  # the server's key is ECDSA
    pair = Pair(creator, ctx)
    with pytest.raises(ssl.SSLWantReadError):
        pair.client.do_handshake()
    pair.to_server()
    written = pair.transport.value()
    assert written, "the server sends a handshake_failure alert"
    _assert_failed_handshake(pair, written)
    pair.to_client()
    with pytest.raises(ssl.SSLError):
        pair.client.do_handshake()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_refused_version_fails_handshake(creator, ca) -> None:
    pair = Pair(creator, client_context(ca, version=ssl.TLSVersion.TLSv1_1))
    error = pair.try_handshake()
    assert error is not None and "VERSION" in str(error).upper(), error
    _assert_failed_handshake(pair, b"")


def test_corrupt_record_after_handshake(creator, contexts) -> None:
    pair = Pair(creator, contexts[None])
    pair.handshake()
    wire = bytearray(pair.client_send(b"secret"))
    wire[-1] ^= 0xFF  # break the AEAD tag
    pair.transport.clear()
    pair.proto.dataReceived(bytes(wire))
    assert pair.app.chunks == []
    assert pair.transport.disconnecting
    # The server's alert (encrypted under TLS 1.3) reaches the client.
    assert pair.transport.value()
    pair.to_client()
    with pytest.raises(ssl.SSLError, match="BAD_RECORD_MAC"):
        pair.client.read(100)
    pair.proto.write(b"dropped")
    pair.lose(Failure(ConnectionDone()))
    assert pair.app.reasons[0].check(SSL.Error)


# --- 8. TCP closed mid-handshake ----------------------------------------------------


def test_tcp_closed_mid_handshake(creator, contexts) -> None:
    pair = Pair(creator, contexts[None])
    with pytest.raises(ssl.SSLWantReadError):
        pair.client.do_handshake()
    pair.to_server()
    assert pair.transport.value()  # the server's flight went out
    reason = Failure(ConnectionLost())
    pair.lose(reason)
    assert pair.app.handshakes == 0
    assert pair.app.reasons == [reason]
    assert not reason.check(SSL.Error)
    assert pair.proto.getHandle() is None


def test_tcp_closed_before_any_byte(creator, contexts) -> None:
    pair = Pair(creator, contexts[None])
    reason = Failure(ConnectionDone())
    pair.lose(reason)
    assert pair.app.reasons == [reason]
    assert pair.app.events == ["makeConnection", "connectionLost"]


# --- 9. after connectionLost ------------------------------------------------------


def test_after_connection_lost(creator, contexts) -> None:
    pair = Pair(creator, contexts[None])
    pair.handshake()
    pair.lose()
    assert pair.proto.getHandle() is None
    assert pair.proto.app is None
    assert pair.proto.transport is None
    assert pair.proto.negotiatedProtocol is None
    assert pair.proto.getPeerCertificate() is None
    pair.transport.clear()
    writes = len(pair.transport.write_sizes)
    pair.proto.write(b"ignored")
    pair.proto.writeSequence([b"ignored"])
    pair.proto.loseConnection()
    pair.proto.dataReceived(pair.client_send(b"ignored"))
    pair.proto.unregisterProducer()
    pair.proto.pauseProducing()
    pair.proto.resumeProducing()
    pair.proto.stopProducing()
    pair.proto.abortConnection()
    assert len(pair.transport.write_sizes) == writes
    assert pair.transport.value() == b""
    assert pair.transport.lose_calls == 0
    assert pair.transport.abort_calls == 0
    assert len(pair.app.reasons) == 1  # connectionLost reached the app once


def _lifecycle_ok(creator: Any, ctx: ssl.SSLContext) -> tuple[weakref.ref[Any], ...]:
    pair = Pair(creator, ctx)
    pair.handshake()
    pair.proto.dataReceived(pair.client_send(b"GET / HTTP/1.1\r\n\r\n"))
    pair.proto.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    pair.client_pending()
    pair.proto.loseConnection()
    refs = weakref.ref(pair.app), weakref.ref(pair.proto), weakref.ref(pair.proto.getHandle())
    pair.lose()
    return refs


def _lifecycle_failed(creator: Any, ctx: ssl.SSLContext) -> tuple[weakref.ref[Any], ...]:
    pair = Pair(creator, ctx)
    pair.proto.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
    refs = weakref.ref(pair.app), weakref.ref(pair.proto), weakref.ref(pair.proto.getHandle())
    pair.lose()
    assert pair.app.reasons[0].check(SSL.Error)
    return refs


def _lifecycle_mid_handshake(creator: Any, ctx: ssl.SSLContext) -> tuple[weakref.ref[Any], ...]:
    pair = Pair(creator, ctx)
    with pytest.raises(ssl.SSLWantReadError):
        pair.client.do_handshake()
    pair.proto.write(b"held")
    pair.to_server()
    refs = weakref.ref(pair.app), weakref.ref(pair.proto), weakref.ref(pair.proto.getHandle())
    pair.lose()
    return refs


def _lifecycle_client_close(creator: Any, ctx: ssl.SSLContext) -> tuple[weakref.ref[Any], ...]:
    pair = Pair(creator, ctx)
    pair.handshake()
    with pytest.raises(ssl.SSLWantReadError):
        pair.client.unwrap()
    pair.to_server()
    refs = weakref.ref(pair.app), weakref.ref(pair.proto), weakref.ref(pair.proto.getHandle())
    pair.lose()
    return refs


@pytest.mark.parametrize(
    "lifecycle",
    [_lifecycle_ok, _lifecycle_failed, _lifecycle_mid_handshake, _lifecycle_client_close],
    ids=["ok", "failed", "mid-handshake", "client-close"],
)
def test_freed_by_reference_counting(creator, contexts, lifecycle) -> None:
    ctx = contexts[None]
    lifecycle(creator, ctx)  # warm up: caches, lazily built objects
    gc.disable()
    try:
        refs = lifecycle(creator, ctx)
        alive = [name for name, ref in zip(["app", "proto", "connection"], refs, strict=True)
                 if ref() is not None]
        assert alive == []
    finally:
        gc.enable()


# --- 10. producers and the transport below -------------------------------------------


def test_producer_calls_reach_the_transport(creator, contexts) -> None:
    host = IPv4Address("TCP", "10.1.2.3", 443)
    peer = IPv4Address("TCP", "192.0.2.7", 50000)
    transport = RecordingTransport(hostAddress=host, peerAddress=peer)
    pair = Pair(creator, contexts[None], transport=transport)
    assert pair.proto.getHost() is host
    assert pair.proto.getPeer() is peer

    producer = object()
    pair.proto.registerProducer(producer, True)
    assert transport.producer is producer
    assert transport.streaming is True
    pair.proto.unregisterProducer()
    assert transport.producer is None
    pair.proto.registerProducer(producer, False)
    assert transport.producer is producer
    assert transport.streaming is False

    pair.proto.pauseProducing()
    assert transport.producerState == "paused"
    pair.proto.resumeProducing()
    assert transport.producerState == "producing"
    pair.proto.stopProducing()
    assert transport.producerState == "stopped"

    pair.proto.abortConnection()
    assert transport.abort_calls == 1
    # Aborted: nothing more is written.
    pair.proto.write(b"x")
    assert transport.value() == b""


def test_abort_after_handshake(creator, contexts) -> None:
    pair = Pair(creator, contexts[None])
    pair.handshake()
    pair.transport.clear()
    pair.proto.abortConnection()
    assert pair.transport.abort_calls == 1
    assert pair.transport.value() == b""  # no close_notify on abort
    pair.proto.write(b"x")
    assert pair.transport.value() == b""


# --- 11. factory and endpoint ------------------------------------------------------


class RecordingFactory(Factory):
    def __init__(self, build: bool = True) -> None:
        self.build = build
        self.calls: list[str] = []
        self.built: list[tuple[Any, RecordingApp]] = []

    def doStart(self) -> None:
        self.calls.append("doStart")

    def doStop(self) -> None:
        self.calls.append("doStop")

    def buildProtocol(self, addr: Any) -> RecordingApp | None:  # type: ignore[override]
        if not self.build:
            return None
        app = RecordingApp()
        self.built.append((addr, app))
        return app


def test_factory_wraps_protocols(creator, contexts) -> None:
    wrapped = RecordingFactory()
    factory = TLSServerFactory(creator, wrapped)
    addr = IPv4Address("TCP", "192.0.2.7", 50000)
    proto = factory.buildProtocol(addr)
    assert isinstance(proto, TLSServerProtocol)
    assert len(wrapped.built) == 1
    built_addr, app = wrapped.built[0]
    assert built_addr is addr
    assert proto.app is app
    assert "(TLS)" in factory.logPrefix()

    # The built protocol works, with the factory's creator.
    pair = Pair(None, contexts[None], proto=proto)
    pair.handshake()
    assert app.transport is proto
    assert app.handshakes == 1

    factory.doStart()
    factory.doStop()
    assert wrapped.calls == ["doStart", "doStop"]


def test_factory_passes_none_on(creator) -> None:
    factory = TLSServerFactory(creator, RecordingFactory(build=False))
    assert factory.buildProtocol(IPv4Address("TCP", "192.0.2.7", 50000)) is None


@implementer(IStreamServerEndpoint)
class RecordingEndpoint:
    def __init__(self) -> None:
        self.factories: list[Any] = []

    def listen(self, protocolFactory: Any) -> defer.Deferred[str]:
        self.factories.append(protocolFactory)
        return defer.succeed("the port")


def test_endpoint_listens_with_tls_factory(creator) -> None:
    wrapped_endpoint = RecordingEndpoint()
    endpoint = TLSServerEndpoint(creator, wrapped_endpoint)
    assert verifyObject(IStreamServerEndpoint, endpoint)
    app_factory = RecordingFactory()
    results: list[Any] = []
    endpoint.listen(app_factory).addCallback(results.append)
    assert results == ["the port"]
    assert len(wrapped_endpoint.factories) == 1
    tls_factory = wrapped_endpoint.factories[0]
    assert isinstance(tls_factory, TLSServerFactory)
    assert tls_factory.wrapped is app_factory
    assert tls_factory.creator is creator


# --- 12. session resumption ------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "name", "tickets"),
    [(TLS12, "TLSv1.2", True), (TLS12, "TLSv1.2", False), (TLS13, "TLSv1.3", True)],
    ids=["tls12-ticket", "tls12-session-id", "tls13-ticket"],
)
def test_session_resumption(creator, ca, version, name, tickets) -> None:
    ctx = client_context(ca, version=version)
    if not tickets:
        ctx.options |= ssl.OP_NO_TICKET
    session = None
    for attempt in range(3):
        pair = Pair(creator, ctx, session=session)
        pair.handshake()
        assert pair.client.version() == name
        assert pair.client.session_reused == (attempt > 0)
        # Application data after the handshake (TLS 1.3: brings the tickets along).
        pair.proto.write(b"hello")
        assert pair.client_read(5) == b"hello"
        session = pair.client.session
        assert session is not None
        pair.proto.loseConnection()
        assert pair.client_reads_close_notify()
        pair.lose()
