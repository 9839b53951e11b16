"""
One error hierarchy.  Each request-path error carries the HTTP status it maps
to (``status_hint``), a short public message that never names an internal
address, and what it means for the access log and the metrics: an
:class:`Outcome` and a :class:`Reason`.  Whether a retry is safe is a property
of the type (``never_sent``), never something to guess from message text.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import attrs

__all__ = [
    "AuthUnavailable",
    "BadRequest",
    "BodyTooLarge",
    "ConfigError",
    "ConfigProblem",
    "EdgeProxyError",
    "Forbidden",
    "HeadTooLarge",
    "LimitExceeded",
    "MisdirectedRequest",
    "NoHealthyUpstream",
    "NoRoute",
    "NoVirtualHost",
    "NotCached",
    "NotImplementedCoding",
    "NotImplementedMethod",
    "Outcome",
    "RateLimitUnavailable",
    "RateLimited",
    "Reason",
    "RequestTimeout",
    "UpgradeRefused",
    "UpstreamConnectFailed",
    "UpstreamConnectTimeout",
    "UpstreamError",
    "UpstreamResponseFailed",
    "UpstreamTLSFailed",
    "UpstreamTimeout",
    "UpstreamUnexpectedFailure",
    "UriTooLong",
    "VersionNotSupported",
    "failure_words",
]


class Outcome(StrEnum):
    """What happened to a request, as the access log and the metrics say it
    (docs/operations.md has the table)."""

    #: Answered: the upstream's response relayed whole (whatever its status).
    OK = "ok"
    #: Answered with edgeproxy's http -> https redirect.
    REDIRECT = "redirect"
    #: Refused as sent (4xx/5xx from edgeproxy, nothing forwarded).
    REJECTED = "rejected"
    #: No virtual host or route for it (404).
    NO_ROUTE = "no_route"
    #: Shed by a cluster limit (503).
    LIMITED = "limited"
    #: No usable response from the cluster (502, 503, 504, or a body cut off).
    UPSTREAM_ERROR = "upstream_error"
    #: The client went away before its response was written whole (499).
    CLIENT_CLOSED = "client_closed"
    #: The client did not send its request within ``--header-timeout`` or
    #: ``--body-timeout`` (408).
    CLIENT_TIMEOUT = "client_timeout"
    #: A fault in edgeproxy itself (500).
    ERROR = "error"


class Reason(StrEnum):
    """Why, for every outcome but ``ok`` and ``redirect``: a fixed set of
    tokens, so that they can label metrics."""

    # rejected
    BAD_REQUEST_LINE = "bad_request_line"
    BAD_HEADER = "bad_header"
    BAD_FRAMING = "bad_framing"
    BAD_HOST = "bad_host"
    BAD_TARGET = "bad_target"
    HEADER_TOO_LARGE = "header_too_large"
    URI_TOO_LONG = "uri_too_long"
    BODY_TOO_LARGE = "body_too_large"
    METHOD_NOT_IMPLEMENTED = "method_not_implemented"
    #: ``Cache-Control: only-if-cached`` and nothing usable stored (504).
    NOT_CACHED = "not_cached"
    #: The client's address is not allowed on the route (403).
    FORBIDDEN = "forbidden"
    #: Over the route's rate limit for its key (429).
    RATE_LIMITED = "rate_limited"
    #: The rate-limit store failed and the route fails closed (503).
    RATE_LIMIT_UNAVAILABLE = "rate_limit_unavailable"
    #: The route's auth service answered with something other than a 2xx,
    #: which the client got as it was (its status: 401, 403, 302...).
    AUTH_DENIED = "auth_denied"
    #: The route's auth service could not be asked (unreachable, no answer
    #: within its timeout, a broken or oversized answer): 503, fail closed.
    AUTH_UNAVAILABLE = "auth_unavailable"
    CODING_NOT_IMPLEMENTED = "coding_not_implemented"
    VERSION_NOT_SUPPORTED = "version_not_supported"
    MISDIRECTED_REQUEST = "misdirected_request"
    #: An ``Upgrade`` (WebSocket...) on a route with ``websocket=False`` (403).
    UPGRADE_REFUSED = "upgrade_refused"
    # no_route
    NO_VIRTUAL_HOST = "no_virtual_host"
    NO_ROUTE = "no_route"
    # limited (the names of the limits)
    MAX_REQUESTS = "max_requests"
    MAX_PENDING = "max_pending"
    PENDING_TIMEOUT = "pending_timeout"
    # upstream_error
    NO_HEALTHY_UPSTREAM = "no_healthy_upstream"
    CONNECT_FAILED = "connect_failed"
    CONNECT_TIMEOUT = "connect_timeout"
    #: The TLS handshake with the endpoint failed: its certificate did not
    #: verify, or it refused ours (``Cluster.upstream_tls``).
    UPSTREAM_TLS = "upstream_tls"
    RESPONSE_TIMEOUT = "response_timeout"
    BAD_RESPONSE = "bad_response"
    #: The upstream broke off mid-body, or its connection failed (reset, TLS
    #: error) mid-tunnel after a 101.
    TRUNCATED = "truncated"
    #: The upstream went quiet mid-body (outcome upstream_error); or nothing
    #: passed either way through a tunnel for ``--tunnel-idle-timeout``
    #: (outcome client_timeout, status 101).
    IDLE_TIMEOUT = "idle_timeout"
    # client_closed
    REQUEST_INCOMPLETE = "request_incomplete"
    QUEUED = "queued"
    AWAITING_RESPONSE = "awaiting_response"
    RESPONSE_INCOMPLETE = "response_incomplete"
    # client_timeout
    HEADER_TIMEOUT = "header_timeout"
    BODY_TIMEOUT = "body_timeout"
    #: An HTTP/2 response waited past ``--h2-window-timeout`` for the client's window.
    WINDOW_TIMEOUT = "window_timeout"
    # error
    INTERNAL_ERROR = "internal_error"


#: How an endpoint's failures are worded where a person reads them (breaker
#: transitions, ``last_cause`` in /status, logs), when the words are not the
#: token's own.
_WORDS = {Reason.BAD_RESPONSE: "response failed"}


def failure_words(cause: Reason | int) -> str:
    """Why an attempt on an endpoint failed, in words: a :class:`Reason`
    (``"connect failed"``, ``"truncated"``, ``"idle timeout"``...) or the
    failure status the endpoint answered with (``"status 503"``)."""
    if isinstance(cause, Reason):
        return _WORDS.get(cause) or cause.value.replace("_", " ")
    return f"status {cause}"


class EdgeProxyError(Exception):
    """Base of the errors a request can end in."""

    status_hint: int = 500
    public_message: str = "internal error"
    outcome: Outcome = Outcome.ERROR
    reason: Reason = Reason.INTERNAL_ERROR
    #: True when the request never left edgeproxy, so any method may be retried.
    never_sent: bool = False
    #: What happened, in a few words ("connect refused"), for logs and
    #: health checks; an instance may say more than its class.
    cause: str = "error"

    def extra_headers(self) -> list[tuple[bytes, bytes]]:
        """Headers the error response carries besides Content-Type and Content-Length."""
        return []


class NoVirtualHost(EdgeProxyError):
    status_hint = 404
    public_message = "no such site"
    outcome = Outcome.NO_ROUTE
    reason = Reason.NO_VIRTUAL_HOST


class NoRoute(EdgeProxyError):
    status_hint = 404
    public_message = "not found"
    outcome = Outcome.NO_ROUTE
    reason = Reason.NO_ROUTE


class BadRequest(EdgeProxyError):
    """The request cannot be parsed or is ambiguous; the connection is closed after the answer.

    ``reason`` says which part was wrong (the request line by default)."""

    status_hint = 400
    public_message = "bad request"
    outcome = Outcome.REJECTED
    reason = Reason.BAD_REQUEST_LINE

    def __init__(self, reason: Reason | None = None) -> None:
        super().__init__()
        if reason is not None:
            self.reason = reason


class HeadTooLarge(BadRequest):
    """The request line and headers exceed the limit (nginx answers 400, Envoy 431)."""

    status_hint = 431
    public_message = "request header fields too large"
    reason = Reason.HEADER_TOO_LARGE


class UriTooLong(BadRequest):
    """The request line is longer than ``--max-request-line`` (RFC 9110 15.5.15: 414)."""

    status_hint = 414
    public_message = "uri too long"
    reason = Reason.URI_TOO_LONG


class VersionNotSupported(BadRequest):
    """HTTP/2.0 (or any major version but 1) on an HTTP/1.1 connection."""

    status_hint = 505
    public_message = "http version not supported"
    reason = Reason.VERSION_NOT_SUPPORTED


class NotImplementedCoding(BadRequest):
    """A ``Transfer-Encoding`` other than ``chunked`` (as nginx, 501)."""

    status_hint = 501
    public_message = "transfer coding not implemented"
    reason = Reason.CODING_NOT_IMPLEMENTED


class NotImplementedMethod(BadRequest):
    """A well-formed method token the parser does not know (501, as RFC 9110
    15.6.2 suggests); a method that is not a token is a :class:`BadRequest`."""

    status_hint = 501
    public_message = "method not implemented"
    reason = Reason.METHOD_NOT_IMPLEMENTED


class BodyTooLarge(EdgeProxyError):
    status_hint = 413
    public_message = "request body too large"
    outcome = Outcome.REJECTED
    reason = Reason.BODY_TOO_LARGE


class Forbidden(EdgeProxyError):
    """The client's address is denied, or not allowed, by the route's or
    its virtual host's ``allow``/``deny`` (403)."""

    status_hint = 403
    public_message = "forbidden"
    outcome = Outcome.REJECTED
    reason = Reason.FORBIDDEN


