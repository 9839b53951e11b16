"""Edges of edgeproxy.core.hostnames that mutation testing found unpinned.

Each test kills mutants of ``tools/mutation.py hostnames`` that survived
tests/core/test_hostnames.py (docs/testing.md lists them): the label alphabet,
unbalanced brackets given to ``normalise_name``, and the port after a
bracketed address checked from its first character.
"""

from __future__ import annotations

import pytest

from edgeproxy.core.hostnames import normalise_host, normalise_name, normalise_pattern

# Every character a normalised label may hold (lower case: names are lowered first).
LABEL_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789-_"


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


def test_a_one_digit_port_after_brackets() -> None:
    assert normalise_host("[::1]:1") == "::1"
