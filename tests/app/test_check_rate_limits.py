"""``--check`` lists each rate-limited route: its limit, key and store."""

from __future__ import annotations

import pytest
from twisted.python import usage

from edgeproxy.app.checks import describe_rate_limits
from edgeproxy.app.options import Options
from edgeproxy.config import Cluster, RateLimit, Route, VirtualHost
from edgeproxy.config.settings import Settings
from tests.memproxy import make_config

WEB = Cluster("web", endpoints=["10.0.0.1:80"])
CONFIG = make_config(
    VirtualHost(
        ["shop.example", "*.shop.example"],
        routes=[
            Route("/", WEB),
            Route("/api/", WEB, rate_limit=RateLimit(rate=2.5, key="header:X-Api-Key")),
        ],
    )
)


def test_each_rate_limited_route_is_listed_with_its_store() -> None:
    assert describe_rate_limits(CONFIG, Settings()) == [
        "rate limit: shop.example/api/ -> 2.5/s, burst 3, key header:X-Api-Key, "
        "on_store_error open, store memory"
    ]
    [line] = describe_rate_limits(CONFIG, Settings(workers=4))
    assert line.endswith("store memory, each of the 4 workers its own")
    redis = Settings(rate_limit_store="redis://:secret@10.0.0.7:6379/2")
    [line] = describe_rate_limits(CONFIG, redis)
    assert line.endswith("store redis://10.0.0.7:6379/2")  # no password


def test_the_options_take_memory_or_a_redis_url() -> None:
    assert Options().parseOptions([]) is None
    options = Options()
    options.parseOptions(["--rate-limit-store", "redis://127.0.0.1:6390/1"])
    assert options["settings"].rate_limit_store == "redis://127.0.0.1:6390/1"
    assert options["settings"].rate_limit_max_keys == 100_000
    default = Options()
    default.parseOptions(["--rate-limit-max-keys", "500"])
    assert (default["settings"].rate_limit_store, default["settings"].rate_limit_max_keys) == (
        "memory",
        500,
    )
    for bad in (["--rate-limit-store", "redis:/x"], ["--rate-limit-max-keys", "0"]):
        with pytest.raises(usage.UsageError):
            Options().parseOptions(bad)
