"""
A request body streamed to the upstream as it arrives, for a route with
``request_buffering=False`` (nginx's ``proxy_request_buffering off``): the
:class:`~edgeproxy.upstream.h1client.BodySource` the exchange feeds and the
upstream connection's writer drains.

What arrives before a connection takes it (the route's stages still
deciding, a slot or a connection being waited for) is held, up to
``HTTPLimits.request_stream_window`` bytes; past that, and whenever the
upstream socket is full, the client is not read
(``Channel.pause_request_body``) until there is room again.  The exchange
talks to its channel only through those two names, so any protocol's
channel (an HTTP/1.1 connection, an HTTP/2 stream) can carry a streamed
body.

Nothing here outlives the body: once it has ended, or the connection has
stopped taking it, the body lets go of its sink, its channel and its owner
(each leads back to it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from edgeproxy.core.errors import EdgeProxyError
from edgeproxy.upstream.h1client import BodySink, BodySource

__all__ = ["StreamedBody"]


class _Reader(Protocol):
    """The part of the exchange's channel a streamed body uses."""

    def pause_request_body(self) -> None: ...
    def resume_request_body(self) -> None: ...


class _Receiver(Protocol):
    """The part of the exchange a streamed body uses."""

    def body_wanted(self) -> None: ...


class StreamedBody(BodySource):
    """One exchange's request body on its way upstream."""

    def __init__(
        self, exchange: _Receiver, channel: _Reader, length: int | None, window: int
    ) -> None:
        #: The exchange, until the body is over (for ``100 Continue``).
        self._exchange: _Receiver | None = exchange
        self._channel: _Reader | None = channel
        self.length = length
        self._window = window
        #: What arrived before a sink took it.
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._sink: BodySink | None = None
        #: The whole body arrived (the sink may not have it all yet).
        self.ended = False
        #: The sink took the end, or the body was stopped: nothing more moves.
        self.over = False
        #: The upstream socket is full.
        self._sink_paused = False
        #: The client is not being read because of this body.
        self._client_paused = False
        #: Told why the body broke off before its end (the forwarder, once it
        #: sends it): 413 past the limit, the client's body deadline.
        self.owner: Callable[[EdgeProxyError], object] | None = None

    # -- the client's side (the exchange) ----------------------------------------------

    def hold_client(self) -> None:
        """Do not read the client until a sink takes the body (the client
        waits for ``100 Continue``; time it spends so is not its own)."""
        self._pause_client()

    def feed(self, data: bytes) -> None:
        sink = self._sink
        if sink is not None and not self._held and not self._sink_paused:
            sink.data(data)
            return
        if self.over:
            return
        self._held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes > self._window:
            self._pause_client()

    def end(self) -> None:
        self.ended = True
        sink = self._sink
        if sink is not None and not self._held:
            self._finish(sink)

    def fail(self, error: EdgeProxyError) -> None:
        """The body cannot be completed (413 past the limit, the client's
        deadline): the owner gives up the upstream exchange."""
        owner = self.owner
        self.stop()
        if owner is not None:
            owner(error)

    def stop(self) -> None:
        """Nothing more of the body moves (its exchange is over, or broke off)."""
        if self.over:
            return
        self._held = []
        self._held_bytes = 0
        self._let_go()

    # -- the upstream's side (BodySource) ------------------------------------------------

    def connect(self, sink: BodySink) -> None:
        if self.over:
            return
        self._sink = sink
        exchange = self._exchange
        if exchange is not None:
            exchange.body_wanted()
        self._flush()

    def pauseProducing(self) -> None:
        self._sink_paused = True
        self._pause_client()

    def resumeProducing(self) -> None:
        self._sink_paused = False
        self._flush()

    def stopProducing(self) -> None:
        # The connection takes no more: whoever gave up on it says why.
        self._sink = None

    # -- within ----------------------------------------------------------------------

    def _flush(self) -> None:
        """Hand what is held to the sink while it takes it; read the client
        again once nothing is held and the socket has room."""
        while self._held and not self._sink_paused:
            sink = self._sink
            if sink is None:
                return
            data = self._held.pop(0)
            self._held_bytes -= len(data)
            sink.data(data)
        sink = self._sink
        if sink is None or self._held or self._sink_paused:
            return
        if self.ended:
            self._finish(sink)
            return
        if self._client_paused:
            self._client_paused = False
            channel = self._channel
            if channel is not None:
                channel.resume_request_body()

    def _finish(self, sink: BodySink) -> None:
        self._let_go()
        sink.end()

    def _let_go(self) -> None:
        """Nothing more moves: let go of the sink, the owner, the exchange and
        the channel (each leads back here), reading the client again if this
        body had stopped it."""
        self.over = True
        self._sink = None
        self.owner = None
        self._exchange = None
        channel, self._channel = self._channel, None
        if channel is not None and self._client_paused:
            self._client_paused = False
            channel.resume_request_body()

    def _pause_client(self) -> None:
        if not self._client_paused and not self.over:
            self._client_paused = True
            channel = self._channel
            if channel is not None:
                channel.pause_request_body()

    def __repr__(self) -> str:
        return f"<StreamedBody length={self.length} held={self._held_bytes} over={self.over}>"
