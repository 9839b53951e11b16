"""
The directory store: the cache every ``--workers`` process shares, as nginx's
``proxy_cache_path`` is shared by its workers.  Nothing that matters is kept only in memory, so
it survives a restart and each process sees the others' writes and removals.

Layout: one file per variant under ``<directory>/<h[:2]>/<h>``, ``h`` the SHA-256 of the key.
A response without ``Vary`` is that file.  With ``Vary``, that file is a small marker naming the
``Vary`` header names, and each variant lives in ``<h>.<v>``, ``v`` a hash of its selection (the
names with the request's values), so a lookup reads at most two files whatever the number of
variants.

A file is the body, then a JSON header (``key`` and ``StoredHead.to_json()``, or ``key`` and
``vary`` for a marker), then the header's length (4 bytes, big-endian) and ``EPC1``.  The header
comes last so that a body streams once, straight to its file, whatever its size: it is only
known whole when the body ends.  A lookup reads the file's tail in one ``pread``; the length of
the file must be exactly the body's, the header's and the trailer's, else the file is corrupt.

Writes go to a temporary file (``.tmp-*``) in the same directory, renamed into place with
``os.replace``: a reader sees the old file or the new one, never a partial one.  No ``fsync``: a
cache may lose what the kernel had not written when the machine stops, and a file that comes back
truncated or empty fails the length check and is removed as corrupt.  Unreadable or corrupt
files are a miss and are removed; a file another process removes at any point is a miss or a
no-op (never an error).

Bound by bytes: each process keeps an estimate of the directory's total (a scan, plus what it
wrote since), scans again at most every :data:`SCAN_INTERVAL` seconds when it writes, and at once
when its estimate is over ``max_bytes``; whichever process finds the directory over evicts the
files with the oldest mtimes until it is under :data:`EVICT_TO` of ``max_bytes`` (so a full cache
is not scanned on every write).  A hit sets the file's mtime to the clock's time at most once per
:data:`TOUCH_INTERVAL`, which makes eviction least recently used to within that interval.
Temporary files older than :data:`STALE_TEMP_AGE` (a crashed process's) are removed by scans.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import struct
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, BinaryIO

from edgeproxy.cache.store import Entry, Store, StoreFigures, Writer
from edgeproxy.core.httpcache import StoredHead, vary_key, vary_matches

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["EVICT_TO", "SCAN_INTERVAL", "STALE_TEMP_AGE", "TOUCH_INTERVAL", "DiskStore"]

MAGIC = b"EPC1"
_TRAILER = struct.Struct(">I4s")
# A header longer than this is taken for corruption (the proxy's own header limits are far
# below it).
MAX_HEADER = 1 << 20
# Read at the end of a file in one pread: the trailer and, nearly always, the whole header.
_TAIL = 8192
# Bodies copied after a 304 (update) go through a buffer of this size.
_COPY_CHUNK = 1 << 16

TOUCH_INTERVAL = 60.0
SCAN_INTERVAL = 5.0
# A scan costs I/O on the event loop: scans are spaced at least this many times their own
# duration apart, so they take at most ~2% of the time however large the directory.
_SCAN_SPACING = 50.0
STALE_TEMP_AGE = 3600.0
EVICT_TO = 0.9
TEMP_PREFIX = ".tmp-"
#: A process fetching a key to store it says so with an empty file of this
#: prefix and the key's hash next to where the entry will be (see claim()).
CLAIM_PREFIX = ".claim-"

_FILE_NAME = re.compile(r"[0-9a-f]{64}(?:\.[0-9a-f]{32})?\Z")
_FAN_OUT = re.compile(r"[0-9a-f]{2}\Z")

Vary = tuple[tuple[bytes, bytes], ...]


class _Corrupt(Exception):
    pass


def _key_hash(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()


def _vary_hash(vary: Vary) -> str:
    # Sorted, as vary_key gives a selection at lookup, whatever order the head keeps it in.
    text = json.dumps([[n.decode("latin-1"), v.decode("latin-1")] for n, v in sorted(vary)])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _trailer(header: dict[str, object]) -> bytes:
    try:
        raw = json.dumps(header, separators=(",", ":")).encode()
    except (TypeError, ValueError) as e:  # a head that cannot be kept is not kept
        raise _Corrupt("unserialisable header") from e
    if len(raw) > MAX_HEADER:
        raise _Corrupt("header too long")
    return raw + _TRAILER.pack(len(raw), MAGIC)


def _read_header(fd: int) -> tuple[dict[str, Any], int, os.stat_result]:
    """The JSON header of an open file, the body's length and the file's stat."""
    st = os.fstat(fd)
    size = st.st_size
    if size < _TRAILER.size:
        raise _Corrupt("short")
    tail_length = min(size, _TAIL)
    tail = os.pread(fd, tail_length, size - tail_length)
    if len(tail) != tail_length:
        raise _Corrupt("short read")
    header_length, magic = _TRAILER.unpack_from(tail, tail_length - _TRAILER.size)
    body_length = size - _TRAILER.size - header_length
    if magic != MAGIC or header_length > MAX_HEADER or body_length < 0:
        raise _Corrupt("trailer")
    if header_length + _TRAILER.size <= tail_length:
        raw = tail[tail_length - _TRAILER.size - header_length : tail_length - _TRAILER.size]
    else:
        raw = os.pread(fd, header_length, body_length)
        if len(raw) != header_length:
            raise _Corrupt("short read")
    try:
        header = json.loads(raw)
    except ValueError as e:
        raise _Corrupt("json") from e
    if not isinstance(header, dict) or not isinstance(header.get("key"), str):
        raise _Corrupt("header")
    return header, body_length, st


def _marker_names(header: dict[str, Any], body_length: int) -> tuple[bytes, ...] | None:
    """The Vary names of a marker's header; None if it is an entry's.  Raises if neither."""
    names = header.get("vary")
    if names is None:
        if "head" not in header:
            raise _Corrupt("neither entry nor marker")
        return None
    if (
        body_length != 0
        or not isinstance(names, list)
        or not names
        or not all(isinstance(n, str) for n in names)
    ):
        raise _Corrupt("marker")
    return tuple(n.encode("latin-1") for n in names)


def _entry_head(header: dict[str, Any], body_length: int, heuristic_max: float) -> StoredHead:
    try:
        head = StoredHead.from_json(header["head"], heuristic_max=heuristic_max)
    except Exception as e:  # whatever from_json makes of a damaged header
        raise _Corrupt("head") from e
    if head.body_length != body_length:
        raise _Corrupt("length")
    return head


class _BodyReader(io.RawIOBase):
    """The body of an entry's file: its own descriptor and position, ends where the body ends."""

    def __init__(self, fd: int, length: int) -> None:
        super().__init__()
        self._fd = fd
        self._length = length
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        count = min(len(view), self._length - self._position)
        if count <= 0:
            return 0
        data = os.pread(self._fd, count, self._position)
        view[: len(data)] = data
        self._position += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            base = 0
        elif whence == io.SEEK_CUR:
            base = self._position
        elif whence == io.SEEK_END:
            base = self._length
        else:
            raise ValueError(f"invalid whence {whence}")
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._position = base + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


