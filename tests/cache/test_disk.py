"""
The directory store: what it keeps survives a restart; several stores on one directory (the
workers) see each other's writes, removals and evictions, one of them in a real second
process; a body being written is invisible until committed; corrupt files are misses and are
removed; eviction by bytes, least recently used by mtime from the injected clock.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap
import time

import pytest

from edgeproxy.cache import disk
from edgeproxy.cache.disk import DiskStore
from edgeproxy.cache.store import Entry, StoreFigures
from edgeproxy.core.httpcache import StoredHead

ROOT = pathlib.Path(__file__).resolve().parents[2]
LINES = (b"Content-Type: text/plain", b"Cache-Control: max-age=60")
Vary = tuple[tuple[bytes, bytes], ...]
GZIP: Vary = ((b"accept-encoding", b"gzip"),)
PLAIN: Vary = ((b"accept-encoding", b""),)
T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def head(
    length: int,
    *,
    vary: Vary = (),
    lines: tuple[bytes, ...] = LINES,
    response_time: float = T0,
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


def store(
    directory: pathlib.Path,
    clock: Clock,
    max_bytes: int = 1_000_000,
    max_object_bytes: int = 300_000,
) -> DiskStore:
    return DiskStore(str(directory), max_bytes, max_object_bytes, clock=clock)


def put(
    s: DiskStore,
    key: bytes,
    body: bytes,
    *,
    vary: Vary = (),
    lines: tuple[bytes, ...] = LINES,
) -> Entry:
    writer = s.begin(key, None)
    assert writer is not None
    for at in range(0, len(body), 7_000):
        assert writer.write(body[at : at + 7_000])
    entry = writer.commit(head(len(body), vary=vary, lines=lines))
    assert entry is not None
    return entry


def body_of(
    s: DiskStore, key: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> bytes | None:
    entry = s.lookup(key, headers or [])
    if entry is None:
        return None
    try:
        return entry.body()
    finally:
        entry.close()


def files(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.is_file())


def path_of(directory: pathlib.Path, key: bytes) -> pathlib.Path:
    digest = disk._key_hash(key)
    return directory / digest[:2] / digest


KEY = b"https://a.test/x"


def test_a_body_streams_to_its_file_and_reads_back(tmp_path: pathlib.Path) -> None:
    s = store(tmp_path, Clock())
    body = bytes(range(256)) * 1_000
    entry = put(s, KEY, body)
    assert entry.body() == body
    assert entry.size == path_of(tmp_path, KEY).stat().st_size
    found = s.lookup(KEY, [])
    assert found is not None
    assert found.key == KEY
    assert found.head.lines == LINES
    assert found.head.body_length == len(body)
    assert found.head.response_time == T0
    assert found.body() == body
    with found.open_body() as f:
        assert f.read(10) == body[:10]
        assert f.read() == body[10:]  # the body and nothing after it
        assert f.read() == b""
        f.seek(-5, os.SEEK_END)
        assert f.read() == body[-5:]
    found.close()
    entry.close()
    assert files(tmp_path) == [path_of(tmp_path, KEY).name]


def test_an_empty_body(tmp_path: pathlib.Path) -> None:
    s = store(tmp_path, Clock())
    writer = s.begin(KEY, 0)
    assert writer is not None
    assert writer.commit(head(0)) is not None
    assert body_of(s, KEY) == b""


def test_everything_survives_a_restart(tmp_path: pathlib.Path) -> None:
    clock = Clock()
    first = store(tmp_path, clock)
    put(first, KEY, b"plain")
    put(first, b"https://a.test/v", b"gz", vary=GZIP)
    put(first, b"https://a.test/v", b"id", vary=PLAIN)
    figures = first.figures()
    first.close()
    del first
    again = store(tmp_path, clock)
    assert body_of(again, KEY) == b"plain"
    assert body_of(again, b"https://a.test/v", [(b"Accept-Encoding", b"gzip")]) == b"gz"
    assert body_of(again, b"https://a.test/v") == b"id"
    assert again.figures() == figures
    assert figures.objects == 3  # the Vary marker is not an object


def test_two_stores_on_one_directory_see_each_others_writes_and_removals(
    tmp_path: pathlib.Path,
) -> None:
    clock = Clock()
    a, b = store(tmp_path, clock), store(tmp_path, clock)
    put(a, KEY, b"from a")
    assert body_of(b, KEY) == b"from a"
    put(b, KEY, b"replaced by b")
    assert body_of(a, KEY) == b"replaced by b"
    put(a, b"https://a.test/v", b"gz", vary=GZIP)
    assert body_of(b, b"https://a.test/v", [(b"Accept-Encoding", b"gzip")]) == b"gz"
    assert b.invalidate(b"https://a.test/v") == 1
    assert body_of(a, b"https://a.test/v", [(b"Accept-Encoding", b"gzip")]) is None
    assert a.purge_prefix(b"https://a.test/") == 1
    assert body_of(b, KEY) is None
    assert files(tmp_path) == []


def test_a_real_second_process_shares_the_directory(tmp_path: pathlib.Path) -> None:
    s = store(tmp_path, Clock())
    put(s, KEY, b"written by the parent")
    child = textwrap.dedent(
        """
        import sys
        from edgeproxy.cache.disk import DiskStore
        from edgeproxy.core.httpcache import StoredHead

        store = DiskStore(sys.argv[1], 1_000_000, 100_000)
        found = store.lookup(b"https://a.test/x", [])
        print(found.body().decode())
        writer = store.begin(b"https://a.test/child", None)
        writer.write(b"written by ")
        writer.write(b"the child")
        head = StoredHead(200, b"OK", (b"X-From: child",), 1.0, 2.0, (), 20)
        assert writer.commit(head) is not None
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", child, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "written by the parent\n"
    found = s.lookup(b"https://a.test/child", [])
    assert found is not None
    assert found.body() == b"written by the child"
    assert found.head.lines == (b"X-From: child",)
    found.close()


