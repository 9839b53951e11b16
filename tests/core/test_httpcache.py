"""
The shared-cache policy (``edgeproxy.core.httpcache``): one test per rule of
RFC 9111, RFC 5861 and RFC 9211, named after its section, and a property test
of freshness and age against a small reference model written from RFC 9111
4.2.1-4.2.3.
"""

from __future__ import annotations

import email.utils
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeproxy.core.httpcache import (
    CONFLICT,
    HEURISTIC_STATUSES,
    UNDERSTOOD_STATUSES,
    RequestPolicy,
    StoredHead,
    Use,
    cache_key,
    cache_status,
    delta_seconds,
    format_http_date,
    invalidated_keys,
    may_serve_stale_on_error,
    not_modified_lines,
    parse_cache_control,
    parse_http_date,
    refreshed,
    request_policy,
    served_lines,
    storable,
    stored_lines,
    usable,
    validators,
    vary_key,
    vary_matches,
)

T = 1_700_000_000.0  # the clock when the response arrived, unless a test says otherwise
PLAIN = request_policy([])


def http_date(seconds: float) -> bytes:
    """An IMF-fixdate written by the standard library (independent of ours)."""
    return email.utils.formatdate(seconds, usegmt=True).encode()


def stored(
    *lines: bytes,
    status: int = 200,
    request_time: float = T,
    response_time: float = T,
    heuristic_max: float = 86400.0,
) -> StoredHead:
    return StoredHead(
        status, b"OK", list(lines), request_time, response_time, (), 5, heuristic_max=heuristic_max
    )


def req(*pairs: tuple[bytes, bytes]) -> RequestPolicy:
    return request_policy(list(pairs))


def cc(value: bytes) -> RequestPolicy:
    return request_policy([(b"Cache-Control", value)])


# -- Cache-Control parsing (RFC 9111 5.2, RFC 9110 5.3) ------------------------------------------


def test_rfc9111_5_2_directive_names_are_case_insensitive_and_arguments_unquoted() -> None:
    assert parse_cache_control([b'MaX-AgE=60, No-Cache, private="Set-Cookie, X-A"']) == {
        b"max-age": b"60",
        b"no-cache": None,
        b"private": b"Set-Cookie, X-A",
    }


def test_rfc9111_5_2_quoted_string_arguments_lose_their_backslash_escapes() -> None:
    assert parse_cache_control([rb'ext="a\"b\\c", max-age="3600"']) == {
        b"ext": b'a"b\\c',
        b"max-age": b"3600",
    }


def test_rfc9110_5_3_every_cache_control_line_is_one_list() -> None:
    assert parse_cache_control([b"max-age=60", b"no-store", b" , public ,"]) == {
        b"max-age": b"60",
        b"no-store": None,
        b"public": None,
    }


def test_rfc9111_5_2_a_directive_inside_a_quoted_string_is_not_a_directive() -> None:
    assert parse_cache_control([b'extension="max-age=3600", max-age=1']) == {
        b"extension": b"max-age=3600",
        b"max-age": b"1",
    }
    assert parse_cache_control([b'max-age=1, extension="a, max-age=3600"'])[b"max-age"] == b"1"


def test_rfc9111_4_2_1_a_directive_repeated_with_another_argument_is_a_conflict() -> None:
    assert parse_cache_control([b"max-age=1800, max-age=1"]) == {b"max-age": CONFLICT}
    assert parse_cache_control([b"max-age=1", b"max-age=1800", b"max-age=1"]) == {
        b"max-age": CONFLICT
    }
    assert parse_cache_control([b"max-age=5, max-age=5"]) == {b"max-age": b"5"}
    assert delta_seconds(CONFLICT) is None


def test_rfc9111_5_2_whitespace_around_the_equals_sign_makes_the_piece_malformed() -> None:
    assert parse_cache_control([b"max-age =3600"]) == {}
    assert parse_cache_control([b"max-age= 3600, public"]) == {b"public": None}


def test_rfc9111_5_2_malformed_pieces_are_skipped() -> None:
    assert parse_cache_control([b"foo bar, max-age=5, =x, a=b=c, no-store"]) == {
        b"max-age": b"5",
        b"no-store": None,
    }
    assert parse_cache_control([b'public, private="unterminated, max-age=9']) == {b"public": None}
    assert parse_cache_control([b"", b",,,", b"   "]) == {}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=3))
def test_rfc9111_5_2_parsing_never_raises(values: list[bytes]) -> None:
    for name, argument in parse_cache_control(values).items():
        assert name == name.lower() and name
        assert argument is None or isinstance(argument, bytes)


def test_rfc9111_1_2_2_delta_seconds() -> None:
    assert delta_seconds(b"0") == 0
    assert delta_seconds(b"003600") == 3600
    assert delta_seconds(b"2147483647") == 2147483647
    assert delta_seconds(b"2147483648") == 2**31
    assert delta_seconds(b"99999999999") == 2**31
    for invalid in (None, b"", b"-1", b"1.5", b"3600.0", b" 1", b"a3600", b"3600a", b"'3600'"):
        assert delta_seconds(invalid) is None, invalid


# -- dates (RFC 9110 5.6.7) ---------------------------------------------------------------------

RFC_EXAMPLE = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT


def test_rfc9110_5_6_7_all_three_date_formats() -> None:
    assert parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT") == RFC_EXAMPLE
    assert parse_http_date(b"Sunday, 06-Nov-94 08:49:37 GMT") == RFC_EXAMPLE
    assert parse_http_date(b"Sun Nov  6 08:49:37 1994") == RFC_EXAMPLE
    assert parse_http_date(b"Thu Aug 18 02:01:18 2050") == parse_http_date(
        b"Thu, 18 Aug 2050 02:01:18 GMT"
    )


def test_rfc9111_4_2_dates_are_matched_without_regard_to_case() -> None:
    assert parse_http_date(b"SUN, 06 NOV 1994 08:49:37 gmt") == RFC_EXAMPLE
    assert parse_http_date(b"sunday, 06-nov-94 08:49:37 Gmt") == RFC_EXAMPLE


def test_rfc9110_5_6_7_rfc850_two_digit_years_are_read_as_documented() -> None:
    assert parse_http_date(b"Thursday, 18-Aug-50 02:01:18 GMT") == parse_http_date(
        b"Thu, 18 Aug 2050 02:01:18 GMT"
    )
    assert parse_http_date(b"Monday, 01-Jan-69 00:00:00 GMT") == parse_http_date(
        b"Tue, 01 Jan 2069 00:00:00 GMT"
    )
    assert parse_http_date(b"Thursday, 01-Jan-70 00:00:00 GMT") == 0.0


