"""
Prometheus metrics, served on the admin listener at ``/metrics``.

Per-request figures (counts, durations, bytes) are added up in plain dicts
keyed by label tuple (a dict lookup and an integer add per request; the
reactor is one thread, so prometheus-client's per-sample locks would buy
nothing) and turned into metric families at scrape time.  Everything that is
state rather than an event (endpoint health, breaker states, certificate
expiry, in-flight counts, config generation) is read at scrape time too.
Label sets are bounded by the configuration: no per-client or per-path
labels.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from edgeproxy.core.connlimits import Refusal
from edgeproxy.core.errors import Outcome, Reason
from edgeproxy.proxy.forwardauth import RESULTS as AUTH_RESULTS
from edgeproxy.ratelimit.registry import RESULTS

if TYPE_CHECKING:
    from edgeproxy.cache.registry import CacheCounters
    from edgeproxy.cache.store import StoreFigures
    from edgeproxy.cluster.snapshot import Snapshot
    from edgeproxy.proxy.forwardauth import AuthCounters
    from edgeproxy.ratelimit.registry import DecisionCounters
    from edgeproxy.tls.certificates import CertificateIndex

__all__ = ["BREAKER_STATES", "Metrics"]

#: Request and upstream durations, in seconds.
DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0
)
BREAKER_STATES = ("closed", "open", "half_open")
_Family = TypeVar("_Family", CounterMetricFamily, GaugeMetricFamily)
#: Outcomes counted in edgeproxy_requests_rejected_total.
_REFUSALS = frozenset({Outcome.REJECTED, Outcome.NO_ROUTE})


def _status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else "other"


class Metrics:
    """The process's metrics; one registry per process (not the global one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        #: Per-request sums, turned into families by _RequestCollector.
        self.request_counts: dict[tuple[str, str, str, str], int] = {}
        self.request_durations: dict[tuple[str, str], _Histogram] = {}
        self.upstream_durations: dict[str, _Histogram] = {}
        self.body_bytes: dict[str, list[int]] = {}  # vhost -> [in, out]
        #: Requests edgeproxy refused, by reason (a token of errors.Reason).
        self.rejections: dict[Reason, int] = {}
        #: Requests that got no usable upstream response, by reason (``upstream_tls``...).
        self.upstream_errors: dict[Reason, int] = {}
        # (vhost, route, cluster) -> the above's entries for it, looked up once.
        self._sinks: dict[tuple[str | None, str | None, str | None], _Sink] = {}
        r.register(_RequestCollector(self))
        self.tls_handshakes = Counter(
            "edgeproxy_tls_handshakes",
            "Completed TLS handshakes, by protocol version.",
            ["version"],
            registry=r,
        )
        self._handshake_children: dict[str, Any] = {}
        self.tls_failures = Counter(
            "edgeproxy_tls_handshake_failures",
            "TLS connections that ended before their handshake completed, by reason.",
            ["reason"],
            registry=r,
        )
        self.client_timeouts = Counter(
            "edgeproxy_client_timeouts",
            "Client connections closed at a deadline, by which (header, body, no_request, "
            "keepalive).",
            ["deadline"],
            registry=r,
        )
        self.config_reloads = Counter(
            "edgeproxy_config_reloads",
            "Configuration reloads, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.active_connections: dict[str, int] = {}
        #: Open HTTP/2 client connections, streams open on them, streams ever opened.
        self.h2_connections = 0
        self.h2_active_streams = 0
        self.h2_streams = 0
        self.h2_goaways = Counter(
            "edgeproxy_h2_goaways",
            "HTTP/2 client connections edgeproxy ended with GOAWAY for a fault of the "
            "client's, by cause (rapid_reset, control_flood, header_block, header_list, "
            "protocol_error).",
            ["cause"],
            registry=r,
        )
        #: Tunnels after a 101 (WebSocket...): open now, and closed, by how they
        #: ended (tunnel.TunnelEnd values), with the bytes each way.
        self.tunnels_open = 0
        self.tunnels_closed: dict[str, int] = {}
        self.tunnel_bytes = [0, 0]  # from clients, from upstreams
        self._state = _StateCollector(self)
        r.register(self._state)

    def watch(
        self,
        snapshot: Callable[[], Snapshot],
        certificates: Callable[[], CertificateIndex],
        generation: Callable[[], int],
        caches: Callable[[], list[tuple[str, StoreFigures, CacheCounters]]] = list,
        connections_refused: Callable[[], Mapping[Refusal, int]] = dict,
        rate_limits: RateLimitFigures | None = None,
        auth: Callable[[], list[tuple[str, AuthCounters]]] = list,
    ) -> None:
        """Where the scrape-time collector reads the live state from."""
        self._state.sources = (snapshot, certificates, generation)
        self._state.caches = caches
        self._state.connections_refused = connections_refused
        self._state.rate_limits = rate_limits
        self._state.auth = auth

    def observe(
        self,
        vhost: str | None,
        route: str | None,
        cluster: str | None,
        status: int,
        duration: float,
        upstream_time: float | None,
        body_in: int,
        body_out: int,
    ) -> None:
        """One finished request (called for every request: no record is built for it)."""
        sink = self._sinks.get((vhost, route, cluster))
        if sink is None:
            sink = self._sink(vhost, route, cluster)
        key = sink.count_keys[status // 100 if 100 <= status < 600 else 0]
        counts = self.request_counts
        counts[key] = counts.get(key, 0) + 1
        sink.durations.observe(duration)
        if upstream_time is not None and sink.upstream is not None:
            sink.upstream.observe(upstream_time)
        pair = sink.body_bytes
        pair[0] += body_in
        pair[1] += body_out

    def count_outcome(self, outcome: Outcome, reason: Reason | None) -> None:
        """A request edgeproxy answered with an error of its own; refusals
        (``rejected``, ``no_route``) and upstream errors are counted by reason."""
        if outcome in _REFUSALS and reason is not None:
            self.rejections[reason] = self.rejections.get(reason, 0) + 1
        elif outcome is Outcome.UPSTREAM_ERROR and reason is not None:
            self.upstream_errors[reason] = self.upstream_errors.get(reason, 0) + 1

    def _sink(self, vhost: str | None, route: str | None, cluster: str | None) -> _Sink:
        """Where the requests of one (vhost, route, cluster) are added up."""
        v, r, c = vhost or "-", route or "-", cluster or "-"
        durations = self.request_durations.get((v, r))
        if durations is None:
            durations = self.request_durations[(v, r)] = _Histogram()
        upstream = None
        if cluster is not None:
            upstream = self.upstream_durations.get(cluster)
            if upstream is None:
                upstream = self.upstream_durations[cluster] = _Histogram()
        pair = self.body_bytes.get(v)
        if pair is None:
            pair = self.body_bytes[v] = [0, 0]
        # Index status // 100 (1-5); 0 for a status outside 100-599.
        keys = tuple((v, r, c, _status_class(n * 100) if n else "other") for n in range(6))
        sink = self._sinks[(vhost, route, cluster)] = _Sink(keys, durations, upstream, pair)
        return sink

    def connection_opened(self, listener: str) -> None:
        self.active_connections[listener] = self.active_connections.get(listener, 0) + 1

    def connection_closed(self, listener: str) -> None:
        self.active_connections[listener] = self.active_connections.get(listener, 1) - 1

    def h2_connection(self, opened: bool) -> None:
        """An https connection that negotiated HTTP/2 began or ended."""
        self.h2_connections += 1 if opened else -1

    def h2_stream(self, opened: bool) -> None:
        if opened:
            self.h2_streams += 1
            self.h2_active_streams += 1
        else:
            self.h2_active_streams -= 1

    def h2_goaway(self, cause: str) -> None:
        self.h2_goaways.labels(cause).inc()

    def tunnel_opened(self) -> None:
        self.tunnels_open += 1

    def tunnel_closed(self, end: str, from_client: int, from_upstream: int) -> None:
        self.tunnels_open -= 1
        self.tunnels_closed[end] = self.tunnels_closed.get(end, 0) + 1
        self.tunnel_bytes[0] += from_client
        self.tunnel_bytes[1] += from_upstream

    def tls_failed(self, cause: str) -> None:
        """A TLS connection that ended before its handshake completed."""
        self.tls_failures.labels(cause).inc()

    def client_timed_out(self, deadline: str) -> None:
        """A client connection closed at its ``deadline`` (docs/security.md)."""
        self.client_timeouts.labels(deadline).inc()

    def tls_handshake(self, version: str) -> None:
        # labels() takes a lock and builds a key per call: keep the children.
        child = self._handshake_children.get(version)
        if child is None:
            child = self._handshake_children[version] = self.tls_handshakes.labels(version)
        child.inc()


#: The rate-limit store's name and figures, and each route's decision counters.
RateLimitFigures = Callable[[], "tuple[str, dict[str, float], list[tuple[str, DecisionCounters]]]"]


class _Sink:
    """One (vhost, route, cluster)'s entries in the per-request sums."""

    __slots__ = ("body_bytes", "count_keys", "durations", "upstream")

    def __init__(
        self,
        count_keys: tuple[tuple[str, str, str, str], ...],
        durations: _Histogram,
        upstream: _Histogram | None,
        body_bytes: list[int],
    ) -> None:
        self.count_keys = count_keys
        self.durations = durations
        self.upstream = upstream
        self.body_bytes = body_bytes


class _Histogram:
    """Bucket counts (not cumulative; the last is +Inf), count and sum."""

    __slots__ = ("buckets", "count", "total")

    def __init__(self) -> None:
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        # The first bound >= value: Prometheus buckets are "le".
        self.buckets[bisect_left(DURATION_BUCKETS, value)] += 1
        self.count += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        running = 0
        out: list[tuple[str, float]] = []
        for bound, count in zip((*DURATION_BUCKETS, float("inf")), self.buckets, strict=True):
            running += count
            out.append((floatToGoString(bound), running))
        return out


class _RequestCollector(Collector):
    """The per-request sums as metric families, built at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        m = self._metrics
        requests = CounterMetricFamily(
            "edgeproxy_requests",
            "Requests answered, by virtual host, route, cluster and status class.",
            labels=["vhost", "route", "cluster", "status_class"],
        )
        for key, count in sorted(m.request_counts.items()):
            requests.add_metric(list(key), count)
        yield requests
        durations = HistogramMetricFamily(
            "edgeproxy_request_duration_seconds",
            "Time from the request line to the end of the response, as the client saw it.",
            labels=["vhost", "route"],
        )
        for (vhost, route), histogram in sorted(m.request_durations.items()):
            durations.add_metric([vhost, route], histogram.cumulative(), histogram.total)
        yield durations
        upstream = HistogramMetricFamily(
            "edgeproxy_upstream_response_duration_seconds",
            "Time from sending a request upstream to its response head.",
            labels=["cluster"],
        )
        for cluster, histogram in sorted(m.upstream_durations.items()):
            upstream.add_metric([cluster], histogram.cumulative(), histogram.total)
        yield upstream
        bytes_in = CounterMetricFamily(
            "edgeproxy_request_bytes",
            "Request body bytes received from clients, by virtual host.",
            labels=["vhost"],
        )
        bytes_out = CounterMetricFamily(
            "edgeproxy_response_bytes",
            "Response body bytes sent to clients, by virtual host.",
            labels=["vhost"],
        )
        for vhost, (received, sent) in sorted(m.body_bytes.items()):
            bytes_in.add_metric([vhost], received)
            bytes_out.add_metric([vhost], sent)
        yield bytes_in
        yield bytes_out
        yield _by_key(
            CounterMetricFamily(
                "edgeproxy_requests_rejected",
                "Requests edgeproxy refused itself (outcome rejected or no_route), by reason.",
                labels=["reason"],
            ),
            m.rejections,
        )
        yield _by_key(
            CounterMetricFamily(
                "edgeproxy_upstream_errors",
                "Requests answered with an upstream error (502, 503, 504) by edgeproxy, by "
                "reason (connect_failed, upstream_tls, response_timeout...).",
                labels=["reason"],
            ),
            m.upstream_errors,
        )


class _StateCollector(Collector):
    """Reads gauges (and counters kept elsewhere) from the live state at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self.sources: tuple[Callable[[], Any], Callable[[], Any], Callable[[], int]] | None = None
        self.caches: Callable[[], list[Any]] = list
        self.connections_refused: Callable[[], Mapping[Refusal, int]] = dict
        self.rate_limits: RateLimitFigures | None = None
        self.auth: Callable[[], list[tuple[str, AuthCounters]]] = list

    def describe(self) -> list[Any]:
        # Dynamic families: let the registry ask collect() (auto_describe)
        # rather than describing them twice.
        return []

    def collect(self) -> Iterator[Any]:
        metrics = self._metrics
        yield _by_key(
            GaugeMetricFamily(
                "edgeproxy_active_connections",
                "Open client connections, by listener kind.",
                labels=["listener"],
            ),
            metrics.active_connections,
        )
        yield GaugeMetricFamily(
            "edgeproxy_h2_connections",
            "Open client connections speaking HTTP/2 (part of the https listeners' count).",
            value=metrics.h2_connections,
        )
        yield GaugeMetricFamily(
            "edgeproxy_h2_active_streams",
            "HTTP/2 streams open now, on every client connection.",
            value=metrics.h2_active_streams,
        )
        yield CounterMetricFamily(
            "edgeproxy_h2_streams",
            "HTTP/2 streams (requests) clients opened.",
            value=metrics.h2_streams,
        )
        refused = CounterMetricFamily(
            "edgeproxy_connections_refused",
            "Client connections closed at accept, before TLS, by reason: max_connections "
            "(--max-connections), per_client (--max-connections-per-client), rate "
            "(--max-connection-rate-per-client), deny (--deny).",
            labels=["reason"],
        )
        counts = self.connections_refused()
        for reason in Refusal:
            refused.add_metric([reason.value], counts.get(reason, 0))
        yield refused
        yield from _tunnel_families(self._metrics)
        if self.sources is None:
            return
        snapshot_of, certificates_of, generation_of = self.sources
        yield from _cluster_families(snapshot_of())
        yield from _certificate_families(certificates_of())
        yield GaugeMetricFamily(
            "edgeproxy_config_generation",
            "How many configurations this process has loaded (1 = the one it started with).",
            value=generation_of(),
        )
        yield from _cache_families(self.caches())
        if self.rate_limits is not None:
            yield from _rate_limit_families(*self.rate_limits())
        yield from _auth_families(self.auth())


#: How a tunnel can end (edgeproxy.proxy.tunnel.TunnelEnd's values).
TUNNEL_ENDS = ("client", "upstream", "upstream_error", "idle_timeout")


def _tunnel_families(metrics: Metrics) -> Iterator[Any]:
    yield GaugeMetricFamily(
        "edgeproxy_tunnels_open",
        "Tunnels open after 101 Switching Protocols (WebSocket and other upgrades).",
        value=metrics.tunnels_open,
    )
    closed = metrics.tunnels_closed
    total = CounterMetricFamily(
        "edgeproxy_tunnels",
        "Tunnels closed, by how they ended: client (the client closed), upstream (the "
        "upstream closed cleanly), upstream_error (its connection failed), idle_timeout "
        "(--tunnel-idle-timeout).",
        labels=["end"],
    )
    for end in TUNNEL_ENDS:
        total.add_metric([end], closed.get(end, 0))
    yield total
    moved = CounterMetricFamily(
        "edgeproxy_tunnel_bytes",
        "Bytes passed through closed tunnels, by direction (from the client, from the upstream).",
        labels=["direction"],
    )
    moved.add_metric(["client"], metrics.tunnel_bytes[0])
    moved.add_metric(["upstream"], metrics.tunnel_bytes[1])
    yield moved


#: The states of a name's resolution (edgeproxy.cluster.discovery).
NAME_STATES = ("pending", "resolved", "failed", "empty")


def _cluster_families(snapshot: Snapshot) -> Iterator[Any]:
    healthy = GaugeMetricFamily(
        "edgeproxy_endpoint_available",
        "1 if the endpoint takes traffic (healthy and not ejected), else 0.",
        labels=["cluster", "endpoint"],
    )
    breaker = GaugeMetricFamily(
        "edgeproxy_endpoint_breaker_state",
        "1 for the endpoint's current outlier-detection breaker state.",
        labels=["cluster", "endpoint", "state"],
    )
    in_flight = GaugeMetricFamily(
        "edgeproxy_endpoint_requests_in_flight",
        "Requests in flight to the endpoint.",
        labels=["cluster", "endpoint"],
    )
    ejections = CounterMetricFamily(
        "edgeproxy_endpoint_ejections",
        "Times the endpoint was ejected by outlier detection.",
        labels=["cluster", "endpoint"],
    )
    retries = CounterMetricFamily(
        "edgeproxy_retries", "Retries sent, by cluster.", labels=["cluster"]
    )
    overflows = CounterMetricFamily(
        "edgeproxy_limit_overflows",
        "Requests shed by a cluster limit, by limit.",
        labels=["cluster", "limit"],
    )
    pending = GaugeMetricFamily(
        "edgeproxy_cluster_pending_requests",
        "Requests waiting for a free connection slot.",
        labels=["cluster"],
    )
    for name, runtime in sorted(snapshot.clusters.items()):
        counters = runtime.counters
        retries.add_metric([name], counters.retries_total)
        pending.add_metric([name], counters.pending)
        for limit, count in sorted(counters.overflows.items()):
            overflows.add_metric([name, limit], count)
        for rt in runtime.endpoints:
            endpoint = str(rt.endpoint)
            healthy.add_metric([name, endpoint], 1 if rt.up() else 0)
            in_flight.add_metric([name, endpoint], rt.in_flight)
            if rt.breaker is not None:
                status = rt.breaker.status()
                for state in BREAKER_STATES:
                    breaker.add_metric([name, endpoint, state], 1 if status.state == state else 0)
                ejections.add_metric([name, endpoint], status.ejections)
    yield from (healthy, breaker, in_flight, ejections, retries, overflows, pending)
    yield from _name_families(snapshot)


def _name_families(snapshot: Snapshot) -> Iterator[Any]:
    # Endpoints given by name (edgeproxy.cluster.discovery, docs/dns.md).
    addresses = GaugeMetricFamily(
        "edgeproxy_endpoint_name_address",
        "1 for each address an endpoint given by name resolves to now.",
        labels=["cluster", "name", "address"],
    )
    state = GaugeMetricFamily(
        "edgeproxy_endpoint_name_state",
        "1 for the state of the name's last resolution (pending, resolved, failed, empty).",
        labels=["cluster", "name", "state"],
    )
    resolutions = CounterMetricFamily(
        "edgeproxy_endpoint_name_resolutions",
        "Resolutions of an endpoint's name, by outcome (resolved, failed, empty).",
        labels=["cluster", "name", "outcome"],
    )
    for cluster, runtime in sorted(snapshot.clusters.items()):
        for name, record in sorted(runtime.names.items()):
            for address in record["addresses"]:
                addresses.add_metric([cluster, name, address], 1)
            for each in NAME_STATES:
                state.add_metric([cluster, name, each], 1 if record["state"] == each else 0)
            for outcome, count in sorted(record["resolutions"].items()):
                resolutions.add_metric([cluster, name, outcome], count)
    yield from (addresses, state, resolutions)


def _certificate_families(index: CertificateIndex) -> Iterator[Any]:
    expiry = GaugeMetricFamily(
        "edgeproxy_certificate_expiry_timestamp_seconds",
        "When each loaded certificate expires (Unix time).",
        labels=["source"],
    )
    for certificate in index.certificates:
        expiry.add_metric([certificate.source], certificate.not_after.timestamp())
    yield expiry


def _cache_families(caches: list[tuple[str, StoreFigures, CacheCounters]]) -> Iterator[Any]:
    """Each cache store's counters and size, labelled by the store's name
    (``memory:<host><prefix>`` or ``disk:<directory>``: bounded by the configuration)."""
    requests = CounterMetricFamily(
        "edgeproxy_cache_requests",
        "Requests a cache answered or forwarded, by result: hit (fresh, or stale as the "
        "request allowed), stale (stale-while-revalidate, stale-if-error), miss (forwarded), "
        "collapsed (waited for another request's response).",
        labels=["cache", "result"],
    )
    revalidations = CounterMetricFamily(
        "edgeproxy_cache_revalidations",
        "Conditional requests a cache sent to refresh a stored response, by the origin's answer "
        "(not_modified: 304; replaced: anything else).",
        labels=["cache", "result"],
    )
    stored = CounterMetricFamily(
        "edgeproxy_cache_responses",
        "Forwarded responses a cache stored or could not store.",
        labels=["cache", "result"],
    )
    evictions = CounterMetricFamily(
        "edgeproxy_cache_evictions",
        "Objects removed to stay within max_bytes.",
        labels=["cache"],
    )
    size = GaugeMetricFamily("edgeproxy_cache_bytes", "Bytes stored.", labels=["cache"])
    objects = GaugeMetricFamily("edgeproxy_cache_objects", "Objects stored.", labels=["cache"])
    bound = GaugeMetricFamily(
        "edgeproxy_cache_max_bytes", "The store's max_bytes.", labels=["cache"]
    )
    for name, figures, counters in caches:
        requests.add_metric([name, "hit"], counters.hits)
        requests.add_metric([name, "stale"], counters.stale)
        requests.add_metric([name, "miss"], counters.misses)
        requests.add_metric([name, "collapsed"], counters.collapsed)
        revalidations.add_metric([name, "not_modified"], counters.revalidated)
        revalidations.add_metric(
            [name, "replaced"], max(0, counters.revalidations - counters.revalidated)
        )
        stored.add_metric([name, "stored"], counters.stored)
        stored.add_metric([name, "not_stored"], counters.not_stored)
        evictions.add_metric([name], figures.evictions)
        size.add_metric([name], figures.bytes)
        objects.add_metric([name], figures.objects)
        bound.add_metric([name], figures.max_bytes)
    yield from (requests, revalidations, stored, evictions, size, objects, bound)


def _rate_limit_families(
    store: str, figures: dict[str, float], routes: list[tuple[str, DecisionCounters]]
) -> Iterator[Any]:
    """The routes' rate-limit decisions (labelled ``<first host><prefix>``:
    bounded by the configuration) and the store's figures."""
    yield _route_results(
        CounterMetricFamily(
            "edgeproxy_rate_limit_decisions",
            "Requests a route's rate limit decided, by result: allowed, limited (429), unkeyed "
            "(no key: not limited), failed_open and failed_closed (the store failed; passed "
            "on, or 503, as on_store_error says).",
            labels=["route", "result"],
        ),
        routes,
        RESULTS,
    )
    errors = CounterMetricFamily(
        "edgeproxy_rate_limit_store_errors",
        "Decisions the rate-limit store failed to make (unreachable, an error, no answer in time).",
        labels=["store"],
    )
    errors.add_metric([store], figures.get("errors", 0))
    yield errors
    up = GaugeMetricFamily(
        "edgeproxy_rate_limit_store_up",
        "1 while the rate-limit store answers; 0 in an outage (from a failure until a decision "
        "succeeds 5 s after the last failure).",
        labels=["store"],
    )
    up.add_metric([store], figures.get("up", 1))
    yield up
    keys = GaugeMetricFamily(
        "edgeproxy_rate_limit_keys",
        "Buckets the memory store keeps (at most --rate-limit-max-keys).",
        labels=["store"],
    )
    evictions = CounterMetricFamily(
        "edgeproxy_rate_limit_evictions",
        "Buckets still in use that the memory store dropped to stay within --rate-limit-max-keys.",
        labels=["store"],
    )
    if "keys" in figures:
        keys.add_metric([store], figures["keys"])
        evictions.add_metric([store], figures.get("evictions", 0))
    yield keys
    yield evictions


def _auth_families(routes: list[tuple[str, AuthCounters]]) -> Iterator[Any]:
    """The routes' forward-authentication decisions (labelled ``<first
    host><prefix>``: bounded by the configuration)."""
    yield _route_results(
        CounterMetricFamily(
            "edgeproxy_auth_decisions",
            "Requests a route's forward authentication decided, by result: allowed (the auth "
            "service answered 2xx), cached (a 2xx kept for cache_for), denied (any other "
            "answer, passed to the client), unavailable (no usable answer: 503).",
            labels=["route", "result"],
        ),
        routes,
        AUTH_RESULTS,
    )


def _by_key(family: _Family, counts: Mapping[Any, float]) -> _Family:
    """``family`` (one label) with a sample for each key of ``counts``, in key order."""
    for key, count in sorted(counts.items()):
        family.add_metric([key], count)
    return family


def _route_results(
    family: CounterMetricFamily, routes: list[tuple[str, Any]], results: tuple[str, ...]
) -> CounterMetricFamily:
    """``family`` (labels route and result) with, for each route in turn, its
    counter of each of ``results`` (the counters object's attribute of that name)."""
    for route, counters in routes:
        for result in results:
            family.add_metric([route, result], getattr(counters, result))
    return family
