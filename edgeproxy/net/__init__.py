"""
The network layer: socket and endpoint helpers (:mod:`.endpoints`), what
Twisted's connection and HTTP-client failures are as edgeproxy's errors
(:mod:`.failures`, shared by the upstream client and the health prober), the
allocator settings (:mod:`.heap`), and the two reaches into Twisted's
internals, each checked at start-up and replaced by Twisted's own code when a
check fails: the lean epoll dispatch (:mod:`.fastpoll`) and write-through for
TCP transports (:mod:`.writethrough`).

May import: Twisted, and :mod:`edgeproxy.core` (the error types); nothing
else of edgeproxy.
"""
