"""
Hostname normalisation and wildcard matching, shared by SNI and Host routing.

Pure functions: no I/O, no Twisted.  A *normalised* name is lower case ASCII
(IDNA A-labels), without a trailing dot or port; IPv6 literals are in their
compressed form without brackets.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Collection

import idna

__all__ = [
    "covered_by",
    "normalise_host",
    "normalise_name",
    "normalise_pattern",
    "wildcard_of",
]

_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


def _ip_literal(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _to_ascii(name: str) -> str | None:
    if name.isascii():
        return name.lower()
    try:
        # UTS #46 non-transitional processing (IDNA 2008), as browsers do:
        # "straße.de" -> "xn--strae-oqa.de", not Python's IDNA 2003 "strasse.de".
        return idna.encode(name, uts46=True, transitional=False).decode("ascii").lower()
    except (UnicodeError, ValueError):
        return None


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _valid_dns_name(name: str) -> bool:
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    for label in labels:
        if not label or len(label) > 63 or not set(label) <= _LABEL_CHARS:
            return False
    # An all-numeric last label is no DNS name: "127.1" or "1.2.3.4.5" are
    # malformed addresses, not hostnames (RFC 3696 section 2).
    return not labels[-1].isdigit()


def normalise_name(name: str | bytes) -> str | None:
    """Normalise a bare hostname or IP literal (no port); ``None`` if invalid."""
    if isinstance(name, bytes):
        try:
            name = name.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if name.startswith("[") and name.endswith("]"):
        ip = _ip_literal(name[1:-1])
        return ip if ip is not None and ":" in ip else None
    ip = _ip_literal(name)
    if ip is not None:
        return ip
    if name.endswith("."):
        name = name[:-1]
    ascii_name = _to_ascii(name)
    if ascii_name is None or not _valid_dns_name(ascii_name):
        return None
    return ascii_name


# Every request's Host goes through normalise_host, and a site sees few
# distinct values: a bounded cache turns the IP-literal and IDNA checks into a
# dict hit.  The bound keeps a flood of random Host values from growing memory.
@functools.lru_cache(maxsize=4096)
def normalise_host(host: str | bytes | None) -> str | None:
    """Normalise an HTTP ``Host`` header value: drop the port, handle ``[v6]:port``.

    Returns ``None`` for an absent or malformed value.
    """
    if host is None:
        return None
    if isinstance(host, bytes):
        try:
            host = host.decode("utf-8")
        except UnicodeDecodeError:
            return None
    host = host.strip()
    if not host:
        return None
    if host.startswith("["):
        close = host.find("]")
        if close < 0:
            return None
        rest = host[close + 1 :]
        if rest and not (rest.startswith(":") and _is_port(rest[1:])):
            return None
        return normalise_name(host[: close + 1])
    if host.count(":") > 1:
        # A bare IPv6 literal is not a valid Host, but be lenient: accept it
        # only if the whole value parses as an address.
        ip = _ip_literal(host)
        return ip
    name, sep, port = host.partition(":")
    if sep and not _is_port(port):
        return None
    return normalise_name(name)


def normalise_pattern(pattern: str) -> str:
    """Normalise a configured name: exact name, ``*.one-label`` wildcard or IP literal.

    Raises ``ValueError`` naming the bad pattern.
    """
    if not isinstance(pattern, str):
        raise TypeError(f"hostname must be a string, not {pattern!r}")
    if pattern.startswith("*."):
        rest = normalise_name(pattern[2:])
        if rest is None or _ip_literal(rest) is not None:
            raise ValueError(f"invalid wildcard hostname {pattern!r}")
        return "*." + rest
    if "*" in pattern:
        raise ValueError(
            f"invalid hostname {pattern!r}: only a whole leading label may be a wildcard"
            " ('*.example.com')"
        )
    normalised = normalise_name(pattern)
    if normalised is None:
        raise ValueError(f"invalid hostname {pattern!r}")
    return normalised


def wildcard_of(name: str) -> str | None:
    """The one-label wildcard that would cover a normalised name: ``a.b.c`` -> ``*.b.c``.

    ``None`` for IP literals and single-label names.
    """
    if ":" in name:
        return None
    _, dot, rest = name.partition(".")
    if not dot or not rest:
        return None
    if _ip_literal(name) is not None:
        return None
    return "*." + rest


def covered_by(name: str, names: Collection[str]) -> bool:
    """Whether a normalised name is one of ``names`` (normalised names,
    ``*.one-label`` wildcards and IP literals, as a certificate's), exactly or
    through the wildcard of its first label."""
    if name in names:
        return True
    wildcard = wildcard_of(name)
    return wildcard is not None and wildcard in names