def test_a_body_being_written_is_invisible_until_committed(tmp_path: pathlib.Path) -> None:
    clock = Clock()
    a, b = store(tmp_path, clock), store(tmp_path, clock)
    writer = a.begin(KEY, None)
    assert writer is not None
    assert writer.write(b"half of it")
    assert a.lookup(KEY, []) is None
    assert b.lookup(KEY, []) is None
    assert [name.startswith(disk.TEMP_PREFIX) for name in files(tmp_path)] == [True]
    assert writer.write(b", the rest")
    assert writer.commit(head(20)) is not None
    assert body_of(b, KEY) == b"half of it, the rest"
    # A new version being written leaves the old one in place until it is whole.
    writer = b.begin(KEY, None)
    assert writer is not None
    assert writer.write(b"new")
    assert body_of(a, KEY) == b"half of it, the rest"
    assert writer.commit(head(3)) is not None
    assert body_of(a, KEY) == b"new"
    assert files(tmp_path) == [path_of(tmp_path, KEY).name]


def test_discard_removes_the_temporary_file(tmp_path: pathlib.Path) -> None:
    s = store(tmp_path, Clock())
    put(s, KEY, b"old")
    writer = s.begin(KEY, None)
    assert writer is not None
    assert writer.write(b"cut short")
    writer.discard()
    writer.discard()
    assert writer.commit(head(9)) is None
    assert not writer.write(b"x")
    assert body_of(s, KEY) == b"old"
    assert files(tmp_path) == [path_of(tmp_path, KEY).name]


def test_a_wrong_length_is_not_stored(tmp_path: pathlib.Path) -> None:
    s = store(tmp_path, Clock())
    writer = s.begin(KEY, 10)
    assert writer is not None
    assert writer.write(b"12345")
    assert writer.commit(head(10)) is None
    assert files(tmp_path) == []


def test_over_size_bodies_are_refused(tmp_path: pathlib.Path) -> None:
    s = store(tmp_path, Clock(), max_bytes=50_000, max_object_bytes=20_000)
    assert s.begin(KEY, 20_001) is None
    assert store(tmp_path, Clock(), max_bytes=100, max_object_bytes=1_000).begin(KEY, 101) is None
    writer = s.begin(KEY, None)
    assert writer is not None
    assert writer.write(b"a" * 20_000)
    assert not writer.write(b"a")
    assert files(tmp_path) == []  # the temporary file goes at once
    assert not writer.write(b"a")
    assert writer.commit(head(20_001)) is None
    assert files(tmp_path) == []
    # The body fits max_bytes, the file with its header does not.
    tiny = store(tmp_path, Clock(), max_bytes=100, max_object_bytes=1_000)
    writer = tiny.begin(KEY, None)
    assert writer is not None
    assert writer.write(b"b" * 100)
    assert writer.commit(head(100)) is None
    assert files(tmp_path) == []


