"""
Conditional requests answered from the cache (``edgeproxy.core.conditional``):
entity-tag comparison and If-None-Match / If-Modified-Since evaluation as
RFC 9110 section 13 (and RFC 9111 4.3.2, 4.3.4) say, one test per rule.
"""

from __future__ import annotations

import email.utils

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeproxy.core.conditional import (
    bypasses_cache,
    not_modified,
    parse_etag,
    strong_match,
    updates_stored,
    weak_match,
)
from edgeproxy.core.httpcache import StoredHead

T = 1_700_000_000.0


def http_date(seconds: float) -> bytes:
    return email.utils.formatdate(seconds, usegmt=True).encode()


def stored(*lines: bytes, status: int = 200, response_time: float = T) -> StoredHead:
    return StoredHead(status, b"OK", list(lines), response_time, response_time, (), 3)


def inm(*values: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"If-None-Match", value) for value in values]


def ims(*values: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"If-Modified-Since", value) for value in values]


# -- entity tags (RFC 9110 8.8.3) ---------------------------------------------------------------


def test_rfc9110_8_8_3_entity_tags() -> None:
    assert parse_etag(b'"xyzzy"') == (False, b'"xyzzy"')
    assert parse_etag(b'W/"xyzzy"') == (True, b'"xyzzy"')
    assert parse_etag(b'""') == (False, b'""')
    assert parse_etag(b' "a" ') == (False, b'"a"')
    assert parse_etag(b'"caf\xc3\xa9"') == (False, b'"caf\xc3\xa9"')


@pytest.mark.parametrize(
    "value", [b"xyzzy", b'w/"a"', b'W\\"a"', b'W"a"', b'"a"b"', b'"a', b'"a b"', b"", b'"a",']
)
def test_rfc9110_8_8_3_not_entity_tags(value: bytes) -> None:
    assert parse_etag(value) is None


@pytest.mark.parametrize(
    ("a", "b", "strong", "weak"),
    [
        (b'W/"1"', b'W/"1"', False, True),
        (b'W/"1"', b'W/"2"', False, False),
        (b'W/"1"', b'"1"', False, True),
        (b'"1"', b'"1"', True, True),
        (b'"1"', b'"2"', False, False),
        (b"1", b"1", False, False),
    ],
)
def test_rfc9110_8_8_3_2_comparison_table(a: bytes, b: bytes, strong: bool, weak: bool) -> None:
    assert strong_match(a, b) is strong and strong_match(b, a) is strong
    assert weak_match(a, b) is weak and weak_match(b, a) is weak


# -- If-None-Match (RFC 9110 13.1.2) ------------------------------------------------------------


def test_rfc9110_13_1_2_a_matching_strong_etag_is_not_modified() -> None:
    head = stored(b'ETag: "abcdef"')
    assert not_modified(b"GET", inm(b'"abcdef"'), head)
    assert not_modified(b"HEAD", inm(b'"abcdef"'), head)
    assert not not_modified(b"GET", inm(b'"abcdeg"'), head)


def test_rfc9110_13_1_2_if_none_match_uses_the_weak_comparison() -> None:
    assert not_modified(b"GET", inm(b'W/"abc"'), stored(b'ETag: W/"abc"'))
    assert not_modified(b"GET", inm(b'W/"abc"'), stored(b'ETag: "abc"'))
    assert not_modified(b"GET", inm(b'"abc"'), stored(b'ETag: W/"abc"'))


@pytest.mark.parametrize(
    "value", [b'"abcdef", "1234", "5678"', b'"1234", "abcdef", "5678"', b'"1234","5678" ,"abcdef"']
)
def test_rfc9110_13_1_2_any_member_of_the_list_matches(value: bytes) -> None:
    assert not_modified(b"GET", inm(value), stored(b'ETag: "abcdef"'))


def test_rfc9110_5_3_several_if_none_match_lines_are_one_list() -> None:
    assert not_modified(b"GET", inm(b'"1"', b'"2", "abc"'), stored(b'ETag: "abc"'))


