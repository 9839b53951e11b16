"""
The lean epoll dispatch (``edgeproxy.net.fastpoll``) on a real, private epoll
reactor and real socketpairs: events reach their handlers, an error escaping a
handler is logged and the rest of the events still run, EINTR is a no-op.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import tcp
from twisted.internet.abstract import FileDescriptor
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger, globalLogPublisher

from edgeproxy.net import fastpoll


@pytest.fixture
def reactor() -> Iterator[EPollReactor]:
    r = EPollReactor()
    try:
        yield r
    finally:
        # Tests close their sockets first: unregistering them may fail.
        with contextlib.suppress(Exception):
            r.removeAll()
        r._poller.close()
        waker: Any = r.waker
        for fd in (waker.i, waker.o):
            os.close(fd)


class Reader(FileDescriptor):
    """Reads a socket; optionally explodes in doRead and again in connectionLost."""

    def __init__(self, sock: socket.socket, reactor: Any, explode: bool = False) -> None:
        super().__init__(reactor)
        self.sock = sock
        self.explode = explode
        self.received: list[bytes] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> None:
        if self.explode:
            raise RuntimeError("doRead broke")
        self.received.append(self.sock.recv(4096))

    def connectionLost(self, reason: Any) -> None:
        if self.explode:
            raise RuntimeError("connectionLost broke too")
        super().connectionLost(reason)


def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    return a, b


def test_install_patches_only_this_reactor(reactor: EPollReactor) -> None:
    other = EPollReactor()
    try:
        assert fastpoll.install(reactor)
        assert fastpoll.installed(reactor)
        assert not fastpoll.installed(other)
        assert reactor.doIteration == reactor.doPoll
    finally:
        other._poller.close()
        waker: Any = other.waker
        os.close(waker.i)
        os.close(waker.o)


def test_other_reactors_are_left_alone() -> None:
    memory = MemoryReactorClock()
    assert not fastpoll.install(memory)
    assert not hasattr(memory, "doPoll")


def test_reactor_with_other_internals_is_left_alone(reactor: EPollReactor) -> None:
    reactor._selectables = []  # type: ignore[assignment]
    assert not fastpoll.install(reactor)
    assert not fastpoll.installed(reactor)


def test_twisted_tcp_read_path_is_the_one_the_short_path_repeats() -> None:
    assert fastpoll._read_path_matches(
        tcp.Connection.doRead, tcp.Connection._dataReceived, tcp.Connection.bufferSize
    )


def _read_with_a_hook(self: Any) -> Any:
    data = self.socket.recv(self.bufferSize)
    self.hook(data)  # a step the short path would skip
    return self._dataReceived(data)


@pytest.mark.parametrize(
    "change",
    [
        "doRead without CONNECTION_LOST",
        "bufferSize not a number",
        "_dataReceived elsewhere",
        "builtin",
    ],
)
def test_a_twisted_whose_read_path_differs_keeps_its_own_dispatch(
    reactor: EPollReactor, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    if change == "doRead without CONNECTION_LOST":
        monkeypatch.setattr(fastpoll, "_TCP_DO_READ", _read_with_a_hook)
    elif change == "bufferSize not a number":
        monkeypatch.setattr(tcp.Connection, "bufferSize", None)
    elif change == "_dataReceived elsewhere":
        monkeypatch.setattr(fastpoll, "_TCP_DATA_RECEIVED", lambda self, data: None)
    else:
        monkeypatch.setattr(fastpoll, "_TCP_DO_READ", len)
    warnings: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(warnings.append)
    try:
        assert not fastpoll.install(reactor)
    finally:
        globalLogPublisher.removeObserver(warnings.append)
    assert not fastpoll.installed(reactor)
    assert any("TCP read path differs" in e.get("log_format", "") for e in warnings)


def test_events_reach_their_handlers(reactor: EPollReactor) -> None:
    assert fastpoll.install(reactor)
    (a, b), (c, d) = pair(), pair()
    try:
        first, second = Reader(a, reactor), Reader(c, reactor)
        reactor.addReader(first)
        reactor.addReader(second)
        b.sendall(b"one")
        d.sendall(b"two")
        for _ in range(3):
            reactor.doIteration(0.5)
            if first.received and second.received:
                break
        assert first.received == [b"one"]
        assert second.received == [b"two"]
        # Nothing ready: a timed wait that returns without calling anyone.
        reactor.doIteration(0)
        assert first.received == [b"one"]
    finally:
        for s in (a, b, c, d):
            s.close()


def test_an_error_escaping_a_handler_is_logged_and_the_rest_still_run(
    reactor: EPollReactor, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[dict[str, Any]] = []
    monkeypatch.setattr(fastpoll, "log", Logger(observer=events.append))
    assert fastpoll.install(reactor)
    (a, b), (c, d) = pair(), pair()
    try:
        broken, fine = Reader(a, reactor, explode=True), Reader(c, reactor)
        reactor.addReader(broken)
        reactor.addReader(fine)
        b.sendall(b"x")
        d.sendall(b"y")
        for _ in range(3):
            reactor.doIteration(0.5)
            if fine.received and events:
                break
        assert fine.received == [b"y"]
        failures = [e for e in events if "log_failure" in e]
        assert len(failures) == 1
        assert failures[0]["log_failure"].check(RuntimeError)
        assert failures[0]["selectable"] is broken
    finally:
        for s in (a, b, c, d):
            s.close()


class Poller:
    def __init__(self, error: int) -> None:
        self.error = error

    def poll(self, timeout: float, maxevents: int) -> list[tuple[int, int]]:
        raise OSError(self.error, os.strerror(self.error))

    def close(self) -> None:
        pass


def test_eintr_is_a_quiet_return_and_other_errors_raise(reactor: EPollReactor) -> None:
    assert fastpoll.install(reactor)
    real = reactor._poller
    try:
        reactor._poller = Poller(errno.EINTR)
        reactor.doIteration(None)  # no exception: the reactor loops again
        reactor._poller = Poller(errno.EBADF)
        with pytest.raises(OSError) as raised:
            reactor.doIteration(0)
        assert raised.value.errno == errno.EBADF
    finally:
        reactor._poller = real


class Recorder(Protocol):
    def __init__(self, explode: bool = False) -> None:
        self.data: list[bytes] = []
        self.lost: list[Any] = []
        self.explode = explode

    def dataReceived(self, data: bytes) -> None:
        if self.explode:
            raise ValueError("protocol broke")
        self.data.append(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.append(reason)


def tcp_pair(reactor: EPollReactor, protocol: Protocol) -> tuple[tcp.Connection, socket.socket]:
    ours, peer = socket.socketpair()
    conn = tcp.Connection(ours, protocol, reactor)
    conn.connected = 1
    protocol.makeConnection(conn)
    reactor.addReader(conn)
    conn.sock = ours  # type: ignore[attr-defined]  # connectionLost drops .socket
    return conn, peer


def spin(reactor: EPollReactor, done: Any) -> None:
    for _ in range(5):
        reactor.doIteration(0.5)
        if done():
            return


def test_tcp_reads_take_the_short_path_to_the_protocol(
    reactor: EPollReactor, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert fastpoll.install(reactor)
    generic: list[int] = []
    real = reactor._doReadOrWrite
    monkeypatch.setattr(
        reactor, "_doReadOrWrite", lambda s, fd, ev: (generic.append(fd), real(s, fd, ev))
    )
    protocol = Recorder()
    conn, peer = tcp_pair(reactor, protocol)
    try:
        peer.sendall(b"GET / HTTP/1.1\r\n\r\n")
        spin(reactor, lambda: protocol.data)
        assert protocol.data == [b"GET / HTTP/1.1\r\n\r\n"]
        assert generic == []  # not through _doReadOrWrite
        # End of stream: the connection is lost cleanly, as Twisted does it.
        peer.close()
        spin(reactor, lambda: protocol.lost)
        assert len(protocol.lost) == 1 and protocol.lost[0].check(ConnectionDone)
        assert conn not in reactor.getReaders()
    finally:
        conn.sock.close()  # type: ignore[attr-defined]


def test_a_protocol_error_on_the_short_path_is_logged_and_ends_the_connection(
    reactor: EPollReactor,
) -> None:
    assert fastpoll.install(reactor)
    logged: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(logged.append)
    protocol = Recorder(explode=True)
    conn, peer = tcp_pair(reactor, protocol)
    try:
        peer.sendall(b"x")
        spin(reactor, lambda: protocol.lost)
        assert len(protocol.lost) == 1 and protocol.lost[0].check(ValueError)
        # Logged as Twisted's _doReadOrWrite logs it (legacy log.err).
        assert any(e.get("isError") and e["failure"].check(ValueError) for e in logged)
        assert conn not in reactor.getReaders()
    finally:
        globalLogPublisher.removeObserver(logged.append)
        conn.sock.close()  # type: ignore[attr-defined]
        peer.close()
