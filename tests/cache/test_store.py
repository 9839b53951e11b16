"""
The in-memory store: variants by Vary, LRU eviction by bytes, the object and store bounds
(known length and streamed), commit and discard, update after a 304, invalidation, purge and
the figures.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from edgeproxy.cache.store import ENTRY_OVERHEAD, Entry, MemoryStore, Store, StoreFigures
from edgeproxy.core.httpcache import StoredHead

LINES = (b"Content-Type: text/plain", b"Cache-Control: max-age=60")
Vary = tuple[tuple[bytes, bytes], ...]


def head(
    length: int,
    *,
    vary: Vary = (),
    lines: tuple[bytes, ...] = LINES,
    response_time: float = 1000.0,
) -> StoredHead:
    return StoredHead(
        status=200,
        phrase=b"OK",
        lines=lines,
        request_time=response_time - 1,
        response_time=response_time,
        vary=vary,
        body_length=length,
    )


def put(
    store: Store,
    key: bytes,
    body: bytes,
    *,
    vary: Vary = (),
    lines: tuple[bytes, ...] = LINES,
    response_time: float = 1000.0,
) -> Entry:
    writer = store.begin(key, len(body))
    assert writer is not None
    assert writer.write(body)
    entry = writer.commit(head(len(body), vary=vary, lines=lines, response_time=response_time))
    assert entry is not None
    return entry


def size_of(key: bytes, body: bytes, lines: tuple[bytes, ...] = LINES) -> int:
    return len(body) + len(key) + sum(len(line) for line in lines) + ENTRY_OVERHEAD


def bodies(store: Store, *keys: bytes) -> list[bytes | None]:
    found = [store.lookup(key, []) for key in keys]
    return [None if entry is None else entry.body() for entry in found]


def test_a_stored_body_is_found_whole() -> None:
    store = MemoryStore(100_000, 10_000)
    writer = store.begin(b"https://a.test/x", None)
    assert writer is not None
    assert writer.write(b"hello ")
    assert writer.write(b"world")
    entry = writer.commit(head(11))
    assert entry is not None
    found = store.lookup(b"https://a.test/x", [(b"Accept", b"*/*")])
    assert found is entry
    assert found.key == b"https://a.test/x"
    assert found.body() == b"hello world"
    with found.open_body() as f:
        assert f.read() == b"hello world"
    assert found.head.lines == LINES
    assert found.head.body_length == 11
    assert store.lookup(b"https://a.test/y", []) is None


def test_an_entry_is_charged_its_body_key_lines_and_the_overhead() -> None:
    store = MemoryStore(100_000, 10_000)
    entry = put(store, b"https://a.test/x", b"x" * 100)
    assert entry.size == 100 + len(b"https://a.test/x") + 24 + 25 + ENTRY_OVERHEAD
    assert store.figures() == StoreFigures(
        objects=1, bytes=entry.size, evictions=0, max_bytes=100_000
    )


def test_the_least_recently_used_entry_goes_first() -> None:
    one = size_of(b"https://a.test/0", b"x" * 100)
    store = MemoryStore(3 * one, 10_000)
    for i in range(3):
        put(store, b"https://a.test/%d" % i, b"x" * 100)
    assert store.lookup(b"https://a.test/0", []) is not None  # 1 is now the oldest
    put(store, b"https://a.test/3", b"x" * 100)
    assert bodies(
        store, b"https://a.test/0", b"https://a.test/1", b"https://a.test/2", b"https://a.test/3"
    ) == [b"x" * 100, None, b"x" * 100, b"x" * 100]
    assert store.figures() == StoreFigures(3, 3 * one, 1, 3 * one)


def test_eviction_makes_room_for_a_large_entry() -> None:
    small = size_of(b"https://a.test/0", b"x" * 100)
    store = MemoryStore(4 * small, 10_000)
    for i in range(4):
        put(store, b"https://a.test/%d" % i, b"x" * 100)
    # Needs the room of the three least recently used.
    put(store, b"https://a.test/B", b"y" * (100 + 2 * small))
    assert bodies(store, b"https://a.test/0", b"https://a.test/1", b"https://a.test/2") == [
        None,
        None,
        None,
    ]
    assert bodies(store, b"https://a.test/3") == [b"x" * 100]
    figures = store.figures()
    assert figures.objects == 2 and figures.evictions == 3
    assert figures.bytes == small + size_of(b"https://a.test/B", b"y" * (100 + 2 * small))
    assert figures.bytes <= figures.max_bytes


def test_the_byte_bound_holds_over_many_writes() -> None:
    store = MemoryStore(10_000, 5_000)
    for i in range(200):
        put(store, b"https://a.test/%d" % i, b"z" * (i * 37 % 3000))
        figures = store.figures()
        assert figures.bytes <= 10_000
        assert figures.bytes == sum(
            e.size for e in (store.lookup(b"https://a.test/%d" % j, []) for j in range(i + 1)) if e
        )


def test_an_entry_larger_than_the_store_is_refused_and_evicts_nothing() -> None:
    store = MemoryStore(2_000, 10_000)
    kept = put(store, b"https://a.test/kept", b"k")
    writer = store.begin(b"https://a.test/huge", None)
    assert writer is not None
    assert writer.write(b"h" * 1_800)
    # 1,800 bytes of body fit max_bytes, the body with its header and overhead does not.
    assert writer.commit(head(1_800)) is None
    assert store.lookup(b"https://a.test/huge", []) is None
    assert store.lookup(b"https://a.test/kept", []) is kept
    assert store.figures() == StoreFigures(1, kept.size, 0, 2_000)


def test_a_known_length_over_a_bound_gets_no_writer() -> None:
    store = MemoryStore(2_000, 1_000)
    assert store.begin(b"https://a.test/x", 1_001) is None
    assert store.begin(b"https://a.test/x", 1_000) is not None
    assert MemoryStore(500, 1_000).begin(b"https://a.test/x", 501) is None


def test_a_streamed_body_over_max_object_bytes_is_abandoned() -> None:
    store = MemoryStore(100_000, 1_000)
    writer = store.begin(b"https://a.test/x", None)
    assert writer is not None
    assert writer.write(b"a" * 600)
    assert writer.write(b"a" * 400)  # exactly the cap
    assert not writer.write(b"a")
    assert not writer.write(b"b")  # ignored from now on
    assert writer.commit(head(1_001)) is None
    assert store.lookup(b"https://a.test/x", []) is None
    assert store.figures() == StoreFigures(0, 0, 0, 100_000)


def test_a_length_that_does_not_match_the_body_is_not_stored() -> None:
    store = MemoryStore(100_000, 10_000)
    writer = store.begin(b"https://a.test/x", 10)
    assert writer is not None
    assert writer.write(b"12345")
    assert writer.commit(head(10)) is None  # a truncated body
    assert store.lookup(b"https://a.test/x", []) is None


def test_discard_keeps_nothing_and_is_idempotent() -> None:
    store = MemoryStore(100_000, 10_000)
    old = put(store, b"https://a.test/x", b"old")
    writer = store.begin(b"https://a.test/x", None)
    assert writer is not None
    assert writer.write(b"new, but cut short")
    writer.discard()
    writer.discard()
    assert not writer.write(b"more")
    assert writer.commit(head(18)) is None
    assert store.lookup(b"https://a.test/x", []) is old


def test_commit_is_once_and_discard_after_it_changes_nothing() -> None:
    store = MemoryStore(100_000, 10_000)
    writer = store.begin(b"https://a.test/x", None)
    assert writer is not None
    assert writer.write(b"body")
    entry = writer.commit(head(4))
    assert entry is not None
    writer.discard()
    assert writer.commit(head(4)) is None
    assert not writer.write(b"x")
    assert store.lookup(b"https://a.test/x", []) is entry


def test_a_new_response_replaces_the_same_key_and_selection() -> None:
    store = MemoryStore(100_000, 10_000)
    put(store, b"https://a.test/x", b"one", response_time=1000)
    two = put(store, b"https://a.test/x", b"two!", response_time=1010)
    assert store.lookup(b"https://a.test/x", []) is two
    assert store.figures().objects == 1
    assert store.figures().bytes == two.size


GZIP: Vary = ((b"accept-encoding", b"gzip"),)
PLAIN: Vary = ((b"accept-encoding", b""),)


def test_variants_are_chosen_by_the_request_headers() -> None:
    store = MemoryStore(100_000, 10_000)
    gzip = put(store, b"https://a.test/x", b"gz", vary=GZIP)
    plain = put(store, b"https://a.test/x", b"id", vary=PLAIN)
    assert store.lookup(b"https://a.test/x", [(b"Accept-Encoding", b"gzip")]) is gzip
    assert store.lookup(b"https://a.test/x", [(b"Accept", b"*/*")]) is plain
    assert store.lookup(b"https://a.test/x", [(b"accept-encoding", b"br")]) is None
    assert store.figures().objects == 2
    # The same selection again replaces only its own variant.
    gzip2 = put(store, b"https://a.test/x", b"gz2", vary=GZIP)
    assert store.lookup(b"https://a.test/x", [(b"Accept-Encoding", b"gzip")]) is gzip2
    assert store.lookup(b"https://a.test/x", []) is plain
    assert store.figures().objects == 2


def test_the_most_recent_matching_variant_wins() -> None:
    store = MemoryStore(100_000, 10_000)
    varied = put(store, b"https://a.test/x", b"gz", vary=GZIP, response_time=1000)
    later = put(store, b"https://a.test/x", b"any", response_time=1005)
    assert store.lookup(b"https://a.test/x", [(b"Accept-Encoding", b"gzip")]) is later
    # Stored later but received earlier: the more recent response still wins.
    store.invalidate(b"https://a.test/x")
    later = put(store, b"https://a.test/x", b"any", response_time=1005)
    varied = put(store, b"https://a.test/x", b"gz", vary=GZIP, response_time=1000)
    assert store.lookup(b"https://a.test/x", [(b"Accept-Encoding", b"gzip")]) is later
    assert varied.body() == b"gz"


def test_request_headers_may_be_a_one_shot_iterable() -> None:
    store = MemoryStore(100_000, 10_000)
    put(store, b"https://a.test/x", b"id", vary=PLAIN, response_time=1005)
    gzip = put(store, b"https://a.test/x", b"gz", vary=GZIP, response_time=1000)

    def headers() -> Iterator[tuple[bytes, bytes]]:
        yield (b"Accept-Encoding", b"gzip")

    assert store.lookup(b"https://a.test/x", headers()) is gzip


def test_a_lookup_is_a_use_for_the_lru_but_a_miss_is_not() -> None:
    one = size_of(b"https://a.test/0", b"x" * 100)
    store = MemoryStore(2 * one, 10_000)
    put(store, b"https://a.test/0", b"x" * 100, vary=GZIP, lines=LINES)
    put(store, b"https://a.test/1", b"x" * 100)
    assert store.lookup(b"https://a.test/0", []) is None  # no matching variant
    put(store, b"https://a.test/2", b"x" * 100)
    assert store.lookup(b"https://a.test/0", [(b"Accept-Encoding", b"gzip")]) is None
    assert bodies(store, b"https://a.test/1") == [b"x" * 100]


def test_update_after_a_304_keeps_the_body_under_the_new_head() -> None:
    store = MemoryStore(100_000, 10_000)
    entry = put(store, b"https://a.test/x", b"body", response_time=1000)
    new_lines = (b"Content-Type: text/plain", b"Cache-Control: max-age=600", b'ETag: "2"')
    updated = store.update(entry, head(4, lines=new_lines, response_time=2000))
    assert updated is not None
    assert updated.body() == b"body"
    assert updated.head.lines == new_lines
    assert updated.head.response_time == 2000
    assert store.lookup(b"https://a.test/x", []) is updated
    assert store.figures().objects == 1
    assert store.figures().bytes == updated.size == size_of(b"https://a.test/x", b"body", new_lines)
    # The old entry is no longer the stored one.
    assert store.update(entry, head(4)) is None


def test_update_of_an_entry_that_is_gone_or_of_another_length_is_refused() -> None:
    store = MemoryStore(100_000, 10_000)
    entry = put(store, b"https://a.test/x", b"body")
    assert store.update(entry, head(5)) is None
    assert store.lookup(b"https://a.test/x", []) is entry
    store.invalidate(b"https://a.test/x")
    assert store.update(entry, head(4)) is None
    assert store.lookup(b"https://a.test/x", []) is None


def test_update_of_an_evicted_entry_is_refused() -> None:
    one = size_of(b"https://a.test/0", b"x")
    store = MemoryStore(one, 10_000)
    entry = put(store, b"https://a.test/0", b"x")
    put(store, b"https://a.test/1", b"x")
    assert store.update(entry, head(1)) is None
    assert store.figures().objects == 1


def test_invalidate_removes_every_variant_of_the_key() -> None:
    store = MemoryStore(100_000, 10_000)
    put(store, b"https://a.test/x", b"gz", vary=GZIP)
    put(store, b"https://a.test/x", b"id", vary=PLAIN)
    other = put(store, b"https://a.test/xy", b"other")
    assert store.invalidate(b"https://a.test/x") == 2
    assert store.invalidate(b"https://a.test/x") == 0
    assert store.lookup(b"https://a.test/x", [(b"Accept-Encoding", b"gzip")]) is None
    assert store.lookup(b"https://a.test/xy", []) is other
    assert store.figures() == StoreFigures(1, other.size, 0, 100_000)


def test_purge_prefix_removes_every_key_under_it() -> None:
    store = MemoryStore(100_000, 10_000)
    put(store, b"https://a.test/static/a", b"a")
    put(store, b"https://a.test/static/b", b"b", vary=GZIP)
    put(store, b"https://a.test/static/b", b"b", vary=PLAIN)
    put(store, b"https://a.test/other", b"o")
    assert store.purge_prefix(b"https://a.test/static/") == 3
    assert bodies(store, b"https://a.test/static/a", b"https://a.test/other") == [None, b"o"]
    assert store.purge_prefix(b"https://b.test/") == 0
    assert store.figures().objects == 1


def test_close_empties_the_store() -> None:
    store = MemoryStore(100_000, 10_000)
    put(store, b"https://a.test/x", b"x")
    store.close()
    assert store.lookup(b"https://a.test/x", []) is None
    assert store.figures() == StoreFigures(0, 0, 0, 100_000)


@pytest.mark.parametrize("max_bytes", [0, 1])
def test_a_store_too_small_for_anything_stores_nothing(max_bytes: int) -> None:
    store = MemoryStore(max_bytes, 10_000)
    writer = store.begin(b"https://a.test/x", None)
    assert writer is not None
    assert writer.write(b"")
    assert writer.commit(head(0)) is None
    assert store.figures() == StoreFigures(0, 0, 0, max_bytes)
