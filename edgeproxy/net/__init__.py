"""
The network layer: socket and endpoint helpers (:mod:`.endpoints`), the
allocator settings (:mod:`.heap`), and the two reaches into Twisted's
internals, each checked at start-up and replaced by Twisted's own code when a
check fails: the lean epoll dispatch (:mod:`.fastpoll`) and write-through for
TCP transports (:mod:`.writethrough`).

May import: Twisted only; nothing else of edgeproxy.
"""
