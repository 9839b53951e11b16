"""
Semantic checks for ``twistd edgeproxy --check``: what loads fine but is wrong.

Pure: functions over a loaded configuration, a certificate index and the
current time; no I/O, no Twisted, no network (hostnames are checked for
syntax only, never resolved).  Each check returns a :class:`CheckReport`;
:func:`run_semantic_check` runs them all.  *Errors* are things that are
certainly wrong (a failed expectation, a route that can never match, an
endpoint no connection can be made to); *warnings* are things that are
probably wrong (an unused cluster, a name no certificate covers, a
certificate about to expire).  ``--check`` exits 1 on errors, and with
``--strict`` on warnings too.  See docs/configuration.md, "Checking a
configuration".
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import sys
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from edgeproxy.config import Cluster, Route, Split, VirtualHost
from edgeproxy.config.load import Expectation, LoadedConfig, inspect_config
from edgeproxy.config.routing import prefix_bytes
from edgeproxy.config.settings import Settings
from edgeproxy.core.addresses import is_ip_literal
from edgeproxy.core.errors import ConfigProblem
from edgeproxy.core.hostnames import covered_by, normalise_host, normalise_name, wildcard_of
from edgeproxy.tls.certificates import CertificateIndex, LoadedCertificate
from edgeproxy.tls.certwatch import NO_DEFAULT_CERTIFICATE, check_directory

__all__ = [
    "CACHE_MEMORY_SHARE",
    "EXPIRY_WARNING",
    "REDIRECT",
    "CheckReport",
    "check_cache_directories",
    "check_cache_memory",
    "check_certificate_coverage",
    "check_certificate_validity",
    "check_default_certificate",
    "check_endpoints",
    "check_expectations",
    "check_shadowed_routes",
    "check_unused_clusters",
    "count_problems",
    "describe_caches",
    "describe_rate_limits",
    "format_report",
    "run_check",
    "run_semantic_check",
]

#: A certificate in use that expires within this is reported.
EXPIRY_WARNING = datetime.timedelta(days=14)

#: The share of the machine's memory the memory caches' ``max_bytes``, over
#: every route and ``--workers`` process, may add up to before ``--check``
#: warns (the rest is for the processes themselves, the page cache, the OS).
CACHE_MEMORY_SHARE = 0.5

#: The expected "cluster" of an ``http://`` URL that is redirected to https.
REDIRECT = "redirect"


@attrs.frozen
class CheckReport:
    errors: tuple[ConfigProblem, ...] = ()
    warnings: tuple[ConfigProblem, ...] = ()

    def __add__(self, other: CheckReport) -> CheckReport:
        return CheckReport(self.errors + other.errors, self.warnings + other.warnings)


def run_semantic_check(
    config: LoadedConfig,
    index: CertificateIndex,
    now: datetime.datetime,
    *,
    expiry_warning: datetime.timedelta = EXPIRY_WARNING,
) -> CheckReport:
    """Every check below; problems sorted by file (config files in load order
    first, then certificate files) and line."""
    report = (
        check_expectations(config)
        + check_shadowed_routes(config)
        + check_endpoints(config)
        + check_upstream_tls(config)
        + check_unused_clusters(config)
        + check_certificate_coverage(config, index)
        + check_certificate_validity(index, now, expiry_warning)
    )
    order = {path: position for position, path in enumerate(config.files)}

    def key(problem: ConfigProblem) -> tuple[int, str, int]:
        return (order.get(problem.path, len(order)), problem.path, problem.line or 0)

    return CheckReport(
        tuple(sorted(report.errors, key=key)), tuple(sorted(report.warnings, key=key))
    )


def format_report(report: CheckReport, strict: bool) -> tuple[list[str], int]:
    """``error: ...`` and ``warning: ...`` lines, and the exit code: 1 when there
    are errors, or warnings and ``strict``; else 0."""
    lines = [f"error: {problem}" for problem in report.errors]
    lines.extend(f"warning: {problem}" for problem in report.warnings)
    failed = bool(report.errors) or (strict and bool(report.warnings))
    return lines, 1 if failed else 0


def count_problems(report: CheckReport) -> str:
    """The footer of ``--check``: ``"2 errors, 1 warning"``."""
    errors, warnings = len(report.errors), len(report.warnings)
    return (
        f"{errors} error{'' if errors == 1 else 's'}, "
        f"{warnings} warning{'' if warnings == 1 else 's'}"
    )


# -- where things are -------------------------------------------------------


def _vhost_files(config: LoadedConfig) -> list[tuple[VirtualHost, str]]:
    files = config.virtual_host_files
    if len(files) != len(config.virtual_hosts):
        fallback = config.files[0] if config.files else "<configuration>"
        files = (fallback,) * len(config.virtual_hosts)
    return list(zip(config.virtual_hosts, files, strict=True))


def _line(config: LoadedConfig, path: str, *spellings: str) -> int | None:
    """The line of the first of ``spellings`` spelled by a string literal in ``path``."""
    for text in spellings:
        line = config.line_of(path, text)
        if line is not None:
            return line
    return None


def _problem(config: LoadedConfig, path: str, message: str, *spellings: str) -> ConfigProblem:
    """A problem in ``path``, on the line of the first of ``spellings`` found there."""
    return ConfigProblem(path, message, _line(config, path, *spellings))


def _describe_target(route: Route) -> str:
    if isinstance(route.target, Cluster):
        return f"cluster {route.target.name!r}"
    shares = ", ".join(f"{cluster.name}: {weight}" for cluster, weight in route.target.weights)
    return f"Split({{{shares}}})"


def _names(names: Iterable[str]) -> str:
    return ", ".join(repr(name) for name in names)


# -- expectations -----------------------------------------------------------


def check_expectations(config: LoadedConfig) -> CheckReport:
    """Route each file's ``expectations`` and compare; each failure is an error
    at the line of its tuple."""
    errors = []
    for expectation in config.expectations:
        failure = _expectation_failure(config, expectation)
        if failure is not None:
            errors.append(
                ConfigProblem(
                    expectation.path,
                    f"expectation {expectation.url!r} -> {expectation.cluster!r} failed: "
                    + failure,
                    expectation.line,
                )
            )
    return CheckReport(errors=tuple(errors))


def _expectation_failure(config: LoadedConfig, expectation: Expectation) -> str | None:
    """Why ``expectation`` does not hold, or None when it does."""
    url, expected = expectation.url, expectation.cluster
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as e:
        return f"not a URL ({e})"
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.netloc:
        return "the URL must be http://HOST/PATH or https://HOST/PATH"
    if "@" in parts.netloc:
        return "the URL must not have a user name or password"
    host = normalise_host(parts.netloc)
    if host is None:
        return f"{parts.netloc!r} is not a valid host"
    path = parts.path or "/"
    if not path.startswith("/"):
        return f"the path {path!r} must start with '/'"
    target = prefix_bytes(path + (f"?{parts.query}" if parts.query else ""))

    table = config.routing.find_virtual_host(host)
    if table is None:
        return f"no virtual host serves {host!r} (the request gets 404)"
    match = table.match(target)
    if match is None:
        return f"virtual host {table.vhost_name!r} has no route for {path!r} (the request gets 404)"
    route = match.route
    where = f"route {route.prefix!r} of virtual host {match.vhost_name!r}"
    if scheme == "http" and not route.plain_http:
        if expected == REDIRECT:
            return None
        return (
            f"it redirects to https ({where} is not plain_http); expect {REDIRECT!r} for "
            "that, or use an https:// URL"
        )
    target_obj = route.target
    if isinstance(target_obj, Cluster):
        if target_obj.name == expected:
            return None
        if expected == REDIRECT:
            return f"it goes to cluster {target_obj.name!r} ({where}), not to a redirect"
        return f"it goes to cluster {target_obj.name!r} ({where})"
    return _split_failure(target_obj, expected, where)


def _split_failure(split: Split, expected: str, where: str) -> str | None:
    weights = {cluster.name: weight for cluster, weight in split.weights}
    weight = weights.get(expected)
    if weight is not None and weight > 0:
        return None
    shares = ", ".join(f"{name}: {w}" for name, w in weights.items())
    if weight is not None:
        return f"it goes to Split({{{shares}}}) ({where}), where {expected!r} has weight 0"
    return f"it goes to Split({{{shares}}}) ({where}), which has no cluster {expected!r}"


# -- shadowed routes --------------------------------------------------------


def check_shadowed_routes(config: LoadedConfig) -> CheckReport:
    """Routes that can never match, and wildcard routes an exact name takes away.

    Errors: two routes of one virtual host whose prefixes differ as written but
    are the same bytes on the wire (``"/café/"`` and ``"/caf%C3%A9/"``): only the
    first one listed is ever used.  (Prefixes written identically are rejected
    by the loader; with longest-prefix matching, any other route is reached at
    least by the path equal to its prefix, so nothing else is unreachable.)

    Warnings: an exact name in one virtual host under a wildcard of another
    (``admin.shop.example`` and ``*.shop.example``) takes every request for that
    name, so the wildcard's routes never apply to it.  That is often intended,
    so it is reported only when some prefix the wildcard's virtual host routes
    gets 404 on the exact name.
    """
    errors: list[ConfigProblem] = []
    warnings: list[ConfigProblem] = []
    placed = _vhost_files(config)
    for vhost, path in placed:
        by_bytes: dict[bytes, list[Route]] = {}
        for route in vhost.routes:
            by_bytes.setdefault(prefix_bytes(route.prefix), []).append(route)
        for wire, routes in by_bytes.items():
            first, *others = routes
            for other in others:
                if other.prefix == first.prefix:
                    continue  # written twice: the loader reports that
                errors.append(
                    _problem(
                        config,
                        path,
                        f"virtual host {vhost.names[0]!r}: route {other.prefix!r} can never "
                        f"match: its prefix is {wire.decode('ascii')!r} on the wire, the same "
                        f"as route {first.prefix!r}, which is listed first and wins",
                        other.prefix,
                        vhost.names[0],
                    )
                )

    wildcard_owner = {
        name: (vhost, path) for vhost, path in placed for name in vhost.names if name[:2] == "*."
    }
    for vhost, path in placed:
        for name in vhost.names:
            if name.startswith("*."):
                continue
            wildcard = wildcard_of(name)
            owner = wildcard_owner.get(wildcard) if wildcard is not None else None
            if owner is None or owner[0] is vhost:
                continue
            wild_vhost, wild_path = owner
            table = config.routing.find_virtual_host(name)
            if table is None or table.virtual_host is not vhost:
                continue
            lost = [
                route.prefix
                for route in wild_vhost.routes
                if table.route_for(prefix_bytes(route.prefix)) is None
            ]
            if not lost:
                continue
            wild_line = _line(config, wild_path, wildcard or "")
            wild_location = wild_path if wild_line is None else f"{wild_path}:{wild_line}"
            warnings.append(
                _problem(
                    config,
                    path,
                    f"{name!r} is an exact name of virtual host {vhost.names[0]!r}, so the "
                    f"routes of wildcard {wildcard!r} (virtual host {wild_vhost.names[0]!r}, "
                    f"{wild_location}) never apply to it: {name} gets 404 for "
                    f"{_names(lost)}, which the wildcard's virtual host routes",
                    name,
                )
            )
    return CheckReport(tuple(errors), tuple(warnings))


# -- endpoints --------------------------------------------------------------


def check_endpoints(config: LoadedConfig) -> CheckReport:
    """Endpoint hosts of every cluster (idle ones too: their health checks
    connect), by syntax only (nothing is resolved).

    ``Endpoint`` already requires a port in 1..65535 and a host that is an IP
    literal or a DNS name (labels of letters, digits, ``-`` and ``_``).  Here:

    - error: a label that starts or ends with ``-`` (no hostname may, RFC 1123);
    - error: a multicast or broadcast address (a TCP connection cannot be made);
    - warning: ``_`` in a name (valid in DNS but not in hostnames; some
      resolvers, e.g. Docker's, accept it, most refuse it);
    - warning: an unspecified address (``0.0.0.0``, ``::``), which reaches this
      machine on Linux and fails elsewhere.
    """
    errors: list[ConfigProblem] = []
    warnings: list[ConfigProblem] = []
    for cluster in config.all_clusters.values():
        path = _cluster_file(config, cluster)
        for endpoint in cluster.endpoints:
            error, warning = _host_problem(endpoint.host)
            for message, sink in ((error, errors), (warning, warnings)):
                if message is not None:
                    sink.append(
                        _problem(
                            config,
                            path,
                            f"cluster {cluster.name!r}: endpoint {str(endpoint)!r}: {message}",
                            str(endpoint),
                            endpoint.host,
                            cluster.name,
                        )
                    )
    return CheckReport(tuple(errors), tuple(warnings))


def check_upstream_tls(config: LoadedConfig) -> CheckReport:
    """A warning for every cluster whose ``upstream_tls``, and every route
    whose ``ForwardAuth`` ``tls``, has ``verify=False``: the certificates are
    not verified, so anyone on the path can read and change the traffic."""
    warnings = []
    for cluster in config.all_clusters.values():
        tls = cluster.upstream_tls
        if tls is None or tls.verify:
            continue
        message = (
            f"cluster {cluster.name!r}: upstream_tls verify=False: the endpoints' "
            "certificates are NOT verified (anyone on the path can impersonate them)"
        )
        warnings.append(_problem(config, _cluster_file(config, cluster), message, cluster.name))
    for vhost, path in _vhost_files(config):
        for route in vhost.routes:
            auth = route.auth
            if auth is None or auth.tls is None or auth.tls.verify:
                continue
            message = (
                f"route {vhost.names[0]}{route.prefix}: ForwardAuth tls verify=False: the auth "
                "service's certificate is NOT verified (anyone on the path can impersonate it "
                "and let every request in)"
            )
            warnings.append(_problem(config, path, message, auth.url))
    return CheckReport(warnings=tuple(warnings))


def _cluster_file(config: LoadedConfig, cluster: Cluster) -> str:
    for definition in config.defined_clusters.get(cluster.name, ()):
        if definition.cluster == cluster:
            return definition.path
    for vhost, path in _vhost_files(config):
        if any(cluster in route.clusters for route in vhost.routes):
            return path
    return config.files[0] if config.files else "<configuration>"


def _host_problem(host: str) -> tuple[str | None, str | None]:
    """(error, warning) about an endpoint host."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        if address.is_multicast or (
            isinstance(address, ipaddress.IPv4Address)
            and address == ipaddress.IPv4Address("255.255.255.255")
        ):
            return f"{host} is a multicast or broadcast address; TCP cannot connect to it", None
        if address.is_unspecified:
            return None, (
                f"{host} is the unspecified address: it reaches this machine on Linux and "
                "fails elsewhere; write 127.0.0.1 or ::1"
            )
        return None, None
    name = normalise_name(host)
    if name is None:  # Endpoint's validator rules this out
        return f"{host!r} is neither an IP address nor a hostname", None
    labels = name.split(".")
    bad = [label for label in labels if label.startswith("-") or label.endswith("-")]
    if bad:
        return (
            f"label {bad[0]!r} starts or ends with '-', which no hostname may (RFC 1123)",
            None,
        )
    if "_" in name:
        return None, (
            f"{name!r} contains '_', which is not valid in a hostname (RFC 1123): most "
            "resolvers refuse it"
        )
    return None, None


