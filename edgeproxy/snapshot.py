"""
The immutable per-configuration state requests run on.

A reload builds a new :class:`Snapshot` off the hot path and swaps one
reference; a request keeps the snapshot it started with.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from edgeproxy.config import Cluster, Split
from edgeproxy.configload import LoadedConfig
from edgeproxy.routing import RoutingTable, SplitChooser
from edgeproxy.selection import SmoothWeightedRoundRobin

__all__ = ["ClusterState", "Snapshot"]


@attrs.define(eq=False)
class ClusterState:
    """A cluster and its selection state."""

    cluster: Cluster
    policy: SmoothWeightedRoundRobin

    @classmethod
    def for_cluster(cls, cluster: Cluster) -> ClusterState:
        return cls(cluster, SmoothWeightedRoundRobin(cluster.endpoints))


@attrs.frozen
class Snapshot:
    config: LoadedConfig
    routing: RoutingTable
    clusters: Mapping[str, ClusterState]
    #: Keyed by ``id(split)``: hashing a Split (and its clusters) per request is not free.
    splits: Mapping[int, SplitChooser]

    @classmethod
    def build(cls, config: LoadedConfig) -> Snapshot:
        clusters = {name: ClusterState.for_cluster(c) for name, c in config.clusters.items()}
        splits: dict[int, SplitChooser] = {}
        for vhost in config.virtual_hosts:
            for route in vhost.routes:
                if isinstance(route.target, Split):
                    splits[id(route.target)] = SplitChooser(route.target)
        return cls(config=config, routing=config.routing, clusters=clusters, splits=splits)
