"""
An HTTP/2 stream as one side of a :class:`~.tunnel.Tunnel`: a WebSocket over
HTTP/2 (RFC 8441 extended CONNECT) is spliced to its upstream connection by
the same tunnel as an HTTP/1.1 one, through this adapter, which makes the
stream look like the transport the tunnel expects.

- ``write``: DATA on the stream, within the client's window; what waits for
  it is held by the stream, which pauses the registered producer (the
  upstream socket) past ``max_stream_buffer``.
- ``pauseProducing``/``resumeProducing`` (the upstream cannot take more, or
  can again): the stream's received DATA is acknowledged (WINDOW_UPDATE)
  only while not paused, so the client's window closes and it stops sending.
- ``loseConnection``: END_STREAM once what is held has gone (RST_STREAM
  CONNECT_ERROR when the upstream failed, RFC 9113 8.5); ``abortConnection``:
  RST_STREAM CANCEL.
- The stream's DATA reaches the tunnel as ``client_data``, and its end
  (END_STREAM, a reset, the connection lost) as ``client_lost``, from
  :class:`~.h2channel.H2Stream`.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.interfaces import IPushProducer

__all__ = ["StreamTransport", "TunnelledStream"]


class TunnelledStream(Protocol):
    """What the adapter asks of its stream (:class:`~.h2channel.H2Stream`)."""

    def send_data(self, data: bytes) -> None: ...
    def register_body_producer(self, producer: IPushProducer | None) -> None: ...
    def pause_request_body(self) -> None: ...
    def resume_request_body(self) -> None: ...
    def tunnel_close(self) -> None: ...
    def tunnel_abort(self) -> None: ...


class StreamTransport:
    """The client side of a tunnel when the client is an HTTP/2 stream."""

    __slots__ = ("_stream",)

    def __init__(self, stream: TunnelledStream) -> None:
        self._stream = stream

    def write(self, data: bytes) -> None:
        self._stream.send_data(data)

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self._stream.register_body_producer(producer)

    def unregisterProducer(self) -> None:
        self._stream.register_body_producer(None)

    def pauseProducing(self) -> None:
        self._stream.pause_request_body()

    def resumeProducing(self) -> None:
        self._stream.resume_request_body()

    def loseConnection(self) -> None:
        self._stream.tunnel_close()

    def abortConnection(self) -> None:
        self._stream.tunnel_abort()