@pytest.mark.parametrize(
    "value",
    [
        b"Thu, 18 Aug 2050 02:01:18 UTC",
        b"Thu, 18 Aug 2050 02:01:18 AEST",
        b"Thu, 18 Aug 50 02:01:18 GMT",
        b"Thu 18 Aug 2050 02:01:18 GMT",
        b"Thu, 18  Aug  2050 02:01:18 GMT",
        b"Thu, 18-Aug-2050 02:01:18 GMT",
        b"Thu, 18 Aug 2050 02.01.18 GMT",
        b"Thu, 18 Aug 2050 2:01:18 GMT",
        b"Thu, 30 Feb 2050 02:01:18 GMT",
        b"Thu, 18 Aug 2050 24:01:18 GMT",
        b"Thu, 18 Aug 2050 02:60:18 GMT",
        b"Xyz, 18 Aug 2050 02:01:18 GMT",
        b"Thu, 18 Foo 2050 02:01:18 GMT",
        b"Thu, 18 Aug 0000 02:01:18 GMT",
        b"Thu, 18 Aug 2050 02:01:18 GMT x",
        b"0",
        b"",
        b"-1",
    ],
)
def test_rfc9110_5_6_7_invalid_dates(value: bytes) -> None:
    assert parse_http_date(value) is None


def test_rfc9110_5_6_7_imf_fixdate_is_written_rounded_down() -> None:
    assert format_http_date(RFC_EXAMPLE + 0.99) == b"Sun, 06 Nov 1994 08:49:37 GMT"


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=253402300799))  # up to 9999-12-31T23:59:59
def test_rfc9110_5_6_7_imf_fixdate_round_trip(seconds: int) -> None:
    written = format_http_date(seconds)
    assert written == http_date(seconds)
    assert parse_http_date(written) == seconds


# -- request directives (RFC 9111 5.2.1, 5.4; RFC 5861 4) ----------------------------------------


def test_rfc9111_5_2_1_a_request_without_directives_shares_one_policy() -> None:
    headers = [(b"Host", b"a"), (b"Accept", b"*/*")]
    assert request_policy(headers) is request_policy([])
    assert request_policy(headers) == RequestPolicy()


def test_rfc9111_5_2_1_request_directives() -> None:
    policy = cc(b"no-store, no-cache, max-age=5, max-stale=7, min-fresh=3, only-if-cached")
    assert policy == RequestPolicy(
        no_store=True, no_cache=True, max_age=5, max_stale=7.0, min_fresh=3, only_if_cached=True
    )
    assert req((b"cache-control", b"max-age=1"), (b"CACHE-CONTROL", b"min-fresh=2")) == (
        RequestPolicy(max_age=1, min_fresh=2)
    )


def test_rfc9111_5_2_1_2_bare_max_stale_accepts_any_staleness() -> None:
    assert cc(b"max-stale").max_stale == math.inf
    assert cc(b"max-stale=abc").max_stale is None


def test_rfc9111_5_2_1_directives_with_invalid_arguments_count_as_not_sent() -> None:
    assert cc(b"max-age=-1, min-fresh=1.5, stale-if-error=x") == RequestPolicy()


def test_rfc5861_4_stale_if_error_as_a_request_directive() -> None:
    assert cc(b"stale-if-error=30").stale_if_error == 30


def test_rfc9111_5_4_pragma_no_cache_without_cache_control() -> None:
    assert req((b"Pragma", b"no-cache")).no_cache
    assert req((b"pragma", b"foo, No-Cache")).no_cache
    assert not req((b"Pragma", b"foo")).no_cache
    assert not req((b"Pragma", b"no-cache"), (b"Cache-Control", b"max-age=5")).no_cache


# -- Vary (RFC 9111 4.1) ------------------------------------------------------------------------


def test_rfc9111_4_1_no_vary_is_the_empty_key() -> None:
    assert vary_key([b"Cache-Control: max-age=5"], [(b"Foo", b"1")]) == ()
    assert vary_matches((), [(b"Foo", b"2")])


@pytest.mark.parametrize(
    "lines",
    [[b"Vary: *"], [b"Vary: *, *"], [b"Vary: , *"], [b"Vary: ", b"Vary: *"], [b"Vary: Foo, *"]],
)
def test_rfc9111_4_1_vary_star_never_matches(lines: list[bytes]) -> None:
    assert vary_key(lines, [(b"Foo", b"1")]) is None


def test_rfc9111_4_1_vary_names_are_lower_case_sorted_and_deduplicated() -> None:
    key = vary_key(
        [b"Vary: Foo, bar", b"vary: FOO ,Baz"], [(b"foo", b"1"), (b"BAR", b"x"), (b"Other", b"y")]
    )
    assert key == ((b"bar", b"x"), (b"baz", b""), (b"foo", b"1"))


def test_rfc9111_4_1_selecting_values_are_normalised() -> None:
    one_line = vary_key([b"Vary: Foo"], [(b"Foo", b"1,2")])
    assert one_line == ((b"foo", b"1, 2"),)
    assert vary_matches(one_line, [(b"Foo", b" 1, 2 ")])
    assert vary_matches(one_line, [(b"foo", b"1"), (b"FOO", b"2")])
    assert vary_matches(one_line, [(b"Foo", b"1 ,\t2")])
    assert not vary_matches(one_line, [(b"Foo", b"2, 1")])


def test_rfc9111_4_1_a_variant_matches_only_the_same_selecting_values() -> None:
    key = vary_key([b"Vary: Foo, Bar"], [(b"Foo", b"1"), (b"Bar", b"abc")])
    assert key is not None
    assert vary_matches(key, [(b"Bar", b"abc"), (b"Foo", b"1"), (b"Other", b"z")])
    assert not vary_matches(key, [(b"Foo", b"2"), (b"Bar", b"abc")])
    assert not vary_matches(key, [(b"Foo", b"1")])
    assert not vary_matches(key, [])


def test_rfc9111_4_1_a_header_absent_from_both_requests_matches() -> None:
    key = vary_key([b"Vary: Foo"], [])
    assert key == ((b"foo", b""),)
    assert vary_matches(key, [(b"Bar", b"1")])
    assert not vary_matches(key, [(b"Foo", b"1")])


# -- freshness lifetime (RFC 9111 4.2.1, 4.2.2) -------------------------------------------------


def test_rfc9111_4_2_1_s_maxage_first_for_a_shared_cache() -> None:
    assert stored(b"Cache-Control: max-age=3600, s-maxage=1").lifetime == 1
    assert stored(b"Cache-Control: s-maxage=3600", b"Cache-Control: max-age=1").lifetime == 3600
    head = stored(b"Expires: " + http_date(T - 10), b"Cache-Control: max-age=0, s-maxage=3600")
    assert head.lifetime == 3600


