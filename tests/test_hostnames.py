"""Hostname normalisation and wildcard matching (edgeproxy.core.hostnames)."""

from __future__ import annotations

import pytest

from edgeproxy.core.hostnames import (
    covered_by,
    normalise_host,
    normalise_name,
    normalise_pattern,
    wildcard_of,
)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("example.com", "example.com"),
        ("Example.COM", "example.com"),
        (b"Example.COM", "example.com"),
        ("example.com:8443", "example.com"),
        (b"example.com:443", "example.com"),
        ("example.com.", "example.com"),
        ("example.com.:80", "example.com"),
        ("  example.com  ", "example.com"),
        ("localhost", "localhost"),
        ("a_b.example", "a_b.example"),
        ("127.0.0.1", "127.0.0.1"),
        ("127.0.0.1:8080", "127.0.0.1"),
        ("[::1]", "::1"),
        ("[::1]:8443", "::1"),
        ("[2001:DB8:0:0::1]:80", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),  # bare IPv6: lenient
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example:443", "xn--bcher-kva.example"),
        ("bücher.example".encode(), "xn--bcher-kva.example"),
        ("straße.de", "xn--strae-oqa.de"),  # IDNA 2008 (UTS 46 non-transitional)
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
    ],
)
def test_normalise_host(host: str | bytes, expected: str) -> None:
    assert normalise_host(host) == expected


@pytest.mark.parametrize(
    "host",
    [
        None,
        "",
        "   ",
        b"\xff\xfe",
        "example.com:",
        "example.com:http",
        "example.com:\uff18\uff10",  # fullwidth digits are no port
        "example.com:80:80",
        "exa mple.com",
        "user@example.com",
        "example.com/path",
        "a..b",
        ".example.com",
        "example.com..",
        ".",
        "*.example.com",
        "a" * 64 + ".example",
        ".".join(["a" * 60] * 5),  # longer than 253
        "[::1",
        "[::1]x",
        "[::1]:",
        "[::1]:http",
        "[127.0.0.1]",
        "[not-an-ip]",
        "1:2:3",
        "127.1",  # a malformed address, not a name
        "1.2.3.4.5",
        "ex,ample.com",
    ],
)
def test_normalise_host_invalid(host: str | bytes | None) -> None:
    assert normalise_host(host) is None


def test_normalise_name_rejects_port() -> None:
    assert normalise_name("example.com:80") is None
    assert normalise_name("[::1]") == "::1"
    assert normalise_name("::1") == "::1"
    assert normalise_name(b"EXAMPLE.com.") == "example.com"


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("shop.example", "shop.example"),
        ("Shop.Example.", "shop.example"),
        ("*.shop.example", "*.shop.example"),
        ("*.SHOP.example.", "*.shop.example"),
        ("*.bücher.example", "*.xn--bcher-kva.example"),
        ("192.0.2.1", "192.0.2.1"),
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("2001:DB8::0:1", "2001:db8::1"),
    ],
)
def test_normalise_pattern(pattern: str, expected: str) -> None:
    assert normalise_pattern(pattern) == expected


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("", "invalid hostname ''"),
        ("exa mple.com", "invalid hostname"),
        ("example.com:443", "invalid hostname"),
        ("*", "only a whole leading label"),
        ("*example.com", "only a whole leading label"),
        ("a.*.example.com", "only a whole leading label"),
        ("w*.example.com", "only a whole leading label"),
        ("*.*.example.com", "invalid wildcard hostname"),
        ("*.", "invalid wildcard hostname"),
        ("*.192.0.2.1", "invalid wildcard hostname"),
        ("*.::1", "invalid wildcard hostname"),
        ("127.1", "invalid hostname"),
    ],
)
def test_normalise_pattern_errors(pattern: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        normalise_pattern(pattern)
    assert message in str(caught.value)
    assert repr(pattern) in str(caught.value)


def test_normalise_pattern_type() -> None:
    with pytest.raises(TypeError, match="hostname must be a string"):
        normalise_pattern(b"example.com")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.example.com", "*.example.com"),
        ("a.b.example.com", "*.b.example.com"),
        ("example.com", "*.com"),
        ("localhost", None),
        ("192.0.2.1", None),
        ("::1", None),
        ("2001:db8::1", None),
    ],
)
def test_wildcard_of(name: str, expected: str | None) -> None:
    assert wildcard_of(name) == expected


CERTIFICATE = frozenset({"app.example", "*.shop.example", "192.0.2.1", "2001:db8::1"})


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("app.example", True),
        ("a.shop.example", True),
        ("shop.example", False),  # a wildcard covers one label, not the bare domain
        ("a.b.shop.example", False),  # ... and not two
        ("www.app.example", False),
        ("192.0.2.1", True),
        ("2001:db8::1", True),
        ("192.0.2.2", False),
        ("localhost", False),
    ],
)
def test_covered_by(name: str, expected: bool) -> None:
    assert covered_by(name, CERTIFICATE) is expected
    assert covered_by(name, frozenset()) is False
