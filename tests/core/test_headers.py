"""Reverse-proxy header rewriting (edgeproxy.core.headers)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeproxy.core.headers import (
    HOP_BY_HOP,
    downstream_response_headers,
    forwarded_element,
    strip_hop_by_hop,
    upstream_request_headers,
)

HeaderList = list[tuple[bytes, bytes]]


def test_hop_by_hop_set() -> None:
    assert HOP_BY_HOP == {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }


def test_strip_hop_by_hop_any_case() -> None:
    headers = [
        (b"Host", b"a.example"),
        (b"CONNECTION", b"keep-alive"),
        (b"Keep-Alive", b"timeout=5"),
        (b"transfer-encoding", b"chunked"),
        (b"Te", b"trailers"),
        (b"Trailer", b"X-Checksum"),
        (b"Upgrade", b"websocket"),
        (b"Proxy-Connection", b"close"),
        (b"Accept", b"text/html"),
        (b"Accept", b"*/*"),
    ]
    assert strip_hop_by_hop(headers) == [
        (b"Host", b"a.example"),
        (b"Accept", b"text/html"),
        (b"Accept", b"*/*"),
    ]


def test_strip_headers_named_in_connection() -> None:
    headers = [
        (b"Connection", b"close, X-Secret ,\tx-other"),
        (b"x-secret", b"1"),
        (b"X-Other", b"2"),
        (b"connection", b" , Foo"),
        (b"FOO", b"3"),
        (b"X-Kept", b"4"),
    ]
    assert strip_hop_by_hop(headers) == [(b"X-Kept", b"4")]


def test_strip_keep_is_not_dropped_by_connection() -> None:
    headers = [(b"Connection", b"host, x-a"), (b"Host", b"a.example"), (b"X-A", b"1")]
    assert strip_hop_by_hop(headers, keep=frozenset({b"host"})) == [(b"Host", b"a.example")]


def test_strip_accepts_a_generator() -> None:
    raw = [(b"Connection", b"x-a"), (b"X-A", b"1"), (b"X-B", b"2"), (b"X-B", b"3")]
    assert strip_hop_by_hop(pair for pair in raw) == [(b"X-B", b"2"), (b"X-B", b"3")]
    assert downstream_response_headers(pair for pair in raw) == [(b"X-B", b"2"), (b"X-B", b"3")]


def test_strip_drop() -> None:
    headers = [
        (b"X-Request-Id", b"abc"),
        (b"Accept", b"*/*"),
        (b"x-request-id", b"def"),
        (b"Content-Length", b"3"),
        (b"Connection", b"x-other"),
        (b"X-Other", b"1"),
    ]
    assert strip_hop_by_hop(headers, drop=frozenset({b"x-request-id", b"content-length"})) == [
        (b"Accept", b"*/*"),
    ]
    # drop wins over keep
    assert strip_hop_by_hop(
        [(b"Host", b"a"), (b"B", b"b")], keep=frozenset({b"host"}), drop=frozenset({b"host"})
    ) == [(b"B", b"b")]


def test_downstream_invents_nothing() -> None:
    headers = [
        (b"Content-Type", b"text/html"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Connection", b"keep-alive"),
        (b"Content-Length", b"10"),
    ]
    assert downstream_response_headers(headers) == [
        (b"Content-Type", b"text/html"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"Content-Length", b"10"),
    ]
    assert downstream_response_headers([]) == []


def test_downstream_drop() -> None:
    headers = [
        (b"X-Request-Id", b"upstream"),
        (b"Content-Type", b"text/plain"),
        (b"X-REQUEST-ID", b"again"),
        (b"Keep-Alive", b"timeout=5"),
    ]
    assert downstream_response_headers(headers, drop=frozenset({b"x-request-id"})) == [
        (b"Content-Type", b"text/plain"),
    ]
    assert downstream_response_headers(headers, frozenset({b"content-type"})) == [
        (b"X-Request-Id", b"upstream"),
        (b"X-REQUEST-ID", b"again"),
    ]


def test_downstream_interleaved_repeats_keep_order() -> None:
    headers = [
        (b"Set-Cookie", b"a=1"),
        (b"X", b"1"),
        (b"Set-Cookie", b"b=2"),
        (b"Connection", b"close"),
        (b"x", b"2"),
        (b"set-cookie", b"c=3"),
    ]
    assert downstream_response_headers(headers) == [
        (b"Set-Cookie", b"a=1"),
        (b"X", b"1"),
        (b"Set-Cookie", b"b=2"),
        (b"x", b"2"),
        (b"set-cookie", b"c=3"),
    ]


def as_dict(headers: HeaderList) -> dict[bytes, list[bytes]]:
    result: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        result.setdefault(name.lower(), []).append(value)
    return result


def test_upstream_fresh_request() -> None:
    headers = [(b"Host", b"shop.example"), (b"Accept", b"*/*"), (b"Connection", b"close")]
    result = upstream_request_headers(
        headers, client_ip="192.0.2.7", proto="https", host=b"shop.example"
    )
    assert result == [
        (b"Host", b"shop.example"),
        (b"Accept", b"*/*"),
        (b"X-Forwarded-For", b"192.0.2.7"),
        (b"X-Forwarded-Proto", b"https"),
        (b"X-Forwarded-Host", b"shop.example"),
        (b"Forwarded", b"for=192.0.2.7;proto=https;host=shop.example"),
        (b"Via", b"1.1 edgeproxy"),
    ]


def test_upstream_accepts_a_generator() -> None:
    headers = [(b"Accept", b"*/*"), (b"Via", b"1.0 a")]
    result = upstream_request_headers(
        (pair for pair in headers), client_ip="192.0.2.7", proto="http", host=None
    )
    assert result == upstream_request_headers(
        headers, client_ip="192.0.2.7", proto="http", host=None
    )
    assert result[:2] == [(b"Accept", b"*/*"), (b"Via", b"1.0 a, 1.1 edgeproxy")]


def test_upstream_appends_to_incoming_values() -> None:
    headers = [
        (b"host", b"shop.example:8443"),
        (b"x-forwarded-for", b"203.0.113.1"),
        (b"X-Forwarded-For", b"198.51.100.2, 10.0.0.1"),
        (b"X-Forwarded-Proto", b"http"),
        (b"X-Forwarded-Host", b"evil.example"),
        (b"Forwarded", b"for=203.0.113.1"),
        (b"Via", b"1.0 fred"),
        (b"via", b"1.1 p.example (Apache/1.1)"),
        (b"Cookie", b"a=1"),
    ]
    result = upstream_request_headers(
        headers, client_ip="2001:db8::1", proto="https", host=b"shop.example:8443", via=b"1.1 edge"
    )
    assert result == [
        (b"host", b"shop.example:8443"),
        (b"X-Forwarded-For", b"203.0.113.1, 198.51.100.2, 10.0.0.1, 2001:db8::1"),
        (b"X-Forwarded-Proto", b"https"),
        (b"X-Forwarded-Host", b"shop.example:8443"),
        (
            b"Forwarded",
            b'for=203.0.113.1, for="[2001:db8::1]";proto=https;host="shop.example:8443"',
        ),
        (b"Via", b"1.0 fred, 1.1 p.example (Apache/1.1), 1.1 edge"),
        (b"Cookie", b"a=1"),
    ]


def test_upstream_merges_rewritten_at_first_incoming_line() -> None:
    headers = [
        (b"Accept", b"*/*"),
        (b"Via", b"1.0 a"),
        (b"Cookie", b"a=1"),
        (b"X-Forwarded-For", b"203.0.113.1"),
        (b"via", b"1.0 b"),
        (b"Cookie", b"b=2"),
        (b"x-forwarded-for", b"198.51.100.2"),
        (b"X-Forwarded-Proto", b"http"),
        (b"x-forwarded-proto", b"ftp"),
        (b"Forwarded", b"for=203.0.113.1"),
        (b"Accept", b"text/html"),
        (b"forwarded", b"for=198.51.100.2"),
    ]
    result = upstream_request_headers(headers, client_ip="192.0.2.7", proto="https", host=None)
    assert result == [
        (b"Accept", b"*/*"),
        (b"Via", b"1.0 a, 1.0 b, 1.1 edgeproxy"),
        (b"Cookie", b"a=1"),
        (b"X-Forwarded-For", b"203.0.113.1, 198.51.100.2, 192.0.2.7"),
        (b"Cookie", b"b=2"),
        (b"X-Forwarded-Proto", b"https"),
        (b"Forwarded", b"for=203.0.113.1, for=198.51.100.2, for=192.0.2.7;proto=https"),
        (b"Accept", b"text/html"),
    ]


def test_upstream_interleaved_repeats_keep_order() -> None:
    headers = [
        (b"Cookie", b"a=1"),
        (b"X", b"1"),
        (b"Cookie", b"b=2"),
        (b"TE", b"trailers"),
        (b"x", b"2"),
        (b"cookie", b"c=3"),
    ]
    result = upstream_request_headers(headers, client_ip="192.0.2.7", proto="https", host=None)
    assert result[:5] == [
        (b"Cookie", b"a=1"),
        (b"X", b"1"),
        (b"Cookie", b"b=2"),
        (b"x", b"2"),
        (b"cookie", b"c=3"),
    ]


def test_upstream_drop() -> None:
    headers = [
        (b"Host", b"a.example"),
        (b"Content-Length", b"5"),
        (b"Accept", b"*/*"),
        (b"Expect", b"100-continue"),
        (b"X-Request-Id", b"client-chosen"),
        (b"x-request-id", b"again"),
    ]
    result = upstream_request_headers(
        headers,
        client_ip="192.0.2.7",
        proto="https",
        host=b"a.example",
        drop=frozenset({b"content-length", b"expect", b"x-request-id"}),
    )
    assert result == [
        (b"Host", b"a.example"),
        (b"Accept", b"*/*"),
        (b"X-Forwarded-For", b"192.0.2.7"),
        (b"X-Forwarded-Proto", b"https"),
        (b"X-Forwarded-Host", b"a.example"),
        (b"Forwarded", b"for=192.0.2.7;proto=https;host=a.example"),
        (b"Via", b"1.1 edgeproxy"),
    ]
    # drop wins over the Host that Connection cannot remove
    dropped_host = upstream_request_headers(
        headers, client_ip="192.0.2.7", proto="https", host=None, drop=frozenset({b"host"})
    )
    assert b"host" not in as_dict(dropped_host)


def test_upstream_without_host() -> None:
    headers = [(b"X-Forwarded-Host", b"spoofed.example"), (b"Accept", b"*/*")]
    result = upstream_request_headers(headers, client_ip="192.0.2.7", proto="http", host=None)
    assert as_dict(result) == {
        b"accept": [b"*/*"],
        b"x-forwarded-for": [b"192.0.2.7"],
        b"x-forwarded-proto": [b"http"],
        b"forwarded": [b"for=192.0.2.7;proto=http"],
        b"via": [b"1.1 edgeproxy"],
    }


def test_upstream_keeps_host_even_if_named_in_connection() -> None:
    headers = [(b"Host", b"a.example"), (b"Connection", b"Host, X-Forwarded-For")]
    headers.append((b"X-Forwarded-For", b"1.2.3.4"))
    result = as_dict(
        upstream_request_headers(headers, client_ip="192.0.2.7", proto="https", host=b"a.example")
    )
    assert result[b"host"] == [b"a.example"]
    assert result[b"x-forwarded-for"] == [b"192.0.2.7"]
    assert b"connection" not in result


def test_upstream_skips_empty_incoming_list_values() -> None:
    headers = [(b"Via", b""), (b"X-Forwarded-For", b" "), (b"via", b"  ")]
    result = as_dict(
        upstream_request_headers(headers, client_ip="192.0.2.7", proto="https", host=None)
    )
    assert result[b"via"] == [b"1.1 edgeproxy"]
    assert result[b"x-forwarded-for"] == [b"192.0.2.7"]


@pytest.mark.parametrize(
    ("client_ip", "host", "element"),
    [
        ("192.0.2.43", b"example.com", b"for=192.0.2.43;proto=https;host=example.com"),
        ("2001:db8:cafe::17", None, b'for="[2001:db8:cafe::17]";proto=https'),
        ("::ffff:192.0.2.1", None, b'for="[::ffff:c000:201]";proto=https'),
        ("192.0.2.43", b"[::1]:8443", b'for=192.0.2.43;proto=https;host="[::1]:8443"'),
        ("192.0.2.43", b'a"b\\c', b'for=192.0.2.43;proto=https;host="a\\"b\\\\c"'),
        ("192.0.2.43", b"a\x01b", b'for=192.0.2.43;proto=https;host="ab"'),
        ("192.0.2.43", b"", b'for=192.0.2.43;proto=https;host=""'),
        ("unknown", None, b"for=unknown;proto=https"),
        ("unix:/run/x", None, b'for="unix:/run/x";proto=https'),
    ],
)
def test_forwarded_element(client_ip: str, host: bytes | None, element: bytes) -> None:
    assert forwarded_element(client_ip, "https", host) == element


# Properties ---------------------------------------------------------------------

END_TO_END = [b"Accept", b"Cookie", b"X-Custom", b"Content-Type", b"Authorization", b"Te-Foo"]
END_TO_END_LOWER = {n.lower() for n in END_TO_END}
REWRITTEN = [b"X-Forwarded-For", b"X-Forwarded-Proto", b"X-Forwarded-Host", b"Forwarded", b"Via"]


def cases(name: bytes) -> st.SearchStrategy[bytes]:
    return st.lists(st.booleans(), min_size=len(name), max_size=len(name)).map(
        lambda upper: bytes(
            c - 32 if u and 97 <= c <= 122 else c for c, u in zip(name.lower(), upper, strict=True)
        )
    )


names = st.sampled_from(sorted(HOP_BY_HOP) + sorted(END_TO_END_LOWER)).flatmap(cases)
value = st.one_of(
    st.binary(max_size=20),
    # Connection values naming other headers, in any case, with whitespace and commas
    st.lists(names, min_size=1, max_size=3).map(lambda ns: b" ,\t".join(ns)),
)
header_lists = st.lists(st.tuples(names, value), max_size=20)
drops = st.frozensets(st.sampled_from(sorted(END_TO_END_LOWER)), max_size=3)


def named_in_connection(headers: Sequence[tuple[bytes, bytes]]) -> set[bytes]:
    return {
        token.strip(b" \t").lower()
        for name, v in headers
        if name.lower() == b"connection"
        for token in v.split(b",")
    }


@given(header_lists)
def test_property_no_hop_by_hop_survives(headers: Sequence[tuple[bytes, bytes]]) -> None:
    result = strip_hop_by_hop(headers)
    assert not {name.lower() for name, _ in result} & HOP_BY_HOP


@given(header_lists, drops)
def test_property_end_to_end_kept_in_order(
    headers: Sequence[tuple[bytes, bytes]], drop: frozenset[bytes]
) -> None:
    named = named_in_connection(headers)
    expected = [
        (name, v)
        for name, v in headers
        if name.lower() not in HOP_BY_HOP and name.lower() not in named
    ]
    assert strip_hop_by_hop(headers) == expected
    assert downstream_response_headers(headers) == expected
    expected_dropped = [pair for pair in expected if pair[0].lower() not in drop]
    assert strip_hop_by_hop(headers, drop=drop) == expected_dropped
    assert downstream_response_headers(headers, drop=drop) == expected_dropped


@given(
    header_lists, st.sampled_from(["192.0.2.1", "2001:db8::1"]), st.sampled_from(["http", "https"])
)
def test_property_upstream(
    headers: Sequence[tuple[bytes, bytes]], client_ip: str, proto: str
) -> None:
    result = upstream_request_headers(headers, client_ip=client_ip, proto=proto, host=b"h.example")
    lowered = [name.lower() for name, _ in result]
    assert not set(lowered) & HOP_BY_HOP
    for added in [b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"via"]:
        assert lowered.count(added) == 1
    by_name = as_dict(result)
    assert by_name[b"x-forwarded-for"][0].endswith(client_ip.encode())
    assert by_name[b"x-forwarded-proto"] == [proto.encode()]
    # every surviving end-to-end header line keeps its value and its place
    kept = strip_hop_by_hop(headers, keep=frozenset({b"host"}))
    assert [pair for pair in result if pair[0].lower() in END_TO_END_LOWER] == [
        pair for pair in kept if pair[0].lower() in END_TO_END_LOWER
    ]


upstream_names = st.sampled_from(sorted(END_TO_END_LOWER) + [n.lower() for n in REWRITTEN]).flatmap(
    cases
)
upstream_lists = st.lists(st.tuples(upstream_names, st.binary(max_size=10)), max_size=20)


@given(upstream_lists, drops)
def test_property_upstream_rewritten_in_first_place(
    headers: Sequence[tuple[bytes, bytes]], drop: frozenset[bytes]
) -> None:
    result = upstream_request_headers(
        headers, client_ip="192.0.2.1", proto="https", host=b"h.example", drop=drop
    )
    rewritten = {n.lower() for n in REWRITTEN}
    # Each rewritten header appears once, in the place of its first incoming
    # line among the lines that survive; the rest keep their relative order.
    expected: list[bytes] = []
    for name, _ in headers:
        lower = name.lower()
        if lower in drop:
            continue
        if lower in rewritten:
            if lower not in expected:
                expected.append(lower)
        else:
            expected.append(lower)
    expected += [n.lower() for n in REWRITTEN if n.lower() not in expected]
    assert [name.lower() for name, _ in result] == expected
    assert [pair for pair in result if pair[0].lower() not in rewritten] == [
        pair for pair in headers if pair[0].lower() not in rewritten | drop
    ]
    incoming_xff = [v.strip(b" \t") for n, v in headers if n.lower() == b"x-forwarded-for"]
    assert as_dict(result)[b"x-forwarded-for"] == [
        b", ".join([v for v in incoming_xff if v] + [b"192.0.2.1"])
    ]


def test_direct_client_tail_is_cached_per_client_and_host_and_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from edgeproxy.core import headers as headers_module

    monkeypatch.setattr(headers_module, "_DIRECT_TAILS", {})
    monkeypatch.setattr(headers_module, "_DIRECT_TAILS_MAX", 3)
    incoming = [(b"Host", b"a.example"), (b"Accept", b"*/*")]
    first = upstream_request_headers(incoming, client_ip="192.0.2.1", proto="https", host=b"a.example")
    # The caller owns its list: changing it does not change the next answer.
    first.append((b"X-Mine", b"1"))
    second = upstream_request_headers(incoming, client_ip="192.0.2.1", proto="https", host=b"a.example")
    assert second == first[:-1]
    assert (b"X-Forwarded-For", b"192.0.2.1") in second
    other = upstream_request_headers(incoming, client_ip="192.0.2.2", proto="https", host=b"b.example")
    assert (b"X-Forwarded-For", b"192.0.2.2") in other
    assert (b"X-Forwarded-Host", b"b.example") in other
    for n in range(10):
        upstream_request_headers(incoming, client_ip=f"192.0.2.{n}", proto="http", host=None)
        assert len(headers_module._DIRECT_TAILS) <= 3


# --- Pinned edges (issue 14): each assertion below states today's exact answer.

_PIN_CLIENT = {"client_ip": "192.0.2.1", "proto": "https", "host": b"h.example"}
_PIN_TAIL = [
    (b"X-Forwarded-For", b"192.0.2.1"),
    (b"X-Forwarded-Proto", b"https"),
    (b"X-Forwarded-Host", b"h.example"),
    (b"Forwarded", b"for=192.0.2.1;proto=https;host=h.example"),
    (b"Via", b"1.1 edgeproxy"),
]


def test_pin_connection_names_a_header_upstream_and_downstream() -> None:
    # The token and the header name match whatever the case of either.
    mixed = [(b"x-a", b"1"), (b"CONNECTION", b"X-A"), (b"X-B", b"2")]
    for headers in ([(b"Connection", b"x-a"), (b"X-A", b"1"), (b"X-B", b"2")], mixed):
        assert upstream_request_headers(headers, **_PIN_CLIENT) == [(b"X-B", b"2"), *_PIN_TAIL]
        assert downstream_response_headers(headers) == [(b"X-B", b"2")]


def test_pin_connection_list_without_spaces_drops_each() -> None:
    headers = [
        (b"Connection", b"x-a,x-b"),
        (b"X-A", b"1"),
        (b"X-B", b"2"),
        (b"X-AB", b"3"),
        (b"X-C", b"4"),
    ]
    assert upstream_request_headers(headers, **_PIN_CLIENT) == [
        (b"X-AB", b"3"),
        (b"X-C", b"4"),
        *_PIN_TAIL,
    ]
    assert downstream_response_headers(headers) == [(b"X-AB", b"3"), (b"X-C", b"4")]
    assert strip_hop_by_hop(headers) == [(b"X-AB", b"3"), (b"X-C", b"4")]


# Every control byte and what a quoted Forwarded value makes of it: HTAB is
# the one control a quoted-string may carry (RFC 9110 section 5.6.4), the
# others are left out; '"' and '\' are escaped; obs-text (0x80-0xff) is kept.
_PIN_QUOTED = {byte: b'"az"' for byte in [*range(0x00, 0x20), 0x7F]}
_PIN_QUOTED[0x09] = b'"a\tz"'
_PIN_QUOTED[0x22] = b'"a\\"z"'
_PIN_QUOTED[0x5C] = b'"a\\\\z"'
_PIN_QUOTED[0x20] = b'"a z"'
_PIN_QUOTED[0x80] = b'"a\x80z"'
_PIN_QUOTED[0xFF] = b'"a\xffz"'


@pytest.mark.parametrize("byte", sorted(_PIN_QUOTED), ids=lambda b: f"0x{b:02x}")
def test_pin_forwarded_quoted_host_per_byte(byte: int) -> None:
    host = b"a" + bytes([byte]) + b"z"
    quoted = _PIN_QUOTED[byte]
    assert forwarded_element("192.0.2.1", "https", host) == (
        b"for=192.0.2.1;proto=https;host=" + quoted
    )
    result = upstream_request_headers([(b"Host", host)], client_ip="192.0.2.1", proto="https", host=host)
    assert (b"Forwarded", b"for=192.0.2.1;proto=https;host=" + quoted) in result
    # X-Forwarded-Host is not a quoted format: the host goes as it came.
    assert (b"X-Forwarded-Host", host) in result


def test_pin_forwarded_quoting_of_the_for_node() -> None:
    # A node that is not an address is quoted like a host, controls left out.
    assert forwarded_element("a\x00b\x7fc\td\"e\\f", "http", None) == (
        b'for="abc\td\\"e\\\\f";proto=http'
    )
    # Tokens go as they are; anything else is a quoted-string.
    assert forwarded_element("unknown", "http", None) == b"for=unknown;proto=http"
    assert forwarded_element("_hidden", "http", b"a b") == b'for=_hidden;proto=http;host="a b"'
    assert forwarded_element("::1", "http", b"") == b'for="[::1]";proto=http;host=""'
    assert forwarded_element("192.0.2.1", "http", b"[::1]:8443") == (
        b'for=192.0.2.1;proto=http;host="[::1]:8443"'
    )
    assert forwarded_element("192.0.2.1", "h t", None) == b'for=192.0.2.1;proto="h t"'
