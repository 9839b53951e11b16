"""edgeproxy: a TLS-terminating reverse proxy on Twisted.

The configuration vocabulary is the public API; see :mod:`edgeproxy.config`.
"""

from edgeproxy.config import Cluster, Endpoint, Route, Split, VirtualHost

__all__ = ["Cluster", "Endpoint", "Route", "Split", "VirtualHost", "__version__"]

__version__ = "0.1.0"
