"""
The cluster layer: what edgeproxy knows about each upstream cluster while it
runs.  Endpoint and cluster runtime (:mod:`.runtime`), the per-cluster limits
(:mod:`.limits`), the outlier breaker (:mod:`.breaker`) and health machines
with the active prober (:mod:`.health`), and the immutable snapshot a
configuration becomes when it is loaded (:mod:`.snapshot`).

Time comes from an injected ``IReactorTime``.  May import: :mod:`edgeproxy.core`,
:mod:`edgeproxy.config`, :mod:`edgeproxy.net`.
"""
