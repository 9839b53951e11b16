"""
The deadlines for a slow client (``--header-timeout``, ``--body-timeout``
with ``--body-min-rate``, ``--keepalive-timeout``), at the byte level on a
memory clock: a client that keeps trickling bytes is cut at its deadline all
the same, one that sends at a decent rate never is, and neither the time a
request waits for its answer nor the time edgeproxy holds input unread
counts against the client.
"""

from __future__ import annotations

from twisted.logger import LogEvent

from edgeproxy.config.settings import Settings
from edgeproxy.ops.metrics import Metrics
from tests.proxy.test_h1channel import HOST, Conn, access_records, log_events, ok, request

#: The fixture, imported so that pytest finds it here by name.
__all__ = ["log_events"]

#: Head 5 s, body 10 s plus 1 s per 100 bytes, idle 20 s; the cluster's
#: response timeout (30 s) is longer than all of them.
DEADLINES = Settings(
    header_timeout=5.0, body_timeout=10.0, body_min_rate=100, keepalive_timeout=20.0
)

SLOW_HEAD = b"GET /slow HTTP/1.1\r\n" + HOST + b"X-Pad: " + b"a" * 200 + b"\r\n\r\n"


def post(length: int, body: bytes = b"", target: bytes = b"/up") -> bytes:
    return request(b"POST", target, headers=b"Content-Length: %d\r\n" % length, body=body)


def status_line(c: Conn) -> bytes:
    return c.out().split(b"\r\n", 1)[0]


# -- the head --------------------------------------------------------------------


def test_a_trickled_head_is_cut_at_the_header_deadline_though_bytes_keep_coming() -> None:
    c = Conn(DEADLINES)
    for byte in SLOW_HEAD[:19]:  # a byte every 0.25 s, up to 4.75 s
        c.send(bytes([byte]))
        c.advance(0.25)
    assert not c.closing
    c.send(SLOW_HEAD[19:20])
    c.advance(0.25)
    assert c.closing
    assert status_line(c) == b"HTTP/1.1 408 Request Time-out"
    [response] = c.responses()
    assert response.has_token(b"connection", b"close")
    assert c.attempts == 0


def test_reading_does_not_touch_the_timer() -> None:
    # One timer per connection, re-armed only when it fires: bytes arriving
    # neither cancel nor move it.
    c = Conn(DEADLINES)
    [timer] = c.reactor.getDelayedCalls()
    for byte in SLOW_HEAD[:20]:
        c.send(bytes([byte]))
        c.advance(0.1)
        assert c.reactor.getDelayedCalls() == [timer]


def test_the_first_request_counts_from_the_accept() -> None:
    c = Conn(DEADLINES)
    c.advance(4.0)  # connected, sent nothing (a slow TLS handshake looks the same)
    c.send(b"GET / HTTP/1.1\r\n")
    c.advance(0.9)
    assert not c.closing
    c.advance(0.2)
    assert c.closing
    assert status_line(c).startswith(b"HTTP/1.1 408 ")


def test_a_connection_that_never_sends_is_closed_at_the_header_deadline_without_an_answer(
    log_events: list[LogEvent],
) -> None:
    c = Conn(DEADLINES)
    c.advance(4.9)
    assert not c.closing
    c.advance(0.2)
    assert c.closing
    # Browsers open spare connections they may never use: nothing to answer or log.
    assert c.out() == b""
    assert access_records(log_events) == []


def test_a_later_request_counts_from_its_first_byte() -> None:
    c = Conn(DEADLINES)
    c.send(request())
    c.respond(ok(b"x"))
    c.advance(15.0)  # idle, within the keep-alive time
    c.send(b"GET /second HTTP/1.1\r\nHo")
    c.advance(4.9)
    assert not c.closing
    c.advance(0.2)
    assert c.closing
    assert [r.status for r in c.responses()] == [200, 408]


def test_the_head_timeout_is_logged_with_its_reason(log_events: list[LogEvent]) -> None:
    c = Conn(DEADLINES)
    c.send(b"GET /slow HTTP/1.1\r\nHost: sho")
    c.advance(5.0)
    c.client_gone()
    [record] = access_records(log_events)
    assert (record.status, record.outcome, record.reason) == (
        408,
        "client_timeout",
        "header_timeout",
    )
    assert (record.method, record.path) == ("GET", "/slow")


# -- idle ----------------------------------------------------------------------------


def test_an_idle_connection_gets_the_keepalive_timeout_not_the_header_timeout() -> None:
    c = Conn(DEADLINES)
    c.send(request())
    c.respond(ok(b"x"))
    c.advance(19.9)
    assert not c.closing
    c.advance(0.2)
    assert c.closing
    assert [r.status for r in c.responses()] == [200]  # closed without a 408


# -- the body ------------------------------------------------------------------------


def test_a_slow_body_is_cut_at_body_timeout_plus_what_it_earned(log_events: list[LogEvent]) -> None:
    # 10 bytes a second, a tenth of the minimum rate: each second earns 0.1 s,
    # so at t the deadline is 10 + t/10, reached at t = 11.1.
    c = Conn(DEADLINES)
    c.send(post(10_000))
    for _ in range(11):
        c.send(b"x" * 10)
        c.advance(1.0)
    assert not c.closing
    c.advance(0.05)
    assert not c.closing
    c.advance(0.1)
    assert c.closing
    assert status_line(c).startswith(b"HTTP/1.1 408 ")
    assert c.attempts == 0
    c.client_gone()
    [record] = access_records(log_events)
    assert (record.status, record.outcome, record.reason) == (408, "client_timeout", "body_timeout")