class UpgradeRefused(EdgeProxyError):
    """An ``Upgrade`` request (WebSocket...) on a route with
    ``websocket=False`` (403; the connection stays open)."""

    status_hint = 403
    public_message = "upgrade not allowed"
    outcome = Outcome.REJECTED
    reason = Reason.UPGRADE_REFUSED


class RequestTimeout(EdgeProxyError):
    """The client was too slow sending its request: the head past
    ``--header-timeout`` (``reason`` header_timeout, the default), or the body
    past ``--body-timeout`` and its minimum rate (body_timeout).  408, then
    the connection closes."""

    status_hint = 408
    public_message = "request timeout"
    outcome = Outcome.CLIENT_TIMEOUT
    reason = Reason.HEADER_TIMEOUT

    def __init__(self, reason: Reason | None = None) -> None:
        super().__init__()
        if reason is not None:
            self.reason = reason


class RateLimited(EdgeProxyError):
    """Over the route's ``rate_limit`` for the client's key (RFC 6585 4: 429),
    with ``Retry-After`` in whole seconds, at least 1."""

    status_hint = 429
    public_message = "too many requests"
    outcome = Outcome.REJECTED
    reason = Reason.RATE_LIMITED

    def __init__(self, retry_after: int = 1) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after

    def extra_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"Retry-After", b"%d" % self.retry_after)]


