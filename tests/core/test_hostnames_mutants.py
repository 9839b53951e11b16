"""Edges of edgeproxy.core.hostnames that mutation testing found unpinned.

Each test kills mutants of ``tools/mutation.py hostnames`` that survived
tests/test_hostnames.py (docs/testing.md lists them): the length limits at
their exact bounds, the label alphabet, unbalanced brackets, the port after a
bracketed address and the bare ``::1``.
"""

from __future__ import annotations

import pytest

from edgeproxy.core.hostnames import normalise_host, normalise_name, normalise_pattern

# Every character a normalised label may hold (lower case: names are lowered first).
LABEL_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789-_"


def name_of_length(length: int) -> str:
    """A valid-looking name of exactly ``length`` characters: 63-character labels,
    then one shorter alphabetic label."""
    labels = []
    remaining = length
    while remaining > 64:
        labels.append("a" * 63)
        remaining -= 64
    labels.append("b" * remaining)
    name = ".".join(labels)
    assert len(name) == length
    return name


@pytest.mark.parametrize(("length", "valid"), [(252, True), (253, True), (254, False)])
def test_name_length_bound_is_253(length: int, valid: bool) -> None:
    name = name_of_length(length)
    assert normalise_name(name) == (name if valid else None)
    assert normalise_host(f"{name}:443") == (name if valid else None)


def test_trailing_dot_does_not_count_towards_253() -> None:
    name = name_of_length(253)
    assert normalise_name(name + ".") == name


@pytest.mark.parametrize(("length", "valid"), [(62, True), (63, True), (64, False)])
def test_label_length_bound_is_63(length: int, valid: bool) -> None:
    name = "x" * length + ".example"
    assert normalise_name(name) == (name if valid else None)


def test_a_label_may_use_the_whole_alphabet() -> None:
    # All 38 characters in one label: the label's characters must be a subset of
    # the alphabet, not a proper one.
    name = LABEL_ALPHABET + ".example"
    assert normalise_name(name) == name
    assert normalise_name(LABEL_ALPHABET.upper() + ".example") == name


@pytest.mark.parametrize("name", ["[::1", "[::1x", "[::1]]", "::1]", "[192.0.2.1"])
def test_unbalanced_brackets_are_no_name(name: str) -> None:
    assert normalise_name(name) is None
    with pytest.raises(ValueError, match="invalid hostname"):
        normalise_pattern(name)


@pytest.mark.parametrize("host", ["[::1]:x1", "[::1]:+1", "[::1]:-1", "[::1]:\uff181"])
def test_port_after_brackets_is_checked_from_its_first_character(host: str) -> None:
    assert normalise_host(host) is None


def test_bracketed_address_with_port() -> None:
    assert normalise_host("[::1]:1") == "::1"
    assert normalise_host("[::ffff:192.0.2.1]:8443") == normalise_name("::ffff:192.0.2.1")


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("::1", "::1"),  # two colons: the bare loopback is an address, not "name:port"
        ("::", "::"),
        ("fe80::1", "fe80::1"),
        ("::1:80", "::1:80"),  # three colons parse as an address too
    ],
)
def test_bare_ipv6_with_two_colons(host: str, expected: str) -> None:
    assert normalise_host(host) == expected


def test_one_colon_is_a_port() -> None:
    assert normalise_host("localhost:1") == "localhost"
    assert normalise_host(":1") is None