def test_a_large_body_at_a_decent_rate_is_never_cut() -> None:
    # 99 kB at 990 B/s (ten times the minimum rate) takes 100 s, ten times the body timeout.
    c = Conn(DEADLINES)
    size = 99_000
    c.send(post(size))
    for _ in range(100):
        assert not c.closing
        c.send(b"y" * 990)
        c.advance(1.0)
    [upstream] = c.connect()
    for _ in range(size // 1000):  # pull the body upstream (a pull producer)
        if upstream.transport.producer is None:
            break
        upstream.transport.producer.resumeProducing()
    [sent] = c.upstream_requests()
    assert len(sent.body) == size
    c.respond(ok(b"stored"))
    assert [r.status for r in c.responses()] == [200]
    assert not c.closing


def test_without_a_minimum_rate_the_body_timeout_is_a_plain_deadline() -> None:
    c = Conn(Settings(header_timeout=5.0, body_timeout=10.0, body_min_rate=0))
    c.send(post(1_000_000))
    for _ in range(9):
        c.send(b"z" * 50_000)  # fast, but the whole body is still due in 10 s
        c.advance(1.0)
    c.advance(0.9)
    assert not c.closing
    c.advance(0.2)
    assert c.closing
    assert status_line(c).startswith(b"HTTP/1.1 408 ")


def test_a_body_stalled_after_its_head_gets_the_body_timeout_not_the_header_timeout() -> None:
    c = Conn(DEADLINES)
    c.advance(4.0)
    c.send(post(10, b"hello"))  # the head is in just before its deadline
    c.advance(10.0)
    assert not c.closing
    c.advance(0.1)
    assert c.closing
    assert status_line(c).startswith(b"HTTP/1.1 408 ")


# -- what does not count -----------------------------------------------------------


def test_a_request_waiting_for_its_answer_is_not_cut() -> None:
    c = Conn(DEADLINES)
    c.send(post(5, b"hello"))
    c.advance(25.0)  # past every client deadline, within the cluster's 30 s
    assert not c.closing
    c.respond(ok(b"late"))
    assert [r.status for r in c.responses()] == [200]
    # The idle time starts with the response.
    c.advance(19.9)
    assert not c.closing
    c.advance(0.2)
    assert c.closing


def test_a_head_held_behind_an_answer_counts_from_that_answer() -> None:
    # /2 arrives half while /1 is answered, and reading stops (past the held
    # input limit) behind it: neither wait counts against the client.
    c = Conn(DEADLINES)
    c.send(request(target=b"/1") + request(target=b"/2") + b"GET /3 HTTP/1.1\r\nHo")
    c.send(b"X" * 70_000)  # more than max_held_bytes: reading is paused
    assert c.transport.producerState == "paused"
    c.advance(25.0)
    c.respond(ok(b"1"))
    c.advance(25.0)
    assert not c.closing
    c.respond(ok(b"2"))
    assert c.transport.producerState == "producing"
    c.advance(4.9)
    assert not c.closing
    c.advance(0.2)
    assert c.closing
    assert [r.status for r in c.responses()] == [200, 200, 408]


def test_a_body_held_behind_an_answer_counts_from_that_answer() -> None:
    c = Conn(DEADLINES)
    c.send(request(target=b"/1") + post(10, b"hello", target=b"/2"))
    c.advance(25.0)  # /2's body stalls while /1 waits for its answer
    assert not c.closing
    c.respond(ok(b"1"))
    c.advance(10.0)  # /2 had 5 bytes: 0.05 s earned
    assert not c.closing
    c.advance(0.1)
    assert c.closing
    assert [r.status for r in c.responses()] == [200, 408]


def test_a_refused_body_being_dropped_is_left_to_the_lingering_close() -> None:
    c = Conn(Settings(header_timeout=1.0, body_timeout=1.0, lingering_timeout=3.0))
    c.send(request(b"POST", b"/small/", headers=b"Content-Length: 1000\r\n"))
    assert status_line(c).startswith(b"HTTP/1.1 413 ")
    for _ in range(5):  # the client goes on sending what was refused
        c.send(b"x" * 10)
        c.advance(0.5)
    assert not c.closing  # past the body timeout
    c.advance(0.6)
    assert c.closing  # at the lingering timeout
    assert [r.status for r in c.responses()] == [413]


# -- counted ------------------------------------------------------------------------------


def test_each_deadline_is_counted_by_name() -> None:
    metrics = Metrics()

    def connection() -> Conn:
        c = Conn(DEADLINES)
        c.factory.metrics = metrics  # from now on (the connection is already open)
        return c

    connection().advance(5.0)  # sent nothing
    head = connection()
    head.send(b"GET / HTTP/1.1\r\n")
    head.advance(5.0)
    body = connection()
    body.send(post(10, b"hello"))
    body.advance(11.0)
    idle = connection()
    idle.send(request())
    idle.respond(ok(b"x"))
    idle.advance(20.0)
    counts = {
        name: metrics.registry.get_sample_value(
            "edgeproxy_client_timeouts_total", {"deadline": name}
        )
        for name in ("no_request", "header", "body", "keepalive")
    }
    assert counts == {"no_request": 1, "header": 1, "body": 1, "keepalive": 1}
