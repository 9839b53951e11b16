"""
One error hierarchy.  Each request-path error carries the HTTP status it maps
to (``status_hint``) and a short public message that never names an internal
address; whether a retry is safe is a property of the type (``never_sent``),
never something to guess from message text.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

__all__ = [
    "BadRequest",
    "BodyTooLarge",
    "ConfigError",
    "ConfigProblem",
    "EdgeProxyError",
    "HeadTooLarge",
    "LimitExceeded",
    "MisdirectedRequest",
    "NoHealthyUpstream",
    "NoRoute",
    "NoVirtualHost",
    "NotImplementedCoding",
    "NotImplementedMethod",
    "UpstreamConnectFailed",
    "UpstreamConnectTimeout",
    "UpstreamError",
    "UpstreamResponseFailed",
    "UpstreamTimeout",
    "VersionNotSupported",
]


class EdgeProxyError(Exception):
    """Base of the errors a request can end in."""

    status_hint: int = 500
    public_message: str = "internal error"
    #: True when the request never left edgeproxy, so any method may be retried.
    never_sent: bool = False
    #: A short cause for logs and breaker transitions ("connect refused", ...).
    cause: str = "error"

    def extra_headers(self) -> list[tuple[bytes, bytes]]:
        """Headers the error response carries besides Content-Type and Content-Length."""
        return []


class NoVirtualHost(EdgeProxyError):
    status_hint = 404
    public_message = "no such site"


class NoRoute(EdgeProxyError):
    status_hint = 404
    public_message = "not found"


class BadRequest(EdgeProxyError):
    """The request cannot be parsed or is ambiguous; the connection is closed after the answer."""

    status_hint = 400
    public_message = "bad request"


class HeadTooLarge(BadRequest):
    """The request line and headers exceed the limit (nginx answers 400, Envoy 431)."""

    status_hint = 431
    public_message = "request header fields too large"


class VersionNotSupported(BadRequest):
    """HTTP/2.0 (or any major version but 1) on an HTTP/1.1 connection."""

    status_hint = 505
    public_message = "http version not supported"


class NotImplementedCoding(BadRequest):
    """A ``Transfer-Encoding`` other than ``chunked`` (as nginx, 501)."""

    status_hint = 501
    public_message = "transfer coding not implemented"


class NotImplementedMethod(BadRequest):
    """A method the parser does not know (501, as RFC 9110 15.6.2 suggests)."""

    status_hint = 501
    public_message = "method not implemented"


class BodyTooLarge(EdgeProxyError):
    status_hint = 413
    public_message = "request body too large"


class UpstreamError(EdgeProxyError):
    """The upstream could not give a usable response."""

    status_hint = 502
    public_message = "bad gateway"


class UpstreamConnectFailed(UpstreamError):
    """The TCP connection to the endpoint failed (refused, unreachable, reset while connecting)."""

    never_sent = True
    cause = "connect failed"


class UpstreamConnectTimeout(UpstreamError):
    """The TCP connection to the endpoint did not complete within ``connect_timeout``."""

    status_hint = 504
    public_message = "gateway timeout"
    never_sent = True
    cause = "connect timeout"


class UpstreamTimeout(UpstreamError):
    """No response headers within ``response_timeout`` after sending."""

    status_hint = 504
    public_message = "gateway timeout"
    cause = "response timeout"


class UpstreamResponseFailed(UpstreamError):
    """After the request was sent, the connection broke or the answer did not parse."""

    cause = "response failed"


class NoHealthyUpstream(EdgeProxyError):
    """Every endpoint of the cluster is unhealthy or ejected (and panic mode is off)."""

    status_hint = 503
    public_message = "no healthy upstream"
    cause = "no healthy upstream"

    def __init__(self, retry_after: int = 1) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after

    def extra_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"Retry-After", b"%d" % self.retry_after)]


class LimitExceeded(EdgeProxyError):
    """A cluster limit was reached; the request is shed at once.

    ``limit`` is ``max_requests``, ``max_pending`` or ``pending_timeout`` and is
    sent to the client in ``X-Edgeproxy-Limit`` (as Envoy's
    ``x-envoy-overloaded``), so load tests and clients can tell shedding from failure.
    """

    status_hint = 503
    public_message = "overloaded"
    cause = "limit"

    def __init__(self, limit: str) -> None:
        super().__init__(limit)
        self.limit = limit

    def extra_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"X-Edgeproxy-Limit", self.limit.encode("ascii"))]


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
