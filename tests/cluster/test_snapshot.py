from __future__ import annotations

import random

import attrs
from twisted.internet.task import Clock

from edgeproxy.cluster.snapshot import Snapshot
from edgeproxy.config import Cluster, OutlierDetection, Route, VirtualHost
from edgeproxy.config.load import ClusterDefinition, LoadedConfig
from edgeproxy.core.errors import Reason
from tests.memproxy import make_config

A = Cluster("a", endpoints=["10.0.0.1:80"], outlier_detection=OutlierDetection(consecutive_failures=1))
B = Cluster("b", endpoints=["10.0.0.2:80"])
B2 = Cluster("b", endpoints=["10.0.0.3:80"])


def build(*clusters: Cluster, previous: Snapshot | None = None) -> Snapshot:
    routes = [Route(f"/{c.name}{i}/", c) for i, c in enumerate(clusters)]
    config = make_config(VirtualHost(["x.example"], routes=routes))
    return Snapshot.build(config, Clock(), random.Random(1), previous=previous)


def test_unchanged_cluster_keeps_its_runtime_and_state() -> None:
    old = build(A, B)
    old.clusters["a"].endpoints[0].breaker.record_failure(Reason.CONNECT_FAILED)  # type: ignore[union-attr]
    assert not old.clusters["a"].endpoints[0].up()
    new = build(A, B2, previous=old)
    assert new.clusters["a"] is old.clusters["a"]
    assert not new.clusters["a"].endpoints[0].up()  # still ejected after the reload
    assert new.clusters["b"] is not old.clusters["b"]
    assert old.retired_by(new) == [old.clusters["b"]]


def test_removed_cluster_is_retired() -> None:
    old = build(A, B)
    new = build(A, previous=old)
    assert old.retired_by(new) == [old.clusters["b"]]


def with_idle(config: LoadedConfig, *idle: Cluster) -> LoadedConfig:
    """``config`` with ``idle`` defined at module level and used by no route."""
    return attrs.evolve(
        config,
        defined_clusters={c.name: (ClusterDefinition(c, "test.py", 1, c.name),) for c in idle},
    )


def test_idle_cluster_gets_a_runtime_that_a_blue_green_switch_keeps() -> None:
    blue = Cluster("blue", endpoints=["10.0.0.1:80"])
    green = Cluster(
        "green",
        endpoints=["10.0.0.2:80", "10.0.0.3:80"],
        outlier_detection=OutlierDetection(consecutive_failures=1),
    )
    on_blue = with_idle(make_config(VirtualHost(["x.example"], routes=[Route("/", blue)])), green)
    old = Snapshot.build(on_blue, Clock(), random.Random(1))
    assert list(old.clusters) == ["blue", "green"]
    idle = old.clusters["green"]
    idle.endpoints[0].breaker.record_failure(Reason.CONNECT_FAILED)  # type: ignore[union-attr]
    # The switch: the route now points at green, and blue is the idle one.
    on_green = with_idle(make_config(VirtualHost(["x.example"], routes=[Route("/", green)])), blue)
    new = Snapshot.build(on_green, Clock(), random.Random(1), previous=old)
    assert new.clusters["green"] is idle
    assert new.clusters["blue"] is old.clusters["blue"]
    assert not new.clusters["green"].endpoints[0].up()
    assert old.retired_by(new) == []
