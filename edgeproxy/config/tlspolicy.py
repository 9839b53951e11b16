"""
A virtual host's TLS policy, compiled from its ``min_tls_version`` and
``client_ca`` when the configuration loads: what the SNI callback of
:mod:`edgeproxy.tls.certificates` applies to a handshake that names the host.

The client CA file is read and parsed here, by the loader (off the event
loop, at start-up and at reload); a file that cannot be used is a
configuration problem naming it, so a reload that breaks it keeps the old
configuration serving.  No Twisted, no OpenSSL.
"""

from __future__ import annotations

import attrs
from cryptography import x509

from edgeproxy.config.pemfiles import PEMFileError, pem_certificates, read_pem_file

__all__ = ["ClientCA", "ClientCAError", "TLSPolicy", "load_client_ca", "parse_client_ca"]


class ClientCAError(Exception):
    """A ``client_ca`` file that cannot be used."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(path, message)
        self.path = path
        self.message = message

    def __str__(self) -> str:
        return f"client_ca {self.path}: {self.message}"


@attrs.frozen
class ClientCA:
    """The CA certificates a client certificate is verified against.

    Equal when the file and its certificates are: a reload that leaves the
    file alone keeps the policy (and the TLS contexts built for it).  An empty
    tuple (a file that failed to load, seen only by ``--check``) verifies no
    client: it fails closed.
    """

    path: str
    certificates: tuple[x509.Certificate, ...] = attrs.field(repr=False)


@attrs.frozen
class TLSPolicy:
    """What one virtual host asks of a handshake beyond the listener's profile."""

    #: ``"1.2"`` or ``"1.3"``; None: the listener's ``--tls-profile``.
    min_version: str | None = None
    #: A client certificate verified against these CAs is required; None: none asked for.
    client_ca: ClientCA | None = None


def parse_client_ca(path: str, data: bytes) -> ClientCA:
    """Every PEM certificate in ``data`` (no I/O); :class:`ClientCAError` if none parses."""
    try:
        return ClientCA(path, tuple(pem_certificates(path, data)))
    except PEMFileError as e:
        raise ClientCAError(path, e.message) from None


def load_client_ca(path: str) -> ClientCA:
    """Read and parse a ``client_ca`` file; :class:`ClientCAError` naming it."""
    try:
        data = read_pem_file(path)
    except PEMFileError as e:
        raise ClientCAError(path, e.message) from None
    return parse_client_ca(path, data)