def test_rfc9111_4_2_1_max_age_before_expires() -> None:
    head = stored(b"Cache-Control: max-age=3600", b"Expires: " + http_date(T - 7200))
    assert head.lifetime == 3600
    head = stored(b"Expires: " + http_date(T + 3600), b"Cache-Control: max-age=0")
    assert head.lifetime == 0


def test_rfc9111_4_2_1_expires_minus_date() -> None:
    head = stored(b"Date: " + http_date(T - 100), b"Expires: " + http_date(T + 500))
    assert head.lifetime == 600


def test_rfc9111_4_2_1_expires_minus_the_receive_time_without_a_valid_date() -> None:
    assert stored(b"Expires: " + http_date(T + 10)).lifetime == 10
    assert stored(b"Date: foo", b"Expires: " + http_date(T + 10)).lifetime == 10


def test_rfc9111_4_2_1_expires_older_than_date_is_stale() -> None:
    head = stored(b"Expires: " + http_date(T + 300), b"Date: " + http_date(T + 400))
    assert head.lifetime == 0


def test_rfc9111_5_3_an_invalid_expires_means_already_expired() -> None:
    assert stored(b"Expires: 0", b"Date: " + http_date(T)).lifetime == 0
    # ... and it is explicit: no heuristic freshness from Last-Modified.
    head = stored(b"Expires: 0", b"Last-Modified: " + http_date(T - 100000))
    assert head.lifetime == 0


def test_rfc9111_4_2_1_the_first_expires_line_counts() -> None:
    head = stored(b"Expires: " + http_date(T + 50), b"Expires: " + http_date(T + 5000))
    assert head.lifetime == 50


def test_rfc9111_4_2_1_invalid_freshness_information_is_stale() -> None:
    for value in (b"-3600", b"3600.5", b"a3600", b'"abc"', b"'3600'"):
        head = stored(b"Cache-Control: max-age=" + value, b"Expires: " + http_date(T + 500))
        assert head.lifetime == 0, value
    assert stored(b"Cache-Control: s-maxage=x, max-age=100").lifetime == 0


def test_rfc9111_4_2_1_repeated_max_age_with_different_values_is_stale() -> None:
    assert stored(b"Cache-Control: max-age=1800, max-age=1").lifetime == 0
    assert stored(b"Cache-Control: max-age=1800", b"Cache-Control: max-age=1").lifetime == 0


def test_rfc9111_5_2_2_1_quoted_and_huge_max_age() -> None:
    assert stored(b'Cache-Control: max-age="3600"').lifetime == 3600
    assert stored(b"Cache-Control: max-age=99999999999").lifetime == 2**31


def test_rfc9111_4_2_2_heuristic_is_ten_percent_of_date_minus_last_modified() -> None:
    head = stored(b"Date: " + http_date(T), b"Last-Modified: " + http_date(T - 24 * 3600))
    assert head.lifetime == 2.4 * 3600


def test_rfc9111_4_2_2_heuristic_is_capped_by_heuristic_max() -> None:
    lines = (b"Date: " + http_date(T), b"Last-Modified: " + http_date(T - 10**8))
    assert stored(*lines).lifetime == 86400
    assert stored(*lines, heuristic_max=60).lifetime == 60
    assert stored(*lines, heuristic_max=0).lifetime == 0


def test_rfc9111_4_2_2_no_heuristic_for_statuses_not_heuristically_cacheable() -> None:
    lines = (b"Date: " + http_date(T), b"Last-Modified: " + http_date(T - 86400))
    for status in (201, 202, 302, 403, 502, 503, 504, 599):
        assert stored(*lines, status=status).lifetime == 0, status
    for status in HEURISTIC_STATUSES:
        assert stored(*lines, status=status).lifetime == 8640, status


def test_rfc9111_4_2_2_public_allows_a_heuristic_for_any_status() -> None:
    lines = (b"Date: " + http_date(T), b"Last-Modified: " + http_date(T - 86400))
    assert stored(*lines, b"Cache-Control: public", status=599).lifetime == 8640


def test_rfc9111_4_2_2_no_heuristic_with_an_explicit_expiration_time() -> None:
    last_modified = b"Last-Modified: " + http_date(T - 86400)
    assert stored(last_modified, b"Cache-Control: max-age=0").lifetime == 0
    assert stored(last_modified, b"Expires: " + http_date(T - 1)).lifetime == 0


def test_rfc9111_4_2_2_no_heuristic_without_last_modified_or_from_a_future_one() -> None:
    assert stored(b"Date: " + http_date(T)).lifetime == 0
    assert stored(b"Last-Modified: " + http_date(T + 100)).lifetime == 0
    assert stored(b"Last-Modified: yesterday").lifetime == 0


# -- age (RFC 9111 4.2.3, 5.1) ------------------------------------------------------------------


def test_rfc9111_4_2_3_corrected_age_value_adds_the_response_delay() -> None:
    head = stored(b"Age: 10", request_time=T - 3, response_time=T)
    assert head.initial_age == 13
    assert head.age(T) == 13
    assert head.age(T + 7) == 20


def test_rfc9111_4_2_3_apparent_age_from_an_old_date() -> None:
    head = stored(b"Date: " + http_date(T - 7200), b"Age: 5", b"Cache-Control: max-age=3600")
    assert head.initial_age == 7200
    assert head.ttl(T) == -3600


def test_rfc9111_4_2_3_a_date_ahead_of_the_clock_gives_no_negative_apparent_age() -> None:
    head = stored(b"Date: " + http_date(T + 500), request_time=T - 1)
    assert head.initial_age == 1


def test_rfc9111_4_2_3_current_age_adds_the_resident_time() -> None:
    head = stored(b"Cache-Control: max-age=60")
    assert head.ttl(T + 59) == 1
    assert head.ttl(T + 60) == 0
    assert head.ttl(T + 61) == -1


def test_rfc9111_4_2_3_age_is_never_negative_when_the_clock_steps_back() -> None:
    head = stored(b"Cache-Control: max-age=60")
    assert head.age(T - 100) == 0
    assert head.ttl(T - 100) == 60


def test_rfc9111_5_1_invalid_age_counts_as_zero() -> None:
    for value in (b"abc", b"-7200", b"7200.0", b"7200;foo=bar", b""):
        head = stored(b"Age: " + value, b"Cache-Control: max-age=3600")
        assert head.initial_age == 0, value


