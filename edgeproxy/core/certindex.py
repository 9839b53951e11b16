"""
The certificate index: SNI names -> certificate entries, pure.

Built off the hot path (by :mod:`edgeproxy.tls.certwatch`, from whatever it
loaded) and immutable; a reload builds a new one.  At handshake time
:meth:`CertificateIndex.select` does one dict lookup, then one wildcard
lookup, then falls back to the default: no I/O, no parsing, no rescan on a miss.

Generic over :class:`CertificateEntry`, what the index reads of a certificate:
:class:`~edgeproxy.tls.certificates.LoadedCertificate` is one (with its OpenSSL
context, which the index never touches); the tests use plain dataclasses.
Time is an argument (``now``), never read here.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, Protocol, Self, TypeVar

import attrs

from edgeproxy.core.hostnames import normalise_name, wildcard_of

__all__ = ["CertificateEntry", "CertificateIndex"]


class CertificateEntry(Protocol):
    """What the index reads of a certificate.  Hashable."""

    #: The file it came from; names it in warnings, breaks ties.
    @property
    def source(self) -> str: ...

    #: Normalised subjectAltName entries: DNS names, ``*.x.y`` wildcards, IP literals.
    @property
    def names(self) -> tuple[str, ...]: ...

    @property
    def not_before(self) -> datetime.datetime: ...

    @property
    def not_after(self) -> datetime.datetime: ...

    @property
    def fingerprint(self) -> str: ...

    #: True for the certificate served when no name matches.
    @property
    def is_default(self) -> bool: ...

    def is_valid_at(self, now: datetime.datetime, /) -> bool: ...


E = TypeVar("E", bound=CertificateEntry)


def _preference(now: datetime.datetime) -> Callable[[CertificateEntry], tuple[Any, ...]]:
    # Currently valid beats not valid; then the later expiry; then a stable tie-break.
    def key(c: CertificateEntry) -> tuple[Any, ...]:
        return (c.is_valid_at(now), c.not_after, c.not_before, c.source)

    return key


def _describe_invalid(c: CertificateEntry, now: datetime.datetime) -> str:
    if now < c.not_before:
        return f"not valid before {c.not_before.isoformat()}"
    return f"expired at {c.not_after.isoformat()}"


@attrs.frozen
class CertificateIndex(Generic[E]):
    """Immutable name -> certificate map, built off the hot path.

    Selection among several certificates for the same name: a certificate
    valid now (``not_before <= now < not_after``) beats one that is not; among
    those, the one that expires last wins.  If none is valid, the one that
    expires last is served anyway (and :attr:`warnings` says so): a client
    gets a clear certificate error rather than a refused handshake.
    """

    certificates: tuple[E, ...]
    default: E | None
    #: The next not_before/not_after boundary after the build time, or None.
    next_change: datetime.datetime | None
    #: Human-readable notes, e.g. a name served by an expired certificate.
    warnings: tuple[str, ...] = ()
    _exact: Mapping[str, E] = attrs.field(factory=dict, repr=False)
    _wildcards: Mapping[str, E] = attrs.field(factory=dict, repr=False)

    @classmethod
    def empty(cls) -> Self:
        return cls(certificates=(), default=None, next_change=None)

    @classmethod
    def build(cls, certificates: Iterable[E], now: datetime.datetime) -> Self:
        certs = tuple(sorted(certificates, key=lambda c: (c.source, c.fingerprint)))
        prefer = _preference(now)
        by_name: dict[str, list[E]] = {}
        for cert in certs:
            for name in cert.names:
                by_name.setdefault(name, []).append(cert)
        exact: dict[str, E] = {}
        wildcards: dict[str, E] = {}
        stale: dict[E, list[str]] = {}
        for name, candidates in sorted(by_name.items()):
            winner = max(candidates, key=prefer)
            (wildcards if name.startswith("*.") else exact)[name] = winner
            if not winner.is_valid_at(now):
                stale.setdefault(winner, []).append(name)
        defaults = [c for c in certs if c.is_default]
        default = max(defaults, key=prefer) if defaults else None
        warnings = [
            f"{c.source}: {_describe_invalid(c, now)}, but it is the only certificate "
            f"for {', '.join(names)}; serving it anyway"
            for c, names in stale.items()
        ]
        if default is not None and not default.is_valid_at(now):
            warnings.append(
                f"{default.source}: default certificate {_describe_invalid(default, now)}; "
                "serving it anyway"
            )
        boundaries = [
            t for c in certs for t in (c.not_before, c.not_after) if t > now
        ]
        return cls(
            certificates=certs,
            default=default,
            next_change=min(boundaries) if boundaries else None,
            warnings=tuple(warnings),
            exact=exact,
            wildcards=wildcards,
        )

    @property
    def names(self) -> frozenset[str]:
        """Every name served (exact and wildcard)."""
        return frozenset(self._exact) | frozenset(self._wildcards)

    def select(self, server_name: bytes | str | None) -> E | None:
        """The certificate for an SNI name: exact, then one-label wildcard,
        then the default, else ``None``.  Never raises, no I/O."""
        if server_name is None:
            return self.default
        name = normalise_name(server_name)
        if name is None:
            return self.default
        found = self._exact.get(name)
        if found is not None:
            return found
        wildcard = wildcard_of(name)
        if wildcard is not None:
            found = self._wildcards.get(wildcard)
            if found is not None:
                return found
        return self.default
