"""The configuration vocabulary is valid by construction (edgeproxy.config)."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from edgeproxy.config import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_RESPONSE_TIMEOUT,
    Cache,
    Cluster,
    Endpoint,
    OutlierDetection,
    Route,
    Split,
    VirtualHost,
)

A = Cluster("a", endpoints=["127.0.0.1:9001"])
B = Cluster("b", endpoints=["127.0.0.1:9002"])


# Endpoint -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:80", "127.0.0.1", 80),
        ("backend.internal:8080", "backend.internal", 8080),
        ("localhost:65535", "localhost", 65535),
        ("[::1]:80", "::1", 80),
        ("[2001:db8::1]:8443", "2001:db8::1", 8443),
    ],
)
def test_endpoint_parse(text: str, host: str, port: int) -> None:
    endpoint = Endpoint.parse(text)
    assert endpoint == Endpoint(host, port)
    assert endpoint.weight == 1
    assert str(endpoint) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("127.0.0.1", "is not 'host:port'"),
        (":80", "is not 'host:port'"),
        ("::1:80", "write IPv6 addresses as '[addr]:port'"),
        ("[::1]", "is not '[ipv6]:port'"),
        ("[::1", "is not '[ipv6]:port'"),
        ("[::1]80", "is not '[ipv6]:port'"),
        ("[example.com]:80", "is not an IPv6 address"),
        ("[::1]:", "is not a number"),
        ("host:http", "is not a number"),
        ("host:-1", "is not a number"),
        ("host:\uff18\uff10", "is not a number"),
        ("host:0", "port must be in 1..65535"),
        ("host:65536", "port must be in 1..65535"),
        ("ho st:80", "endpoint host must be a hostname or IP address"),
        ("http://host:80", "without a scheme"),
        ("a/b:80", "endpoint host must be a hostname or IP address"),
    ],
)
def test_endpoint_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        Endpoint.parse(text)
    assert message in str(caught.value)


def test_endpoint_parse_type() -> None:
    with pytest.raises(TypeError, match="endpoint must be 'host:port'"):
        Endpoint.parse(80)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        (("", 80), {}, ValueError, "endpoint host"),
        (("[::1]", 80), {}, ValueError, "IPv6 without brackets"),
        (("a:b", 80), {}, ValueError, "endpoint host"),
        ((b"host", 80), {}, TypeError, "endpoint host must be a string"),
        (("host", "80"), {}, TypeError, "endpoint port must be an int"),
        (("host", True), {}, TypeError, "endpoint port must be an int"),
        (("host", 0), {}, ValueError, "1..65535"),
        (("host", 80), {"weight": 0}, ValueError, "weight must be at least 1"),
        (("host", 80), {"weight": 1.5}, TypeError, "weight must be an int"),
        (("host", 80), {"weight": True}, TypeError, "weight must be an int"),
    ],
)
def test_endpoint_validation(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as caught:
        Endpoint(*args, **kwargs)
    assert message in str(caught.value)


def test_endpoint_ipv6_without_brackets() -> None:
    assert str(Endpoint("::1", 80, weight=3)) == "[::1]:80"


def test_frozen() -> None:
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        A.name = "other"  # type: ignore[misc]


# Cluster --------------------------------------------------------------------


def test_cluster_defaults_and_conversion() -> None:
    cluster = Cluster("api", endpoints=["127.0.0.1:9001", Endpoint("127.0.0.1", 9002, weight=2)])
    assert cluster.endpoints == (Endpoint("127.0.0.1", 9001), Endpoint("127.0.0.1", 9002, weight=2))
    assert cluster.connect_timeout == DEFAULT_CONNECT_TIMEOUT == 5.0
    assert cluster.response_timeout == DEFAULT_RESPONSE_TIMEOUT == 30.0
    assert Cluster("api", endpoints=("h:1",), connect_timeout=1, response_timeout=0.5)
    same = Cluster("api", endpoints=["127.0.0.1:9001", Endpoint("127.0.0.1", 9002, weight=2)])
    assert same == cluster
    assert hash(same) == hash(cluster)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"name": ""}, TypeError, "name must be a non-empty string"),
        ({"name": 3}, TypeError, "name must be a non-empty string"),
        ({"endpoints": []}, ValueError, "a cluster needs at least one endpoint"),
        ({"endpoints": "127.0.0.1:80"}, TypeError, "endpoints must be a list"),
        ({"endpoints": None}, TypeError, "endpoints must be a list"),
        ({"endpoints": [80]}, TypeError, "endpoint must be 'host:port'"),
        ({"endpoints": ["[::1]:80", "[::1]:80"]}, ValueError, "endpoint [::1]:80 is listed twice"),
        ({"endpoints": ["h:80", "H:80"]}, ValueError, "is listed twice"),
        ({"endpoints": ["[::1]:80", "[0::1]:80"]}, ValueError, "is listed twice"),
        (
            {"endpoints": ["h:80", Endpoint("h", 80, weight=2)]},
            ValueError,
            "endpoint h:80 is listed twice",
        ),
        ({"connect_timeout": 0}, ValueError, "connect_timeout must be a positive number"),
        ({"connect_timeout": -1}, ValueError, "connect_timeout must be a positive number"),
        ({"connect_timeout": float("inf")}, ValueError, "connect_timeout"),
        ({"connect_timeout": float("nan")}, ValueError, "connect_timeout"),
        ({"connect_timeout": "5"}, TypeError, "connect_timeout must be a number of seconds"),
        ({"response_timeout": True}, TypeError, "response_timeout must be a number of seconds"),
        ({"response_timeout": 0.0}, ValueError, "response_timeout"),
    ],
)
def test_cluster_validation(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    arguments: dict[str, Any] = {"name": "c", "endpoints": ["127.0.0.1:80"], **kwargs}
    name = arguments.pop("name")
    with pytest.raises(error) as caught:
        Cluster(name, **arguments)
    assert message in str(caught.value)


def test_every_cluster_has_outlier_detection_unless_it_opts_out() -> None:
    cluster = Cluster("api", endpoints=["127.0.0.1:9001"])
    assert cluster.outlier_detection == OutlierDetection()
    # The documented numbers (docs/resilience.md): Envoy's consecutive-5xx defaults.
    assert OutlierDetection() == OutlierDetection(
        5,
        base_ejection_time=30.0,
        max_ejection_time=300.0,
        max_ejection_percent=50.0,
        failure_statuses=range(500, 600),
        sole_endpoint_answers=False,
    )
    assert Cluster("api", endpoints=["h:1"], outlier_detection=None).outlier_detection is None


def test_outlier_detection_validation() -> None:
    with pytest.raises(TypeError, match="sole_endpoint_answers must be True or False"):
        OutlierDetection(sole_endpoint_answers=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="outlier_detection must be a OutlierDetection or None"):
        Cluster("api", endpoints=["h:1"], outlier_detection=5)


def test_cluster_endpoints_keyword_only() -> None:
    with pytest.raises(TypeError):
        Cluster("c", ["127.0.0.1:80"])  # type: ignore[misc]


# Split ----------------------------------------------------------------------


def test_split() -> None:
    split = Split({A: 90, B: 10})
    assert split.weights == ((A, 90), (B, 10))
    assert split.clusters == (A, B)
    assert Split({A: 1, B: 0}).weights == ((A, 1), (B, 0))  # zero allowed
    assert Split({A: 0.5, B: 1.5}).clusters == (A, B)


@pytest.mark.parametrize(
    ("weights", "error", "message"),
    [
        ({}, ValueError, "a Split needs at least one cluster"),
        ([(A, 1)], TypeError, "Split takes a dict"),
        ({"a": 1}, TypeError, "Split keys must be Clusters"),
        ({A: "1"}, TypeError, "Split weight for 'a' must be a number"),
        ({A: True}, TypeError, "Split weight for 'a' must be a number"),
        ({A: -1, B: 2}, ValueError, "Split weight for 'a' must be a finite number >= 0"),
        ({A: float("inf")}, ValueError, "Split weight for 'a'"),
        ({A: float("nan")}, ValueError, "Split weight for 'a'"),
        ({A: 0, B: 0}, ValueError, "all weights are zero"),
        (
            {A: 1, Cluster("a", endpoints=["h:1"]): 1},
            ValueError,
            "cluster 'a' appears twice in one Split",
        ),
    ],
)
def test_split_validation(weights: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as caught:
        Split(weights)
    assert message in str(caught.value)


# Route ----------------------------------------------------------------------


def test_route_defaults() -> None:
    route = Route("/api/", A)
    assert route.strip_prefix is False
    assert route.max_body_size is None
    assert route.plain_http is False
    assert route.clusters == (A,)
    assert Route("/", Split({A: 1, B: 1})).clusters == (A, B)
    assert Route("/x", A, strip_prefix=True, max_body_size=0, plain_http=True).max_body_size == 0
    assert Route("/café/", A).prefix == "/café/"


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        ((b"/", A), {}, TypeError, "route prefix must be a string"),
        (("api/", A), {}, ValueError, "route prefix must start with '/'"),
        (("", A), {}, ValueError, "route prefix must start with '/'"),
        (("/a?b", A), {}, ValueError, "route prefix must be a plain path"),
        (("/a#b", A), {}, ValueError, "route prefix must be a plain path"),
        (("/a b", A), {}, ValueError, "route prefix must be a plain path"),
        (("/a\tb", A), {}, ValueError, "route prefix must be a plain path"),
        (("/a\x00", A), {}, ValueError, "route prefix must be a plain path"),
        (("/a\x7f", A), {}, ValueError, "route prefix must be a plain path"),
        (("/", "a"), {}, TypeError, "route target must be a Cluster or a Split"),
        (("/", [A]), {}, TypeError, "route target must be a Cluster or a Split"),
        (("/", A), {"strip_prefix": 1}, TypeError, "strip_prefix must be True or False"),
        (("/", A), {"plain_http": "yes"}, TypeError, "plain_http must be True or False"),
        (("/", A), {"max_body_size": -1}, ValueError, "max_body_size must not be negative"),
        (("/", A), {"max_body_size": 1.5}, TypeError, "max_body_size must be a number of bytes"),
        (("/", A), {"max_body_size": True}, TypeError, "max_body_size must be a number of bytes"),
    ],
)
def test_route_validation(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as caught:
        Route(*args, **kwargs)
    assert message in str(caught.value)


# VirtualHost ----------------------------------------------------------------


def test_virtual_host() -> None:
    vhost = VirtualHost(["Shop.Example.", "*.shop.example", "[::1]"], routes=[Route("/", A)])
    assert vhost.names == ("shop.example", "*.shop.example", "::1")
    assert vhost.routes == (Route("/", A),)
    assert VirtualHost("shop.example", routes=(Route("/", A),)).names == ("shop.example",)


@pytest.mark.parametrize(
    ("names", "routes", "error", "message"),
    [
        ([], [Route("/", A)], ValueError, "a virtual host needs at least one name"),
        (None, [Route("/", A)], TypeError, "virtual host names must be a list of strings"),
        (b"x.example", [Route("/", A)], TypeError, "virtual host names must be a list"),
        ([b"x.example"], [Route("/", A)], TypeError, "virtual host name must be a string"),
        (["bad name"], [Route("/", A)], ValueError, "invalid hostname 'bad name'"),
        (["a.*.example"], [Route("/", A)], ValueError, "only a whole leading label"),
        (["a.example", "A.example."], [Route("/", A)], ValueError, "'a.example' is listed twice"),
        (["a.example"], [], ValueError, "a virtual host needs at least one route"),
        (["a.example"], None, TypeError, "routes must be a list of Route"),
        (["a.example"], Route("/", A), TypeError, "routes must be a list of Route"),
        (["a.example"], [A], TypeError, "routes must be Route objects"),
    ],
)
def test_virtual_host_validation(
    names: Any, routes: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as caught:
        VirtualHost(names, routes=routes)
    assert message in str(caught.value)


def test_cache_defaults() -> None:
    cache = Cache()
    assert (cache.max_bytes, cache.max_object_bytes, cache.store) == (256 * 2**20, 8 * 2**20, "memory")
    assert (cache.collapse_timeout, cache.collapse_max_waiters, cache.heuristic_max) == (
        5.0,
        1024,
        86400.0,
    )
    assert cache.disk_directory is None
    assert Cache(store="disk:/var/cache/e").disk_directory == "/var/cache/e"
    # A store smaller than the default object bound bounds its objects too.
    assert Cache(max_bytes=2**20).max_object_bytes == 2**20
    assert Route("/s/", A).cache is None
    assert Route("/s/", A, cache=cache).cache is cache


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_bytes": 0}, ValueError, "max_bytes must be at least 1"),
        ({"max_bytes": 1.5}, TypeError, "max_bytes must be an int"),
        ({"max_object_bytes": 2**30}, ValueError, "must not be more than max_bytes"),
        ({"store": "redis"}, ValueError, "cache store must be 'memory' or 'disk:<directory>'"),
        ({"store": "disk:relative"}, ValueError, "a disk cache store needs an absolute directory"),
        ({"store": 1}, TypeError, "cache store must be a string"),
        ({"collapse_timeout": 0}, ValueError, "collapse_timeout must be a positive number"),
        ({"collapse_max_waiters": -1}, ValueError, "collapse_max_waiters must not be negative"),
        ({"heuristic_max": float("inf")}, ValueError, "heuristic_max must be a positive number"),
    ],
)
def test_cache_validation(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error) as caught:
        Cache(**kwargs)
    assert message in str(caught.value)


def test_route_cache_must_be_a_cache() -> None:
    with pytest.raises(TypeError, match="cache must be a Cache or None"):
        Route("/", A, cache={"max_bytes": 1})  # type: ignore[arg-type]
