"""Semantic checks for ``--check`` (edgeproxy.app.checks) and what configload collects for them."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import trustme

from edgeproxy.app.checks import (
    CheckReport,
    check_certificate_coverage,
    check_certificate_validity,
    check_default_certificate,
    check_endpoints,
    check_expectations,
    check_shadowed_routes,
    check_unused_clusters,
    count_problems,
    format_report,
    run_semantic_check,
)
from edgeproxy.config import Cluster, Endpoint, Route, VirtualHost
from edgeproxy.config.load import ClusterDefinition, Expectation, LoadedConfig, load_config
from edgeproxy.config.routing import RoutingTable
from edgeproxy.core.errors import ConfigError, ConfigProblem
from edgeproxy.tls.certificates import CertificateIndex
from edgeproxy.tls.certwatch import check_directory
from tests.certutil import days, make_ca, utc, write_cert

NOW = utc(2030, 6, 1)

HEADER = "from edgeproxy.config import Cluster, Endpoint, Route, Split, VirtualHost\n"

SHOP = (
    HEADER
    + """\
api = Cluster("api", endpoints=["127.0.0.1:9001"])
web_v1 = Cluster("web-v1", endpoints=["127.0.0.1:9101"])
web_v2 = Cluster("web-v2", endpoints=["127.0.0.1:9102"])
dark = Cluster("dark", endpoints=["127.0.0.1:9103"])
health = Cluster("health", endpoints=["127.0.0.1:9104"])

