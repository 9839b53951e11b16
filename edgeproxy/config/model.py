"""
The configuration vocabulary: what users write in their ``sites/*.py`` files.

Every class here is a frozen attrs class that is valid by construction: a
wrong type or an out-of-range value raises ``TypeError``/``ValueError`` from
the constructor, naming the argument.  Checks that need the whole picture (a
hostname claimed twice, duplicate prefixes) live in
:mod:`edgeproxy.config.load`.  No Twisted imports here.
"""

from __future__ import annotations

import ipaddress
import math
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from edgeproxy.core.addresses import IPNetwork
from edgeproxy.core.hostnames import normalise_name, normalise_pattern

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_RESOLVE_EVERY",
    "DEFAULT_RESPONSE_TIMEOUT",
    "HSTS",
    "TLS_VERSIONS",
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

#: Seconds to establish the TCP connection to an upstream endpoint (504 after).
DEFAULT_CONNECT_TIMEOUT = 5.0
#: Seconds between resolutions of an endpoint given by name (``Cluster.resolve_every``).
DEFAULT_RESOLVE_EVERY = 30.0
#: Seconds from sending the request to receiving the upstream's response headers (504 after).
DEFAULT_RESPONSE_TIMEOUT = 30.0
#: Seconds without a byte of response body from the upstream before the response is cut off.
DEFAULT_IDLE_TIMEOUT = 60.0


