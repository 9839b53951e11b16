"""
The admin listener's HTML page: a pure function of the ``/status`` document.

Server-rendered, no JavaScript, no external assets (the page is served with
``Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'``);
every value taken from the document is escaped, since cluster names and file
names are free text.  It refreshes itself every few seconds.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["EXPIRY_WARNING_DAYS", "REFRESH_SECONDS", "render_page"]

#: Certificates with fewer days left than this are highlighted.
EXPIRY_WARNING_DAYS = 14
REFRESH_SECONDS = 5

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.2em 2em;color:#1c1c1c;
background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.4em 0 .4em;
border-bottom:1px solid #ccc;padding-bottom:.15em}h3{font-size:1em;margin:1em 0 .3em}
table{border-collapse:collapse;margin:.2em 0 .6em;background:#fff}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f0f0f0;font-weight:600;white-space:nowrap}td.n{text-align:right;font-variant-numeric:tabular-nums}
code{font:13px ui-monospace,Menlo,Consolas,monospace}
.muted{color:#666}.small{font-size:.9em}
.badge{display:inline-block;padding:0 .45em;border-radius:.3em;font-weight:600}
.badge.ok{background:#d8f3dc;color:#1b5e20}.badge.bad{background:#f8c9c6;color:#8a1116}
.badge.warn{background:#ffe69c;color:#6b4700}
tr.bad td{background:#fdecea}tr.warn td{background:#fff8e1}
ul.problems{color:#a4161a;margin:.3em 0}td.state{white-space:nowrap}
table.facts th{background:none;border:0;padding:.1em 1em .1em 0;color:#666;font-weight:400}
table.facts td{border:0;background:none;padding:.1em 0}table.facts{background:none}
p.summary{margin:.3em 0}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _code(value: object) -> str:
    return f"<code>{_e(value)}</code>"


def _badge(text: str, kind: str) -> str:
    return f'<span class="badge {kind}">{_e(text)}</span>'


def _table(headers: Sequence[str], rows: Iterable[str], css: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    cls = f' class="{css}"' if css else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _row(cells: Iterable[str], css: str = "") -> str:
    cls = f' class="{css}"' if css else ""
    return f"<tr{cls}>{''.join(cells)}</tr>"


def _td(content: str, css: str = "") -> str:
    """A cell; ``content`` must already be escaped HTML."""
    cls = f' class="{css}"' if css else ""
    return f"<td{cls}>{content}</td>"


def _num(value: object) -> str:
    return _td(_e(value) if value is not None else "&ndash;", "n")


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _empty(text: str) -> str:
    return f'<p class="muted">{_e(text)}</p>'


# -- sections ------------------------------------------------------------------


def _summary(status: Mapping[str, Any]) -> str:
    process = status.get("process") or {}
    ready = status.get("ready") or {}
    parts = ["<h2>Summary</h2>"]
    is_ready = bool(ready.get("ready"))
    facts = [
        ("ready", _badge("ready", "ok") if is_ready else _badge("not ready", "bad")),
        ("pid", _e(process.get("pid", "?"))),
        ("uptime", _e(_duration(float(process.get("uptime_seconds", 0))))),
        ("version", _e(process.get("version", "?"))),
    ]
    parts.append(
        '<p class="summary">'
        + " &nbsp;·&nbsp; ".join(f'<span class="muted">{_e(k)}</span> {v}' for k, v in facts)
        + "</p>"
    )
    reasons = ready.get("reasons") or []
    if reasons:
        parts.append(
            '<ul class="problems">' + "".join(f"<li>{_e(r)}</li>" for r in reasons) + "</ul>"
        )
    listeners = status.get("listeners") or []
    if listeners:
        listed = " &nbsp;·&nbsp; ".join(
            f"{_e(listener.get('kind', ''))} "
            + (
                _code(listener["address"])
                if listener.get("address")
                else _badge("not bound", "bad")
            )
            + f' <span class="muted small">({_e(listener.get("description", ""))})</span>'
            for listener in listeners
        )
    else:
        listed = '<span class="muted">No listeners.</span>'
    files = (status.get("config") or {}).get("files") or []
    if files:
        configured = "<br>".join(_code(f) for f in files)
    else:
        configured = '<span class="muted">No configuration files.</span>'
    parts.append(
        '<table class="facts"><tbody>'
        f"<tr><th>listeners</th><td>{listed}</td></tr>"
        f"<tr><th>config files</th><td>{configured}</td></tr>"
        "</tbody></table>"
    )
    return "".join(parts)


def _route_target(route: Mapping[str, Any]) -> str:
    split = route.get("split")
    if split:
        return (
            " / ".join(
                f"{_code(part.get('cluster', ''))} {_e(part.get('weight', ''))}" for part in split
            )
            + ' <span class="muted small">(split)</span>'
        )
    return ", ".join(_code(name) for name in route.get("clusters") or [])


def _virtual_hosts(status: Mapping[str, Any]) -> str:
    vhosts = status.get("virtual_hosts") or []
    parts = ["<h2>Virtual hosts</h2>"]
    if not vhosts:
        parts.append(_empty("No virtual hosts configured."))
        return "".join(parts)
    rows: list[str] = []
    for vhost in vhosts:
        names = "<br>".join(_code(n) for n in vhost.get("names") or [])
        routes = vhost.get("routes") or []
        if not routes:
            rows.append(_row([_td(names), _td(_empty("no routes")), _td(""), _td("")]))
            continue
        for i, route in enumerate(routes):
            options = [
                label
                for key, label in (("strip_prefix", "strip prefix"), ("plain_http", "plain http"))
                if route.get(key)
            ]
            if route.get("cache"):
                options.append(f"cache ({route['cache']})")
            cells = []
            if i == 0:
                cells.append(f'<td rowspan="{len(routes)}">{names}</td>')
            cells += [
                _td(_code(route.get("prefix", ""))),
                _td(_route_target(route)),
                _td(_e(", ".join(options)), "small"),
            ]
            rows.append(_row(cells))
    parts.append(_table(["hosts", "route", "cluster", "options"], rows))
    return "".join(parts)


def _last_transition(
    cluster: str, endpoint: Mapping[str, Any], transitions: Sequence[Mapping[str, Any]], now: float
) -> str:
    label = f"{cluster}/{endpoint.get('endpoint', '')}"
    for transition in reversed(transitions):
        if transition.get("endpoint") == label:
            ago = now - float(transition.get("at", now))
            return (
                f"{_e(transition.get('machine', ''))} {_e(transition.get('old', ''))} → "
                f"{_e(transition.get('new', ''))}: {_e(transition.get('cause', ''))} "
                f'<span class="muted small">({_e(_duration(ago))} ago)</span>'
            )
    for machine in ("breaker", "health"):
        cause = (endpoint.get(machine) or {}).get("last_cause")
        if cause:
            return f"{_e(machine)}: {_e(cause)}"
    return '<span class="muted">&ndash;</span>'


def _endpoint_state(endpoint: Mapping[str, Any]) -> str:
    available = bool(endpoint.get("available"))
    details = []
    health = endpoint.get("health")
    if health:
        details.append(f"health {_e(health.get('state', '?'))}")
    breaker = endpoint.get("breaker")
    if breaker:
        text = f"breaker {_e(breaker.get('state', '?'))}"
        ejected_for = breaker.get("ejected_for")
        if ejected_for is not None:
            text += f" ({_e(round(float(ejected_for), 1))}s left)"
        details.append(text)
    if endpoint.get("draining"):
        # Gone from its name's addresses: finishing its requests in flight.
        details.insert(0, f"left {_e(endpoint.get('name') or '')}")
        badge = _badge("draining", "warn")
    elif available:
        badge = _badge("available", "ok")
    else:
        badge = _badge("unavailable", "bad")
    detail = f'<br><span class="small muted">{", ".join(details)}</span>' if details else ""
    return badge + detail


_IDLE = ' <span class="muted small">idle: no route uses it ·</span>'


def _clusters(status: Mapping[str, Any]) -> str:
    clusters = status.get("clusters") or {}
    parts = ["<h2>Clusters</h2>"]
    if not clusters:
        parts.append(_empty("No clusters."))
        return "".join(parts)
    process = status.get("process") or {}
    now = float(process.get("started_at", 0)) + float(process.get("uptime_seconds", 0))
    for name, cluster in clusters.items():
        endpoints = cluster.get("endpoints") or []
        available = cluster.get("available_endpoints", 0)
        serving = [endpoint for endpoint in endpoints if not endpoint.get("draining")]
        kind = "ok" if available == len(serving) else ("bad" if not available else "warn")
        overflows = sum(int(v) for v in (cluster.get("overflows") or {}).values())
        parts.append(
            f"<h3>{_code(name)} {_badge(f'{available}/{len(serving)} available', kind)}"
            f"{_IDLE if cluster.get('idle') else ''}"
            f' <span class="muted small">policy {_e(cluster.get("policy", "?"))}'
            f" · in flight {_e(cluster.get('in_flight', 0))}"
            f" · pending {_e(cluster.get('pending', 0))}"
            f" · retries {_e(cluster.get('retries', 0))}"
            f" · overflows {_e(overflows)}</span></h3>"
        )
        transitions = cluster.get("recent_transitions") or []
        rows = []
        for endpoint in endpoints:
            breaker = endpoint.get("breaker") or {}
            rows.append(
                _row(
                    [
                        _td(_code(endpoint.get("endpoint", ""))),
                        _td(_endpoint_state(endpoint), "state"),
                        _num(endpoint.get("in_flight", 0)),
                        _num(endpoint.get("requests", 0)),
                        _num(endpoint.get("failures", 0)),
                        _num(breaker.get("ejections") if breaker else None),
                        _td(_last_transition(name, endpoint, transitions, now), "small"),
                    ],
                    "" if endpoint.get("available") else "bad",
                )
            )
        if rows:
            parts.append(
                _table(
                    [
                        "endpoint",
                        "state",
                        "in flight",
                        "requests",
                        "failures",
                        "ejections",
                        "last transition",
                    ],
                    rows,
                )
            )
        else:
            parts.append(_empty("No endpoints."))
        parts.append(_names(cluster.get("names") or {}))
    return "".join(parts)


def _names(names: Mapping[str, Any]) -> str:
    """The endpoints given by name and what they resolve to (docs/dns.md)."""
    if not names:
        return ""
    rows = []
    for name, record in names.items():
        state = str(record.get("state", "?"))
        kind = {"resolved": "ok", "pending": "warn"}.get(state, "bad")
        error = record.get("error")
        rows.append(
            _row(
                [
                    _td(_code(name)),
                    _td(_badge(state, kind), "state"),
                    _td(", ".join(_code(a) for a in record.get("addresses") or []) or "&ndash;"),
                    _td(_e(error) if error else "", "small"),
                ]
            )
        )
    return _table(["name", "resolution", "addresses", "last error"], rows)


def _expiry(cert: Mapping[str, Any]) -> tuple[str, str]:
    """The days-to-expiry cell text and the row's highlight class."""
    days = cert.get("days_to_expiry")
    if days is None:
        return "?", ""
    days = int(days)
    if cert.get("expired", days < 0):
        return (f"expired {-days} days ago" if days < 0 else "expired"), "bad"
    text = "1 day" if days == 1 else f"{days} days"
    return text, ("warn" if days < EXPIRY_WARNING_DAYS else "")