def test_rfc9111_5_1_the_first_age_member_counts() -> None:
    assert stored(b"Age: 7200, 0").initial_age == 7200
    assert stored(b"Age: 0, 7200").initial_age == 0
    assert stored(b"Age: 7200", b"Age: 0").initial_age == 7200
    assert stored(b"Age: 0", b"Age: 7200").initial_age == 0


def test_rfc9111_1_2_2_a_huge_age_is_capped_and_stale() -> None:
    head = stored(b"Age: 99999999999", b"Cache-Control: max-age=3600")
    assert head.initial_age == 2**31
    assert usable(head, PLAIN, T) is Use.REVALIDATE


# -- what is stored of the head (RFC 9111 3.1, 5.2.2.4, 5.2.2.7) ---------------------------------


def test_rfc9111_5_1_age_is_not_stored() -> None:
    head = stored(b"Age: 5", b"X: 1", b"age: 6")
    assert head.lines == (b"X: 1",)


def test_rfc9111_5_2_2_7_fields_named_by_private_are_not_stored() -> None:
    lines = [b'Cache-Control: private="Set-Cookie, x-a", max-age=60', b"Set-Cookie: a=1"]
    lines += [b"X-A: 1", b"X-B: 2", b"Age: 3"]
    assert stored_lines(lines) == (lines[0], b"X-B: 2")
    assert stored(*lines).lines == (lines[0], b"X-B: 2")


def test_rfc9111_3_1_fields_named_by_no_cache_are_not_stored() -> None:
    lines = [b'Cache-Control: no-cache="a, b"', b"a: 1", b"b: 2", b"c: 3"]
    assert stored_lines(lines) == (lines[0], b"c: 3")


def test_rfc9111_5_2_2_7_a_private_named_cache_control_is_not_used_either() -> None:
    head = stored(b'Cache-Control: private="cache-control", max-age=60')
    assert head.lines == ()
    assert head.lifetime == 0
    assert StoredHead.from_json(head.to_json()).lifetime == 0


def test_stored_head_keeps_the_first_validators() -> None:
    head = stored(b'ETag: "a"', b'etag: "b"', b"Last-Modified: x", b"Last-Modified: y")
    assert head.etag == b'"a"'
    assert head.last_modified == b"x"


def test_rfc9111_5_2_2_directives_that_forbid_serving_stale() -> None:
    assert stored(b"Cache-Control: must-revalidate").must_revalidate
    assert stored(b"Cache-Control: proxy-revalidate").must_revalidate
    assert stored(b"Cache-Control: s-maxage=5").must_revalidate
    assert not stored(b"Cache-Control: max-age=5").must_revalidate


def test_rfc9111_5_2_2_4_no_cache_bare_or_qualified_revalidates() -> None:
    assert stored(b"Cache-Control: no-cache").no_cache
    assert stored(b'Cache-Control: no-cache="x"').no_cache
    assert not stored(b"Cache-Control: max-age=5").no_cache


def test_rfc5861_stale_windows() -> None:
    head = stored(b"Cache-Control: stale-while-revalidate=30, stale-if-error=60")
    assert (head.stale_while_revalidate, head.stale_if_error) == (30, 60)
    head = stored(b"Cache-Control: stale-while-revalidate, stale-if-error=x")
    assert (head.stale_while_revalidate, head.stale_if_error) == (0, 0)


def test_stored_head_is_immutable() -> None:
    head = stored(b"X: 1")
    with pytest.raises(AttributeError):
        head.status = 404
    with pytest.raises(AttributeError):
        del head.lines


def test_stored_head_round_trips_through_json_with_its_age() -> None:
    head = StoredHead(
        404,
        b"Not Found",
        [b"Date: " + http_date(T - 3), b"Age: 30", b"Cache-Control: max-age=100", b"X: \xe9"],
        T - 1,
        T,
        ((b"accept-encoding", b"gzip"),),
        12,
        heuristic_max=5,
    )
    data = json.loads(json.dumps(head.to_json()))
    again = StoredHead.from_json(data, heuristic_max=5)
    assert again == head
    assert (again.lines, again.vary, again.initial_age) == (head.lines, head.vary, 31)
    assert (again.lifetime, again.date_value, again.body_length) == (100, T - 3, 12)
    assert hash(again) == hash(head)


@pytest.mark.parametrize(
    "change",
    [
        {"status": "200"},
        {"status": True},
        {"lines": "X: 1"},
        {"lines": [1]},
        {"vary": [["a"]]},
        {"vary": [[1, "b"]]},
        {"request_time": "now"},
        {"response_time": math.nan},
        {"body_length": 1.5},
        {"phrase": "\u20ac"},
    ],
)
def test_stored_head_from_bad_json_is_a_value_error(change: dict[str, object]) -> None:
    data = stored(b"X: 1").to_json()
    data.update(change)
    with pytest.raises(ValueError):
        StoredHead.from_json(data)


def test_stored_head_from_json_without_a_field_is_a_value_error() -> None:
    data = stored(b"X: 1").to_json()
    del data["vary"]
    with pytest.raises(ValueError):
        StoredHead.from_json(data)


# -- storing (RFC 9111 3, 3.5, 5.2) ---------------------------------------------------------------

FRESH_LINES = [b"Cache-Control: max-age=60"]


def test_rfc9111_3_only_responses_to_get_are_stored() -> None:
    assert storable(b"GET", 200, FRESH_LINES, PLAIN, False) is None
    for method in (b"HEAD", b"POST", b"PUT", b"get"):
        assert storable(method, 200, FRESH_LINES, PLAIN, False) == "method"


def test_rfc9111_3_interim_partial_and_not_modified_responses_are_not_stored() -> None:
    for status in (100, 103, 199, 206, 304, 600, 99):
        assert storable(b"GET", status, FRESH_LINES, PLAIN, False) == "status", status


def test_rfc9111_3_an_unknown_final_status_with_explicit_freshness_is_stored() -> None:
    assert storable(b"GET", 599, FRESH_LINES, PLAIN, False) is None


def test_rfc9111_5_2_2_3_must_understand_needs_a_status_the_cache_understands() -> None:
    lines = [b"Cache-Control: must-understand, no-store, max-age=60"]
    assert storable(b"GET", 599, lines, PLAIN, False) == "status"
    assert 599 not in UNDERSTOOD_STATUSES and 418 not in UNDERSTOOD_STATUSES


def test_rfc9111_5_2_2_3_must_understand_overrides_no_store_for_an_understood_status() -> None:
    lines = [b"Cache-Control: must-understand, no-store, max-age=60"]
    assert storable(b"GET", 200, lines, PLAIN, False) is None
    assert storable(b"GET", 200, lines, cc(b"no-store"), False) == "no-store"


