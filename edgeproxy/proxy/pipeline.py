"""
Every route's stage chain, made once per configuration: :func:`build_plan`
turns a :class:`~edgeproxy.cluster.snapshot.Snapshot` into a
:class:`~edgeproxy.proxy.exchange.Plan`, and :class:`Pipeline` holds the
current one for the listeners (swapped whole on reload).

A route's chain, in order (docs/architecture.md has the table):

1. :class:`~.stages.BodyLimit` (head time): the route's ``max_body_size``,
   or ``--max-body-size``.
2. What the route configures (none yet; the cache, rate limits, access rules
   and forward authentication come here).
3. The last stage: on a plain-HTTP listener, for a route without
   ``plain_http``, :class:`~.stages.HttpsRedirect`; otherwise
   :class:`~.forward.ForwardStage` (a cluster) or
   :class:`~.forward.SplitStage` (a Split).
"""

from __future__ import annotations

from collections.abc import Callable

from edgeproxy.cluster.snapshot import Snapshot
from edgeproxy.config import Route, Split
from edgeproxy.config.settings import Settings
from edgeproxy.proxy.exchange import Plan, RouteChain, Stage
from edgeproxy.proxy.forward import Forwarder, ForwardStage, SplitStage
from edgeproxy.proxy.stages import BodyLimit, HttpsRedirect

__all__ = ["Pipeline", "build_plan", "route_stages"]


def route_stages(
    route: Route,
    snapshot: Snapshot,
    forwarder: Forwarder,
    *,
    tls: bool,
    max_body_size: int,
    https_port: Callable[[], int | None],
) -> list[Stage]:
    """The stages of ``route`` on a listener that is TLS or not, fresh (a
    stage belongs to one chain)."""
    limit = route.max_body_size if route.max_body_size is not None else max_body_size
    stages: list[Stage] = [BodyLimit(limit)]
    if not tls and not route.plain_http:
        stages.append(HttpsRedirect(https_port))
        return stages
    target = route.target
    if isinstance(target, Split):
        stages.append(SplitStage(forwarder, target, snapshot.splits[id(target)], snapshot))
    else:
        stages.append(ForwardStage(forwarder, snapshot.clusters[target.name]))
    return stages


def build_plan(
    snapshot: Snapshot,
    forwarder: Forwarder,
    *,
    max_body_size: int,
    https_port: Callable[[], int | None],
) -> Plan:
    """Every route's chain, for plain and TLS listeners."""
    chains: tuple[dict[int, RouteChain], dict[int, RouteChain]] = ({}, {})
    routes = [route for vhost in snapshot.config.virtual_hosts for route in vhost.routes]
    for tls in (False, True):
        for route in routes:
            stages = route_stages(
                route,
                snapshot,
                forwarder,
                tls=tls,
                max_body_size=max_body_size,
                https_port=https_port,
            )
            chains[tls][id(route)] = RouteChain(stages)
    return Plan(snapshot, chains[False], chains[True], (BodyLimit(max_body_size),))


class Pipeline:
    """The plan the listeners route by; :meth:`swap` installs a new
    configuration's (requests in flight keep the plan they started with)."""

    def __init__(
        self,
        snapshot: Snapshot,
        forwarder: Forwarder,
        *,
        settings: Settings,
        https_port: Callable[[], int | None] = lambda: None,
    ) -> None:
        self.forwarder = forwarder
        self._max_body_size = settings.max_body_size
        self._https_port = https_port
        self.plan = self._build(snapshot)

    @property
    def snapshot(self) -> Snapshot:
        return self.plan.snapshot

    def swap(self, snapshot: Snapshot) -> None:
        """Install a new configuration's snapshot, with its routes' chains."""
        self.plan = self._build(snapshot)

    def _build(self, snapshot: Snapshot) -> Plan:
        return build_plan(
            snapshot,
            self.forwarder,
            max_body_size=self._max_body_size,
            https_port=self._https_port,
        )
