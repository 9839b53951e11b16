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


# --- Pinned edges (issue 14): today's exact answer at each limit. ----------------

_LABEL_63 = "a" * 63
_NAME_253 = ".".join([_LABEL_63] * 3 + ["b" * 61])  # the longest name RFC 1035 allows
_NAME_254 = ".".join([_LABEL_63] * 3 + ["b" * 62])


def test_pin_name_lengths() -> None:
    assert (len(_NAME_253), len(_NAME_254)) == (253, 254)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        # A label of digits is a name unless it is the last one.
        ("163.com", "163.com"),
        ("163.COM.:443", "163.com"),
        (b"163.com", "163.com"),
        ("1.163.com", "1.163.com"),
        ("a.163", None),
        ("163", None),
        ("1.2.3", None),
        ("0.0.0.0", "0.0.0.0"),
        # Labels of 63 and 64 characters.
        (_LABEL_63 + ".example", _LABEL_63 + ".example"),
        ("a" * 64 + ".example", None),
        (_LABEL_63, _LABEL_63),
        ("a" * 64, None),
        # Names of 253 and 254 characters, the trailing dot not counted.
        (_NAME_253, _NAME_253),
        (_NAME_253 + ".", _NAME_253),
        (_NAME_253 + ":443", _NAME_253),
        (_NAME_254, None),
        (_NAME_254 + ".", None),
        # The unspecified IPv6 address, bracketed or not.
        ("[::]", "::"),
        ("[::]:80", "::"),
        ("::", "::"),
        ("[0.0.0.0]", None),
        # A bare IPv6 literal is taken when the whole value is an address,
        # so a bare "::1" with a port reads as another address.
        ("::1", "::1"),
        (b"::1", "::1"),
        ("::1:8443", "::1:8443"),
        ("[::1]:8443", "::1"),
        # Bytes that are not UTF-8 make no name; UTF-8 makes an A-label.
        (b"\xff.example", None),
        (b"caf\xe9.example", None),  # Latin-1
        (b"example.com\x80", None),
        (b"[::1]\xff", None),
        (b"caf\xc3\xa9.example", "xn--caf-dma.example"),
    ],
)
def test_pin_normalise_host_edges(host: str | bytes, expected: str | None) -> None:
    assert normalise_host(host) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("163.com", "163.com"),
        ("a.163", None),
        (_LABEL_63 + ".example", _LABEL_63 + ".example"),
        ("a" * 64 + ".example", None),
        (_NAME_253, _NAME_253),
        (_NAME_254, None),
        ("[::]", "::"),
        ("::", "::"),
        ("::1", "::1"),
        ("[::]:80", None),  # a name, not a Host: no port
        (b"\xff.example", None),
        (b"caf\xc3\xa9.example", "xn--caf-dma.example"),
    ],
)
def test_pin_normalise_name_edges(name: str | bytes, expected: str | None) -> None:
    assert normalise_name(name) == expected


def test_pin_patterns_at_the_edges() -> None:
    assert normalise_pattern("163.com") == "163.com"
    assert normalise_pattern("*.163.com") == "*.163.com"
    assert normalise_pattern(_NAME_253) == _NAME_253
    assert normalise_pattern("[::]") == "::"
    assert normalise_pattern("::") == "::"
    for bad in ("a.163", _NAME_254, "a" * 64 + ".example", "*." + _NAME_254, "*.a.163"):
        with pytest.raises(ValueError, match="invalid"):
            normalise_pattern(bad)
    # The limit applies to the base of a wildcard: "*." over 253 characters is
    # taken, though no name it would cover (255 or more) is valid.
    assert normalise_pattern("*." + _NAME_253) == "*." + _NAME_253
    assert normalise_host("x." + _NAME_253) is None
    # The wildcard of a name of digits, and none for an address.
    assert wildcard_of("163.com") == "*.com"
    assert wildcard_of("1.163.com") == "*.163.com"
    assert wildcard_of("::") is None
    assert covered_by("www.163.com", frozenset({"*.163.com"})) is True
    assert covered_by("::", frozenset({"::"})) is True
    assert covered_by("::1", frozenset({"::"})) is False
