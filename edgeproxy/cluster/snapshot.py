"""
The immutable per-configuration state requests run on.

A reload builds a new :class:`Snapshot` off the hot path and swaps one
reference; a request keeps the snapshot it started with.  The cluster runtimes
inside hold live counters and health, which is why a snapshot is built once per
configuration, not per request.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import attrs
from twisted.internet.interfaces import IReactorTime

from edgeproxy.cluster.runtime import ClusterRuntime
from edgeproxy.config import Split
from edgeproxy.config.load import LoadedConfig
from edgeproxy.config.routing import RoutingTable, SplitChooser

__all__ = ["Snapshot"]


@attrs.frozen
class Snapshot:
    config: LoadedConfig
    routing: RoutingTable
    clusters: Mapping[str, ClusterRuntime]
    #: Keyed by ``id(split)``: hashing a Split (and its clusters) per request is not free.
    splits: Mapping[int, SplitChooser]

    @classmethod
    def build(
        cls,
        config: LoadedConfig,
        clock: IReactorTime,
        rng: random.Random,
        previous: Snapshot | None = None,
    ) -> Snapshot:
        """The state for ``config``: a runtime for every cluster, the routes'
        and the idle ones defined at module level (see
        :attr:`LoadedConfig.idle_clusters`).  With ``previous``, a cluster
        defined exactly as before keeps its runtime: its health, breakers,
        counters and requests in flight carry over a reload, also when an
        idle cluster becomes a routed one (a blue/green switch)."""
        carried = previous.clusters if previous is not None else {}
        clusters: dict[str, ClusterRuntime] = {}
        for name, cluster in config.all_clusters.items():
            old = carried.get(name)
            if old is not None and old.cluster == cluster:
                clusters[name] = old
            else:
                clusters[name] = ClusterRuntime(cluster, clock, rng)
        splits: dict[int, SplitChooser] = {}
        for vhost in config.virtual_hosts:
            for route in vhost.routes:
                if isinstance(route.target, Split):
                    splits[id(route.target)] = SplitChooser(route.target)
        return cls(config=config, routing=config.routing, clusters=clusters, splits=splits)

    def stop(self) -> None:
        """Cancel every timer the cluster runtimes hold."""
        for runtime in self.clusters.values():
            runtime.stop()

    def retired_by(self, new: Snapshot) -> list[ClusterRuntime]:
        """This snapshot's cluster runtimes that ``new`` does not carry over."""
        kept = {id(runtime) for runtime in new.clusters.values()}
        return [runtime for runtime in self.clusters.values() if id(runtime) not in kept]
