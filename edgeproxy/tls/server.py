"""
The TLS server layer under every https connection: pyOpenSSL on memory BIOs,
between the TCP transport and the HTTP channel.

Why not ``twisted.protocols.tls`` (which this replaces on the proxy's https
listeners only; health checks and the admin listener are unchanged): profiled
under ``openssl s_time`` and wrk, Twisted's layer cost more Python than the
handshake's own cryptography.

* Per connection it copies the TCP transport's interfaces onto itself with one
  ``directlyProvides`` per interface (10 calls, each rebuilding a declaration),
  registers itself in a ``WrappingFactory`` dict and builds a
  ``BufferingTLSTransport``.
* Per read it ends every drain of the send BIO with a ``WantReadError``.
* Per write it holds small writes for a ``callLater`` (``BufferingTLSTransport``),
  and cuts what OpenSSL produced into 32 KiB socket writes (a 1 MiB body: 32
  sends instead of 8).
* Its producer membrane and pull-to-push adapter wrap every registered producer.

This layer does what the HTTP channel needs, with pyOpenSSL's connection
objects (on its hot path it calls OpenSSL on them directly, see below):

* **Writes** go to OpenSSL at once and everything it produced goes to the
  transport in one write.  No TLS-level buffering, so the transport's own
  buffer and backpressure are the whole story: producers are registered
  straight with the transport.
* **Reads**: everything decrypted is passed on, record by record.
* **Closing**: ``loseConnection`` sends ``close_notify`` and closes the socket
  once its buffer is sent; it does not wait for the client's ``close_notify``
  (RFC 8446 6.1 does not require it; nginx does the same).  A client's
  ``close_notify`` is answered and the connection closed.
* **Errors**: a failed handshake sends OpenSSL's alert, closes, and reaches the
  application as the ``SSL.Error`` failure (before ``handshakeCompleted``).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLServerConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    ISSLTransport,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

#: Decrypted bytes taken from OpenSSL per call (a TLS record is at most 16 KiB).
RECV_SIZE = 65536

log = Logger(namespace="edgeproxy.tlsserver")

# The direct path.  pyOpenSSL has no public call for how many bytes wait in
# a memory BIO (BIO_get_mem_data with no pointer), and without it the only way
# to find a BIO empty is a read that raises WantReadError: twice per request
# (after the last record is decrypted, and when draining output), ~4 us each.
# With the connection's BIOs and SSL object in hand (pyOpenSSL's
# ``Connection._into_ssl``/``_from_ssl``/``_ssl``, unchanged for a decade), the
# calls of the hot path (SSL_read, SSL_write, BIO_write, BIO_read) also go to
# OpenSSL directly, the way pyOpenSSL makes them but without its per-call
# checks and copies into fresh buffers; errors are still raised by pyOpenSSL
# (``_raise_ssl_error``).
#
# Every name the direct path uses is in the tables below and is looked up once,
# by use_direct_openssl() at start-up.  One missing (a cryptography release
# that drops a binding, a pyOpenSSL that renames an attribute) turns the whole
# direct path off: every connection then uses pyOpenSSL's public calls, never a
# mix, and no request can fail on a lookup.

#: cryptography's OpenSSL bindings: the functions and constants called.
OPENSSL_SYMBOLS = (
    "BIO_get_mem_data",
    "BIO_read",
    "BIO_write",
    "SSL_read",
    "SSL_write",
    "SSL_get_error",
    "SSL_pending",
    "SSL_ERROR_WANT_READ",
)
#: The bindings' cffi FFI.
FFI_SYMBOLS = ("NULL", "buffer", "from_buffer", "new_allocator")
#: pyOpenSSL's ``SSL.Connection``: a method, then what every connection has.
CONNECTION_METHODS = ("_raise_ssl_error",)
CONNECTION_ATTRIBUTES = ("_into_ssl", "_from_ssl", "_ssl")

# Set by use_direct_openssl(): the resolved symbols in namespaces holding
# exactly the tables' names (``_lib.SSL_read``; modules, as cryptography's
# ``lib`` is, so attribute reads cost the same), and shorthands for the hottest.
_direct = False
_lib: Any = None
_ffi: Any = None
_mem_pending: Any = None
_NULL: Any = None
_WANT_READ: int = 0
_no_zero_alloc: Any = None
#: Decrypted records are copied out at once, so one buffer serves every connection.
_RECV_BUFFER: Any = None


_MISSING = object()


def _bindings() -> tuple[Any, Any]:
    """cryptography's OpenSSL ``lib`` and ``ffi``."""
    from cryptography.hazmat.bindings.openssl.binding import Binding

    binding = Binding()
    return binding.lib, binding.ffi


