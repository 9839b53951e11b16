"""
What the cache stage stores responses in: the :class:`Store` interface, the :class:`Entry` a
lookup finds and the :class:`Writer` a response streams into, and :class:`MemoryStore`, the
in-memory LRU store (each worker process has its own).

A store keeps variants: one entry per key (the URI, :func:`~edgeproxy.core.httpcache.cache_key`)
and per ``Vary`` selection (``StoredHead.vary``).  A new response for the same key and the same
selection replaces the old one; a lookup returns the most recent variant whose selection the
request matches (RFC 9111 4.1).  The stores decide nothing about HTTP: whether a response may
be stored or served is the policy's question (:mod:`edgeproxy.core.httpcache`).
"""

from __future__ import annotations

import abc
import io
from collections import OrderedDict
from collections.abc import Iterable
from typing import BinaryIO, Protocol

import attrs

from edgeproxy.core.httpcache import StoredHead, vary_matches

__all__ = [
    "ENTRY_OVERHEAD",
    "Entry",
    "MemoryStore",
    "Store",
    "StoreFigures",
    "Writer",
]

# What a memory entry costs beyond the bytes of its body, key and header lines, charged so that
# a store of many small objects stays within its bound too: the Entry and StoredHead objects
# with their fields, the bytes objects' own headers (about 33 bytes each), the line tuple, the
# variant list and the LRU's dict slot.  Measured with tracemalloc on CPython 3.11: about 700
# bytes for an entry with four header lines and a StoredHead of only the persisted fields; the
# policy's StoredHead adds its derived fields (a few floats and flags), hence 1 KiB.
ENTRY_OVERHEAD = 1024


@attrs.frozen
class StoreFigures:
    objects: int
    bytes: int
    evictions: int
    max_bytes: int


class Entry(abc.ABC):
    """One stored response (a variant): its key, head, and what it is charged."""

    __slots__ = ("head", "key", "size")

    key: bytes
    head: StoredHead
    size: int

    def __init__(self, key: bytes, head: StoredHead, size: int) -> None:
        self.key = key
        self.head = head
        self.size = size

    @abc.abstractmethod
    def body(self) -> bytes:
        """The whole body (``head.body_length`` bytes)."""

    @abc.abstractmethod
    def open_body(self) -> BinaryIO:
        """A file positioned at the body's start that ends with the body; the caller closes it."""

    def close(self) -> None:  # noqa: B027 (a no-op unless the entry holds something)
        """Let go of what the entry holds (a disk entry's open file) before it is collected."""


class Writer(abc.ABC):
    """One response being stored while it streams."""

    __slots__ = ()

    @abc.abstractmethod
    def write(self, data: bytes) -> bool:
        """Add to the body.  False, and nothing is kept, once the body passes the store's
        ``max_object_bytes`` (or the store cannot take more); further writes are ignored."""

    @abc.abstractmethod
    def commit(self, head: StoredHead) -> Entry | None:
        """The body is whole: store it under ``head`` (whose ``body_length`` must be the
        number of bytes written), replacing the same key and ``Vary`` selection.  None if the
        writer was abandoned or the entry is refused (over a bound, or a length that does not
        match: a truncated body is never stored)."""

    @abc.abstractmethod
    def discard(self) -> None:
        """A truncated or aborted body: keep nothing.  Idempotent, and a no-op after commit."""


class Store(Protocol):
    max_bytes: int
    max_object_bytes: int

    def lookup(self, key: bytes, request_headers: Iterable[tuple[bytes, bytes]]) -> Entry | None:
        """The most recent variant of ``key`` whose ``Vary`` selection the request matches."""
        ...

    def begin(self, key: bytes, length: int | None) -> Writer | None:
        """A writer for a response to ``key``; None when a known length is over a bound."""
        ...

    def update(self, entry: Entry, head: StoredHead) -> Entry | None:
        """After a 304: the same body under a new head.  None if the entry is gone (evicted,
        invalidated, replaced) or the head's body length is not the entry's."""
        ...

    def invalidate(self, key: bytes) -> int:
        """Remove every variant of ``key``; how many were removed."""
        ...

    def purge_prefix(self, prefix: bytes) -> int:
        """Remove every variant of every key starting with ``prefix``; how many."""
        ...

    def claim(self, key: bytes, seconds: float) -> bool:
        """May this process fetch ``key`` to store it?  False while another process
        sharing the store has claimed it within ``seconds`` (and not let go): it is
        fetching it, so this one waits for it to appear instead (request collapsing
        across ``--workers``).  A store no other process shares always says True."""
        ...

    def release(self, key: bytes) -> None:
        """Let go of a claim (the fetch is over, stored or not); a no-op without one."""
        ...

    def figures(self) -> StoreFigures: ...

    def close(self) -> None: ...


# --- the memory store -------------------------------------------------------------------