def test_variants_by_vary(tmp_path: pathlib.Path) -> None:
    s = store(tmp_path, Clock())
    put(s, KEY, b"gz", vary=GZIP)
    put(s, KEY, b"id", vary=PLAIN)
    assert body_of(s, KEY, [(b"Accept-Encoding", b"gzip")]) == b"gz"
    assert body_of(s, KEY, [(b"accept-encoding", b"gzip")]) == b"gz"
    assert body_of(s, KEY, [(b"User-Agent", b"x")]) == b"id"
    assert body_of(s, KEY, [(b"Accept-Encoding", b"br")]) is None
    put(s, KEY, b"gz2", vary=GZIP)
    assert body_of(s, KEY, [(b"Accept-Encoding", b"gzip")]) == b"gz2"
    assert s.figures().objects == 2
    assert len(files(tmp_path)) == 3  # the marker and two variants


def test_other_vary_names_replace_the_old_variants(tmp_path: pathlib.Path) -> None:
    s = store(tmp_path, Clock())
    put(s, KEY, b"gz", vary=GZIP)
    put(s, KEY, b"id", vary=PLAIN)
    put(s, KEY, b"fr", vary=((b"accept-language", b"fr"),))
    assert body_of(s, KEY, [(b"Accept-Language", b"fr")]) == b"fr"
    assert body_of(s, KEY, [(b"Accept-Encoding", b"gzip"), (b"Accept-Language", b"de")]) is None
    assert len(files(tmp_path)) == 2
    # And a response without Vary replaces them all.
    put(s, KEY, b"one for all")
    assert body_of(s, KEY, [(b"Accept-Language", b"fr")]) == b"one for all"
    assert files(tmp_path) == [path_of(tmp_path, KEY).name]
    assert s.figures().objects == 1


def test_update_after_a_304(tmp_path: pathlib.Path) -> None:
    clock = Clock()
    a, b = store(tmp_path, clock), store(tmp_path, clock)
    body = os.urandom(200_000)  # more than one copy buffer
    put(a, KEY, body)
    entry = b.lookup(KEY, [])
    assert entry is not None
    new_lines = (b"Content-Type: text/plain", b"Cache-Control: max-age=600", b'ETag: "2"')
    updated = b.update(entry, head(len(body), lines=new_lines, response_time=T0 + 100))
    assert updated is not None
    assert updated.body() == body
    assert entry.body() == body  # the old entry keeps its file
    found = a.lookup(KEY, [])
    assert found is not None
    assert found.head.lines == new_lines
    assert found.head.response_time == T0 + 100
    assert found.body() == body
    # The old entry is no longer what is stored: refused.
    assert b.update(entry, head(len(body))) is None
    assert b.update(updated, head(len(body) + 1)) is None
    for e in (entry, updated, found):
        e.close()


def test_update_of_a_variant(tmp_path: pathlib.Path) -> None:
    s = store(tmp_path, Clock())
    put(s, KEY, b"gz", vary=GZIP)
    put(s, KEY, b"id", vary=PLAIN)
    entry = s.lookup(KEY, [(b"Accept-Encoding", b"gzip")])
    assert entry is not None
    assert s.update(entry, head(2, vary=GZIP, lines=(b"X-New: 1",))) is not None
    found = s.lookup(KEY, [(b"Accept-Encoding", b"gzip")])
    assert found is not None and found.head.lines == (b"X-New: 1",) and found.body() == b"gz"
    assert body_of(s, KEY) == b"id"


def test_an_entry_removed_by_another_process_stays_readable(tmp_path: pathlib.Path) -> None:
    clock = Clock()
    a, b = store(tmp_path, clock), store(tmp_path, clock)
    put(a, KEY, b"the body")
    entry = a.lookup(KEY, [])
    assert entry is not None
    assert b.invalidate(KEY) == 1
    assert entry.body() == b"the body"
    with entry.open_body() as f:
        assert f.read() == b"the body"
    assert a.update(entry, head(8)) is None  # gone
    assert a.lookup(KEY, []) is None
    assert a.invalidate(KEY) == 0
    assert a.purge_prefix(b"https://") == 0
    entry.close()
    entry.close()


