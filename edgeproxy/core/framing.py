"""
HTTP/1.1 message framing (RFC 9112 sections 6 and 9.3) as pure functions:
where a message's body ends, and whether its connection may carry another
message after it.  As h11's ``_body_framing`` and ``_keep_alive``.

llhttp (through httptools) is the tokenizer on both sides of the proxy; what
it leaves open, or decides more loosely than edgeproxy must, is decided here
once: for the requests the downstream channel receives, the responses the
upstream client receives, and the responses edgeproxy writes to its clients.

A framing is an ``int``: a ``Content-Length`` (0 or more) or one of the
negative constants below, so that the common case needs no unpacking.
Header values are passed as llhttp gives them (leading whitespace already
stripped); several lines of one field joined with ``b","`` (RFC 9110 5.3).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from edgeproxy.core.errors import (
    BadRequest,
    NotImplementedCoding,
    Reason,
    UpstreamResponseFailed,
)

__all__ = [
    "CHUNKED",
    "IGNORED_BODY",
    "NO_BODY",
    "UNTIL_CLOSE",
    "Framing",
    "connection_tokens",
    "request_framing",
    "request_keep_alive",
    "response_framing",
    "response_keep_alive",
    "sent_response_framing",
]

#: A ``Content-Length`` (0 or more), or one of the constants below.
Framing = int

# Numbered so that ``framing >= CHUNKED`` holds exactly for the framings whose
# end is known without the connection's close (what response_keep_alive asks).

#: No body at all, whatever the head says: a request without
#: ``Content-Length`` or ``Transfer-Encoding``; a response to ``HEAD``, a 1xx,
#: a 204 or a 304.
NO_BODY = -1
#: ``Transfer-Encoding: chunked``: the body ends with its last chunk.
CHUNKED = -2
#: A response without ``Content-Length`` or ``Transfer-Encoding``: the body
#: ends when the connection closes (RFC 9112 6.3, rule 8).
UNTIL_CLOSE = -3
#: A 204 or 304 whose head announces a body anyway (``Content-Length`` above
#: 0, or ``Transfer-Encoding``): none is read, as for :data:`NO_BODY`, but
#: the connection is not trusted with another message (were that body sent
#: after all, it would be read as the next response).
IGNORED_BODY = -4

_CHUNKED = b"chunked"
_CLOSE = b"close"
_KEEP_ALIVE = b"keep-alive"
#: The statuses whose responses have a body (RFC 9112 6.3 rules 1-2): every
#: valid one (100-999) but 1xx, 204 and 304.  One set lookup on the hot path
#: tells both that a status is valid and that its response has a body.
_BODY_STATUSES = frozenset(range(200, 1000)) - {204, 304}


def _content_length(value: bytes) -> int | None:
    """A ``Content-Length`` value as a number; None if it is not one (1*DIGIT,
    with optional whitespace around it: llhttp leaves the trailing one)."""
    value = value.strip(b" \t")
    if not value.isdigit():
        return None
    try:
        return int(value)
    except ValueError:  # thousands of digits: more than Python converts
        return None


def request_framing(
    http11: bool, content_length: bytes | None, transfer_encoding: bytes | None
) -> Framing:
    """How a received request's body is framed: its ``Content-Length``,
    :data:`CHUNKED` or :data:`NO_BODY`.

    Raises :class:`~edgeproxy.core.errors.BadRequest` (400, ``bad_framing``)
    for ``Transfer-Encoding`` in an HTTP/1.0 request (RFC 9112 6.1: faulty
    framing; nginx answers 400 too), for ``Content-Length`` together with
    ``Transfer-Encoding`` (the request smuggling signal, RFC 9112 6.3 rule 3)
    and for a ``Content-Length`` that is not a number;
    :class:`~edgeproxy.core.errors.NotImplementedCoding` (501) for a transfer
    coding other than exactly ``chunked``: decoding gzip and the like is the
    origin's job, and a proxy that removes ``Transfer-Encoding`` must not pass
    on a body still coded."""
    if transfer_encoding is None:
        if content_length is None:
            return NO_BODY
        length = _content_length(content_length)
        if length is None:
            raise BadRequest(Reason.BAD_FRAMING)
        return length
    if not http11 or content_length is not None:
        raise BadRequest(Reason.BAD_FRAMING)
    if transfer_encoding.strip().lower() != _CHUNKED:
        raise NotImplementedCoding()
    return CHUNKED


def response_framing(
    head_request: bool,
    status: int,
    content_length: bytes | None,
    transfer_encoding: bytes | None,
) -> Framing:
    """How a received response's body is framed (RFC 9112 6.3): :data:`NO_BODY`
    for an answer to ``HEAD`` (its ``Content-Length`` describes the GET
    body), a 1xx, a 204 or a 304; :data:`IGNORED_BODY` for a 204 or 304 that
    announces a body; else :data:`CHUNKED`, the ``Content-Length``, or
    :data:`UNTIL_CLOSE` when it has neither.

    Raises :class:`~edgeproxy.core.errors.UpstreamResponseFailed` (502) for a
    framing edgeproxy will not relay: a status outside 100-999, a transfer
    coding other than exactly ``chunked`` (Agent refuses these too; reading
    a coded body until the close is nothing to pass on), ``Content-Length``
    with ``Transfer-Encoding``, or a ``Content-Length`` that is not a number."""
    if head_request or status not in _BODY_STATUSES:
        return _bodiless_response_framing(head_request, status, content_length, transfer_encoding)
    if transfer_encoding is not None:
        _check_response_coding(content_length, transfer_encoding)
        return CHUNKED
    if content_length is None:
        return UNTIL_CLOSE
    # The usual case first: digits alone, as llhttp let them through.
    if content_length.isdigit():
        try:
            return int(content_length)
        except ValueError:
            pass
    length = _content_length(content_length)
    if length is None:
        raise UpstreamResponseFailed()
    return length


def _check_response_coding(content_length: bytes | None, transfer_encoding: bytes) -> None:
    if content_length is not None or transfer_encoding.strip().lower() != _CHUNKED:
        raise UpstreamResponseFailed()


def _bodiless_response_framing(
    head_request: bool,
    status: int,
    content_length: bytes | None,
    transfer_encoding: bytes | None,
) -> Framing:
    """:func:`response_framing` of an answer to HEAD, a 1xx, 204 or 304, or of
    an invalid status.  The framing headers must be valid even where they
    frame nothing: a HEAD answer's ``Content-Length`` is relayed."""
    if not 100 <= status <= 999:
        raise UpstreamResponseFailed()
    if transfer_encoding is not None:
        _check_response_coding(content_length, transfer_encoding)
    length = 0
    if content_length is not None:
        parsed = _content_length(content_length)
        if parsed is None:
            raise UpstreamResponseFailed()
        length = parsed
    if head_request or status < 200 or (transfer_encoding is None and length == 0):
        return NO_BODY
    return IGNORED_BODY


