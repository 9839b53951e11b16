"""
The protocol limits object (:class:`edgeproxy.core.protocol.HTTPLimits`): its
documented defaults, its validation, and that the downstream channel, the
upstream client and the service read the limits they are given, not
constants of their own.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import attrs
import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.web.client import ResponseDone

from edgeproxy.app.service import EdgeProxyService, ListenerService
from edgeproxy.config.settings import Settings
from edgeproxy.core.errors import UpstreamResponseFailed
from edgeproxy.core.protocol import HTTPLimits
from edgeproxy.proxy.h1channel import ProxyFactory
from tests.proxy.test_h1channel import HOST, Conn, final, ok, request
from tests.upstream.test_h1client import OK, CountingFile, Rig, failure, fetch, started

DEFAULTS = {
    "max_request_line": 8 * 1024,
    "max_request_head_bytes": 16 * 1024,
    "max_request_headers": 500,
    "max_held_bytes": 64 * 1024,
    "request_stream_window": 256 * 1024,
    "spool_in_memory": 100_000,
    "max_response_head_bytes": 64 * 1024,
    "upstream_body_chunk": 64 * 1024,
    "upstream_read_size": 128 * 1024,
}


def test_the_defaults_are_the_documented_values() -> None:
    assert attrs.asdict(HTTPLimits()) == DEFAULTS


def test_the_defaults_are_in_the_configuration_docs() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    for name, value in DEFAULTS.items():
        assert f"| `{name}` | {value} " in docs, name


@pytest.mark.parametrize("name", DEFAULTS)
@pytest.mark.parametrize("value", [0, -1, 1.5, "16", True])
def test_a_limit_must_be_a_positive_int(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=name):
        HTTPLimits(**{name: value})  # type: ignore[arg-type]


def test_limits_are_frozen() -> None:
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        HTTPLimits().max_request_headers = 1  # type: ignore[misc]


def test_settings_hold_the_default_limits() -> None:
    assert Settings().http_limits == HTTPLimits()
    small = HTTPLimits(max_request_headers=3)
    assert Settings(http_limits=small).http_limits is small


# -- the downstream channel ------------------------------------------------------------


def conn(**limits: int) -> Conn:
    return Conn(settings=Settings(http_limits=HTTPLimits(**limits)))


def test_the_header_bytes_limit_is_the_settings() -> None:
    host = len(b"Host") + len(b"shop.example") + 4
    c = conn(max_request_head_bytes=host + len(b"X") + 4 + 10)
    c.send(request(headers=b"X: " + b"v" * 10 + b"\r\n"))
    assert len(c.upstream_requests()) == 1
    c.respond(ok(b"x"))
    c.send(request(headers=b"X: " + b"v" * 11 + b"\r\n"))
    assert final(c.responses())[-1].status == 431
    assert c.closing and len(c.upstream_requests()) == 1


def test_the_request_line_limit_is_the_settings() -> None:
    c = conn(max_request_line=100)
    c.send(b"GET /" + b"a" * 99 + b" HTTP/1.1\r\n" + HOST + b"\r\n")
    assert len(c.upstream_requests()) == 1
    c.respond(ok(b"x"))
    c.send(b"GET /" + b"a" * 100)  # refused before the line even ends
    assert final(c.responses())[-1].status == 414
    assert c.closing and len(c.upstream_requests()) == 1


def test_the_header_count_limit_is_the_settings() -> None:
    c = conn(max_request_headers=3)
    c.send(request(headers=b"A: 1\r\nB: 2\r\n"))  # with Host: three lines
    assert len(c.upstream_requests()) == 1
    c.respond(ok(b"x"))
    c.send(request(headers=b"A: 1\r\nB: 2\r\nC: 3\r\n"))
    assert final(c.responses())[-1].status == 431
    assert c.closing and len(c.upstream_requests()) == 1


def test_a_head_still_arriving_is_cut_at_four_times_the_two_limits() -> None:
    # llhttp strips whitespace before a value, so it is not counted; what is
    # buffered of an unfinished head is cut instead.
    c = conn(max_request_line=500, max_request_head_bytes=500)
    start = request()[:-2] + b"X-Pad:"
    c.send(start + b" " * (4000 - len(start)))
    assert c.responses() == []
    c.send(b" ")
    assert final(c.responses())[-1].status == 431
    assert c.closing and c.attempts == 0


def test_the_held_bytes_limit_is_the_settings() -> None:
    c = conn(max_held_bytes=100)
    c.send(request(target=b"/1") + request(target=b"/2"))  # /2 waits: input is held from here
    c.send(b"GET /3 HTTP/1.1\r\n" + HOST)
    assert c.transport.producerState == "producing"
    c.send(b"X-Pad: " + b"v" * 60 + b"\r\n\r\n")  # past 100 bytes held
    assert c.transport.producerState == "paused"
    for i in range(3):
        c.respond(ok(b"%d" % i))
    assert c.transport.producerState == "producing"
    assert [r.body for r in c.responses()] == [b"0", b"1", b"2"]


def test_the_factory_hands_the_settings_limits_on() -> None:
    limits = HTTPLimits(spool_in_memory=10)
    c = Conn(settings=Settings(http_limits=limits))
    assert c.factory.limits is limits


# -- the upstream client -----------------------------------------------------------------


def test_the_response_head_limit_is_the_clients() -> None:
    rig, d, up = started(limits=HTTPLimits(max_response_head_bytes=100))
    up.respond(b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 74 + b"\r\n")  # 100 bytes
    assert not up.closed
    up.respond(b"X-More: " + b"b" * 20 + b"\r\n")
    assert failure(d).check(UpstreamResponseFailed)
    assert up.closed


def test_a_body_past_the_head_limit_in_the_same_read_is_not_a_head() -> None:
    rig, d, up = started(limits=HTTPLimits(max_response_head_bytes=100))
    response, body = fetch(
        rig, up, d, b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n" + b"x" * 500
    )
    assert response.code == 200 and body.body == b"x" * 500
    assert body.reason is not None and body.reason.check(ResponseDone)


def test_the_body_chunk_is_the_clients() -> None:
    rig = Rig(limits=HTTPLimits(upstream_body_chunk=1000))
    body = CountingFile(2500)
    d, up = rig.begin(b"PUT", body=body, body_length=2500)
    producer = up.transport.producer
    assert producer is not None and body.read_total == 0
    up.transport.clear()
    sizes = []
    while up.transport.producer is not None:
        producer.resumeProducing()
        sizes.append(len(up.transport.value()))
        up.transport.clear()
    assert sizes == [1000, 1000, 500]
    fetch(rig, up, d, OK)
    assert rig.idle() == 1


def test_a_body_up_to_the_chunk_goes_out_with_the_head() -> None:
    rig = Rig(limits=HTTPLimits(upstream_body_chunk=1000))
    rig.request(b"PUT", body=b"z" * 1000)
    up = rig.accept()
    assert up.transport.producer is None
    assert up.sent().endswith(b"\r\n\r\n" + b"z" * 1000)


def test_the_read_size_is_the_clients() -> None:
    rig, d, up = started(limits=HTTPLimits(upstream_read_size=4096))
    up.transport.bufferSize = 65536  # type: ignore[attr-defined]
    # A transport with a bufferSize (a TCP one) gets the limit as it connects.
    up.protocol.connectionMade()
    assert up.transport.bufferSize == 4096  # type: ignore[attr-defined]
    fetch(rig, up, d, OK)


def test_the_client_defaults_to_the_default_limits() -> None:
    assert Rig().client.limits == HTTPLimits()


# -- the service's wiring ------------------------------------------------------------------

SITE = """
from edgeproxy.config import Cluster, Route, VirtualHost

