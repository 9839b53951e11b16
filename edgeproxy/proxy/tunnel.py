"""
The splice after ``101 Switching Protocols``: two connections, the client's
and the upstream's, joined byte for byte (a WebSocket, or any other protocol
an HTTP/1.1 ``Upgrade`` switched to).

It works on the two transports only, so it is the same over plain TCP,
edgeproxy's TLS layer, Twisted's TLS (``--no-fast-paths``, upstream TLS) and
a PROXY protocol wrapper; each side's protocol (the channel, the upstream
connection) hands it what it reads and when it is lost.

- **Backpressure both ways**: each side's transport is a push producer
  registered with the other's, so a side that reads slowly pauses reading
  from the one that writes to it, and nothing is buffered here.
- **Idle timeout**: when nothing has passed either way for ``idle_timeout``
  seconds, both sides are closed.  One timer, moved only when it fires: a
  chunk costs one clock reading, not a timer reset.
- **Close from either side**: when one side is lost, the other is closed
  after what was written to it has been sent (``loseConnection``); if it
  has not gone ``idle_timeout`` later (a peer that no longer reads), it is
  aborted.  The tunnel is over once both are gone; ``on_closed`` is called
  once, with how it ended and the bytes each way, and every reference is let
  go of then (nothing is left as cyclic garbage).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["Tunnel", "TunnelEnd"]


class TunnelEnd(enum.Enum):
    """How a tunnel ended (the access log's outcome is made from it)."""

    #: The client closed its connection (cleanly or not).
    CLIENT = "client"
    #: The upstream closed its connection cleanly.
    UPSTREAM = "upstream"
    #: The upstream connection failed (reset, TLS error): the backend died.
    UPSTREAM_ERROR = "upstream_error"
    #: Nothing passed either way for the idle timeout.
    IDLE_TIMEOUT = "idle_timeout"


@implementer(IPushProducer)
class _Reading:
    """One side's transport as the producer registered with the other's:
    when the other side cannot take more, this side is not read."""

    __slots__ = ("_transport",)

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    def pauseProducing(self) -> None:
        transport = self._transport
        if transport is not None:
            transport.pauseProducing()

    def resumeProducing(self) -> None:
        transport = self._transport
        if transport is not None:
            transport.resumeProducing()

    def stopProducing(self) -> None:
        # The consuming side is going away: the tunnel hears of it through
        # connectionLost and closes this side then.
        pass

    def forget(self) -> None:
        self._transport = None


ClosedCallback = Callable[[TunnelEnd, int, int], object]


class Tunnel:
    """Splices ``client`` and ``upstream`` (transports) once :meth:`start` is
    called.  ``on_closed(end, from_client, from_upstream)`` is called once,
    when both connections are gone."""

    def __init__(
        self,
        clock: IReactorTime,
        idle_timeout: float,
        client: Any,
        upstream: Any,
        on_closed: ClosedCallback,
    ) -> None:
        self._clock = clock
        self._idle_timeout = idle_timeout
        self._client: Any = client
        self._upstream: Any = upstream
        self._on_closed: ClosedCallback | None = on_closed
        self._client_reading = _Reading(client)
        self._upstream_reading = _Reading(upstream)
        self._client_open = True
        self._upstream_open = True
        self._client_closing = False
        self._upstream_closing = False
        self._end: TunnelEnd | None = None
        #: Bytes read from the client (sent upstream), and from the upstream.
        self.from_client = 0
        self.from_upstream = 0
        self._last_activity = 0.0
        self._timer: IDelayedCall | None = None

    # -- set up --------------------------------------------------------------------

    def start(self, from_client: bytes = b"", from_upstream: bytes = b"") -> None:
        """Register the producers, pass on what each side sent before the
        splice (after the request head; after the 101 head), and start the
        idle clock."""
        self._client.registerProducer(self._upstream_reading, True)
        self._upstream.registerProducer(self._client_reading, True)
        self._last_activity = self._clock.seconds()
        self._timer = self._clock.callLater(self._idle_timeout, self._check_idle)
        if from_upstream:
            self.upstream_data(from_upstream)
        if from_client and self._end is None:
            self.client_data(from_client)

    # -- the two sides' input --------------------------------------------------------

    def client_data(self, data: bytes) -> None:
        if self._end is not None:
            return
        self.from_client += len(data)
        self._last_activity = self._clock.seconds()
        self._upstream.write(data)

    def upstream_data(self, data: bytes) -> None:
        if self._end is not None:
            return
        self.from_upstream += len(data)
        self._last_activity = self._clock.seconds()
        self._client.write(data)

    def client_lost(self, reason: Failure) -> None:
        if not self._client_open:
            return
        self._client_open = False
        self._client_reading.forget()
        self._upstream_reading.forget()
        if self._end is None:
            self._end = TunnelEnd.CLIENT
        if self._upstream_open:
            self._close_upstream()
            self._linger()
        else:
            self._finish()

    def upstream_lost(self, reason: Failure) -> None:
        if not self._upstream_open:
            return
        self._upstream_open = False
        self._client_reading.forget()
        self._upstream_reading.forget()
        if self._end is None:
            clean = reason.check(ConnectionDone) is not None
            self._end = TunnelEnd.UPSTREAM if clean else TunnelEnd.UPSTREAM_ERROR
        if self._client_open:
            self._close_client()
            self._linger()
        else:
            self._finish()

    # -- closing ---------------------------------------------------------------------

    # Close after what was written has been sent.  The producer goes first: a
    # transport with a paused producer resumes it instead of closing once its
    # buffer drains.

    def _close_client(self) -> None:
        if not self._client_closing:
            self._client_closing = True
            self._client.unregisterProducer()
            self._client.loseConnection()

    def _close_upstream(self) -> None:
        if not self._upstream_closing:
            self._upstream_closing = True
            self._upstream.unregisterProducer()
            self._upstream.loseConnection()

    def close(self, end: TunnelEnd) -> None:
        """Close both sides (after flushing), for ``end``."""
        if self._end is None:
            self._end = end
        if self._client_open:
            self._close_client()
        if self._upstream_open:
            self._close_upstream()
        self._linger()

    def abort(self) -> None:
        """Drop both sides at once."""
        for transport, still_open in (
            (self._client, self._client_open),
            (self._upstream, self._upstream_open),
        ):
            if still_open and transport is not None:
                transport.abortConnection()

    def _linger(self) -> None:
        """Give what is left of the tunnel ``idle_timeout`` to go away."""
        if not self._client_open and not self._upstream_open:
            return  # (a side whose close is immediate, an HTTP/2 stream's: over already)
        timer = self._timer
        if timer is not None and timer.active():
            timer.cancel()
        self._timer = self._clock.callLater(self._idle_timeout, self._lingered)

    def _lingered(self) -> None:
        self._timer = None
        self.abort()

    def _check_idle(self) -> None:
        """The idle timer: it fires ``idle_timeout`` after the last activity
        it knew of and looks again (there was more since), or closes."""
        self._timer = None
        if self._end is not None:
            return
        left = self._last_activity + self._idle_timeout - self._clock.seconds()
        if left > 1e-6:
            self._timer = self._clock.callLater(left, self._check_idle)
            return
        self.close(TunnelEnd.IDLE_TIMEOUT)

    def _finish(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        on_closed, self._on_closed = self._on_closed, None
        # The transports lead back to both protocols, which hold this tunnel.
        self._client = self._upstream = None
        end = self._end
        assert end is not None
        if on_closed is not None:
            on_closed(end, self.from_client, self.from_upstream)

    @property
    def end(self) -> TunnelEnd | None:
        """How the tunnel is ending (None while both sides are open)."""
        return self._end

    @property
    def over(self) -> bool:
        """Both connections are gone."""
        return not self._client_open and not self._upstream_open
