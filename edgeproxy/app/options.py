"""
The command line: ``twistd edgeproxy``'s options, checked and turned into
frozen :class:`~edgeproxy.config.settings.Settings` (``--check`` runs
:func:`edgeproxy.app.checks.run_check` and exits).
"""

from __future__ import annotations

import ipaddress
import os
import sys

import attrs
from twisted.python import usage

from edgeproxy.config.settings import (
    DEFAULT_BODY_MIN_RATE,
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_KEEPALIVE_TIMEOUT,
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_RATE_LIMIT_MAX_KEYS,
    DEFAULT_RELOAD_TIMEOUT,
    DEFAULT_TUNNEL_IDLE_TIMEOUT,
    Settings,
)
from edgeproxy.core.connlimits import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PER_CLIENT,
    AcceptLimits,
    default_burst,
)
from edgeproxy.core.protocol import MAX_WINDOW, H2Limits, HTTPLimits

__all__ = ["Options", "version_text"]

_DEFAULT_HTTPS = "tcp:8443"
_DEFAULT_HTTP = "tcp:8080"
_DEFAULT_ADMIN = "tcp:9901:interface=127.0.0.1"
_LIMITS = HTTPLimits()
_H2 = H2Limits()


def _port_number(value: str) -> int:
    port = int(value)
    if not 0 < port < 65536:
        raise ValueError(f"not a port number: {value}")
    return port


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(f"must not be negative: {value}")
    return number


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(f"must be at least 1: {value}")
    return number


def _window_size(value: str) -> int:
    number = _positive_int(value)
    if number > MAX_WINDOW:
        raise ValueError(f"must be at most {MAX_WINDOW}: {value}")
    return number


def _frame_size(value: str) -> int:
    number = int(value)
    if not 16384 <= number <= 16777215:
        raise ValueError(f"must be from 16384 to 16777215: {value}")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError(f"must be positive: {value}")
    return number


#: More worker processes than this is a typo, not a plan.
MAX_WORKERS = 256


def _non_negative_float(value: str) -> float:
    number = float(value)
    if not number >= 0:
        raise ValueError(f"must not be negative: {value}")
    return number


def _access_log_format(value: str) -> str:
    if value not in ("combined", "json"):
        raise ValueError(f"must be combined or json: {value}")
    return value


def _tls_profile(value: str) -> str:
    from edgeproxy.tls.certificates import TLS_PROFILES

    if value not in TLS_PROFILES:
        raise ValueError(f"must be {' or '.join(TLS_PROFILES)}: {value}")
    return value


def _rate_limit_store(value: str) -> str:
    if value == "memory":
        return value
    from edgeproxy.ratelimit.redis import parse_redis_url

    try:
        parse_redis_url(value)
    except ValueError as e:
        raise ValueError(f"'memory' or redis://HOST:PORT[/DB]: {e}") from None
    return value


def _resolver(value: str) -> tuple[str, int]:
    """``--resolver HOST:PORT`` (an IPv6 address in brackets): a DNS server."""
    host, sep, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"write an IPv6 address in brackets, [ADDRESS]:PORT: {value}")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"must be HOST:PORT, a DNS server's address: {value}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"HOST must be an IP address: {value}") from None
    return host, int(port_text)


def _workers(value: str) -> int:
    """``--workers``: a count, or ``auto`` for one per CPU."""
    if value == "auto":
        return max(1, os.cpu_count() or 1)
    number = int(value)
    if not 1 <= number <= MAX_WORKERS:
        raise ValueError(f"must be 'auto' or 1..{MAX_WORKERS}: {value}")
    return number


def _connection_rate(value: str) -> tuple[float, int]:
    """``RATE[:BURST]``: new connections per second (0: no limit), and how many
    may come at once (at least 1; by default a second's worth, RATE rounded up)."""
    rate_text, _, burst_text = value.partition(":")
    rate = float(rate_text)
    if not 0 <= rate < float("inf"):
        raise ValueError(f"RATE must be a number, 0 or more: {value}")
    if not burst_text:
        return rate, default_burst(rate)
    burst = int(burst_text)
    if burst < 1:
        raise ValueError(f"BURST must be at least 1: {value}")
    return rate, burst


