"""Reverse-proxy header rewriting (edgeproxy.headers)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.web.http_headers import Headers

from edgeproxy.headers import (
    HOP_BY_HOP,
    downstream_response_headers,
    forwarded_element,
    strip_hop_by_hop,
    upstream_request_headers,
)

HeaderList = list[tuple[bytes, list[bytes]]]


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
        (b"Host", [b"a.example"]),
        (b"CONNECTION", [b"keep-alive"]),
        (b"Keep-Alive", [b"timeout=5"]),
        (b"transfer-encoding", [b"chunked"]),
        (b"Te", [b"trailers"]),
        (b"Trailer", [b"X-Checksum"]),
        (b"Upgrade", [b"websocket"]),
        (b"Proxy-Connection", [b"close"]),
        (b"Accept", [b"text/html", b"*/*"]),
    ]
    assert strip_hop_by_hop(headers) == [
        (b"Host", [b"a.example"]),
        (b"Accept", [b"text/html", b"*/*"]),
    ]


def test_strip_headers_named_in_connection() -> None:
    headers = [
        (b"Connection", [b"close, X-Secret ,\tx-other", b" , Foo"]),
        (b"x-secret", [b"1"]),
        (b"X-Other", [b"2"]),
        (b"FOO", [b"3"]),
        (b"X-Kept", [b"4"]),
    ]
    assert strip_hop_by_hop(headers) == [(b"X-Kept", [b"4"])]


def test_strip_accepts_a_generator_and_twisted_headers() -> None:
    raw = Headers({b"Connection": [b"x-a"], b"X-A": [b"1"], b"X-B": [b"2", b"3"]})
    result = strip_hop_by_hop(raw.getAllRawHeaders())
    assert result == [(b"X-B", [b"2", b"3"])]
    assert strip_hop_by_hop(pair for pair in [(b"a", (b"1",))]) == [(b"a", [b"1"])]


def test_downstream_invents_nothing() -> None:
    headers = [
        (b"Content-Type", [b"text/html"]),
        (b"Set-Cookie", [b"a=1", b"b=2"]),
        (b"Transfer-Encoding", [b"chunked"]),
        (b"Connection", [b"keep-alive"]),
        (b"Content-Length", [b"10"]),
    ]
    assert downstream_response_headers(headers) == [
        (b"Content-Type", [b"text/html"]),
        (b"Set-Cookie", [b"a=1", b"b=2"]),
        (b"Content-Length", [b"10"]),
    ]
    assert downstream_response_headers([]) == []


def as_dict(headers: HeaderList) -> dict[bytes, list[bytes]]:
    result: dict[bytes, list[bytes]] = {}
    for name, values in headers:
        result.setdefault(name.lower(), []).extend(values)
    return result


def test_upstream_fresh_request() -> None:
    headers = [(b"Host", [b"shop.example"]), (b"Accept", [b"*/*"]), (b"Connection", [b"close"])]
    result = upstream_request_headers(
        headers, client_ip="192.0.2.7", proto="https", host=b"shop.example"
    )
    assert result == [
        (b"Host", [b"shop.example"]),
        (b"Accept", [b"*/*"]),
        (b"X-Forwarded-For", [b"192.0.2.7"]),
        (b"X-Forwarded-Proto", [b"https"]),
        (b"X-Forwarded-Host", [b"shop.example"]),
        (b"Forwarded", [b"for=192.0.2.7;proto=https;host=shop.example"]),
        (b"Via", [b"1.1 edgeproxy"]),
    ]


def test_upstream_appends_to_incoming_values() -> None:
    headers = [
        (b"host", [b"shop.example:8443"]),
        (b"x-forwarded-for", [b"203.0.113.1", b"198.51.100.2, 10.0.0.1"]),
        (b"X-Forwarded-Proto", [b"http"]),
        (b"X-Forwarded-Host", [b"evil.example"]),
        (b"Forwarded", [b"for=203.0.113.1"]),
        (b"Via", [b"1.0 fred", b"1.1 p.example (Apache/1.1)"]),
        (b"Cookie", [b"a=1"]),
    ]
    result = upstream_request_headers(
        headers, client_ip="2001:db8::1", proto="https", host=b"shop.example:8443", via=b"1.1 edge"
    )
    assert result == [
        (b"host", [b"shop.example:8443"]),
        (b"X-Forwarded-For", [b"203.0.113.1, 198.51.100.2, 10.0.0.1, 2001:db8::1"]),
        (b"X-Forwarded-Proto", [b"https"]),
        (b"X-Forwarded-Host", [b"shop.example:8443"]),
        (
            b"Forwarded",
            [b'for=203.0.113.1, for="[2001:db8::1]";proto=https;host="shop.example:8443"'],
        ),
        (b"Via", [b"1.0 fred, 1.1 p.example (Apache/1.1), 1.1 edge"]),
        (b"Cookie", [b"a=1"]),
    ]


def test_upstream_without_host() -> None:
    headers = [(b"X-Forwarded-Host", [b"spoofed.example"]), (b"Accept", [b"*/*"])]
    result = upstream_request_headers(headers, client_ip="192.0.2.7", proto="http", host=None)
    assert as_dict(result) == {
        b"accept": [b"*/*"],
        b"x-forwarded-for": [b"192.0.2.7"],
        b"x-forwarded-proto": [b"http"],
        b"forwarded": [b"for=192.0.2.7;proto=http"],
        b"via": [b"1.1 edgeproxy"],
    }


def test_upstream_keeps_host_even_if_named_in_connection() -> None:
    headers = [(b"Host", [b"a.example"]), (b"Connection", [b"Host, X-Forwarded-For"])]
    headers.append((b"X-Forwarded-For", [b"1.2.3.4"]))
    result = as_dict(
        upstream_request_headers(headers, client_ip="192.0.2.7", proto="https", host=b"a.example")
    )
    assert result[b"host"] == [b"a.example"]
    assert result[b"x-forwarded-for"] == [b"192.0.2.7"]
    assert b"connection" not in result


def test_upstream_skips_empty_incoming_list_values() -> None:
    headers = [(b"Via", [b"", b"  "]), (b"X-Forwarded-For", [b" "])]
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


def cases(name: bytes) -> st.SearchStrategy[bytes]:
    return st.lists(st.booleans(), min_size=len(name), max_size=len(name)).map(
        lambda upper: bytes(
            c - 32 if u and 97 <= c <= 122 else c for c, u in zip(name.lower(), upper, strict=True)
        )
    )


names = st.sampled_from(sorted(HOP_BY_HOP) + [n.lower() for n in END_TO_END]).flatmap(cases)
value = st.one_of(
    st.binary(max_size=20),
    # Connection values naming other headers, in any case, with whitespace and commas
    st.lists(names, min_size=1, max_size=3).map(lambda ns: b" ,\t".join(ns)),
)
values = st.lists(value, min_size=1, max_size=3)
header_lists = st.lists(st.tuples(names, values), max_size=12)


@given(header_lists)
def test_property_no_hop_by_hop_survives(headers: Sequence[tuple[bytes, list[bytes]]]) -> None:
    result = strip_hop_by_hop(headers)
    assert not {name.lower() for name, _ in result} & HOP_BY_HOP


@given(header_lists)
def test_property_end_to_end_kept_in_order(headers: Sequence[tuple[bytes, list[bytes]]]) -> None:
    named_in_connection = {
        token.strip(b" \t").lower()
        for name, vs in headers
        if name.lower() == b"connection"
        for v in vs
        for token in v.split(b",")
    }
    expected = [
        (name, list(vs))
        for name, vs in headers
        if name.lower() not in HOP_BY_HOP and name.lower() not in named_in_connection
    ]
    assert strip_hop_by_hop(headers) == expected
    assert downstream_response_headers(headers) == expected


@given(
    header_lists, st.sampled_from(["192.0.2.1", "2001:db8::1"]), st.sampled_from(["http", "https"])
)
def test_property_upstream(
    headers: Sequence[tuple[bytes, list[bytes]]], client_ip: str, proto: str
) -> None:
    result = upstream_request_headers(headers, client_ip=client_ip, proto=proto, host=b"h.example")
    lowered = [name.lower() for name, _ in result]
    assert not set(lowered) & HOP_BY_HOP
    for added in [b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"via"]:
        assert lowered.count(added) == 1
    by_name = as_dict(result)
    assert by_name[b"x-forwarded-for"][0].endswith(client_ip.encode())
    assert by_name[b"x-forwarded-proto"] == [proto.encode()]
    # every surviving end-to-end header keeps its values in order
    kept = strip_hop_by_hop(headers, keep=frozenset({b"host"}))
    assert [pair for pair in result if pair[0].lower() in {n.lower() for n in END_TO_END}] == [
        pair for pair in kept if pair[0].lower() in {n.lower() for n in END_TO_END}
    ]
