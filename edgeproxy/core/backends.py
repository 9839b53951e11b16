"""
Hiding the backends in what goes back to the client (``VirtualHost(...,
hide_backend=True)``, the default): the upstream's ``Server`` and
``X-Powered-By`` are dropped, and a ``Location``, ``Content-Location`` or
``Refresh`` URL that names an endpoint's address is rewritten to the public
scheme and host the client used.  Pure: header lines in, header lines out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["HIDDEN", "REWRITTEN", "backend_authorities", "hide_backend_line"]

#: Upstream headers that say what runs behind (dropped).
HIDDEN: frozenset[bytes] = frozenset({b"server", b"x-powered-by"})
#: Upstream headers whose URL may name a backend (rewritten).
REWRITTEN: frozenset[bytes] = frozenset({b"location", b"content-location", b"refresh"})

_ABSOLUTE = re.compile(rb"(https?)://([^/?#\s]*)", re.IGNORECASE)
# Refresh: "5; url=http://..." (the url= part case-insensitive, quotes optional).
_REFRESH_URL = re.compile(rb"(;\s*url\s*=\s*['\"]?)(https?://[^/?#\s'\"]*)", re.IGNORECASE)
_DEFAULT_PORTS = {b"http": b"80", b"https": b"443"}


def backend_authorities(endpoints: Iterable[str]) -> frozenset[bytes]:
    """The authorities (lower case) a URL naming one of ``endpoints``
    (``"host:port"``, ``"[v6]:port"``) may carry: with its port, and without
    it where the port is a scheme's default, for that scheme."""
    found: set[bytes] = set()
    for text in endpoints:
        authority = text.lower().encode("idna" if not text.isascii() else "ascii")
        found.add(authority)
        host, _, port = authority.rpartition(b":")
        for scheme, default in _DEFAULT_PORTS.items():
            if port == default:
                found.add(scheme + b"://" + host)
    return frozenset(found)


def _is_backend(scheme: bytes, authority: bytes, backends: frozenset[bytes]) -> bool:
    authority = authority.lower()
    if b"@" in authority:
        authority = authority.rpartition(b"@")[2]
    return authority in backends or scheme.lower() + b"://" + authority in backends


def hide_backend_line(
    lname: bytes, line: bytes, backends: frozenset[bytes], public: bytes
) -> bytes:
    """``line`` (``b"Name: value"`` of the header ``lname``, one of
    :data:`REWRITTEN`) with a URL naming a backend rewritten to ``public``
    (``b"https://shop.example"``); unchanged otherwise."""
    name, sep, value = line.partition(b":")
    if lname == b"refresh":
        match = _REFRESH_URL.search(value)
        if match is None:
            return line
        url = _ABSOLUTE.match(match.group(2))
        if url is None or not _is_backend(url.group(1), url.group(2), backends):
            return line
        start, end = match.span(2)
        return name + sep + value[:start] + public + value[end:]
    stripped = value.lstrip(b" \t")
    url = _ABSOLUTE.match(stripped)
    if url is None or not _is_backend(url.group(1), url.group(2), backends):
        return line
    return name + sep + b" " + public + stripped[url.end() :]
