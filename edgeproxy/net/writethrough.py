"""
Write-through for Twisted's TCP transports.

``FileDescriptor.write`` always buffers: the bytes wait for the reactor's next
turn, which costs an ``epoll_ctl`` to start watching for writability, an
extra ``epoll_wait`` wake-up, the ``doWrite`` machinery, and another
``epoll_ctl`` to stop watching.  A proxy writes twice per request (the
request upstream, the response downstream), nearly always to a socket whose
buffer is empty and has room.  Measured on a bare Twisted HTTP proxy
(``bench/RESULTS.md``): 90 -> 60 us of CPU per request.

With :func:`install`, a write to a TCP (or UNIX) connection with nothing
buffered is sent at once; whatever the kernel does not take (and every write
while something is buffered, or the connection is closing) takes Twisted's
own buffered path, so ordering, producers and closing behave exactly as
before; so do pull producers, which are asked for more only once the buffer
has drained.  TLS connections benefit too: the TLS layer writes its records
through the TCP transport.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from twisted.internet import abstract, tcp
from twisted.logger import Logger

__all__ = ["install", "installed"]

log = Logger(namespace="edgeproxy.writethrough")

# The transport attributes write-through reads; if a Twisted release renames
# them, write-through stays off rather than guessing.
_CLASS_ATTRIBUTES = (
    "TLS",
    "connected",
    "dataBuffer",
    "offset",
    "disconnecting",
    "_writeDisconnected",
    "_writeDisconnecting",
    "writeSomeData",
    "producer",
    "streamingProducer",
)
_INSTANCE_ATTRIBUTES = ("_tempDataLen", "_tempDataBuffer")

_buffered_write: Callable[[Any, bytes], None] | None = None
#: What Twisted's writeSomeData sends at most in one call.
_SEND_LIMIT: int = getattr(tcp.Connection, "SEND_LIMIT", 128 * 1024)


def _write(self: Any, data: bytes) -> None:
    if (
        data
        and not self.TLS
        and not self._tempDataLen
        and self.offset == len(self.dataBuffer)
        and self.connected
        and not self.disconnecting
        and not self._writeDisconnected
        and not self._writeDisconnecting
        # A pull producer is asked for more by doWrite once the buffer has
        # drained: its writes must go through the buffer or it is never asked.
        and (self.producer is None or self.streamingProducer)
    ):
        if len(data) <= _SEND_LIMIT:
            # writeSomeData's own steps (a memoryview, untilConcludes) without
            # its two Python frames: this runs twice per proxied request.
            try:
                sent = self.socket.send(data)
            except OSError:
                # Full (EAGAIN), interrupted, or broken: the buffered path
                # below takes the bytes; doWrite retries or finds the error.
                sent = 0
            if sent == len(data):
                return
        else:
            sent = self.writeSomeData(data)
        # An exception (connection lost) or nothing sent: the buffered path
        # below takes the bytes and doWrite finds the error or the room.
        if isinstance(sent, int) and sent > 0:
            if sent == len(data):
                return
            data = data[sent:]
    assert _buffered_write is not None
    _buffered_write(self, data)


def installed() -> bool:
    return _buffered_write is not None


def install() -> bool:
    """Make TCP and UNIX connections write through; True if it is on."""
    global _buffered_write
    if _buffered_write is not None:
        return True
    try:
        init_source = inspect.getsource(abstract.FileDescriptor.__init__)
        connection_init_source = inspect.getsource(tcp.Connection.__init__)
    except (OSError, TypeError) as e:
        # Twisted installed without its .py files (a zipapp, a frozen or
        # .pyc-only build): the check below cannot be made, so Twisted's own
        # write stays.
        log.warn(
            "write-through not installed: cannot read Twisted's source to check its "
            "transport internals ({error})",
            error=str(e) or type(e).__name__,
        )
        return False
    if (
        not all(hasattr(tcp.Connection, name) for name in _CLASS_ATTRIBUTES)
        or not all(f"self.{name}" in init_source for name in _INSTANCE_ATTRIBUTES)
        or "self.socket" not in connection_init_source
    ):
        log.warn("write-through not installed: this Twisted's transport internals differ")
        return False
    _buffered_write = tcp.Connection.write
    tcp.Connection.write = _write  # type: ignore[method-assign]
    return True


def uninstall() -> None:
    """Back to Twisted's own write (for tests)."""
    global _buffered_write
    if _buffered_write is not None:
        tcp.Connection.write = _buffered_write  # type: ignore[method-assign]
        _buffered_write = None
