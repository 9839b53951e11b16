"""
The upstream layer: the one pooled HTTP/1.1 client every cluster forwards
through (:class:`.h1client.UpstreamClient`).  It is the one place where
client failures become edgeproxy's errors (:mod:`edgeproxy.core.errors`), so
callers decide retries from the error's type.

May import: :mod:`edgeproxy.core`, :mod:`edgeproxy.config` (the endpoint's
address), :mod:`edgeproxy.net`.
"""
