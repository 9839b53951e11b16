"""
The proxy layer: the request path.  The HTTP/1.1 channel (:mod:`.h1channel`)
produces exchanges (:mod:`.exchange`); each runs through its route's stage
chain (:mod:`.stages`), the last stage of which forwards it to a cluster
(:mod:`.forward`) and relays the response back with backpressure
(:mod:`.relay`).

May import: :mod:`edgeproxy.core`, :mod:`edgeproxy.config`,
:mod:`edgeproxy.cluster`, :mod:`edgeproxy.upstream`, :mod:`edgeproxy.net`.
What it reports (metrics, access records) goes through small protocols
defined here, implemented in :mod:`edgeproxy.ops`.
"""