# -- clusters ---------------------------------------------------------------


def check_unused_clusters(config: LoadedConfig) -> CheckReport:
    """Clusters defined at module level of a file that no route uses (warnings).

    A cluster counts as used when a route uses a cluster of that name.  A
    module-level cluster whose name a route uses but whose settings differ from
    the one the routes use is reported too: that definition is never used.
    """
    warnings = []
    for name, definitions in config.defined_clusters.items():
        used = config.clusters.get(name)
        for definition in definitions:
            if used is None:
                message = (
                    f"cluster {name!r} (module-level {definition.variable!r}) is not used by "
                    "any route"
                )
            elif definition.cluster != used:
                message = (
                    f"cluster {name!r} (module-level {definition.variable!r}) is not used by "
                    "any route: routes use a cluster of that name with other settings"
                )
            else:
                continue
            warnings.append(ConfigProblem(definition.path, message, definition.line))
    return CheckReport(warnings=tuple(warnings))


# -- caches -------------------------------------------------------------------


def _cached_routes(config: LoadedConfig) -> list[tuple[VirtualHost, Route, str]]:
    return [
        (vhost, route, path)
        for vhost, path in _vhost_files(config)
        for route in vhost.routes
        if route.cache is not None
    ]


def describe_caches(config: LoadedConfig) -> list[str]:
    """One line per cached route: where, its store and its bounds."""
    lines = []
    for vhost, route, _path in _cached_routes(config):
        cache = route.cache
        assert cache is not None
        lines.append(
            f"cache: {vhost.names[0]}{route.prefix} -> {cache.store}, "
            f"max_bytes {_size(cache.max_bytes)}, max_object_bytes {_size(cache.max_object_bytes)}"
        )
    return lines


