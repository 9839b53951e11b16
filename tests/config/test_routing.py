"""Host and path routing (edgeproxy.config.routing)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from edgeproxy.config import Cluster, Route, Split, VirtualHost
from edgeproxy.config.routing import RouteMatch, RoutingTable, SplitChooser, VirtualHostTable
from edgeproxy.core.hostnames import normalise_host

API = Cluster("api", endpoints=["127.0.0.1:9001"])
WEB = Cluster("web", endpoints=["127.0.0.1:9002"])
STATIC = Cluster("static", endpoints=["127.0.0.1:9003"])
OTHER = Cluster("other", endpoints=["127.0.0.1:9004"])

ROOT = Route("/", WEB)
API_ROUTE = Route("/api/", API, strip_prefix=True)
API_V2 = Route("/api/v2/", OTHER)
STATIC_ROUTE = Route("/static", STATIC)

SHOP = VirtualHost(
    ["shop.example", "*.shop.example"], routes=[ROOT, API_ROUTE, API_V2, STATIC_ROUTE]
)
ADMIN = VirtualHost(["admin.shop.example"], routes=[Route("/", OTHER)])
IP = VirtualHost(["192.0.2.10", "2001:db8::1"], routes=[Route("/", API)])
API_ONLY = VirtualHost(["api.example"], routes=[Route("/api/", API)])

TABLE = RoutingTable.from_virtual_hosts([SHOP, ADMIN, IP, API_ONLY])


# VirtualHostTable ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "route"),
    [
        (b"/", ROOT),
        (b"/index.html", ROOT),
        (b"/api", ROOT),  # "/api/" does not match "/api"
        (b"/api/", API_ROUTE),
        (b"/api/users", API_ROUTE),
        (b"/api/v2", API_ROUTE),
        (b"/api/v2/", API_V2),
        (b"/api/v2/x/y", API_V2),
        (b"/static", STATIC_ROUTE),
        (b"/static/app.js", STATIC_ROUTE),
        (b"/staticfiles", STATIC_ROUTE),  # a plain string prefix
        (b"/API/", ROOT),  # case-sensitive
        (b"", None),
        (b"*", None),
    ],
)
def test_longest_prefix_wins(path: bytes, route: Route | None) -> None:
    assert VirtualHostTable(SHOP).route_for(path) is route


def test_no_route() -> None:
    table = VirtualHostTable(API_ONLY)
    assert table.route_for(b"/") is None
    assert table.route_for(b"/api") is None
    assert table.route_for(b"/api/x") is API_ONLY.routes[0]
    assert table.match(b"/api?x") is None
    assert table.vhost_name == "api.example"
    assert table.virtual_host is API_ONLY


def test_route_order_does_not_matter() -> None:
    reordered = VirtualHost(["x.example"], routes=[API_V2, STATIC_ROUTE, API_ROUTE, ROOT])
    table = VirtualHostTable(reordered)
    for path in [b"/", b"/api/x", b"/api/v2/x", b"/static/x"]:
        assert table.route_for(path) is VirtualHostTable(SHOP).route_for(path)


def test_duplicate_prefix_first_wins() -> None:
    first = Route("/a/", API)
    vhost = VirtualHost(["x.example"], routes=[first, Route("/a/", WEB)])
    assert VirtualHostTable(vhost).route_for(b"/a/b") is first


def test_non_ascii_prefix_matches_percent_encoded_path() -> None:
    route = Route("/café/", API)
    table = VirtualHostTable(VirtualHost(["x.example"], routes=[route]))
    assert table.route_for(b"/caf%C3%A9/menu") is route
    assert table.route_for("/café/menu".encode()) is None


def test_route_matched_before_query() -> None:
    table = VirtualHostTable(SHOP)
    match = table.match(b"/api?/api/v2/")
    assert match is not None
    assert match.route is ROOT


# strip_prefix -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "forward"),
    [
        (b"/api/x?q", b"/x?q"),
        (b"/api/x?q=1&r=/api/", b"/x?q=1&r=/api/"),
        (b"/api/", b"/"),
        (b"/api/?q", b"/?q"),
        (b"/api/a/b/", b"/a/b/"),
        (b"/api//x", b"/x"),
        (b"/api/x?", b"/x?"),
    ],
)
def test_strip_prefix(target: bytes, forward: bytes) -> None:
    match = TABLE.match("shop.example", target)
    assert match is not None
    assert match.route is API_ROUTE
    assert match.forward_path == forward


@pytest.mark.parametrize(
    ("target", "forward"),
    [(b"/api", b"/"), (b"/api?q", b"/?q"), (b"/apix", b"/x"), (b"/api/x", b"/x")],
)
def test_strip_prefix_without_trailing_slash(target: bytes, forward: bytes) -> None:
    route = Route("/api", API, strip_prefix=True)
    table = RoutingTable.from_virtual_hosts([VirtualHost(["x.example"], routes=[route])])
    match = table.match("x.example", target)
    assert match is not None
    assert match.forward_path == forward


def test_no_strip_keeps_target() -> None:
    match = TABLE.match("shop.example", b"/api/v2/x?y=1")
    assert match == RouteMatch(SHOP, "shop.example", API_V2, b"/api/v2/x?y=1")


@given(st.binary().map(lambda tail: b"/api/" + tail))
def test_forward_path_always_starts_with_slash(target: bytes) -> None:
    match = TABLE.match("shop.example", target)
    assert match is not None
    assert match.forward_path.startswith(b"/")


# RoutingTable -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "vhost"),
    [
        ("shop.example", SHOP),
        ("www.shop.example", SHOP),  # one-label wildcard
        ("admin.shop.example", ADMIN),  # exact beats wildcard
        ("a.b.shop.example", None),  # a wildcard covers one label only
        ("example", None),
        ("other.example", None),
        ("192.0.2.10", IP),
        ("2001:db8::1", IP),
        ("192.0.2.11", None),
        (None, None),
    ],
)
def test_find_virtual_host(host: str | None, vhost: VirtualHost | None) -> None:
    table = TABLE.find_virtual_host(host)
    if vhost is None:
        assert table is None
    else:
        assert table is not None
        assert table.virtual_host is vhost
        assert table.vhost_name == vhost.names[0]


@pytest.mark.parametrize(
    ("raw_host", "vhost"),
    [
        (b"SHOP.example:443", SHOP),
        (b"www.Shop.Example.", SHOP),
        (b"192.0.2.10:8080", IP),
        (b"[2001:DB8::1]:8443", IP),
        (b"[2001:db8:0::1]", IP),
        (b"shop.example:http", None),
    ],
)
def test_find_virtual_host_after_normalise_host(raw_host: bytes, vhost: VirtualHost | None) -> None:
    table = TABLE.find_virtual_host(normalise_host(raw_host))
    assert (table.virtual_host if table else None) is vhost


def test_wildcard_does_not_cover_its_base() -> None:
    vhost = VirtualHost(["*.wild.example"], routes=[ROOT])
    table = RoutingTable.from_virtual_hosts([vhost])
    assert table.find_virtual_host("wild.example") is None
    found = table.find_virtual_host("a.wild.example")
    assert found is not None
    assert found.vhost_name == "*.wild.example"


def test_match() -> None:
    assert TABLE.match("www.shop.example", b"/api/v2/") == RouteMatch(
        SHOP, "shop.example", API_V2, b"/api/v2/"
    )
    assert TABLE.match("unknown.example", b"/") is None
    assert TABLE.match(None, b"/") is None
    assert TABLE.match("api.example", b"/") is None


def test_virtual_hosts_kept_in_order() -> None:
    assert TABLE.virtual_hosts == (SHOP, ADMIN, IP, API_ONLY)
    assert RoutingTable.from_virtual_hosts([]).match("shop.example", b"/") is None


def test_duplicate_names_do_not_crash_first_wins() -> None:
    again = VirtualHost(["shop.example", "*.shop.example"], routes=[Route("/", OTHER)])
    table = RoutingTable.from_virtual_hosts([SHOP, again])
    for host in ["shop.example", "x.shop.example"]:
        found = table.find_virtual_host(host)
        assert found is not None
        assert found.virtual_host is SHOP


# SplitChooser -------------------------------------------------------------------


def rolls(n: int) -> list[float]:
    return [i / n for i in range(n)]


@pytest.mark.parametrize(
    ("weights", "n"),
    [
        ((90, 10), 100),
        ((90, 10), 1000),
        ((29, 71), 100),  # 0.29 * 100 is 28.999...: fractions avoid that
        ((1, 1, 1), 3),
        ((1, 2, 3, 4), 10),
        ((3, 0, 7), 10),
        ((0, 1), 10),
        ((1, 0), 10),
        ((33, 33, 34), 100),
        ((1,), 7),
        ((7, 13), 20_000),
    ],
)
def test_split_exact_proportions(weights: tuple[int, ...], n: int) -> None:
    clusters = [Cluster(f"c{i}", endpoints=["127.0.0.1:1"]) for i in range(len(weights))]
    chooser = SplitChooser(Split(dict(zip(clusters, weights, strict=True))))
    counts = Counter(chooser.choose(roll).name for roll in rolls(n))
    total = sum(weights)
    expected = {c.name: n * w // total for c, w in zip(clusters, weights, strict=True) if w}
    assert dict(counts) == expected


def test_split_float_weights() -> None:
    chooser = SplitChooser(Split({API: 0.25, WEB: 0.75}))
    counts = Counter(chooser.choose(roll).name for roll in rolls(100))
    assert counts == {"api": 25, "web": 75}


def test_split_boundaries() -> None:
    chooser = SplitChooser(Split({API: 90, OTHER: 0, WEB: 10}))
    assert chooser.choose(0.0) is API
    assert chooser.choose(0.8999999) is API
    assert chooser.choose(0.9) is WEB
    assert chooser.choose(0.9999999999999999) is WEB
    # out-of-range rolls are clamped and still never pick a zero weight
    assert chooser.choose(1.0) is WEB
    assert chooser.choose(-0.5) is API


@given(
    st.lists(st.integers(min_value=0, max_value=1000), min_size=1, max_size=8).filter(any),
    st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_split_zero_weight_never_chosen(weights: list[int], roll: float) -> None:
    clusters = [Cluster(f"c{i}", endpoints=["127.0.0.1:1"]) for i in range(len(weights))]
    chooser = SplitChooser(Split(dict(zip(clusters, weights, strict=True))))
    chosen = chooser.choose(roll)
    assert weights[clusters.index(chosen)] > 0


def test_split_chooser_keeps_split() -> None:
    split = Split({API: 1})
    assert SplitChooser(split).split is split
    assert SplitChooser(split).choose(0.5) is API


# SplitChooser.fallback: a side with nothing available ------------------------------


def sides(*weights: float) -> tuple[list[Cluster], SplitChooser]:
    clusters = [Cluster(f"c{i}", endpoints=["127.0.0.1:1"]) for i in range(len(weights))]
    return clusters, SplitChooser(Split(dict(zip(clusters, weights, strict=True))))


def served(chooser: SplitChooser, down: set[str], roll: float) -> str | None:
    """What the forwarder does: the chosen side, or its fallback when it is down."""
    chosen = chooser.choose(roll)
    if chosen.name not in down:
        return chosen.name
    fallback = chooser.fallback(roll, lambda cluster: cluster.name not in down)
    return None if fallback is None else fallback.name


def test_fallback_gives_a_down_sides_share_to_the_others_by_weight() -> None:
    _, chooser = sides(50, 30, 20)
    counts = Counter(served(chooser, {"c1"}, roll) for roll in rolls(10_000))
    # c1's 3000 rolls go 50:20 to c0 and c2; nobody else moves.
    assert counts["c1"] == 0
    assert abs(counts["c0"] - (5000 + 3000 * 50 / 70)) <= 1
    assert abs(counts["c2"] - (2000 + 3000 * 20 / 70)) <= 1
    for roll in rolls(1000):
        if chooser.choose(roll).name != "c1":
            assert served(chooser, {"c1"}, roll) == chooser.choose(roll).name


def test_fallback_is_the_same_for_the_same_roll_and_ends_when_the_side_is_back() -> None:
    _, chooser = sides(1, 1, 1)
    on_c1 = [roll for roll in rolls(300) if chooser.choose(roll).name == "c1"]
    first = [served(chooser, {"c1"}, roll) for roll in on_c1]
    assert [served(chooser, {"c1"}, roll) for roll in on_c1] == first
    assert set(first) == {"c0", "c2"}
    assert {served(chooser, set(), roll) for roll in on_c1} == {"c1"}


def test_fallback_skips_sides_that_are_down_too() -> None:
    _, chooser = sides(1, 1, 1)
    assert {served(chooser, {"c1", "c2"}, roll) for roll in rolls(300)} == {"c0"}
    assert {served(chooser, {"c0", "c1", "c2"}, roll) for roll in rolls(30)} == {None}


def test_a_zero_weight_side_takes_no_share() -> None:
    _, chooser = sides(1, 0, 1)
    assert {served(chooser, {"c2"}, roll) for roll in rolls(100)} == {"c0"}
    assert {served(chooser, {"c0", "c2"}, roll) for roll in rolls(100)} == {None}


@given(
    st.lists(st.integers(min_value=0, max_value=1000), min_size=1, max_size=6).filter(any),
    st.sets(st.integers(min_value=0, max_value=5)),
    st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_fallback_is_an_available_side_of_positive_weight(
    weights: list[int], down_indices: set[int], roll: float
) -> None:
    clusters, chooser = sides(*weights)
    down = {f"c{i}" for i in down_indices}
    assume(chooser.choose(roll).name in down)  # the only time the forwarder asks
    fallback = chooser.fallback(roll, lambda cluster: cluster.name not in down)
    live = [c for c, w in zip(clusters, weights, strict=True) if w > 0 and c.name not in down]
    assert (fallback is None) == (live == [])
    assert fallback is None or fallback in live


# Pinned edges (issue 14) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "wire"),
    [
        ("/a:b/", b"/a:b/"),  # ':' is printable: kept, not %3A
        ("/a%20b/", b"/a%20b/"),  # already encoded: '%' kept, not encoded again
        ("/caf%c3%a9/", b"/caf%c3%a9/"),  # lower-case hex kept as written
        ("/café/", b"/caf%C3%A9/"),
        ("/a~b!$&'()*+,;=@/", b"/a~b!$&'()*+,;=@/"),
    ],
)
def test_pin_prefix_bytes(prefix: str, wire: bytes) -> None:
    from edgeproxy.config.routing import prefix_bytes

    assert prefix_bytes(prefix) == wire


def test_pin_prefix_with_colon_matches_only_the_colon() -> None:
    route = Route("/a:b/", API, strip_prefix=True)
    table = VirtualHostTable(VirtualHost(["x.example"], routes=[route, ROOT]))
    match = table.match(b"/a:b/c?d=1")
    assert match is not None and (match.route, match.forward_path) == (route, b"/c?d=1")
    assert table.route_for(b"/a%3Ab/c") is ROOT  # no decoding: another path
    assert table.route_for(b"/a%3ab/c") is ROOT


def test_pin_percent_encoded_prefix_matches_the_same_bytes_only() -> None:
    route = Route("/a%20b/", API, strip_prefix=True)
    table = VirtualHostTable(VirtualHost(["x.example"], routes=[route, ROOT]))
    match = table.match(b"/a%20b/c?d")
    assert match is not None and (match.route, match.forward_path) == (route, b"/c?d")
    assert table.route_for(b"/a%2520b/c") is ROOT  # not decoded twice
    assert table.route_for(b"/a+b/c") is ROOT
    # Hex digits are compared as bytes: a prefix written in lower case does
    # not match the upper case a client sends, nor the other way round.
    lower = Route("/caf%c3%a9/", API)
    upper = Route("/café/", WEB)
    table = VirtualHostTable(VirtualHost(["x.example"], routes=[lower, upper]))
    assert table.route_for(b"/caf%c3%a9/x") is lower
    assert table.route_for(b"/caf%C3%A9/x") is upper
    assert table.route_for(b"/caf%C3%a9/x") is None


def test_pin_route_prefix_validation() -> None:
    assert Route("/a:b/", API).prefix == "/a:b/"
    assert Route("/a%20b/", API).prefix == "/a%20b/"
    assert Route("/café/", API).prefix == "/café/"
    for bad in ("/a b/", "/a?b", "/a#b", "/a\tb/", "/a\x7fb/"):
        with pytest.raises(ValueError, match="route prefix must be a plain path"):
            Route(bad, API)
    with pytest.raises(ValueError, match="route prefix must start with '/'"):
        Route("a:b/", API)


def test_pin_hosts_at_the_edges_find_their_virtual_host() -> None:
    digits = VirtualHost(["163.com", "*.163.com"], routes=[Route("/", API)])
    unspecified = VirtualHost(["[::]", "::1"], routes=[Route("/", WEB)])
    table = RoutingTable.from_virtual_hosts([digits, unspecified])
    assert unspecified.names == ("::", "::1")
    for raw, vhost in [
        (b"163.com", digits),
        (b"www.163.com:443", digits),
        (b"[::]", unspecified),
        (b"[::]:8443", unspecified),
        (b"::1", unspecified),
        (b"[::1]:8443", unspecified),
        (b"::1:8443", None),  # an address of its own, not ::1 and a port
        (b"a.163", None),
        (b"163.com\xff", None),
    ]:
        found = table.find_virtual_host(normalise_host(raw))
        assert (found.virtual_host if found else None) is vhost, raw
