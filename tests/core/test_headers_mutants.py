"""Edges of edgeproxy.core.headers that mutation testing found unpinned.

``Connection: x-a,x-b`` without spaces (only a property test produced one, by
chance); which bytes a quoted ``Forwarded`` value keeps (RFC 7230's qdtext and
quoted-pair: HTAB, SP and the visible characters, obs-text included; never
another control, nor DEL) and that only ``"`` and ``\\`` are escaped; that a
text which cannot be encoded is replaced rather than raising on the request
path; that list values and Connection names are trimmed of SP and HTAB only
(RFC 9110's OWS).  ``tools/mutation.py headers`` and docs/testing.md say which
mutants these kill.
"""

from __future__ import annotations

import pytest

from edgeproxy.core.headers import forwarded_element, strip_hop_by_hop, upstream_request_headers

CONTROLS_DROPPED = bytes(range(0x00, 0x09)) + bytes(range(0x0A, 0x20)) + b"\x7f"


@pytest.mark.parametrize(
    ("host", "quoted"),
    [
        (b"a b", b'"a b"'),  # SP is qdtext
        (b"a\tb", b'"a\tb"'),  # so is HTAB
        (b"a\nb", b'"ab"'),
        (b"a\rb", b'"ab"'),
        (b"a\x7fb", b'"ab"'),  # DEL is a control
        (b"a\x80\xffb", b'"a\x80\xffb"'),  # obs-text is kept
        (b"a~b c", b'"a~b c"'),
        (b"X Y", b'"X Y"'),  # only '"' and '\' are escaped
        (b'"\\', b'"\\"\\\\"'),
        (b"a" + CONTROLS_DROPPED + b"b", b'"ab"'),
    ],
)
def test_quoted_host_keeps_qdtext_and_drops_controls(host: bytes, quoted: bytes) -> None:
    assert forwarded_element("192.0.2.1", "https", host) == b"for=192.0.2.1;proto=https;host=" + quoted


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


@pytest.mark.parametrize("connection", [b"x-a,x-b", b"X-B,x-a", b"x-a ,\tx-b", b",x-a,,x-b,"])
def test_connection_names_are_split_at_commas(connection: bytes) -> None:
    incoming = [(b"Connection", connection), (b"X-A", b"1"), (b"X-B", b"2"), (b"X-C", b"3")]
    assert strip_hop_by_hop(incoming) == [(b"X-C", b"3")]
    upstream = upstream_request_headers(incoming, client_ip="192.0.2.1", proto="https", host=None)
    assert [name for name, _ in upstream if name.startswith(b"X-") and len(name) == 3] == [b"X-C"]


@pytest.mark.parametrize("space", [b"\x0b", b"\x0c"])
def test_connection_names_are_trimmed_of_sp_and_htab_only(space: bytes) -> None:
    # "x-a" with another space around it is another (invalid) name: X-A stays.
    incoming = [(b"Connection", b"close, " + space + b"x-a\t"), (b"X-A", b"1")]
    assert strip_hop_by_hop(incoming) == [(b"X-A", b"1")]
