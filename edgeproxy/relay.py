"""
Streams an upstream response body into the downstream request with
backpressure: the upstream transport is registered as the streaming producer
of the downstream request, so when the client reads slowly twisted.web pauses
it and the upstream socket stops being read.
"""

from __future__ import annotations

from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseDone
from twisted.web.http import PotentialDataLoss

__all__ = ["DownstreamSink", "ResponseRelay"]


_DONE = Failure(ResponseDone())


class DownstreamSink(TypingProtocol):
    """What the relay needs of the downstream request."""

    def registerProducer(self, producer: Any, streaming: bool) -> None: ...

    def unregisterProducer(self) -> None: ...

    def write(self, data: bytes) -> None: ...


class ResponseRelay(Protocol):
    """Given to ``IResponse.deliverBody``; fires ``done`` with ``True`` when the
    body arrived whole, ``False`` when it was cut short."""

    def __init__(self, sink: DownstreamSink, gone: Deferred[None]) -> None:
        self._sink = sink
        self._downstream_gone = False
        self.done: Deferred[bool] = Deferred()
        gone.addErrback(self._client_gone)

    def _client_gone(self, failure: Failure) -> None:
        # The client went away: stop reading, which closes the upstream
        # connection (it cannot be reused with an unread body).
        self._downstream_gone = True
        if self.transport is not None:
            # deliverBody's transport is an IPushProducer over the upstream socket.
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def connectionMade(self) -> None:
        if not self._downstream_gone:
            self._sink.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:
        if not self._downstream_gone:
            self._sink.write(data)

    def connectionLost(self, reason: Failure = _DONE) -> None:
        if not self._downstream_gone:
            self._sink.unregisterProducer()
        self.done.callback(bool(reason.check(ResponseDone, PotentialDataLoss)))
