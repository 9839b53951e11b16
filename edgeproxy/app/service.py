"""
Builds the running proxy: listeners, the certificate watcher, the upstream
pool and the admin listener, as one ``MultiService``.  Only this module and
:mod:`edgeproxy.app.tap` touch the global reactor.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool

from edgeproxy.app.fastpaths import FastPaths
from edgeproxy.cluster.discovery import NameWatcher, make_resolver
from edgeproxy.cluster.health import HealthChecker
from edgeproxy.cluster.runtime import ClusterRuntime, EndpointRuntime
from edgeproxy.cluster.snapshot import Snapshot
from edgeproxy.config.load import LoadedConfig, load_config
from edgeproxy.config.settings import Settings
from edgeproxy.config.watch import BackgroundLoader, ConfigWatcher, in_daemon_thread
from edgeproxy.core.errors import ConfigError
from edgeproxy.net import heap
from edgeproxy.net.acceptgate import AcceptGate, open_files_limit
from edgeproxy.net.endpoints import DirectEndpointFactory
from edgeproxy.ops.accesslog import AccessLog, FileSink
from edgeproxy.ops.admin import admin_site
from edgeproxy.ops.metrics import Metrics
from edgeproxy.proxy.forward import Forwarder
from edgeproxy.proxy.h1channel import ConnectionTracker, ProxyFactory
from edgeproxy.proxy.h2channel import H2Channel
from edgeproxy.proxy.pipeline import Pipeline
from edgeproxy.ratelimit.redis import RedisStore, parse_redis_url, txredis_client
from edgeproxy.ratelimit.registry import RateLimits
from edgeproxy.ratelimit.store import MemoryStore, Store
from edgeproxy.tls.certificates import CertificateIndex, SNIConnectionCreator
from edgeproxy.tls.certwatch import CertificateWatcher
from edgeproxy.upstream.h1client import UpstreamClient

__all__ = ["EdgeProxyService", "ListenEndpoints", "ListenerService", "make_service"]

#: ``(kind, description) -> endpoint`` for each listener ("https", "http",
#: "admin"); by default ``serverFromString``.  Worker processes
#: (:mod:`edgeproxy.app.workers`) pass one that adopts the supervisor's sockets.
ListenEndpoints = Callable[[str, str], IStreamServerEndpoint]


def _proxied(description: str) -> bool:
    """A PROXY-protocol listener (Twisted's ``haproxy:`` prefix)."""
    return description.startswith("haproxy:")


def _string_endpoints(reactor: Any) -> ListenEndpoints:
    def endpoint(kind: str, description: str) -> IStreamServerEndpoint:
        parsed: IStreamServerEndpoint = serverFromString(reactor, description)
        return parsed

    return endpoint


class ListenerService(Service):
    """Listens on one endpoint; a failure to listen stops startup with a clear message."""

    log = Logger()

    def __init__(
        self,
        kind: str,
        description: str,
        endpoint: IStreamServerEndpoint,
        factory: IProtocolFactory,
    ) -> None:
        self.kind = kind
        self.description = description
        self._endpoint = endpoint
        self._factory = factory
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        # Listening here (before privileges are dropped, before the reactor
        # runs) lets a bad endpoint fail twistd at once instead of leaving a
        # process that serves nothing.
        outcome: list[Any] = []
        self._endpoint.listen(self._factory).addBoth(outcome.append)
        if not outcome:
            raise SystemExit(f"edgeproxy: {self.kind} listener {self.description} did not start")
        if isinstance(outcome[0], Failure):
            raise SystemExit(
                f"edgeproxy: cannot listen for {self.kind} on {self.description}: "
                f"{outcome[0].getErrorMessage()}"
            )
        self.port = outcome[0]
        address = self.port.getHost()
        self.log.info(
            "edgeproxy {kind} listener on {host}:{port}",
            kind=self.kind,
            host=getattr(address, "host", "?"),
            port=getattr(address, "port", "?"),
        )

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


class EdgeProxyService(MultiService):
    """The whole proxy; children are started in the order they were added."""

    log = Logger()

    def __init__(
        self,
        settings: Settings,
        reactor: Any,
        endpoints: ListenEndpoints | None = None,
        *,
        handle_sighup: bool = False,
    ) -> None:
        super().__init__()
        self._handle_sighup = handle_sighup
        endpoints = endpoints or _string_endpoints(reactor)
        self.settings = settings
        self.reactor = reactor
        # Chosen before the https listeners are built: they take its TLS layer.
        self.fast_paths = FastPaths(settings.fast_paths)
        config = load_config(settings.config)
        self._rng = rng = random.Random()
        self.upstream = UpstreamClient(reactor, limits=settings.http_limits)
        snapshot = Snapshot.build(config, reactor, rng)
        self._warn_unverified(config)
        self.pipeline = Pipeline(
            snapshot,
            Forwarder(self.upstream, via=settings.via, clock=reactor, rng=rng),
            settings=settings,
            https_port=self.https_port,
            rate_limits=RateLimits(_rate_limit_store(settings, reactor)),
        )
        self.generation = 1
        self.last_reload: dict[str, Any] | None = None
        self.config_loader = BackgroundLoader(
            settings.config,
            load_config,
            reactor,
            in_daemon_thread(reactor),
            settings.reload_timeout,
            self._install_config,
            self._reject_config,
        )
        self.connections = ConnectionTracker()
        # Checks use their own short-lived connections, as HAProxy's do: a
        # check must see whether a *new* connection works.
        self._health_agent = Agent.usingEndpointFactory(
            reactor,
            DirectEndpointFactory(reactor, connect_timeout=30.0),  # the check's timeout governs
            HTTPConnectionPool(reactor, persistent=False),
        )
        self._health_checkers: dict[int, HealthChecker] = {}
        self._start_health_checkers(snapshot)
        self._resolver: Any = None
        self._name_watchers: dict[int, NameWatcher] = {}
        self._start_name_watchers(snapshot)
        self.certificate_index = CertificateIndex.empty()
        self.certificates = CertificateWatcher(
            settings.certs,
            reactor,
            self._install_index,
            interval=settings.cert_poll_interval,
            tls_profile=settings.tls_profile,
            http2=settings.http2,
        )
        self.certificates.setServiceParent(self)
        creator = SNIConnectionCreator(
            lambda: self.certificate_index,
            settings.tls_profile,
            # The running configuration's, so a reload changes it for new handshakes.
            lambda host: self.pipeline.snapshot.routing.tls_policy_for(host),
            lambda: self.pipeline.snapshot.routing.has_client_ca,
            http2=settings.http2,
        )
        # Under TLS: a connection it refuses is closed before any TLS work.
        self.accept_gate = gate = AcceptGate(
            settings.accept_limits, reactor, pending_timeout=settings.header_timeout
        )
        self.metrics = Metrics()
        self.metrics.watch(
            lambda: self.pipeline.snapshot,
            lambda: self.certificate_index,
            lambda: self.generation,
            caches=self.pipeline.caches.figures,
            connections_refused=lambda: gate.gate.refused,
            rate_limits=self.pipeline.rate_limits.figures,
            auth=self.pipeline.auth.figures,
        )
        path = settings.access_log
        self.access_sink = FileSink(path, reactor) if path not in (None, "off") else None
        access_log = AccessLog(
            reactor,
            sink=self.access_sink,
            fmt=settings.access_log_format,
            metrics=self.metrics,
            enabled=settings.access_log != "off",
        )

        def proxy_factory(tls: bool) -> ProxyFactory:
            return ProxyFactory(
                self.pipeline,
                tls=tls,
                settings=settings,
                access_log=access_log,
                clock=reactor,
                metrics=self.metrics,
                connections=self.connections,
                http2=H2Channel.take_over if tls and settings.http2 else None,
            )

        self.https_listeners: list[ListenerService] = []
        for description in settings.https:
            gated = gate.endpoint(
                endpoints("https", description), "https", proxied=_proxied(description)
            )
            endpoint = self.fast_paths.tls_endpoint(creator, gated)
            listener = ListenerService("https", description, endpoint, proxy_factory(True))
            listener.setServiceParent(self)
            self.https_listeners.append(listener)
        for description in settings.http:
            gated = gate.endpoint(
                endpoints("http", description), "http", proxied=_proxied(description)
            )
            ListenerService("http", description, gated, proxy_factory(False)).setServiceParent(self)
        if settings.admin is not None:
            ListenerService(
                "admin", settings.admin, endpoints("admin", settings.admin), admin_site(self)
            ).setServiceParent(self)
        if settings.watch_config:
            ConfigWatcher(settings.config, reactor, self.reload).setServiceParent(self)

    def _start_health_checkers(self, snapshot: Snapshot) -> None:
        """A checker for every cluster runtime with a health check that has none yet."""
        for name, runtime in snapshot.clusters.items():
            check = runtime.cluster.health_check
            if check is None or id(runtime) in self._health_checkers:
                continue
            targets = [
                (rt.endpoint, rt.health) for rt in runtime.endpoints if rt.health is not None
            ]
            agent = self._health_agent
            if runtime.cluster.upstream_tls is not None:
                agent = self._tls_health_agent(runtime)
            checker = HealthChecker(name, targets, check, self.reactor, agent, self._rng)
            self._health_checkers[id(runtime)] = checker
            checker.setServiceParent(self)

    def _tls_health_agent(self, runtime: ClusterRuntime) -> Agent:
        """Checks of a cluster with ``upstream_tls``: the same TLS settings as
        its requests (the running ones, read at each check, so a reload that
        changes the files reaches its checks), a full handshake each time."""
        agent: Agent = Agent.usingEndpointFactory(
            self.reactor,
            DirectEndpointFactory(
                self.reactor, connect_timeout=30.0, tls=lambda: runtime.upstream.tls
            ),
            HTTPConnectionPool(self.reactor, persistent=False),
        )
        return agent

    def _warn_unverified(self, config: LoadedConfig) -> None:
        for name, files in config.upstream_tls.items():
            if not files.settings.verify:
                self.log.warn(
                    "cluster {cluster}: upstream_tls verify=False: the endpoints' "
                    "certificates are NOT verified",
                    cluster=name,
                )
        for vhost in config.virtual_hosts:
            for route in vhost.routes:
                tls = route.auth.tls if route.auth is not None else None
                if tls is not None and not tls.verify:
                    self.log.warn(
                        "route {route}: ForwardAuth tls verify=False: the auth service's "
                        "certificate is NOT verified",
                        route=f"{vhost.names[0]}{route.prefix}",
                    )

    def _start_name_watchers(self, snapshot: Snapshot) -> None:
        """A watcher for every cluster runtime with endpoints given by name that has none yet."""
        for runtime in snapshot.clusters.values():
            if id(runtime) in self._name_watchers:
                continue
            if not any(endpoint.is_name() for endpoint in runtime.cluster.endpoints):
                continue
            if self._resolver is None:
                self._resolver = make_resolver(self.settings.resolver, self.reactor)
            runtime.on_drained = self._drained
            watcher = NameWatcher(runtime, self._resolver, self.reactor, self._addresses_changed)
            self._name_watchers[id(runtime)] = watcher
            watcher.setServiceParent(self)

    def _addresses_changed(
        self, runtime: ClusterRuntime, joined: list[EndpointRuntime], left: list[EndpointRuntime]
    ) -> None:
        tls = getattr(runtime.upstream, "tls", None)
        if tls is not None:
            # An address of a name is verified against the name (and sent it in SNI).
            for rt in joined:
                if rt.origin is not None and rt.origin.host != rt.endpoint.host:
                    tls.name_endpoint(rt.endpoint.host, rt.endpoint.port, rt.origin.host)
        checker = self._health_checkers.get(id(runtime))
        if checker is None:
            return
        for rt in left:
            checker.remove(rt.endpoint)
        for rt in joined:
            if rt.health is not None:
                checker.add(rt.endpoint, rt.health)

    def _drained(self, rt: EndpointRuntime) -> None:
        # Responses hand their connection back to the pool after the
        # request's slot is released: close what is idle a turn later too.
        for pool in self.pipeline.forwarder.pools():
            pool.close_idle(rt.endpoint)
            self.reactor.callLater(0, pool.close_idle, rt.endpoint)

    def reload(self) -> Deferred[bool]:
        """Load the configuration again and swap it in whole; keep the old one if
        the new one is broken or takes longer than ``--reload-timeout`` to load.
        The user's Python runs off the event loop (:class:`BackgroundLoader`);
        the swap happens here, on the reactor.  Requests in flight finish on the
        snapshot they started with; clusters defined exactly as before keep
        their health, breakers and counters.  Fires with whether the new
        configuration is in."""
        if self.access_sink is not None:
            # Log rotation: the file may have been moved away.
            self.access_sink.reopen()
        return self.config_loader.request()

    def _reject_config(self, problems: Sequence[str], at: float) -> None:
        for problem in problems:
            self.log.error("reload rejected: {problem}", problem=problem)
        self.last_reload = {"at": at, "outcome": "error", "problems": list(problems)}
        self.metrics.config_reloads.labels("error").inc()

    def _install_config(self, config: LoadedConfig, at: float) -> bool:
        old = self.pipeline.snapshot
        new = Snapshot.build(config, self.reactor, self._rng, previous=old)
        try:
            self.pipeline.swap(new)
        except ConfigError as e:
            # A cache directory that cannot be used: the old plan keeps serving.
            new.stop()
            self._reject_config([str(problem) for problem in e.problems], at)
            return False
        for runtime in old.retired_by(new):
            checker = self._health_checkers.pop(id(runtime), None)
            if checker is not None:
                checker.disownServiceParent()
            watcher = self._name_watchers.pop(id(runtime), None)
            if watcher is not None:
                watcher.disownServiceParent()
            runtime.stop()
        self._start_health_checkers(new)
        self._warn_unverified(config)
        self._start_name_watchers(new)
        self.generation += 1
        self.last_reload = {"at": at, "outcome": "ok", "problems": []}
        self.metrics.config_reloads.labels("ok").inc()
        self.log.info(
            "configuration reloaded (generation {generation}, loaded in {seconds:.2f} s): "
            "{summary}",
            generation=self.generation,
            seconds=self.reactor.seconds() - at,
            summary=config.summary(),
        )
        return True

    def _install_index(self, index: CertificateIndex) -> None:
        self.certificate_index = index

    def listeners(self) -> list[ListenerService]:
        """Every listener (https, http, admin), for the admin pages."""
        return [child for child in self if isinstance(child, ListenerService)]

    def https_port(self) -> int | None:
        """The port http->https redirects point at."""
        if self.settings.redirect_port is not None:
            return self.settings.redirect_port
        for listener in self.https_listeners:
            if listener.port is not None:
                port = getattr(listener.port.getHost(), "port", None)
                if isinstance(port, int):
                    return port
        return None

    def privilegedStartService(self) -> None:
        self.fast_paths.install(self.reactor)
        self.accept_gate.check_open_files(open_files_limit())
        if self._handle_sighup:
            # Before the listeners open: a SIGHUP that arrives once anyone can
            # know we are up must reload, not kill the process.
            signal.signal(
                signal.SIGHUP, lambda signum, frame: self.reactor.callFromThread(self.reload)
            )
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        if self.access_sink is not None:
            self.access_sink.start()
        heap.tune_malloc()
        heap.settle()

    def drain(self) -> Deferred[None]:
        """Stop accepting, let requests in flight finish for up to
        ``drain_timeout`` seconds, then cut what is left."""
        listeners = [
            child for child in self if isinstance(child, ListenerService) and child.kind != "admin"
        ]
        stopped = [d for d in (listener.stopService() for listener in listeners) if d is not None]
        self.log.info(
            "draining: listeners closed, {connections} client connection(s) open",
            connections=len(self.connections.channels),
        )
        d = gatherResults(stopped).addBoth(lambda _: self.connections.drain())
        d.addTimeout(self.settings.drain_timeout, self.reactor)

        def cut(failure: Failure) -> None:
            failure.trap(DeferredTimeoutError)
            self.log.warn(
                "drain timeout: cutting {connections} connection(s)",
                connections=len(self.connections.channels),
            )
            self.connections.abort_all()

        d.addErrback(cut)
        return d

    def stopService(self) -> Deferred[None]:
        self.config_loader.close()
        d = self.drain()
        d.addBoth(lambda _: super(EdgeProxyService, self).stopService())
        d.addBoth(lambda _: self.accept_gate.stop())
        d.addBoth(lambda _: self.pipeline.forwarder.close())
        d.addBoth(lambda _: self.pipeline.snapshot.stop())
        d.addBoth(lambda _: self.pipeline.caches.close())
        d.addBoth(lambda _: self.pipeline.rate_limits.store.close())
        if self.access_sink is not None:
            d.addBoth(lambda _: self.access_sink.stop() if self.access_sink else None)
        return d


def _rate_limit_store(settings: Settings, reactor: Any) -> Store:
    """``--rate-limit-store``: this process's memory, or a Redis (connecting now)."""
    if settings.rate_limit_store == "memory":
        return MemoryStore(reactor.seconds, settings.rate_limit_max_keys)
    address = parse_redis_url(settings.rate_limit_store)
    return RedisStore(address, txredis_client(reactor, address), reactor)


def make_service(
    settings: Settings,
    reactor: Any,
    endpoints: ListenEndpoints | None = None,
    *,
    handle_sighup: bool = False,
) -> EdgeProxyService:
    """The proxy; with ``handle_sighup`` it reloads its configuration on SIGHUP."""
    return EdgeProxyService(settings, reactor, endpoints, handle_sighup=handle_sighup)
