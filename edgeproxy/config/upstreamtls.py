"""
A cluster's ``upstream_tls`` files, read and checked when the configuration
loads (off the event loop, at start-up and at reload), as the per-vhost
``client_ca`` is (:mod:`.tlspolicy`): a file that cannot be used is a
configuration problem naming it, so a reload that breaks it keeps the old
configuration serving.  What is kept is the PEM text itself, checked here;
the TLS contexts are made from it by :mod:`edgeproxy.net.clienttls`.  No
Twisted, no OpenSSL.
"""

from __future__ import annotations

import re

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edgeproxy.config.model import UpstreamTLS
from edgeproxy.config.pemfiles import CERTIFICATE, PEMFileError, pem_certificates, read_pem_file

__all__ = ["UpstreamTLSError", "UpstreamTLSFiles", "load_upstream_tls"]

_PRIVATE_KEY = re.compile(
    rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----\r?\n.*?-----END \1PRIVATE KEY-----\r?\n?", re.DOTALL
)


class UpstreamTLSError(Exception):
    """An ``upstream_tls`` file that cannot be used."""

    def __init__(self, field: str, path: str, message: str) -> None:
        super().__init__(field, path, message)
        self.field = field
        self.path = path
        self.message = message

    def __str__(self) -> str:
        return f"upstream_tls {self.field} {self.path}: {self.message}"


@attrs.frozen
class UpstreamTLSFiles:
    """A cluster's :class:`UpstreamTLS` (its paths absolute) with what its
    files held.  Equal when the settings and the files' contents are: a
    reload that leaves them alone keeps the pool and its TLS sessions."""

    settings: UpstreamTLS
    #: The CA certificates (PEM); None: the system's trust store.
    ca_pem: bytes | None = attrs.field(default=None, repr=False)
    #: The private key then the certificate and its chain (PEM); None: no client certificate.
    client_pem: bytes | None = attrs.field(default=None, repr=False)


def _read(field: str, path: str) -> bytes:
    try:
        return read_pem_file(path)
    except PEMFileError as e:
        raise UpstreamTLSError(field, path, e.message) from None


def _certificates(field: str, path: str, data: bytes) -> list[x509.Certificate]:
    try:
        return pem_certificates(path, data)
    except PEMFileError as e:
        raise UpstreamTLSError(field, path, e.message) from None


def check_client_pem(path: str, data: bytes) -> bytes:
    """The key and certificates of a ``client_cert`` file, key first (no I/O);
    :class:`UpstreamTLSError` unless it holds one private key and a
    certificate for it."""
    keys = list(_PRIVATE_KEY.finditer(data))
    if len(keys) != 1:
        found = "no" if not keys else str(len(keys))
        raise UpstreamTLSError(
            "client_cert",
            path,
            f"{found} private keys found (one PEM file: key, certificate, chain)",
        )
    try:
        key = serialization.load_pem_private_key(keys[0].group(0), password=None)
    except (ValueError, TypeError) as e:
        raise UpstreamTLSError("client_cert", path, f"cannot load the private key: {e}") from None
    certificates = _certificates("client_cert", path, data)
    if certificates[0].public_key() != key.public_key():
        raise UpstreamTLSError(
            "client_cert", path, "the first certificate is not the private key's"
        )
    return keys[0].group(0) + b"".join(
        block.group(0).rstrip(b"\r\n") + b"\n" for block in CERTIFICATE.finditer(data)
    )


def load_upstream_tls(settings: UpstreamTLS) -> UpstreamTLSFiles:
    """Read and check ``settings``' files (their paths already absolute);
    :class:`UpstreamTLSError` naming the first that cannot be used."""
    ca_pem = None
    if settings.ca_file is not None:
        data = _read("ca_file", settings.ca_file)
        ca_pem = b"".join(
            cert.public_bytes(serialization.Encoding.PEM)
            for cert in _certificates("ca_file", settings.ca_file, data)
        )
    client_pem = None
    if settings.client_cert is not None:
        client_pem = check_client_pem(
            settings.client_cert, _read("client_cert", settings.client_cert)
        )
    return UpstreamTLSFiles(settings, ca_pem, client_pem)