def describe_rate_limits(config: LoadedConfig, settings: Settings) -> list[str]:
    """One line per rate-limited route: its limit, key and where its buckets are."""
    store = settings.rate_limit_store
    if store == "memory" and settings.workers > 1:
        store = f"memory, each of the {settings.workers} workers its own"
    elif store != "memory":
        from edgeproxy.ratelimit.redis import parse_redis_url

        store = str(parse_redis_url(store))  # without the password
    lines = []
    for vhost in config.virtual_hosts:
        for route in vhost.routes:
            limit = route.rate_limit
            if limit is not None:
                lines.append(
                    f"rate limit: {vhost.names[0]}{route.prefix} -> {limit.rate:g}/s, "
                    f"burst {limit.burst}, key {limit.key}, on_store_error "
                    f"{limit.on_store_error}, store {store}"
                )
    return lines


def _size(n: int) -> str:
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= factor and n % (factor // 16 or 1) == 0:
            return f"{n / factor:g} {unit}"
    return f"{n} bytes"


def check_cache_memory(
    config: LoadedConfig, workers: int, memory_bytes: int | None
) -> CheckReport:
    """A warning when the memory caches may take more than
    :data:`CACHE_MEMORY_SHARE` of ``memory_bytes``: each worker process has
    its own memory store per route, so their ``max_bytes`` add up over routes
    and multiply by ``workers`` (disk stores are not counted: they live in the
    page cache, which the kernel gives back)."""
    if not memory_bytes:
        return CheckReport()
    routes = [
        (vhost, route, path)
        for vhost, route, path in _cached_routes(config)
        if route.cache is not None and route.cache.disk_directory is None
    ]
    total = sum(route.cache.max_bytes for _v, route, _p in routes if route.cache is not None)
    if total * workers <= memory_bytes * CACHE_MEMORY_SHARE:
        return CheckReport()
    vhost, _route, path = routes[0]
    message = (
        f"the memory caches may hold {_size(total)} per process, {_size(total * workers)} "
        f"with --workers {workers}: more than {CACHE_MEMORY_SHARE:.0%} of this machine's "
        f"{_size(memory_bytes)}; lower their max_bytes or use a disk store"
    )
    return CheckReport(warnings=(_problem(config, path, message, vhost.names[0]),))


def check_cache_directories(
    config: LoadedConfig, unusable: Callable[[str], str | None]
) -> CheckReport:
    """Disk stores whose directory cannot be used (errors): ``unusable(directory)``
    says why not, or None (:func:`directory_problem` on the real file system)."""
    errors = []
    seen: set[str] = set()
    for _vhost, route, path in _cached_routes(config):
        directory = route.cache.disk_directory if route.cache is not None else None
        if directory is None or directory in seen:
            continue
        seen.add(directory)
        why = unusable(directory)
        if why is not None:
            message = f"cache directory {directory!r} cannot be used: {why}"
            errors.append(_problem(config, path, message, f"disk:{directory}"))
    return CheckReport(errors=tuple(errors))


def directory_problem(directory: str) -> str | None:
    """Why a cache directory cannot be used (made if missing, written to), or None."""
    probe = directory
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        return f"{probe} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    return None


# -- certificates -----------------------------------------------------------


def check_certificate_coverage(config: LoadedConfig, index: CertificateIndex) -> CheckReport:
    """Virtual host names no certificate covers (warnings).

    An exact name is covered by a certificate naming it or a matching one-label
    wildcard; a wildcard name ``*.x`` only by a ``*.x`` certificate.  An IP
    literal is covered only by the default certificate (clients send no server
    name for an IP address, so they always get the default).  Without cover,
    clients get the default certificate (a name mismatch) or, with no default,
    a refused handshake.
    """
    warnings = []
    for vhost, path in _vhost_files(config):
        for name in vhost.names:
            message = _coverage_problem(name, index)
            if message is not None:
                warnings.append(
                    _problem(config, path, f"virtual host {vhost.names[0]!r}: {message}", name)
                )
    return CheckReport(warnings=tuple(warnings))


def check_default_certificate(index: CertificateIndex, directory: str) -> CheckReport:
    """A warning when the certificate directory has no default certificate."""
    if index.default is not None:
        return CheckReport()
    return CheckReport(warnings=(ConfigProblem(directory, NO_DEFAULT_CERTIFICATE),))


def _coverage_problem(name: str, index: CertificateIndex) -> str | None:
    default = index.default
    if is_ip_literal(name):
        if default is not None and name in default.names:
            return None
        elsewhere = [c.source for c in index.certificates if name in c.names]
        note = (
            f" ({', '.join(elsewhere)} names it, but clients send no server name for an IP "
            "address, so only the default certificate is ever served for it)"
            if elsewhere
            else ""
        )
    else:
        if name.startswith("*."):
            if name in index.names:
                return None
        else:
            selected = index.select(name)
            if selected is not None and covered_by(name, selected.names):
                return None
        note = ""
    if default is None:
        return (
            f"no certificate covers {name!r}{note} and there is no default certificate: "
            "TLS handshakes for it are refused"
        )
    return (
        f"no certificate covers {name!r}{note}: clients get the default certificate "
        f"{default.source}, which does not name it, and reject the connection"
    )


def check_certificate_validity(
    index: CertificateIndex,
    now: datetime.datetime,
    window: datetime.timedelta = EXPIRY_WARNING,
) -> CheckReport:
    """Certificates in use that are expired, not yet valid, or expire within
    ``window`` (warnings, one per certificate file).

    A certificate is *in use* when it is the default certificate or is served
    for at least one of its names; one that has been renewed (each of its names
    is also named by a certificate valid now that expires later) is not.
    These subsume :attr:`CertificateIndex.warnings` (a stale certificate served
    anyway), so ``--check`` prints these instead.
    """
    warnings = []
    for certificate in index.certificates:
        if not _in_use(certificate, index, now):
            continue
        message = _validity_problem(certificate, now, window)
        if message is not None:
            served = _names(certificate.names) or "no names"
            default = "the default certificate, " if certificate is index.default else ""
            warnings.append(
                ConfigProblem(certificate.source, f"{message} ({default}serving {served})")
            )
    return CheckReport(warnings=tuple(warnings))


def _in_use(
    certificate: LoadedCertificate, index: CertificateIndex, now: datetime.datetime
) -> bool:
    if certificate is index.default:
        return True
    for name in certificate.names:
        renewed = any(
            other is not certificate
            and name in other.names
            and other.is_valid_at(now)
            and other.not_after > certificate.not_after
            for other in index.certificates
        )
        if not renewed:
            return True
    return False


def _validity_problem(
    certificate: LoadedCertificate, now: datetime.datetime, window: datetime.timedelta
) -> str | None:
    not_after = _utc(certificate.not_after)
    not_before = _utc(certificate.not_before)
    if now < not_before:
        return f"certificate is not valid until {_when(not_before)} ({_span(not_before - now)})"
    if not_after <= now:
        return f"certificate expired {_span(now - not_after)} ago, on {_when(not_after)}"
    if not_after - now <= window:
        return f"certificate expires in {_span(not_after - now)}, on {_when(not_after)}: renew it"
    return None


def _utc(moment: datetime.datetime) -> datetime.datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=datetime.UTC)


