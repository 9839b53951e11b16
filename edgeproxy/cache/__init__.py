"""
The cache layer: where the route cache stage keeps responses.  What a store keeps is decided
by the pure policy in :mod:`edgeproxy.core.httpcache`; a store only holds bodies with their
:class:`~edgeproxy.core.httpcache.StoredHead`, finds the variant a request selects (``Vary``),
and stays within its bounds.  The interface, the entries, the writers and the in-memory LRU
store (one per worker) are in :mod:`.store`; the directory store that every ``--workers``
process shares, as nginx's ``proxy_cache_path`` is shared by its workers, is in :mod:`.disk`;
every store of the process, by name, across reloads, with its counters, in :mod:`.registry`.

No reactor and no Twisted: stores are called synchronously by the stage, and time, where a
store needs it, is an injected clock.  May import: :mod:`edgeproxy.core`, and
:mod:`edgeproxy.config` for the ``Cache`` settings the registry makes stores from (and the
standard library, attrs).
"""
