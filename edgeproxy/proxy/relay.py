"""
Streams an upstream response body into the downstream request with
backpressure: a producer standing for the upstream socket is registered with
the downstream request, so when the client reads slowly the downstream
connection pauses it and the upstream socket stops being read.  While the
client is keeping up, the upstream must send something every
``idle_timeout`` seconds.  How the body ended is told with the reasons of
:class:`~edgeproxy.core.errors.Reason`: ``None`` when it came whole,
:attr:`~Reason.TRUNCATED` or :attr:`~Reason.IDLE_TIMEOUT` when it did not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseDone
from twisted.web.http import PotentialDataLoss
from zope.interface import implementer

from edgeproxy.core.errors import Reason

__all__ = ["DownstreamSink", "ResponseRelay"]

_DONE = Failure(ResponseDone())


class DownstreamSink(TypingProtocol):
    """What the relay needs of the downstream request."""

    def registerProducer(self, producer: Any, streaming: bool) -> None: ...

    def unregisterProducer(self) -> None: ...

    def write(self, data: bytes) -> None: ...


@implementer(IPushProducer)
class _UpstreamProducer:
    """The upstream socket as the downstream's producer; pausing also stops the idle clock."""

    def __init__(self, relay: ResponseRelay, upstream: IPushProducer) -> None:
        self._relay = relay
        self._upstream = upstream

    def pauseProducing(self) -> None:
        self._relay._paused = True
        self._relay._stop_idle_timer()
        self._upstream.pauseProducing()

    def resumeProducing(self) -> None:
        self._relay._paused = False
        self._relay._start_idle_timer()
        self._upstream.resumeProducing()

    def stopProducing(self) -> None:
        self._relay._stop_idle_timer()
        self._upstream.stopProducing()


class ResponseRelay(Protocol):
    """Given to ``IResponse.deliverBody``; ``on_done`` is called once, with
    ``None`` (the body came whole), :attr:`Reason.TRUNCATED` (the upstream
    broke off) or :attr:`Reason.IDLE_TIMEOUT` (it went quiet)."""

    def __init__(
        self,
        sink: DownstreamSink,
        *,
        clock: IReactorTime,
        idle_timeout: float,
        on_done: Callable[[Reason | None], object],
    ) -> None:
        self._sink = sink
        self._clock = clock
        self._idle_timeout = idle_timeout
        self._idle_call: IDelayedCall | None = None
        self._idled = False
        self._downstream_gone = False
        self._producer: _UpstreamProducer | None = None
        self._on_done = on_done
        self._paused = False
        self._over = False

    def client_gone(self) -> None:
        """The client went away: stop reading, which closes the upstream
        connection (it cannot be reused with an unread body)."""
        self._downstream_gone = True
        if self._producer is not None:
            self._producer.stopProducing()

    def _start_idle_timer(self) -> None:
        if self._idle_call is None or not self._idle_call.active():
            self._idle_call = self._clock.callLater(self._idle_timeout, self._idle)
        else:
            self._idle_call.reset(self._idle_timeout)

    def _stop_idle_timer(self) -> None:
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None

    def _idle(self) -> None:
        self._idle_call = None
        self._idled = True
        if self._producer is not None:
            self._producer.stopProducing()

    def connectionMade(self) -> None:
        # deliverBody's transport is an IPushProducer over the upstream socket.
        self._producer = _UpstreamProducer(self, self.transport)  # type: ignore[arg-type]
        if self._downstream_gone:
            self._producer.stopProducing()
            return
        self._sink.registerProducer(self._producer, True)

    def arm(self) -> None:
        """Start the idle clock, once what arrived with the response head has
        been relayed: a body that is already whole (most small ones) needs no
        timer at all."""
        if not self._over and not self._downstream_gone and not self._paused:
            self._start_idle_timer()

    def dataReceived(self, data: bytes) -> None:
        if self._idle_call is not None:
            self._idle_call.reset(self._idle_timeout)
        if not self._downstream_gone:
            self._sink.write(data)

    def connectionLost(self, reason: Failure = _DONE) -> None:
        self._over = True
        self._stop_idle_timer()
        if not self._downstream_gone:
            self._sink.unregisterProducer()
        # Idleness first: stopping a body delimited by the connection's close
        # ends in PotentialDataLoss, which would otherwise pass for complete.
        broke_off: Reason | None
        if self._idled:
            broke_off = Reason.IDLE_TIMEOUT
        elif reason.check(ResponseDone, PotentialDataLoss):
            broke_off = None
        else:
            broke_off = Reason.TRUNCATED
        # The producer and the transport refer back to this relay: let them
        # go, so reference counting frees the lot (no cycle for the GC).
        self._producer = None
        self.transport = None
        self._on_done(broke_off)
