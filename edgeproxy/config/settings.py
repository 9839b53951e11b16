"""Process-wide settings, from the command line (see :mod:`edgeproxy.app.tap`)."""

from __future__ import annotations

import attrs

from edgeproxy.core.addresses import IPNetwork
from edgeproxy.core.connlimits import AcceptLimits
from edgeproxy.core.protocol import H2Limits, HTTPLimits

__all__ = ["DEFAULT_MAX_BODY_SIZE", "IPNetwork", "Settings"]

#: Request bodies larger than this get 413 unless a Route says otherwise.
DEFAULT_MAX_BODY_SIZE = 64 * 1024 * 1024
#: Seconds an idle client keep-alive connection is kept open (nginx: 75).
DEFAULT_KEEPALIVE_TIMEOUT = 75.0
#: Seconds a request head may take from its first byte; a connection's first
#: request from accept, TLS handshake included (nginx's client_header_timeout: 60).
DEFAULT_HEADER_TIMEOUT = 30.0
#: Seconds a request body may take from the end of its head, before the
#: extension earned at the minimum rate (Apache mod_reqtimeout's body=20).
DEFAULT_BODY_TIMEOUT = 30.0
#: Bytes of body that earn one more second (mod_reqtimeout's MinRate=500); 0:
#: the body timeout is a plain deadline.
DEFAULT_BODY_MIN_RATE = 1024
#: Seconds between scans of the certificate directory (changes apply within 5 s).
DEFAULT_CERT_POLL_INTERVAL = 2.0
#: After a 413 sent before the body arrived, keep reading (and discarding) for
#: this long so the client sees the response instead of a reset (nginx's lingering close).
DEFAULT_LINGERING_TIMEOUT = 5.0
#: On SIGTERM, seconds requests in flight get to finish after the listeners close.
DEFAULT_DRAIN_TIMEOUT = 30.0
#: Buckets the in-memory rate-limit store keeps at most (about 150 bytes each:
#: the key, its TAT and its dict entry).
DEFAULT_RATE_LIMIT_MAX_KEYS = 100_000
#: Seconds a tunnel after ``101 Switching Protocols`` (a WebSocket) may pass
#: nothing either way before both connections are closed (Envoy's stream idle
#: timeout; HAProxy's ``timeout tunnel`` is usually set to an hour, nginx's
#: ``proxy_read_timeout`` of 60 s is what cuts idle WebSockets there).
DEFAULT_TUNNEL_IDLE_TIMEOUT = 300.0
#: A configuration reload whose files take longer than this to load is rejected.
DEFAULT_RELOAD_TIMEOUT = 30.0


@attrs.frozen
class Settings:
    config: str = "sites"
    certs: str = "certs"
    https: tuple[str, ...] = ("tcp:8443",)
    http: tuple[str, ...] = ("tcp:8080",)
    admin: str | None = "tcp:9901:interface=127.0.0.1"
    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    #: Port written into http->https redirects; None = the first https listener's port.
    redirect_port: int | None = None
    keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT
    #: ``--header-timeout``, ``--body-timeout``, ``--body-min-rate``: the
    #: deadlines for a slow client (docs/security.md, "Deadlines for slow clients").
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    body_min_rate: int = DEFAULT_BODY_MIN_RATE
    cert_poll_interval: float = DEFAULT_CERT_POLL_INTERVAL
    lingering_timeout: float = DEFAULT_LINGERING_TIMEOUT
    #: ``--tunnel-idle-timeout``: a tunnel (WebSocket...) silent both ways
    #: this long is closed (docs/http.md, "WebSocket and other upgrades").
    tunnel_idle_timeout: float = DEFAULT_TUNNEL_IDLE_TIMEOUT
    via: bytes = b"1.1 edgeproxy"
    #: Worker processes sharing the listeners (``--workers``); 1 = one process,
    #: no supervisor.  See :mod:`edgeproxy.app.workers` and docs/scaling.md.
    workers: int = 1
    #: Trusted forwarders (``--trusted-source CIDR``): a peer in one has its
    #: ``X-Request-Id``, ``X-Forwarded-For`` and ``Forwarded`` kept, and the
    #: client is found in the latter (:mod:`edgeproxy.core.addresses`); from
    #: anyone else they are replaced.  Empty: ``X-Forwarded-For`` is appended
    #: to, unverified, and the peer is the client.
    trusted_sources: tuple[IPNetwork, ...] = ()
    #: ``--access-log PATH|-|off``: write access lines there directly; None = through
    #: twisted.logger; ``off``: none at all.
    access_log: str | None = None
    #: ``--access-log-format combined|json``.
    access_log_format: str = "combined"
    #: ``--watch-config``: reload when a config file changes.
    watch_config: bool = False
    #: ``--drain-timeout``: on SIGTERM, how long requests in flight may take to finish.
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    #: ``--reload-timeout``: a reload still loading after this many seconds is
    #: rejected and the running configuration stays.
    reload_timeout: float = DEFAULT_RELOAD_TIMEOUT
    #: ``--tls-profile intermediate|modern`` (edgeproxy.tls.certificates.TLS_PROFILES).
    tls_profile: str = "intermediate"
    #: False with ``--no-fast-paths``: Twisted's own TLS layer, write and event
    #: dispatch instead of edgeproxy's (:mod:`edgeproxy.app.fastpaths`).
    fast_paths: bool = True
    #: The HTTP/1.1 protocol limits (head sizes, header count, spooling, upstream
    #: reads and writes), handed to the listeners and the upstream client.
    http_limits: HTTPLimits = attrs.field(factory=HTTPLimits)
    #: False with ``--no-http2``: the https listeners offer ``http/1.1`` only over ALPN.
    http2: bool = True
    #: The HTTP/2 limits and defences (the ``--h2-*`` options).
    h2_limits: H2Limits = attrs.field(factory=H2Limits)
    #: The limits judged when a client connection is accepted, before TLS
    #: (``--max-connections``, ``--max-connections-per-client``,
    #: ``--max-connection-rate-per-client``, ``--deny``): per process, so per
    #: worker with ``--workers``.  See :mod:`edgeproxy.net.acceptgate`.
    accept_limits: AcceptLimits = attrs.field(factory=AcceptLimits)
    #: ``--rate-limit-store memory|redis://HOST:PORT[/DB]``: where the routes'
    #: rate-limit buckets are kept (edgeproxy.ratelimit).
    rate_limit_store: str = "memory"
    #: ``--resolver HOST:PORT``: the DNS server named endpoints are resolved
    #: with (edgeproxy.cluster.discovery); None: /etc/hosts, then the servers
    #: in /etc/resolv.conf.
    resolver: tuple[str, int] | None = None
    #: ``--rate-limit-max-keys``: buckets the memory store keeps at most.
    rate_limit_max_keys: int = DEFAULT_RATE_LIMIT_MAX_KEYS
