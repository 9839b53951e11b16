"""
The rate-limit layer: where the route rate-limit stage keeps its buckets.
The decision itself is the pure GCRA of :mod:`edgeproxy.core.ratelimit`; a
store keeps one number per key (the bucket's theoretical arrival time) and
stays within its bounds.  The interface and the in-memory store (one per
process, bounded in keys, idle buckets forgotten) are in :mod:`.store`; the
Redis store that every process sharing one Redis enforces as one budget, with
one atomic Lua script per decision, is in :mod:`.redis`; the process's store
with every route's decision counters, across reloads, is in :mod:`.registry`.

May import: :mod:`edgeproxy.core`, :mod:`edgeproxy.config` (the
``RateLimit`` vocabulary), Twisted's Deferred and timer interfaces (the
Redis store is asynchronous; the reactor is injected) and, lazily, txredisapi.
"""