class RateLimitUnavailable(EdgeProxyError):
    """The rate-limit store could not decide (Redis unreachable, an error, no
    answer in time) and the route's ``RateLimit`` has ``on_store_error="closed"``:
    503, nothing forwarded, ``Retry-After: 1``."""

    status_hint = 503
    public_message = "service unavailable"
    outcome = Outcome.REJECTED
    reason = Reason.RATE_LIMIT_UNAVAILABLE

    def extra_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"Retry-After", b"1")]


class AuthUnavailable(EdgeProxyError):
    """The route's ``ForwardAuth`` service gave no usable answer (refused,
    unreachable, nothing within its ``timeout``, a broken response, a denial
    whose body is over ``max_response_body``): 503, nothing forwarded (it
    fails closed, as nginx's ``auth_request`` and Traefik's ForwardAuth do)."""

    status_hint = 503
    public_message = "service unavailable"
    outcome = Outcome.REJECTED
    reason = Reason.AUTH_UNAVAILABLE


class NotCached(EdgeProxyError):
    """A request with ``Cache-Control: only-if-cached`` that the cache cannot
    answer (RFC 9111 5.2.1.7: 504)."""

    status_hint = 504
    public_message = "not in cache"
    outcome = Outcome.REJECTED
    reason = Reason.NOT_CACHED