class _DiskEntry(Entry):
    """An entry read from (or just written to) its file.  It keeps the file open, so its body
    stays the one its head describes even if another process replaces or removes the file;
    the descriptor is closed by ``close()`` or when the entry is collected."""

    __slots__ = ("_fd", "_identity", "_path")

    def __init__(
        self, key: bytes, head: StoredHead, fd: int, path: str, st: os.stat_result
    ) -> None:
        super().__init__(key, head, st.st_size)
        self._fd = fd
        self._path = path
        self._identity = (st.st_dev, st.st_ino)

    def body(self) -> bytes:
        length = self.head.body_length
        data = os.pread(self._fd, length, 0)
        if len(data) == length:
            return data
        parts = [data]
        read = len(data)
        while read < length:
            more = os.pread(self._fd, length - read, read)
            if not more:
                raise OSError(f"cache file {self._path} shrank under its entry")
            parts.append(more)
            read += len(more)
        return b"".join(parts)

    def open_body(self) -> BinaryIO:
        return io.BufferedReader(_BodyReader(os.dup(self._fd), self.head.body_length))

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __del__(self) -> None:
        self.close()


_OPEN, _ABANDONED, _DONE = 0, 1, 2


class _DiskWriter(Writer):
    """Streams the body to a temporary file next to where the entry will live."""

    __slots__ = ("_fd", "_file", "_key", "_length", "_path", "_state", "_store")

    def __init__(self, store: DiskStore, key: bytes, fd: int, path: str) -> None:
        self._store = store
        self._key = key
        self._fd = fd
        self._path = path
        self._file = open(fd, "wb", closefd=False)
        self._length = 0
        self._state = _OPEN

    def write(self, data: bytes) -> bool:
        if self._state != _OPEN:
            return False
        self._length += len(data)
        if self._length > self._store.max_object_bytes:
            self.discard()
            return False
        try:
            self._file.write(data)
        except OSError:  # a full disk: the response still goes to the client, uncached
            self.discard()
            return False
        return True

    def commit(self, head: StoredHead) -> Entry | None:
        if self._state != _OPEN:
            return None
        if head.body_length != self._length:
            self.discard()
            return None
        try:
            trailer = _trailer({"key": self._key.decode("latin-1"), "head": head.to_json()})
            size = self._length + len(trailer)
            if size > self._store.max_bytes:
                self.discard()
                return None
            self._file.write(trailer)
            self._file.close()
        except (OSError, _Corrupt):
            self.discard()
            return None
        self._state = _DONE
        return self._store._install(self._key, head, self._fd, self._path)

    def discard(self) -> None:
        if self._state != _OPEN:
            return
        self._state = _ABANDONED
        try:
            self._file.close()
        except OSError:
            pass  # the buffered rest could not be written: it is being thrown away anyway
        os.close(self._fd)
        self._store._forget_temporary(self._path)

    def __del__(self) -> None:
        # A writer dropped without commit or discard (an exchange torn down) keeps nothing.
        self.discard()