class _MemoryEntry(Entry):
    __slots__ = ("_body",)

    def __init__(self, key: bytes, head: StoredHead, body: bytes) -> None:
        size = len(body) + len(key) + sum(len(line) for line in head.lines) + ENTRY_OVERHEAD
        super().__init__(key, head, size)
        self._body = body

    def body(self) -> bytes:
        return self._body

    def open_body(self) -> BinaryIO:
        return io.BytesIO(self._body)


_OPEN, _ABANDONED, _DONE = 0, 1, 2


class _MemoryWriter(Writer):
    __slots__ = ("_chunks", "_key", "_length", "_state", "_store")

    def __init__(self, store: MemoryStore, key: bytes) -> None:
        self._store = store
        self._key = key
        self._chunks: list[bytes] = []
        self._length = 0
        self._state = _OPEN

    def write(self, data: bytes) -> bool:
        if self._state != _OPEN:
            return False
        self._length += len(data)
        if self._length > self._store.max_object_bytes:
            self._state = _ABANDONED
            self._chunks = []
            return False
        self._chunks.append(data)
        return True

    def commit(self, head: StoredHead) -> Entry | None:
        if self._state != _OPEN:
            return None
        self._state = _DONE
        body = b"".join(self._chunks)
        self._chunks = []
        if head.body_length != len(body):
            return None
        return self._store._add(_MemoryEntry(self._key, head, body))

    def discard(self) -> None:
        if self._state == _OPEN:
            self._state = _ABANDONED
            self._chunks = []


class MemoryStore(Store):
    """Least recently used first, bounded by bytes (each entry is charged its ``size``: body,
    key and header lines plus :data:`ENTRY_OVERHEAD`).  A body is kept as one bytes object.
    A lookup is one dict lookup and a ``Vary`` check over that key's variants (usually one, and
    none to check without ``Vary``); it makes the entry the most recently used."""

    def __init__(self, max_bytes: int, max_object_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.max_object_bytes = max_object_bytes
        # Keyed by the entries themselves (identity hash): the LRU order.
        self._lru: OrderedDict[_MemoryEntry, None] = OrderedDict()
        # key -> its variants, most recent response first.
        self._variants: dict[bytes, list[_MemoryEntry]] = {}
        self._bytes = 0
        self._evictions = 0

    def lookup(self, key: bytes, request_headers: Iterable[tuple[bytes, bytes]]) -> Entry | None:
        variants = self._variants.get(key)
        if variants is None:
            return None
        if len(variants) == 1:
            entry = variants[0]
            vary = entry.head.vary
            if vary and not vary_matches(vary, request_headers):
                return None
        else:
            # Several variants may each need to look at the headers: make them re-iterable.
            headers = (
                request_headers
                if isinstance(request_headers, list | tuple)
                else tuple(request_headers)
            )
            for entry in variants:
                vary = entry.head.vary
                if not vary or vary_matches(vary, headers):
                    break
            else:
                return None
        self._lru.move_to_end(entry)
        return entry

    def begin(self, key: bytes, length: int | None) -> Writer | None:
        if length is not None and (length > self.max_object_bytes or length > self.max_bytes):
            return None
        return _MemoryWriter(self, key)

    def update(self, entry: Entry, head: StoredHead) -> Entry | None:
        if not isinstance(entry, _MemoryEntry) or entry not in self._lru:
            return None
        if head.body_length != entry.head.body_length:
            return None
        self._remove(entry)
        return self._add(_MemoryEntry(entry.key, head, entry._body))

    def invalidate(self, key: bytes) -> int:
        variants = self._variants.get(key)
        if variants is None:
            return 0
        removed = len(variants)
        for entry in list(variants):
            self._remove(entry)
        return removed

    def purge_prefix(self, prefix: bytes) -> int:
        return sum(
            self.invalidate(key) for key in [k for k in self._variants if k.startswith(prefix)]
        )

    def figures(self) -> StoreFigures:
        return StoreFigures(len(self._lru), self._bytes, self._evictions, self.max_bytes)

    def claim(self, key: bytes, seconds: float) -> bool:
        return True  # one process's own store: its stage collapses by itself

    def release(self, key: bytes) -> None:
        pass

    def close(self) -> None:
        self._lru.clear()
        self._variants.clear()
        self._bytes = 0

    def _add(self, entry: _MemoryEntry) -> Entry | None:
        if entry.size > self.max_bytes:
            return None
        variants = self._variants.get(entry.key)
        if variants is not None:
            vary = entry.head.vary
            for old in variants:
                if old.head.vary == vary:
                    self._remove(old)
                    break
        while self._bytes + entry.size > self.max_bytes:
            self._remove(next(iter(self._lru)))
            self._evictions += 1
        variants = self._variants.setdefault(entry.key, [])
        when = entry.head.response_time
        at = 0
        while at < len(variants) and variants[at].head.response_time > when:
            at += 1
        variants.insert(at, entry)
        self._lru[entry] = None
        self._bytes += entry.size
        return entry

    def _remove(self, entry: _MemoryEntry) -> None:
        del self._lru[entry]
        variants = self._variants[entry.key]
        variants.remove(entry)
        if not variants:
            del self._variants[entry.key]
        self._bytes -= entry.size