def _certificates(status: Mapping[str, Any]) -> str:
    certificates = status.get("certificates") or []
    parts = ["<h2>Certificates</h2>"]
    problems = status.get("certificate_problems") or []
    if problems:
        parts.append(
            '<ul class="problems">' + "".join(f"<li>{_e(p)}</li>" for p in problems) + "</ul>"
        )
    if not certificates:
        parts.append(_empty("No certificates loaded."))
        return "".join(parts)
    rows = []
    for cert in certificates:
        text, css = _expiry(cert)
        names = ", ".join(_code(n) for n in cert.get("names") or [])
        if cert.get("default"):
            names = (names + " " if names else "") + _badge("default", "ok")
        not_after = str(cert.get("not_after", ""))[:10]
        days_cell = _badge(text, css) if css else _e(text)
        rows.append(
            _row(
                [
                    _td(names),
                    _td(days_cell, "n"),
                    _td(_e(not_after)),
                    _td(_code(cert.get("source", "")), "small"),
                ],
                css,
            )
        )
    parts.append(_table(["names", "days to expiry", "expires", "source"], rows))
    return "".join(parts)


def _mib(value: object) -> str:
    return f"{float(value) / 2**20:.1f} MiB" if isinstance(value, int | float) else "?"


def _caches(status: Mapping[str, Any]) -> str:
    caches = status.get("caches") or []
    if not caches:
        return ""
    rows = []
    for cache in caches:
        hits, misses = int(cache.get("hits", 0)), int(cache.get("misses", 0))
        served = hits + int(cache.get("stale", 0))
        ratio = f"{100 * served / (served + misses):.0f} %" if served + misses else "&ndash;"
        rows.append(
            _row(
                [
                    _td(_code(cache.get("name", ""))),
                    _td(_num(cache.get("objects")), "n"),
                    _td(f"{_mib(cache.get('bytes'))} of {_mib(cache.get('max_bytes'))}", "n"),
                    _td(ratio, "n"),
                    _td(_num(hits), "n"),
                    _td(_num(cache.get("stale")), "n"),
                    _td(_num(misses), "n"),
                    _td(_num(cache.get("collapsed")), "n"),
                    _td(_num(cache.get("not_modified")), "n"),
                    _td(_num(cache.get("evictions")), "n"),
                ]
            )
        )
    headers = [
        "store", "objects", "size", "served from cache", "hits", "stale", "misses",
        "collapsed", "304 refreshes", "evictions",
    ]
    return "<h2>Caches</h2>" + _table(headers, rows)


def render_page(status: Mapping[str, Any]) -> str:
    """The whole page for one ``/status`` document."""
    process = status.get("process") or {}
    title = f"edgeproxy {process.get('version', '')}".strip()
    body = "".join(
        [
            f"<h1>{_e(title)}</h1>",
            _summary(status),
            _virtual_hosts(status),
            _clusters(status),
            _caches(status),
            _certificates(status),
            f'<p class="muted small">Refreshes every {REFRESH_SECONDS} s. '
            'JSON: <a href="/status">/status</a> · <a href="/metrics">/metrics</a> · '
            '<a href="/readyz">/readyz</a></p>',
        ]
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
        f"<body>{body}</body></html>\n"
    )
