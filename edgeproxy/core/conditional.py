"""
Conditional requests (RFC 9110 13) answered from edgeproxy's cache.  Pure.

The cache evaluates only what a stored response can answer: a GET or HEAD's
``If-None-Match`` (weak comparison; ``*`` matches any stored response) and,
when there is no ``If-None-Match``, its ``If-Modified-Since`` (13.2.2's order).
A request with ``Range``, ``If-Range``, ``If-Match`` or
``If-Unmodified-Since`` is passed through to the origin instead
(:func:`bypasses_cache`).  Preconditions are evaluated only against a stored
2xx (13.2.1: a server ignores them when the response would not be 2xx).

Entity tags are read strictly (8.8.3): ``W/`` is case-sensitive; a member of
``If-None-Match`` that is not an entity tag never matches.  Several
``If-Modified-Since`` lines, or a value that is not an HTTP-date, are ignored
(13.1.3).  A stored ``Last-Modified`` that is not a date answers no
``If-Modified-Since`` with 304; without ``Last-Modified`` the stored ``Date``
is used (RFC 9111 4.3.2).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from edgeproxy.core.httpcache import StoredHead, parse_http_date

__all__ = [
    "BYPASS",
    "CONDITIONAL",
    "DIRECTIVES",
    "bypasses_cache",
    "not_modified",
    "parse_etag",
    "request_flags",
    "strong_match",
    "updates_stored",
    "weak_match",
]

_OWS = b" \t"
# entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE ; etagc = %x21 / %x23-7E / obs-text
_OPAQUE = rb'"[\x21\x23-\x7e\x80-\xff]*"'
_ETAG = re.compile(rb"(W/)?(" + _OPAQUE + rb")")
# One If-None-Match member with the separators before it and the OWS after it.
_MEMBER = re.compile(rb"[ \t,]*(?:(\*)|(W/)?(" + _OPAQUE + rb"))[ \t]*(?:,|\Z)")
_BYPASS = frozenset((b"range", b"if-range", b"if-match", b"if-unmodified-since"))
_BYPASS_SIZES = frozenset(len(name) for name in _BYPASS)

#: :func:`request_flags`: the request must pass the cache by (``Range``, a precondition) ...
BYPASS = 1
#: ... it has caching directives (``Cache-Control``, ``Pragma``) ...
DIRECTIVES = 2
#: ... it has validators of its own (``If-None-Match``, ``If-Modified-Since``).
CONDITIONAL = 4
_FLAGS = {name: BYPASS for name in _BYPASS} | {
    b"cache-control": DIRECTIVES,
    b"pragma": DIRECTIVES,
    b"if-none-match": CONDITIONAL,
    b"if-modified-since": CONDITIONAL,
}
_FLAG_SIZES = frozenset(len(name) for name in _FLAGS)


def parse_etag(value: bytes) -> tuple[bool, bytes] | None:
    """An entity tag (RFC 9110 8.8.3) as ``(weak, opaque-tag)``, the opaque
    tag with its quotes; ``None`` when ``value`` is not one."""
    match = _ETAG.fullmatch(value.strip(_OWS))
    if match is None:
        return None
    return match.group(1) is not None, match.group(2)


def strong_match(a: bytes, b: bytes) -> bool:
    """Strong comparison (RFC 9110 8.8.3.2): both strong, same opaque tag."""
    first, second = parse_etag(a), parse_etag(b)
    return (
        first is not None
        and second is not None
        and not first[0]
        and not second[0]
        and first[1] == second[1]
    )


def weak_match(a: bytes, b: bytes) -> bool:
    """Weak comparison (RFC 9110 8.8.3.2): same opaque tag, either weak or strong."""
    first, second = parse_etag(a), parse_etag(b)
    return first is not None and second is not None and first[1] == second[1]


def _if_none_match(values: list[bytes], stored: bytes | None) -> bool:
    """Does any member of the If-None-Match lines match the stored opaque tag?"""
    for value in values:
        i, n = 0, len(value)
        while i < n:
            match = _MEMBER.match(value, i)
            if match is None:  # not an entity tag: skip to the next member
                comma = value.find(b",", i)
                i = n if comma < 0 else comma + 1
                continue
            i = match.end()
            if match.group(1) is not None:
                return True
            if match.group(3) == stored:
                return True
    return False


def not_modified(
    method: bytes, request_headers: Iterable[tuple[bytes, bytes]], head: StoredHead
) -> bool:
    """May the cache answer this request 304 from ``head`` (RFC 9110 13.1.2,
    13.1.3, 13.2.2; RFC 9111 4.3.2)?"""
    if method != b"GET" and method != b"HEAD":
        return False
    if not 200 <= head.status < 300:
        return False
    if_none_match: list[bytes] = []
    if_modified_since: list[bytes] = []
    for name, value in request_headers:
        size = len(name)
        if size == 13 and name.lower() == b"if-none-match":
            if_none_match.append(value)
        elif size == 17 and name.lower() == b"if-modified-since":
            if_modified_since.append(value)
    if if_none_match:
        stored = parse_etag(head.etag) if head.etag is not None else None
        return _if_none_match(if_none_match, None if stored is None else stored[1])
    if len(if_modified_since) != 1:
        return False
    since = parse_http_date(if_modified_since[0])
    if since is None:
        return False
    if head.last_modified is None:
        return head.date_value <= since
    modified = parse_http_date(head.last_modified)
    return modified is not None and modified <= since


def request_flags(request_headers: Iterable[tuple[bytes, bytes]]) -> int:
    """What of the request's headers matters to the cache, in one pass:
    :data:`BYPASS`, :data:`DIRECTIVES` and :data:`CONDITIONAL` or'ed (0 for
    most requests, which then need no :func:`bypasses_cache`,
    ``request_policy`` or :func:`not_modified`)."""
    flags = 0
    for name, _ in request_headers:
        if len(name) in _FLAG_SIZES:
            flags |= _FLAGS.get(name.lower(), 0)
    return flags


def bypasses_cache(request_headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Does the request carry ``Range``, ``If-Range``, ``If-Match`` or
    ``If-Unmodified-Since``?  The cache passes such a request through."""
    for name, _ in request_headers:
        if len(name) in _BYPASS_SIZES and name.lower() in _BYPASS:
            return True
    return False


def updates_stored(head: StoredHead, lines_304: Sequence[bytes]) -> bool:
    """Does a 304 received while revalidating ``head`` select it for update
    (RFC 9111 4.3.4)?  A strong ETag in the 304 must strongly match the
    stored one, a weak one weakly; without an ETag, a ``Last-Modified`` must
    equal the stored one.  A 304 with no validator at all answers the
    conditional request the cache made from ``head``, so it updates it.
    (An addition to the spec'd interface.)"""
    etag: bytes | None = None
    last_modified: bytes | None = None
    for line in lines_304:
        name, _, value = line.partition(b":")
        name = name.strip(_OWS).lower()
        if name == b"etag" and etag is None:
            etag = value.strip(_OWS)
        elif name == b"last-modified" and last_modified is None:
            last_modified = value.strip(_OWS)
    if etag is not None:
        received = parse_etag(etag)
        if received is None or head.etag is None:
            return False
        if received[0]:
            return weak_match(etag, head.etag)
        return strong_match(etag, head.etag)
    if last_modified is not None:
        if head.last_modified is None:
            return False
        received_date = parse_http_date(last_modified)
        return received_date is not None and received_date == parse_http_date(head.last_modified)
    return True
