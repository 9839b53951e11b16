"""
The response side of an exchange for an HTTP/2 client: its head becomes a
HEADERS frame (``:status``, lower-case names, no connection-specific fields,
``content-length`` when the length is known, ``x-request-id``), its body DATA
frames within the stream's flow-control window, its end END_STREAM, an abort
RST_STREAM(INTERNAL_ERROR).  The frames themselves are the stream's
(:class:`~.h2channel.H2Stream`, through :class:`StreamSink`); nothing past the
channel knows it is HTTP/2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from hpack import NeverIndexedHeaderTuple
from twisted.internet.interfaces import IPushProducer

from edgeproxy.core.framing import CHUNKED
from edgeproxy.proxy.exchange import Channel, Exchange

if TYPE_CHECKING:
    from edgeproxy.proxy.tunnel import Tunnel
    from edgeproxy.upstream.h1client import UpgradedConnection

__all__ = ["CONNECTION_SPECIFIC", "H2Exchange", "StreamSink"]

#: Fields HTTP/2 forbids (RFC 9113 8.2.2), and the framing HTTP/2 does itself.
CONNECTION_SPECIFIC = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
    }
)
_STS = b"strict-transport-security"
_ACCEPT = b"sec-websocket-accept"

Fields = list[tuple[bytes, bytes]]


class StreamSink(Protocol):
    """What the response side asks of its stream."""

    def send_headers(self, headers: Fields, end_stream: bool) -> None: ...
    def send_interim(self, headers: Fields) -> None: ...
    def send_data(self, data: bytes) -> None: ...
    def end_stream(self) -> None: ...
    def abort(self) -> None: ...
    def register_body_producer(self, producer: IPushProducer | None) -> None: ...
    def start_tunnel(self, request: Exchange, upstream: UpgradedConnection) -> Tunnel | None: ...


def _fields(lines: list[bytes], skip_sts: bool) -> Fields:
    """``b"Name: value"`` lines as HTTP/2 fields: names in lower case, the
    connection-specific ones left out."""
    fields = []
    for line in lines:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name in CONNECTION_SPECIFIC or (skip_sts and name == _STS):
            continue
        fields.append((name, value.strip()))
    return fields


class H2Exchange(Exchange):
    """An exchange on an HTTP/2 stream (``clientproto`` ``HTTP/2``)."""

    _no_body: bool = False
    _head: Fields | None = None

    def __init__(
        self,
        channel: Channel,
        sink: StreamSink,
        method: bytes,
        uri: bytes,
        headers: Fields,
        body_follows: bool,
    ) -> None:
        super().__init__(channel, method, uri, b"2", headers, True)
        # HTTP/1.1's semantics, not its framing (RFC 9110): a host is required
        # (:authority or Host), and interim responses reach the client, so
        # ``Expect: 100-continue`` is answered as for an HTTP/1.1 client.
        self.http11 = True
        self.sink = sink
        if body_follows:
            # No Content-Length: the body ends with the stream (END_STREAM);
            # spooled as a chunked HTTP/1.1 body would be.
            # (A Content-Length, when there is one, replaces both.)
            self.unframed_body = self.declared_length = CHUNKED

    def send_continue(self) -> None:
        self.sink.send_interim([(b":status", b"100")])

    def send_informational(self, code: int, phrase: bytes, lines: list[bytes]) -> None:
        """Passed on as an interim HEADERS frame (never a 101: HTTP/2 has no
        Upgrade)."""
        if (
            code == 101
            or self.record.status
            or self.finished
            or self._disconnected
            or (code == 100 and self._continued)
        ):
            return
        fields = _fields(lines, False)
        fields.insert(0, (b":status", b"%d" % code))
        self.sink.send_interim(fields)

    def switch_protocols(
        self, phrase: bytes, lines: list[bytes], upstream: UpgradedConnection
    ) -> bool:
        """A WebSocket over HTTP/2 (RFC 8441) the backend switched to: the
        stream is answered ``200`` with the 101's end-to-end headers (its
        ``Sec-WebSocket-Protocol`` and ``-Extensions``; not its
        ``Sec-WebSocket-Accept``, which answered edgeproxy's key), without
        END_STREAM, and the stream is the tunnel's."""
        if self.finished or self._disconnected:
            return False
        self.record.status = 200
        hsts = self.hsts_line
        fields = [f for f in _fields(lines, hsts is not None) if f[0] != _ACCEPT]
        fields.insert(0, (b":status", b"200"))
        if hsts is not None:
            fields.extend(_fields([hsts], False))
        request_id = self.record.request_id
        if request_id is not None:
            fields.append((b"x-request-id", request_id.encode("ascii")))
        sink = self.sink
        sink.send_headers(fields, False)
        return sink.start_tunnel(self, upstream) is not None

    def send_head_lines(
        self, code: int, phrase: bytes, lines: list[bytes], length: int | None
    ) -> None:
        """The head is sent with the first body bytes, or with END_STREAM
        when there are none."""
        if self.observers is not None:
            for observer in self.observers:
                observer.response_head(code, lines, length)
        record = self.record
        record.status = code
        hsts = self.hsts_line
        fields = _fields(lines, hsts is not None)
        fields.insert(0, (b":status", b"%d" % code))
        if hsts is not None:
            # The virtual host's policy, not whatever a backend says.
            fields.extend(_fields([hsts], False))
        request_id = record.request_id
        if request_id is not None:
            # New on every response: indexed, it would push the headers that
            # repeat (content-type, server...) out of the HPACK table, and each
            # response would pay to encode them in full again.
            fields.append(NeverIndexedHeaderTuple(b"x-request-id", request_id.encode("ascii")))
        if code in (204, 304) or code < 200:
            self._no_body = True
        else:
            if length is not None:
                fields.append((b"content-length", b"%d" % length))
            self._no_body = self.method == b"HEAD"
        self._head = fields

    def write(self, data: bytes) -> None:
        if not data or self._no_body or self.finished or self._disconnected:
            return
        self.record.sent += len(data)
        if self.observers is not None:
            for observer in self.observers:
                observer.response_body(data)
        sink = self.sink
        head, self._head = self._head, None
        if head is not None:
            sink.send_headers(head, False)
        sink.send_data(data)

    def flush_head(self) -> None:
        head, self._head = self._head, None
        if head is not None:
            self.sink.send_headers(head, False)

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self.sink.register_body_producer(producer)

    def unregisterProducer(self) -> None:
        self.sink.register_body_producer(None)

    def _end_response(self) -> None:
        head, self._head = self._head, None
        if head is not None:
            self.sink.send_headers(head, True)
        else:
            self.sink.end_stream()

    def abort(self) -> None:
        self.sink.abort()
