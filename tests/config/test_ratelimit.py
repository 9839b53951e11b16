"""``RateLimit``: valid by construction, every bad argument named; a bad one
in a site file is a load error with its file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeproxy.config import Cluster, RateLimit, Route
from edgeproxy.config.load import load_config
from edgeproxy.core.errors import ConfigError

WEB = Cluster("web", endpoints=["10.0.0.1:80"])


def test_the_contract_as_written() -> None:
    limit = RateLimit(rate=10.0, burst=20, key="client_ip")
    assert (limit.rate, limit.burst, limit.key, limit.on_store_error) == (
        10.0,
        20,
        "client_ip",
        "open",
    )
    assert limit.header is None
    assert Route("/api/", WEB, rate_limit=limit).rate_limit is limit
    assert Route("/", WEB).rate_limit is None


def test_defaults_a_burst_of_one_second_and_header_keys() -> None:
    assert RateLimit(2.5).burst == 3
    assert RateLimit(0.01).burst == 1
    keyed = RateLimit(1, key="header:X-Api-Key", on_store_error="closed")
    assert (keyed.header, keyed.on_store_error) == (b"x-api-key", "closed")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"rate": 0}, ValueError, "rate must be a positive number"),
        ({"rate": -1.0}, ValueError, "rate must be a positive number"),
        ({"rate": float("nan")}, ValueError, "rate must be a positive number"),
        ({"rate": float("inf")}, ValueError, "rate must be a positive number"),
        ({"rate": "10"}, TypeError, "rate must be a number"),
        ({"rate": True}, TypeError, "rate must be a number"),
        ({"rate": 1, "burst": 0}, ValueError, "burst must be at least 1"),
        ({"rate": 1, "burst": 2.0}, TypeError, "burst must be an int"),
        ({"rate": 1, "key": "ip"}, ValueError, "'client_ip' or 'header:NAME'"),
        ({"rate": 1, "key": "header:"}, ValueError, "'client_ip' or 'header:NAME'"),
        ({"rate": 1, "key": "header:X Api"}, ValueError, "'client_ip' or 'header:NAME'"),
        ({"rate": 1, "key": 5}, TypeError, "rate limit key must be a string"),
        ({"rate": 1, "on_store_error": "fail"}, ValueError, "'open' or 'closed'"),
    ],
)
def test_bad_arguments_are_named(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        RateLimit(**kwargs)  # type: ignore[arg-type]


def test_a_route_takes_only_a_rate_limit() -> None:
    with pytest.raises(TypeError, match="rate_limit must be a RateLimit or None"):
        Route("/", WEB, rate_limit={"rate": 1})  # type: ignore[arg-type]


def test_a_bad_rate_limit_in_a_site_file_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "site.py"
    path.write_text(
        "from edgeproxy.config import Cluster, RateLimit, Route, VirtualHost\n"
        "web = Cluster('web', endpoints=['10.0.0.1:80'])\n"
        "virtual_hosts = [VirtualHost(['a.example'], routes=[\n"
        "    Route('/', web, rate_limit=RateLimit(rate=10, burst=0)),\n"
        "])]\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    [problem] = caught.value.problems
    assert problem.path == str(path) and problem.line == 4
    assert "burst must be at least 1" in problem.message