def test_an_entry_replaced_by_another_process_is_not_updated(tmp_path: pathlib.Path) -> None:
    clock = Clock()
    a, b = store(tmp_path, clock), store(tmp_path, clock)
    put(a, KEY, b"old")
    entry = a.lookup(KEY, [])
    assert entry is not None
    put(b, KEY, b"newer")
    assert a.update(entry, head(3)) is None
    assert body_of(a, KEY) == b"newer"
    assert entry.body() == b"old"


def test_a_fan_out_directory_removed_meanwhile_is_made_again(tmp_path: pathlib.Path) -> None:
    s = store(tmp_path, Clock())
    put(s, KEY, b"x")
    path = path_of(tmp_path, KEY)
    path.unlink()
    path.parent.rmdir()
    put(s, KEY, b"again")
    assert body_of(s, KEY) == b"again"


def trailer(header: bytes) -> bytes:
    return header + disk._TRAILER.pack(len(header), disk.MAGIC)


def _corrupt_cases(path: pathlib.Path) -> dict[str, bytes]:
    good = path.read_bytes()
    return {
        "truncated": good[:-1],
        "body cut": good[1:],
        "longer": good + b"x",
        "empty": b"",
        "bad magic": good[:-4] + b"EPC0",
        "bad json": b"body" + trailer(b"{not json"),
        "header too long": good[:-8] + disk._TRAILER.pack(2**31, disk.MAGIC),
        "not an object": trailer(b"[1]"),
        "no head": trailer(b'{"key":"https://a.test/x"}'),
    }


@pytest.mark.parametrize(
    "case",
    [
        "truncated",
        "body cut",
        "longer",
        "empty",
        "bad magic",
        "bad json",
        "header too long",
        "not an object",
        "no head",
    ],
)
def test_a_corrupt_file_is_a_miss_and_is_removed(tmp_path: pathlib.Path, case: str) -> None:
    s = store(tmp_path, Clock())
    put(s, KEY, b"some body")
    path = path_of(tmp_path, KEY)
    path.write_bytes(_corrupt_cases(path)[case])
    assert s.lookup(KEY, []) is None
    assert not path.exists()
    put(s, KEY, b"stored again")
    assert body_of(s, KEY) == b"stored again"


def test_a_file_of_another_key_is_a_miss_and_is_removed(tmp_path: pathlib.Path) -> None:
    s = store(tmp_path, Clock())
    put(s, b"https://a.test/other", b"other")
    path_of(tmp_path, KEY).parent.mkdir(exist_ok=True)
    path_of(tmp_path, b"https://a.test/other").rename(path_of(tmp_path, KEY))
    assert s.lookup(KEY, []) is None
    assert files(tmp_path) == []


def test_a_corrupt_marker_or_variant_is_a_miss_and_is_removed(tmp_path: pathlib.Path) -> None:
    s = store(tmp_path, Clock())
    put(s, KEY, b"gz", vary=GZIP)
    marker = path_of(tmp_path, KEY)
    variant = next(p for p in marker.parent.iterdir() if p.name.startswith(marker.name + "."))
    variant.write_bytes(variant.read_bytes()[:-2])
    assert s.lookup(KEY, [(b"Accept-Encoding", b"gzip")]) is None
    assert not variant.exists() and marker.exists()
    put(s, KEY, b"gz", vary=GZIP)
    marker.write_bytes(trailer(b'{"key":"https://a.test/x","vary":[]}'))
    assert s.lookup(KEY, [(b"Accept-Encoding", b"gzip")]) is None
    assert not marker.exists()


def test_foreign_files_are_left_alone(tmp_path: pathlib.Path) -> None:
    (tmp_path / "README").write_text("not ours")
    (tmp_path / "ab").mkdir()
    (tmp_path / "ab" / "notes.txt").write_text("not ours either")
    s = store(tmp_path, Clock(), max_bytes=10)
    assert s.figures() == StoreFigures(0, 0, 0, 10)
    assert s.purge_prefix(b"") == 0
    assert files(tmp_path) == ["README", "notes.txt"]


# --- the bound -------------------------------------------------------------------------


def keyed(i: int) -> bytes:
    return b"https://a.test/%03d" % i