def _when(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _span(delta: datetime.timedelta) -> str:
    if delta >= datetime.timedelta(days=1):
        return f"{delta.days} day{'' if delta.days == 1 else 's'}"
    hours = int(delta.total_seconds() // 3600)
    if hours >= 1:
        return f"{hours} hour{'' if hours == 1 else 's'}"
    return "less than an hour"


def run_check(settings: Settings, out: Any = None, err: Any = None, *, strict: bool = False) -> int:
    """Validate config and certificates and what they mean together; print
    every problem, of every kind, in one pass, and a footer counting errors and
    warnings; return the exit code (1 on an error, or a warning if strict)."""
    out = out or sys.stdout
    err = err or sys.stderr
    summary: list[str] = []
    now = datetime.datetime.now(datetime.UTC)
    scan = check_directory(settings.certs, now)
    # What the files that loaded mean is checked even when others did not
    # load: one run shows everything (docs/configuration.md).
    config, load_problems = inspect_config(settings.config)
    report = CheckReport(load_problems + tuple(scan.problems))
    if config is not None:
        summary.append(config.summary())
        report += run_semantic_check(config, scan.index, now)
        report += check_cache_memory(config, settings.workers, _memory_bytes())
        report += check_cache_directories(config, directory_problem)
    report += check_default_certificate(scan.index, settings.certs)
    lines, code = format_report(report, strict)
    for line in lines:
        print(line, file=err)
    if lines:
        print(f"edgeproxy: {count_problems(report)}", file=err)
    if code:
        return 1
    if config is not None:
        for line in describe_caches(config) + describe_rate_limits(config, settings):
            print(f"edgeproxy: {line}", file=out)
    count = len(scan.index.certificates)
    summary.append(f"{count} certificate" + ("" if count == 1 else "s"))
    print("edgeproxy: configuration OK: " + ", ".join(summary), file=out)
    return 0


def _memory_bytes() -> int | None:
    """The machine's memory (``MemTotal``), None where /proc says nothing."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None
