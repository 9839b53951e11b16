"""
``edgeproxy.net.failures.upstream_error``: Twisted's failures to connect to an
upstream or to exchange a request with it, as edgeproxy's errors, in the one
place the upstream client and the health prober share.
"""

from __future__ import annotations

import pytest
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import error as ierror
from twisted.python.failure import Failure
from twisted.web._newclient import RequestTransmissionFailed, ResponseFailed, ResponseNeverReceived

from edgeproxy.core.errors import (
    EdgeProxyError,
    Reason,
    UpstreamConnectFailed,
    UpstreamConnectTimeout,
    UpstreamResponseFailed,
    UpstreamTimeout,
    UpstreamTLSFailed,
    UpstreamUnexpectedFailure,
)
from edgeproxy.net.failures import upstream_error

LOST = Failure(ierror.ConnectionLost())


@pytest.mark.parametrize(
    ("error", "kind", "cause"),
    [
        (ierror.ConnectionRefusedError(), UpstreamConnectFailed, "connect refused"),
        (ierror.TimeoutError(), UpstreamConnectTimeout, "connect timeout"),
        (ierror.DNSLookupError(), UpstreamConnectFailed, "dns lookup failed"),
        (ierror.ConnectError(), UpstreamConnectFailed, "connect failed"),
        (ierror.NoRouteError(), UpstreamConnectFailed, "connect failed"),
        (ResponseNeverReceived([LOST]), UpstreamResponseFailed, "no response"),
        (ResponseFailed([LOST]), UpstreamResponseFailed, "connection lost"),
        (RequestTransmissionFailed([LOST]), UpstreamResponseFailed, "connection lost"),
        (ierror.ConnectionLost(), UpstreamResponseFailed, "connection lost"),
        (ierror.ConnectionDone(), UpstreamResponseFailed, "connection lost"),
        (ierror.ConnectionAborted(), UpstreamResponseFailed, "connection lost"),
        # twisted.web's wrappers are looked into for why the connection failed.
        (
            ResponseNeverReceived([Failure(ierror.ConnectionRefusedError())]),
            UpstreamConnectFailed,
            "connect refused",
        ),
        (
            RequestTransmissionFailed([Failure(ierror.TimeoutError())]),
            UpstreamConnectTimeout,
            "connect timeout",
        ),
    ],
)
def test_known_failures(error: Exception, kind: type[EdgeProxyError], cause: str) -> None:
    mapped = upstream_error(Failure(error))
    assert type(mapped) is kind
    assert mapped.cause == cause
    # Only a connection that was never made leaves the request unsent.
    assert mapped.never_sent is (kind in (UpstreamConnectFailed, UpstreamConnectTimeout))


def test_the_tokens_do_not_depend_on_the_words() -> None:
    """Access log and metrics read the reason, the same for every refusal."""
    refused = upstream_error(Failure(ierror.ConnectionRefusedError()))
    dns = upstream_error(Failure(ierror.DNSLookupError()))
    assert refused.reason is dns.reason is Reason.CONNECT_FAILED


@pytest.mark.parametrize(
    "error",
    [
        ierror.ConnectingCancelledError(None),
        ierror.ConnectionLost(),
        ValueError("boom"),
    ],
)
def test_whatever_ends_a_connect_was_never_sent(error: Exception) -> None:
    mapped = upstream_error(Failure(error), connecting=True)
    assert isinstance(mapped, UpstreamConnectFailed)
    assert mapped.never_sent


def test_a_connect_timeout_stays_a_timeout_while_connecting() -> None:
    mapped = upstream_error(Failure(ierror.TimeoutError()), connecting=True)
    assert type(mapped) is UpstreamConnectTimeout
    assert mapped.status_hint == 504


def test_edgeproxy_errors_pass_through() -> None:
    error = UpstreamTimeout()
    assert upstream_error(Failure(error)) is error
    assert upstream_error(Failure(error), connecting=True) is error


def test_an_unknown_failure_says_so() -> None:
    mapped = upstream_error(Failure(ValueError("boom")))
    assert type(mapped) is UpstreamUnexpectedFailure
    assert mapped.cause == "error: ValueError"
    # To the client it is a broken response, and it is not retried as unsent.
    assert (mapped.status_hint, mapped.reason, mapped.never_sent) == (
        502,
        Reason.BAD_RESPONSE,
        False,
    )


_VERIFY_FAILED = SSL.Error(
    [("SSL routines", "tls_post_process_server_certificate", "certificate verify failed")]
)


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (_VERIFY_FAILED, "upstream tls: certificate verify failed"),
        (VerificationError([]), "upstream tls: certificate name mismatch"),
        (SSL.Error(), "upstream tls failed"),
        # The health prober's Agent wraps it.
        (ResponseNeverReceived([Failure(_VERIFY_FAILED)]), "upstream tls: certificate verify failed"),
    ],
)
def test_a_failed_upstream_handshake_is_upstream_tls(error: Exception, cause: str) -> None:
    """A certificate that does not verify: nothing was sent, and it is a
    connect failure (outlier ejection counts it as one), with its own token."""
    for connecting in (False, True):
        mapped = upstream_error(Failure(error), connecting=connecting)
        assert type(mapped) is UpstreamTLSFailed
        assert isinstance(mapped, UpstreamConnectFailed)
        assert mapped.never_sent
        assert mapped.reason is Reason.UPSTREAM_TLS
        assert mapped.status_hint == 502
        assert mapped.cause == cause
