"""
Host and path routing: from a normalised host and a request-target to a route.

Pure: no Twisted, no I/O.  Everything is precomputed when the table is
built (dicts of names, byte prefixes grouped by length, cumulative split
weights) so a lookup is a few dict hits.  Tables are immutable; a reload
builds a new one and swaps the reference.
"""

from __future__ import annotations

import bisect
import itertools
import math
import string
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from edgeproxy.config import Cluster, Route, Split, VirtualHost
from edgeproxy.config.tlspolicy import ClientCA, TLSPolicy
from edgeproxy.core.hostnames import wildcard_of

__all__ = ["RouteMatch", "RoutingTable", "SplitChooser", "VirtualHostTable", "prefix_bytes"]

# Every printable ASCII character stays as written (including '%', so a
# prefix may be written percent-encoded); anything else becomes its UTF-8
# percent-encoding, which is what a client puts on the wire.
_SAFE = "".join(c for c in string.printable if c not in string.whitespace)


def prefix_bytes(prefix: str) -> bytes:
    """The bytes a route prefix matches against a raw request path.

    ``"/api/"`` -> ``b"/api/"``; ``"/café/"`` -> ``b"/caf%C3%A9/"``.
    """
    return urllib.parse.quote(prefix, safe=_SAFE).encode("ascii")


class RouteMatch(NamedTuple):
    """The outcome of routing one request.

    (A named tuple: one is made per request, and an ``attrs`` frozen class
    costs a ``object.__setattr__`` per field to build.)"""

    virtual_host: VirtualHost
    #: The virtual host's first configured name, for logs and metrics.
    vhost_name: str
    route: Route
    #: The path and query to send upstream (prefix stripped if ``route.strip_prefix``).
    forward_path: bytes


class VirtualHostTable:
    """The routes of one virtual host: longest plain string prefix wins."""

    __slots__ = (
        "_by_length",
        "_lengths",
        "client_subject_header",
        "hsts_line",
        "tls_policy",
        "vhost_name",
        "virtual_host",
    )

    def __init__(self, virtual_host: VirtualHost, client_ca: ClientCA | None = None) -> None:
        """``client_ca``: ``virtual_host.client_ca`` as loaded; when it is
        set and this is None, no client certificate verifies (fail closed)."""
        self.virtual_host = virtual_host
        self.vhost_name = virtual_host.names[0]
        if virtual_host.client_ca is not None and client_ca is None:
            client_ca = ClientCA(virtual_host.client_ca, ())
        elif virtual_host.client_ca is None:
            client_ca = None
        #: What a handshake naming this host must meet (None: the listener's defaults).
        self.tls_policy = (
            TLSPolicy(virtual_host.min_tls_version, client_ca)
            if virtual_host.min_tls_version is not None or client_ca is not None
            else None
        )
        header = virtual_host.client_subject_header
        #: The header carrying the verified client subject upstream, if any.
        self.client_subject_header = None if header is None else header.encode("ascii")
        hsts = virtual_host.hsts
        #: The ``Strict-Transport-Security`` line its TLS responses carry, if any.
        self.hsts_line = (
            None if hsts is None else b"Strict-Transport-Security: " + hsts.value.encode("ascii")
        )
        by_length: dict[int, dict[bytes, Route]] = {}
        for route in virtual_host.routes:
            prefix = prefix_bytes(route.prefix)
            # A duplicate prefix is a configuration error reported by the
            # loader; should one get here anyway, the first route wins.
            by_length.setdefault(len(prefix), {}).setdefault(prefix, route)
        self._by_length = by_length
        #: Distinct prefix lengths, longest first.
        self._lengths = tuple(sorted(by_length, reverse=True))

    def _lookup(self, path: bytes) -> tuple[Route, int] | None:
        path_length = len(path)
        for length in self._lengths:
            if length <= path_length:
                route = self._by_length[length].get(path[:length])
                if route is not None:
                    return route, length
        return None

    def route_for(self, path: bytes) -> Route | None:
        """The route whose prefix is the longest prefix of ``path`` (no query), if any."""
        found = self._lookup(path)
        return None if found is None else found[0]

    def match(self, target: bytes) -> RouteMatch | None:
        """Route a request-target (``path`` or ``path?query``) within this virtual host."""
        path, question, query = target.partition(b"?")
        found = self._lookup(path)
        if found is None:
            return None
        route, prefix_length = found
        if route.strip_prefix:
            rest = path[prefix_length:]
            if not rest.startswith(b"/"):
                rest = b"/" + rest
            forward_path = rest + question + query
        else:
            forward_path = target
        return RouteMatch(self.virtual_host, self.vhost_name, route, forward_path)

    def __repr__(self) -> str:
        return f"<VirtualHostTable {self.vhost_name!r} ({len(self.virtual_host.routes)} routes)>"