def version_text() -> str:
    """``edgeproxy 0.1.0 (Twisted 24.3.0, Python 3.11.2)``: the installed
    distribution's version, else the package's own."""
    import platform
    from importlib import metadata

    from edgeproxy import __version__
    from twisted import copyright

    try:
        version = metadata.version("edgeproxy")
    except metadata.PackageNotFoundError:  # run from a source tree
        version = __version__
    return (
        f"edgeproxy {version} (Twisted {copyright.version}, "
        f"Python {platform.python_version()})"
    )


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Terminate TLS (certificate chosen by SNI from --certs), route each request by host "
        "and path as the Python files in --config say, and forward it to a pooled upstream "
        "cluster. Listener options take Twisted endpoint descriptions (tcp:PORT, "
        "tcp:PORT:interface=ADDR, unix:PATH, ...); --https and --http may be given several times."
    )

    optFlags = [
        ["check", None, "Load and validate the config and certificates, check what they "
         "mean (expectations, unused clusters, uncovered names, expiring certificates), "
         "print every problem and exit (1 on an error, else 0); starts nothing."],
        ["strict", None, "With --check: warnings fail the check too (exit 1)."],
        ["watch-config", None, "Reload when a config file changes (as on SIGHUP)."],
        ["no-http2", None, "Offer only http/1.1 over ALPN on the https listeners (HTTP/2 "
         "is offered by default; docs/http.md#http2)."],
        ["no-fast-paths", None, "Run on Twisted's own TLS layer, write and event dispatch "
         "instead of edgeproxy's faster ones (to rule them out when something looks wrong; "
         "docs/operations.md)."],
    ]
    optParameters = [
        ["config", None, "sites", "A Python config file, or a directory whose *.py files are "
         "all loaded in name order."],
        ["certs", None, "certs", "The certificate directory (NAME.pem, NAME.crt+NAME.key, "
         "certbot's live/NAME/); re-scanned every 2 s."],
        # The paths must match edgeproxy.ops.admin.admin_site (a test compares them).
        ["admin", None, _DEFAULT_ADMIN, "Admin listener endpoint (/ page, /healthz, /readyz, "
         "/status, /metrics, /cache/purge); 'none' to disable."],
        ["max-body-size", None, DEFAULT_MAX_BODY_SIZE, "Default request body limit in bytes "
         "(413 above it); Route(max_body_size=...) overrides it per route.", _non_negative_int],
        ["redirect-port", None, None, "Port to put in http->https redirects (default: the "
         "first --https listener's port; 443 is left out of the URL).", _port_number],
        ["keepalive-timeout", None, DEFAULT_KEEPALIVE_TIMEOUT, "Seconds an idle client "
         "connection is kept open between requests.", _positive_float],
        ["header-timeout", None, DEFAULT_HEADER_TIMEOUT, "Seconds a request head may take "
         "from its first byte (a connection's first request: from accept, TLS handshake "
         "included); 408 and close past it.", _positive_float],
        ["body-timeout", None, DEFAULT_BODY_TIMEOUT, "Seconds a request body may take from "
         "the end of its head, plus one second per --body-min-rate bytes received; 408 and "
         "close past it.", _positive_float],
        ["body-min-rate", None, DEFAULT_BODY_MIN_RATE, "Bytes per second a request body "
         "must keep up past --body-timeout (each such many bytes earn one more second); 0: "
         "--body-timeout is a plain deadline for the whole body.", _non_negative_int],
        ["tunnel-idle-timeout", None, DEFAULT_TUNNEL_IDLE_TIMEOUT, "Seconds a tunnel after "
         "101 Switching Protocols (a WebSocket) may pass nothing either way before both "
         "connections are closed.", _positive_float],
        ["max-request-line", None, _LIMITS.max_request_line, "Longest request-target (URL) "
         "in bytes; 414 above it.", _positive_int],
        ["max-header-bytes", None, _LIMITS.max_request_head_bytes, "Largest request header "
         "block in bytes (each line counted as name, value and 4); 431 above it.", _positive_int],
        ["max-headers", None, _LIMITS.max_request_headers, "Most header lines in a request; "
         "431 above it.", _positive_int],
        ["h2-max-concurrent-streams", None, _H2.max_concurrent_streams, "HTTP/2 streams a "
         "client connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).",
         _positive_int],
        ["h2-max-header-list-size", None, _H2.max_header_list_size, "Largest HTTP/2 request "
         "header list in bytes (each field counted as name, value and 32); a header block "
         "larger than this closes the connection.", _positive_int],
        ["h2-max-frame-size", None, _H2.max_frame_size, "Largest HTTP/2 frame payload a "
         "client may send (16384 to 16777215).", _frame_size],
        ["h2-initial-window-size", None, _H2.initial_window_size, "Each HTTP/2 stream's "
         "receive window in bytes (request body a client may send ahead).", _window_size],
        ["h2-connection-window-size", None, _H2.connection_window_size, "An HTTP/2 "
         "connection's receive window in bytes, all streams together.", _window_size],
        ["h2-max-resets-per-second", None, _H2.max_resets_per_second, "Streams an HTTP/2 "
         "client may reset per second before GOAWAY (rapid reset, CVE-2023-44487).",
         _positive_int],
        ["h2-control-frames-per-second", None, _H2.max_control_frames_per_second,
         "SETTINGS, PING and PRIORITY frames an HTTP/2 client may send per second before "
         "GOAWAY.", _positive_int],
        ["h2-window-timeout", None, _H2.window_timeout, "Seconds an HTTP/2 response may "
         "wait for the client to open its flow-control window before its stream is reset.",
         _positive_float],
        ["max-connections", None, DEFAULT_MAX_CONNECTIONS, "Open client connections this "
         "process accepts (https and http listeners together; per worker with --workers); "
         "over it a new connection is closed at accept, before TLS. 0: no limit.",
         _non_negative_int],
        ["max-connections-per-client", None, DEFAULT_MAX_PER_CLIENT, "Open connections one "
         "client address may hold (per process; --trusted-source peers are exempt); over it "
         "a new one is closed at accept, before TLS. 0: no limit (docs/security.md).",
         _non_negative_int],
        ["max-connection-rate-per-client", None, None, "RATE[:BURST]: new connections per "
         "second one client address may open, BURST of them at once (default: RATE rounded "
         "up); over it a new one is closed at accept, before TLS. 0: no limit [default: 0].",
         _connection_rate],
        ["workers", None, 1, "Worker processes sharing the listeners, or 'auto' (one per "
         "CPU); with more than 1 this process binds the listeners and supervises the "
         "workers (docs/scaling.md).", _workers],
        ["access-log", None, None, "Write access lines to this file ('-': stdout) instead "
         "of through the twistd log; 'off': no access log."],
        ["access-log-format", None, "combined", "Access line format: combined or json.",
         _access_log_format],
        ["drain-timeout", None, DEFAULT_DRAIN_TIMEOUT, "On SIGTERM, seconds to let requests "
         "in flight finish after the listeners close.", _non_negative_float],
        ["reload-timeout", None, DEFAULT_RELOAD_TIMEOUT, "On a reload (SIGHUP, "
         "--watch-config), seconds the config files may take to load (off the event loop) "
         "before the reload is rejected and the running config stays.", _positive_float],
        ["rate-limit-store", None, "memory", "Where routes' rate-limit buckets are kept: "
         "'memory' (each process its own) or redis://[:PASSWORD@]HOST:PORT[/DB] (one budget "
         "for every process sharing that Redis); docs/security.md#rate-limits.",
         _rate_limit_store],
        ["rate-limit-max-keys", None, DEFAULT_RATE_LIMIT_MAX_KEYS, "Rate-limit buckets the "
         "memory store keeps at most (the least recently used is dropped beyond it).",
         _positive_int],
        ["resolver", None, None, "The DNS server (HOST:PORT, an IP address) that endpoints "
         "given by name are resolved with, every resolve_every seconds [default: /etc/hosts, "
         "then /etc/resolv.conf's servers]; docs/dns.md.", _resolver],
        ["tls-profile", None, "intermediate", "TLS versions, suites and groups, after "
         "Mozilla's profiles: intermediate (TLS 1.2 with ECDHE and AES-GCM or ChaCha20, "
         "and TLS 1.3) or modern (TLS 1.3 only); docs/certificates.md.", _tls_profile],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["https"] = []
        self["http"] = []
        self["trusted-source"] = []
        self["deny"] = []
        #: The arguments as given, for the worker processes (edgeproxy.app.workers).
        self.argv: list[str] = []

    def parseOptions(self, options: list[str] | None = None) -> None:
        self.argv = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def opt_version(self) -> None:
        """Display edgeproxy's version (and Twisted's and Python's) and exit."""
        print(version_text())
        sys.exit(0)

    def opt_https(self, description: str) -> None:
        """TLS listener endpoint, wrapped in TLS with SNI; repeatable [default: tcp:8443]."""
        self["https"].append(description)

    def opt_trusted_source(self, network: str) -> None:
        """Trusted forwarder network (CIDR): its X-Forwarded-For names the client; repeatable."""
        try:
            self["trusted-source"].append(ipaddress.ip_network(network, strict=False))
        except ValueError as e:
            raise usage.UsageError(f"--trusted-source: {e}") from None

    def opt_deny(self, network: str) -> None:
        """Client network (CIDR) whose connections are closed at accept, before TLS, on
        the https and http listeners; repeatable [default: none]."""
        try:
            self["deny"].append(ipaddress.ip_network(network, strict=False))
        except ValueError as e:
            raise usage.UsageError(f"--deny: {e}") from None

    def opt_http(self, description: str) -> None:
        """Plain HTTP listener (redirects to https; repeatable; 'none': off) [default: tcp:8080]."""
        self["http"].append(description)

    def postOptions(self) -> None:
        https = tuple(self["https"]) or (_DEFAULT_HTTPS,)
        http = tuple(d for d in self["http"] if d != "none") if self["http"] else (_DEFAULT_HTTP,)
        admin = None if self["admin"] in ("none", "") else self["admin"]
        rate, burst = self["max-connection-rate-per-client"] or (0.0, 1)
        self["settings"] = Settings(
            config=self["config"],
            certs=self["certs"],
            https=https,
            http=http,
            admin=admin,
            max_body_size=self["max-body-size"],
            redirect_port=self["redirect-port"],
            keepalive_timeout=self["keepalive-timeout"],
            header_timeout=self["header-timeout"],
            body_timeout=self["body-timeout"],
            body_min_rate=self["body-min-rate"],
            tunnel_idle_timeout=self["tunnel-idle-timeout"],
            workers=self["workers"],
            access_log=self["access-log"],
            access_log_format=self["access-log-format"],
            trusted_sources=tuple(self["trusted-source"]),
            watch_config=bool(self["watch-config"]),
            drain_timeout=self["drain-timeout"],
            reload_timeout=self["reload-timeout"],
            tls_profile=self["tls-profile"],
            rate_limit_store=self["rate-limit-store"],
            resolver=self["resolver"],
            rate_limit_max_keys=self["rate-limit-max-keys"],
            fast_paths=not self["no-fast-paths"],
            http2=not self["no-http2"],
            h2_limits=H2Limits(
                max_concurrent_streams=self["h2-max-concurrent-streams"],
                max_header_list_size=self["h2-max-header-list-size"],
                max_frame_size=self["h2-max-frame-size"],
                initial_window_size=self["h2-initial-window-size"],
                connection_window_size=self["h2-connection-window-size"],
                max_resets_per_second=self["h2-max-resets-per-second"],
                max_control_frames_per_second=self["h2-control-frames-per-second"],
                window_timeout=self["h2-window-timeout"],
            ),
            http_limits=attrs.evolve(
                _LIMITS,
                max_request_line=self["max-request-line"],
                max_request_head_bytes=self["max-header-bytes"],
                max_request_headers=self["max-headers"],
            ),
            accept_limits=AcceptLimits(
                max_connections=self["max-connections"],
                max_per_client=self["max-connections-per-client"],
                rate=rate,
                burst=burst,
                deny=tuple(self["deny"]),
                exempt=tuple(self["trusted-source"]),
            ),
        )
        if self["check"]:
            # --check must start nothing: not even twistd's pid file or logging.
            from edgeproxy.app.checks import run_check

            raise SystemExit(run_check(self["settings"], strict=bool(self["strict"])))