def sent_response_framing(
    head_request: bool, status: int, length: int | None, http11: bool
) -> Framing:
    """How edgeproxy frames a response it writes to a client: :data:`NO_BODY`
    for ``HEAD``, 1xx, 204 and 304 (and a status outside 100-999, which is
    never sent); the body's ``length`` when it is known; else :data:`CHUNKED`
    to an HTTP/1.1 client and :data:`UNTIL_CLOSE` to an HTTP/1.0 one (which
    learns where the body ends from the close)."""
    if head_request or status not in _BODY_STATUSES:
        return NO_BODY
    if length is not None:
        return length
    return CHUNKED if http11 else UNTIL_CLOSE


def connection_tokens(values: Iterable[bytes]) -> list[bytes]:
    """The options of ``Connection`` header values, lower case, in order (a
    comma-separated list, RFC 9110 7.6.1; empty elements kept as ``b""``)."""
    return [token.strip().lower() for value in values for token in value.split(b",")]


def request_keep_alive(http11: bool, connection: Collection[bytes] | None) -> bool:
    """Whether a client's connection stays open after the response to this
    request (RFC 9112 9.3): not with a ``close`` option; HTTP/1.1 otherwise;
    HTTP/1.0 only with ``keep-alive`` (edgeproxy, to its clients the origin,
    honours HTTP/1.0's keep-alive).  ``connection`` holds the request's
    :func:`connection_tokens`, None when it has no ``Connection`` header."""
    if connection is None:
        return http11
    if _CLOSE in connection:
        return False
    return http11 or _KEEP_ALIVE in connection


def response_keep_alive(
    http11: bool, connection: Collection[bytes] | None, framing: Framing
) -> bool:
    """Whether an upstream connection may carry another request after this
    response: HTTP/1.1 without a ``close`` option, and a body whose end is
    known without the close (not :data:`UNTIL_CLOSE`) and that was not
    :data:`IGNORED_BODY`.  An HTTP/1.0 response is never followed by another:
    edgeproxy asks in HTTP/1.1 and does not use HTTP/1.0's keep-alive upstream.
    ``connection`` as for :func:`request_keep_alive`."""
    return http11 and framing >= CHUNKED and (connection is None or _CLOSE not in connection)
