"""
ResponseRelay between a fake upstream body transport (an IPushProducer that
records what it is told) and a fake downstream sink (records what it is
given), with the idle timeout on a Clock.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web._newclient import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from zope.interface import implementer
from zope.interface.verify import verifyObject

from edgeproxy.core.errors import Reason
from edgeproxy.proxy.relay import ResponseRelay

IDLE_TIMEOUT = 10.0


@implementer(IPushProducer)
class FakeUpstream:
    """The transport ``IResponse.deliverBody`` gives its protocol."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


class FakeSink:
    """The downstream request, as the relay sees it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.producer: Any = None
        self.written: list[bytes] = []

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.events.append(("register", streaming))
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.events.append(("unregister", None))
        self.producer = None

    def write(self, data: bytes) -> None:
        self.events.append(("write", data))
        self.written.append(data)


class RelayTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.sink = FakeSink()
        self.outcomes: list[Reason | None] = []
        self.upstream = FakeUpstream()
        self.relay = ResponseRelay(
            self.sink, clock=self.clock, idle_timeout=IDLE_TIMEOUT, on_done=self.outcomes.append
        )

    def connect(self) -> None:
        self.relay.makeConnection(self.upstream)  # type: ignore[arg-type]
        self.relay.arm()

    # -- relaying ------------------------------------------------------------

    def test_registers_a_streaming_producer_standing_for_the_upstream(self) -> None:
        self.connect()
        self.assertEqual(self.sink.events, [("register", True)])
        producer = self.sink.producer
        self.assertTrue(verifyObject(IPushProducer, producer))
        producer.pauseProducing()
        producer.resumeProducing()
        producer.stopProducing()
        self.assertEqual(self.upstream.calls, ["pause", "resume", "stop"])

    def test_data_is_relayed_in_order(self) -> None:
        self.connect()
        self.relay.dataReceived(b"hel")
        self.relay.dataReceived(b"lo")
        self.assertEqual(self.sink.written, [b"hel", b"lo"])
        self.assertEqual(self.outcomes, [])

    def test_response_done_is_complete(self) -> None:
        self.connect()
        self.relay.dataReceived(b"body")
        self.relay.connectionLost(Failure(ResponseDone()))
        self.assertEqual(self.outcomes, [None])
        self.assertEqual(
            self.sink.events, [("register", True), ("write", b"body"), ("unregister", None)]
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_potential_data_loss_is_complete(self) -> None:
        """A body delimited by the connection's close ends with PotentialDataLoss."""
        self.connect()
        self.relay.dataReceived(b"body")
        self.relay.connectionLost(Failure(PotentialDataLoss()))
        self.assertEqual(self.outcomes, [None])
        self.assertEqual(self.sink.events[-1], ("unregister", None))

    def test_other_failure_is_truncated(self) -> None:
        self.connect()
        self.relay.dataReceived(b"bo")
        self.relay.connectionLost(Failure(ResponseFailed([Failure(ConnectionLost())])))
        self.assertEqual(self.outcomes, [Reason.TRUNCATED])
        self.assertEqual(self.sink.events[-1], ("unregister", None))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    # -- idle timeout --------------------------------------------------------

    def test_idle_timeout_stops_the_upstream(self) -> None:
        self.connect()
        self.clock.advance(IDLE_TIMEOUT - 0.1)
        self.assertEqual(self.upstream.calls, [])
        self.clock.advance(0.1)
        self.assertEqual(self.upstream.calls, ["stop"])
        self.assertEqual(self.outcomes, [])
        # Stopping the upstream makes its body end in failure.
        self.relay.connectionLost(Failure(ResponseFailed([Failure(ConnectionDone())])))
        self.assertEqual(self.outcomes, [Reason.IDLE_TIMEOUT])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_data_resets_the_idle_timer(self) -> None:
        self.connect()
        for _ in range(5):
            self.clock.advance(IDLE_TIMEOUT - 1)
            self.relay.dataReceived(b"x")
        self.assertEqual(self.upstream.calls, [])
        self.clock.advance(IDLE_TIMEOUT - 0.1)
        self.assertEqual(self.upstream.calls, [])
        self.clock.advance(0.1)
        self.assertEqual(self.upstream.calls, ["stop"])

    def test_no_idle_timer_while_the_downstream_is_paused(self) -> None:
        self.connect()
        self.clock.advance(IDLE_TIMEOUT - 1)
        self.sink.producer.pauseProducing()
        self.assertEqual(self.upstream.calls, ["pause"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # A slow client may take as long as it likes.
        self.clock.advance(IDLE_TIMEOUT * 100)
        self.assertEqual(self.upstream.calls, ["pause"])
        self.assertEqual(self.outcomes, [])
        # Data already in flight while paused does not restart the timer.
        self.relay.dataReceived(b"late")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.sink.written, [b"late"])

    def test_idle_timer_restarts_in_full_on_resume(self) -> None:
        self.connect()
        self.clock.advance(IDLE_TIMEOUT - 1)
        self.sink.producer.pauseProducing()
        self.clock.advance(IDLE_TIMEOUT * 3)
        self.sink.producer.resumeProducing()
        self.assertEqual(self.upstream.calls, ["pause", "resume"])
        self.clock.advance(IDLE_TIMEOUT - 0.1)
        self.assertEqual(self.upstream.calls, ["pause", "resume"])
        self.clock.advance(0.1)
        self.assertEqual(self.upstream.calls, ["pause", "resume", "stop"])

    def test_double_resume_keeps_one_timer(self) -> None:
        self.connect()
        self.sink.producer.resumeProducing()
        self.sink.producer.resumeProducing()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_idle_timeout_of_a_body_delimited_by_close_is_not_complete(self) -> None:
        """A read-until-close body that the idle timeout cut ends in PotentialDataLoss
        (twisted's client parser reports the close that stopProducing caused as
        the end of such a body); it was cut short all the same."""
        self.connect()
        self.relay.dataReceived(b"part")
        self.clock.advance(IDLE_TIMEOUT)
        self.assertEqual(self.upstream.calls, ["stop"])
        self.relay.connectionLost(Failure(PotentialDataLoss()))
        self.assertEqual(self.outcomes, [Reason.IDLE_TIMEOUT])

    # -- the client goes away ----------------------------------------------------

    def test_client_gone_stops_the_upstream(self) -> None:
        self.connect()
        self.relay.dataReceived(b"a")
        self.relay.client_gone()
        self.assertEqual(self.upstream.calls, ["stop"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # Nothing more reaches the gone client, and its producer is not touched.
        self.relay.dataReceived(b"b")
        self.relay.connectionLost(Failure(ResponseFailed([Failure(ConnectionDone())])))
        self.assertEqual(self.sink.written, [b"a"])
        self.assertNotIn(("unregister", None), self.sink.events)
        self.assertEqual(self.outcomes, [Reason.TRUNCATED])

    def test_client_gone_before_the_body_starts(self) -> None:
        self.relay.client_gone()
        self.connect()
        self.assertEqual(self.upstream.calls, ["stop"])
        self.assertEqual(self.sink.events, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ArmingTests(SynchronousTestCase):
    def test_a_body_complete_before_arming_never_starts_a_timer(self) -> None:
        clock = Clock()
        outcomes: list[Reason | None] = []
        relay = ResponseRelay(
            FakeSink(), clock=clock, idle_timeout=IDLE_TIMEOUT, on_done=outcomes.append
        )
        relay.makeConnection(FakeUpstream())  # type: ignore[arg-type]
        relay.dataReceived(b"whole")
        relay.connectionLost(Failure(ResponseDone()))
        relay.arm()
        self.assertEqual(outcomes, [None])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_arming_while_the_client_is_slow_waits_for_resume(self) -> None:
        clock = Clock()
        relay = ResponseRelay(
            FakeSink(), clock=clock, idle_timeout=IDLE_TIMEOUT, on_done=lambda _: None
        )
        upstream = FakeUpstream()
        relay.makeConnection(upstream)  # type: ignore[arg-type]
        producer = relay._producer
        assert producer is not None
        producer.pauseProducing()
        relay.arm()
        self.assertEqual(clock.getDelayedCalls(), [])
        producer.resumeProducing()
        self.assertEqual(len(clock.getDelayedCalls()), 1)
