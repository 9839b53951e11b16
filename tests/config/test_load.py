"""Loading configuration files (edgeproxy.config.load)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from edgeproxy.config import Cluster, Route, Split, VirtualHost
from edgeproxy.config.load import LoadedConfig, config_files, inspect_config, load_config
from edgeproxy.core.errors import ConfigError, ConfigProblem

EXAMPLE = """\
from edgeproxy.config import Cluster, Route, Split, VirtualHost

api = Cluster("api", endpoints=["127.0.0.1:9001", "127.0.0.1:9002"])
web_v1 = Cluster("web-v1", endpoints=["127.0.0.1:9101"])
web_v2 = Cluster("web-v2", endpoints=["127.0.0.1:9102"])

virtual_hosts = [
    VirtualHost(
        ["shop.example", "*.shop.example"],
        routes=[
            Route("/api/", api),
            Route("/", Split({web_v1: 90, web_v2: 10})),
        ],
    ),
]
"""

HEADER = "from edgeproxy.config import Cluster, Route, Split, VirtualHost\n"


def write(directory: Path, name: str, source: str) -> str:
    path = directory / name
    path.write_text(textwrap.dedent(source))
    return str(path)


def site(names: str, prefix: str = "/", cluster: str = 'Cluster("c", endpoints=["h:1"])') -> str:
    return (
        HEADER + f"virtual_hosts = [VirtualHost({names}, routes=[Route({prefix!r}, {cluster})])]\n"
    )


def problems_of(path: str) -> tuple[ConfigProblem, ...]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems


def test_example_loads_as_written(tmp_path: Path) -> None:
    path = write(tmp_path, "shop.py", EXAMPLE)
    config = load_config(path)
    assert isinstance(config, LoadedConfig)
    assert config.files == (path,)
    api = Cluster("api", endpoints=["127.0.0.1:9001", "127.0.0.1:9002"])
    web_v1 = Cluster("web-v1", endpoints=["127.0.0.1:9101"])
    web_v2 = Cluster("web-v2", endpoints=["127.0.0.1:9102"])
    expected = VirtualHost(
        ["shop.example", "*.shop.example"],
        routes=[Route("/api/", api), Route("/", Split({web_v1: 90, web_v2: 10}))],
    )
    assert config.virtual_hosts == (expected,)
    assert dict(config.clusters) == {"api": api, "web-v1": web_v1, "web-v2": web_v2}
    assert list(config.clusters) == ["api", "web-v1", "web-v2"]
    match = config.routing.match("www.shop.example", b"/api/orders?x=1")
    assert match is not None
    assert match.route.target == api
    assert match.forward_path == b"/api/orders?x=1"
    assert config.summary() == "1 file, 1 virtual host, 2 routes, 3 clusters, 4 endpoints"


def test_sites_are_not_importable(tmp_path: Path) -> None:
    path = write(tmp_path, "shop.py", EXAMPLE + "import sys\nNAME = __name__\nFILE = __file__\n")
    before = set(sys.modules)
    load_config(path)
    assert not {name for name in sys.modules if name.startswith("edgeproxy_site_")}
    assert set(sys.modules) - before <= {"edgeproxy.config.load"}


def test_module_name_and_file(tmp_path: Path) -> None:
    write(
        tmp_path,
        "shop.py",
        HEADER
        + "assert __name__ == 'edgeproxy_site_shop', __name__\n"
        + f"assert __file__ == {str(tmp_path / 'shop.py')!r}, __file__\n"
        + site('["a.example"]').removeprefix(HEADER),
    )
    assert load_config(str(tmp_path / "shop.py")).summary().startswith("1 file,")


def test_dataclasses_in_a_site_work(tmp_path: Path) -> None:
    source = """\
        from __future__ import annotations
        import dataclasses
        from edgeproxy.config import Cluster, Route, VirtualHost

        @dataclasses.dataclass
        class Site:
            name: str
            port: int

        sites = [Site("a.example", 1), Site("b.example", 2)]
        virtual_hosts = [
            VirtualHost([s.name], routes=[Route("/", Cluster(s.name, endpoints=[f"h:{s.port}"]))])
            for s in sites
        ]
    """
    config = load_config(write(tmp_path, "gen.py", source))
    assert len(config.virtual_hosts) == 2


def test_directory_in_name_order(tmp_path: Path) -> None:
    write(tmp_path, "20-b.py", site('["b.example"]'))
    write(tmp_path, "10-a.py", site('["a.example"]'))
    write(tmp_path, "30-c.py", site('["c.example"]'))
    write(tmp_path, "_helpers.py", "raise RuntimeError('never loaded')\n")
    write(tmp_path, ".hidden.py", "raise RuntimeError('never loaded')\n")
    write(tmp_path, "notes.txt", "not python")
    (tmp_path / "sub.py").mkdir()
    config = load_config(str(tmp_path))
    assert [Path(f).name for f in config.files] == ["10-a.py", "20-b.py", "30-c.py"]
    assert [v.names[0] for v in config.virtual_hosts] == ["a.example", "b.example", "c.example"]
    assert config.summary() == "3 files, 3 virtual hosts, 3 routes, 1 cluster, 1 endpoint"
    assert config_files(str(tmp_path)) == list(config.files)


def test_missing_path(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.py")
    assert problems_of(missing) == (ConfigProblem(missing, "no such file or directory"),)


def test_empty_directory(tmp_path: Path) -> None:
    write(tmp_path, "_private.py", site('["a.example"]'))
    (problem,) = problems_of(str(tmp_path))
    assert problem.path == str(tmp_path)
    assert "no configuration files" in problem.message


def test_no_virtual_hosts_at_all(tmp_path: Path) -> None:
    write(tmp_path, "a.py", "virtual_hosts = []\n")
    write(tmp_path, "b.py", "virtual_hosts = ()\n")
    assert problems_of(str(tmp_path)) == (
        ConfigProblem(str(tmp_path), "the configuration defines no virtual hosts"),
    )


def test_exception_with_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "bad.py",
        """\
        from edgeproxy.config import Cluster

        x = 1
        api = Cluster("api", endpoints=[])
        """,
    )
    assert problems_of(path) == (
        ConfigProblem(path, "ValueError: a cluster needs at least one endpoint", 4),
    )


def test_exception_line_inside_a_function(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "bad.py",
        """\
        from edgeproxy.config import Endpoint

        def make(text):
            return Endpoint.parse(text)

        e = make("[::1]")
        """,
    )
    (problem,) = problems_of(path)
    assert problem.line == 4  # the innermost line in the file itself
    assert problem.message == "ValueError: endpoint '[::1]' is not '[ipv6]:port'"


def test_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.py", "x = 1\ny = (\n")
    (problem,) = problems_of(path)
    assert problem.path == path
    assert problem.line == 2
    assert problem.message.startswith("SyntaxError: ")


def test_import_error_and_system_exit(tmp_path: Path) -> None:
    a = write(tmp_path, "a.py", "\nimport edgeproxy_no_such_module\n")
    b = write(tmp_path, "b.py", "import sys\nsys.exit(3)\n")
    c = write(tmp_path, "c.py", "raise KeyError\n")
    assert problems_of(str(tmp_path)) == (
        ConfigProblem(a, "ModuleNotFoundError: No module named 'edgeproxy_no_such_module'", 2),
        ConfigProblem(b, "SystemExit: 3", 2),
        ConfigProblem(c, "KeyError", 1),
    )


def test_no_virtual_hosts_defined(tmp_path: Path) -> None:
    path = write(tmp_path, "a.py", "hosts = []\n")
    assert problems_of(path) == (ConfigProblem(path, "defines no virtual_hosts"),)


def test_virtual_hosts_wrong_type(tmp_path: Path) -> None:
    path = write(tmp_path, "a.py", "virtual_hosts = {}\n")
    assert problems_of(path) == (
        ConfigProblem(path, "virtual_hosts must be a list of VirtualHost, not dict"),
    )


def test_virtual_hosts_wrong_elements(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "a.py",
        site('["a.example"]') + "virtual_hosts += ['b.example', None]\n",
    )
    assert problems_of(path) == (
        ConfigProblem(path, "virtual_hosts[1] is not a VirtualHost: 'b.example'"),
        ConfigProblem(path, "virtual_hosts[2] is not a VirtualHost: None"),
    )


def test_hostname_claimed_twice_across_files(tmp_path: Path) -> None:
    a = write(tmp_path, "a.py", HEADER + "\n" + site('["Shop.example", "*.shop.example"]'))
    b = write(tmp_path, "b.py", site('["x.example", "shop.example"]'))
    assert problems_of(str(tmp_path)) == (
        ConfigProblem(
            b,
            f"hostname 'shop.example' is claimed by two virtual hosts: here and in {a}:4",
            2,
        ),
    )


def test_hostname_claimed_twice_in_one_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "a.py",
        HEADER
        + """\
