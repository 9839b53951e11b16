"""What each edgeproxy.core.errors error means on the wire and in the access log.

The tests that raise these errors through the proxy read headers case-blind and
do not look at every class, so mutation testing of errors.py
(``tools/mutation.py errors``, docs/testing.md) found the header names as sent,
the reason of a shed request and the exception's arguments unpinned.  The table
below also pins the class attributes, which mutmut does not mutate at all.
"""

from __future__ import annotations

import pytest

from edgeproxy.core import errors
from edgeproxy.core.errors import (
    AuthUnavailable,
    BadRequest,
    BodyTooLarge,
    EdgeProxyError,
    Forbidden,
    HeadTooLarge,
    LimitExceeded,
    MisdirectedRequest,
    NoHealthyUpstream,
    NoRoute,
    NotCached,
    NotImplementedCoding,
    NotImplementedMethod,
    NoVirtualHost,
    Outcome,
    RateLimited,
    RateLimitUnavailable,
    Reason,
    RequestTimeout,
    UpgradeRefused,
    UpstreamConnectFailed,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamResponseFailed,
    UpstreamTimeout,
    UpstreamTLSFailed,
    UpstreamUnexpectedFailure,
    UriTooLong,
    VersionNotSupported,
)


def test_retry_after_is_sent_with_its_usual_case() -> None:
    error = NoHealthyUpstream(7)
    assert error.extra_headers() == [(b"Retry-After", b"7")]
    assert error.retry_after == 7
    assert NoHealthyUpstream().extra_headers() == [(b"Retry-After", b"1")]


def test_limit_header_is_sent_with_its_usual_case() -> None:
    assert LimitExceeded(Reason.MAX_PENDING).extra_headers() == [
        (b"X-Edgeproxy-Limit", b"max_pending")
    ]


@pytest.mark.parametrize("limit", [Reason.MAX_REQUESTS, Reason.MAX_PENDING, Reason.PENDING_TIMEOUT])
def test_a_shed_request_is_limited_for_the_named_limit(limit: Reason) -> None:
    error = LimitExceeded(limit)
    assert (error.limit, error.reason, error.outcome, error.status_hint) == (
        limit,
        limit,
        Outcome.LIMITED,
        503,
    )


def test_the_value_is_the_exceptions_argument() -> None:
    # What a logged failure shows after the class name.
    assert NoHealthyUpstream(7).args == (7,)
    assert str(LimitExceeded(Reason.MAX_REQUESTS)) == "max_requests"


def test_only_errors_with_something_to_say_add_headers() -> None:
    assert EdgeProxyError().extra_headers() == []
    assert UpstreamTimeout().extra_headers() == []
    assert BadRequest().extra_headers() == []


def test_bad_request_keeps_the_class_reason_unless_told() -> None:
    assert BadRequest().reason is Reason.BAD_REQUEST_LINE
    assert BadRequest(Reason.BAD_HOST).reason is Reason.BAD_HOST
    assert HeadTooLarge().reason is Reason.HEADER_TOO_LARGE
    assert BadRequest.reason is Reason.BAD_REQUEST_LINE  # the instance's reason, not the class's
    assert RequestTimeout(Reason.BODY_TIMEOUT).reason is Reason.BODY_TIMEOUT
    assert RequestTimeout.reason is Reason.HEADER_TIMEOUT


