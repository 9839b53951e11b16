"""Tests for edgeproxy.core.certindex: which certificate serves a name, with plain entries."""

from __future__ import annotations

import dataclasses
import datetime

import pytest

from edgeproxy.core.certindex import CertificateIndex


def utc(year: int, month: int = 1, day: int = 1) -> datetime.datetime:
    return datetime.datetime(year, month, day, tzinfo=datetime.UTC)


NOW = utc(2030, 6, 1)
NOT_BEFORE = utc(2030, 1, 1)
NOT_AFTER = utc(2031, 1, 1)


@dataclasses.dataclass(frozen=True)
class Entry:
    """A certificate as the index sees it: no key, no context."""

    source: str
    names: tuple[str, ...]
    not_before: datetime.datetime
    not_after: datetime.datetime
    fingerprint: str
    is_default: bool

    def is_valid_at(self, now: datetime.datetime, /) -> bool:
        return self.not_before <= now < self.not_after


def fake(
    source: str,
    *names: str,
    not_before: datetime.datetime = NOT_BEFORE,
    not_after: datetime.datetime = NOT_AFTER,
    is_default: bool = False,
    fingerprint: str | None = None,
) -> Entry:
    return Entry(
        source=source,
        names=names,
        not_before=not_before,
        not_after=not_after,
        fingerprint=source if fingerprint is None else fingerprint,
        is_default=is_default,
    )


def build(*entries: Entry, now: datetime.datetime = NOW) -> CertificateIndex[Entry]:
    return CertificateIndex.build(entries, now)


# --- lookup ---------------------------------------------------------------------


def test_exact_beats_wildcard() -> None:
    wild = fake("wild.pem", "*.shop.example")
    exact = fake("exact.pem", "api.shop.example")
    index = build(wild, exact)
    assert index.select(b"api.shop.example") is exact
    assert index.select(b"www.shop.example") is wild


def test_exact_beats_wildcard_of_the_same_certificate_elsewhere() -> None:
    # The wildcard is the later expiry, but an exact name is never looked up as a wildcard.
    wild = fake("wild.pem", "*.shop.example", not_after=utc(2032, 1, 1))
    exact = fake("exact.pem", "api.shop.example")
    assert build(wild, exact).select(b"api.shop.example") is exact


def test_wildcard_covers_one_label_only() -> None:
    wild = fake("wild.pem", "*.example.com")
    index = build(wild)
    assert index.select(b"a.example.com") is wild
    assert index.select(b"example.com") is None
    assert index.select(b"a.b.example.com") is None
    assert index.select(b"*.example.com") is None


def test_a_wildcard_is_not_served_as_an_exact_name() -> None:
    index = build(fake("shop.pem", "shop.example"))
    assert index.select(b"www.shop.example") is None


def test_lookup_normalises() -> None:
    cert = fake("shop.pem", "shop.example", "127.0.0.1", "::1")
    index = build(cert)
    for name in (b"SHOP.example", b"shop.example.", b"127.0.0.1", b"::1", "Shop.Example"):
        assert index.select(name) is cert, name


def test_ip_literal_is_not_wildcard_matched() -> None:
    index = build(fake("wild.pem", "*.0.0.1"))
    assert index.select(b"127.0.0.1") is None


def test_default_for_no_sni_unknown_and_invalid_names() -> None:
    shop = fake("shop.pem", "shop.example")
    default = fake("default.pem", "fallback.example", is_default=True)
    index = build(shop, default)
    assert index.default is default
    assert index.select(None) is default
    assert index.select(b"unknown.example") is default
    assert index.select(b"a.b.shop.example") is default
    assert index.select(b"\xff\xfe") is default
    assert index.select(b"bad name!") is default
    assert index.select(b"fallback.example") is default  # served by its own names too
    assert index.select(b"shop.example") is shop