c = Cluster("c", endpoints=["h:1"])
one = VirtualHost(["*.a.example"], routes=[Route("/", c)])
two = VirtualHost(["*.A.example"], routes=[Route("/", c)])
virtual_hosts = [one, two, one]
""",
    )
    problems = problems_of(path)
    assert [p.message for p in problems] == [
        f"hostname '*.a.example' is claimed by two virtual hosts: here and in {path}:3",
        f"hostname '*.a.example' is claimed by two virtual hosts: here and in {path}:3"
        " (the same virtual host listed twice)",
    ]
    assert {p.line for p in problems} == {3}


def test_duplicate_prefix(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "a.py",
        HEADER
        + """\
c = Cluster("c", endpoints=["h:1"])
virtual_hosts = [
    VirtualHost(
        ["a.example"],
        routes=[Route("/api/", c), Route("/", c), Route("/api/", c, strip_prefix=True)],
    ),
]
""",
    )
    assert problems_of(path) == (
        ConfigProblem(path, "virtual host 'a.example' has two routes for prefix '/api/'", 5),
    )


def test_cluster_name_reused_for_different_clusters(tmp_path: Path) -> None:
    a = write(tmp_path, "a.py", site('["a.example"]', cluster='Cluster("api", endpoints=["h:1"])'))
    b = write(
        tmp_path,
        "b.py",
        HEADER
        + """\