def _positive_finite(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{attribute.name} must be a number of seconds, not {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a positive number of seconds, not {value!r}")


def _non_negative_seconds(
    instance: object, attribute: attrs.Attribute[float], value: float
) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{attribute.name} must be a number of seconds, not {value!r}")
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(
            f"{attribute.name} must be 0 or a positive number of seconds, not {value!r}"
        )


def _non_negative_int(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{attribute.name} must be an int, not {value!r}")
    if value < 0:
        raise ValueError(f"{attribute.name} must not be negative, not {value}")


def _fraction(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{attribute.name} must be a number, not {value!r}")
    if not 0 <= value <= 1:
        raise ValueError(f"{attribute.name} must be between 0 and 1, not {value}")


def _validate_prefix(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"route prefix must be a string, not {value!r}")
    if not value.startswith("/"):
        raise ValueError(f"route prefix must start with '/', not {value!r}")
    if any(c in value for c in "?# ") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError(f"route prefix must be a plain path, not {value!r}")


def _validate_bool(instance: object, attribute: attrs.Attribute[bool], value: bool) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{attribute.name} must be True or False, not {value!r}")


def _non_empty_str(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{attribute.name} must be a non-empty string, not {value!r}")


def _validate_host(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"endpoint host must be a string, not {value!r}")
    if not value or value.startswith("[") or normalise_name(value) is None:
        raise ValueError(
            f"endpoint host must be a hostname or IP address (IPv6 without brackets), not {value!r}"
        )


def _validate_port(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"endpoint port must be an int, not {value!r}")
    if not 0 < value < 65536:
        raise ValueError(f"endpoint port must be in 1..65535, not {value}")


def _validate_weight(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"endpoint weight must be an int, not {value!r}")
    if value < 1:
        raise ValueError(f"endpoint weight must be at least 1, not {value}")


def _endpoint_text(endpoint: Endpoint) -> str:
    # Runs before the validators: the host may not even be a str yet.
    if isinstance(endpoint.host, str) and ":" in endpoint.host:
        return f"[{endpoint.host}]:{endpoint.port}"
    return f"{endpoint.host}:{endpoint.port}"


# Hashed and printed on every request (pool keys, balancer tables, logs): both cached.
@attrs.frozen(cache_hash=True)
class Endpoint:
    """One upstream server, ``Endpoint("10.0.0.5", 8080)``.

    ``host`` is a hostname or an IP literal (IPv6 without brackets).
    ``weight`` is used by weighted selection policies (default 1).
    """

    host: str = attrs.field(validator=_validate_host)
    port: int = attrs.field(validator=_validate_port)
    weight: int = attrs.field(default=1, validator=_validate_weight, kw_only=True)
    _text: str = attrs.field(
        init=False,
        repr=False,
        eq=False,
        default=attrs.Factory(_endpoint_text, takes_self=True),
    )

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """Parse ``"host:port"`` or ``"[v6]:port"``."""
        if not isinstance(text, str):
            raise TypeError(f"endpoint must be 'host:port' or an Endpoint, not {text!r}")
        if "://" in text:
            raise ValueError(f"endpoint {text!r} must be 'host:port', without a scheme")
        if text.startswith("["):
            close = text.find("]")
            if close < 0 or text[close + 1 : close + 2] != ":":
                raise ValueError(f"endpoint {text!r} is not '[ipv6]:port'")
            host, port_text = text[1:close], text[close + 2 :]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(f"endpoint {text!r}: {host!r} is not an IPv6 address") from None
        else:
            host, sep, port_text = text.rpartition(":")
            if not sep or not host:
                raise ValueError(f"endpoint {text!r} is not 'host:port'")
            if ":" in host:
                raise ValueError(f"endpoint {text!r}: write IPv6 addresses as '[addr]:port'")
        if not (port_text.isascii() and port_text.isdigit()):
            raise ValueError(f"endpoint {text!r}: port {port_text!r} is not a number")
        return cls(host, int(port_text))

    def __str__(self) -> str:
        return self._text

    def is_name(self) -> bool:
        """Whether ``host`` is a name to resolve (every address it resolves to
        is an endpoint; docs/dns.md) rather than an IP literal."""
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return True
        return False


def _to_endpoints(value: Iterable[str | Endpoint]) -> tuple[Endpoint, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise TypeError(
            f"endpoints must be a list of 'host:port' strings or Endpoints, not {value!r}"
        )
    result = []
    for item in value:
        result.append(item if isinstance(item, Endpoint) else Endpoint.parse(item))
    return tuple(result)


def _validate_endpoints(
    instance: object, attribute: attrs.Attribute[tuple[Endpoint, ...]], value: tuple[Endpoint, ...]
) -> None:
    if not value:
        raise ValueError("a cluster needs at least one endpoint")
    seen: set[tuple[str, int]] = set()
    for endpoint in value:
        key = (normalise_name(endpoint.host) or endpoint.host, endpoint.port)
        if key in seen:
            raise ValueError(f"endpoint {endpoint} is listed twice")
        seen.add(key)



# -- resilience: selection policies, health, outlier detection, limits, retries --


def _positive_int(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{attribute.name} must be an int, not {value!r}")
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, not {value}")


def _percent(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{attribute.name} must be a number, not {value!r}")
    if not 0 <= value <= 100:
        raise ValueError(f"{attribute.name} must be a percentage from 0 to 100, not {value}")


def _to_statuses(value: Iterable[int]) -> frozenset[int]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise TypeError(f"statuses must be a collection of ints, not {value!r}")
    return frozenset(value)


def _statuses_repr(value: frozenset[int]) -> str:
    """``{200..399}`` rather than two hundred numbers."""
    parts: list[str] = []
    for status in sorted(value):
        if parts and parts[-1].endswith(f"..{status - 1}"):
            parts[-1] = parts[-1].rsplit("..", 1)[0] + f"..{status}"
        elif parts and parts[-1] == str(status - 1):
            parts[-1] = f"{status - 1}..{status}"
        else:
            parts.append(str(status))
    return "{" + ", ".join(parts) + "}"


def _validate_statuses(
    instance: object, attribute: attrs.Attribute[frozenset[int]], value: frozenset[int]
) -> None:
    for status in value:
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError(f"{attribute.name}: {status!r} is not an HTTP status")


def _validate_hash_key(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{attribute.name} must be a string, not {value!r}")
    kind, _, name = value.partition(":")
    if value == "client_ip" or (kind in ("header", "cookie") and name.strip()):
        return
    raise ValueError(
        f"{attribute.name} must be 'client_ip', 'header:NAME' or 'cookie:NAME', not {value!r}"
    )


@attrs.frozen
class RoundRobin:
    """Smooth weighted round robin (nginx's): endpoints take turns in proportion to weight."""


@attrs.frozen
class Random:
    """A random endpoint, in proportion to weight."""


@attrs.frozen
class LeastRequest:
    """The power of two choices: of ``choices`` random endpoints, the one with the
    fewest requests in flight (relative to its weight)."""

    choices: int = attrs.field(default=2, validator=_positive_int)


@attrs.frozen
class ConsistentHash:
    """The same key goes to the same endpoint: ``key`` is ``"client_ip"``,
    ``"header:NAME"`` or ``"cookie:NAME"``.  A Maglev table of ``table_size``
    entries (a prime) spreads keys by weight; removing one of N endpoints moves
    only about 1/N of the keys.  A request without the key gets a random endpoint.
    """

    key: str = attrs.field(default="client_ip", validator=_validate_hash_key)
    table_size: int = attrs.field(default=65537, validator=_positive_int, kw_only=True)


Policy = RoundRobin | Random | LeastRequest | ConsistentHash


def _validate_policy(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, RoundRobin | Random | LeastRequest | ConsistentHash):
        raise TypeError(
            "policy must be RoundRobin(), Random(), LeastRequest() or ConsistentHash(...), "
            f"not {value!r}"
        )


@attrs.frozen
class HealthCheck:
    """Active health checking: ``GET path`` on every endpoint every ``interval``
    seconds (plus up to ``jitter`` of it at random), failing after ``timeout``.
    ``rise`` consecutive passes bring an endpoint back, ``fall`` consecutive
    failures take it out.  A pass is a status in ``expected_statuses``.
    ``host`` is the Host header to send (default: the endpoint's address).
    """

    path: str = attrs.field(default="/healthz", validator=_validate_prefix)
    interval: float = attrs.field(default=2.0, validator=_positive_finite, kw_only=True)
    timeout: float = attrs.field(default=1.0, validator=_positive_finite, kw_only=True)
    rise: int = attrs.field(default=2, validator=_positive_int, kw_only=True)
    fall: int = attrs.field(default=3, validator=_positive_int, kw_only=True)
    jitter: float = attrs.field(default=0.1, validator=_fraction, kw_only=True)
    expected_statuses: frozenset[int] = attrs.field(
        default=frozenset(range(200, 400)),
        converter=_to_statuses,
        validator=_validate_statuses,
        repr=_statuses_repr,
        kw_only=True,
    )
    host: str | None = attrs.field(default=None, kw_only=True)


@attrs.frozen
class OutlierDetection:
    """Passive health: ``consecutive_failures`` failures in real traffic (connect
    failures, resets, timeouts, and statuses in ``failure_statuses``) eject the
    endpoint for ``base_ejection_time`` times the number of times it has been
    ejected, at most ``max_ejection_time``; then one probe request is let
    through, and its outcome brings the endpoint back or ejects it again.  At
    most ``max_ejection_percent`` of a cluster's endpoints are ejected at once
    (at least one may always be).  The endpoint of a one-endpoint cluster is
    ejected only when connections to it fail, unless ``sole_endpoint_answers``.

    Every :class:`Cluster` has ``OutlierDetection()`` unless it says
    ``outlier_detection=None``: the defaults are Envoy's (5 consecutive
    failures, 30 s, at most 300 s).
    """

    consecutive_failures: int = attrs.field(default=5, validator=_positive_int)
    base_ejection_time: float = attrs.field(default=30.0, validator=_positive_finite, kw_only=True)
    max_ejection_time: float = attrs.field(default=300.0, validator=_positive_finite, kw_only=True)
    max_ejection_percent: float = attrs.field(default=50.0, validator=_percent, kw_only=True)
    failure_statuses: frozenset[int] = attrs.field(
        default=frozenset(range(500, 600)),
        converter=_to_statuses,
        validator=_validate_statuses,
        repr=_statuses_repr,
        kw_only=True,
    )
    #: Whether the answers of a one-endpoint cluster's endpoint (statuses in
    #: ``failure_statuses``, response timeouts, broken responses) count as
    #: failures.  By default only failures to connect to it do, as nginx
    #: counts only errors and timeouts: with nowhere else to send a request,
    #: ejecting the endpoint for a run of 500s on one URL would turn that
    #: URL's failures into a cluster that answers nothing, while a refused
    #: connection loses nothing by failing fast.
    sole_endpoint_answers: bool = attrs.field(
        default=False, validator=_validate_bool, kw_only=True
    )


@attrs.frozen
class Limits:
    """Per-cluster caps that shed load fast with 503 (Envoy's circuit-breaker thresholds).

    ``max_requests``: requests in flight to the cluster.  ``max_connections_per_endpoint``:
    requests (so connections: one request per HTTP/1.1 connection) in flight to one
    endpoint; above it a request waits for a free one, in a queue of at most
    ``max_pending`` requests, for at most the cluster's ``connect_timeout``.
    """

    max_requests: int = attrs.field(default=1024, validator=_positive_int)
    max_pending: int = attrs.field(default=1024, validator=_non_negative_int, kw_only=True)
    max_connections_per_endpoint: int = attrs.field(
        default=1024, validator=_positive_int, kw_only=True
    )


@attrs.frozen
class RetryPolicy:
    """``attempts`` tries in all (so ``attempts=2`` is one retry), each on another
    endpoint where there is one.  A request that was never sent is retried
    whatever its method; one that failed after it was sent, or got a status in
    ``retry_statuses``, only if its method is idempotent.  Those retries are
    capped at ``budget_percent`` of the cluster's requests in flight (but
    ``min_retries`` are always allowed), so a failing cluster cannot be stormed;
    retries of requests that were never sent are outside the budget.
    """

    attempts: int = attrs.field(default=2, validator=_positive_int)
    retry_statuses: frozenset[int] = attrs.field(
        default=frozenset({502, 503, 504}),
        converter=_to_statuses,
        validator=_validate_statuses,
        repr=_statuses_repr,
        kw_only=True,
    )
    budget_percent: float = attrs.field(default=20.0, validator=_percent, kw_only=True)
    min_retries: int = attrs.field(default=3, validator=_non_negative_int, kw_only=True)


def _optional(kind: type[Any], label: str) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and not isinstance(value, kind):
            raise TypeError(f"{attribute.name} must be a {label} or None, not {value!r}")

    return check


def _instance_of(kind: type[Any], label: str) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, kind):
            raise TypeError(f"{attribute.name} must be a {label}, not {value!r}")

    return check


def _validate_server_name(
    instance: object, attribute: attrs.Attribute[str | None], value: str | None
) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise TypeError(f"server_name must be a host name string or None, not {value!r}")
    if not value or value.startswith("[") or normalise_name(value) is None:
        raise ValueError(
            f"server_name must be a host name or IP address (IPv6 without brackets), not {value!r}"
        )


def _validate_tls_file(
    instance: object, attribute: attrs.Attribute[str | None], value: str | None
) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise TypeError(f"{attribute.name} must be a file path string or None, not {value!r}")
    if not value or "\x00" in value:
        raise ValueError(f"{attribute.name} must be a file path, not {value!r}")


@attrs.frozen
class UpstreamTLS:
    """TLS to every endpoint of a cluster, verified.

    ``UpstreamTLS(ca_file="internal-ca.pem")``: the endpoint's certificate must
    chain to a CA in ``ca_file`` (a PEM file; None: the system's trust store)
    and name the endpoint's host, or ``server_name`` when given (which is
    also what SNI sends; an IP literal is verified as an IP address and sent
    no SNI).  ``client_cert`` (one PEM file: the private key, the
    certificate, then its chain) is presented to endpoints that ask for one
    (mTLS).  Relative paths are relative to the configuration file's
    directory; the files are read when the configuration loads.
    ``verify=False`` accepts any certificate: a warning at every start-up,
    reload and ``--check``.
    """

    ca_file: str | None = attrs.field(default=None, validator=_validate_tls_file)
    server_name: str | None = attrs.field(
        default=None, validator=_validate_server_name, kw_only=True
    )
    client_cert: str | None = attrs.field(default=None, validator=_validate_tls_file, kw_only=True)
    verify: bool = attrs.field(default=True, validator=_validate_bool, kw_only=True)


@attrs.frozen
class Cluster:
    """A named group of upstream endpoints.

    ``Cluster("api", endpoints=["127.0.0.1:9001", Endpoint("127.0.0.1", 9002)])``
    """

    name: str = attrs.field(validator=_non_empty_str)
    endpoints: tuple[Endpoint, ...] = attrs.field(
        converter=_to_endpoints, validator=_validate_endpoints, kw_only=True
    )
    connect_timeout: float = attrs.field(
        default=DEFAULT_CONNECT_TIMEOUT, validator=_positive_finite, kw_only=True
    )
    response_timeout: float = attrs.field(
        default=DEFAULT_RESPONSE_TIMEOUT, validator=_positive_finite, kw_only=True
    )
    #: Seconds without a byte of the upstream's response body before giving up on it.
    idle_timeout: float = attrs.field(
        default=DEFAULT_IDLE_TIMEOUT, validator=_positive_finite, kw_only=True
    )
    policy: Policy = attrs.field(factory=RoundRobin, validator=_validate_policy, kw_only=True)
    health_check: HealthCheck | None = attrs.field(
        default=None, validator=_optional(HealthCheck, "HealthCheck"), kw_only=True
    )
    #: Passive health, on by default (see :class:`OutlierDetection`); ``None`` turns it off.
    outlier_detection: OutlierDetection | None = attrs.field(
        factory=OutlierDetection,
        validator=_optional(OutlierDetection, "OutlierDetection"),
        kw_only=True,
    )
    limits: Limits = attrs.field(
        factory=Limits, validator=_instance_of(Limits, "Limits"), kw_only=True
    )
    retries: RetryPolicy = attrs.field(
        factory=RetryPolicy, validator=_instance_of(RetryPolicy, "RetryPolicy"), kw_only=True
    )
    #: When no endpoint is available, try them all anyway instead of failing fast with 503.
    panic_mode: bool = attrs.field(default=False, validator=_validate_bool, kw_only=True)
    #: Seconds between resolutions of the endpoints given by name (a shorter
    #: record TTL, at least a second, comes first); docs/dns.md.
    resolve_every: float = attrs.field(
        default=DEFAULT_RESOLVE_EVERY, validator=_positive_finite, kw_only=True
    )
    #: TLS to the endpoints (:class:`UpstreamTLS`); None: plain HTTP.
    upstream_tls: UpstreamTLS | None = attrs.field(
        default=None, validator=_optional(UpstreamTLS, "UpstreamTLS"), kw_only=True
    )


def _to_split_weights(value: Mapping[Cluster, int]) -> tuple[tuple[Cluster, int], ...]:
    if not isinstance(value, Mapping):
        raise TypeError(f"Split takes a dict of {{Cluster: weight}}, not {value!r}")
    return tuple(value.items())


def _validate_split_weights(
    instance: object,
    attribute: attrs.Attribute[tuple[tuple[Cluster, int], ...]],
    value: tuple[tuple[Cluster, int], ...],
) -> None:
    if not value:
        raise ValueError("a Split needs at least one cluster")
    names: set[str] = set()
    for cluster, weight in value:
        if not isinstance(cluster, Cluster):
            raise TypeError(f"Split keys must be Clusters, not {cluster!r}")
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise TypeError(f"Split weight for {cluster.name!r} must be a number, not {weight!r}")
        if weight < 0 or not math.isfinite(weight):
            raise ValueError(
                f"Split weight for {cluster.name!r} must be a finite number >= 0, not {weight}"
            )
        if cluster.name in names:
            raise ValueError(f"cluster {cluster.name!r} appears twice in one Split")
        names.add(cluster.name)
    if sum(weight for _, weight in value) <= 0:
        raise ValueError("a Split needs at least one positive weight (all weights are zero)")


def _validate_sticky(
    instance: object, attribute: attrs.Attribute[str | None], value: str | None
) -> None:
    if value is None or value == "client_ip":
        return
    if isinstance(value, str) and value.startswith("cookie:") and value[7:].strip():
        return
    raise ValueError(f"sticky must be None, 'client_ip' or 'cookie:NAME', not {value!r}")


@attrs.frozen
class Split:
    """Send a share of requests to each cluster: ``Split({v1: 90, v2: 10})``.

    Weights are relative (they need not add up to 100).  A zero weight is
    allowed, so blue/green can go from 100/0 to 0/100; all zero is not.
    """

    weights: tuple[tuple[Cluster, int], ...] = attrs.field(
        converter=_to_split_weights, validator=_validate_split_weights
    )
    #: ``"client_ip"`` or ``"cookie:NAME"``: the same client keeps landing on the
    #: same side while the weights stay the same.  With a cookie, a client that
    #: has none is given one.  ``None``: every request is drawn anew.
    sticky: str | None = attrs.field(default=None, validator=_validate_sticky, kw_only=True)

    @property
    def clusters(self) -> tuple[Cluster, ...]:
        return tuple(cluster for cluster, _ in self.weights)


def _to_networks(value: Iterable[str] | str) -> tuple[IPNetwork, ...]:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, bytes) or not isinstance(value, Iterable):
        raise TypeError(f"allow and deny are lists of networks ('10.0.0.0/8'), not {value!r}")
    networks = []
    for item in value:
        if not isinstance(item, str):
            raise TypeError(f"a network must be a string such as '10.0.0.0/8', not {item!r}")
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not an address or network: {item!r}") from None
    return tuple(networks)


def _validate_target(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, Cluster | Split):
        raise TypeError(f"route target must be a Cluster or a Split, not {value!r}")


def _validate_body_size(
    instance: object, attribute: attrs.Attribute[int | None], value: int | None
) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_body_size must be a number of bytes, not {value!r}")
    if value < 0:
        raise ValueError(f"max_body_size must not be negative, not {value}")


def _validate_store(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"cache store must be a string, not {value!r}")
    if value == "memory":
        return
    if not value.startswith("disk:"):
        raise ValueError(f"cache store must be 'memory' or 'disk:<directory>', not {value!r}")
    directory = value[len("disk:") :]
    if not directory.startswith("/") or "\x00" in directory:
        raise ValueError(f"a disk cache store needs an absolute directory, not {value!r}")


def _validate_object_bytes(instance: Cache, attribute: attrs.Attribute[int], value: int) -> None:
    _positive_int(instance, attribute, value)
    if value > instance.max_bytes:
        raise ValueError(
            f"max_object_bytes ({value}) must not be more than max_bytes ({instance.max_bytes})"
        )


@attrs.frozen
class Cache:
    """``Cache(max_bytes=256 * 2**20, max_object_bytes=8 * 2**20)``: an RFC 9111
    shared cache on a route (docs/caching.md).

    ``max_bytes`` bounds the store (least recently used objects are evicted);
    a response over ``max_object_bytes`` (8 MiB, or ``max_bytes`` if that is
    less) streams through uncached.  ``store``
    is ``"memory"`` (each worker process its own) or ``"disk:/directory"``
    (kept across restarts, shared by every ``--workers`` process).
    Concurrent misses for one URL wait for the first one's response, at most
    ``collapse_timeout`` seconds and ``collapse_max_waiters`` of them; after
    that they go upstream themselves.  ``heuristic_max`` caps the freshness
    guessed from ``Last-Modified`` for responses without an explicit one.
    """

    max_bytes: int = attrs.field(default=256 * 2**20, validator=_positive_int, kw_only=True)
    max_object_bytes: int = attrs.field(
        default=attrs.Factory(lambda self: min(8 * 2**20, self.max_bytes), takes_self=True),
        validator=_validate_object_bytes,
        kw_only=True,
    )
    store: str = attrs.field(default="memory", validator=_validate_store, kw_only=True)
    collapse_timeout: float = attrs.field(default=5.0, validator=_positive_finite, kw_only=True)
    collapse_max_waiters: int = attrs.field(default=1024, validator=_non_negative_int, kw_only=True)
    heuristic_max: float = attrs.field(default=86400.0, validator=_positive_finite, kw_only=True)

    @property
    def disk_directory(self) -> str | None:
        """The directory of a disk store, None for the memory store."""
        return self.store[len("disk:") :] if self.store.startswith("disk:") else None


#: ``VirtualHost(min_tls_version=...)`` values.
TLS_VERSIONS: tuple[str, ...] = ("1.2", "1.3")
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
# Headers edgeproxy writes or decides itself: naming one would forge or lose it.
_RESERVED_HEADERS = frozenset(
    {
        "host",
        "connection",
        "content-length",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "keep-alive",
        "proxy-connection",
        "expect",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "forwarded",
        "via",
        "x-request-id",
    }
)


def _validate_tls_version(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and value not in TLS_VERSIONS:
        raise ValueError(f"min_tls_version must be '1.2', '1.3' or None, not {value!r}")


def _validate_path(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise TypeError(f"{attribute.name} must be a file path string, not {value!r}")
    if not value or "\x00" in value:
        raise ValueError(f"{attribute.name} must be a file path, not {value!r}")


def _validate_header_name(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise TypeError(f"{attribute.name} must be a header name string, not {value!r}")
    if not value or not set(value) <= _TOKEN:
        raise ValueError(f"{attribute.name} must be a header name, not {value!r}")
    if value.lower() in _RESERVED_HEADERS:
        raise ValueError(f"{attribute.name} cannot be {value!r}: edgeproxy writes that header")


def _validate_rate(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"rate must be a number of requests per second, not {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"rate must be a positive number of requests per second, not {value!r}")


def _validate_rate_key(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"rate limit key must be a string, not {value!r}")
    if value == "client_ip":
        return
    name = value[len("header:") :] if value.startswith("header:") else None
    if not name or not set(name) <= _TOKEN:
        raise ValueError(
            f"rate limit key must be 'client_ip' or 'header:NAME' (a header name), not {value!r}"
        )


def _validate_on_store_error(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in ("open", "closed"):
        raise ValueError(f"on_store_error must be 'open' or 'closed', not {value!r}")


def _one_second(rate: object) -> int:
    # Computed before the validators run: a bad rate is theirs to report.
    if isinstance(rate, int | float) and not isinstance(rate, bool) and math.isfinite(rate):
        return max(1, math.ceil(rate))
    return 1


@attrs.frozen
class RateLimit:
    """``RateLimit(rate=10.0, burst=20, key="client_ip")``: each client may
    send ``burst`` requests at once and ``rate`` a second after that; over
    it, 429 with ``Retry-After`` (docs/security.md#rate-limits).

    ``key`` says who a client is: ``"client_ip"`` (the client's address) or
    ``"header:NAME"`` (the value of that request header, e.g. an API key; a
    request without the header is not limited, as nginx does with an empty
    key).  ``burst`` defaults to one second's worth (at least 1).  Where the
    buckets are kept is ``--rate-limit-store`` (this process's memory, or a
    Redis every process shares); ``on_store_error`` says what happens when that
    store cannot answer: ``"open"`` (the default, as Envoy's global rate
    limit) lets the request through, ``"closed"`` answers 503.
    """

    rate: float = attrs.field(validator=_validate_rate)
    burst: int = attrs.field(
        default=attrs.Factory(lambda self: _one_second(self.rate), takes_self=True),
        validator=_positive_int,
        kw_only=True,
    )
    key: str = attrs.field(default="client_ip", validator=_validate_rate_key, kw_only=True)
    on_store_error: str = attrs.field(
        default="open", validator=_validate_on_store_error, kw_only=True
    )

    @property
    def header(self) -> bytes | None:
        """The header a ``header:NAME`` key reads (lower case), else None."""
        if self.key.startswith("header:"):
            return self.key[len("header:") :].lower().encode("ascii")
        return None


def _to_header_names(value: Iterable[str] | str) -> tuple[str, ...]:
    if isinstance(value, str):
        raise TypeError(f"header names must be a list of names, not the string {value!r}")
    return tuple(value)


def _validate_header_names(
    instance: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    seen: set[str] = set()
    for name in value:
        _validate_header_name(instance, attribute, name)
        if name.lower() in seen:
            raise ValueError(f"{attribute.name} names {name!r} twice")
        seen.add(name.lower())


def _validate_auth_request_headers(
    instance: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    _validate_header_names(instance, attribute, value)
    for name in value:
        if name.lower() in ("x-forwarded-method", "x-forwarded-uri"):
            raise ValueError(f"{attribute.name} cannot be {name!r}: edgeproxy writes that header")


def _validate_auth_url(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"the auth URL must be a string, not {value!r}")
    _split_auth_url(value)


def _auth_url_is_https(url: object) -> bool:
    # (Any other value is refused by the URL's own validator, with its reason.)
    return isinstance(url, str) and url[:8].lower() == "https://"


def _validate_auth_tls(
    instance: ForwardAuth,
    attribute: attrs.Attribute[UpstreamTLS | None],
    value: UpstreamTLS | None,
) -> None:
    _optional(UpstreamTLS, "UpstreamTLS")(instance, attribute, value)
    if value is not None and not _auth_url_is_https(instance.url):
        raise ValueError(
            f"ForwardAuth tls= needs an https:// URL, not {instance.url!r} "
            "(an http:// auth service is reached in plain HTTP)"
        )


def _split_auth_url(url: str) -> tuple[str, int, str]:
    """``(host, port, path and query)`` of an ``http://`` or ``https://`` auth URL."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"the auth URL {url!r} is not a URL: {e}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"the auth URL must start with http:// or https://, not {url!r}")
    host = parts.hostname
    if not host or parts.username is not None or parts.password is not None or parts.fragment:
        raise ValueError(
            f"the auth URL must be {parts.scheme}://HOST[:PORT]/PATH, not {url!r}"
        )
    if not url.isascii() or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise ValueError(
            f"the auth URL must be ASCII without spaces or control characters, not {url!r}"
        )
    if normalise_name(host) is None:
        raise ValueError(f"the auth URL's host is not a hostname or IP address: {url!r}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    default_port = 443 if parts.scheme == "https" else 80
    return host, port if port is not None else default_port, path


@attrs.frozen
class ForwardAuth:
    """``ForwardAuth("http://127.0.0.1:9400/check", request_headers=["Authorization",
    "Cookie"], response_headers=["X-User"], cache_for=0.0)``: before a route's
    request is forwarded, ask an auth service (nginx's ``auth_request``,
    Traefik's ForwardAuth; docs/forward-auth.md).

    The auth service gets a ``GET`` of the URL, without a body, carrying the
    request's ``request_headers``, ``X-Forwarded-Method``,
    ``X-Forwarded-Uri`` and the usual forwarding headers.  A 2xx lets the
    request through, with the answer's ``response_headers`` copied onto it
    (a client's own are always removed first).  Any other answer goes back
    to the client as the auth service sent it (its body up to
    ``max_response_body`` bytes; a longer one is a 503).  No answer within
    ``timeout`` seconds, or none at all, is a 503.  ``cache_for`` seconds
    above 0 keep a 2xx per credential (the values of ``request_headers``),
    at most ``cache_max_entries`` of them per route.

    An ``https://`` URL is reached over TLS verified as a cluster's
    ``upstream_tls`` is: ``tls`` (an :class:`UpstreamTLS`, its relative
    paths from the configuration file's directory) or, without it,
    ``UpstreamTLS()`` (the system's trust store).  ``tls`` with an
    ``http://`` URL is refused.
    """

    url: str = attrs.field(validator=_validate_auth_url)
    request_headers: tuple[str, ...] = attrs.field(
        default=("Authorization", "Cookie"),
        converter=_to_header_names,
        validator=_validate_auth_request_headers,
        kw_only=True,
    )
    response_headers: tuple[str, ...] = attrs.field(
        default=(), converter=_to_header_names, validator=_validate_header_names, kw_only=True
    )
    cache_for: float = attrs.field(default=0.0, validator=_non_negative_seconds, kw_only=True)
    timeout: float = attrs.field(default=5.0, validator=_positive_finite, kw_only=True)
    max_response_body: int = attrs.field(default=64 * 1024, validator=_positive_int, kw_only=True)
    cache_max_entries: int = attrs.field(default=10_000, validator=_positive_int, kw_only=True)
    #: TLS to the auth service (an ``https://`` URL); None for an ``http://`` one.
    tls: UpstreamTLS | None = attrs.field(
        default=None, validator=_validate_auth_tls, kw_only=True
    )

    def __attrs_post_init__(self) -> None:
        if self.tls is None and _auth_url_is_https(self.url):
            # Never plain HTTP to an https:// URL: without tls=, the system's trust store
            # (whether tls= was left out or given as None, as attrs.evolve does).
            object.__setattr__(self, "tls", UpstreamTLS())

    @property
    def endpoint(self) -> Endpoint:
        """Where the auth service listens (the URL's host and port)."""
        host, port, _ = _split_auth_url(self.url)
        return Endpoint(host, port)

    @property
    def target(self) -> str:
        """The request-target asked for: the URL's path and query."""
        return _split_auth_url(self.url)[2]

    @property
    def authority(self) -> str:
        """The ``Host`` the auth service is sent: the URL's host and port."""
        host, port, _ = _split_auth_url(self.url)
        if ":" in host:
            host = f"[{host}]"
        default_port = 443 if self.tls is not None else 80
        return host if port == default_port else f"{host}:{port}"


@attrs.frozen
class Route:
    """``Route("/api/", cluster)``: requests whose path starts with the prefix.

    The longest matching prefix of a virtual host wins.  ``strip_prefix``
    removes the prefix before forwarding (keeping a leading ``/``).
    ``max_body_size`` caps the request body in bytes (413 above it; ``None``
    takes the process default ``--max-body-size``).  ``plain_http`` serves
    the route on the plain HTTP listener instead of redirecting it to https.
    ``cache`` puts an RFC 9111 shared cache in front of the target
    (:class:`Cache`; None, the default, caches nothing).  ``allow`` and
    ``deny`` (networks such as ``"10.0.0.0/8"``) answer 403 to a client
    address ``deny`` holds, or that ``allow``, when given, does not.
    ``rate_limit`` (a :class:`RateLimit`) answers 429 to a client over it.
    ``auth`` (a :class:`ForwardAuth`) asks an auth service before
    forwarding.  ``websocket`` (True by default) lets WebSocket and other
    ``Upgrade`` requests through; False refuses them.
    ``request_buffering`` (True by default) spools a request body before
    forwarding; False streams it to the backend as it arrives (nginx's
    ``proxy_request_buffering off``).
    """

    prefix: str = attrs.field(validator=_validate_prefix)
    target: Cluster | Split = attrs.field(validator=_validate_target)
    strip_prefix: bool = attrs.field(default=False, validator=_validate_bool, kw_only=True)
    max_body_size: int | None = attrs.field(
        default=None, validator=_validate_body_size, kw_only=True
    )
    plain_http: bool = attrs.field(default=False, validator=_validate_bool, kw_only=True)
    cache: Cache | None = attrs.field(
        default=None, validator=_optional(Cache, "Cache"), kw_only=True
    )
    allow: tuple[IPNetwork, ...] = attrs.field(default=(), converter=_to_networks, kw_only=True)
    deny: tuple[IPNetwork, ...] = attrs.field(default=(), converter=_to_networks, kw_only=True)
    rate_limit: RateLimit | None = attrs.field(
        default=None, validator=_optional(RateLimit, "RateLimit"), kw_only=True
    )
    auth: ForwardAuth | None = attrs.field(
        default=None, validator=_optional(ForwardAuth, "ForwardAuth"), kw_only=True
    )
    websocket: bool = attrs.field(default=True, validator=_validate_bool, kw_only=True)
    request_buffering: bool = attrs.field(default=True, validator=_validate_bool, kw_only=True)

    @property
    def clusters(self) -> tuple[Cluster, ...]:
        return self.target.clusters if isinstance(self.target, Split) else (self.target,)


@attrs.frozen
class HSTS:
    """``HSTS(max_age=31536000, include_subdomains=True, preload=False)``: the
    ``Strict-Transport-Security`` header (RFC 6797) on every response of a
    virtual host over TLS (never over plain http, where browsers ignore it).
    ``preload`` asks to be in the browsers' preload lists, whose rules it
    checks: ``include_subdomains`` and a ``max_age`` of a year or more."""

    max_age: int = attrs.field(default=31536000, validator=_non_negative_int)
    include_subdomains: bool = attrs.field(default=True, validator=_validate_bool, kw_only=True)
    preload: bool = attrs.field(default=False, validator=_validate_bool, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if self.preload and not (self.include_subdomains and self.max_age >= 31536000):
            raise ValueError(
                "HSTS preload needs include_subdomains=True and max_age of at least 31536000"
            )

    @property
    def value(self) -> str:
        """The header's value (``max-age=31536000; includeSubDomains``)."""
        parts = [f"max-age={self.max_age}"]
        if self.include_subdomains:
            parts.append("includeSubDomains")
        if self.preload:
            parts.append("preload")
        return "; ".join(parts)


def _to_names(value: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, bytes) or not isinstance(value, Iterable):
        raise TypeError(f"virtual host names must be a list of strings, not {value!r}")
    names = []
    for name in value:
        if not isinstance(name, str):
            raise TypeError(f"virtual host name must be a string, not {name!r}")
        names.append(normalise_pattern(name))
    return tuple(names)


def _validate_names(
    instance: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    if not value:
        raise ValueError("a virtual host needs at least one name")
    seen: set[str] = set()
    for name in value:
        if name in seen:
            raise ValueError(f"virtual host name {name!r} is listed twice")
        seen.add(name)


def _to_routes(value: Iterable[Route]) -> tuple[Route, ...]:
    if isinstance(value, str | bytes | Route) or not isinstance(value, Iterable):
        raise TypeError(f"routes must be a list of Route, not {value!r}")
    return tuple(value)


def _validate_routes(
    instance: object, attribute: attrs.Attribute[tuple[Route, ...]], value: tuple[Route, ...]
) -> None:
    if not value:
        raise ValueError("a virtual host needs at least one route")
    for route in value:
        if not isinstance(route, Route):
            raise TypeError(f"routes must be Route objects, not {route!r}")


@attrs.frozen
class VirtualHost:
    """``VirtualHost(["shop.example", "*.shop.example"], routes=[...])``.

    Names are exact hostnames, one-label wildcards (``*.example.com`` matches
    ``a.example.com`` but neither ``example.com`` nor ``a.b.example.com``) or
    IP literals.  They are normalised (lower case, IDNA, no trailing dot).
    ``hide_backend`` (the default) drops the upstream's ``Server`` and
    ``X-Powered-By`` and rewrites a ``Location``, ``Content-Location`` or
    ``Refresh`` that names an endpoint's address to the host the client used.
    ``hsts`` (an :class:`HSTS`) sends ``Strict-Transport-Security`` over TLS.
    ``allow`` and ``deny`` are as on :class:`Route`, for every route of it.
    ``min_tls_version`` (``"1.2"`` or ``"1.3"``; None: the listener's
    ``--tls-profile``) fails the handshake of a client below it that names
    this host in SNI.  ``client_ca`` (a PEM file of CA certificates, relative
    to the configuration file's directory) requires a client certificate
    verified against it; ``client_subject_header`` (with ``client_ca`` only)
    passes the verified subject upstream in that header, after removing any
    such header the client sent.
    """

    names: tuple[str, ...] = attrs.field(converter=_to_names, validator=_validate_names)
    routes: tuple[Route, ...] = attrs.field(
        converter=_to_routes, validator=_validate_routes, kw_only=True
    )
    hide_backend: bool = attrs.field(default=True, validator=_validate_bool, kw_only=True)
    hsts: HSTS | None = attrs.field(default=None, validator=_optional(HSTS, "HSTS"), kw_only=True)
    allow: tuple[IPNetwork, ...] = attrs.field(default=(), converter=_to_networks, kw_only=True)
    deny: tuple[IPNetwork, ...] = attrs.field(default=(), converter=_to_networks, kw_only=True)
    min_tls_version: str | None = attrs.field(
        default=None, validator=_validate_tls_version, kw_only=True
    )
    client_ca: str | None = attrs.field(default=None, validator=_validate_path, kw_only=True)
    client_subject_header: str | None = attrs.field(
        default=None, validator=_validate_header_name, kw_only=True
    )

    def __attrs_post_init__(self) -> None:
        if self.client_subject_header is not None and self.client_ca is None:
            raise ValueError(
                "client_subject_header needs client_ca: only a verified client "
                "certificate's subject is passed upstream"
            )
        if self.client_ca is not None:
            plain = [route.prefix for route in self.routes if route.plain_http]
            if plain:
                raise ValueError(
                    f"route {plain[0]!r} has plain_http=True, but client_ca requires a "
                    "client certificate, which plain http cannot carry"
                )