class DiskStore(Store):
    """One file per variant in ``directory``, shared by every process that opens it.
    ``heuristic_max`` is given to ``StoredHead.from_json`` for the heads it reads back."""

    def __init__(
        self,
        directory: str,
        max_bytes: int,
        max_object_bytes: int,
        *,
        clock: Callable[[], float] = time.time,
        heuristic_max: float = 86400.0,
    ) -> None:
        self.directory = directory
        # Given to StoredHead.from_json: a head read back derives what the policy would have.
        self.heuristic_max = heuristic_max
        self.max_bytes = max_bytes
        self.max_object_bytes = max_object_bytes
        self._clock = clock
        os.makedirs(directory, exist_ok=True)
        # What this process knows of the directory: the last scan plus its own writes since.
        self._bytes = 0
        self._objects = 0
        self._evictions = 0
        self._next_scan: float | None = None
        # This process's temporary files still being written (a scan leaves them alone).
        self._writing: set[str] = set()
        # This process's claims: key -> claim file.
        self._claims: dict[bytes, str] = {}

    # --- the Store interface ------------------------------------------------------------

    def lookup(self, key: bytes, request_headers: Iterable[tuple[bytes, bytes]]) -> Entry | None:
        base = self._path(_key_hash(key))
        found = self._open(base, key)
        if found is None:
            return None
        fd, header, body_length, st = found
        path = base
        try:
            names = _marker_names(header, body_length)
        except _Corrupt:
            os.close(fd)
            self._remove_corrupt(base, st)
            return None
        if names is not None:
            os.close(fd)
            self._touch(base, st)
            if not isinstance(request_headers, list | tuple):
                request_headers = tuple(request_headers)  # read again by vary_matches below
            selection = vary_key([b"Vary: " + b", ".join(names)], request_headers)
            if not selection:
                return None
            path = f"{base}.{_vary_hash(selection)}"
            found = self._open(path, key)
            if found is None:
                return None
            fd, header, body_length, st = found
        try:
            head = _entry_head(header, body_length, self.heuristic_max)
        except _Corrupt:
            os.close(fd)
            self._remove_corrupt(path, st)
            return None
        if head.vary and not vary_matches(head.vary, request_headers):
            os.close(fd)
            return None
        self._touch(path, st)
        return _DiskEntry(key, head, fd, path, st)

    def begin(self, key: bytes, length: int | None) -> Writer | None:
        if length is not None and (length > self.max_object_bytes or length > self.max_bytes):
            return None
        made = self._temporary(_key_hash(key))
        if made is None:
            return None
        fd, path = made
        return _DiskWriter(self, key, fd, path)

    def update(self, entry: Entry, head: StoredHead) -> Entry | None:
        if not isinstance(entry, _DiskEntry) or entry._fd < 0:
            return None
        if head.body_length != entry.head.body_length:
            return None
        try:
            st = os.stat(entry._path)
        except OSError:
            return None
        if (st.st_dev, st.st_ino) != entry._identity:
            return None  # removed, or replaced by a newer response
        made = self._temporary(_key_hash(entry.key))
        if made is None:
            return None
        fd, path = made
        try:
            copied = 0
            while copied < head.body_length:
                chunk = os.pread(entry._fd, min(_COPY_CHUNK, head.body_length - copied), copied)
                if not chunk:
                    raise _Corrupt("shrank")
                os.write(fd, chunk)  # a regular file takes the whole write or raises
                copied += len(chunk)
            os.write(fd, _trailer({"key": entry.key.decode("latin-1"), "head": head.to_json()}))
        except (OSError, _Corrupt):
            os.close(fd)
            self._forget_temporary(path)
            return None
        new = self._install(entry.key, head, fd, path)
        if new is not None and new._path != entry._path:
            self._unlink_if(entry._path, entry._identity)
        return new

    def invalidate(self, key: bytes) -> int:
        digest = _key_hash(key)
        base = self._path(digest)
        removed = 0
        found = self._open(base, key)
        if found is not None:
            fd, header, body_length, st = found
            os.close(fd)
            try:
                names = _marker_names(header, body_length)
            except _Corrupt:
                names = ()
            if self._unlink_if(base, (st.st_dev, st.st_ino)):
                self._bytes -= st.st_size
                if names is None:
                    removed += 1
                    self._objects -= 1
        removed += self._remove_variants(digest, keep=None)
        return removed

    def purge_prefix(self, prefix: bytes) -> int:
        removed = 0
        for _mtime, _size, path, _name in self._files(self._clock()):
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                header, body_length, st = _read_header(fd)
                names = _marker_names(header, body_length)
            except _Corrupt:
                self._remove_corrupt(path, os.fstat(fd))
                continue
            except OSError:
                continue
            finally:
                os.close(fd)
            if str(header["key"]).encode("latin-1").startswith(prefix) and self._unlink_if(
                path, (st.st_dev, st.st_ino)
            ):
                self._bytes -= st.st_size
                if names is None:
                    removed += 1
                    self._objects -= 1
        return removed

    def figures(self) -> StoreFigures:
        now = self._clock()
        if self._next_scan is None or now >= self._next_scan:
            self._refresh(now, keep=())
        return StoreFigures(
            max(self._objects, 0), max(self._bytes, 0), self._evictions, self.max_bytes
        )

    def claim(self, key: bytes, seconds: float) -> bool:
        """Claim ``key`` with a file made exclusively (``O_EXCL``): every process
        sharing the directory sees it.  A claim older than ``seconds`` is a
        process's that died or gave up: it is taken over.  Where the claim
        cannot be made at all, the fetch goes ahead (a cache must not stop
        requests)."""
        if key in self._claims:
            return True
        digest = _key_hash(key)
        path = os.path.join(os.path.dirname(self._path(digest)), CLAIM_PREFIX + digest)
        for _ in range(2):
            now = self._clock()
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                # Its age is read against the same clock that ages it.
                os.utime(path, (now, now))
            except FileNotFoundError:
                try:
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                except OSError:
                    return True
                continue
            except FileExistsError:
                try:
                    age = now - os.stat(path).st_mtime
                except FileNotFoundError:
                    continue  # let go of just now: try again
                except OSError:
                    return True
                if age < seconds:
                    return False
                try:
                    os.utime(path, (now, now))
                except OSError:
                    return True
            except OSError:
                return True
            self._claims[key] = path
            return True
        return True

    def release(self, key: bytes) -> None:
        path = self._claims.pop(key, None)
        if path is not None:
            try:
                os.unlink(path)
            except OSError:
                pass  # taken over and let go by another process meanwhile

    def close(self) -> None:
        for key in list(self._claims):
            self.release(key)

    # --- files --------------------------------------------------------------------------

    def _path(self, digest: str) -> str:
        return os.path.join(self.directory, digest[:2], digest)

    def _open(
        self, path: str, key: bytes
    ) -> tuple[int, dict[str, Any], int, os.stat_result] | None:
        """The open file at ``path`` with its header, if it is a sound file for ``key``."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            header, body_length, st = _read_header(fd)
            if header["key"] != key.decode("latin-1"):
                raise _Corrupt("key")
        except _Corrupt:
            st = os.fstat(fd)
            os.close(fd)
            self._remove_corrupt(path, st)
            return None
        except OSError:
            os.close(fd)
            return None
        return fd, header, body_length, st

    def _remove_corrupt(self, path: str, st: os.stat_result) -> None:
        if self._unlink_if(path, (st.st_dev, st.st_ino)):
            self._bytes -= st.st_size

    def _unlink_if(self, path: str, identity: tuple[int, int]) -> bool:
        """Remove ``path`` if it is still the file seen (not a newer one put in its place)."""
        try:
            st = os.stat(path)
            if (st.st_dev, st.st_ino) != identity:
                return False
            os.unlink(path)
        except OSError:
            return False
        return True

    def _unlink(self, path: str) -> bool:
        try:
            os.unlink(path)
        except OSError:
            return False
        return True

    def _touch(self, path: str, st: os.stat_result) -> None:
        now = self._clock()
        if now - st.st_mtime >= TOUCH_INTERVAL:
            try:
                os.utime(path, (now, now))
            except OSError:
                pass  # removed meanwhile: nothing to keep fresh

    def _temporary(self, digest: str) -> tuple[int, str] | None:
        directory = os.path.dirname(self._path(digest))
        try:
            try:
                fd, path = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX)
            except FileNotFoundError:
                os.makedirs(directory, exist_ok=True)
                fd, path = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX)
        except OSError:
            return None
        self._writing.add(path)
        return fd, path

    def _forget_temporary(self, path: str) -> None:
        self._writing.discard(path)
        try:
            os.unlink(path)
        except OSError:
            pass  # already gone (a scan of another process, or never made)

    def _install(self, key: bytes, head: StoredHead, fd: int, temporary: str) -> _DiskEntry | None:
        """Put a complete temporary file in its place: the variant, then its marker."""
        digest = _key_hash(key)
        base = self._path(digest)
        target = f"{base}.{_vary_hash(head.vary)}" if head.vary else base
        found, previous = self._names_at(base, key)
        now = self._clock()
        try:
            os.utime(fd, (now, now))
            try:
                old_size = os.stat(target).st_size
                replaced = True
            except FileNotFoundError:
                old_size, replaced = 0, False
            os.replace(temporary, target)
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            self._forget_temporary(temporary)
            return None
        self._writing.discard(temporary)
        self._bytes += st.st_size - old_size
        # What a marker was is no object (and a replaced variant or entry stays one).
        if not replaced or (target == base and previous is not None):
            self._objects += 1
        entry = _DiskEntry(key, head, fd, target, st)
        if head.vary:
            names = tuple(name for name, _ in head.vary)
            if previous != names:
                self._write_marker(key, base, names, replacing_entry=found and previous is None)
                if previous is not None:
                    # Other Vary names than before: their variants can no longer be reached.
                    self._remove_variants(digest, keep=target)
        elif previous is not None:
            self._remove_variants(digest, keep=None)
        self._maybe_refresh(now, keep=(target, base))
        return entry

    def _names_at(self, base: str, key: bytes) -> tuple[bool, tuple[bytes, ...] | None]:
        """Whether a sound file is at ``base``, and the Vary names if it is a marker."""
        found = self._open(base, key)
        if found is None:
            return False, None
        fd, header, body_length, _st = found
        os.close(fd)
        try:
            return True, _marker_names(header, body_length)
        except _Corrupt:
            return False, None

    def _write_marker(
        self, key: bytes, base: str, names: tuple[bytes, ...], *, replacing_entry: bool
    ) -> None:
        made = self._temporary(os.path.basename(base))
        if made is None:
            return
        fd, path = made
        try:
            os.write(
                fd,
                _trailer(
                    {"key": key.decode("latin-1"), "vary": [n.decode("latin-1") for n in names]}
                ),
            )
            now = self._clock()
            os.utime(fd, (now, now))
            try:
                old = os.stat(base).st_size
            except FileNotFoundError:
                old = 0
            os.replace(path, base)
            self._bytes += os.fstat(fd).st_size - old
        except (OSError, _Corrupt):
            self._forget_temporary(path)
            return
        finally:
            os.close(fd)
        self._writing.discard(path)
        if replacing_entry:
            self._objects -= 1

    def _remove_variants(self, digest: str, keep: str | None) -> int:
        directory = os.path.dirname(self._path(digest))
        prefix = digest + "."
        removed = 0
        try:
            names = os.listdir(directory)
        except OSError:
            return 0
        for name in names:
            if not name.startswith(prefix):
                continue
            path = os.path.join(directory, name)
            if path == keep:
                continue
            try:
                size = os.stat(path).st_size
                os.unlink(path)
            except OSError:
                continue
            self._bytes -= size
            self._objects -= 1
            removed += 1
        return removed

    # --- the bound ----------------------------------------------------------------------

    def _maybe_refresh(self, now: float, keep: tuple[str, ...]) -> None:
        if self._next_scan is None or now >= self._next_scan or self._bytes > self.max_bytes:
            self._refresh(now, keep)

    def _files(self, now: float) -> list[tuple[float, int, str, str]]:
        """Every cache file as (mtime, size, path, name); removes stale temporary files."""
        files: list[tuple[float, int, str, str]] = []
        try:
            top = [d for d in os.scandir(self.directory) if _FAN_OUT.match(d.name)]
        except OSError:
            return files
        for sub in top:
            try:
                inner = list(os.scandir(sub.path))
            except OSError:
                continue
            for item in inner:
                name = item.name
                try:
                    if name.startswith(TEMP_PREFIX):
                        if (
                            item.path not in self._writing
                            and now - item.stat(follow_symlinks=False).st_mtime > STALE_TEMP_AGE
                        ):
                            os.unlink(item.path)
                        continue
                    if name.startswith(CLAIM_PREFIX):
                        # A crashed process's claim (live ones are seconds old).
                        if now - item.stat(follow_symlinks=False).st_mtime > STALE_TEMP_AGE:
                            os.unlink(item.path)
                        continue
                    if not _FILE_NAME.match(name):
                        continue
                    st = item.stat(follow_symlinks=False)
                except OSError:
                    continue
                files.append((st.st_mtime, st.st_size, item.path, name))
        return files

    def _refresh(self, now: float, keep: tuple[str, ...]) -> None:
        """Scan the directory; if it is over the bound, evict the least recently used."""
        started = time.perf_counter()
        files = self._files(now)
        total = sum(size for _, size, _, _ in files)
        varied = {name[:64] for _, _, _, name in files if "." in name}
        if total > self.max_bytes:
            goal = int(self.max_bytes * EVICT_TO)
            files.sort()
            kept: list[tuple[float, int, str, str]] = []
            for item in files:
                _mtime, size, path, name = item
                # A marker goes with the last of its variants (below), not before them.
                if total <= goal or path in keep or name in varied:
                    kept.append(item)
                    continue
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass  # another process evicted it first
                except OSError:
                    kept.append(item)
                    continue
                else:
                    self._evictions += 1
                total -= size
            files = kept
            still_varied = {name[:64] for _, _, _, name in files if "." in name}
            for item in [f for f in files if f[3] in varied and f[3] not in still_varied]:
                # The last variant of this marker is gone, and so is the marker's use.
                _mtime, size, path, _name = item
                if self._is_marker(path) and self._unlink(path):
                    total -= size
                    files.remove(item)
            varied = still_varied
        self._bytes = total
        self._objects = sum(1 for _, _, _, name in files if name not in varied)
        spent = time.perf_counter() - started
        self._next_scan = now + max(SCAN_INTERVAL, _SCAN_SPACING * spent)

    def _is_marker(self, path: str) -> bool:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return False
        try:
            header, body_length, _st = _read_header(fd)
            return _marker_names(header, body_length) is not None
        except (OSError, _Corrupt):
            return False
        finally:
            os.close(fd)