same = Cluster("api", endpoints=["h:1"])
other = Cluster("api", endpoints=["h:2"])
virtual_hosts = [
    VirtualHost(["b.example"], routes=[Route("/", same), Route("/x/", other)]),
    VirtualHost(["c.example"], routes=[Route("/", Split({other: 1}))]),
]
""",
    )
    problems = problems_of(str(tmp_path))
    assert problems == (
        ConfigProblem(
            b,
            f"cluster 'api' is defined twice with different settings (also in {a}); "
            "give each cluster its own name or share one Cluster object",
            2,
        ),
    )


def test_one_cache_directory_with_two_different_caches(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "a.py",
        HEADER
        + """\
from edgeproxy.config import Cache
api = Cluster("api", endpoints=["h:1"])
virtual_hosts = [
    VirtualHost(["a.example"], routes=[
        Route("/x/", api, cache=Cache(store="disk:/var/cache/e")),
        Route("/y/", api, cache=Cache(store="disk:/var/cache/e", max_bytes=2**20)),
        Route("/z/", api, cache=Cache(store="disk:/var/cache/other", max_bytes=2**20)),
        Route("/w/", api, cache=Cache(max_bytes=2**20)),
    ]),
]
""",
    )
    assert problems_of(str(tmp_path)) == (
        ConfigProblem(
            path,
            "cache directory '/var/cache/e' is given two different Cache settings (also in "
            f"{path}); routes sharing a disk store share one Cache object",
            6,
        ),
    )


def test_equal_clusters_may_be_defined_twice(tmp_path: Path) -> None:
    write(tmp_path, "a.py", site('["a.example"]', cluster='Cluster("api", endpoints=["h:1"])'))
    write(tmp_path, "b.py", site('["b.example"]', cluster='Cluster("api", endpoints=["h:1"])'))
    config = load_config(str(tmp_path))
    assert list(config.clusters) == ["api"]


def test_every_problem_at_once_sorted_by_file(tmp_path: Path) -> None:
    a = write(tmp_path, "a.py", site('["a.example"]'))
    b = write(tmp_path, "b.py", "from edgeproxy.config import Split\nSplit({})\n")
    c = write(tmp_path, "c.py", "def f(:\n")
    d = write(tmp_path, "d.py", site('["a.example"]') + "\n")
    e = write(tmp_path, "e.py", "x = 1\n")
    f = write(tmp_path, "f.py", "virtual_hosts = [1]\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(tmp_path))
    problems = caught.value.problems
    assert [(p.path, p.line) for p in problems] == [
        (b, 2),
        (c, 1),
        (d, 2),
        (e, None),
        (f, None),
    ]
    assert problems[0].message == "ValueError: a Split needs at least one cluster"
    assert problems[2].message.endswith(f"here and in {a}:2")
    # str(ConfigError) lists every problem, one per line, as path:line: message
    lines = str(caught.value).splitlines()
    assert lines[0] == f"{b}:2: ValueError: a Split needs at least one cluster"
    assert lines[3] == f"{e}: defines no virtual_hosts"
    assert len(lines) == 5


def test_explicit_file_of_any_name(tmp_path: Path) -> None:
    path = write(tmp_path, "_site.conf", site('["a.example"]'))
    assert load_config(path).files == (path,)


def test_inspect_config_builds_what_loaded_beside_every_problem(tmp_path: Path) -> None:
    broken = write(tmp_path, "a.py", HEADER + "raise RuntimeError('no')\n")
    first = write(
        tmp_path, "b.py", site('["shop.example"]', cluster='Cluster("b", endpoints=["h:1"])')
    )
    second = write(tmp_path, "c.py", site('["shop.example", "c.example"]', "/c/"))
    config, problems = inspect_config(str(tmp_path))
    assert [(p.path, p.message.split(":")[0]) for p in problems] == [
        (broken, "RuntimeError"),
        (second, "hostname 'shop.example' is claimed by two virtual hosts"),
    ]
    assert config is not None
    assert config.files == (broken, first, second)
    assert config.virtual_host_files == (first, second)
    # The first claim keeps the name, as in the routing table.
    table = config.routing.find_virtual_host("shop.example")
    assert table is not None and table.virtual_host is config.virtual_hosts[0]
    assert list(config.clusters) == ["b", "c"]


def test_inspect_config_without_files(tmp_path: Path) -> None:
    missing = str(tmp_path / "nothing")
    assert inspect_config(missing) == (
        None,
        (ConfigProblem(missing, "no such file or directory"),),
    )


def test_inspect_config_of_a_good_configuration_matches_load_config(tmp_path: Path) -> None:
    path = write(tmp_path, "shop.py", EXAMPLE)
    config, problems = inspect_config(path)
    assert problems == ()
    assert config is not None
    assert config.summary() == load_config(path).summary()
# -- idle clusters ---------------------------------------------------------------------

BLUE_GREEN = """\
from edgeproxy.config import Cluster, Route, VirtualHost

