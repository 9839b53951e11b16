"""
The admin page (a pure function of the status document) and the admin
resources on a real :class:`EdgeProxyService` driven by a memory reactor.
"""

from __future__ import annotations

import copy
import datetime
import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import trustme
from twisted.internet.testing import MemoryReactorClock
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest

from edgeproxy import __version__
from edgeproxy.app.service import EdgeProxyService
from edgeproxy.config.settings import Settings
from edgeproxy.ops.admin import PAGE_CSP, readiness, status
from edgeproxy.ops.adminpage import render_page

HOSTILE = '<script>alert("x")</script>'


def _status() -> dict[str, Any]:
    return {
        "process": {"pid": 4242, "uptime_seconds": 3725.5, "started_at": 1000.0, "version": "9.9"},
        "ready": {"ready": True, "reasons": []},
        "listeners": [
            {"kind": "https", "description": "tcp:8443", "address": "0.0.0.0:8443"},
            {"kind": "admin", "description": "tcp:9901:interface=127.0.0.1", "address": None},
        ],
        "config": {"files": ["/etc/edgeproxy/sites/shop.py"]},
        "virtual_hosts": [
            {
                "names": ["shop.example", "*.shop.example"],
                "routes": [
                    {
                        "prefix": "/api/",
                        "clusters": ["api"],
                        "split": None,
                        "strip_prefix": True,
                        "plain_http": False,
                    },
                    {
                        "prefix": "/",
                        "clusters": ["web-v1", "web-v2"],
                        "split": [
                            {"cluster": "web-v1", "weight": 90},
                            {"cluster": "web-v2", "weight": 10},
                        ],
                        "strip_prefix": False,
                        "plain_http": False,
                    },
                ],
            }
        ],
        "clusters": {
            "api": {
                "policy": "RoundRobin",
                "in_flight": 1,
                "pending": 0,
                "retries_in_flight": 0,
                "retries": 3,
                "retries_refused_by_budget": 0,
                "overflows": {},
                "available_endpoints": 1,
                "endpoints": [
                    {
                        "endpoint": "10.0.0.1:8080",
                        "weight": 1,
                        "available": True,
                        "in_flight": 1,
                        "requests": 1234,
                        "failures": 2,
                        "health": {
                            "state": "healthy",
                            "consecutive_passes": 5,
                            "consecutive_failures": 0,
                            "last_cause": None,
                            "last_check_at": 4700.0,
                        },
                        "breaker": {
                            "state": "closed",
                            "consecutive_failures": 0,
                            "ejections": 0,
                            "ejected_for": None,
                            "last_cause": None,
                            "multiplier": 0,
                        },
                    },
                    {
                        "endpoint": "10.0.0.2:8080",
                        "weight": 1,
                        "available": False,
                        "in_flight": 0,
                        "requests": 77,
                        "failures": 31,
                        "health": None,
                        "breaker": {
                            "state": "open",
                            "consecutive_failures": 3,
                            "ejections": 4,
                            "ejected_for": 12.25,
                            "last_cause": "connect refused",
                            "multiplier": 2,
                        },
                    },
                ],
                "recent_transitions": [
                    {
                        "endpoint": "api/10.0.0.2:8080",
                        "machine": "breaker",
                        "old": "closed",
                        "new": "open",
                        "cause": "3 consecutive failures",
                        "at": 4695.5,
                    }
                ],
            }
        },
        "certificates": [
            {
                "source": "/certs/shop.pem",
                "names": ["shop.example", "*.shop.example"],
                "not_before": "2025-01-01T00:00:00+00:00",
                "not_after": "2026-01-01T00:00:00+00:00",
                "days_to_expiry": 200,
                "expired": False,
                "default": False,
            },
            {
                "source": "/certs/soon.pem",
                "names": ["soon.example"],
                "not_before": "2025-01-01T00:00:00+00:00",
                "not_after": "2025-06-10T00:00:00+00:00",
                "days_to_expiry": 5,
                "expired": False,
                "default": False,
            },
            {
                "source": "/certs/default.pem",
                "names": ["old.example"],
                "not_before": "2024-01-01T00:00:00+00:00",
                "not_after": "2024-06-01T00:00:00+00:00",
                "days_to_expiry": -3,
                "expired": True,
                "default": True,
            },
        ],
        "certificate_problems": [],
    }


