"""``ForwardAuth``: valid by construction, every bad argument named; an
``https://`` URL verified as upstream TLS is (``tls=``, or the system store
without it), ``tls=`` with an ``http://`` URL refused; its TLS files read and
resolved as a cluster's, a bad one a load error with its file and line."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import trustme

from edgeproxy.app.checks import check_upstream_tls
from edgeproxy.config import Cluster, Endpoint, ForwardAuth, Route, UpstreamTLS
from edgeproxy.config.load import inspect_config, load_config
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
        ({"url": "ftp://auth.internal/"}, ValueError, "must start with http://"),
        ({"url": "http://a/", "tls": UpstreamTLS()}, ValueError, "tls= needs an https:// URL"),
        ({"url": "https://a/", "tls": "ca.pem"}, TypeError, "tls must be a UpstreamTLS"),
        ({"url": "https://u:p@a/"}, ValueError, r"https://HOST\[:PORT\]/PATH"),
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


@pytest.mark.parametrize(
    ("url", "endpoint", "target", "authority"),
    [
        ("https://auth.internal/check", Endpoint("auth.internal", 443), "/check", "auth.internal"),
        ("HTTPS://auth.internal:9443/c?x", Endpoint("auth.internal", 9443), "/c?x", "auth.internal:9443"),
        ("https://[::1]:443/", Endpoint("::1", 443), "/", "[::1]"),
        ("https://10.0.0.5:80/", Endpoint("10.0.0.5", 80), "/", "10.0.0.5:80"),
    ],
)
def test_an_https_url_without_tls_is_verified_against_the_system_store(
    url: str, endpoint: Endpoint, target: str, authority: str
) -> None:
    auth = ForwardAuth(url)
    assert auth.tls == UpstreamTLS()
    assert (auth.endpoint, auth.target, auth.authority) == (endpoint, target, authority)


def test_an_https_url_takes_tls_and_an_http_one_has_none() -> None:
    tls = UpstreamTLS(ca_file="auth-ca.pem", server_name="auth.test")
    auth = ForwardAuth("https://auth.internal:9443/check", tls=tls)
    assert auth.tls is tls
    assert ForwardAuth("http://auth.internal/check").tls is None
    # Never plain to an https:// URL, however tls= comes to be None.
    assert ForwardAuth("https://auth.internal/", tls=None).tls == UpstreamTLS()
    assert attrs.evolve(ForwardAuth("http://a/"), url="https://a/").tls == UpstreamTLS()
    with pytest.raises(ValueError, match="needs an https:// URL"):
        attrs.evolve(auth, url="http://auth.internal/check")


SITE = """\
from edgeproxy.config import Cluster, ForwardAuth, Route, UpstreamTLS, VirtualHost
web = Cluster('web', endpoints=['10.0.0.1:80'])
auth = ForwardAuth(
    'https://auth.internal:9443/check',
    tls=UpstreamTLS(ca_file={ca!r}),
)
virtual_hosts = [VirtualHost(['a.example'], routes=[
    Route('/', web, auth=auth),
    Route('/b/', web, auth=auth),
    Route('/public/', web, auth=ForwardAuth('https://login.example/check')),
])]
"""


def test_relative_tls_files_are_read_from_the_config_directory(tmp_path: Path) -> None:
    ca = trustme.CA()
    (tmp_path / "sites" / "pki").mkdir(parents=True)
    ca.cert_pem.write_to_path(str(tmp_path / "sites" / "pki" / "auth-ca.pem"))
    path = tmp_path / "sites" / "site.py"
    path.write_text(SITE.format(ca="pki/auth-ca.pem"))
    config = load_config(str(path))
    [vhost] = config.virtual_hosts
    first, second, public = (config.auth_tls[id(route)] for route in vhost.routes)
    assert first.settings.ca_file == str(tmp_path / "sites" / "pki" / "auth-ca.pem")
    assert first.ca_pem == ca.cert_pem.bytes()
    assert second == first
    assert public.settings == UpstreamTLS() and public.ca_pem is None
    # The configuration keeps what the user wrote.
    assert vhost.routes[0].auth is not None
    assert vhost.routes[0].auth.tls == UpstreamTLS(ca_file="pki/auth-ca.pem")


def test_a_tls_file_that_cannot_be_used_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "site.py"
    path.write_text(SITE.format(ca="missing-ca.pem"))
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    # Once, though two routes share it.
    [problem] = caught.value.problems
    assert problem.path == str(path) and problem.line == 5
    assert problem.message.startswith("ForwardAuth 'https://auth.internal:9443/check': ")
    assert f"ca_file {tmp_path / 'missing-ca.pem'}: cannot read" in problem.message
    (tmp_path / "bad.pem").write_text("not a certificate\n")
    path.write_text(SITE.format(ca="bad.pem"))
    _, problems = inspect_config(str(path))
    assert [(p.line, p.message.split(": ", 1)[1]) for p in problems] == [
        (5, f"upstream_tls ca_file {tmp_path / 'bad.pem'}: no PEM certificate found")
    ]


def test_tls_with_an_http_url_in_a_site_file_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "site.py"
    path.write_text(
        "from edgeproxy.config import Cluster, ForwardAuth, Route, UpstreamTLS, VirtualHost\n"
        "web = Cluster('web', endpoints=['10.0.0.1:80'])\n"
        "virtual_hosts = [VirtualHost(['a.example'], routes=[\n"
        "    Route('/', web, auth=ForwardAuth('http://auth.internal/check', tls=UpstreamTLS())),\n"
        "])]\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    [problem] = caught.value.problems
    assert problem.path == str(path) and problem.line == 4
    assert "tls= needs an https:// URL" in problem.message


def test_check_warns_about_an_unverified_auth_service(tmp_path: Path) -> None:
    path = tmp_path / "site.py"
    path.write_text(
        "from edgeproxy.config import Cluster, ForwardAuth, Route, UpstreamTLS, VirtualHost\n"
        "web = Cluster('web', endpoints=['10.0.0.1:80'])\n"
        "virtual_hosts = [VirtualHost(['a.example'], routes=[\n"
        "    Route('/', web, auth=ForwardAuth('https://auth.internal/check')),\n"
        "    Route('/x/', web, auth=ForwardAuth(\n"
        "        'https://auth.internal/x', tls=UpstreamTLS(verify=False))),\n"
        "])]\n"
    )
    report = check_upstream_tls(load_config(str(path)))
    [warning] = report.warnings
    assert (warning.path, warning.line) == (str(path), 6)
    assert warning.message.startswith("route a.example/x/: ForwardAuth tls verify=False")
