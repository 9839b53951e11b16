"""edgeproxy.core.backends: what hides the backends in a response."""

from __future__ import annotations

import pytest

from edgeproxy.core.backends import backend_authorities, hide_backend_line

BACKENDS = backend_authorities(["10.0.0.5:8080", "[::1]:80", "App.Internal:443"])
PUBLIC = b"https://shop.example"


def test_authorities_with_their_port_and_without_a_default_one_for_its_scheme() -> None:
    assert BACKENDS == {
        b"10.0.0.5:8080",
        b"[::1]:80",
        b"http://[::1]",
        b"app.internal:443",
        b"https://app.internal",
    }


@pytest.mark.parametrize(
    ("lname", "line", "hidden"),
    [
        (b"location", b"Location: http://10.0.0.5:8080/login?x=1", b"Location: https://shop.example/login?x=1"),
        (b"location", b"Location:http://10.0.0.5:8080", b"Location: https://shop.example"),
        (b"location", b"location: HTTP://10.0.0.5:8080/a#f", b"location: https://shop.example/a#f"),
        (b"content-location", b"Content-Location: http://[::1]/a", b"Content-Location: https://shop.example/a"),
        (b"location", b"Location: https://app.internal/x", b"Location: https://shop.example/x"),
        (b"location", b"Location: http://user@10.0.0.5:8080/x", b"Location: https://shop.example/x"),
        (b"refresh", b"Refresh: 5; url=http://10.0.0.5:8080/next", b"Refresh: 5; url=https://shop.example/next"),
        (b"refresh", b"Refresh: 0;URL='http://10.0.0.5:8080/n'", b"Refresh: 0;URL='https://shop.example/n'"),
    ],
)
def test_a_url_naming_a_backend_is_rewritten_to_the_public_origin(
    lname: bytes, line: bytes, hidden: bytes
) -> None:
    assert hide_backend_line(lname, line, BACKENDS, PUBLIC) == hidden


@pytest.mark.parametrize(
    ("lname", "line"),
    [
        (b"location", b"Location: /relative"),
        (b"location", b"Location: https://other.example/x"),
        (b"location", b"Location: http://10.0.0.5:9999/x"),  # another port: not an endpoint
        (b"location", b"Location: http://app.internal/x"),  # port 80: not the endpoint's 443
        (b"refresh", b"Refresh: 5"),
        (b"refresh", b"Refresh: 5; url=/next"),
        (b"location", b"Location: ftp://10.0.0.5:8080/x"),
    ],
)
def test_anything_else_is_left_as_it_is(lname: bytes, line: bytes) -> None:
    assert hide_backend_line(lname, line, BACKENDS, PUBLIC) == line