def test_rfc9110_13_1_2_a_tag_containing_a_comma_is_one_member() -> None:
    head = stored(b'ETag: "a,b"')
    assert not_modified(b"GET", inm(b'"x", "a,b"'), head)
    assert not not_modified(b"GET", inm(b'"a", "b"'), head)


def test_rfc9110_13_1_2_star_matches_any_stored_response() -> None:
    assert not_modified(b"GET", inm(b"*"), stored(b'ETag: "abc"'))
    assert not_modified(b"GET", inm(b"*"), stored(b"X: 1"))


def test_rfc9110_13_1_2_members_that_are_not_entity_tags_never_match() -> None:
    head = stored(b"ETag: abcdef")
    assert not not_modified(b"GET", inm(b"abcdef"), head)
    assert not not_modified(b"GET", inm(b'"abcdef"'), head)
    assert not_modified(b"GET", inm(b'junk here, W/"abcdef"'), stored(b'ETag: "abcdef"'))


def test_rfc9110_13_2_2_if_none_match_takes_precedence_over_if_modified_since() -> None:
    head = stored(b'ETag: "abc"', b"Last-Modified: " + http_date(T - 5000))
    headers = inm(b'"other"') + ims(http_date(T))
    assert not not_modified(b"GET", headers, head)
    headers = inm(b'"abc"') + ims(http_date(T - 10**6))
    assert not_modified(b"GET", headers, head)


# -- If-Modified-Since (RFC 9110 13.1.3; RFC 9111 4.3.2) ------------------------------------------


def test_rfc9110_13_1_3_not_modified_since_a_later_or_equal_date() -> None:
    head = stored(b"Last-Modified: " + http_date(T - 3000), b"Date: " + http_date(T))
    assert not_modified(b"GET", ims(http_date(T - 3000)), head)
    assert not_modified(b"GET", ims(http_date(T - 2000)), head)
    assert not not_modified(b"GET", ims(http_date(T - 3001)), head)


def test_rfc9110_13_1_3_if_modified_since_in_any_date_format() -> None:
    head = stored(b"Last-Modified: Sun, 06 Nov 1994 08:49:37 GMT")
    assert not_modified(b"GET", ims(b"Sunday, 06-Nov-94 08:49:37 GMT"), head)
    assert not_modified(b"GET", ims(b"Sun Nov  6 08:49:37 1994"), head)


def test_rfc9110_13_1_3_an_invalid_or_repeated_if_modified_since_is_ignored() -> None:
    head = stored(b"Last-Modified: " + http_date(T - 3000))
    assert not not_modified(b"GET", ims(b"yesterday"), head)
    assert not not_modified(b"GET", ims(http_date(T), http_date(T)), head)


def test_rfc9111_4_3_2_without_last_modified_the_stored_date_is_used() -> None:
    head = stored(b"Date: " + http_date(T - 100), response_time=T)
    assert not_modified(b"GET", ims(http_date(T - 100)), head)
    assert not not_modified(b"GET", ims(http_date(T - 101)), head)


def test_rfc9111_4_3_2_without_a_date_the_time_it_was_received_is_used() -> None:
    head = stored(b"X: 1", response_time=T)
    assert not_modified(b"GET", ims(http_date(T)), head)
    assert not not_modified(b"GET", ims(http_date(T - 1)), head)


def test_an_invalid_stored_last_modified_answers_no_if_modified_since() -> None:
    head = stored(b"Last-Modified: yesterday", b"Date: " + http_date(T - 100))
    assert not not_modified(b"GET", ims(http_date(T)), head)


# -- when preconditions are not evaluated (RFC 9110 13.1, 13.2.1) ---------------------------------