def sized(tmp_path: pathlib.Path) -> int:
    """The size of the file of one of the equally sized entries below."""
    probe = tmp_path / "probe"
    s = store(probe, Clock())
    return put(s, keyed(0), b"x" * 1_000).size


def test_the_least_recently_used_file_is_evicted(tmp_path: pathlib.Path) -> None:
    one = sized(tmp_path)
    clock = Clock()
    directory = tmp_path / "cache"
    # Room for three, and three are under EVICT_TO of it: a fourth evicts exactly one.
    s = store(directory, clock, max_bytes=int(3.5 * one))
    for i in range(3):
        put(s, keyed(i), b"x" * 1_000)
        clock.now += 10
    clock.now += disk.TOUCH_INTERVAL
    assert body_of(s, keyed(0)) is not None  # now the most recently used: 1 is the oldest
    put(s, keyed(3), b"x" * 1_000)
    assert [body_of(s, keyed(i)) is not None for i in range(4)] == [True, False, True, True]
    assert s.figures() == StoreFigures(3, 3 * one, 1, int(3.5 * one))


def test_a_hit_touches_the_file_at_most_once_per_interval(tmp_path: pathlib.Path) -> None:
    clock = Clock()
    s = store(tmp_path, clock)
    put(s, KEY, b"x")
    path = path_of(tmp_path, KEY)
    assert path.stat().st_mtime == T0
    clock.now += disk.TOUCH_INTERVAL - 1
    assert body_of(s, KEY) == b"x"
    assert path.stat().st_mtime == T0
    clock.now += 1
    assert body_of(s, KEY) == b"x"
    assert path.stat().st_mtime == T0 + disk.TOUCH_INTERVAL


def test_eviction_works_across_stores(tmp_path: pathlib.Path) -> None:
    one = sized(tmp_path)
    clock = Clock()
    directory = tmp_path / "cache"
    a = store(directory, clock, max_bytes=int(3.5 * one))
    b = store(directory, clock, max_bytes=int(3.5 * one))
    put(a, keyed(0), b"x" * 1_000)
    clock.now += 1
    put(a, keyed(1), b"x" * 1_000)
    clock.now += 1
    put(b, keyed(2), b"x" * 1_000)  # b's first scan counts a's files
    clock.now += 1
    put(b, keyed(3), b"x" * 1_000)  # over: b evicts a's oldest
    assert [body_of(a, keyed(i)) is not None for i in range(4)] == [False, True, True, True]
    assert b.figures() == StoreFigures(3, 3 * one, 1, int(3.5 * one))
    # a learns of b's writes at its next scan, at most SCAN_INTERVAL after its last.
    assert a.figures() == StoreFigures(2, 2 * one, 0, int(3.5 * one))
    clock.now += disk.SCAN_INTERVAL
    assert a.figures() == StoreFigures(3, 3 * one, 0, int(3.5 * one))
    # A file another store removed in the meantime is no obstacle to eviction.
    b.invalidate(keyed(1))
    clock.now += 1
    put(a, keyed(4), b"x" * 1_000)
    put(a, keyed(5), b"x" * 1_000)
    assert [body_of(b, keyed(i)) is not None for i in range(6)] == [
        False,
        False,
        False,
        True,
        True,
        True,
    ]
    assert a.figures().bytes == 3 * one


def test_a_writer_over_the_bound_evicts_down_to_the_low_mark(tmp_path: pathlib.Path) -> None:
    one = sized(tmp_path)
    clock = Clock()
    directory = tmp_path / "cache"
    s = store(directory, clock, max_bytes=10 * one)
    for i in range(11):
        put(s, keyed(i), b"x" * 1_000)
        clock.now += 1
    # The eleventh is over 10: down to 9 (EVICT_TO), the oldest first; the new one stays.
    assert [body_of(s, keyed(i)) is not None for i in range(11)] == [False] * 2 + [True] * 9
    assert s.figures() == StoreFigures(9, 9 * one, 2, 10 * one)


