"""
Reading the PEM files a configuration names (a virtual host's ``client_ca``,
a cluster's ``upstream_tls`` files): one reader and one certificate parser,
whose :class:`PEMFileError` names the file; each caller turns it into its
own configuration error, which says which setting named the file.  The
certificate directory's loader (:mod:`edgeproxy.tls.certificates`) reads
with it too, and its ``CertificateFileError`` is a :class:`PEMFileError`.
No Twisted, no OpenSSL.
"""

from __future__ import annotations

import re

from cryptography import x509

__all__ = ["CERTIFICATE", "PEMFileError", "pem_certificates", "read_pem_file"]

#: One PEM certificate block, with the line end after it.
CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.*?-----END CERTIFICATE-----\r?\n?", re.DOTALL
)


class PEMFileError(Exception):
    """A PEM file that cannot be read or holds no usable certificate."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(path, message)
        self.path = path
        self.message = message

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def read_pem_file(path: str) -> bytes:
    """The file's bytes; :class:`PEMFileError` if it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise PEMFileError(path, f"cannot read: {e.strerror or e}") from None


def pem_certificates(path: str, data: bytes) -> list[x509.Certificate]:
    """Every PEM certificate in ``data`` (no I/O), at least one;
    :class:`PEMFileError` if one does not parse or there is none."""
    certificates = []
    for block in CERTIFICATE.finditer(data):
        try:
            certificates.append(x509.load_pem_x509_certificate(block.group(0)))
        except ValueError as e:
            raise PEMFileError(path, f"cannot parse a certificate: {e}") from None
    if not certificates:
        raise PEMFileError(path, "no PEM certificate found")
    return certificates
