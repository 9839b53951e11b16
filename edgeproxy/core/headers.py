"""
Header rewriting for a reverse proxy.  Pure: values in, values out.

Headers are lists of ``(name, value)`` pairs, one per header line, in the
order they were received (what the HTTP parsers hand us, and what goes on the
wire).  Names may come in any case and are compared lower-cased; names keep
the case they came in.  Every end-to-end header line survives, in order.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

__all__ = [
    "HOP_BY_HOP",
    "downstream_response_headers",
    "forwarded_element",
    "strip_hop_by_hop",
    "upgrade_offer",
    "upstream_request_headers",
]

Headers = list[tuple[bytes, bytes]]

#: Headers that describe one connection, never forwarded (RFC 9110 section 7.6.1).
HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

_OWS = b" \t"
# RFC 9110 token
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            for token in value.split(b","):
                token = token.strip(_OWS).lower()
                if token:
                    tokens.add(token)
    return tokens


def strip_hop_by_hop(
    headers: Iterable[tuple[bytes, bytes]],
    *,
    keep: frozenset[bytes] = frozenset(),
    drop: frozenset[bytes] = frozenset(),
) -> Headers:
    """Drop :data:`HOP_BY_HOP` headers, every header named in a ``Connection``
    value, and ``drop`` (lower-case names).

    ``keep`` (lower-case names) are never dropped because a ``Connection``
    value names them (the proxy keeps ``Host`` that way).
    """
    headers = list(headers)
    named = (_connection_tokens(headers) - keep) | HOP_BY_HOP | drop
    return [(name, value) for name, value in headers if name.lower() not in named]


#: Upgrade protocols never tunnelled: HTTP/2 over cleartext by Upgrade was
#: removed by RFC 9113 (3.1); such an offer is dropped, as a server that
#: does not take it up may (RFC 9110 7.8).
_NOT_TUNNELLED = frozenset({b"h2c"})


def upgrade_offer(values: Iterable[bytes]) -> bytes | None:
    """What an ``Upgrade`` request asks for, to send upstream: its ``Upgrade``
    values' protocols (RFC 9110 7.8) in order, without ``h2c``, joined with
    ``", "``; None when nothing is left (the request goes on as a plain one)."""
    kept = []
    for value in values:
        for token in value.split(b","):
            token = token.strip(_OWS)
            if token and token.lower() not in _NOT_TUNNELLED:
                kept.append(token)
    return b", ".join(kept) if kept else None


def _quote(value: bytes) -> bytes:
    """``value`` as an RFC 7239 value: a token as is, otherwise a quoted-string."""
    if _TOKEN.fullmatch(value) is not None:
        return value
    escaped = bytearray(b'"')
    for byte in value:
        if byte in b'"\\':
            escaped += b"\\"
        if (byte >= 0x20 and byte != 0x7F) or byte == 0x09:  # controls cannot be quoted
            escaped.append(byte)
    escaped += b'"'
    return bytes(escaped)


def _node(client_ip: str) -> bytes:
    if client_ip.isascii() and client_ip.replace(".", "").isdigit() and client_ip.count(".") == 3:
        # The common case, without the cost of ipaddress.
        return client_ip.encode("ascii")
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return _quote(client_ip.encode("utf-8", "replace"))
    if address.version == 6:
        return b'"[' + str(address).encode("ascii") + b']"'
    return str(address).encode("ascii")


def forwarded_element(client_ip: str, proto: str, host: bytes | None) -> bytes:
    """One RFC 7239 ``Forwarded`` element: ``for=192.0.2.1;proto=https;host=example.com``."""
    key = (client_ip, proto, host)
    element = _forwarded_cache.get(key)
    if element is None:
        if len(_forwarded_cache) >= _FORWARDED_CACHE_SIZE:
            _forwarded_cache.clear()
        element = _forwarded_cache[key] = _forwarded_element(client_ip, proto, host)
    return element


# Clients and hosts repeat: the element is built once per (client, proto, host).
_forwarded_cache: dict[tuple[str, str, bytes | None], bytes] = {}
_FORWARDED_CACHE_SIZE = 4096


def _forwarded_element(client_ip: str, proto: str, host: bytes | None) -> bytes:
    pairs = [b"for=" + _node(client_ip), b"proto=" + _quote(proto.encode("ascii", "replace"))]
    if host is not None:
        pairs.append(b"host=" + _quote(host))
    return b";".join(pairs)


# The headers upstream_request_headers rewrites, with the case they are sent in.
_REWRITTEN: dict[bytes, bytes] = {
    b"x-forwarded-for": b"X-Forwarded-For",
    b"x-forwarded-proto": b"X-Forwarded-Proto",
    b"x-forwarded-host": b"X-Forwarded-Host",
    b"forwarded": b"Forwarded",
    b"via": b"Via",
}
_KEEP_HOST = frozenset({b"host"})


def _joined(values: list[bytes] | None, element: bytes) -> bytes:
    """A comma-separated list header: the incoming lines joined with ", ", plus ``element``."""
    if not values:
        return element
    parts = [stripped for value in values if (stripped := value.strip(_OWS))]
    parts.append(element)
    return b", ".join(parts)


def _rewritten(
    incoming: dict[bytes, list[bytes]],
    client_ip: str,
    proto: str,
    host: bytes | None,
    via: bytes,
) -> list[tuple[bytes, bytes | None]]:
    """What edgeproxy writes for each header it rewrites (lower-case name,
    value or None for "leave out"), in the order they are added, given the
    incoming values of each."""
    return [
        (
            b"x-forwarded-for",
            _joined(incoming.get(b"x-forwarded-for"), client_ip.encode("utf-8", "replace")),
        ),
        (b"x-forwarded-proto", proto.encode("ascii", "replace")),
        (b"x-forwarded-host", host),
        (
            b"forwarded",
            _joined(incoming.get(b"forwarded"), forwarded_element(client_ip, proto, host)),
        ),
        (b"via", _joined(incoming.get(b"via"), via)),
    ]


def _not_passed(drop: frozenset[bytes]) -> frozenset[bytes]:
    """HOP_BY_HOP | drop, computed once per drop set."""
    named = _NOT_PASSED.get(drop)
    if named is None:
        named = _NOT_PASSED[drop] = HOP_BY_HOP | drop
    return named


_NOT_PASSED: dict[frozenset[bytes], frozenset[bytes]] = {}


def upstream_request_headers(
    headers: Iterable[tuple[bytes, bytes]],
    *,
    client_ip: str,
    proto: str,
    host: bytes | None,
    via: bytes = b"1.1 edgeproxy",
    drop: frozenset[bytes] = frozenset(),
) -> Headers:
    """The headers to send upstream for a client's request.

    Hop-by-hop headers are dropped; ``X-Forwarded-For`` gets ``client_ip``
    appended, ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` are replaced
    (the latter removed when the client sent no Host), ``Forwarded`` gets a
    ``for=...;proto=...;host=...`` element appended, ``Via`` gets ``via``
    appended.  ``Host`` is passed through unchanged.  Each rewritten header
    takes the place of the first incoming one, or goes at the end.  Headers
    named in ``drop`` (lower case) are left out of what is passed on (the
    headers edgeproxy writes itself are still added).

    One pass over the headers for a client talking to us directly; this runs
    for every request.
    """
    headers = headers if isinstance(headers, list) else list(headers)
    named = _not_passed(drop)
    result: Headers = []
    for pair in headers:
        lower = pair[0].lower()
        if lower in named or lower in _REWRITTEN:
            if lower == b"connection" or lower in _REWRITTEN:
                # Headers named by Connection, or incoming values to extend:
                # the general case (behind another proxy, say).
                return _upstream_request_headers(
                    headers, client_ip=client_ip, proto=proto, host=host, via=via, drop=drop
                )
            continue
        result.append(pair)
    # The common case: nothing incoming to extend, each goes at the end.
    result.extend(_direct_tail(client_ip, proto, host, via))
    return result


def _direct_tail(
    client_ip: str, proto: str, host: bytes | None, via: bytes
) -> list[tuple[bytes, bytes]]:
    """The rewritten headers for a client that sent none of them: the same
    for every request of a connection, so computed once per (client, host)."""
    key = (client_ip, proto, host, via)
    tail = _DIRECT_TAILS.get(key)
    if tail is None:
        if len(_DIRECT_TAILS) >= _DIRECT_TAILS_MAX:
            _DIRECT_TAILS.clear()
        tail = _DIRECT_TAILS[key] = [
            (_REWRITTEN[lower], value)
            for lower, value in _rewritten({}, client_ip, proto, host, via)
            if value is not None
        ]
    return tail


_DIRECT_TAILS: dict[tuple[str, str, bytes | None, bytes], list[tuple[bytes, bytes]]] = {}
_DIRECT_TAILS_MAX = 4096


def _upstream_request_headers(
    headers: list[tuple[bytes, bytes]],
    *,
    client_ip: str,
    proto: str,
    host: bytes | None,
    via: bytes,
    drop: frozenset[bytes],
) -> Headers:
    named: set[bytes] | frozenset[bytes] = _not_passed(drop)
    for name, _ in headers:
        if name.lower() == b"connection":
            named = (_connection_tokens(headers) - _KEEP_HOST) | named
            break
    result: list[tuple[bytes, bytes] | None] = []
    seen: dict[bytes, tuple[int, list[bytes]]] = {}
    for name, value in headers:
        lower = name.lower()
        if lower in named:
            continue
        if lower in _REWRITTEN:
            found = seen.get(lower)
            if found is None:
                seen[lower] = (len(result), [value])
                result.append(None)  # filled in below, in this place
            else:
                found[1].append(value)
            continue
        result.append((name, value))
    incoming = {lower: values for lower, (_, values) in seen.items()}
    for lower, new_value in _rewritten(incoming, client_ip, proto, host, via):
        place = seen.get(lower)
        header = None if new_value is None else (_REWRITTEN[lower], new_value)
        if place is not None:
            result[place[0]] = header
        elif header is not None:
            result.append(header)
    return [header for header in result if header is not None]


def downstream_response_headers(
    headers: Iterable[tuple[bytes, bytes]], drop: frozenset[bytes] = frozenset()
) -> Headers:
    """The upstream response's headers for the client: hop-by-hop (and ``drop``)
    removed, nothing invented."""
    return strip_hop_by_hop(headers, drop=drop)
