"""edgeproxy.core.paths: which request paths hold a dot segment."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeproxy.core.paths import has_dot_segment

DOT = [
    b"/.", b"/..", b"/a/.", b"/a/..", b"/a/./b", b"/a/../b", b"/a/%2e/b", b"/a/%2E%2e/b",
    b"/a/.%2e/b", b"/a%2f..%2fb", b"/a%2F.", b"/a/..%2Fb", b"/a/.%2fb/", b"..", b".",
    # Path parameters after the dots (Tomcat, Jetty, Spring drop them, then resolve "..").
    b"/public/..;/admin", b"/public/..;jsessionid=1/admin", b"/a/.;/b", b"/a/..%3b/b",
    b"/a/%2e%2e%3B/b",
    # Backslash separators (Windows servers), literal or encoded.
    b"/public/..\\admin", b"/a\\..\\b", b"/a/..%5cb", b"/a%5C..%5Cb", b"\\..",
]
NOT_DOT = [
    b"/", b"/a", b"/a.js", b"/.well-known/x", b"/a/..b", b"/a/b..", b"/a/...", b"/a/%2e%2e%2e",
    b"/%2fa", b"/a%2fb", b"/a/%252e%252e/b", b"/a%2eb", b"/a/..b;c", b"/a;..", b"/a\\b.c",
    b"/a/%5cb", b"/a/x..;/b",
]


@pytest.mark.parametrize("path", DOT)
def test_dot_segments_literal_or_encoded(path: bytes) -> None:
    assert has_dot_segment(path)


@pytest.mark.parametrize("path", NOT_DOT)
def test_dots_inside_segments_are_not_dot_segments(path: bytes) -> None:
    assert not has_dot_segment(path)


def _decoded_segments(path: bytes) -> list[bytes]:
    # The reference: decode %2e and %2f (any case) once, split on "/".
    text = path.replace(b"%2e", b".").replace(b"%2E", b".")
    text = text.replace(b"%2f", b"/").replace(b"%2F", b"/")
    return text.split(b"/")


@given(st.lists(st.sampled_from([b"a", b".", b"..", b"%2e", b"%2E", b"...", b".a", b"%2e%2e"]), max_size=6),
       st.sampled_from([b"/", b"%2f", b"%2F"]))
def test_agrees_with_decoding_the_separators_and_dots(parts: list[bytes], separator: bytes) -> None:
    path = b"/" + separator.join(parts)
    assert has_dot_segment(path) == any(s in (b".", b"..") for s in _decoded_segments(path))
