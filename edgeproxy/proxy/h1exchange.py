"""
The response side of an exchange for an HTTP/1.1 client: the status line,
``Content-Length`` or chunked framing (or the close, for an HTTP/1.0 client
and an unknown length), ``Connection``, ``X-Request-Id``, interim responses,
and the writes, on the connection's :class:`~.h1channel.ProxyChannel`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, cast

from twisted.internet.interfaces import IPushProducer

from edgeproxy.core.framing import CHUNKED, NO_BODY, sent_response_framing
from edgeproxy.proxy.exchange import Exchange

if TYPE_CHECKING:
    from edgeproxy.proxy.tunnel import Tunnel
    from edgeproxy.upstream.h1client import UpgradedConnection

__all__ = ["H1Exchange"]

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_STS = b"strict-transport-security:"


class _TunnelChannel(Protocol):
    """What a switch of protocols needs of the HTTP/1.1 channel
    (:meth:`edgeproxy.proxy.h1channel.ProxyChannel.start_tunnel`)."""

    def start_tunnel(self, request: Exchange, upstream: UpgradedConnection) -> Tunnel | None: ...


class H1Exchange(Exchange):
    """An exchange on an HTTP/1.1 (or 1.0) connection."""

    _no_body: bool = False
    _chunked: bool = False
    _head: bytes | None = None

    def send_continue(self) -> None:
        self.channel.write_now(_CONTINUE)

    def send_informational(self, code: int, phrase: bytes, lines: list[bytes]) -> None:
        """Written at once: a proxy must forward 1xx responses (RFC 9110
        15.2), to HTTP/1.1 clients only (HTTP/1.0 ones do not expect them).
        A 1xx has no content, so no framing.  A ``100 Continue`` is not
        repeated when edgeproxy sent its own."""
        if (
            not self.http11
            or self.record.status
            or self.finished
            or self._disconnected
            or (code == 100 and self._continued)
        ):
            return
        lines.insert(0, b"HTTP/1.1 %d %s" % (code, phrase))
        lines.append(b"\r\n")
        self.channel.write_now(b"\r\n".join(lines))

    def switch_protocols(
        self, phrase: bytes, lines: list[bytes], upstream: UpgradedConnection
    ) -> bool:
        """The 101 head (the upstream's end-to-end headers, its ``Upgrade``,
        ``Connection: Upgrade`` and the request id), written at once, then
        the connection is the tunnel's."""
        if self.finished or self._disconnected:
            return False
        record = self.record
        record.status = 101
        lines.insert(0, b"HTTP/1.1 101 " + phrase)
        lines.append(b"Upgrade: " + upstream.upgrade)
        lines.append(b"Connection: Upgrade")
        request_id = record.request_id
        if request_id is not None:
            lines.append(b"X-Request-Id: " + request_id.encode("ascii"))
        lines.append(b"\r\n")
        self.channel.write_now(b"\r\n".join(lines))
        channel = cast("_TunnelChannel", self.channel)
        return channel.start_tunnel(self, upstream) is not None

    def send_head_lines(
        self, code: int, phrase: bytes, lines: list[bytes], length: int | None
    ) -> None:
        """The head is written with the first body bytes (one TLS record, one
        segment for a small response)."""
        if self.observers is not None:
            for observer in self.observers:
                observer.response_head(code, lines, length)
        record = self.record
        record.status = code
        lines.insert(0, b"HTTP/1.1 %d %s" % (code, phrase))
        request_id = record.request_id
        if request_id is not None:
            lines.append(b"X-Request-Id: " + request_id.encode("ascii"))
        hsts = self.hsts_line
        if hsts is not None:
            # The virtual host's policy, not whatever a backend says.
            lines = [line for line in lines if line[:26].lower() != _STS]
            lines.append(hsts)
        framing = sent_response_framing(self.method == b"HEAD", code, length, self.http11)
        if framing >= 0:
            lines.append(b"Content-Length: %d" % framing)
        elif framing == NO_BODY:
            self._no_body = True
        elif framing == CHUNKED:
            lines.append(b"Transfer-Encoding: chunked")
            self._chunked = True
        else:
            # UNTIL_CLOSE: an HTTP/1.0 client learns where the body ends from the close.
            self.persistent = False
        if self.channel.draining:
            self.persistent = False
        if not self.persistent:
            lines.append(b"Connection: close")
        elif not self.http11:
            lines.append(b"Connection: keep-alive")
        lines.append(b"\r\n")
        self._head = b"\r\n".join(lines)

    def write(self, data: bytes) -> None:
        if not data or self._no_body or self.finished or self._disconnected:
            return
        self.record.sent += len(data)
        if self.observers is not None:
            for observer in self.observers:
                observer.response_body(data)
        if self._chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        head, self._head = self._head, None
        self.channel.write_now(data if head is None else head + data)

    def flush_head(self) -> None:
        """Send the head now if no body bytes came with it (a slow first byte
        must not hold the head back)."""
        head, self._head = self._head, None
        if head is not None:
            self.channel.write_now(head)

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self.channel.register_body_producer(producer)

    def unregisterProducer(self) -> None:
        self.channel.register_body_producer(None)

    def _end_response(self) -> None:
        head, self._head = self._head, None
        tail = _LAST_CHUNK if self._chunked else b""
        if head is not None or tail:
            self.channel.write_now(tail if head is None else head + tail)

    def abort(self) -> None:
        self.persistent = False
        self.channel.close()