# (class, status, outcome, reason, never_sent): docs/operations.md's table of outcomes.
TABLE = [
    (EdgeProxyError, 500, Outcome.ERROR, Reason.INTERNAL_ERROR, False),
    (NoVirtualHost, 404, Outcome.NO_ROUTE, Reason.NO_VIRTUAL_HOST, False),
    (NoRoute, 404, Outcome.NO_ROUTE, Reason.NO_ROUTE, False),
    (BadRequest, 400, Outcome.REJECTED, Reason.BAD_REQUEST_LINE, False),
    (HeadTooLarge, 431, Outcome.REJECTED, Reason.HEADER_TOO_LARGE, False),
    (UriTooLong, 414, Outcome.REJECTED, Reason.URI_TOO_LONG, False),
    (VersionNotSupported, 505, Outcome.REJECTED, Reason.VERSION_NOT_SUPPORTED, False),
    (NotImplementedCoding, 501, Outcome.REJECTED, Reason.CODING_NOT_IMPLEMENTED, False),
    (NotImplementedMethod, 501, Outcome.REJECTED, Reason.METHOD_NOT_IMPLEMENTED, False),
    (BodyTooLarge, 413, Outcome.REJECTED, Reason.BODY_TOO_LARGE, False),
    (MisdirectedRequest, 421, Outcome.REJECTED, Reason.MISDIRECTED_REQUEST, False),
    (NotCached, 504, Outcome.REJECTED, Reason.NOT_CACHED, False),
    (Forbidden, 403, Outcome.REJECTED, Reason.FORBIDDEN, False),
    (UpgradeRefused, 403, Outcome.REJECTED, Reason.UPGRADE_REFUSED, False),
    (RequestTimeout, 408, Outcome.CLIENT_TIMEOUT, Reason.HEADER_TIMEOUT, False),
    (RateLimited, 429, Outcome.REJECTED, Reason.RATE_LIMITED, False),
    (RateLimitUnavailable, 503, Outcome.REJECTED, Reason.RATE_LIMIT_UNAVAILABLE, False),
    (AuthUnavailable, 503, Outcome.REJECTED, Reason.AUTH_UNAVAILABLE, False),
    (UpstreamError, 502, Outcome.UPSTREAM_ERROR, Reason.BAD_RESPONSE, False),
    (UpstreamConnectFailed, 502, Outcome.UPSTREAM_ERROR, Reason.CONNECT_FAILED, True),
    (UpstreamTLSFailed, 502, Outcome.UPSTREAM_ERROR, Reason.UPSTREAM_TLS, True),
    (UpstreamConnectTimeout, 504, Outcome.UPSTREAM_ERROR, Reason.CONNECT_TIMEOUT, True),
    (UpstreamTimeout, 504, Outcome.UPSTREAM_ERROR, Reason.RESPONSE_TIMEOUT, False),
    (UpstreamResponseFailed, 502, Outcome.UPSTREAM_ERROR, Reason.BAD_RESPONSE, False),
    (UpstreamUnexpectedFailure, 502, Outcome.UPSTREAM_ERROR, Reason.BAD_RESPONSE, False),
    (NoHealthyUpstream, 503, Outcome.UPSTREAM_ERROR, Reason.NO_HEALTHY_UPSTREAM, False),
]


@pytest.mark.parametrize(("cls", "status", "outcome", "reason", "never_sent"), TABLE)
def test_what_each_error_means(
    cls: type[EdgeProxyError], status: int, outcome: Outcome, reason: Reason, never_sent: bool
) -> None:
    error = cls()
    assert (error.status_hint, error.outcome, error.reason, error.never_sent) == (
        status,
        outcome,
        reason,
        never_sent,
    )


def test_the_table_has_every_error() -> None:
    request_errors = {
        cls
        for name in errors.__all__
        if isinstance(cls := getattr(errors, name), type) and issubclass(cls, EdgeProxyError)
    }
    assert request_errors - {LimitExceeded} == {row[0] for row in TABLE}


@pytest.mark.parametrize("cls", [row[0] for row in TABLE])
def test_public_messages_are_short_lower_case_and_name_nothing_internal(
    cls: type[EdgeProxyError],
) -> None:
    message = cls.public_message
    assert message == message.lower() and 0 < len(message) <= 40
    assert not any(character.isdigit() for character in message)  # no address, no port


def test_rate_limit_answers_say_when_to_come_back() -> None:
    assert RateLimited(7).extra_headers() == [(b"Retry-After", b"7")]
    assert RateLimited().extra_headers() == [(b"Retry-After", b"1")]
    assert RateLimitUnavailable().extra_headers() == [(b"Retry-After", b"1")]