def test_rfc9111_5_2_2_5_response_no_store() -> None:
    lines = [b"Cache-Control: max-age=10000, No-Store", b"Expires: " + http_date(T + 10000)]
    assert storable(b"GET", 200, lines, PLAIN, False) == "no-store"


def test_rfc9111_5_2_1_5_request_no_store() -> None:
    assert storable(b"GET", 200, FRESH_LINES, cc(b"no-store"), False) == "no-store"


def test_rfc9111_5_2_2_7_bare_private_is_not_stored_by_a_shared_cache() -> None:
    assert storable(b"GET", 200, [b"Cache-Control: private, max-age=3600"], PLAIN, False) == (
        "private"
    )
    assert storable(b"GET", 200, [b'Cache-Control: private="", max-age=3600'], PLAIN, False) == (
        "private"
    )


def test_rfc9111_5_2_2_7_qualified_private_stores_the_rest() -> None:
    lines = [b'Cache-Control: private="X-User", max-age=3600', b"X-User: a"]
    assert storable(b"GET", 200, lines, PLAIN, False) is None


def test_rfc9111_3_5_authorization_needs_public_s_maxage_or_must_revalidate() -> None:
    assert storable(b"GET", 200, FRESH_LINES, PLAIN, True) == "authorization"
    for directive in (b"public", b"s-maxage=60", b"must-revalidate"):
        lines = [b"Cache-Control: max-age=60, " + directive]
        assert storable(b"GET", 200, lines, PLAIN, True) is None, directive
    lines = [b"Cache-Control: max-age=60, proxy-revalidate"]
    assert storable(b"GET", 200, lines, PLAIN, True) == "authorization"


def test_rfc9111_4_1_vary_star_is_not_stored() -> None:
    assert storable(b"GET", 200, [*FRESH_LINES, b"Vary: Foo, *"], PLAIN, False) == "vary-star"


def test_set_cookie_is_stored_only_with_public_or_s_maxage() -> None:
    cookie = b"Set-Cookie: session=1"
    assert storable(b"GET", 200, [*FRESH_LINES, cookie], PLAIN, False) == "set-cookie"
    assert storable(b"GET", 200, [b"set-cookie: a=1", *FRESH_LINES], PLAIN, False) == "set-cookie"
    for value in (
        b"public, max-age=60",
        b"s-maxage=60",
        b'max-age=60, private="set-cookie"',
        b'max-age=60, no-cache="Set-Cookie"',
    ):
        lines = [b"Cache-Control: " + value, cookie, b'ETag: "a"']
        assert storable(b"GET", 200, lines, PLAIN, False) is None, value


def test_rfc9111_3_a_status_not_heuristically_cacheable_needs_explicit_freshness() -> None:
    assert storable(b"GET", 302, [b'ETag: "a"'], PLAIN, False) == "no-freshness"
    assert storable(b"GET", 302, [b"Cache-Control: max-age=5"], PLAIN, False) is None
    assert storable(b"GET", 302, [b"Expires: " + http_date(T + 5)], PLAIN, False) is None
    assert storable(b"GET", 302, [b"Cache-Control: s-maxage=5"], PLAIN, False) is None
    lines = [b"Cache-Control: public", b'ETag: "a"']
    assert storable(b"GET", 599, lines, PLAIN, False) is None


def test_rfc9111_3_a_response_that_could_never_be_used_is_not_stored() -> None:
    for lines in (
        [],
        [b"Cache-Control: max-age=0"],
        [b"Cache-Control: max-age=abc"],
        [b"Expires: 0"],
        [b"Expires: " + http_date(T - 10), b"Date: " + http_date(T)],
        [b"Cache-Control: no-cache, max-age=60"],
        [b"Cache-Control: public"],
    ):
        assert storable(b"GET", 200, lines, PLAIN, False) == "no-freshness", lines


def test_rfc9111_3_a_response_with_a_validator_or_a_stale_window_is_stored() -> None:
    for lines in (
        [b'ETag: "a"'],
        [b"Last-Modified: " + http_date(T - 100)],
        [b"Cache-Control: max-age=0", b'ETag: "a"'],
        [b"Cache-Control: no-cache", b'ETag: "a"'],
        [b"Cache-Control: max-age=0, stale-while-revalidate=30"],
        [b"Cache-Control: max-age=0, stale-if-error=30"],
        [b"Expires: " + http_date(T + 10)],
    ):
        assert storable(b"GET", 200, lines, PLAIN, False) is None, lines


# -- using a stored response (RFC 9111 4, 4.2.4, 5.2; RFC 5861) -----------------------------------


def test_rfc9111_4_2_a_fresh_response_is_served() -> None:
    head = stored(b"Cache-Control: max-age=60")
    assert usable(head, PLAIN, T + 59.9) is Use.FRESH


def test_rfc9111_4_2_a_response_is_stale_once_its_age_reaches_its_lifetime() -> None:
    head = stored(b"Cache-Control: max-age=60")
    assert usable(head, PLAIN, T + 60) is Use.REVALIDATE


def test_rfc9111_5_2_2_4_response_no_cache_always_revalidates() -> None:
    head = stored(b"Cache-Control: max-age=10000, no-cache", b'ETag: "a"')
    assert usable(head, PLAIN, T) is Use.REVALIDATE
    assert usable(head, cc(b"max-stale"), T + 20000) is Use.REVALIDATE


def test_rfc9111_5_2_1_4_request_no_cache_revalidates() -> None:
    head = stored(b"Cache-Control: max-age=3600")
    assert usable(head, cc(b"no-cache"), T) is Use.REVALIDATE
    assert usable(head, req((b"Pragma", b"no-cache")), T) is Use.REVALIDATE


def test_rfc9111_5_2_1_1_request_max_age() -> None:
    head = stored(b"Cache-Control: max-age=3600", b"Age: 1800")
    assert usable(head, cc(b"max-age=600"), T) is Use.REVALIDATE
    assert usable(head, cc(b"max-age=1800"), T) is Use.FRESH
    assert usable(stored(b"Cache-Control: max-age=3600"), cc(b"max-age=0"), T + 1) is (
        Use.REVALIDATE
    )


def test_rfc9111_5_2_1_1_request_max_age_bounds_age_even_with_max_stale() -> None:
    head = stored(b"Cache-Control: max-age=10", b"Age: 30")
    assert usable(head, cc(b"max-age=20, max-stale"), T) is Use.REVALIDATE
    assert usable(head, cc(b"max-age=40, max-stale"), T) is Use.STALE_ALLOWED