def test_a_default_without_names() -> None:
    default = fake("default.pem", is_default=True)
    index = build(default)
    assert index.names == frozenset()
    assert index.select(b"shop.example") is default


def test_no_default_selects_none() -> None:
    index = build(fake("shop.pem", "shop.example"))
    assert index.default is None
    assert index.select(None) is None
    assert index.select(b"other.example") is None


def test_empty() -> None:
    index: CertificateIndex[Entry] = CertificateIndex.empty()
    assert index.certificates == ()
    assert index.default is None
    assert index.next_change is None
    assert index.warnings == ()
    assert index.names == frozenset()
    assert index.select(b"shop.example") is None
    assert index.select(None) is None


# --- which certificate wins a name ----------------------------------------------


def test_valid_now_beats_expired_with_later_expiry_elsewhere() -> None:
    valid = fake("a.pem", "shop.example", not_after=utc(2030, 9, 1))
    expired = fake("b.pem", "shop.example", not_before=utc(2020, 1, 1), not_after=utc(2030, 5, 1))
    index = build(expired, valid)
    assert index.select(b"shop.example") is valid
    assert index.warnings == ()


def test_later_expiry_wins_among_valid() -> None:
    early = fake("a.pem", "shop.example", not_after=utc(2030, 9, 1))
    late = fake("b.pem", "shop.example", not_after=utc(2030, 12, 1))
    assert build(late, early).select(b"shop.example") is late
    assert build(early, late).select(b"shop.example") is late


def test_not_yet_valid_loses_even_with_later_expiry() -> None:
    current = fake("current.pem", "shop.example", not_after=utc(2030, 7, 1))
    future = fake(
        "future.pem", "shop.example", not_before=utc(2030, 6, 15), not_after=utc(2031, 6, 1)
    )
    index = build(current, future)
    assert index.select(b"shop.example") is current
    assert index.next_change == utc(2030, 6, 15)
    # At the boundary, the renewed one takes over.
    later = build(current, future, now=utc(2030, 6, 15))
    assert later.select(b"shop.example") is future
    assert later.next_change == utc(2030, 7, 1)


def test_ties_go_to_the_later_not_before_then_the_later_source() -> None:
    older = fake("z.pem", "shop.example", not_before=utc(2030, 1, 1))
    newer = fake("a.pem", "shop.example", not_before=utc(2030, 2, 1))
    assert build(older, newer).select(b"shop.example") is newer
    a = fake("a.pem", "shop.example")
    b = fake("b.pem", "shop.example")
    assert build(b, a).select(b"shop.example") is b
    assert build(a, b).select(b"shop.example") is b


def test_each_name_is_won_on_its_own() -> None:
    both = fake("both.pem", "a.example", "b.example", not_after=utc(2030, 9, 1))
    a_only = fake("a.pem", "a.example", not_after=utc(2030, 12, 1))
    index = build(both, a_only)
    assert index.select(b"a.example") is a_only
    assert index.select(b"b.example") is both


def test_the_default_is_the_preferred_of_the_defaults() -> None:
    expired = fake(
        "default.crt", is_default=True, not_before=utc(2020, 1, 1), not_after=utc(2030, 5, 1)
    )
    valid = fake("default.pem", is_default=True, not_after=utc(2030, 9, 1))
    index = build(valid, expired)
    assert index.default is valid
    assert index.select(None) is valid
    assert index.warnings == ()


# --- what the index reports -----------------------------------------------------


def test_nothing_valid_serves_latest_expiry_with_warning() -> None:
    old = fake("old.pem", "shop.example", not_before=utc(2020, 1, 1), not_after=utc(2029, 1, 1))
    older = fake("older.pem", "shop.example", not_before=utc(2019, 1, 1), not_after=utc(2028, 1, 1))
    index = build(older, old)
    assert index.select(b"shop.example") is old
    assert index.warnings == (
        "old.pem: expired at 2029-01-01T00:00:00+00:00, but it is the only certificate "
        "for shop.example; serving it anyway",
    )
    assert index.next_change is None


