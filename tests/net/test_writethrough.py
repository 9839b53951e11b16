"""Write-through on real sockets (a socketpair), driven by hand: nothing is
lost or reordered, whatever the kernel takes."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor
from twisted.logger import LogLevel, capturedLogs

from edgeproxy.net import writethrough


@pytest.fixture(autouse=True)
def installed() -> Iterator[None]:
    was_installed = writethrough.installed()
    assert writethrough.install()
    yield
    if not was_installed:
        writethrough.uninstall()


class Pair:
    def __init__(self, buffer_size: int | None = None) -> None:
        ours, self.peer = socket.socketpair()
        for sock in (ours, self.peer):
            sock.setblocking(False)
            if buffer_size is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_size)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_size)
        self.reactor = MemoryReactor()
        self.conn = tcp.Connection(ours, Protocol(), self.reactor)
        self.conn.connected = 1
        self.received = bytearray()

    def buffered(self) -> bool:
        return self.conn in self.reactor.getWriters()

    def read_available(self) -> None:
        while True:
            try:
                chunk = self.peer.recv(65536)
            except BlockingIOError:
                return
            if not chunk:
                return
            self.received += chunk

    def drain(self) -> None:
        """What the reactor would do: doWrite while writable, the peer reading."""
        for _ in range(100_000):
            self.read_available()
            if not self.buffered():
                return
            self.conn.doWrite()
        raise AssertionError("did not drain")

    def close(self) -> None:
        self.conn.socket.close()
        self.peer.close()


def test_a_write_with_nothing_buffered_is_sent_at_once() -> None:
    pair = Pair()
    pair.conn.write(b"GET / HTTP/1.1\r\n\r\n")
    assert not pair.buffered()  # no epoll_ctl, no wait for the next reactor turn
    pair.read_available()
    assert pair.received == b"GET / HTTP/1.1\r\n\r\n"
    pair.close()


def test_what_the_kernel_does_not_take_is_buffered_and_order_kept() -> None:
    pair = Pair(buffer_size=4096)
    first = bytes(range(256)) * 4096  # 1 MiB: more than the socket buffers hold
    pair.conn.write(first)
    assert pair.buffered()
    # Written while something is buffered: must queue behind it, even if
    # the peer has read in between and the kernel has room again.
    pair.read_available()
    pair.conn.write(b"second")
    pair.conn.write(b"third")
    pair.drain()
    assert bytes(pair.received) == first + b"secondthird"
    # Drained: writes go straight through again.
    pair.conn.write(b"fourth")
    assert not pair.buffered()
    pair.read_available()
    assert bytes(pair.received).endswith(b"fourth")
    pair.close()


def test_a_closing_connection_takes_the_buffered_path() -> None:
    pair = Pair()
    pair.conn.disconnecting = True
    pair.conn.write(b"late")
    assert pair.buffered()
    pair.read_available()
    assert pair.received == b""
    pair.close()


def test_uninstall_restores_twisted_write() -> None:
    writethrough.uninstall()
    try:
        pair = Pair()
        pair.conn.write(b"x")
        assert pair.buffered()
        pair.close()
    finally:
        writethrough.install()


@pytest.mark.parametrize(
    "error",
    [OSError("could not get source code"), TypeError("module, class, method ... expected")],
    ids=["no-py-files", "not-python"],
)
def test_twisted_without_source_keeps_its_own_write(
    error: Exception, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``inspect.getsource`` fails when Twisted ships without its .py files:
    install() says why, returns False and leaves Twisted's write in place."""
    writethrough.uninstall()
    twisted_write = tcp.Connection.write

    def no_source(obj: object) -> str:
        raise error

    monkeypatch.setattr(writethrough, "inspect", SimpleNamespace(getsource=no_source))
    try:
        with capturedLogs() as events:
            assert writethrough.install() is False
        assert not writethrough.installed()
        assert tcp.Connection.write is twisted_write
        [event] = events
        assert event["log_level"] is LogLevel.warn
        assert "cannot read Twisted's source" in event["log_format"]
        assert event["error"] == str(error)
        pair = Pair()
        pair.conn.write(b"x")
        assert pair.buffered()  # Twisted's own write: buffered until the reactor's turn
        pair.close()
    finally:
        monkeypatch.undo()
        assert writethrough.install()


def test_a_pull_producer_keeps_being_asked_for_more() -> None:
    # Pull producers are asked for more by doWrite once the buffer drained:
    # their writes go through the buffer, or nothing would ever ask again.
    pair = Pair()
    chunks = [b"a" * 1000, b"b" * 1000, b"c" * 1000]

    class Pull:
        def resumeProducing(self) -> None:
            if chunks:
                pair.conn.write(chunks.pop(0))
            else:
                pair.conn.unregisterProducer()

        def stopProducing(self) -> None:
            pass

    pair.conn.registerProducer(Pull(), False)
    pair.drain()
    assert bytes(pair.received) == b"a" * 1000 + b"b" * 1000 + b"c" * 1000
    pair.close()


def test_small_writes_into_a_full_socket_are_buffered_in_order() -> None:
    pair = Pair(buffer_size=4096)
    chunks = [bytes([i % 256]) * 1000 for i in range(400)]  # each under SEND_LIMIT
    for chunk in chunks:
        pair.conn.write(chunk)
    assert pair.buffered()  # the kernel stopped taking them at some point
    pair.drain()
    assert bytes(pair.received) == b"".join(chunks)
    pair.close()


def test_a_write_to_a_broken_connection_is_left_to_do_write() -> None:
    from twisted.internet.error import ConnectionLost

    pair = Pair()
    pair.peer.close()
    # The first send may still succeed (the reset comes back later); keep
    # writing until the kernel refuses one.
    for _ in range(100):
        pair.conn.write(b"x" * 1000)
        if pair.buffered():
            break
    assert pair.buffered()  # no exception escaped write()
    result = pair.conn.doWrite()
    # Twisted's writeSomeData answers any send error but EWOULDBLOCK/ENOBUFS so.
    assert isinstance(result, ConnectionLost)
    pair.conn.socket.close()