class UpstreamError(EdgeProxyError):
    """The upstream could not give a usable response.  ``cause`` may say
    more precisely what happened than the class does."""

    status_hint = 502
    public_message = "bad gateway"
    outcome = Outcome.UPSTREAM_ERROR
    reason = Reason.BAD_RESPONSE

    def __init__(self, cause: str | None = None) -> None:
        super().__init__()
        if cause is not None:
            self.cause = cause


class UpstreamConnectFailed(UpstreamError):
    """The TCP connection to the endpoint failed (refused, unreachable, reset while connecting)."""

    never_sent = True
    cause = "connect failed"
    reason = Reason.CONNECT_FAILED


class UpstreamTLSFailed(UpstreamConnectFailed):
    """The TLS handshake with the endpoint failed (its certificate did not
    verify against the cluster's CA and name, it asked for a client
    certificate we do not have or refused ours, no common protocol): nothing
    was sent, and it counts as a connect failure."""

    cause = "upstream tls failed"
    reason = Reason.UPSTREAM_TLS


class UpstreamConnectTimeout(UpstreamError):
    """The TCP connection to the endpoint did not complete within ``connect_timeout``."""

    status_hint = 504
    public_message = "gateway timeout"
    never_sent = True
    cause = "connect timeout"
    reason = Reason.CONNECT_TIMEOUT


class UpstreamTimeout(UpstreamError):
    """No response headers within ``response_timeout`` after sending."""

    status_hint = 504
    public_message = "gateway timeout"
    cause = "response timeout"
    reason = Reason.RESPONSE_TIMEOUT


class UpstreamResponseFailed(UpstreamError):
    """After the request was sent, the connection broke or the answer did not parse."""

    cause = "response failed"


class UpstreamUnexpectedFailure(UpstreamResponseFailed):
    """A failure of a kind edgeproxy does not know (a bug somewhere: whoever
    meets one logs it with its traceback).  To the client, a broken response."""


class NoHealthyUpstream(EdgeProxyError):
    """Every endpoint of the cluster is unhealthy or ejected (and panic mode is off)."""

    status_hint = 503
    public_message = "no healthy upstream"
    cause = "no healthy upstream"
    outcome = Outcome.UPSTREAM_ERROR
    reason = Reason.NO_HEALTHY_UPSTREAM

    def __init__(self, retry_after: int = 1) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after

    def extra_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"Retry-After", b"%d" % self.retry_after)]


class LimitExceeded(EdgeProxyError):
    """A cluster limit was reached; the request is shed at once.

    ``limit`` is :attr:`Reason.MAX_REQUESTS`, ``MAX_PENDING`` or
    ``PENDING_TIMEOUT``; its token is sent to the client in ``X-Edgeproxy-Limit`` (as Envoy's
    ``x-envoy-overloaded``), so load tests and clients can tell shedding from failure.
    """

    status_hint = 503
    public_message = "overloaded"
    cause = "limit"
    outcome = Outcome.LIMITED

    def __init__(self, limit: Reason) -> None:
        super().__init__(limit)
        self.reason = self.limit = Reason(limit)

    def extra_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"X-Edgeproxy-Limit", self.limit.value.encode("ascii"))]


@attrs.frozen
class ConfigProblem:
    """One problem in a configuration or certificate file."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """Every problem found while loading a configuration, at once."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class MisdirectedRequest(EdgeProxyError):
    """The request's host is not covered by the certificate its TLS connection
    was set up with for the client's SNI name (RFC 9110 15.5.20): a client
    that verified one site's certificate must not reach another site through
    it.  The client may retry on a new connection; this one stays open."""

    status_hint = 421
    public_message = "misdirected request"
    cause = "misdirected"
    outcome = Outcome.REJECTED
    reason = Reason.MISDIRECTED_REQUEST