virtual_hosts = [
    VirtualHost(
        ["shop.example", "*.shop.example"],
        routes=[
            Route("/api/", api),
            Route("/", Split({web_v1: 90, web_v2: 10, dark: 0})),
            Route("/healthz", health, plain_http=True),
        ],
    ),
]
"""
)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return make_ca()


def write(directory: Path, name: str, source: str) -> str:
    path = directory / name
    path.write_text(textwrap.dedent(source))
    return str(path)


def load(tmp_path: Path, source: str, name: str = "site.py") -> tuple[LoadedConfig, str]:
    path = write(tmp_path, name, source)
    return load_config(path), path


def index_of(directory: Path) -> CertificateIndex:
    result = check_directory(str(directory), NOW)
    assert result.problems == ()
    return result.index


def messages(problems: tuple[ConfigProblem, ...]) -> list[str]:
    return [p.message for p in problems]


def line_of(path: str, text: str) -> int:
    """The 1-based line of ``path`` holding ``text`` (exactly one)."""
    found = [i for i, line in enumerate(Path(path).read_text().splitlines(), 1) if text in line]
    assert len(found) == 1, (text, found)
    return found[0]


# --- configload: expectations ---------------------------------------------------


def test_expectations_are_collected_with_the_line_of_each_tuple(tmp_path: Path) -> None:
    source = SHOP + (
        "expectations = [\n"
        '    ("https://shop.example/api/x", "api"),\n'
        "    (\n"
        '        "http://shop.example/",\n'
        '        "redirect",\n'
        "    ),\n"
        "]\n"
    )
    config, path = load(tmp_path, source)
    assert config.expectations == (
        Expectation("https://shop.example/api/x", "api", path, line_of(path, "/api/x")),
        Expectation("http://shop.example/", "redirect", path, line_of(path, "/api/x") + 1),
    )


def test_expectations_built_in_code_point_at_the_url(tmp_path: Path) -> None:
    source = SHOP + (
        "expectations = []\n"
        "for p in ['/a', '/b']:\n"
        "    expectations.append(('https://shop.example' + p, 'web-v1'))\n"
        "expectations += [('https://shop.example/api/', 'api')]\n"
    )
    config, path = load(tmp_path, source)
    lines = [e.line for e in config.expectations]
    assert [e.url for e in config.expectations] == [
        "https://shop.example/a",
        "https://shop.example/b",
        "https://shop.example/api/",
    ]
    # Computed URLs: the statement that last bound the name; a literal URL: its line.
    assert lines == [
        line_of(path, "expectations += "),
        line_of(path, "expectations += "),
        line_of(path, "expectations += "),
    ]


def test_no_expectations_is_fine(tmp_path: Path) -> None:
    config, _ = load(tmp_path, SHOP)
    assert config.expectations == ()


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("'https://shop.example/'", "expectations must be a list of (url, cluster name) tuples"),
        ("[('https://shop.example/',)]", "expectations[0] must be a (url, cluster name) tuple"),
        ("[('https://shop.example/', 'api', 'x')]", "expectations[0] must be"),
        ("[('https://shop.example/', 'api'), ('https://shop.example/', 7)]", "expectations[1]"),
        ("[('', 'api')]", "expectations[0] must be"),
    ],
)
def test_badly_shaped_expectations_are_load_errors(
    tmp_path: Path, value: str, fragment: str
) -> None:
    path = write(tmp_path, "site.py", SHOP + f"expectations = {value}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (problem,) = caught.value.problems
    assert problem.path == path
    assert fragment in problem.message
    assert problem.line == line_of(path, "expectations =")


# --- configload: module-level clusters -------------------------------------------


def test_module_level_clusters_are_collected(tmp_path: Path) -> None:
    source = HEADER + (
        "used = Cluster('used', endpoints=['127.0.0.1:1'])\n"
        "spare = Cluster('spare', endpoints=['127.0.0.1:2'])\n"
        "pool = [\n"
        "    Cluster('pool-a', endpoints=['127.0.0.1:3']),\n"
        "    Cluster('pool-b', endpoints=['127.0.0.1:4']),\n"
        "]\n"
        "by_env = {'prod': Cluster('prod', endpoints=['127.0.0.1:5'])}\n"
        "also_used = used\n"
        "def helper():\n"
        "    return Cluster('inner', endpoints=['127.0.0.1:6'])\n"
        "virtual_hosts = [VirtualHost('a.example', routes=[Route('/', used)])]\n"
    )
    config, path = load(tmp_path, source)
    found = {
        name: [(d.path, d.line, d.variable) for d in definitions]
        for name, definitions in config.defined_clusters.items()
    }
    assert found == {
        "used": [(path, 2, "used")],
        "spare": [(path, 3, "spare")],
        "pool-a": [(path, 5, "pool")],
        "pool-b": [(path, 6, "pool")],
        "prod": [(path, 8, "by_env")],
    }
    # The meaning of clusters is unchanged: only clusters routes use.
    assert list(config.clusters) == ["used"]


def test_same_cluster_name_in_two_files(tmp_path: Path) -> None:
    one = HEADER + (
        "api = Cluster('api', endpoints=['127.0.0.1:1'])\n"
        "virtual_hosts = [VirtualHost('a.example', routes=[Route('/', api)])]\n"
    )
    two = HEADER + "api = Cluster('api', endpoints=['127.0.0.1:1'])\nvirtual_hosts = []\n"
    a = write(tmp_path, "10-a.py", one)
    b = write(tmp_path, "20-b.py", two)
    config = load_config(str(tmp_path))
    assert [(d.path, d.line) for d in config.defined_clusters["api"]] == [(a, 2), (b, 2)]
    assert config.virtual_host_files == (a,)


# --- expectations ----------------------------------------------------------------


def expect(tmp_path: Path, *pairs: tuple[str, str]) -> tuple[CheckReport, str]:
    config, path = load(tmp_path, SHOP + f"expectations = {list(pairs)!r}\n")
    return check_expectations(config), path


@pytest.mark.parametrize(
    ("url", "cluster"),
    [
        ("https://shop.example/api/x", "api"),
        ("https://SHOP.example:8443/api/x?q=1#frag", "api"),
        ("https://www.shop.example/api/", "api"),
        ("https://shop.example/", "web-v1"),  # a Split: any cluster with weight > 0
        ("https://shop.example/anything", "web-v2"),
        ("https://shop.example", "web-v1"),  # no path is "/"
        ("http://shop.example/api/x", "redirect"),
        ("http://shop.example/healthz", "health"),  # plain_http: not redirected
        ("https://shop.example/healthz/deep", "health"),
    ],
)
def test_expectation_passes(tmp_path: Path, url: str, cluster: str) -> None:
    report, _ = expect(tmp_path, (url, cluster))
    assert report == CheckReport()


@pytest.mark.parametrize(
    ("url", "cluster", "fragment"),
    [
        (
            "https://shop.example/api/x",
            "web-v1",
            "it goes to cluster 'api' (route '/api/' of virtual host 'shop.example')",
        ),
        ("https://shop.example/api", "api", "Split({web-v1: 90, web-v2: 10, dark: 0})"),
        ("https://shop.example/", "dark", "where 'dark' has weight 0"),
        ("https://shop.example/", "api", "which has no cluster 'api'"),
        ("http://shop.example/api/x", "api", "it redirects to https (route '/api/'"),
        ("http://shop.example/healthz", "redirect", "it goes to cluster 'health'"),
        ("https://shop.example/api/x", "redirect", "not to a redirect"),
        ("https://blog.example/", "api", "no virtual host serves 'blog.example'"),
        ("https://a.b.shop.example/", "api", "no virtual host serves 'a.b.shop.example'"),
        ("ftp://shop.example/", "api", "must be http://HOST/PATH or https://HOST/PATH"),
        ("shop.example/api/", "api", "must be http://HOST/PATH"),
        ("https://user@shop.example/", "api", "user name or password"),
        ("https://shop..example/", "api", "is not a valid host"),
        ("https://shop.example:http/", "api", "is not a valid host"),
    ],
)
def test_expectation_fails(tmp_path: Path, url: str, cluster: str, fragment: str) -> None:
    report, path = expect(tmp_path, ("https://shop.example/api/ok", "api"), (url, cluster))
    assert report.warnings == ()
    (error,) = report.errors
    assert error.path == path
    assert error.line == line_of(path, "expectations =")  # one-line literal list
    assert error.message.startswith(f"expectation {url!r} -> {cluster!r} failed: ")
    assert fragment in error.message


def test_no_route_in_virtual_host(tmp_path: Path) -> None:
    source = HEADER + (
        "api = Cluster('api', endpoints=['127.0.0.1:1'])\n"
        "virtual_hosts = [VirtualHost('a.example', routes=[Route('/api/', api)])]\n"
        "expectations = [\n"
        "    ('https://a.example/api', 'api'),\n"
        "]\n"
    )
    config, path = load(tmp_path, source)
    (error,) = check_expectations(config).errors
    assert "virtual host 'a.example' has no route for '/api'" in error.message
    assert error.line == 5


def test_expectation_with_non_ascii_path(tmp_path: Path) -> None:
    source = HEADER + (
        "c = Cluster('cafe', endpoints=['127.0.0.1:1'])\n"
        "r = Cluster('root', endpoints=['127.0.0.1:2'])\n"
        "virtual_hosts = [VirtualHost('bücher.example', routes=[\n"
        "    Route('/café/', c), Route('/', r)])]\n"
        "expectations = [('https://BÜCHER.example/café/menu', 'cafe'),\n"
        "                ('https://xn--bcher-kva.example/caf%C3%A9/', 'cafe')]\n"
    )
    config, _ = load(tmp_path, source)
    assert check_expectations(config) == CheckReport()


# --- shadowed routes -------------------------------------------------------------


def test_same_prefix_on_the_wire_is_an_error(tmp_path: Path) -> None:
    source = HEADER + (
        "c = Cluster('c', endpoints=['127.0.0.1:1'])\n"
        "d = Cluster('d', endpoints=['127.0.0.1:2'])\n"
        "virtual_hosts = [VirtualHost('a.example', routes=[\n"
        "    Route('/café/', c),\n"
        "    Route('/caf%C3%A9/', d),\n"
        "])]\n"
    )
    config, path = load(tmp_path, source)
    report = check_shadowed_routes(config)
    (error,) = report.errors
    assert error == ConfigProblem(
        path,
        "virtual host 'a.example': route '/caf%C3%A9/' can never match: its prefix is "
        "'/caf%C3%A9/' on the wire, the same as route '/café/', which is listed first and wins",
        6,
    )


def test_longer_prefixes_do_not_shadow(tmp_path: Path) -> None:
    source = HEADER + (
        "c = Cluster('c', endpoints=['127.0.0.1:1'])\n"
        "virtual_hosts = [VirtualHost('a.example', routes=[\n"
        "    Route('/api', c), Route('/api/', c), Route('/api/v1/', c), Route('/', c)])]\n"
    )
    config, _ = load(tmp_path, source)
    assert check_shadowed_routes(config) == CheckReport()


EXACT_AND_WILDCARD = HEADER + (
    "shop = Cluster('shop', endpoints=['127.0.0.1:1'])\n"
    "admin = Cluster('admin', endpoints=['127.0.0.1:2'])\n"
    "virtual_hosts = [\n"
    "    VirtualHost('*.shop.example', routes=[Route('/', shop), Route('/static/', shop)]),\n"
    "    VirtualHost('admin.shop.example', routes=[{admin_routes}]),\n"
    "]\n"
)


def test_exact_name_that_takes_paths_away_from_a_wildcard(tmp_path: Path) -> None:
    source = EXACT_AND_WILDCARD.format(admin_routes="Route('/admin/', admin)")
    config, path = load(tmp_path, source)
    report = check_shadowed_routes(config)
    assert report.errors == ()
    (warning,) = report.warnings
    assert warning.path == path
    assert warning.line == 6
    assert warning.message == (
        "'admin.shop.example' is an exact name of virtual host 'admin.shop.example', so the "
        f"routes of wildcard '*.shop.example' (virtual host '*.shop.example', {path}:5) never "
        "apply to it: admin.shop.example gets 404 for '/', '/static/', which the wildcard's "
        "virtual host routes"
    )


def test_exact_name_with_a_catch_all_is_fine(tmp_path: Path) -> None:
    source = EXACT_AND_WILDCARD.format(admin_routes="Route('/', admin)")
    config, _ = load(tmp_path, source)
    assert check_shadowed_routes(config) == CheckReport()


# --- endpoints -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "error", "warning"),
    [
        ("127.0.0.1:1", None, None),
        ("[::1]:1", None, None),
        ("backend.internal:80", None, None),
        ("localhost:80", None, None),
        ("-backend.internal:80", "label '-backend' starts or ends with '-'", None),
        ("backend-.internal:80", "label 'backend-' starts or ends with '-'", None),
        ("224.0.0.1:80", "multicast or broadcast", None),
        ("255.255.255.255:80", "multicast or broadcast", None),
        ("[ff02::1]:80", "multicast or broadcast", None),
        ("my_service:80", None, "'my_service' contains '_'"),
        ("0.0.0.0:80", None, "unspecified address"),
        ("[::]:80", None, "unspecified address"),
    ],
)
def test_endpoint_hosts(
    tmp_path: Path, endpoint: str, error: str | None, warning: str | None
) -> None:
    source = HEADER + (
        "c = Cluster('c', endpoints=['127.0.0.1:9'])\n"
        f"api = Cluster('api', endpoints=['127.0.0.1:8', {endpoint!r}])\n"
        "virtual_hosts = [VirtualHost('a.example', routes=[Route('/', api), Route('/c/', c)])]\n"
    )
    config, path = load(tmp_path, source)
    report = check_endpoints(config)
    for problems, fragment in ((report.errors, error), (report.warnings, warning)):
        if fragment is None:
            assert problems == ()
        else:
            (problem,) = problems
            assert problem.path == path
            assert problem.line == 3
            assert problem.message.startswith("cluster 'api': endpoint ")
            assert fragment in problem.message


def test_endpoint_objects_point_at_the_cluster(tmp_path: Path) -> None:
    source = HEADER + (
        "api = Cluster(\n"
        "    'api',\n"
        "    endpoints=[Endpoint('bad_host', 80)],\n"
        ")\n"
        "virtual_hosts = [VirtualHost('a.example', routes=[Route('/', api)])]\n"
    )
    config, path = load(tmp_path, source)
    (warning,) = check_endpoints(config).warnings
    assert (warning.path, warning.line) == (path, 4)  # the host's literal


def test_endpoints_of_an_idle_cluster_are_checked(tmp_path: Path) -> None:
    # No route uses green, but its health checks connect: a bad host is an error all the same.
    source = HEADER + (
        "blue = Cluster('blue', endpoints=['127.0.0.1:8'])\n"
        "green = Cluster('green', endpoints=['-green.internal:80'])\n"
        "virtual_hosts = [VirtualHost('a.example', routes=[Route('/', blue)])]\n"
    )
    config, path = load(tmp_path, source)
    (error,) = check_endpoints(config).errors
    assert (error.path, error.line) == (path, 3)
    assert error.message.startswith("cluster 'green': endpoint '-green.internal:80'")


# --- unused clusters -------------------------------------------------------------


def test_unused_clusters(tmp_path: Path) -> None:
    source = HEADER + (
        "api = Cluster('api', endpoints=['127.0.0.1:1'])\n"
        "old = Cluster('api-old', endpoints=['127.0.0.1:2'])\n"
        "extra = [Cluster('spare', endpoints=['127.0.0.1:3'])]\n"
        "virtual_hosts = [VirtualHost('a.example', routes=[Route('/', api)])]\n"
    )
    config, path = load(tmp_path, source)
    report = check_unused_clusters(config)
    assert report.errors == ()
    assert report.warnings == (
        ConfigProblem(path, "cluster 'api-old' (module-level 'old') is not used by any route", 3),
        ConfigProblem(path, "cluster 'spare' (module-level 'extra') is not used by any route", 4),
    )


def test_unused_definition_of_a_used_name(tmp_path: Path) -> None:
    write(
        tmp_path,
        "10-a.py",
        HEADER + "api = Cluster('api', endpoints=['127.0.0.1:1'])\n"
        "virtual_hosts = [VirtualHost('a.example', routes=[Route('/', api)])]\n",
    )
    same = write(
        tmp_path,
        "20-b.py",
        HEADER + "api = Cluster('api', endpoints=['127.0.0.1:1'])\nvirtual_hosts = []\n",
    )
    other = write(
        tmp_path,
        "30-c.py",
        HEADER + "api = Cluster('api', endpoints=['127.0.0.1:7'])\nvirtual_hosts = []\n",
    )
    config = load_config(str(tmp_path))
    (warning,) = check_unused_clusters(config).warnings
    assert (warning.path, warning.line) == (other, 2)
    assert "routes use a cluster of that name with other settings" in warning.message
    assert same not in {w.path for w in check_unused_clusters(config).warnings}


def test_every_used_cluster_is_fine(tmp_path: Path) -> None:
    config, _ = load(tmp_path, SHOP)
    assert check_unused_clusters(config) == CheckReport()


# --- certificate coverage --------------------------------------------------------

COVERAGE = HEADER + (
    "c = Cluster('c', endpoints=['127.0.0.1:1'])\n"
    "virtual_hosts = [\n"
    "    VirtualHost(['shop.example', '*.shop.example', 'www.blog.example'],\n"
    "                routes=[Route('/', c)]),\n"
    "    VirtualHost(['192.0.2.10', '2001:db8::1'], routes=[Route('/', c)]),\n"
    "]\n"
)


def coverage(tmp_path: Path, ca: trustme.CA, *certs: tuple[str, ...]) -> list[ConfigProblem]:
    config, _ = load(tmp_path, COVERAGE)
    directory = tmp_path / "certs"
    directory.mkdir()
    for stem, *names in certs:
        write_cert(str(directory), stem, ca, *names)
    report = check_certificate_coverage(config, index_of(directory))
    assert report.errors == ()
    return list(report.warnings)


def test_every_name_covered(tmp_path: Path, ca: trustme.CA) -> None:
    assert (
        coverage(
            tmp_path,
            ca,
            ("shop", "shop.example", "*.shop.example"),
            ("blog", "*.blog.example"),
            ("default", "192.0.2.10", "2001:db8::1"),
        )
        == []
    )


def test_uncovered_names_without_a_default(tmp_path: Path, ca: trustme.CA) -> None:
    warnings = coverage(tmp_path, ca, ("shop", "shop.example", "www.shop.example"))
    path = str(tmp_path / "site.py")
    assert [(w.path, w.line) for w in warnings] == [(path, 4), (path, 4), (path, 6), (path, 6)]
    texts = messages(tuple(warnings))
    # A certificate for one name under a wildcard does not cover the wildcard.
    assert texts[0] == (
        "virtual host 'shop.example': no certificate covers '*.shop.example' and there is no "
        "default certificate: TLS handshakes for it are refused"
    )
    assert "'www.blog.example'" in texts[1]
    assert "'192.0.2.10'" in texts[2]
    assert "'2001:db8::1'" in texts[3]


def test_uncovered_names_get_the_default(tmp_path: Path, ca: trustme.CA) -> None:
    warnings = coverage(
        tmp_path,
        ca,
        ("shop", "shop.example", "*.shop.example", "www.blog.example"),
        ("default", "fallback.example", "192.0.2.10"),
        ("ip", "2001:db8::1"),
    )
    (ip,) = warnings
    default = str(tmp_path / "certs" / "default.pem")
    assert ip.message == (
        f"virtual host '192.0.2.10': no certificate covers '2001:db8::1' "
        f"({tmp_path / 'certs' / 'ip.pem'} names it, but clients send no server name for an "
        "IP address, so only the default certificate is ever served for it): clients get the "
        f"default certificate {default}, which does not name it, and reject the connection"
    )


def test_a_wildcard_certificate_covers_exact_names(tmp_path: Path, ca: trustme.CA) -> None:
    config, _ = load(
        tmp_path,
        HEADER + "c = Cluster('c', endpoints=['127.0.0.1:1'])\n"
        "virtual_hosts = [VirtualHost(['a.shop.example', 'shop.example'], routes=[Route('/', c)])]\n",
    )
    write_cert(str(tmp_path / "certs"), "wild", ca, "*.shop.example")
    (warning,) = check_certificate_coverage(config, index_of(tmp_path / "certs")).warnings
    assert "no certificate covers 'shop.example'" in warning.message


# --- certificate validity --------------------------------------------------------


def validity(directory: Path) -> list[ConfigProblem]:
    index = check_directory(str(directory), NOW).index
    report = check_certificate_validity(index, NOW)
    assert report.errors == ()
    return list(report.warnings)


def test_certificate_expiring_soon(tmp_path: Path, ca: trustme.CA) -> None:
    d = str(tmp_path)
    soon = write_cert(
        d, "soon", ca, "soon.example", not_before=NOW - days(80), not_after=NOW + days(10)
    )
    # Just outside the 14 days: not reported.
    write_cert(
        d, "edge", ca, "edge.example", not_before=NOW - days(80), not_after=NOW + days(14.01)
    )
    write_cert(d, "later", ca, "later.example", not_before=NOW - days(1), not_after=NOW + days(90))
    hours = write_cert(
        d, "hours", ca, "hours.example", not_before=NOW - days(80), not_after=NOW + days(0.25)
    )
    assert [(w.path, w.message) for w in validity(tmp_path)] == [
        (
            hours,
            "certificate expires in 6 hours, on 2030-06-01 06:00 UTC: renew it "
            "(serving 'hours.example')",
        ),
        (
            soon,
            "certificate expires in 10 days, on 2030-06-11 00:00 UTC: renew it "
            "(serving 'soon.example')",
        ),
    ]


def test_expired_and_not_yet_valid(tmp_path: Path, ca: trustme.CA) -> None:
    d = str(tmp_path)
    old = write_cert(
        d, "default", ca, "old.example", not_before=NOW - days(100), not_after=NOW - days(3)
    )
    future = write_cert(
        d, "future", ca, "future.example", not_before=NOW + days(2), not_after=NOW + days(100)
    )
    assert [(w.path, w.message) for w in validity(tmp_path)] == [
        (
            old,
            "certificate expired 3 days ago, on 2030-05-29 00:00 UTC (the default "
            "certificate, serving 'old.example')",
        ),
        (
            future,
            "certificate is not valid until 2030-06-03 00:00 UTC (2 days) "
            "(serving 'future.example')",
        ),
    ]


def test_renewed_certificates_are_not_reported(tmp_path: Path, ca: trustme.CA) -> None:
    d = str(tmp_path)
    write_cert(
        d, "a-old", ca, "a.example", "b.example", not_before=NOW - days(80), not_after=NOW - days(1)
    )
    write_cert(d, "b-old", ca, "a.example", not_before=NOW - days(80), not_after=NOW + days(5))
    write_cert(
        d, "c-new", ca, "a.example", "b.example", not_before=NOW - days(1), not_after=NOW + days(89)
    )
    assert validity(tmp_path) == []


def test_partly_renewed_certificate_is_reported(tmp_path: Path, ca: trustme.CA) -> None:
    d = str(tmp_path)
    old = write_cert(
        d, "old", ca, "a.example", "b.example", not_before=NOW - days(80), not_after=NOW + days(5)
    )
    write_cert(d, "new", ca, "a.example", not_before=NOW - days(1), not_after=NOW + days(89))
    (warning,) = validity(tmp_path)
    assert warning.path == old


# --- all together ----------------------------------------------------------------


def test_run_semantic_check_and_format(tmp_path: Path, ca: trustme.CA) -> None:
    sites = tmp_path / "sites"
    sites.mkdir()
    shop = write(
        sites,
        "10-shop.py",
        SHOP + "spare = Cluster('spare', endpoints=['127.0.0.1:1'])\n"
        "expectations = [('https://shop.example/api/x', 'web-v1')]\n",
    )
    blog = write(
        sites,
        "20-blog.py",
        HEADER + "blog = Cluster('blog', endpoints=['127.0.0.1:9'])\n"
        "virtual_hosts = [VirtualHost('blog.example', routes=[Route('/', blog)])]\n",
    )
    certs = tmp_path / "certs"
    expiring = write_cert(
        str(certs),
        "shop",
        ca,
        "shop.example",
        "*.shop.example",
        not_before=NOW - days(80),
        not_after=NOW + days(3),
    )
    config = load_config(str(sites))
    report = run_semantic_check(config, index_of(certs), NOW)
    spare, expectation = line_of(shop, "spare ="), line_of(shop, "expectations =")
    assert [(p.path, p.line) for p in report.errors] == [(shop, expectation)]
    # Sorted: config files in load order, then certificate files.
    assert [(p.path, p.line) for p in report.warnings] == [
        (shop, spare),
        (blog, 3),
        (expiring, None),
    ]
    lines, code = format_report(report, strict=False)
    assert code == 1
    assert lines[0].startswith(f"error: {shop}:{expectation}: expectation ")
    assert lines[1] == (
        f"warning: {shop}:{spare}: cluster 'spare' (module-level 'spare') is not used by any route"
    )
    assert lines[2].startswith(f"warning: {blog}:3: virtual host 'blog.example': no certificate")
    assert lines[3].startswith(f"warning: {expiring}: certificate expires in 3 days")


def test_format_report_exit_codes() -> None:
    warning = ConfigProblem("a.py", "w", 1)
    error = ConfigProblem("a.py", "e", 2)
    assert format_report(CheckReport(), strict=True) == ([], 0)
    assert format_report(CheckReport(warnings=(warning,)), strict=False) == (
        ["warning: a.py:1: w"],
        0,
    )
    assert format_report(CheckReport(warnings=(warning,)), strict=True)[1] == 1
    assert format_report(CheckReport(errors=(error,), warnings=(warning,)), strict=False) == (
        ["error: a.py:2: e", "warning: a.py:1: w"],
        1,
    )


def test_config_built_without_the_loader() -> None:
    # LoadedConfig made by hand (as tests/memproxy.py does): no files, lines or definitions.
    api = Cluster("api", endpoints=[Endpoint("127.0.0.1", 1)])
    vhost = VirtualHost(["a.example"], routes=[Route("/", api)])
    config = LoadedConfig(
        virtual_hosts=(vhost,),
        files=("test.py",),
        clusters={"api": api},
        routing=RoutingTable.from_virtual_hosts((vhost,)),
    )
    report = run_semantic_check(config, CertificateIndex.empty(), NOW)
    assert report.errors == ()
    assert report.warnings == (
        ConfigProblem(
            "test.py",
            "virtual host 'a.example': no certificate covers 'a.example' and there is no "
            "default certificate: TLS handshakes for it are refused",
        ),
    )
    assert config.defined_clusters == {}
    assert ClusterDefinition  # exported


def test_count_problems_says_errors_and_warnings() -> None:
    one = ConfigProblem("a.py", "x", 1)
    assert count_problems(CheckReport()) == "0 errors, 0 warnings"
    assert count_problems(CheckReport((one, one), (one,))) == "2 errors, 1 warning"
    assert count_problems(CheckReport((one,), (one, one))) == "1 error, 2 warnings"


def test_no_default_certificate_is_a_warning(tmp_path: Path, ca: trustme.CA) -> None:
    certs = tmp_path / "certs"
    write_cert(str(certs), "shop", ca, "shop.example", not_before=NOW - days(1))
    report = check_default_certificate(index_of(certs), str(certs))
    assert report.errors == ()
    assert [(p.path, p.line) for p in report.warnings] == [(str(certs), None)]
    assert report.warnings[0].message.startswith("no default certificate (default.pem, ")
    assert "docs/certificates.md" in report.warnings[0].message
    write_cert(str(certs), "default", ca, "shop.example", not_before=NOW - days(1))
    assert check_default_certificate(index_of(certs), str(certs)) == CheckReport()


def test_a_prefix_written_twice_is_the_loaders_problem_only(tmp_path: Path) -> None:
    from edgeproxy.config.load import inspect_config

    path = write(
        tmp_path,
        "site.py",
        HEADER
        + 'c = Cluster("c", endpoints=["127.0.0.1:1"])\n'
        + 'virtual_hosts = [VirtualHost(["a.example"], routes=[Route("/x/", c), Route("/x/", c)])]\n',
    )
    config, problems = inspect_config(path)
    assert [p.message for p in problems] == [
        "virtual host 'a.example' has two routes for prefix '/x/'"
    ]
    assert config is not None
    assert check_shadowed_routes(config) == CheckReport()