def test_warning_for_a_not_yet_valid_winner_lists_its_names_sorted() -> None:
    future = fake(
        "future.pem", "b.example", "*.a.example", "a.example",
        not_before=utc(2030, 7, 1), not_after=utc(2031, 7, 1),
    )
    index = build(future)
    assert index.select(b"a.example") is future
    assert index.warnings == (
        "future.pem: not valid before 2030-07-01T00:00:00+00:00, but it is the only "
        "certificate for *.a.example, a.example, b.example; serving it anyway",
    )


def test_one_warning_per_stale_certificate_in_name_order() -> None:
    b = fake("b.pem", "b.example", not_before=utc(2020, 1, 1), not_after=utc(2029, 1, 1))
    a = fake("a.pem", "a.example", "c.example", not_before=utc(2020, 1, 1), not_after=utc(2029, 2, 1))
    index = build(b, a)
    assert index.warnings == (
        "a.pem: expired at 2029-02-01T00:00:00+00:00, but it is the only certificate "
        "for a.example, c.example; serving it anyway",
        "b.pem: expired at 2029-01-01T00:00:00+00:00, but it is the only certificate "
        "for b.example; serving it anyway",
    )


def test_stale_default_warns() -> None:
    default = fake(
        "default.pem", is_default=True, not_before=utc(2020, 1, 1), not_after=utc(2029, 1, 1)
    )
    index = build(default)
    assert index.default is default
    assert index.warnings == (
        "default.pem: default certificate expired at 2029-01-01T00:00:00+00:00; "
        "serving it anyway",
    )


def test_stale_default_with_names_warns_for_both() -> None:
    default = fake(
        "default.pem", "fallback.example", is_default=True,
        not_before=utc(2030, 7, 1), not_after=utc(2031, 7, 1),
    )
    assert build(default).warnings == (
        "default.pem: not valid before 2030-07-01T00:00:00+00:00, but it is the only "
        "certificate for fallback.example; serving it anyway",
        "default.pem: default certificate not valid before 2030-07-01T00:00:00+00:00; "
        "serving it anyway",
    )


def test_a_stale_loser_does_not_warn() -> None:
    expired = fake("old.pem", "shop.example", not_before=utc(2020, 1, 1), not_after=utc(2029, 1, 1))
    assert build(expired, fake("new.pem", "shop.example")).warnings == ()


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (utc(2029, 12, 1), utc(2030, 1, 1)),  # before: its not_before
        (NOT_BEFORE, NOT_AFTER),  # a boundary equal to now is behind us
        (NOW, NOT_AFTER),
        (NOT_AFTER, None),
    ],
)
def test_next_change_is_the_next_boundary_after_now(
    now: datetime.datetime, expected: datetime.datetime | None
) -> None:
    assert build(fake("shop.pem", "shop.example"), now=now).next_change == expected


def test_next_change_is_the_earliest_over_every_certificate_winners_or_not() -> None:
    winner = fake("b.pem", "shop.example", not_after=utc(2030, 12, 1))
    loser = fake("a.pem", "shop.example", not_after=utc(2030, 9, 1))
    assert build(winner, loser).next_change == utc(2030, 9, 1)


def test_index_exposes_certificates_and_names() -> None:
    a = fake("a.pem", "a.example", "*.a.example")
    b = fake("b.pem", "b.example")
    index = build(b, a)
    assert index.certificates == (a, b)
    assert index.names == {"a.example", "*.a.example", "b.example"}
    assert index.default is None
    assert index.next_change == utc(2031, 1, 1)


def test_certificates_are_ordered_by_source_then_fingerprint() -> None:
    second = fake("a.pem", "a.example", fingerprint="02")
    first = fake("a.pem", "a.example", fingerprint="01")
    other = fake("0.pem", "z.example")
    assert build(second, other, first).certificates == (other, first, second)