def test_rfc9110_13_1_2_only_get_and_head_are_answered_not_modified() -> None:
    head = stored(b'ETag: "abc"', b"Last-Modified: " + http_date(T - 5))
    for method in (b"POST", b"PUT", b"DELETE", b"get"):
        assert not not_modified(method, inm(b'"abc"'), head)
        assert not not_modified(method, ims(http_date(T)), head)


def test_rfc9110_13_2_1_preconditions_apply_only_to_a_2xx() -> None:
    for status in (301, 404, 410, 501):
        head = stored(b'ETag: "abc"', status=status)
        assert not not_modified(b"GET", inm(b'"abc"'), head), status
    assert not_modified(b"GET", inm(b'"abc"'), stored(b'ETag: "abc"', status=203))


def test_no_preconditions_no_304() -> None:
    assert not not_modified(b"GET", [(b"Accept", b"*/*")], stored(b'ETag: "abc"'))


def test_header_names_are_case_insensitive() -> None:
    head = stored(b'ETag: "abc"', b"Last-Modified: " + http_date(T - 5))
    assert not_modified(b"GET", [(b"if-none-match", b'"abc"')], head)
    assert not_modified(b"GET", [(b"IF-MODIFIED-SINCE", http_date(T))], head)


@pytest.mark.parametrize("name", [b"Range", b"If-Range", b"If-Match", b"if-unmodified-since"])
def test_rfc9111_4_3_2_requests_the_cache_passes_through(name: bytes) -> None:
    assert bypasses_cache([(b"Host", b"a"), (name, b"x")])


def test_rfc9111_4_3_2_plain_and_cache_conditional_requests_are_not_passed_through() -> None:
    assert not bypasses_cache([(b"Host", b"a"), (b"If-None-Match", b"*")])
    assert not bypasses_cache([(b"If-Modified-Since", http_date(T))])
    assert not bypasses_cache([])


# -- which stored response a 304 updates (RFC 9111 4.3.4) -----------------------------------------


def test_rfc9111_4_3_4_a_strong_validator_must_match_strongly() -> None:
    assert updates_stored(stored(b'ETag: "a"'), [b'ETag: "a"'])
    assert not updates_stored(stored(b'ETag: "a"'), [b'ETag: "b"'])
    assert not updates_stored(stored(b'ETag: W/"a"'), [b'ETag: "a"'])
    assert not updates_stored(stored(b"X: 1"), [b'ETag: "a"'])


def test_rfc9111_4_3_4_a_weak_validator_must_correspond() -> None:
    assert updates_stored(stored(b'ETag: W/"a"'), [b'ETag: W/"a"'])
    assert updates_stored(stored(b'ETag: "a"'), [b'ETag: W/"a"'])
    assert not updates_stored(stored(b'ETag: W/"a"'), [b'ETag: W/"b"'])
    assert not updates_stored(stored(b'ETag: "a"'), [b"ETag: a"])


def test_rfc9111_4_3_4_last_modified_must_be_the_same_date() -> None:
    modified = b"Last-Modified: " + http_date(T - 50)
    assert updates_stored(stored(modified), [b"Last-Modified: " + http_date(T - 50)])
    assert not updates_stored(stored(modified), [b"Last-Modified: " + http_date(T - 49)])
    assert not updates_stored(stored(b"X: 1"), [modified])
    assert not updates_stored(stored(modified), [b"Last-Modified: soon"])


def test_rfc9111_4_3_4_a_304_without_validators_updates_the_response_it_validated() -> None:
    assert updates_stored(stored(b'ETag: "a"'), [b"Cache-Control: max-age=5"])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=30), st.binary(max_size=30))
def test_rfc9110_8_8_3_2_strong_match_implies_weak_match(a: bytes, b: bytes) -> None:
    if strong_match(a, b):
        assert weak_match(a, b)
    assert weak_match(a, b) is weak_match(b, a)
    tags = b", ".join(tag for tag in (a, b) if parse_etag(tag) is not None)
    if parse_etag(a) is not None and tags:
        assert not_modified(b"GET", inm(tags), stored(b"ETag: " + a.strip(b" \t")))