def test_rfc9111_5_2_1_3_request_min_fresh() -> None:
    head = stored(b"Cache-Control: max-age=1500", b"Age: 1000")
    assert usable(head, cc(b"min-fresh=1000"), T) is Use.REVALIDATE
    assert usable(head, cc(b"min-fresh=500"), T) is Use.FRESH
    assert usable(stored(b"Cache-Control: max-age=1500"), cc(b"min-fresh=2000"), T) is (
        Use.REVALIDATE
    )


def test_rfc9111_5_2_1_2_request_max_stale() -> None:
    head = stored(b"Cache-Control: max-age=1500", b"Age: 2000")
    assert usable(head, cc(b"max-stale=1000"), T) is Use.STALE_ALLOWED
    assert usable(head, cc(b"max-stale=499"), T) is Use.REVALIDATE
    assert usable(head, cc(b"max-stale"), T + 10**6) is Use.STALE_ALLOWED


@pytest.mark.parametrize(
    "directive", [b"must-revalidate", b"proxy-revalidate", b"s-maxage=2", b"no-cache"]
)
def test_rfc9111_4_2_4_directives_that_forbid_serving_stale(directive: bytes) -> None:
    head = stored(
        b"Cache-Control: max-age=2, stale-while-revalidate=100, stale-if-error=100, " + directive
    )
    assert usable(head, cc(b"max-stale"), T + 10) is Use.REVALIDATE
    assert usable(head, PLAIN, T + 10) is Use.REVALIDATE
    assert not may_serve_stale_on_error(head, cc(b"stale-if-error=100"), T + 10)


def test_rfc5861_3_stale_while_revalidate_window() -> None:
    head = stored(b"Cache-Control: max-age=1, stale-while-revalidate=4", b'ETag: "a"')
    assert usable(head, PLAIN, T + 0.5) is Use.FRESH
    assert usable(head, PLAIN, T + 1) is Use.STALE_WHILE_REVALIDATE
    assert usable(head, PLAIN, T + 5) is Use.STALE_WHILE_REVALIDATE
    assert usable(head, PLAIN, T + 5.01) is Use.REVALIDATE
    assert usable(head, cc(b"max-stale=100"), T + 5.01) is Use.STALE_ALLOWED


def test_rfc9111_5_2_1_1_a_client_asking_for_freshness_gets_no_stale_while_revalidate() -> None:
    head = stored(b"Cache-Control: max-age=1, stale-while-revalidate=100")
    assert usable(head, cc(b"max-age=50"), T + 2) is Use.REVALIDATE
    assert usable(head, cc(b"min-fresh=0"), T + 2) is Use.REVALIDATE
    assert usable(head, cc(b"no-transform"), T + 2) is Use.STALE_WHILE_REVALIDATE


def test_rfc5861_4_stale_if_error_from_the_response() -> None:
    head = stored(b"Cache-Control: max-age=2, stale-if-error=60")
    assert may_serve_stale_on_error(head, PLAIN, T + 62)
    assert not may_serve_stale_on_error(head, PLAIN, T + 62.5)


def test_rfc5861_4_stale_if_error_from_the_request() -> None:
    head = stored(b"Cache-Control: max-age=2")
    assert not may_serve_stale_on_error(head, PLAIN, T + 3)
    assert may_serve_stale_on_error(head, cc(b"stale-if-error=10"), T + 12)
    assert not may_serve_stale_on_error(head, cc(b"stale-if-error=10"), T + 13)


def test_rfc5861_4_a_fresh_response_may_answer_an_error() -> None:
    head = stored(b"Cache-Control: max-age=60, stale-if-error=1")
    assert may_serve_stale_on_error(head, cc(b"no-cache"), T + 10)


def test_rfc9111_4_3_1_validators() -> None:
    head = stored(b'ETag: W/"a"', b"Last-Modified: " + http_date(T - 5))
    assert validators(head) == [
        (b"If-None-Match", b'W/"a"'),
        (b"If-Modified-Since", http_date(T - 5)),
    ]
    assert validators(stored(b'ETag: "a"')) == [(b"If-None-Match", b'"a"')]
    assert validators(stored(b"X: 1")) == []


# -- a 304 updates the stored head (RFC 9111 3.2, 4.3.4) -----------------------------------------


def test_rfc9111_3_2_every_field_of_the_304_replaces_the_stored_ones() -> None:
    head = stored(
        b"Date: " + http_date(T),
        b"Cache-Control: max-age=2",
        b'ETag: "a"',
        b"X-A: 1",
        b"X-A: 2",
        b"X-Keep: k",
    )
    later = T + 100
    new = refreshed(
        head,
        [b"Date: " + http_date(later), b"Cache-Control: max-age=60", b"x-a: 3", b"X-New: n"],
        later - 1,
        later,
    )
    assert new.lines == (
        b'ETag: "a"',
        b"X-Keep: k",
        b"Date: " + http_date(later),
        b"Cache-Control: max-age=60",
        b"x-a: 3",
        b"X-New: n",
    )
    assert (new.lifetime, new.request_time, new.response_time) == (60, later - 1, later)
    assert new.initial_age == 1
    assert usable(new, PLAIN, later + 58.9) is Use.FRESH
    assert usable(new, PLAIN, later + 59) is Use.REVALIDATE
    assert (new.status, new.phrase, new.vary, new.body_length) == (200, b"OK", (), 5)


def test_rfc9111_3_2_content_length_is_not_updated() -> None:
    head = stored(b"Content-Length: 5", b"X: 1")
    new = refreshed(head, [b"Content-Length: 0"], T + 1, T + 1)
    assert b"Content-Length: 5" in new.lines
    assert b"Content-Length: 0" not in new.lines


def test_rfc9111_4_2_3_the_304s_age_gives_the_new_initial_age() -> None:
    head = stored(b"Cache-Control: max-age=100", b"Age: 50")
    new = refreshed(head, [b"Age: 20", b"Date: " + http_date(T + 10)], T + 10, T + 10)
    assert new.initial_age == 20
    assert not any(line.lower().startswith(b"age") for line in new.lines)
    assert StoredHead.from_json(new.to_json()).initial_age == 20


def test_rfc9110_6_6_1_a_304_without_date_dates_the_stored_head_when_received() -> None:
    head = stored(b"Date: " + http_date(T), b"Cache-Control: max-age=60")
    later = T + 1000
    new = refreshed(head, [b'ETag: "b"'], later, later)
    assert b"Date: " + http_date(later) in new.lines
    assert b"Date: " + http_date(T) not in new.lines
    assert usable(new, PLAIN, later + 30) is Use.FRESH


def test_rfc9111_3_2_the_304s_private_fields_are_not_stored() -> None:
    head = stored(b"Cache-Control: max-age=60")
    new = refreshed(
        head, [b'Cache-Control: max-age=60, private="Set-Cookie"', b"Set-Cookie: a=1"], T, T
    )
    assert new.lines == (
        b'Cache-Control: max-age=60, private="Set-Cookie"',
        b"Date: " + http_date(T),
    )