class _Page(HTMLParser):
    """What a browser would see: text, elements, and rows with their classes."""

    def __init__(self, markup: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.rows: list[tuple[str, list[str]]] = []
        self._row: tuple[str, list[str]] | None = None
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag == "tr":
            self._row = (attributes.get("class") or "", [])
            self.rows.append(self._row)

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._row = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._row is not None:
            self._row[1].append(data)

    @property
    def all_text(self) -> str:
        return "".join(self.text)

    def row_with(self, needle: str) -> tuple[str, str]:
        for css, texts in self.rows:
            if needle in "".join(texts):
                return css, "".join(texts)
        raise AssertionError(f"no row containing {needle!r}")


def test_page_is_a_complete_refreshing_document_without_scripts() -> None:
    markup = render_page(_status())
    page = _Page(markup)
    assert markup.startswith("<!DOCTYPE html>")
    tags = [tag for tag, _ in page.tags]
    assert "script" not in tags
    assert ("meta", {"http-equiv": "refresh", "content": "5"}) in page.tags
    # No external assets: no stylesheet links, images or sources anywhere.
    assert "link" not in tags and "img" not in tags
    assert all(not attrs.get("src") for _, attrs in page.tags)
    assert "style" in tags


def test_page_shows_summary_routes_clusters_and_certificates() -> None:
    page = _Page(render_page(_status()))
    text = page.all_text
    for expected in [
        "pid",
        "4242",
        "1h 02m",  # uptime 3725 s
        "9.9",
        "0.0.0.0:8443",
        "not bound",  # the admin listener in the fixture has no address
        "/etc/edgeproxy/sites/shop.py",
        "shop.example",
        "*.shop.example",
        "/api/",
        "strip prefix",
        "web-v1 90",
        "web-v2 10",
        "RoundRobin",
    ]:
        assert expected in text, expected
    css, row = page.row_with("10.0.0.1:8080")
    assert css == ""
    assert "available" in row and "unavailable" not in row
    assert "health healthy" in row and "breaker closed" in row
    assert "1234" in row
    css, row = page.row_with("10.0.0.2:8080")
    assert css == "bad"
    assert "unavailable" in row and "breaker open" in row and "12.2" in row
    assert "77" in row and "31" in row and "4" in row  # requests, failures, ejections
    # The last transition, with how long ago it was (now = 1000 + 3725.5).
    assert "breaker closed → open: 3 consecutive failures" in row
    assert "(30s ago)" in row


def test_endpoint_without_transitions_falls_back_to_the_machines_last_cause() -> None:
    document = _status()
    document["clusters"]["api"]["recent_transitions"] = []
    css, row = _Page(render_page(document)).row_with("10.0.0.2:8080")
    assert "breaker: connect refused" in row


def test_expiry_is_highlighted_when_close_or_past() -> None:
    page = _Page(render_page(_status()))
    css, row = page.row_with("shop.example, ")
    assert css == "" and "200 days" in row and "/certs/shop.pem" in row
    css, row = page.row_with("soon.example")
    assert css == "warn" and "5 days" in row
    css, row = page.row_with("old.example")
    assert css == "bad" and "expired 3 days ago" in row and "default" in row


@pytest.mark.parametrize(
    ("days", "expired", "css", "text"),
    [
        (14, False, "", "14 days"),
        (13, False, "warn", "13 days"),
        (1, False, "warn", "1 day"),
        (0, False, "warn", "0 days"),
        (0, True, "bad", "expired"),
        (-1, True, "bad", "expired 1 days ago"),
    ],
)
def test_expiry_boundaries(days: int, expired: bool, css: str, text: str) -> None:
    document = _status()
    document["certificates"] = [
        {
            "source": "/certs/x.pem",
            "names": ["x.example"],
            "not_before": "2025-01-01T00:00:00+00:00",
            "not_after": "2025-06-10T00:00:00+00:00",
            "days_to_expiry": days,
            "expired": expired,
            "default": False,
        }
    ]
    got_css, row = _Page(render_page(document)).row_with("x.example")
    assert got_css == css
    assert text in row


def test_hostile_names_are_escaped_everywhere() -> None:
    document = _status()
    api = document["clusters"].pop("api")
    document["clusters"][HOSTILE] = api
    api["endpoints"][1]["breaker"]["last_cause"] = HOSTILE
    api["recent_transitions"] = []
    route = document["virtual_hosts"][0]["routes"][0]
    route["clusters"] = [HOSTILE]
    route["prefix"] = "/<b>&\"'/"
    document["virtual_hosts"][0]["names"] = ['"><img src=x onerror=alert(1)>']
    document["config"]["files"] = ["/tmp/</code><script>x</script>.py"]
    document["certificates"][0]["source"] = HOSTILE
    document["certificates"][0]["names"] = ["<i>evil</i>"]
    document["certificate_problems"] = [HOSTILE]
    document["ready"] = {"ready": False, "reasons": [HOSTILE]}
    document["listeners"][0]["description"] = HOSTILE
    markup = render_page(document)
    page = _Page(markup)
    tags = {tag for tag, _ in page.tags}
    assert "script" not in tags
    assert "img" not in tags
    assert "i" not in tags and "b" not in tags
    assert all(not any(k.startswith("on") for k in attrs) for _, attrs in page.tags)
    assert "<script>" not in markup
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in markup
    # ...and the operator still reads the names as they are.
    text = page.all_text
    assert text.count(HOSTILE) >= 6
    assert "/<b>&\"'/" in text
    assert "<i>evil</i>" in text
    assert '"><img src=x onerror=alert(1)>' in text


def test_empty_sections_say_so() -> None:
    document = _status()
    document["virtual_hosts"] = []
    document["clusters"] = {}
    document["certificates"] = []
    document["listeners"] = []
    document["config"]["files"] = []
    text = _Page(render_page(document)).all_text
    assert "No virtual hosts configured." in text
    assert "No clusters." in text
    assert "No certificates loaded." in text
    assert "No listeners." in text
    assert "No configuration files." in text


def test_minimal_document_renders() -> None:
    # Older or partial documents (e.g. no process section) still render.
    text = _Page(render_page({})).all_text
    assert "not ready" in text and "No clusters." in text


def test_not_ready_shows_reasons() -> None:
    document = _status()
    document["ready"] = {"ready": False, "reasons": ["https listener tcp:8443 is not bound"]}
    text = _Page(render_page(document)).all_text
    assert "not ready" in text
    assert "https listener tcp:8443 is not bound" in text


def test_render_does_not_mutate_the_document() -> None:
    document = _status()
    before = copy.deepcopy(document)
    render_page(document)
    assert document == before


# -- the admin resources on a real service -------------------------------------------------

CONFIG = """
from edgeproxy.config import Cluster, HealthCheck, Route, VirtualHost

api = Cluster("api", endpoints=["127.0.0.1:9"])
# Idle: defined, used by no route (the other side of a blue/green pair).
spare = Cluster("spare", endpoints=["127.0.0.1:19"], health_check=HealthCheck(interval=1.0))
virtual_hosts = [VirtualHost(["app.example"], routes=[Route("/", api)])]
"""


@pytest.fixture
def proxy(tmp_path: Path) -> EdgeProxyService:
    (tmp_path / "site.py").write_text(CONFIG)
    certs = tmp_path / "certs"
    certs.mkdir()
    ca = trustme.CA()
    ca.issue_cert("app.example").private_key_and_cert_chain_pem.write_to_path(
        str(certs / "app.pem")
    )
    reactor = MemoryReactorClock()
    reactor.advance(datetime.datetime.now(tz=datetime.UTC).timestamp())
    settings = Settings(
        config=str(tmp_path / "site.py"),
        certs=str(certs),
        https=("tcp:0:interface=127.0.0.1",),
        http=("tcp:0:interface=127.0.0.1",),
        admin="tcp:0:interface=127.0.0.1",
    )
    return EdgeProxyService(settings, reactor)


def _get(site: Site, path: bytes) -> DummyRequest:
    request = DummyRequest(path.lstrip(b"/").split(b"/"))
    request.uri = path
    resource = site.getResourceFor(request)
    body = resource.render(request)
    assert isinstance(body, bytes)
    request.write(body)
    request.finish()
    return request


def _admin_site(proxy: EdgeProxyService) -> Site:
    from edgeproxy.app.service import ListenerService

    for child in proxy:
        if isinstance(child, ListenerService) and child.kind == "admin":
            factory = child._factory
            assert isinstance(factory, Site)
            return factory
    raise AssertionError("no admin listener")


def test_readiness_follows_listeners_and_the_first_certificate_scan(
    proxy: EdgeProxyService,
) -> None:
    ready, reasons = readiness(proxy)
    assert not ready
    assert "certificate directory not scanned yet" in reasons
    assert "https listener tcp:0:interface=127.0.0.1 is not bound" in reasons
    site = _admin_site(proxy)
    request = _get(site, b"/readyz")
    assert request.responseCode == 503
    assert b"".join(request.written).startswith(b"not ready\n")

    proxy.privilegedStartService()
    proxy.startService()
    try:
        assert readiness(proxy) == (True, [])
        request = _get(site, b"/readyz")
        # Never set: twisted.web's default, 200 (a DummyRequest shows only an
        # explicit setResponseCode).
        assert request.responseCode is None
        assert b"".join(request.written) == b"ready\n"
        assert b"".join(_get(site, b"/healthz").written) == b"ok\n"
    finally:
        proxy.stopService()
    assert not readiness(proxy)[0]


def test_status_document_and_page(proxy: EdgeProxyService) -> None:
    proxy.privilegedStartService()
    proxy.startService()
    try:
        proxy.reactor.advance(90)
        document = status(proxy, started=proxy.reactor.seconds() - 90)
        site = _admin_site(proxy)
        served = json.loads(b"".join(_get(site, b"/status").written))
        page = _get(site, b"/")
    finally:
        proxy.stopService()
    assert set(document) >= {
        "process",
        "ready",
        "listeners",
        "config",
        "virtual_hosts",
        "clusters",
        "certificates",
    }
    assert set(served) == set(document)
    assert document["process"]["version"] == __version__
    assert document["process"]["uptime_seconds"] == 90
    assert isinstance(document["process"]["pid"], int)
    assert [entry["kind"] for entry in document["listeners"]] == ["https", "http", "admin"]
    assert all(entry["address"] is not None for entry in document["listeners"])
    (cert,) = document["certificates"]
    assert cert["names"] == ["app.example"]
    assert {"not_before", "not_after", "days_to_expiry", "default", "source"} <= set(cert)
    # trustme certificates are valid for about ten years.
    assert cert["days_to_expiry"] > 3000 and cert["expired"] is False
    assert document["clusters"]["api"]["endpoints"][0]["endpoint"] == "127.0.0.1:9"
    assert document["virtual_hosts"][0]["routes"][0]["split"] is None

    assert page.responseHeaders.getRawHeaders(b"content-type") == [b"text/html; charset=utf-8"]
    assert page.responseHeaders.getRawHeaders(b"cache-control") == [b"no-store"]
    assert page.responseHeaders.getRawHeaders(b"content-security-policy") == [PAGE_CSP]
    text = _Page(b"".join(page.written).decode("utf-8")).all_text
    assert "127.0.0.1:9" in text and "app.example" in text


def test_an_idle_cluster_is_shown_and_health_checked(proxy: EdgeProxyService) -> None:
    proxy.privilegedStartService()
    proxy.startService()
    try:
        proxy.reactor.advance(1.0)  # the first check comes within one interval
        checked = [(host, port) for host, port, *_ in proxy.reactor.tcpClients]
        document = status(proxy, started=proxy.reactor.seconds())
        page = _get(_admin_site(proxy), b"/")
    finally:
        proxy.stopService()
    assert ("127.0.0.1", 19) in checked
    assert document["clusters"]["spare"]["idle"] is True
    assert document["clusters"]["api"]["idle"] is False
    assert document["clusters"]["spare"]["endpoints"][0]["endpoint"] == "127.0.0.1:19"
    text = _Page(b"".join(page.written).decode("utf-8")).all_text
    assert text.count("idle: no route uses it") == 1
