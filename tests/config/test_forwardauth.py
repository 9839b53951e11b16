"""``ForwardAuth``: valid by construction, every bad argument named; an
``https://`` URL refused with the reason; a bad one in a site file is a load
error with its file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeproxy.config import Cluster, Endpoint, ForwardAuth, Route
from edgeproxy.config.load import load_config
from edgeproxy.core.errors import ConfigError

WEB = Cluster("web", endpoints=["10.0.0.1:80"])


def test_the_contract_as_written() -> None:
    auth = ForwardAuth(
        "http://127.0.0.1:9400/check",
        request_headers=["Authorization", "Cookie"],
        response_headers=["X-User"],
        cache_for=0.0,
    )
    assert (auth.request_headers, auth.response_headers, auth.cache_for) == (
        ("Authorization", "Cookie"),
        ("X-User",),
        0.0,
    )
    assert (auth.timeout, auth.max_response_body, auth.cache_max_entries) == (5.0, 65536, 10000)
    assert (auth.endpoint, auth.target, auth.authority) == (
        Endpoint("127.0.0.1", 9400),
        "/check",
        "127.0.0.1:9400",
    )
    assert Route("/app/", WEB, auth=auth).auth is auth
    assert Route("/", WEB).auth is None


@pytest.mark.parametrize(
    ("url", "endpoint", "target", "authority"),
    [
        ("http://auth.internal/", Endpoint("auth.internal", 80), "/", "auth.internal"),
        ("http://auth.internal", Endpoint("auth.internal", 80), "/", "auth.internal"),
        ("http://10.0.0.5:81/v1/check?x=1&y", Endpoint("10.0.0.5", 81), "/v1/check?x=1&y", "10.0.0.5:81"),
        ("http://[::1]:9400/c", Endpoint("::1", 9400), "/c", "[::1]:9400"),
    ],
)
def test_the_url_gives_where_and_what(
    url: str, endpoint: Endpoint, target: str, authority: str
) -> None:
    auth = ForwardAuth(url)
    assert (auth.endpoint, auth.target, auth.authority) == (endpoint, target, authority)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"url": "https://auth.internal/check"}, ValueError, "comes with upstream TLS"),
        ({"url": "ftp://auth.internal/"}, ValueError, "must start with http://"),
        ({"url": "auth.internal/check"}, ValueError, "must start with http://"),
        ({"url": "http:///check"}, ValueError, r"http://HOST\[:PORT\]/PATH"),
        ({"url": "http://u:p@auth/check"}, ValueError, r"http://HOST\[:PORT\]/PATH"),
        ({"url": "http://auth/check#x"}, ValueError, r"http://HOST\[:PORT\]/PATH"),
        ({"url": "http://auth:99999/"}, ValueError, "is not a URL"),
        ({"url": "http://a b/"}, ValueError, "without spaces or control characters"),
        ({"url": "http://a/\x01"}, ValueError, "without spaces or control characters"),
        ({"url": "http://a/caf\u00e9"}, ValueError, "ASCII"),
        ({"url": "http://a_b!/"}, ValueError, "not a hostname"),
        ({"url": 5}, TypeError, "must be a string"),
        ({"url": "http://a/", "request_headers": "Cookie"}, TypeError, "list of names"),
        ({"url": "http://a/", "response_headers": ["X User"]}, ValueError, "must be a header name"),
        ({"url": "http://a/", "response_headers": ["Host"]}, ValueError, "edgeproxy writes"),
        ({"url": "http://a/", "response_headers": ["X-Forwarded-For"]}, ValueError, "edgeproxy writes"),
        ({"url": "http://a/", "request_headers": ["X-Forwarded-Uri"]}, ValueError, "edgeproxy writes"),
        ({"url": "http://a/", "request_headers": ["x-forwarded-method"]}, ValueError, "edgeproxy writes"),
        ({"url": "http://a/", "request_headers": ["Connection"]}, ValueError, "edgeproxy writes"),
        ({"url": "http://a/", "response_headers": ["X-User", "x-user"]}, ValueError, "twice"),
        ({"url": "http://a/", "cache_for": -1}, ValueError, "0 or a positive number"),
        ({"url": "http://a/", "cache_for": float("inf")}, ValueError, "0 or a positive number"),
        ({"url": "http://a/", "cache_for": "10"}, TypeError, "number of seconds"),
        ({"url": "http://a/", "timeout": 0}, ValueError, "positive number of seconds"),
        ({"url": "http://a/", "max_response_body": 0}, ValueError, "at least 1"),
        ({"url": "http://a/", "cache_max_entries": 1.5}, TypeError, "must be an int"),
    ],
)
def test_bad_arguments_are_named(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    url = kwargs.pop("url")
    with pytest.raises(error, match=message):
        ForwardAuth(url, **kwargs)  # type: ignore[arg-type]


def test_a_route_takes_only_a_forward_auth() -> None:
    with pytest.raises(TypeError, match="auth must be a ForwardAuth or None"):
        Route("/", WEB, auth="http://a/")  # type: ignore[arg-type]


def test_an_https_auth_url_in_a_site_file_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "site.py"
    path.write_text(
        "from edgeproxy.config import Cluster, ForwardAuth, Route, VirtualHost\n"
        "web = Cluster('web', endpoints=['10.0.0.1:80'])\n"
        "virtual_hosts = [VirtualHost(['a.example'], routes=[\n"
        "    Route('/', web, auth=ForwardAuth('https://auth.internal/check')),\n"
        "])]\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    [problem] = caught.value.problems
    assert problem.path == str(path) and problem.line == 4
    assert "upstream TLS" in problem.message