def test_refreshed_keeps_heuristic_max() -> None:
    head = stored(b"Last-Modified: " + http_date(T - 10**6), heuristic_max=7)
    assert refreshed(head, [], T + 1, T + 1).lifetime == 7


# -- answering from the cache (RFC 9111 5.1; RFC 9110 15.4.5) -------------------------------------


def test_rfc9111_5_1_age_on_every_response_from_cache() -> None:
    head = stored(b"X: 1", b"Age: 5", request_time=T - 1)
    assert served_lines(head, T + 3.9) == [b"X: 1", b"Age: 9"]
    assert served_lines(head, T - 100) == [b"X: 1", b"Age: 0"]


def test_served_lines_is_a_fresh_list_each_time() -> None:
    head = stored(b"X: 1")
    served_lines(head, T).append(b"Y: 2")
    assert served_lines(head, T) == [b"X: 1", b"Age: 0"]
    assert head.lines == (b"X: 1",)


def test_rfc9110_15_4_5_a_304_from_cache_carries_the_listed_fields() -> None:
    head = stored(
        b"Cache-Control: max-age=60",
        b"Content-Type: text/plain",
        b"Content-Location: /a",
        b"Date: " + http_date(T),
        b'ETag: "a"',
        b"Expires: " + http_date(T + 60),
        b"Vary: Accept",
        b"Last-Modified: " + http_date(T - 60),
        b"Content-Encoding: gzip",
        b"X-Other: 1",
    )
    assert not_modified_lines(head, T + 2) == [
        b"Cache-Control: max-age=60",
        b"Content-Location: /a",
        b"Date: " + http_date(T),
        b'ETag: "a"',
        b"Expires: " + http_date(T + 60),
        b"Vary: Accept",
        b"Last-Modified: " + http_date(T - 60),
        b"Age: 2",
    ]


# -- keys and invalidation (RFC 9111 2, 4.4) ------------------------------------------------------


def test_cache_key_normalises_the_authority() -> None:
    assert cache_key(b"https", b"Example.COM", b"/a?b") == b"https://example.com/a?b"
    assert cache_key(b"https", b"example.com:443", b"/") == b"https://example.com/"
    assert cache_key(b"HTTP", b"example.com:80", b"/") == b"http://example.com/"
    assert cache_key(b"http", b"example.com:443", b"/") == b"http://example.com:443/"
    assert cache_key(b"https", b"example.com:8443", b"/") == b"https://example.com:8443/"
    assert cache_key(b"https", b"[::1]:443", b"/x") == b"https://[::1]/x"
    assert cache_key(b"https", b"example.com:", b"/x") == b"https://example.com/x"
    assert cache_key(b"https", b"example.com", b"/A%2f") == b"https://example.com/A%2f"


def test_rfc9111_4_4_the_target_uri_is_invalidated() -> None:
    assert invalidated_keys(b"https://example.com/a", []) == [b"https://example.com/a"]


def test_rfc9111_4_4_location_and_content_location_on_the_same_origin() -> None:
    key = b"https://example.com/dir/a?b"
    lines = [
        b"Location: c",
        b"Content-Location: /d?e#frag",
        b"location: https://EXAMPLE.com:443/f",
        b"Location: //example.com/g",
        b"Location: ../h",
        b"X-Other: /z",
        b"Location: ",
        b"Content-Location: /d?e",
    ]
    assert invalidated_keys(key, lines) == [
        key,
        b"https://example.com/dir/c",
        b"https://example.com/d?e",
        b"https://example.com/f",
        b"https://example.com/g",
        b"https://example.com/h",
    ]


def test_rfc9111_4_4_another_origin_is_not_invalidated() -> None:
    key = b"https://example.com/a"
    lines = [
        b"Location: https://other.example/a",
        b"Location: http://example.com/a",
        b"Location: https://example.com:8443/a",
        b"Content-Location: //evil.example/a",
        b"Location: https://[::1/a",
    ]
    assert invalidated_keys(key, lines) == [key]


def test_rfc9111_4_4_a_key_with_a_port_keeps_it() -> None:
    key = b"http://example.com:8080/a"
    assert invalidated_keys(key, [b"Location: /b", b"Location: http://example.com/c"]) == [
        key,
        b"http://example.com:8080/b",
    ]


# -- Cache-Status (RFC 9211) --------------------------------------------------------------------


def test_rfc9211_a_hit() -> None:
    assert cache_status(hit=True, ttl=30) == b"edgeproxy; hit; ttl=30"


def test_rfc9211_a_stored_miss() -> None:
    assert cache_status(fwd="miss", fwd_status=200, stored=True, ttl=60) == (
        b"edgeproxy; fwd=miss; fwd-status=200; stored; ttl=60"
    )


def test_rfc9211_parameters_in_order() -> None:
    value = cache_status(
        detail="no-store",
        key=b"https://a/b",
        ttl=-0.5,
        collapsed=True,
        stored=True,
        fwd_status=304,
        fwd="stale",
        hit=True,
    )
    assert value == (
        b"edgeproxy; hit; fwd=stale; fwd-status=304; stored; collapsed; ttl=-1; "
        b'key="https://a/b"; detail=no-store'
    )


def test_rfc9211_a_bare_name() -> None:
    assert cache_status() == b"edgeproxy"


def test_rfc8941_strings_are_escaped() -> None:
    assert cache_status(key=b'/a"b\\c\xff\n') == b'edgeproxy; key="/a\\"b\\\\c%FF%0A"'
    assert cache_status(detail="not a token") == b'edgeproxy; detail="not a token"'
    assert cache_status(detail="1abc") == b'edgeproxy; detail="1abc"'
    assert cache_status(detail="caf\u00e9") == b'edgeproxy; detail="caf%C3%A9"'


def test_rfc9211_ttl_is_an_integer() -> None:
    assert cache_status(ttl=59.9) == b"edgeproxy; ttl=59"
    assert cache_status(ttl=1e30) == b"edgeproxy; ttl=999999999999999"
    assert cache_status(ttl=-math.inf) == b"edgeproxy; ttl=-999999999999999"


def test_rfc9211_fwd_is_a_token() -> None:
    with pytest.raises(ValueError):
        cache_status(fwd="not a token")


# -- the reference model (RFC 9111 4.2.1-4.2.3) -------------------------------------------------