def _resolve() -> tuple[dict[str, Any], dict[str, Any]]:
    """Every symbol of the tables: (lib's, ffi's).  Raises ``LookupError(name)``
    with the first one missing."""
    try:
        lib, ffi = _bindings()
    except Exception as e:  # ImportError, or a Binding that fails to load
        raise LookupError(f"cryptography's OpenSSL bindings ({e})") from None
    resolved: list[dict[str, Any]] = []
    for source, names, prefix in ((lib, OPENSSL_SYMBOLS, ""), (ffi, FFI_SYMBOLS, "ffi.")):
        table = {}
        for name in names:
            value = getattr(source, name, _MISSING)
            if value is _MISSING:
                raise LookupError(prefix + name)
            table[name] = value
        resolved.append(table)
    for name in CONNECTION_METHODS:
        if not callable(getattr(SSL.Connection, name, None)):
            raise LookupError(f"SSL.Connection.{name}")
    try:
        probe = SSL.Connection(SSL.Context(SSL.TLS_SERVER_METHOD), None)
    except Exception as e:
        raise LookupError(f"SSL.Connection() ({e})") from None
    for name in CONNECTION_ATTRIBUTES:
        if getattr(probe, name, _MISSING) is _MISSING:
            raise LookupError(f"SSL.Connection().{name}")
    return resolved[0], resolved[1]


def use_direct_openssl(enabled: bool = True) -> str | None:
    """Turn the direct OpenSSL calls on (every symbol resolved first) or off,
    for the connections made from now on.  Returns None if they are on,
    otherwise the name that is missing (``"SSL_pending"``), after logging a
    warning; with ``enabled=False``, returns None and they are off."""
    global _direct, _lib, _ffi, _mem_pending, _NULL, _WANT_READ, _no_zero_alloc, _RECV_BUFFER
    _direct = False
    if not enabled:
        return None
    try:
        lib, ffi = _resolve()
    except LookupError as e:
        missing = str(e.args[0])
        log.warn(
            "direct OpenSSL calls off: {missing} is missing; TLS uses pyOpenSSL's public calls",
            missing=missing,
        )
        return missing
    # Only ever replaced by a complete set: a failed lookup above leaves what
    # an earlier one set for the connections made since.
    _lib = ModuleType("edgeproxy.tlsserver.openssl")
    _lib.__dict__.update(lib)
    _ffi = ModuleType("edgeproxy.tlsserver.ffi")
    _ffi.__dict__.update(ffi)
    _mem_pending = lib["BIO_get_mem_data"]
    _NULL = ffi["NULL"]
    _WANT_READ = lib["SSL_ERROR_WANT_READ"]
    _no_zero_alloc = ffi["new_allocator"](should_clear_after_alloc=False)
    _RECV_BUFFER = _no_zero_alloc("char[]", RECV_SIZE)
    _direct = True
    return None


def direct_openssl() -> bool:
    """Whether connections made now use the direct OpenSSL calls."""
    return _direct


def _handles(connection: SSL.Connection) -> tuple[Any, Any, Any]:
    """The connection's (incoming BIO, outgoing BIO, SSL), or three Nones."""
    if not _direct:
        return None, None, None
    c: Any = connection
    return c._into_ssl, c._from_ssl, c._ssl


def _encrypted_size(plaintext: int) -> int:
    """Room for ``plaintext`` once encrypted: records of 16 KiB with at most 29
    bytes of framing each (TLS 1.2 AES-GCM; 1.3 is 22), plus spare room for a
    session ticket or alert OpenSSL may have queued meanwhile."""
    return plaintext + (plaintext >> 9) + 4096