class RoutingTable:
    """Normalised host -> :class:`VirtualHostTable`; exact names beat wildcards."""

    __slots__ = ("_exact", "_wildcards", "has_client_ca", "virtual_hosts")

    def __init__(
        self,
        virtual_hosts: tuple[VirtualHost, ...],
        exact: dict[str, VirtualHostTable],
        wildcards: dict[str, VirtualHostTable],
    ) -> None:
        self.virtual_hosts = virtual_hosts
        self._exact = exact
        self._wildcards = wildcards
        #: Some virtual host has a ``client_ca`` (read for every new TLS connection).
        self.has_client_ca = any(v.client_ca is not None for v in virtual_hosts)

    @classmethod
    def from_virtual_hosts(
        cls, vhosts: Sequence[VirtualHost], client_cas: Mapping[str, ClientCA] | None = None
    ) -> RoutingTable:
        """Build the table.  The loader has already rejected names claimed
        twice; should one get here anyway, the first virtual host keeps it.
        ``client_cas``: the loaded ``client_ca`` files by path (one missing
        verifies no client)."""
        exact: dict[str, VirtualHostTable] = {}
        wildcards: dict[str, VirtualHostTable] = {}
        cas = client_cas or {}
        for vhost in vhosts:
            table = VirtualHostTable(
                vhost, None if vhost.client_ca is None else cas.get(vhost.client_ca)
            )
            for name in vhost.names:
                if name.startswith("*."):
                    wildcards.setdefault(name, table)
                else:
                    exact.setdefault(name, table)
        return cls(tuple(vhosts), exact, wildcards)

    def find_virtual_host(self, host: str | None) -> VirtualHostTable | None:
        """The virtual host for a name already normalised by ``hostnames.normalise_host``."""
        if host is None:
            return None
        table = self._exact.get(host)
        if table is not None:
            return table
        wildcard = wildcard_of(host)
        if wildcard is None:
            return None
        return self._wildcards.get(wildcard)

    def tls_policy_for(self, host: str) -> TLSPolicy | None:
        """The TLS policy of the virtual host for a normalised SNI name, if any."""
        table = self.find_virtual_host(host)
        return None if table is None else table.tls_policy

    def match(self, host: str | None, target: bytes) -> RouteMatch | None:
        """Route a normalised host and an origin-form request-target (``/path?query``).

        ``None`` when no virtual host or no route matches; never redirects.
        """
        table = self.find_virtual_host(host)
        if table is None:
            return None
        return table.match(target)

    def __repr__(self) -> str:
        return f"<RoutingTable ({len(self.virtual_hosts)} virtual hosts)>"


def _pick(bounds: Sequence[float], roll: float) -> tuple[int, float]:
    """The index ``roll`` falls in, and ``roll`` rescaled to [0, 1) within it."""
    index = bisect.bisect_right(bounds, roll)
    if index >= len(bounds):  # roll >= 1, or rounding in a float total
        index = len(bounds) - 1
    low = bounds[index - 1] if index else 0.0
    width = bounds[index] - low
    inner = (roll - low) / width if width > 0 else 0.0
    return index, min(max(inner, 0.0), math.nextafter(1.0, 0.0))


def _cumulative(weights: Sequence[float]) -> list[float]:
    total = sum(weights)
    return [cumulative / total for cumulative in itertools.accumulate(weights)]


class SplitChooser:
    """Pick a cluster of a :class:`~edgeproxy.config.Split` from a uniform roll in [0, 1).

    Rolls are compared against precomputed cumulative fractions, so feeding
    ``i / n`` for ``i`` in ``range(n)`` gives exactly the configured
    proportions whenever ``n`` is a multiple of the total weight.  A
    zero-weight cluster is never chosen.

    When the chosen cluster has nothing available, :meth:`fallback` gives its
    share to the others in proportion to their weights, from the same roll.
    """

    __slots__ = ("_bounds", "_clusters", "_weights", "split")

    def __init__(self, split: Split) -> None:
        self.split = split
        weighted = [(cluster, weight) for cluster, weight in split.weights if weight > 0]
        if not weighted:  # Split's validator forbids this; be explicit anyway
            raise ValueError("a Split needs at least one positive weight")
        self._clusters = tuple(cluster for cluster, _ in weighted)
        self._weights = tuple(weight for _, weight in weighted)
        self._bounds = tuple(_cumulative(self._weights))

    def choose(self, roll: float) -> Cluster:
        """The cluster for ``roll``, uniform in [0, 1)."""
        index = bisect.bisect_right(self._bounds, roll)
        if index >= len(self._clusters):  # roll >= 1, or rounding in a float total
            index = len(self._clusters) - 1
        return self._clusters[index]

    def fallback(self, roll: float, available: Callable[[Cluster], bool]) -> Cluster | None:
        """Where ``roll`` goes when ``choose(roll)`` has nothing ``available``.

        The part of [0, 1) the unavailable cluster owned is spread over the
        remaining clusters by weight: ``roll``'s position within that part is
        a new uniform roll among them.  So its share is divided in proportion
        to their weights, and a sticky roll always lands on the same fallback
        (and back on its own cluster when that recovers).  Should the fallback
        have nothing available either, the same step repeats without it.
        ``None`` when no cluster of positive weight has anything available.
        """
        clusters = list(self._clusters)
        weights = list(self._weights)
        bounds: Sequence[float] = self._bounds
        while True:
            index, roll = _pick(bounds, roll)
            del clusters[index], weights[index]
            if not clusters:
                return None
            bounds = _cumulative(weights)
            candidate = clusters[_pick(bounds, roll)[0]]
            if available(candidate):
                return candidate

    def __repr__(self) -> str:
        return f"<SplitChooser {[c.name for c in self._clusters]}>"
