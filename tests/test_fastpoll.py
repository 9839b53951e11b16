"""
The lean epoll dispatch (``edgeproxy.fastpoll``) on a real, private epoll
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
from twisted.internet.abstract import FileDescriptor
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger

from edgeproxy import fastpoll


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
        with pytest.raises(OSError):
            reactor.doIteration(0)
    finally:
        reactor._poller = real
