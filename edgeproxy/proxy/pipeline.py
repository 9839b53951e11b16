"""
Every route's stage chain, made once per configuration: :func:`build_plan`
turns a :class:`~edgeproxy.cluster.snapshot.Snapshot` into a
:class:`~edgeproxy.proxy.exchange.Plan`, and :class:`Pipeline` holds the
current one for the listeners (swapped whole on reload).

A route's chain, in order (docs/architecture.md has the table):

1. :class:`~.stages.BodyLimit` (head time): the route's ``max_body_size``,
   or ``--max-body-size``.
   Before it, what the route configures to refuse at head time:
   :class:`~.stages.AccessRules` (``allow``/``deny``), then
   :class:`~.ratelimit.RateLimitStage` (``rate_limit``; not on a chain that
   only redirects to https, so a redirected request costs no token).
2. What the route configures, in the request's turn:
   :class:`~.forwardauth.ForwardAuthStage` for a route with ``auth`` (before
   the cache: a stored answer is never served to a request its auth service
   has not let through), then :class:`~.cache.CacheStage` for a route with
   ``cache``.  An ``https://`` auth service is asked through the TLS pool of
   its ``tls`` setting (:meth:`~.forward.Forwarder.upstream_for`, as a
   cluster's ``upstream_tls``).
3. The last stage: on a plain-HTTP listener, for a route without
   ``plain_http``, :class:`~.stages.HttpsRedirect`; otherwise
   :class:`~.forward.ForwardStage` (a cluster) or
   :class:`~.forward.SplitStage` (a Split).

A route with ``request_buffering=False`` gets a chain that streams request
bodies (``RouteChain.streams``), except for the methods a stage reads whole
(``Stage.whole_body_methods``: the cache's GET and HEAD fills) and on a chain
that only redirects.
"""

from __future__ import annotations

from collections.abc import Callable

from edgeproxy.cache.registry import CacheStores, store_name
from edgeproxy.cluster.snapshot import Snapshot
from edgeproxy.config import Route, Split, VirtualHost
from edgeproxy.config.load import LoadedConfig
from edgeproxy.config.settings import Settings
from edgeproxy.config.upstreamtls import UpstreamTLSFiles
from edgeproxy.core.backends import backend_authorities
from edgeproxy.proxy.cache import CacheStage
from edgeproxy.proxy.exchange import Plan, RouteChain, Stage
from edgeproxy.proxy.forward import Forwarder, ForwardStage, SplitStage
from edgeproxy.proxy.forwardauth import AuthDecisions, ForwardAuthStage, auth_name
from edgeproxy.proxy.ratelimit import RateLimitStage
from edgeproxy.proxy.stages import AccessRules, BodyLimit, HttpsRedirect
from edgeproxy.ratelimit.registry import RateLimits, bucket_name
from edgeproxy.ratelimit.store import MemoryStore

__all__ = ["Pipeline", "auth_tls_files", "build_plan", "route_stages"]


def auth_tls_files(route: Route, config: LoadedConfig) -> UpstreamTLSFiles | None:
    """The TLS files of ``route``'s ``https://`` auth service (None: no auth,
    or an ``http://`` one), as the configuration loaded them."""
    auth = route.auth
    if auth is None or auth.tls is None:
        return None
    files = config.auth_tls.get(id(route))
    if files is None:
        if auth.tls.ca_file is not None or auth.tls.client_cert is not None:
            # Never plain, never the system store instead of the CA it names.
            raise ValueError(f"ForwardAuth {auth.url!r}: its TLS files were not loaded")
        files = UpstreamTLSFiles(auth.tls)  # nothing to read: the system store
    return files


