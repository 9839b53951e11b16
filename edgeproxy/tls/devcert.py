"""
A self-signed development certificate, so ``twistd edgeproxy`` serves TLS out
of the box.  Never use it in production: clients will (rightly) not trust it.

Run ``python -m edgeproxy.tls.devcert DIR`` to write ``DIR/default.pem`` when DIR
holds no certificate yet.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import sys
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgeproxy.tls.certwatch import discover

__all__ = ["DEFAULT_NAMES", "ensure_dev_certificate", "make_dev_certificate"]

DEFAULT_NAMES: tuple[str, ...] = (
    "localhost",
    "127.0.0.1",
    "::1",
    "shop.example",
    "*.shop.example",
)
_VALIDITY = datetime.timedelta(days=365)


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_dev_certificate(
    names: Sequence[str] = DEFAULT_NAMES, now: datetime.datetime | None = None
) -> bytes:
    """A PEM private key (ECDSA P-256) followed by a self-signed certificate
    for ``names`` (DNS or IP subjectAltNames), valid for one year."""
    if not names:
        raise ValueError("a development certificate needs at least one name")
    if now is None:
        now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgeproxy development"),
            x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64]),
        ]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem + certificate.public_bytes(serialization.Encoding.PEM)


def ensure_dev_certificate(
    directory: str, names: Sequence[str] = DEFAULT_NAMES
) -> str | None:
    """Write ``directory/default.pem`` (mode 0600) unless the directory
    already holds a certificate; create the directory if missing.

    Returns the path written, or ``None`` when a certificate already exists.
    """
    if os.path.isdir(directory):
        sources, _ = discover(directory)
        if sources:
            return None
    else:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, "default.pem")
    data = make_dev_certificate(names)
    tmp = os.path.join(directory, ".default.pem.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:
        os.unlink(tmp)
        raise
    os.replace(tmp, path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 1 or args[0] in ("-h", "--help"):
        print("usage: python -m edgeproxy.tls.devcert DIR [NAME ...]", file=sys.stderr)
        return 2
    directory, names = args[0], args[1:] or list(DEFAULT_NAMES)
    path = ensure_dev_certificate(directory, names)
    if path is None:
        print(f"{directory} already holds a certificate; nothing written")
    else:
        print(
            f"wrote a self-signed development certificate to {path} "
            f"for {', '.join(names)} (valid 1 year; not for production)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