def test_a_marker_goes_with_the_last_of_its_variants(tmp_path: pathlib.Path) -> None:
    one = sized(tmp_path)
    clock = Clock()
    directory = tmp_path / "cache"
    s = store(directory, clock, max_bytes=3 * one)
    put(s, keyed(0), b"x" * 1_000, vary=GZIP)
    clock.now += 1
    put(s, keyed(1), b"x" * 1_000)
    clock.now += 1
    put(s, keyed(2), b"x" * 1_000)  # over (the marker's bytes count): the variant goes
    assert body_of(s, keyed(0), [(b"Accept-Encoding", b"gzip")]) is None
    assert sorted(files(directory)) == sorted(path_of(directory, keyed(i)).name for i in (1, 2))
    assert s.figures() == StoreFigures(2, 2 * one, 1, 3 * one)


def test_stale_temporary_files_are_removed_by_the_first_scan(tmp_path: pathlib.Path) -> None:
    clock = Clock()
    s = store(tmp_path, clock)
    writer = s.begin(KEY, None)  # this store's own, in progress
    assert writer is not None
    assert writer.write(b"in progress")
    fan_out = tmp_path / ("00" if path_of(tmp_path, KEY).parent.name != "00" else "01")
    fan_out.mkdir()
    stale = fan_out / (disk.TEMP_PREFIX + "crashed")
    recent = fan_out / (disk.TEMP_PREFIX + "another-worker")
    for path in (stale, recent):
        path.write_bytes(b"partial")
    old = T0 - disk.STALE_TEMP_AGE - 1
    os.utime(stale, (old, old))
    os.utime(recent, (T0 - 10, T0 - 10))
    mine = next(p for p in tmp_path.rglob(disk.TEMP_PREFIX + "*") if p.parent != fan_out)
    os.utime(mine, (old, old))
    assert s.figures() == StoreFigures(0, 0, 0, 1_000_000)
    assert not stale.exists()
    assert recent.exists() and mine.exists()
    assert writer.write(b", done")
    assert writer.commit(head(17)) is not None
    assert body_of(s, KEY) == b"in progress, done"


def test_purge_prefix_reads_every_file_and_removes_what_is_under_it(
    tmp_path: pathlib.Path,
) -> None:
    clock = Clock()
    a, b = store(tmp_path, clock), store(tmp_path, clock)
    put(a, b"https://a.test/static/a", b"a")
    put(a, b"https://a.test/static/b", b"b", vary=GZIP)
    put(b, b"https://a.test/static/b", b"b", vary=PLAIN)
    put(b, b"https://a.test/other", b"o")
    assert b.purge_prefix(b"https://a.test/static/") == 3
    assert body_of(a, b"https://a.test/static/a") is None
    assert body_of(a, b"https://a.test/static/b", [(b"Accept-Encoding", b"gzip")]) is None
    assert body_of(a, b"https://a.test/other") == b"o"
    assert files(tmp_path) == [path_of(tmp_path, b"https://a.test/other").name]
    assert b.figures().objects == 1


def test_invalidate_counts_variants_not_the_marker(tmp_path: pathlib.Path) -> None:
    s = store(tmp_path, Clock())
    put(s, KEY, b"gz", vary=GZIP)
    put(s, KEY, b"id", vary=PLAIN)
    put(s, b"https://a.test/y", b"y")
    assert s.invalidate(KEY) == 2
    assert s.invalidate(KEY) == 0
    assert s.invalidate(b"https://a.test/y") == 1
    assert files(tmp_path) == []
    assert s.figures() == StoreFigures(0, 0, 0, 1_000_000)


def test_a_writer_dropped_unfinished_keeps_nothing(tmp_path: pathlib.Path) -> None:
    s = store(tmp_path, Clock())
    writer = s.begin(KEY, None)
    assert writer is not None
    assert writer.write(b"the exchange went away")
    del writer
    assert files(tmp_path) == []
    assert s.lookup(KEY, []) is None


def test_a_selection_is_found_whatever_order_the_head_keeps_it_in(
    tmp_path: pathlib.Path,
) -> None:
    s = store(tmp_path, Clock())
    put(s, KEY, b"fr gz", vary=((b"accept-language", b"fr"), (b"accept-encoding", b"gzip")))
    request = [(b"Accept-Language", b"fr"), (b"Accept-Encoding", b"gzip")]
    assert body_of(s, KEY, request) == b"fr gz"
    assert body_of(s, KEY, request[:1]) is None


