"""
The cache end to end, one test per requirement of RFC 9111 (HTTP caching),
RFC 5861 (stale-while-revalidate, stale-if-error) and RFC 9211
(Cache-Status): the real ``twistd edgeproxy`` over TLS in front of a backend
whose answers each test scripts, counting what reaches it.

Staleness is made without waiting: an ``Age`` or an old ``Date`` from the
origin ages a response as much as time would (RFC 9111 4.2.3).
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import trustme

from tests.e2e.cachekit import Reply, ScriptedBackend, http_date
from tests.e2e.harness import ProxyProcess, client_context, https_connection

HOST = "cache.example"

CONFIG = """
from edgeproxy.config import Cache, Cluster, Route, VirtualHost

origin = Cluster("origin", endpoints=["{origin}"])
virtual_hosts = [
    VirtualHost(
        ["{host}"],
        routes=[
            Route("/c/", origin, cache=Cache(max_bytes=4 * 2**20, max_object_bytes=2**20)),
            Route("/tiny/", origin, cache=Cache(max_bytes=6500, max_object_bytes=2000)),
            Route("/lock/", origin, cache=Cache(collapse_timeout=1.0, collapse_max_waiters=3)),
            Route("/plain/", origin),
        ],
    ),
]
"""


@dataclass
class Setup:
    proxy: ProxyProcess
    origin: ScriptedBackend
    ctx: ssl.SSLContext

    def conn(self) -> http.client.HTTPSConnection:
        return https_connection(self.proxy.ports["https"], HOST, self.ctx)

    def get(
        self, path: str, headers: dict[str, str] | None = None, method: str = "GET",
        body: bytes | None = None, conn: http.client.HTTPSConnection | None = None,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        own = conn is None
        c = conn or self.conn()
        try:
            c.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            c.putheader("Host", HOST)
            for name, value in (headers or {}).items():
                c.putheader(name, value)
            if body is not None:
                c.putheader("Content-Length", str(len(body)))
            c.endheaders(body)
            response = c.getresponse()
            return response.status, response.headers, response.read()
        finally:
            if own:
                c.close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("cache")
    ca = trustme.CA()
    certs = tmp / "certs"
    certs.mkdir()
    ca.issue_cert(HOST).private_key_and_cert_chain_pem.write_to_path(str(certs / "c.pem"))
    origin = ScriptedBackend().start()
    config = tmp / "sites.py"
    config.write_text(CONFIG.format(origin=origin.address, host=HOST))
    proxy = ProxyProcess(tmp, config, certs).start()
    try:
        yield Setup(proxy, origin, client_context(ca.cert_pem.bytes()))
    finally:
        proxy.stop()
        origin.stop()


def cache_status(headers: http.client.HTTPMessage) -> str:
    values = headers.get_all("Cache-Status") or []
    assert len(values) == 1, values
    return values[0]


def fresh(seconds: int = 600, *more: tuple[str, str]) -> Reply:
    return Reply(headers=[("Cache-Control", f"max-age={seconds}"), *more], body=b"fresh body")


# -- storing and reusing (RFC 9111 3, 4) ---------------------------------------------------


def test_a_fresh_response_is_served_from_cache_1000_times_reaching_the_origin_once(
    setup: Setup,
) -> None:
    setup.origin.script("/c/thousand", fresh())
    conn = setup.conn()
    try:
        for _ in range(1000):
            status, headers, body = setup.get("/c/thousand", conn=conn)
            assert (status, body) == (200, b"fresh body")
    finally:
        conn.close()
    assert setup.origin.count("/c/thousand") == 1


def test_a_miss_says_fwd_miss_and_stored_then_hits_say_hit_with_ttl(setup: Setup) -> None:
    setup.origin.script("/c/status", fresh(600))
    _, first, _ = setup.get("/c/status")
    # The origin's Date has whole seconds: up to a second of apparent age.
    miss, ttl = cache_status(first).rsplit("=", 1)
    assert miss == "edgeproxy; fwd=miss; fwd-status=200; stored; ttl" and 598 <= int(ttl) <= 600
    _, second, _ = setup.get("/c/status")
    status = cache_status(second)
    assert status.startswith("edgeproxy; hit; ttl=")
    assert 590 <= int(status.rsplit("=", 1)[1]) <= 600


def test_age_is_sent_on_every_response_from_cache_4_2_3(setup: Setup) -> None:
    setup.origin.script("/c/age", fresh(600, ("Age", "30")))
    setup.get("/c/age")
    _, headers, _ = setup.get("/c/age")
    assert headers.get_all("Age") is not None and len(headers.get_all("Age")) == 1
    assert 30 <= int(headers["Age"]) <= 40


def test_s_maxage_wins_over_max_age_in_a_shared_cache_5_2_2_10(setup: Setup) -> None:
    setup.origin.script("/c/smax", Reply(headers=[("Cache-Control", "max-age=0, s-maxage=600")]))
    setup.get("/c/smax")
    setup.get("/c/smax")
    assert setup.origin.count("/c/smax") == 1


def test_expires_minus_date_gives_the_freshness_lifetime_4_2_1(setup: Setup) -> None:
    setup.origin.script(
        "/c/expires", Reply(headers=[("Date", http_date()), ("Expires", http_date(600))])
    )
    setup.get("/c/expires")
    _, headers, _ = setup.get("/c/expires")
    assert cache_status(headers).startswith("edgeproxy; hit")
    assert setup.origin.count("/c/expires") == 1


def test_an_invalid_expires_means_already_expired_5_3(setup: Setup) -> None:
    setup.origin.script("/c/expires0", Reply(headers=[("Expires", "0")]))
    setup.get("/c/expires0")
    setup.get("/c/expires0")
    assert setup.origin.count("/c/expires0") == 2


def test_an_age_from_upstream_past_max_age_makes_it_stale_at_once_4_2_3(setup: Setup) -> None:
    setup.origin.script("/c/aged", fresh(60, ("Age", "100")))
    setup.get("/c/aged")
    setup.get("/c/aged")
    assert setup.origin.count("/c/aged") == 2


def test_heuristic_freshness_from_last_modified_for_a_heuristically_cacheable_status_4_2_2(
    setup: Setup,
) -> None:
    setup.origin.script("/c/heur", Reply(headers=[("Last-Modified", http_date(-10 * 86400))]))
    setup.get("/c/heur")
    _, headers, _ = setup.get("/c/heur")
    assert cache_status(headers).startswith("edgeproxy; hit")
    assert setup.origin.count("/c/heur") == 1


def test_no_heuristic_freshness_for_a_status_not_cacheable_by_default_4_2_2(setup: Setup) -> None:
    setup.origin.script(
        "/c/heur302",
        Reply(status=302, headers=[("Location", "/c/x"), ("Last-Modified", http_date(-86400))]),
    )
    setup.get("/c/heur302")
    setup.get("/c/heur302")
    assert setup.origin.count("/c/heur302") == 2


def test_a_status_cacheable_by_default_with_explicit_freshness_is_stored_404(setup: Setup) -> None:
    setup.origin.script("/c/404", Reply(status=404, headers=[("Cache-Control", "max-age=600")]))
    assert setup.get("/c/404")[0] == 404
    status, headers, _ = setup.get("/c/404")
    assert status == 404 and cache_status(headers).startswith("edgeproxy; hit")
    assert setup.origin.count("/c/404") == 1


def test_a_response_without_freshness_or_validator_is_not_stored(setup: Setup) -> None:
    setup.origin.script("/c/none", Reply(status=302, headers=[("Location", "/c/y")]))
    setup.get("/c/none")
    setup.get("/c/none")
    assert setup.origin.count("/c/none") == 2


def test_no_store_in_the_response_is_never_stored_5_2_2_5(setup: Setup) -> None:
    setup.origin.script("/c/nostore", Reply(headers=[("Cache-Control", "no-store, max-age=600")]))
    _, headers, _ = setup.get("/c/nostore")
    assert "fwd=miss" in cache_status(headers) and "stored" not in cache_status(headers)
    setup.get("/c/nostore")
    assert setup.origin.count("/c/nostore") == 2


def test_private_is_not_stored_by_a_shared_cache_5_2_2_7(setup: Setup) -> None:
    setup.origin.script("/c/private", Reply(headers=[("Cache-Control", "private, max-age=600")]))
    setup.get("/c/private")
    setup.get("/c/private")
    assert setup.origin.count("/c/private") == 2


def test_private_with_field_names_stores_the_rest_without_them_5_2_2_7(setup: Setup) -> None:
    setup.origin.script(
        "/c/privfield",
        Reply(
            headers=[
                ("Cache-Control", 'private="X-Secret", max-age=600'),
                ("X-Secret", "session-42"),
                ("X-Public", "yes"),
            ]
        ),
    )
    _, first, _ = setup.get("/c/privfield")
    assert first["X-Secret"] == "session-42"  # the first answer is the origin's own
    _, second, _ = setup.get("/c/privfield")
    assert cache_status(second).startswith("edgeproxy; hit")
    assert second["X-Secret"] is None and second["X-Public"] == "yes"


def test_no_cache_response_is_stored_but_revalidated_on_every_use_5_2_2_4(setup: Setup) -> None:
    setup.origin.script(
        "/c/nocache",
        Reply(headers=[("Cache-Control", "no-cache"), ("ETag", '"v1"')], body=b"v1 body"),
        Reply(status=304, headers=[("ETag", '"v1"')]),
    )
    setup.get("/c/nocache")
    status, headers, body = setup.get("/c/nocache")
    assert (status, body) == (200, b"v1 body")
    assert "fwd=stale; fwd-status=304" in cache_status(headers)
    assert setup.origin.requests("/c/nocache")[1].headers["if-none-match"] == '"v1"'


def test_no_cache_with_field_names_revalidates_and_never_stores_those_fields_5_2_2_4(
    setup: Setup,
) -> None:
    setup.origin.script(
        "/c/nocache-field",
        Reply(
            headers=[
                ("Cache-Control", 'max-age=600, no-cache="X-Session"'),
                ("ETag", '"f1"'),
                ("X-Session", "visitor-1"),
            ],
            body=b"shared",
        ),
        Reply(status=304, headers=[("ETag", '"f1"')]),
    )
    _, first, _ = setup.get("/c/nocache-field")
    assert first["X-Session"] == "visitor-1"
    status, headers, body = setup.get("/c/nocache-field")
    assert (status, body) == (200, b"shared")
    assert "fwd=stale; fwd-status=304" in cache_status(headers)
    assert headers["X-Session"] is None
    assert setup.origin.requests("/c/nocache-field")[1].headers["if-none-match"] == '"f1"'


def test_proxy_revalidate_forbids_serving_stale_5_2_2_8(setup: Setup) -> None:
    setup.origin.script(
        "/c/proxy-reval",
        Reply(
            headers=[("Cache-Control", "max-age=60, proxy-revalidate"), ("Age", "100")],
            body=b"old",
        ),
        Reply(headers=[("Cache-Control", "max-age=60")], body=b"new"),
    )
    setup.get("/c/proxy-reval")
    status, _, body = setup.get("/c/proxy-reval", {"Cache-Control": "max-stale=1000"})
    assert (status, body) == (200, b"new")
    assert setup.origin.count("/c/proxy-reval") == 2


def test_a_request_with_authorization_is_not_stored_without_public_3_5(setup: Setup) -> None:
    setup.origin.script("/c/auth", fresh())
    setup.get("/c/auth", {"Authorization": "Bearer a"})
    setup.get("/c/auth", {"Authorization": "Bearer a"})
    assert setup.origin.count("/c/auth") == 2


def test_a_request_with_authorization_is_stored_when_public_3_5(setup: Setup) -> None:
    setup.origin.script("/c/authpub", Reply(headers=[("Cache-Control", "public, max-age=600")]))
    setup.get("/c/authpub", {"Authorization": "Bearer a"})
    setup.get("/c/authpub", {"Authorization": "Bearer b"})
    assert setup.origin.count("/c/authpub") == 1


def test_connection_listed_and_hop_by_hop_headers_are_not_stored_3_1(setup: Setup) -> None:
    setup.origin.script(
        "/c/hop",
        fresh(600, ("Connection", "X-Hop"), ("X-Hop", "secret"), ("Keep-Alive", "timeout=5")),
    )
    setup.get("/c/hop")
    _, headers, _ = setup.get("/c/hop")
    assert cache_status(headers).startswith("edgeproxy; hit")
    assert headers["X-Hop"] is None and headers["Keep-Alive"] is None


def test_a_1xx_response_is_never_stored_and_a_hit_has_none(setup: Setup) -> None:
    setup.origin.script("/c/hints", Reply(interim=[103], headers=[("Cache-Control", "max-age=600")]))
    # (http.client takes a 103 for the final response: raw sockets, read to the end.)
    first = raw_get(setup, "/c/hints")
    assert first.startswith(b"HTTP/1.1 103 Early Hints\r\n") and b"\r\n\r\nHTTP/1.1 200 OK" in first
    hit = raw_get(setup, "/c/hints")
    assert hit.startswith(b"HTTP/1.1 200 OK\r\n") and b"103" not in hit
    assert b"Cache-Status: edgeproxy; hit" in hit
    assert setup.origin.count("/c/hints") == 1


def test_vary_keeps_one_variant_per_selecting_header_set_4_1(setup: Setup) -> None:
    setup.origin.script("/c/vary", fresh(600, ("Vary", "Accept-Language")))
    for lang in ("en", "de", "en", "de", "EN"):
        setup.get("/c/vary", {"Accept-Language": lang})
    # en and de stored once each; "EN" is another value (no normalisation of case).
    assert [s.headers.get("accept-language") for s in setup.origin.requests("/c/vary")] == [
        "en",
        "de",
        "EN",
    ]


def test_vary_star_is_never_reused_4_1(setup: Setup) -> None:
    setup.origin.script("/c/varystar", fresh(600, ("Vary", "*")))
    setup.get("/c/varystar")
    setup.get("/c/varystar")
    assert setup.origin.count("/c/varystar") == 2


# -- request directives (RFC 9111 5.2.1) -----------------------------------------------------


def test_request_no_cache_forwards_even_when_fresh_5_2_1_4(setup: Setup) -> None:
    setup.origin.script("/c/rq-nocache", fresh(600, ("ETag", '"a"')))
    setup.get("/c/rq-nocache")
    _, headers, _ = setup.get("/c/rq-nocache", {"Cache-Control": "no-cache"})
    assert "fwd=request" in cache_status(headers)
    assert setup.origin.count("/c/rq-nocache") == 2


def test_request_no_store_stores_nothing_5_2_1_5(setup: Setup) -> None:
    setup.origin.script("/c/rq-nostore", fresh())
    setup.get("/c/rq-nostore", {"Cache-Control": "no-store"})
    setup.get("/c/rq-nostore")
    assert setup.origin.count("/c/rq-nostore") == 2


def test_request_max_age_refuses_an_older_response_5_2_1_1(setup: Setup) -> None:
    setup.origin.script("/c/rq-maxage", fresh(600, ("Age", "100")))
    setup.get("/c/rq-maxage")
    setup.get("/c/rq-maxage", {"Cache-Control": "max-age=50"})
    assert setup.origin.count("/c/rq-maxage") == 2
    setup.get("/c/rq-maxage", {"Cache-Control": "max-age=500"})
    assert setup.origin.count("/c/rq-maxage") == 2


def test_request_max_stale_accepts_a_stale_response_5_2_1_2(setup: Setup) -> None:
    setup.origin.script("/c/rq-maxstale", fresh(60, ("Age", "100")), Reply(body=b"second"))
    setup.get("/c/rq-maxstale")
    status, headers, body = setup.get("/c/rq-maxstale", {"Cache-Control": "max-stale=1000"})
    assert body == b"fresh body" and cache_status(headers).startswith("edgeproxy; hit")
    assert setup.origin.count("/c/rq-maxstale") == 1


def test_request_min_fresh_wants_that_much_freshness_left_5_2_1_3(setup: Setup) -> None:
    setup.origin.script("/c/rq-minfresh", fresh(100))
    setup.get("/c/rq-minfresh")
    setup.get("/c/rq-minfresh", {"Cache-Control": "min-fresh=50"})
    assert setup.origin.count("/c/rq-minfresh") == 1
    setup.get("/c/rq-minfresh", {"Cache-Control": "min-fresh=500"})
    assert setup.origin.count("/c/rq-minfresh") == 2


def test_only_if_cached_is_answered_504_when_nothing_is_stored_5_2_1_7(setup: Setup) -> None:
    status, headers, _ = setup.get("/c/oic-missing", {"Cache-Control": "only-if-cached"})
    assert status == 504
    assert setup.origin.count("/c/oic-missing") == 0
    setup.origin.script("/c/oic", fresh())
    setup.get("/c/oic")
    status, _, body = setup.get("/c/oic", {"Cache-Control": "only-if-cached"})
    assert (status, body) == (200, b"fresh body")


# -- validation (RFC 9111 4.3) -------------------------------------------------------------------


def test_a_stale_response_is_revalidated_and_a_304_updates_its_headers_4_3_4(
    setup: Setup,
) -> None:
    last_modified = http_date(-86400)
    setup.origin.script(
        "/c/reval",
        Reply(
            headers=[
                ("Cache-Control", "max-age=60"),
                ("Age", "100"),
                ("ETag", '"r1"'),
                ("Last-Modified", last_modified),
                ("X-Version", "old"),
            ],
            body=b"stored body",
        ),
        Reply(status=304, headers=[("Cache-Control", "max-age=600"), ("X-Version", "new")]),
    )
    setup.get("/c/reval")
    status, headers, body = setup.get("/c/reval")
    assert (status, body) == (200, b"stored body")
    assert headers["X-Version"] == "new"
    assert cache_status(headers).startswith("edgeproxy; fwd=stale; fwd-status=304")
    sent = setup.origin.requests("/c/reval")[1].headers
    assert sent["if-none-match"] == '"r1"' and sent["if-modified-since"] == last_modified
    # Fresh again with the 304's max-age: the next one is a hit.
    _, third, _ = setup.get("/c/reval")
    assert cache_status(third).startswith("edgeproxy; hit") and third["X-Version"] == "new"
    assert setup.origin.count("/c/reval") == 2


def test_a_clients_if_none_match_is_answered_304_from_cache_weak_comparison(setup: Setup) -> None:
    setup.origin.script("/c/inm", fresh(600, ("ETag", '"e1"')))
    setup.get("/c/inm")
    status, headers, body = setup.get("/c/inm", {"If-None-Match": 'W/"e1"'})
    assert (status, body) == (304, b"")
    assert headers["ETag"] == '"e1"' and cache_status(headers).startswith("edgeproxy; hit")
    status, _, body = setup.get("/c/inm", {"If-None-Match": '"other"'})
    assert (status, body) == (200, b"fresh body")
    assert setup.origin.count("/c/inm") == 1


def test_a_clients_if_modified_since_is_answered_304_from_cache(setup: Setup) -> None:
    setup.origin.script("/c/ims", fresh(600, ("Last-Modified", http_date(-3600))))
    setup.get("/c/ims")
    assert setup.get("/c/ims", {"If-Modified-Since": http_date(-60)})[0] == 304
    assert setup.get("/c/ims", {"If-Modified-Since": http_date(-7200)})[0] == 200
    assert setup.origin.count("/c/ims") == 1


def test_a_miss_asks_the_origin_for_the_whole_response_not_the_clients_condition(
    setup: Setup,
) -> None:
    setup.origin.script("/c/miss-inm", fresh(600, ("ETag", '"m"')))
    status, _, _ = setup.get("/c/miss-inm", {"If-None-Match": '"m"'})
    assert status == 304  # answered from what was just stored
    assert "if-none-match" not in setup.origin.requests("/c/miss-inm")[0].headers
    assert setup.get("/c/miss-inm")[2] == b"fresh body"


# -- RFC 5861 --------------------------------------------------------------------------------


def test_stale_while_revalidate_serves_stale_and_refreshes_once_in_the_background(
    setup: Setup,
) -> None:
    setup.origin.script(
        "/c/swr",
        Reply(
            headers=[("Cache-Control", "max-age=1, stale-while-revalidate=600"), ("Age", "5")],
            body=b"old",
        ),
        Reply(headers=[("Cache-Control", "max-age=600")], body=b"new", delay=0.3),
    )
    setup.get("/c/swr")
    results = [setup.get("/c/swr") for _ in range(3)]
    assert [body for _, _, body in results] == [b"old", b"old", b"old"]
    assert "stale-while-revalidate" in cache_status(results[0][1])
    deadline = time.monotonic() + 5
    while setup.get("/c/swr")[2] != b"new":
        assert time.monotonic() < deadline, "the background refresh never landed"
        time.sleep(0.05)
    assert setup.origin.count("/c/swr") == 2


def test_stale_if_error_serves_stale_when_the_origin_answers_5xx(setup: Setup) -> None:
    setup.origin.script(
        "/c/sie",
        Reply(
            headers=[("Cache-Control", "max-age=1, stale-if-error=600"), ("Age", "5")],
            body=b"kept",
        ),
        Reply(status=503, body=b"down"),
    )
    setup.get("/c/sie")
    status, headers, body = setup.get("/c/sie")
    assert (status, body) == (200, b"kept")
    assert "stale-if-error" in cache_status(headers) and "fwd-status=503" in cache_status(headers)


def test_stale_if_error_serves_stale_when_the_origin_is_unreachable(setup: Setup) -> None:
    setup.origin.script(
        "/c/sie-drop",
        Reply(
            headers=[("Cache-Control", "max-age=1, stale-if-error=600"), ("Age", "5")],
            body=b"kept",
        ),
        Reply(drop=True),
    )
    setup.get("/c/sie-drop")
    status, _, body = setup.get("/c/sie-drop")
    assert (status, body) == (200, b"kept")


def test_must_revalidate_forbids_stale_if_error_5_2_2_2(setup: Setup) -> None:
    setup.origin.script(
        "/c/mr",
        Reply(
            headers=[
                ("Cache-Control", "max-age=1, must-revalidate, stale-if-error=600"),
                ("Age", "5"),
            ]
        ),
        Reply(status=503, body=b"down"),
    )
    setup.get("/c/mr")
    status, _, body = setup.get("/c/mr")
    assert (status, body) == (503, b"down")


# -- collapsing --------------------------------------------------------------------------------


def test_100_concurrent_misses_reach_the_origin_once(setup: Setup) -> None:
    setup.origin.script("/c/herd", Reply(headers=[("Cache-Control", "max-age=600")], delay=1.5))
    with ThreadPoolExecutor(max_workers=100) as pool:
        results = list(pool.map(lambda _: setup.get("/c/herd"), range(100)))
    assert {(status, body) for status, _, body in results} == {(200, b"body")}
    assert setup.origin.count("/c/herd") == 1
    assert sum("collapsed" in cache_status(h) for _, h, _ in results) >= 90


def test_waiters_of_an_uncacheable_response_go_upstream_themselves(setup: Setup) -> None:
    setup.origin.script("/c/herd-private", Reply(headers=[("Cache-Control", "private")], delay=0.3))
    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(lambda _: setup.get("/c/herd-private"), range(10)))
    assert {status for status, _, _ in results} == {200}
    assert setup.origin.count("/c/herd-private") == 10


def test_collapsing_is_bounded_in_waiters(setup: Setup) -> None:
    # Route /lock/ lets 3 wait: of 10 concurrent misses, at least 6 go upstream.
    setup.origin.script("/lock/many", Reply(headers=[("Cache-Control", "max-age=600")], delay=0.5))
    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(lambda _: setup.get("/lock/many"), range(10)))
    assert {status for status, _, _ in results} == {200}
    assert setup.origin.count("/lock/many") >= 6


def test_collapsing_is_bounded_in_time(setup: Setup) -> None:
    # /lock/ waits 1 s: a 3 s origin makes the waiter go upstream itself.
    setup.origin.script("/lock/slow", Reply(headers=[("Cache-Control", "max-age=600")], delay=3))
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(setup.get, "/lock/slow")
        time.sleep(0.2)
        second = pool.submit(setup.get, "/lock/slow")
        assert first.result(10)[0] == 200 and second.result(10)[0] == 200
    assert setup.origin.count("/lock/slow") == 2


# -- invalidation (RFC 9111 4.4) and HEAD ----------------------------------------------------------


def test_a_successful_unsafe_request_invalidates_its_target_and_location_4_4(
    setup: Setup,
) -> None:
    for path in ("/c/inv", "/c/inv-loc", "/c/inv-other"):
        setup.origin.script(path, fresh())
        setup.get(path)
    setup.origin.script(
        "/c/inv-post",
        Reply(
            status=201,
            headers=[
                ("Location", "/c/inv-loc"),
                ("Content-Location", "https://elsewhere.example/c/inv-other"),
            ],
        ),
    )
    setup.origin.script("/c/inv", Reply(status=204, body=b""), fresh())
    assert setup.get("/c/inv", method="POST", body=b"x")[0] == 204
    setup.get("/c/inv-post", method="PUT", body=b"y")
    for path in ("/c/inv", "/c/inv-loc", "/c/inv-other"):
        setup.get(path)
    assert setup.origin.count("/c/inv") == 3  # GET, POST, GET again
    assert setup.origin.count("/c/inv-loc") == 2  # named by Location on the same host
    assert setup.origin.count("/c/inv-other") == 1  # another host: untouched


def test_a_failed_unsafe_request_invalidates_nothing(setup: Setup) -> None:
    setup.origin.script("/c/inv-fail", fresh())
    setup.get("/c/inv-fail")
    setup.origin.script("/c/inv-fail", Reply(status=500, body=b"no"), fresh())
    setup.get("/c/inv-fail", method="DELETE")
    setup.get("/c/inv-fail")
    assert setup.origin.count("/c/inv-fail") == 2


def test_head_is_answered_from_a_stored_get(setup: Setup) -> None:
    setup.origin.script("/c/head", fresh())
    setup.get("/c/head")
    status, headers, body = setup.get("/c/head", method="HEAD")
    assert (status, body) == (200, b"")
    assert headers["Content-Length"] == str(len(b"fresh body"))
    assert cache_status(headers).startswith("edgeproxy; hit")
    assert [s.method for s in setup.origin.requests("/c/head")] == ["GET"]


# -- streaming ----------------------------------------------------------------------------------


def test_a_response_is_stored_while_it_streams_to_the_first_client(setup: Setup) -> None:
    release = threading.Event()
    setup.origin.script(
        "/c/stream",
        Reply(
            headers=[("Cache-Control", "max-age=600")],
            chunks=[b"first-", b"second"],
            hold=release,
        ),
    )
    sock = raw_socket(setup)
    try:
        sock.sendall(b"GET /c/stream HTTP/1.1\r\nHost: %s\r\n\r\n" % HOST.encode())
        seen = b""
        deadline = time.monotonic() + 5
        while b"first-" not in seen:
            assert time.monotonic() < deadline, seen
            seen += sock.recv(65536)
        release.set()  # the client had its first bytes before the origin finished
        while not seen.endswith(b"0\r\n\r\n"):
            assert time.monotonic() < deadline, seen
            seen += sock.recv(65536)
    finally:
        sock.close()
    status, headers, body = setup.get("/c/stream")
    assert body == b"first-second" and cache_status(headers).startswith("edgeproxy; hit")


def test_a_client_that_aborts_leaves_no_half_object(setup: Setup) -> None:
    release = threading.Event()
    setup.origin.script(
        "/c/abort",
        Reply(
            headers=[("Cache-Control", "max-age=600")],
            chunks=[b"a" * 1000, b"b" * 1000],
            hold=release,
        ),
        fresh(),
    )
    sock = raw_socket(setup)
    sock.sendall(b"GET /c/abort HTTP/1.1\r\nHost: %s\r\n\r\n" % HOST.encode())
    seen = b""
    while b"aaa" not in seen:
        chunk = sock.recv(65536)
        assert chunk, seen
        seen += chunk
    sock.close()
    time.sleep(0.2)
    release.set()
    status, _, body = setup.get("/c/abort")
    assert body == b"fresh body"
    assert setup.origin.count("/c/abort") == 2


def test_a_truncated_upstream_body_is_never_stored(setup: Setup) -> None:
    setup.origin.script(
        "/c/trunc",
        Reply(headers=[("Cache-Control", "max-age=600")], body=b"x" * 100_000, truncate=True),
        fresh(),
    )
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        setup.get("/c/trunc")
    assert setup.get("/c/trunc")[2] == b"fresh body"


def test_a_body_over_max_object_bytes_streams_through_uncached(setup: Setup) -> None:
    big = b"z" * (1100 * 1024)
    setup.origin.script("/c/big", Reply(headers=[("Cache-Control", "max-age=600")], body=big))
    status, headers, body = setup.get("/c/big")
    assert body == big and "detail=too-large" in cache_status(headers)
    assert setup.get("/c/big")[2] == big
    assert setup.origin.count("/c/big") == 2


def test_a_large_stored_body_is_served_whole(setup: Setup) -> None:
    body = bytes(range(256)) * 2400  # 600 KiB: sent from the store in chunks
    setup.origin.script("/c/large", Reply(headers=[("Cache-Control", "max-age=600")], body=body))
    assert setup.get("/c/large")[2] == body
    _, headers, again = setup.get("/c/large")
    assert again == body and cache_status(headers).startswith("edgeproxy; hit")


def test_the_store_evicts_the_least_recently_used_within_max_bytes(setup: Setup) -> None:
    for name in ("one", "two", "three"):
        setup.origin.script(
            f"/tiny/{name}",
            Reply(headers=[("Cache-Control", "max-age=600")], body=f"{name:<5}".encode() * 300),
        )
    setup.get("/tiny/one")
    setup.get("/tiny/two")
    setup.get("/tiny/one")  # one is now the most recently used
    setup.get("/tiny/three")  # 6500 bytes hold two of them (1 KiB of overhead each): "two" goes
    for name in ("one", "three", "two"):  # (the last one, a miss, evicts again)
        setup.get(f"/tiny/{name}")
    counts = {name: setup.origin.count(f"/tiny/{name}") for name in ("one", "two", "three")}
    assert counts == {"one": 1, "two": 2, "three": 1}


def test_a_route_without_cache_is_not_cached(setup: Setup) -> None:
    setup.origin.script("/plain/x", fresh())
    _, headers, _ = setup.get("/plain/x")
    setup.get("/plain/x")
    assert headers["Cache-Status"] is None
    assert setup.origin.count("/plain/x") == 2


# -- helpers ---------------------------------------------------------------------------------


def raw_socket(setup: Setup) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", setup.proxy.ports["https"]), 5)
    return setup.ctx.wrap_socket(sock, server_hostname=HOST)


def raw_get(setup: Setup, path: str) -> bytes:
    sock = raw_socket(setup)
    try:
        sock.sendall(
            b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
            % (path.encode(), HOST.encode())
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data
    finally:
        sock.close()



def test_the_access_log_says_what_the_cache_did(setup: Setup) -> None:
    setup.origin.script("/c/logged", fresh())
    setup.get("/c/logged")
    setup.get("/c/logged")
    setup.get("/c/logged", method="POST", body=b"x")
    start = 0
    for outcome in ("miss", "hit", "bypass"):
        line = setup.proxy.wait_for_output(rf'"\w+ /c/logged HTTP/1.1" .* cache={outcome}$', start=start)
        start = setup.proxy.output.index(line) + 1
