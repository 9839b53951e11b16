"""
Twisted's failures to connect to an upstream, or to exchange a request with
it, as edgeproxy's errors (:mod:`edgeproxy.core.errors`): the one place that
reads Twisted's exception types for that.  The upstream client and the health
prober both ask :func:`upstream_error`, so a refused connection is the same
error, with the same words, wherever it is met.
"""

from __future__ import annotations

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import error as ierror
from twisted.python.failure import Failure
from twisted.web._newclient import (
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)

from edgeproxy.core.errors import (
    EdgeProxyError,
    UpstreamConnectFailed,
    UpstreamConnectTimeout,
    UpstreamResponseFailed,
    UpstreamTLSFailed,
    UpstreamUnexpectedFailure,
)

__all__ = ["upstream_error"]


def _first_reason(failure: Failure) -> Failure:
    """The first reason inside twisted.web's ResponseNeverReceived & co."""
    if failure.check(ResponseNeverReceived, ResponseFailed, RequestTransmissionFailed):
        reasons = getattr(failure.value, "reasons", None)
        if reasons:
            first = reasons[0]
            if isinstance(first, Failure):
                return first
    return failure


def _tls_words(error: BaseException | None) -> str:
    """What went wrong in the handshake, shortly, for the log (not a metric label)."""
    if isinstance(error, VerificationError):
        return "upstream tls: certificate name mismatch"
    for reason in getattr(error, "args", ())[:1]:
        if isinstance(reason, list):
            for entry in reason:
                if isinstance(entry, tuple) and len(entry) == 3 and entry[2]:
                    return f"upstream tls: {entry[2]}"
    return "upstream tls failed"


def upstream_error(failure: Failure, *, connecting: bool = False) -> EdgeProxyError:
    """The edgeproxy error ``failure`` stands for.

    ``connecting``: it ended an attempt to connect, so nothing was sent,
    whatever it is.  A failure of a kind not known here comes back as
    :class:`UpstreamUnexpectedFailure`, for the caller to log.
    """
    error = failure.value
    if isinstance(error, EdgeProxyError):
        return error
    inner = _first_reason(failure)
    # A certificate that does not verify (OpenSSL's chain check, or
    # service-identity's name check, which Twisted reports as it is), or a
    # handshake the endpoint broke off: before any byte of the request.
    if inner.check(SSL.Error, VerificationError):
        return UpstreamTLSFailed(_tls_words(inner.value))
    if inner.check(ierror.ConnectionRefusedError):
        return UpstreamConnectFailed("connect refused")
    # (Twisted's TimeoutError is a ConnectError: before the catch-all.)
    if inner.check(ierror.TimeoutError):
        return UpstreamConnectTimeout()
    if inner.check(ierror.DNSLookupError):
        return UpstreamConnectFailed("dns lookup failed")
    if inner.check(ierror.ConnectError) or connecting:
        return UpstreamConnectFailed()
    if failure.check(ResponseNeverReceived):
        return UpstreamResponseFailed("no response")
    if failure.check(
        ResponseFailed, RequestTransmissionFailed, ierror.ConnectionLost, ierror.ConnectionDone
    ):
        return UpstreamResponseFailed("connection lost")
    return UpstreamUnexpectedFailure(f"error: {type(error).__name__}")
