"""
The upstream layer: the one pooled HTTP/1.1 client every cluster forwards
through (:class:`.h1client.UpstreamClient`).  Its callers get edgeproxy's
errors (:mod:`edgeproxy.core.errors`), never Twisted's, and decide retries
from the error's type; Twisted's connect failures become those errors in
:func:`edgeproxy.net.failures.upstream_error`, as the health prober's do.

May import: :mod:`edgeproxy.core`, :mod:`edgeproxy.config` (the endpoint's
address), :mod:`edgeproxy.net`.
"""