# A directive's argument: a delta-seconds value or a string that is not one.
ARGUMENT = st.one_of(st.integers(0, 2**32), st.sampled_from(["-1", "1.5", "x", '"5"']))
DIRECTIVES = st.fixed_dictionaries(
    {},
    optional={
        "max-age": ARGUMENT,
        "s-maxage": ARGUMENT,
        "no-cache": st.none(),
        "no-store": st.none(),
        "must-revalidate": st.none(),
        "private": st.none(),
        "public": st.none(),
        "stale-while-revalidate": st.integers(0, 10**6),
    },
)
OFFSET = st.integers(-(10**6), 10**6)
INVALID = "invalid"
INVALID_EXPIRES = -(2**40)  # how the model is told of an Expires that is not a date


def delta(argument: int | str | None) -> int:
    """RFC 9111 1.2.2, and 4.2.1's 'invalid freshness information is stale'."""
    if isinstance(argument, int):
        return min(argument, 2**31)
    return 5 if argument == '"5"' else 0  # a quoted-string argument is its content


def model(
    status: int,
    directives: dict[str, int | str | None],
    expires: int | None,
    date: int | None,
    age: int | None,
    last_modified: int | None,
    request_time: int,
    response_time: int,
    now: int,
) -> tuple[float, float, float]:
    """(freshness_lifetime, corrected_initial_age, current_age) as RFC 9111 4.2.1-4.2.3
    compute them for a shared cache.  ``None``: the field is absent or, for Age,
    invalid; an invalid Expires comes as ``INVALID_EXPIRES`` (RFC 9111 5.3:
    already expired)."""
    date_value = response_time if date is None else date
    if "s-maxage" in directives:
        lifetime: float = delta(directives["s-maxage"])
    elif "max-age" in directives:
        lifetime = delta(directives["max-age"])
    elif expires is not None:
        lifetime = 0 if expires == INVALID_EXPIRES else max(0, expires - date_value)
    elif (status in HEURISTIC_STATUSES or "public" in directives) and last_modified is not None:
        lifetime = min(86400, max(0, (date_value - last_modified) / 10))
    else:
        lifetime = 0
    age_value = 0 if age is None else min(age, 2**31)
    apparent_age = max(0, response_time - date_value)
    response_delay = response_time - request_time
    corrected_age_value = age_value + response_delay
    corrected_initial_age = max(apparent_age, corrected_age_value)
    resident_time = now - response_time
    current_age = corrected_initial_age + resident_time
    return lifetime, corrected_initial_age, current_age


@settings(max_examples=300, deadline=None)
@given(
    status=st.sampled_from([200, 203, 301, 302, 404, 500, 599]),
    directives=DIRECTIVES,
    expires=st.one_of(st.none(), OFFSET, st.just(INVALID)),
    date=st.one_of(st.none(), OFFSET),
    age=st.one_of(st.none(), st.integers(0, 2**32), st.just(INVALID)),
    last_modified=st.one_of(st.none(), OFFSET),
    request_delay=st.integers(0, 100),
    resident=st.integers(0, 10**6),
)
def test_rfc9111_4_2_freshness_and_age_match_the_reference_model(
    status: int,
    directives: dict[str, int | str | None],
    expires: int | str | None,
    date: int | None,
    age: int | str | None,
    last_modified: int | None,
    request_delay: int,
    resident: int,
) -> None:
    response_time = int(T)
    request_time = response_time - request_delay
    now = response_time + resident
    members = [name if arg is None else f"{name}={arg}" for name, arg in directives.items()]
    lines = [b"Cache-Control: " + ", ".join(members).encode()] if members else []
    expires_at: int | None = None
    if isinstance(expires, int):
        expires_at = response_time + expires
        lines.append(b"Expires: " + http_date(expires_at))
    elif expires == INVALID:
        expires_at = INVALID_EXPIRES
        lines.append(b"Expires: 0")
    date_at = None if date is None else response_time + date
    if date_at is not None:
        lines.append(b"Date: " + http_date(date_at))
    if age is not None:
        lines.append(b"Age: " + str(age).encode())
    modified_at = None if last_modified is None else response_time + last_modified
    if modified_at is not None:
        lines.append(b"Last-Modified: " + http_date(modified_at))

    head = StoredHead(status, b"", lines, request_time, response_time, (), 0)
    lifetime, initial_age, current_age = model(
        status,
        directives,
        expires_at,
        date_at,
        age if isinstance(age, int) else None,
        modified_at,
        request_time,
        response_time,
        now,
    )
    assert head.lifetime == lifetime
    assert head.initial_age == initial_age
    assert head.age(now) == current_age
    fresh = lifetime > current_age  # RFC 9111 4.2
    assert (head.ttl(now) > 0) is fresh

    # RFC 9111 4.2.4, 5.2.2.2, 5.2.2.4, 5.2.2.10; RFC 5861 3
    stale_forbidden = {"must-revalidate", "s-maxage"} & directives.keys()
    window = delta(directives.get("stale-while-revalidate"))
    if "no-cache" in directives:
        expected = Use.REVALIDATE
    elif fresh:
        expected = Use.FRESH
    elif not stale_forbidden and 0 < window and current_age - lifetime <= window:
        expected = Use.STALE_WHILE_REVALIDATE
    else:
        expected = Use.REVALIDATE
    assert usable(head, PLAIN, now) is expected
    assert usable(head, RequestPolicy(), now) is expected
    asks_fresh = Use.FRESH if fresh and "no-cache" not in directives else Use.REVALIDATE
    assert usable(head, cc(b"min-fresh=0"), now) is asks_fresh

    if "no-store" in directives:
        assert storable(b"GET", status, lines, PLAIN, False) == "no-store"
    elif "private" in directives:
        assert storable(b"GET", status, lines, PLAIN, False) == "private"
    again = StoredHead.from_json(json.loads(json.dumps(head.to_json())))
    assert (again.lifetime, again.initial_age) == (head.lifetime, head.initial_age)


HEADER_VALUE = st.sampled_from([b"1", b"2", b"1,2", b" 1, 2 ", b"1, 2", b"", b"gzip"])
REQUEST = st.lists(
    st.tuples(st.sampled_from([b"Foo", b"foo", b"Bar", b"BAR", b"Other"]), HEADER_VALUE),
    max_size=5,
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([b"Vary: Foo", b"Vary: bar", b"Vary: Foo, Bar", b"X: 1"])),
    REQUEST,
    REQUEST,
)
def test_rfc9111_4_1_a_variant_matches_the_requests_with_the_same_key(
    lines: list[bytes], first: list[tuple[bytes, bytes]], second: list[tuple[bytes, bytes]]
) -> None:
    key = vary_key(lines, first)
    assert key is not None
    assert vary_matches(key, first)
    assert vary_matches(key, second) is (key == vary_key(lines, second))