@implementer(ISSLTransport, IPushProducer)
class TLSServerProtocol(Protocol):
    """One server-side TLS connection: the transport's protocol and ``app``'s transport."""

    _handshake_done = False
    _tls_closed = False
    disconnecting = False

    def __init__(self, creator: IOpenSSLServerConnectionCreator, app: IProtocol) -> None:
        self.app: IProtocol | None = app
        self._creator = creator
        self._connection: SSL.Connection | None = None
        self._reason: Failure | None = None
        self._early_writes: list[bytes] = []
        self._tells_handshake = IHandshakeListener.providedBy(app)
        # The connection's memory BIOs and SSL object while it is alive (see
        # use_direct_openssl); None: pyOpenSSL's own calls are used.
        self._in_bio: Any = None
        self._out_bio: Any = None
        self._ssl: Any = None

    # -- under: the TCP transport ----------------------------------------------------

    def makeConnection(self, transport: Any) -> None:
        connection = self._creator.serverConnectionForTLS(self)  # type: ignore[arg-type]
        connection.set_accept_state()
        # Twisted's SNI callback aborts through the app data if selection raises.
        connection.set_app_data(self)
        self._connection = connection
        self._in_bio, self._out_bio, self._ssl = _handles(connection)
        Protocol.makeConnection(self, transport)
        app = self.app
        assert app is not None
        app.makeConnection(self)

    def dataReceived(self, data: bytes) -> None:
        connection = self._connection
        if connection is None or self._tls_closed:
            return
        in_bio = self._in_bio
        if in_bio is not None:
            # A memory BIO takes everything.
            _lib.BIO_write(in_bio, _ffi.from_buffer(data), len(data))
        else:
            connection.bio_write(data)
        if not self._handshake_done:
            try:
                connection.do_handshake()
            except SSL.WantReadError:
                self._flush()
                return
            except SSL.Error as e:
                self._failed(e)
                return
            self._handshake_done = True
            # The server's last flight (TLS 1.3: its session tickets).
            self._flush()
            # What the application wrote meanwhile goes first, then whatever
            # it writes when told the handshake is done.
            early, self._early_writes = self._early_writes, []
            for chunk in early:
                self._send(chunk)
            app: Any = self.app
            if self._tells_handshake and app is not None:
                app.handshakeCompleted()
            if self.disconnecting and not self._tls_closed:
                # loseConnection() was called while writes were held.
                self._tls_closed = True
                self._close_tls()
                return
        self._deliver(connection)

    def _deliver(self, connection: SSL.Connection) -> None:
        """Pass on every record decrypted so far."""
        ssl = self._ssl
        while not self._tls_closed and self.app is not None:
            try:
                if ssl is not None:
                    n = _lib.SSL_read(ssl, _RECV_BUFFER, RECV_SIZE)
                    if n > 0:
                        plaintext = _ffi.buffer(_RECV_BUFFER, n)[:]
                    elif _lib.SSL_get_error(ssl, n) == _WANT_READ:
                        break
                    else:
                        # ZeroReturnError, or the error, as pyOpenSSL raises it.
                        connection._raise_ssl_error(ssl, n)
                        break
                else:
                    plaintext = connection.recv(RECV_SIZE)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                # The client's close_notify: answer it and close.
                self._tls_closed = True
                self._close_tls()
                return
            except SSL.Error as e:
                self._failed(e)
                return
            self.app.dataReceived(plaintext)
            in_bio = self._in_bio
            if (
                in_bio is not None
                and not _mem_pending(in_bio, _NULL)
                and not _lib.SSL_pending(self._ssl)
            ):
                break  # nothing left to decrypt: spare the read that would raise
        # Reading may have produced output: an alert refusing renegotiation,
        # a KeyUpdate answer.  (Usually nothing: the BIO says so without a call.)
        if not self._tls_closed:
            out_bio = self._out_bio
            if out_bio is None or _mem_pending(out_bio, _NULL):
                self._flush()

    def _flush(self, expected: int = 0) -> None:
        """Send whatever OpenSSL has produced, in one transport write."""
        connection = self._connection
        transport = self.transport
        if connection is None or transport is None:
            return
        out_bio = self._out_bio
        if out_bio is not None:
            pending = _mem_pending(out_bio, _NULL)
            if pending > 0:
                buffer = _no_zero_alloc("char[]", pending)
                n = _lib.BIO_read(out_bio, buffer, pending)
                transport.write(_ffi.buffer(buffer, n)[:])
            return
        size = _encrypted_size(expected)
        try:
            data = connection.bio_read(size)
        except SSL.WantReadError:
            return
        if len(data) == size:
            chunks = [data]
            while True:
                try:
                    chunks.append(connection.bio_read(size))
                except SSL.WantReadError:
                    break
            data = b"".join(chunks)
        transport.write(data)

    def _failed(self, error: SSL.Error) -> None:
        """A handshake or record error: send OpenSSL's alert, then close."""
        self._tls_closed = True
        if self._reason is None:
            # No traceback: its frames would hold this protocol in a cycle.
            self._reason = Failure(error.with_traceback(None))
        self._flush()
        if self.transport is not None:
            self.transport.loseConnection()

    def _close_tls(self) -> None:
        connection = self._connection
        if connection is not None:
            try:
                connection.shutdown()
            except SSL.Error:
                pass  # mid-handshake: nothing to say
            self._flush()
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = 0
        self._tls_closed = True
        reason = self._reason or reason
        self._reason = None
        app, self.app = self.app, None
        connection, self._connection = self._connection, None
        # The BIOs and SSL object are freed with the connection: never touch them after.
        self._in_bio = self._out_bio = self._ssl = None
        if connection is not None:
            connection.set_app_data(None)
        self._early_writes = []
        if app is not None:
            app.connectionLost(reason)
        self.transport = None

    # -- above: the application's transport ------------------------------------------

    def write(self, data: bytes) -> None:
        if self.disconnecting or self._tls_closed or not data or self._connection is None:
            return
        if not self._handshake_done:
            self._early_writes.append(data)
            return
        self._send(data)

    def _send(self, data: bytes) -> None:
        connection = self._connection
        assert connection is not None
        total = len(data)
        ssl = self._ssl
        try:
            if ssl is not None:
                # Not SSL_MODE_ENABLE_PARTIAL_WRITE (see certificates.py): all or an error.
                n = _lib.SSL_write(ssl, _ffi.from_buffer(data), total)
                if n <= 0:
                    connection._raise_ssl_error(ssl, n)
                    raise SSL.Error("SSL_write failed")
                self._flush(total)
                return
            sent = connection.send(data)
            if sent < total:  # not with memory BIOs, but send() may say so
                view = memoryview(data)[sent:]
                while view:
                    view = view[connection.send(view):]
        except SSL.Error as e:
            self._failed(e)
            return
        self._flush(total)

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        if self.disconnecting or self.transport is None:
            return
        self.disconnecting = True
        if self._tls_closed:
            self.transport.loseConnection()
            return
        if not self._handshake_done:
            if self._early_writes:
                return  # they go once the handshake is done, then the close
            # Nothing to shut down cleanly yet.
            self._tls_closed = True
            self.transport.loseConnection()
            return
        self._tls_closed = True
        self._close_tls()

    def abortConnection(self) -> None:
        self._tls_closed = True
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def getPeer(self) -> Any:
        return self.transport.getPeer()  # type: ignore[union-attr]

    def getHost(self) -> Any:
        return self.transport.getHost()  # type: ignore[union-attr]

    def getHandle(self) -> SSL.Connection | None:
        """The pyOpenSSL connection (None once closed), for the TLS version and SNI name."""
        return self._connection

    def getPeerCertificate(self) -> Any:
        connection = self._connection
        return connection.get_peer_certificate() if connection is not None else None

    @property
    def negotiatedProtocol(self) -> bytes | None:
        connection = self._connection
        if connection is None or not self._handshake_done:
            return None
        return connection.get_alpn_proto_negotiated() or None

    # Backpressure: nothing is buffered here, so it is the TCP transport's.
    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)  # type: ignore[union-attr]

    def unregisterProducer(self) -> None:
        if self.transport is not None:
            self.transport.unregisterProducer()  # type: ignore[attr-defined]

    def pauseProducing(self) -> None:
        if self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resumeProducing(self) -> None:
        if self.transport is not None:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def stopProducing(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def loseWriteConnection(self) -> None:
        """Half-close: ``close_notify``, then the TCP write side."""
        if self._handshake_done and not self._tls_closed and self._connection is not None:
            try:
                self._connection.shutdown()
            except SSL.Error:
                pass
            self._flush()
        self.transport.loseWriteConnection()  # type: ignore[union-attr]

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.transport.setTcpNoDelay(enabled)  # type: ignore[union-attr]

    def getTcpNoDelay(self) -> bool:
        return bool(self.transport.getTcpNoDelay())  # type: ignore[union-attr]

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self.transport.setTcpKeepAlive(enabled)  # type: ignore[union-attr]

    def getTcpKeepAlive(self) -> bool:
        return bool(self.transport.getTcpKeepAlive())  # type: ignore[union-attr]


class TLSServerFactory(ServerFactory):
    """Wraps ``factory``'s protocols in :class:`TLSServerProtocol`."""

    noisy = False

    def __init__(
        self, creator: IOpenSSLServerConnectionCreator, factory: IProtocolFactory
    ) -> None:
        self.creator = creator
        self.wrapped = factory

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()

    def logPrefix(self) -> str:
        prefix = getattr(self.wrapped, "logPrefix", None)
        return f"{prefix() if prefix is not None else type(self.wrapped).__name__} (TLS)"

    def buildProtocol(self, addr: Any) -> TLSServerProtocol | None:
        app = self.wrapped.buildProtocol(addr)
        if app is None:
            return None
        return TLSServerProtocol(self.creator, app)


@implementer(IStreamServerEndpoint)
class TLSServerEndpoint:
    """``wrapServerTLS`` with :class:`TLSServerProtocol` as the TLS layer."""

    def __init__(
        self, creator: IOpenSSLServerConnectionCreator, wrapped: IStreamServerEndpoint
    ) -> None:
        self.creator = creator
        self.wrapped = wrapped

    def listen(self, protocolFactory: IProtocolFactory) -> Any:
        deferred: Any = self.wrapped.listen(TLSServerFactory(self.creator, protocolFactory))
        return deferred


__all__ = [
    "TLSServerEndpoint",
    "TLSServerFactory",
    "TLSServerProtocol",
    "direct_openssl",
    "use_direct_openssl",
]
