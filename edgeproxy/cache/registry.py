"""
Every cache store of the process and its counters, kept across configuration
reloads: a route's store is found again by its name when the new
configuration asks for the same one with the same bounds, so a reload does
not empty the cache.  The admin listener purges through it and the metrics
and ``/status`` read its figures.

A memory store belongs to one route (named ``memory:<first host><prefix>``);
a disk store to its directory (``disk:/directory``), which any number of
routes, and every ``--workers`` process, may share.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from edgeproxy.cache.disk import DiskStore
from edgeproxy.cache.store import MemoryStore, Store, StoreFigures
from edgeproxy.config import Cache, Route, VirtualHost
from edgeproxy.core.errors import ConfigError, ConfigProblem
from edgeproxy.core.httpcache import cache_key

__all__ = ["CacheCounters", "CacheStores", "store_name"]


class CacheCounters:
    """What a cache did, counted by the stage that owns it (the metrics read
    them; they only go up)."""

    __slots__ = (
        "collapsed",
        "hits",
        "misses",
        "not_stored",
        "revalidated",
        "revalidations",
        "stale",
        "stored",
    )

    def __init__(self) -> None:
        #: Answered from the store, fresh (or stale as the request allowed).
        self.hits = 0
        #: Nothing usable stored: forwarded.
        self.misses = 0
        #: Stale answers (stale-while-revalidate, stale-if-error).
        self.stale = 0
        #: Conditional requests sent to refresh a stored response ...
        self.revalidations = 0
        #: ... and how many of them the origin answered 304.
        self.revalidated = 0
        #: Requests that waited for another's response instead of going upstream.
        self.collapsed = 0
        #: Responses stored, and responses forwarded that could not be.
        self.stored = 0
        self.not_stored = 0

    def hit(self) -> None:
        self.hits += 1

    def miss(self) -> None:
        self.misses += 1

    def served_stale(self) -> None:
        self.stale += 1

    def revalidating(self) -> None:
        self.revalidations += 1

    def not_modified(self) -> None:
        self.revalidated += 1

    def waited(self) -> None:
        self.collapsed += 1

    def kept(self, stored: bool) -> None:
        if stored:
            self.stored += 1
        else:
            self.not_stored += 1


def store_name(vhost: VirtualHost, route: Route, cache: Cache) -> str:
    """The name a route's store goes by (in metrics, ``/status``, ``--check``)."""
    directory = cache.disk_directory
    if directory is not None:
        return f"disk:{directory}"
    return f"memory:{vhost.names[0]}{route.prefix}"


class CacheStores:
    """The process's stores by name, with their counters."""

    def __init__(self, *, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._stores: dict[str, tuple[Cache, Store, CacheCounters]] = {}

    def store_for(self, name: str, cache: Cache) -> tuple[Store, CacheCounters]:
        """The store called ``name``, made on first use.  A store asked for
        again with other bounds is made anew (a memory store starts empty; a
        disk store finds its directory's content)."""
        known = self._stores.get(name)
        if known is not None:
            old, store, counters = known
            if _same_bounds(old, cache):
                return store, counters
            store.close()
        else:
            counters = CacheCounters()
        store = self._make(cache)
        self._stores[name] = (cache, store, counters)
        return store, counters

    def keep_only(self, names: Iterable[str]) -> None:
        """Close the stores no route uses any more (after a reload)."""
        wanted = set(names)
        for name in [n for n in self._stores if n not in wanted]:
            _cache, store, _counters = self._stores.pop(name)
            store.close()

    def _make(self, cache: Cache) -> Store:
        """Raises :class:`ConfigError` naming a directory that cannot be used."""
        directory = cache.disk_directory
        if directory is not None:
            try:
                return DiskStore(
                    directory,
                    cache.max_bytes,
                    cache.max_object_bytes,
                    clock=self._clock,
                    heuristic_max=cache.heuristic_max,
                )
            except OSError as e:
                why = e.strerror or type(e).__name__
                raise ConfigError(
                    [ConfigProblem(directory, f"cannot use it as a cache directory: {why}")]
                ) from None
        return MemoryStore(cache.max_bytes, cache.max_object_bytes)

    def invalidate(self, key: bytes) -> int:
        """Remove every stored variant of ``key`` from every store."""
        return sum(store.invalidate(key) for _c, store, _n in self._stores.values())

    def purge_url(self, url: str) -> int:
        """Remove what is stored for the absolute ``url`` (``https://host/path?query``)."""
        return self.invalidate(url_key(url))

    def purge_prefix(self, prefix: str) -> int:
        """Remove everything stored under ``prefix`` (an absolute URL's beginning)."""
        key = url_key(prefix, partial=True)
        return sum(store.purge_prefix(key) for _c, store, _n in self._stores.values())

    def figures(self) -> list[tuple[str, StoreFigures, CacheCounters]]:
        """Each store's name, figures and counters, by name."""
        return [
            (name, store.figures(), counters)
            for name, (_cache, store, counters) in sorted(self._stores.items())
        ]

    def close(self) -> None:
        self.keep_only(())


def url_key(url: str, *, partial: bool = False) -> bytes:
    """The cache key of an absolute http(s) URL; raises ValueError for
    anything else.  ``partial`` allows a bare ``scheme://host`` (a prefix)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
        raise ValueError(f"not an absolute http(s) URL: {url!r}")
    target = parts.path or ("" if partial else "/")
    if parts.query:
        target += "?" + parts.query
    try:
        raw = target.encode("ascii")
        authority = parts.netloc.encode("idna" if not parts.netloc.isascii() else "ascii")
    except UnicodeError as e:
        raise ValueError(f"not an ASCII URL: {url!r}") from e
    return cache_key(parts.scheme.encode("ascii"), authority, raw)


def _same_bounds(a: Cache, b: Cache) -> bool:
    return (a.store, a.max_bytes, a.max_object_bytes, a.heuristic_max) == (
        b.store,
        b.max_bytes,
        b.max_object_bytes,
        b.heuristic_max,
    )