blue = Cluster("blue", endpoints=["127.0.0.1:9001"])
green = Cluster("green", endpoints=["127.0.0.1:9002"])
spare = [Cluster("spare", endpoints=["127.0.0.1:9003"])]
virtual_hosts = [VirtualHost(["app.example"], routes=[Route("/", blue)])]
"""


def test_idle_clusters_are_the_module_level_ones_no_route_uses(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "app.py", BLUE_GREEN))
    assert list(config.clusters) == ["blue"]
    assert config.idle_clusters == {
        "green": Cluster("green", endpoints=["127.0.0.1:9002"]),
        "spare": Cluster("spare", endpoints=["127.0.0.1:9003"]),
    }
    assert config.summary() == "1 file, 1 virtual host, 1 route, 3 clusters (2 idle), 3 endpoints"


def test_a_name_a_route_uses_is_never_idle(tmp_path: Path) -> None:
    source = BLUE_GREEN.replace(
        'spare = [Cluster("spare", endpoints=["127.0.0.1:9003"])]',
        'other_blue = Cluster("blue", endpoints=["127.0.0.1:9009"])',
    )
    config = load_config(write(tmp_path, "app.py", source))
    assert list(config.idle_clusters) == ["green"]
    assert config.clusters["blue"].endpoints[0].port == 9001


def test_of_two_idle_definitions_of_a_name_the_first_loaded_wins(tmp_path: Path) -> None:
    write(tmp_path, "a.py", BLUE_GREEN)
    write(
        tmp_path,
        "b.py",
        HEADER + 'green = Cluster("green", endpoints=["127.0.0.1:9999"])\n'
        'virtual_hosts = [VirtualHost(["b.example"], routes=[Route("/", '
        'Cluster("b", endpoints=["127.0.0.1:9004"]))])]\n',
    )
    config = load_config(str(tmp_path))
    assert config.idle_clusters["green"].endpoints[0].port == 9002


# Pinned edges (issue 14): names and prefixes at their limits, as a site file
# gives them. --------------------------------------------------------------------

_LABEL_63 = "a" * 63
_NAME_253 = ".".join([_LABEL_63] * 3 + ["b" * 61])
_NAME_254 = ".".join([_LABEL_63] * 3 + ["b" * 62])


@pytest.mark.parametrize(
    ("names", "loaded"),
    [
        ('["163.com", "*.163.com"]', ("163.com", "*.163.com")),
        (f'["{_LABEL_63}.example"]', (f"{_LABEL_63}.example",)),
        (f'["{_NAME_253}."]', (_NAME_253,)),
        ('["[::]", "::1"]', ("::", "::1")),
    ],
)
def test_pin_names_at_the_edges_load(tmp_path: Path, names: str, loaded: tuple[str, ...]) -> None:
    config = load_config(write(tmp_path, "a.py", site(names)))
    assert config.virtual_hosts[0].names == loaded


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ('["a.163"]', "ValueError: invalid hostname 'a.163'"),
        (f'["{"a" * 64}.example"]', f"ValueError: invalid hostname '{'a' * 64}.example'"),
        (f'["{_NAME_254}"]', f"ValueError: invalid hostname '{_NAME_254}'"),
        ('["::1", "[::1]"]', "ValueError: virtual host name '::1' is listed twice"),
        ('["::", "[::]"]', "ValueError: virtual host name '::' is listed twice"),
    ],
)
def test_pin_names_past_the_edges_are_problems(tmp_path: Path, names: str, message: str) -> None:
    path = write(tmp_path, "a.py", site(names))
    assert problems_of(path) == (ConfigProblem(path, message, 2),)


@pytest.mark.parametrize("prefix", ["/a:b/", "/a%20b/", "/café/", "/caf%c3%a9/"])
def test_pin_prefixes_load_as_written(tmp_path: Path, prefix: str) -> None:
    config = load_config(write(tmp_path, "a.py", site('["x.example"]', prefix)))
    assert config.virtual_hosts[0].routes[0].prefix == prefix


def test_pin_prefix_with_a_space_is_a_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "a.py", site('["x.example"]', "/a b/"))
    assert problems_of(path) == (
        ConfigProblem(path, "ValueError: route prefix must be a plain path, not '/a b/'", 2),
    )

