"""
Header rewriting for a reverse proxy.  Pure: values in, values out.

Headers are lists of ``(name, [values])`` pairs as yielded by
``twisted.web.http_headers.Headers.getAllRawHeaders()``.  Names may come in
any case and are compared lower-cased; names keep the case they came in.
Every end-to-end header survives, with its repeated values, in order.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

__all__ = [
    "HOP_BY_HOP",
    "downstream_response_headers",
    "forwarded_element",
    "strip_hop_by_hop",
    "upstream_request_headers",
]

Headers = list[tuple[bytes, list[bytes]]]

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
# RFC 9110 tchar
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _connection_tokens(headers: Sequence[tuple[bytes, Sequence[bytes]]]) -> set[bytes]:
    tokens: set[bytes] = set()
    for name, values in headers:
        if name.lower() == b"connection":
            for value in values:
                for token in value.split(b","):
                    token = token.strip(_OWS).lower()
                    if token:
                        tokens.add(token)
    return tokens


def strip_hop_by_hop(
    headers: Iterable[tuple[bytes, Sequence[bytes]]],
    *,
    keep: frozenset[bytes] = frozenset(),
) -> Headers:
    """Drop :data:`HOP_BY_HOP` headers and every header named in a ``Connection`` value.

    ``keep`` (lower-case names) are never dropped because a ``Connection``
    value names them (the proxy keeps ``Host`` that way).
    """
    headers = list(headers)
    named = _connection_tokens(headers) - keep
    return [
        (name, list(values))
        for name, values in headers
        if (lower := name.lower()) not in HOP_BY_HOP and lower not in named
    ]


def _pop_values(headers: Headers, name: bytes) -> tuple[int, list[bytes]]:
    """Remove every ``name`` header; return where the first was and all values, in order."""
    lower = name.lower()
    position = len(headers)
    values: list[bytes] = []
    kept: Headers = []
    for header_name, header_values in headers:
        if header_name.lower() == lower:
            position = min(position, len(kept))
            values.extend(header_values)
        else:
            kept.append((header_name, header_values))
    headers[:] = kept
    return position, values


def _set(headers: Headers, name: bytes, value: bytes | None) -> None:
    """Replace every ``name`` header by one value (or none), where the first one was."""
    position, _ = _pop_values(headers, name)
    if value is not None:
        headers.insert(position, (name, [value]))


def _append_list(headers: Headers, name: bytes, element: bytes) -> None:
    """Append ``element`` to a comma-separated list header, joining incoming lines with ", "."""
    position, values = _pop_values(headers, name)
    parts = [stripped for value in values if (stripped := value.strip(_OWS))]
    parts.append(element)
    headers.insert(position, (name, [b", ".join(parts)]))


def _quote(value: bytes) -> bytes:
    """``value`` as an RFC 7239 value: a token as is, otherwise a quoted-string."""
    if value and all(byte in _TCHAR for byte in value):
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
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return _quote(client_ip.encode("utf-8", "replace"))
    if address.version == 6:
        return b'"[' + str(address).encode("ascii") + b']"'
    return str(address).encode("ascii")


def forwarded_element(client_ip: str, proto: str, host: bytes | None) -> bytes:
    """One RFC 7239 ``Forwarded`` element: ``for=192.0.2.1;proto=https;host=example.com``."""
    pairs = [b"for=" + _node(client_ip), b"proto=" + _quote(proto.encode("ascii", "replace"))]
    if host is not None:
        pairs.append(b"host=" + _quote(host))
    return b";".join(pairs)


def upstream_request_headers(
    headers: Iterable[tuple[bytes, Sequence[bytes]]],
    *,
    client_ip: str,
    proto: str,
    host: bytes | None,
    via: bytes = b"1.1 edgeproxy",
) -> Headers:
    """The headers to send upstream for a client's request.

    Hop-by-hop headers are dropped; ``X-Forwarded-For`` gets ``client_ip``
    appended, ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` are replaced
    (the latter removed when the client sent no Host), ``Forwarded`` gets a
    ``for=...;proto=...;host=...`` element appended, ``Via`` gets ``via``
    appended.  ``Host`` is passed through unchanged.
    """
    result = strip_hop_by_hop(headers, keep=frozenset({b"host"}))
    _append_list(result, b"X-Forwarded-For", client_ip.encode("utf-8", "replace"))
    _set(result, b"X-Forwarded-Proto", proto.encode("ascii", "replace"))
    _set(result, b"X-Forwarded-Host", host)
    _append_list(result, b"Forwarded", forwarded_element(client_ip, proto, host))
    _append_list(result, b"Via", via)
    return result


def downstream_response_headers(headers: Iterable[tuple[bytes, Sequence[bytes]]]) -> Headers:
    """The upstream response's headers for the client: hop-by-hop dropped, nothing invented."""
    return strip_hop_by_hop(headers)