def test_purge_removes_corrupt_files_it_reads(tmp_path: pathlib.Path) -> None:
    s = store(tmp_path, Clock())
    put(s, KEY, b"x")
    put(s, b"https://b.test/y", b"y")
    path = path_of(tmp_path, KEY)
    path.write_bytes(path.read_bytes()[:-1])
    assert s.purge_prefix(b"https://b.test/") == 1
    assert files(tmp_path) == []


def test_request_headers_may_be_a_one_shot_iterable(tmp_path: pathlib.Path) -> None:
    s = store(tmp_path, Clock())
    put(s, KEY, b"gz", vary=GZIP)
    entry = s.lookup(KEY, iter([(b"Accept-Encoding", b"gzip")]))
    assert entry is not None and entry.body() == b"gz"
    entry.close()


def test_a_new_entry_near_the_bound_evicts_the_others_but_stays(tmp_path: pathlib.Path) -> None:
    one = sized(tmp_path)
    clock = Clock()
    directory = tmp_path / "cache"
    s = store(directory, clock, max_bytes=10 * one)
    for i in range(3):
        put(s, keyed(i), b"x" * 1_000)  # all at the same time as the new one
    big = b"y" * (9 * one)
    put(s, keyed(3), big)
    assert [body_of(s, keyed(i)) for i in range(4)] == [None, None, None, big]
    assert s.figures().objects == 1


def test_a_variant_under_another_selections_name_is_not_served(tmp_path: pathlib.Path) -> None:
    s = store(tmp_path, Clock())
    put(s, KEY, b"gz", vary=GZIP)
    marker = path_of(tmp_path, KEY)
    (variant,) = [p for p in marker.parent.iterdir() if p.name.startswith(marker.name + ".")]
    variant.rename(marker.parent / f"{marker.name}.{disk._vary_hash(PLAIN)}")
    assert s.lookup(KEY, []) is None


# -- claims: collapsing across the processes sharing a directory ------------------------------


def test_a_claim_keeps_other_processes_from_fetching_until_let_go(tmp_path: pathlib.Path) -> None:
    clock = Clock()
    clock.now = time.time()
    one = DiskStore(str(tmp_path), 2**20, 2**16, clock=clock)
    two = DiskStore(str(tmp_path), 2**20, 2**16, clock=clock)
    assert one.claim(b"https://a/x", 5.0)
    assert one.claim(b"https://a/x", 5.0)  # its own claim
    assert not two.claim(b"https://a/x", 5.0)
    assert two.claim(b"https://a/other", 5.0)
    one.release(b"https://a/x")
    assert two.claim(b"https://a/x", 5.0)
    assert not one.claim(b"https://a/x", 5.0)


def test_a_claim_older_than_the_wait_is_taken_over(tmp_path: pathlib.Path) -> None:
    clock = Clock()
    clock.now = time.time()
    dead = DiskStore(str(tmp_path), 2**20, 2**16, clock=clock)
    live = DiskStore(str(tmp_path), 2**20, 2**16, clock=clock)
    assert dead.claim(b"k", 5.0)
    clock.now += 6.0  # the process that claimed it died without letting go
    assert live.claim(b"k", 5.0)
    assert not DiskStore(str(tmp_path), 2**20, 2**16, clock=clock).claim(b"k", 5.0)


def test_claim_files_are_not_entries_and_old_ones_are_swept(tmp_path: pathlib.Path) -> None:
    clock = Clock()
    clock.now = time.time()
    store = DiskStore(str(tmp_path), 2**20, 2**16, clock=clock)
    assert store.claim(b"https://a/x", 5.0)
    claims = list(tmp_path.glob(f"*/{disk.CLAIM_PREFIX}*"))
    assert len(claims) == 1
    assert store.purge_prefix(b"https://a/") == 0 and store.invalidate(b"https://a/x") == 0
    assert store.figures().objects == 0 and claims[0].exists()
    clock.now += disk.STALE_TEMP_AGE + 1
    other = DiskStore(str(tmp_path), 2**20, 2**16, clock=clock)
    other.purge_prefix(b"none")  # a scan
    assert not claims[0].exists()


def test_the_memory_store_never_refuses_a_claim() -> None:
    from edgeproxy.cache.store import MemoryStore

    store = MemoryStore(2**20, 2**16)
    assert store.claim(b"k", 5.0) and store.claim(b"k", 5.0)
    store.release(b"k")
