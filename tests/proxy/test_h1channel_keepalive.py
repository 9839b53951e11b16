"""
Whether a client connection persists after a response: the downstream
channel applies :func:`edgeproxy.core.framing.request_keep_alive` (RFC 9112
9.3), at the byte level.
"""

from __future__ import annotations

import pytest

from tests.proxy.test_h1channel import Conn, ok, request

CASES = {
    # (version, Connection header lines) -> the connection persists
    "1.1 without Connection": (b"HTTP/1.1", [], True),
    "1.1 keep-alive": (b"HTTP/1.1", [b"keep-alive"], True),
    "1.1 close": (b"HTTP/1.1", [b"close"], False),
    "1.1 Close among others": (b"HTTP/1.1", [b"x-a, Close"], False),
    "1.1 close on a second line": (b"HTTP/1.1", [b"keep-alive", b"close"], False),
    "1.1 closed is not close": (b"HTTP/1.1", [b"closed"], True),
    "1.0 without Connection": (b"HTTP/1.0", [], False),
    "1.0 keep-alive": (b"HTTP/1.0", [b"keep-alive"], True),
    "1.0 Keep-Alive among others": (b"HTTP/1.0", [b"x-a,Keep-Alive"], True),
    "1.0 close": (b"HTTP/1.0", [b"close"], False),
    # llhttp alone would keep these open: "close" is looked at first.
    "1.0 close, keep-alive": (b"HTTP/1.0", [b"close, keep-alive"], False),
    "1.0 keep-alive, close": (b"HTTP/1.0", [b"keep-alive, close"], False),
    "1.0 keep-alive then close lines": (b"HTTP/1.0", [b"keep-alive", b"close"], False),
}


@pytest.mark.parametrize(("version", "lines", "persists"), CASES.values(), ids=CASES.keys())
def test_the_connection_persists_as_the_rfc_says(
    version: bytes, lines: list[bytes], persists: bool
) -> None:
    c = Conn()
    headers = b"".join(b"Connection: %s\r\n" % line for line in lines)
    c.send(request(version=version, headers=headers))
    [sent] = c.upstream_requests()
    assert sent.header(b"connection") is None  # hop-by-hop, not forwarded
    c.respond(ok(b"hello"))
    [response] = c.responses()
    assert response.body == b"hello"
    assert c.closing is not persists
    assert response.has_token(b"connection", b"close") is not persists
    if version == b"HTTP/1.0":
        assert response.has_token(b"connection", b"keep-alive") is persists