def route_stages(
    route: Route,
    snapshot: Snapshot,
    forwarder: Forwarder,
    *,
    tls: bool,
    max_body_size: int,
    https_port: Callable[[], int | None],
    vhost: VirtualHost | None = None,
    caches: CacheStores | None = None,
    rate_limits: RateLimits | None = None,
    auth: AuthDecisions | None = None,
) -> list[Stage]:
    """The stages of ``route`` (of ``vhost``) on a listener that is TLS or
    not, fresh (a stage belongs to one chain)."""
    limit = route.max_body_size if route.max_body_size is not None else max_body_size
    stages: list[Stage] = [BodyLimit(limit)]
    redirects = not tls and not route.plain_http
    rate_limit = route.rate_limit
    if rate_limit is not None and rate_limits is not None and vhost is not None and not redirects:
        name = bucket_name(vhost, route)
        stages.insert(
            0,
            RateLimitStage(rate_limit, name, rate_limits.store, rate_limits.counters_for(name)),
        )
    vhost_allow = vhost.allow if vhost is not None else ()
    vhost_deny = vhost.deny if vhost is not None else ()
    if vhost_allow or vhost_deny or route.allow or route.deny:
        # First: a client refused here is refused before anything else.
        stages.insert(0, AccessRules((vhost_allow, route.allow), vhost_deny + route.deny))
    if redirects:
        stages.append(HttpsRedirect(https_port))
        return stages
    if route.auth is not None:
        name = auth_name(vhost.names[0] if vhost is not None else "", route.prefix)
        stages.append(
            ForwardAuthStage(
                route.auth,
                forwarder.upstream_for(auth_tls_files(route, snapshot.config)),
                forwarder.clock,
                (auth or AuthDecisions()).counters_for(name),
                via=forwarder.via,
            )
        )
    cache = route.cache
    if cache is not None and caches is not None and vhost is not None:
        store, counters = caches.store_for(store_name(vhost, route, cache), cache)
        stages.append(
            CacheStage(
                cache, store, counters, clock=forwarder.clock, invalidate=caches.invalidate
            )
        )
    backends = None
    if vhost is None or vhost.hide_backend:
        backends = backend_authorities(
            str(endpoint) for cluster in route.clusters for endpoint in cluster.endpoints
        )
    target = route.target
    if isinstance(target, Split):
        stages.append(
            SplitStage(
                forwarder, target, snapshot.splits[id(target)], snapshot, backends=backends
            )
        )
    else:
        stages.append(ForwardStage(forwarder, snapshot.clusters[target.name], backends=backends))
    return stages


def build_plan(
    snapshot: Snapshot,
    forwarder: Forwarder,
    *,
    max_body_size: int,
    https_port: Callable[[], int | None],
    caches: CacheStores | None = None,
    rate_limits: RateLimits | None = None,
    auth: AuthDecisions | None = None,
) -> Plan:
    """Every route's chain, for plain and TLS listeners.  The routes' cache
    stores come from ``caches`` (which then closes those no route uses)."""
    chains: tuple[dict[int, RouteChain], dict[int, RouteChain]] = ({}, {})
    routes = [(vhost, route) for vhost in snapshot.config.virtual_hosts for route in vhost.routes]
    for tls in (False, True):
        for vhost, route in routes:
            stages = route_stages(
                route,
                snapshot,
                forwarder,
                tls=tls,
                max_body_size=max_body_size,
                https_port=https_port,
                vhost=vhost,
                caches=caches,
                rate_limits=rate_limits,
                auth=auth,
            )
            # A chain that only redirects has no upstream to stream a body to.
            streams = not route.request_buffering and not isinstance(stages[-1], HttpsRedirect)
            chains[tls][id(route)] = RouteChain(stages, stream_bodies=streams)
    if caches is not None:
        caches.keep_only(
            store_name(vhost, route, route.cache)
            for vhost, route in routes
            if route.cache is not None
        )
    # Each cluster's pool, once nothing can fail any more (a plan that is
    # refused leaves the running clusters' pools alone): its stages send through it.
    tls_files = snapshot.config.upstream_tls
    for name, runtime in snapshot.clusters.items():
        runtime.upstream = forwarder.upstream_for(tls_files.get(name))
    used = [tls_files[name] for name in snapshot.clusters if name in tls_files]
    # The auth services' pools too: a reload must not close one its routes still ask through.
    for _, route in routes:
        files = auth_tls_files(route, snapshot.config)
        if files is not None:
            used.append(files)
    forwarder.keep_tls_pools(used)
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
        caches: CacheStores | None = None,
        rate_limits: RateLimits | None = None,
    ) -> None:
        self.forwarder = forwarder
        #: Every route's cache store, kept across reloads.
        self.caches = caches or CacheStores(clock=forwarder.clock.seconds)
        #: The rate-limit store and counters, kept across reloads.
        self.rate_limits = rate_limits or RateLimits(
            MemoryStore(forwarder.clock.seconds, settings.rate_limit_max_keys)
        )
        #: Every route's forward-authentication counters, kept across reloads.
        self.auth = AuthDecisions()
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
            caches=self.caches,
            rate_limits=self.rate_limits,
            auth=self.auth,
        )
