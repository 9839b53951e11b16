"""Edges of edgeproxy.core.headers that mutation testing found unpinned.

That only ``"`` and ``\\`` are escaped in a quoted ``Forwarded`` value (the
pinned per-byte table in tests/core/test_headers.py has every control byte,
not the visible ones); that a client address or proto which cannot be encoded
is replaced rather than raising on the request path; that list values and
Connection names are trimmed of SP and HTAB only (RFC 9110's OWS).
``tools/mutation.py headers`` and docs/testing.md say which mutants these kill.
"""

from __future__ import annotations

import pytest

from edgeproxy.core.headers import forwarded_element, strip_hop_by_hop, upstream_request_headers


def test_every_visible_byte_survives_quoting() -> None:
    visible = bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
    element = forwarded_element("192.0.2.1", "https", visible)
    quoted = element.removeprefix(b"for=192.0.2.1;proto=https;host=")
    assert quoted == b'"' + visible.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def test_a_client_address_that_cannot_be_encoded_is_replaced() -> None:
    # A lone surrogate (from a name decoded with surrogateescape, say) must not
    # raise on the request path.
    headers = upstream_request_headers([], client_ip="\udcff", proto="https", host=None)
    assert dict(headers)[b"X-Forwarded-For"] == b"?"
    assert dict(headers)[b"Forwarded"] == b'for="?";proto=https'


def test_a_proto_that_is_not_ascii_is_replaced() -> None:
    headers = upstream_request_headers([], client_ip="192.0.2.1", proto="httpś", host=None)
    assert dict(headers)[b"X-Forwarded-Proto"] == b"http?"
    assert dict(headers)[b"Forwarded"] == b'for=192.0.2.1;proto="http?"'


@pytest.mark.parametrize("space", [b"\x0b", b"\x0c", b"\r", b"\n", b"\x1c"])
def test_list_values_are_trimmed_of_sp_and_htab_only(space: bytes) -> None:
    incoming = [(b"Via", b" \t" + space + b"1.0 a" + space + b"\t "), (b"X-Forwarded-For", space)]
    headers = dict(
        upstream_request_headers(incoming, client_ip="192.0.2.1", proto="https", host=None)
    )
    assert headers[b"Via"] == space + b"1.0 a" + space + b", 1.1 edgeproxy"
    assert headers[b"X-Forwarded-For"] == space + b", 192.0.2.1"


@pytest.mark.parametrize("space", [b"\x0b", b"\x0c"])
def test_connection_names_are_trimmed_of_sp_and_htab_only(space: bytes) -> None:
    # "x-a" with another space around it is another (invalid) name: X-A stays.
    incoming = [(b"Connection", b"close, " + space + b"x-a\t"), (b"X-A", b"1")]
    assert strip_hop_by_hop(incoming) == [(b"X-A", b"1")]