virtual_hosts = [VirtualHost(["app.example"], routes=[Route("/", Cluster("app", endpoints=["127.0.0.1:9"]))])]
"""


def test_the_service_hands_the_settings_limits_to_listeners_and_upstream(
    tmp_path: Path,
) -> None:
    (tmp_path / "site.py").write_text(SITE)
    limits = HTTPLimits(max_request_headers=7, max_response_head_bytes=999)
    settings = Settings(
        config=str(tmp_path / "site.py"),
        certs=str(tmp_path),
        https=("tcp:0:interface=127.0.0.1",),
        http=("tcp:0:interface=127.0.0.1",),
        admin=None,
        http_limits=limits,
    )
    service = EdgeProxyService(settings, MemoryReactorClock())
    assert service.upstream.limits is limits
    factories = [c._factory for c in service if isinstance(c, ListenerService)]
    assert len(factories) == 2
    for factory in factories:
        assert isinstance(factory, ProxyFactory) and factory.limits is limits


def test_body_shorter_than_announced_still_fails_with_a_small_chunk() -> None:
    rig = Rig(limits=HTTPLimits(upstream_body_chunk=2))
    d, up = rig.begin(b"POST", body=io.BytesIO(b"abc"), body_length=5)
    while up.transport.producer is not None and not up.closed:
        up.transport.producer.resumeProducing()
    assert failure(d).check(UpstreamResponseFailed)
    assert up.closed


def test_the_spool_threshold_is_the_settings() -> None:
    c = conn(spool_in_memory=10)
    c.send(request(b"POST", headers=b"Content-Length: 10\r\n", body=b"x" * 5))
    assert isinstance(c.protocol.requests[0].content, io.BytesIO)
    c.send(b"x" * 5)
    c.respond(ok(b"a"))
    c.send(request(b"POST", headers=b"Content-Length: 11\r\n", body=b"x" * 5))
    assert not isinstance(c.protocol.requests[0].content, io.BytesIO)
    c.send(b"x" * 6)
    c.respond(ok(b"b"))
    c.send(request(b"POST", headers=b"Transfer-Encoding: chunked\r\n", body=b"5\r\nxxxxx\r\n"))
    spool = c.protocol.requests[0].content
    assert isinstance(spool, tempfile.SpooledTemporaryFile) and spool._max_size == 10
    c.send(b"0\r\n\r\n")
    c.respond(ok(b"c"))
    assert [r.body for r in c.upstream_requests()] == [b"x" * 10, b"x" * 11, b"xxxxx"]
