"""
A leaner event dispatch for Twisted's epoll reactor.

``EPollReactor.doPoll`` hands every ready descriptor to its handler through
``twisted.python.log.callWithLogger``, which asks the descriptor's protocol for
its log prefix and pushes a legacy logging context (``{"system": prefix}``,
copied into a new dict) around the call: four Python frames and a dict copy
per event, for a context only ``twisted.python.log``'s old-style messages
read.  A proxied request is two to four events; under wrk the wrappers were
about 7% of the proxy's CPU (py-spy, ``bench/RESULTS.md``).

:func:`install` gives the running reactor a ``doPoll`` that calls the handler
directly.  What changes: a legacy ``log.msg``/``log.err`` made while handling
an event says ``system=-`` instead of the protocol's prefix (edgeproxy's own
logging does not use it).  What does not: errors in ``doRead``/``doWrite`` are
still caught by Twisted's ``_doReadOrWrite`` (the connection is closed and
the error logged), and anything escaping it is logged here and the reactor
goes on, as with ``callWithLogger``.
"""

from __future__ import annotations

import errno
import select
import sys
import types
from typing import Any

from twisted.internet import main, tcp
from twisted.logger import Logger
from twisted.python import log as legacy_log

__all__ = ["install", "installed"]

log = Logger(namespace="edgeproxy.fastpoll")

# Where there is no epoll, install() leaves every reactor alone and this is unused.
EPOLLIN: int = getattr(select, "EPOLLIN", 1)

# The reactor attributes the lean doPoll reads.
_REQUIRED = (
    "_poller",
    "_selectables",
    "_doReadOrWrite",
    "_disconnectSelectable",
    "doPoll",
    "doIteration",
)


def _do_poll(self: Any, timeout: float | None) -> None:
    if timeout is None:
        timeout = -1  # wait indefinitely
    try:
        # At most as many events as descriptors watched, as Twisted does.
        events = self._poller.poll(timeout, len(self._selectables))
    except OSError as e:
        if e.errno == errno.EINTR:
            return
        raise
    selectables = self._selectables
    handle = self._doReadOrWrite
    for fd, event in events:
        selectable = selectables.get(fd)
        if selectable is None:
            continue
        try:
            if event == EPOLLIN and type(selectable).doRead is _TCP_DO_READ:
                _read(self, selectable)
            else:
                handle(selectable, fd, event)
        except KeyboardInterrupt:
            raise
        except BaseException:
            log.failure("while handling an event on {selectable!r}", selectable=selectable)


_TCP_DO_READ = tcp.Connection.doRead
_TCP_DATA_RECEIVED = tcp.Connection._dataReceived

# What _read does in place of Twisted's doRead and _dataReceived, by the names
# their code uses: a Twisted whose read path differs (another buffer size
# attribute, a hook between recv and the protocol) gets its own dispatch back.
_READ_NAMES = frozenset({"socket", "recv", "bufferSize", "_dataReceived", "CONNECTION_LOST"})
_DATA_RECEIVED_NAMES = frozenset({"protocol", "dataReceived", "CONNECTION_DONE"})


def _read_path_matches(do_read: Any, data_received: Any, buffer_size: object) -> bool:
    """Twisted's TCP read path is the one :func:`_read` repeats (checked from
    the compiled code: no source needed)."""
    read_code = getattr(do_read, "__code__", None)
    data_code = getattr(data_received, "__code__", None)
    return (
        read_code is not None
        and data_code is not None
        and _READ_NAMES <= set(read_code.co_names)
        and _DATA_RECEIVED_NAMES <= set(data_code.co_names)
        and isinstance(buffer_size, int)
    )


def _read(reactor: Any, connection: Any) -> None:
    """``_doReadOrWrite`` -> ``doRead`` -> ``_dataReceived`` for the common
    event, a TCP connection with bytes to read, in one frame: the same steps
    (receive, EOF or error ends the connection, an exception from the
    protocol is logged and ends it) without three calls per event."""
    try:
        data = connection.socket.recv(connection.bufferSize)
    except BlockingIOError:
        return
    except OSError:
        reactor._disconnectSelectable(connection, main.CONNECTION_LOST, True)
        return
    if not data:
        reactor._disconnectSelectable(connection, main.CONNECTION_DONE, True)
        return
    try:
        connection.protocol.dataReceived(data)
    except BaseException:
        why = sys.exc_info()[1]
        legacy_log.err()
        reactor._disconnectSelectable(connection, why, True)


def installed(reactor: Any) -> bool:
    return getattr(getattr(reactor, "doPoll", None), "__func__", None) is _do_poll


def install(reactor: Any) -> bool:
    """Give ``reactor`` the lean ``doPoll``; True if it has it.  Only Twisted's
    epoll reactor (the default on Linux) is changed; any other stays as it is."""
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # no epoll on this platform
        return False
    if not isinstance(reactor, EPollReactor):
        return False
    if not all(hasattr(reactor, name) for name in _REQUIRED) or not isinstance(
        reactor._selectables, dict
    ):
        log.warn("lean event dispatch not installed: this Twisted's epoll reactor differs")
        return False
    buffer_size = getattr(tcp.Connection, "bufferSize", None)
    if not _read_path_matches(_TCP_DO_READ, _TCP_DATA_RECEIVED, buffer_size):
        log.warn("lean event dispatch not installed: this Twisted's TCP read path differs")
        return False
    method = types.MethodType(_do_poll, reactor)
    target: Any = reactor
    # mainLoop calls doIteration, an alias of doPoll on the class.
    target.doPoll = method
    target.doIteration = method
    return True
