"""
The configuration layer: the vocabulary users write in their ``sites/*.py``
files (this package's public names), loading and checking those files
(:mod:`.load`), the routing table and split chooser compiled from them
(:mod:`.routing`), reloading them when they change (:mod:`.watch`) and the
process-wide settings from the command line (:mod:`.settings`).

``from edgeproxy.config import VirtualHost, Route, Cluster, ...`` is the public
import for configuration files.  Importing this package loads the vocabulary
only: no Twisted, no reactor.

May import: :mod:`edgeproxy.core` (and Twisted's service/timer interfaces in
:mod:`.watch`, with the reactor injected).
"""

from edgeproxy.config.model import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_RESOLVE_EVERY,
    DEFAULT_RESPONSE_TIMEOUT,
    HSTS,
    Cache,
    Cluster,
    ConsistentHash,
    Endpoint,
    ForwardAuth,
    HealthCheck,
    LeastRequest,
    Limits,
    OutlierDetection,
    Random,
    RateLimit,
    RetryPolicy,
    RoundRobin,
    Route,
    Split,
    UpstreamTLS,
    VirtualHost,
)

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_RESOLVE_EVERY",
    "DEFAULT_RESPONSE_TIMEOUT",
    "HSTS",
    "Cache",
    "Cluster",
    "ConsistentHash",
    "Endpoint",
    "ForwardAuth",
    "HealthCheck",
    "LeastRequest",
    "Limits",
    "OutlierDetection",
    "Random",
    "RateLimit",
    "RetryPolicy",
    "RoundRobin",
    "Route",
    "Split",
    "UpstreamTLS",
    "VirtualHost",
]
