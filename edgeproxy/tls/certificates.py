"""
Loaded certificates, their OpenSSL contexts and the SNI server connection creator.

A certificate file is parsed and its OpenSSL context built exactly once, when
it is loaded (off the hot path, by :mod:`edgeproxy.tls.certwatch`).  The
:class:`CertificateIndex` built from the loaded certificates (the pure
:mod:`edgeproxy.core.certindex` over :class:`LoadedCertificate`) is immutable;
a reload builds a new one and swaps the reference.  At handshake time the SNI
callback of :class:`SNIConnectionCreator` does one dict lookup (then one
wildcard lookup, then the default) in the current index and switches the
connection to the winner's long-lived context: no disk I/O, no parsing, no
rescan on a miss.

Session resumption: OpenSSL keeps the server session cache and the session
ticket keys on the context a connection was *created* with (the "session
context"), which here is a long-lived bootstrap context of the
:class:`SNIConnectionCreator` (one of two, see there).  The bootstrap contexts
therefore enable both the session cache and tickets, and live as long as the
listener; the per-certificate contexts supply the certificate, key, chain and
ALPN selection.

The TLS profile (``--tls-profile``) is set on both kinds of context, because
OpenSSL reads it from both: the versions and groups from the context a
connection was created with, the TLS 1.2 suites from the one it switched to.
Each certificate's context also carries the names it covers
(:func:`certificate_names`), which the downstream channel reads once per
connection for its 421 check.

Per virtual host TLS policy (``VirtualHost(min_tls_version=..., client_ca=...)``,
a :class:`~edgeproxy.config.tlspolicy.TLSPolicy` looked up by SNI name in the
running configuration): by the time OpenSSL runs the servername callback it
has already chosen the protocol version (a ``SSL_set_min_proto_version``
there would change nothing) and looked up any session the client resumes,
so the callback reads the chosen version and ends the handshake of a client
below the name's minimum with a ``protocol_version`` alert.  Too late as
well to keep a session out of a ``client_ca`` name, so sessions are scoped to
the CAs that verified them: a ``client_ca`` context's session id context is
a digest of its CAs (:func:`session_scope`), and OpenSSL's message callback
switches a connection whose ClientHello names a ``client_ca`` host to that
context as soon as OpenSSL has read the ClientHello, before the lookup.
OpenSSL then resumes there only a session made under the same CAs and turns
any other into a full handshake, which asks for the certificate (the
servername callback refuses the rare handshake the two read differently:
:meth:`SNIConnectionCreator._misscoped`).  A name with a policy gets a
context of its own per (certificate, policy), built on the first handshake
that needs it and then reused, holding the CA store and the CA names sent
in the CertificateRequest; as
``SSL_set_SSL_CTX`` does not copy the verify mode, the callback also sets it
on the connection.  Such a context carries the policy next to the names
(:func:`connection_policy`): the channel checks each request's virtual host
against the policy its connection's handshake was held to.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import (
    dsa,
    ec,
    ed448,
    ed25519,
    rsa,
)
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion
from twisted.logger import Logger
from zope.interface import implementer

from edgeproxy.config.pemfiles import PEMFileError, read_pem_file
from edgeproxy.config.tlspolicy import ClientCA, TLSPolicy
from edgeproxy.core import certindex
from edgeproxy.core.hostnames import normalise_host, normalise_name, wildcard_of

__all__ = [
    "ALPN_HTTP1",
    "ALPN_PROTOCOLS",
    "DEFAULT_TLS_PROFILE",
    "TLS12_CIPHERS",
    "TLS13_CIPHERSUITES",
    "TLS_GROUPS",
    "TLS_PROFILES",
    "CertificateFileError",
    "CertificateIndex",
    "LoadedCertificate",
    "PolicyNames",
    "SNIConnectionCreator",
    "certificate_names",
    "client_hello_server_name",
    "connection_policy",
    "load_certificate",
    "make_policy_context",
    "make_server_context",
    "parse_certificate",
    "session_scope",
]

#: The application protocols advertised over ALPN, in the server's order of
#: preference (``--no-http2``: :data:`ALPN_HTTP1` instead).
ALPN_PROTOCOLS: tuple[bytes, ...] = (b"h2", b"http/1.1")
#: ALPN with HTTP/2 turned off.
ALPN_HTTP1: tuple[bytes, ...] = (b"http/1.1",)

_PrivateKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | dsa.DSAPrivateKey
)

_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----",
    re.DOTALL,
)
_KEY_LABELS = frozenset({b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY", b"DSA PRIVATE KEY"})


class CertificateFileError(PEMFileError):
    """A certificate file that cannot be used: it does not parse, has no
    certificate or key, or its key does not match its certificate.  The
    ``path`` and ``message`` of any PEM file error (:class:`PEMFileError`)."""


@attrs.frozen
class LoadedCertificate:
    """A parsed certificate with its ready-to-use OpenSSL context."""

    #: The file it came from (``NAME.pem``, ``NAME.crt``, ``live/NAME/fullchain.pem``).
    source: str
    #: Normalised subjectAltName entries: DNS names, ``*.x.y`` wildcards, IP literals.
    names: tuple[str, ...]
    not_before: datetime.datetime
    not_after: datetime.datetime
    #: SHA-256 of the leaf certificate (DER), lower case hex.
    fingerprint: str
    #: True when it came from ``default.pem`` / ``default.crt``.
    is_default: bool
    context: SSL.Context = attrs.field(eq=False, repr=False)
    #: The key, leaf and chain, to build its per-policy contexts (None: not kept).
    material: tuple[_PrivateKey, x509.Certificate, tuple[x509.Certificate, ...]] | None = (
        attrs.field(default=None, eq=False, repr=False)
    )

    def is_valid_at(self, now: datetime.datetime) -> bool:
        return self.not_before <= now < self.not_after


#: ssl.h's SSL_MODE_ENABLE_PARTIAL_WRITE (pyOpenSSL does not export it).
_SSL_MODE_ENABLE_PARTIAL_WRITE = 0x1
#: ssl.h's SSL_OP_PRIORITIZE_CHACHA (OpenSSL 1.1.1+; pyOpenSSL does not export it).
_SSL_OP_PRIORITIZE_CHACHA = 0x00200000

#: ``--tls-profile`` values, named after Mozilla's Server Side TLS
#: configurations: ``intermediate`` (TLS 1.2 and 1.3) and ``modern`` (TLS 1.3 only).
TLS_PROFILES: tuple[str, ...] = ("intermediate", "modern")
DEFAULT_TLS_PROFILE = "intermediate"

#: TLS 1.2 suites, in Mozilla's intermediate order: ECDHE key exchange (forward
#: secrecy) and AEAD ciphers only, for ECDSA and RSA certificates.  Mozilla's
#: list also has DHE-RSA suites; they are left out (slow, and every client
#: that has them has ECDHE).
TLS12_CIPHERS: tuple[str, ...] = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
)
#: Every TLS 1.3 suite a browser offers (OpenSSL's default set, made explicit).
TLS13_CIPHERSUITES: tuple[str, ...] = (
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
)
#: Key-exchange groups, preferred first.  OpenSSL would also take X448,
#: secp521r1 and the FFDHE groups, which Mozilla's profiles leave out.
TLS_GROUPS: tuple[str, ...] = ("X25519", "P-256", "P-384")

# OpenSSL's SSL_CTX_set1_groups_list (as its older name, SSL_CTX_set1_curves_list,
# which cryptography's bindings export): pyOpenSSL has no call that sets more
# than one group.  Without it, set_tmp_ecdh limits the groups to P-256 alone,
# which is narrower than the profile but still within it.
try:
    from cryptography.hazmat.bindings.openssl.binding import Binding as _Binding

    _set_groups_list: Any = _Binding().lib.SSL_CTX_set1_curves_list
except (ImportError, AttributeError):  # pragma: no cover - other bindings
    _set_groups_list = None


@functools.cache
def groups_settable() -> bool:
    """Whether contexts get every group of :data:`TLS_GROUPS` (else P-256
    alone): the binding is there, pyOpenSSL's context still has its OpenSSL
    handle, and this OpenSSL takes the list (tried once on a throwaway context)."""
    return _set_groups_on(SSL.Context(SSL.TLS_SERVER_METHOD))


def _set_groups_on(context: SSL.Context) -> bool:
    # ``_context`` is pyOpenSSL's handle on the SSL_CTX (no public accessor);
    # a release without it gets P-256 alone instead of failing start-up.
    handle = getattr(context, "_context", None)
    if _set_groups_list is None or handle is None:
        return False
    return bool(_set_groups_list(handle, ":".join(TLS_GROUPS).encode("ascii")) == 1)


@functools.cache
def _acceptable_ciphers() -> AcceptableCiphers:
    # Cached: Twisted checks the list against OpenSSL with a throwaway context.
    ciphers: AcceptableCiphers = AcceptableCiphers.fromOpenSSLCipherString(
        ":".join(TLS12_CIPHERS)
    )
    return ciphers


def _set_groups(context: SSL.Context) -> None:
    if not _set_groups_on(context):
        context.set_tmp_ecdh(ec.SECP256R1())


def _select_alpn(connection: SSL.Connection, offered: list[bytes]) -> Any:
    """ALPN: ``h2`` if offered, else ``http/1.1`` if offered; otherwise
    negotiate no protocol (the handshake continues without ALPN, and the
    connection speaks HTTP/1.1).  Never raises."""
    for protocol in ALPN_PROTOCOLS:
        if protocol in offered:
            return protocol
    return SSL.NO_OVERLAPPING_PROTOCOLS


def _select_alpn_http1(connection: SSL.Connection, offered: list[bytes]) -> Any:
    """ALPN under ``--no-http2``: ``http/1.1`` if offered.  Never raises."""
    if b"http/1.1" in offered:
        return b"http/1.1"
    return SSL.NO_OVERLAPPING_PROTOCOLS


def make_server_context(
    private_key: _PrivateKey | None = None,
    certificate: x509.Certificate | None = None,
    chain: Iterable[x509.Certificate] = (),
    context_for_server_name: Callable[[bytes | None], SSL.Context | None] | None = None,
    tls_profile: str = DEFAULT_TLS_PROFILE,
    http2: bool = True,
) -> SSL.Context:
    """Build an OpenSSL server context with edgeproxy's TLS settings.

    ``tls_profile`` (one of :data:`TLS_PROFILES`): TLS 1.2 with
    :data:`TLS12_CIPHERS` and TLS 1.3 (``intermediate``), or TLS 1.3 alone
    (``modern``); :data:`TLS13_CIPHERSUITES` and :data:`TLS_GROUPS` either way.
    Besides: no compression (Twisted's :class:`CertificateOptions`), server
    session cache and session tickets on, ALPN ``h2`` and ``http/1.1``
    (``http2=False``: ``http/1.1`` only).

    Both the bootstrap context and every certificate's context need the same
    settings: after the SNI switch OpenSSL takes the TLS 1.2 suites from the
    certificate's context, but the groups and versions from the bootstrap one.
    """
    if tls_profile not in TLS_PROFILES:
        raise ValueError(f"unknown TLS profile {tls_profile!r}")
    options = CertificateOptions(
        # CertificateOptions is annotated with pyOpenSSL's PKey/X509 but hands
        # them straight to pyOpenSSL, which prefers cryptography objects.
        privateKey=private_key,  # type: ignore[arg-type]
        certificate=certificate,  # type: ignore[arg-type]
        extraCertChain=list(chain) or None,  # type: ignore[arg-type]
        raiseMinimumTo=TLSVersion.TLSv1_3 if tls_profile == "modern" else TLSVersion.TLSv1_2,
        acceptableCiphers=_acceptable_ciphers(),
        acceptableProtocols=list(ALPN_PROTOCOLS if http2 else ALPN_HTTP1),
        enableSessions=True,
        enableSessionTickets=True,
        contextForServerName=context_for_server_name,
    )
    context: SSL.Context = options.getContext()
    # The server picks the suite, in the order above (Twisted's choice), except
    # for a client that puts ChaCha20 first: a phone without AES instructions.
    context.set_options(_SSL_OP_PRIORITIZE_CHACHA)
    _set_groups(context)
    set_tls13 = getattr(context, "set_tls13_ciphersuites", None)
    if set_tls13 is not None:  # pyOpenSSL 25.2+; OpenSSL's default is the same set
        set_tls13(":".join(TLS13_CIPHERSUITES).encode("ascii"))
    # pyOpenSSL turns partial writes on: SSL_write then stops after each
    # 16 KiB record and a 128 KiB body chunk takes eight Python round trips.
    # Our TLS layer writes to a memory BIO, which always takes everything.
    context.clear_mode(_SSL_MODE_ENABLE_PARTIAL_WRITE)
    # Twisted's ALPN callback offers whatever the wrapped factory negotiates;
    # ours picks from our own list and does not depend on the connection's
    # app data.  After the SNI switch OpenSSL asks the certificate's context,
    # so every context is built with the same choice.
    context.set_alpn_select_callback(_select_alpn if http2 else _select_alpn_http1)
    return context


def _pem_blocks(data: bytes) -> list[tuple[bytes, bytes]]:
    return [(m.group(1), m.group(0)) for m in _PEM_BLOCK.finditer(data)]


def _public_der(key: Any) -> bytes:
    der: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def _names_of(certificate: x509.Certificate) -> tuple[str, ...]:
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    names: list[str] = []
    for dns in san.get_values_for_type(x509.DNSName):
        if dns.startswith("*."):
            rest = normalise_name(dns[2:])
            if rest is None or wildcard_of("x." + rest) is None:
                continue
            name = "*." + rest
        else:
            normalised = normalise_name(dns)
            # Partial wildcards ("f*.example") and other junk are not served.
            if normalised is None:
                continue
            name = normalised
        if name not in names:
            names.append(name)
    for ip in san.get_values_for_type(x509.IPAddress):
        if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address):
            text = str(ip)
            if text not in names:
                names.append(text)
    return tuple(names)


def _order_chain(
    leaf: x509.Certificate, others: list[x509.Certificate]
) -> list[x509.Certificate]:
    """Intermediates in issuing order from the leaf, then any leftovers in file order."""
    remaining = list(others)
    ordered: list[x509.Certificate] = []
    current = leaf
    while True:
        issuer = next((c for c in remaining if c.subject == current.issuer), None)
        if issuer is None:
            break
        ordered.append(issuer)
        remaining.remove(issuer)
        current = issuer
    return ordered + remaining


def _load_key(path: str, block: bytes) -> _PrivateKey:
    try:
        key = serialization.load_pem_private_key(block, password=None)
    except TypeError:
        raise CertificateFileError(
            path, "the private key is encrypted; edgeproxy needs an unencrypted key"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise CertificateFileError(path, f"cannot parse the private key: {e}") from None
    if not isinstance(
        key,
        rsa.RSAPrivateKey
        | ec.EllipticCurvePrivateKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey
        | dsa.DSAPrivateKey,
    ):
        raise CertificateFileError(path, f"unsupported private key type {type(key).__name__}")
    return key


def parse_certificate(
    source: str,
    cert_data: bytes,
    key_data: bytes | None = None,
    *,
    key_source: str | None = None,
    is_default: bool = False,
    tls_profile: str = DEFAULT_TLS_PROFILE,
    http2: bool = True,
) -> LoadedCertificate:
    """Parse PEM data (no I/O) and build the certificate's context
    (see :func:`make_server_context` for ``tls_profile``).

    ``cert_data`` holds the certificate(s), and the private key when
    ``key_data`` is ``None``; blocks may come in any order.  The leaf is the
    certificate whose public key matches the private key; the others are sent
    as the chain.  Raises :class:`CertificateFileError`.
    """
    key_path = key_source if key_source is not None else source
    blocks = _pem_blocks(cert_data)
    certificates: list[x509.Certificate] = []
    key_blocks: list[bytes] = []
    for label, block in blocks:
        if label == b"CERTIFICATE":
            try:
                certificates.append(x509.load_pem_x509_certificate(block))
            except ValueError as e:
                raise CertificateFileError(source, f"cannot parse a certificate: {e}") from None
        elif label in _KEY_LABELS:
            key_blocks.append(block)
        elif label == b"ENCRYPTED PRIVATE KEY":
            raise CertificateFileError(
                source, "the private key is encrypted; edgeproxy needs an unencrypted key"
            )
    if not certificates:
        raise CertificateFileError(source, "no PEM certificate found")
    if key_data is not None:
        key_blocks = []
        for label, block in _pem_blocks(key_data):
            if label in _KEY_LABELS:
                key_blocks.append(block)
            elif label == b"ENCRYPTED PRIVATE KEY":
                raise CertificateFileError(
                    key_path, "the private key is encrypted; edgeproxy needs an unencrypted key"
                )
    if not key_blocks:
        raise CertificateFileError(key_path, "no PEM private key found")
    if len(key_blocks) > 1:
        raise CertificateFileError(key_path, "more than one private key found")
    key = _load_key(key_path, key_blocks[0])
    key_public = _public_der(key.public_key())
    leaf = next((c for c in certificates if _public_der(c.public_key()) == key_public), None)
    if leaf is None:
        raise CertificateFileError(
            source
            if key_path == source
            else f"{source} (key {key_path})",
            "the private key does not match the certificate",
        )
    chain = _order_chain(leaf, [c for c in certificates if c is not leaf])
    names = _names_of(leaf)
    if not names and not is_default:
        raise CertificateFileError(
            source,
            "the certificate has no subjectAltName DNS or IP entries "
            "(names are taken from subjectAltName only, not from the subject CN or file name)",
        )
    try:
        context = make_server_context(key, leaf, chain, tls_profile=tls_profile, http2=http2)
    except (SSL.Error, ValueError) as e:
        raise CertificateFileError(source, f"OpenSSL rejected the certificate: {e}") from None
    # What the connection's channel reads once per connection (certificate_names).
    context.set_app_data(frozenset(names))
    return LoadedCertificate(
        source=source,
        names=names,
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        fingerprint=hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest(),
        is_default=is_default,
        context=context,
        material=(key, leaf, tuple(chain)),
    )


@attrs.frozen
class PolicyNames:
    """What a per-policy context carries: its certificate's names and the policy."""

    names: frozenset[str]
    policy: TLSPolicy


def certificate_names(connection: SSL.Connection) -> frozenset[str] | None:
    """The names (exact, ``*.`` wildcards, IP literals) of the certificate a
    server connection was switched to by its SNI name, or ``None`` when it
    has none of ours (no SNI callback ran, the bootstrap context)."""
    names = connection.get_context().get_app_data()
    if isinstance(names, PolicyNames):
        return names.names
    return names if isinstance(names, frozenset) else None


def connection_policy(connection: SSL.Connection) -> TLSPolicy | None:
    """The virtual host policy a server connection's handshake was held to
    (None: the listener's defaults)."""
    data = connection.get_context().get_app_data()
    return data.policy if isinstance(data, PolicyNames) else None


#: A client certificate is required and verified (the handshake fails without one).
_VERIFY_CLIENT = SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT
_VERSION_NUMBERS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
#: ``get_protocol_version_name()`` values below each ``min_tls_version``.
_BELOW = {
    "1.2": frozenset({"SSLv3", "TLSv1", "TLSv1.1"}),
    "1.3": frozenset({"SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2"}),
}


def version_meets(version: str | None, minimum: str) -> bool:
    """Whether a negotiated version (``get_protocol_version_name()``) is at
    least ``minimum`` (``"1.2"``, ``"1.3"``)."""
    return version is not None and version.startswith("TLSv") and version not in _BELOW[minimum]


_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def client_subject(connection: SSL.Connection) -> bytes | None:
    """The client certificate's subject as an RFC 4514 string
    (``CN=alice,O=Example``), UTF-8, controls escaped as ``\\XX``; None when
    the client sent none.  Verified when the connection's policy has a
    ``client_ca``: the handshake (or the session it resumed) required it and
    OpenSSL fails a handshake whose certificate does not verify."""
    peer = connection.get_peer_certificate(as_cryptography=True)
    if peer is None:
        return None
    text = peer.subject.rfc4514_string()
    return _UNSAFE.sub(lambda m: f"\\{ord(m.group(0)):02X}", text).encode("utf-8")


def session_scope(client_ca: ClientCA) -> bytes:
    """The session id context of a ``client_ca``'s contexts (32 bytes, the
    most OpenSSL takes): a digest of its CA certificates, so equal CA sets
    share sessions (another name, a reload that kept the file) and any
    change starts new ones."""
    digest = hashlib.sha256(b"edgeproxy client_ca\0")
    for ca in client_ca.certificates:
        der = ca.public_bytes(serialization.Encoding.DER)
        digest.update(len(der).to_bytes(4, "big") + der)
    return digest.digest()


def _client_cas(context: SSL.Context) -> tuple[x509.Certificate, ...] | None:
    """The CAs a context verifies clients against; None: it asks for no certificate."""
    data = context.get_app_data()
    if isinstance(data, PolicyNames) and data.policy.client_ca is not None:
        return data.policy.client_ca.certificates
    return None


def client_hello_server_name(message: bytes) -> bytes | None:
    """The host name of a ClientHello's server_name extension, read from the
    handshake message (its 4-byte header included) as OpenSSL's message
    callback hands it over; None when there is none or the message does not
    parse.  Never raises: OpenSSL parses the message again, and a name read
    differently here is caught by the servername callback."""
    try:
        if message[0] != 1:
            return None
        # type, length (3), version (2), random (32)
        at = 38
        at += 1 + message[at]  # session id
        at += 2 + int.from_bytes(message[at : at + 2], "big")  # cipher suites
        at += 1 + message[at]  # compression methods
        end = at + 2 + int.from_bytes(message[at : at + 2], "big")
        if end > len(message):
            return None
        at += 2
        while at + 4 <= end:
            kind = int.from_bytes(message[at : at + 2], "big")
            size = int.from_bytes(message[at + 2 : at + 4], "big")
            at += 4
            if at + size > end:
                return None
            if kind == 0:
                # server_name_list (2), name_type (1): host_name, name (2 + n)
                data = message[at : at + size]
                if len(data) < 5 or data[2] != 0:
                    return None
                length = int.from_bytes(data[3:5], "big")
                name = data[5 : 5 + length]
                return name if len(name) == length and length else None
            at += size
    except IndexError:
        return None
    return None


def make_policy_context(
    certificate: LoadedCertificate,
    policy: TLSPolicy,
    tls_profile: str = DEFAULT_TLS_PROFILE,
    http2: bool = True,
) -> SSL.Context:
    """A context for ``certificate`` under ``policy``: like its own, plus the
    policy's client CA store and verify mode.  Raises ``ValueError`` when the
    certificate's key material was not kept."""
    if certificate.material is None:
        raise ValueError(f"{certificate.source}: no key material kept for a policy context")
    key, leaf, chain = certificate.material
    context = make_server_context(key, leaf, chain, tls_profile=tls_profile, http2=http2)
    if policy.min_version is not None:
        context.set_min_proto_version(_VERSION_NUMBERS[policy.min_version])
    client_ca = policy.client_ca
    if client_ca is not None:
        store = context.get_cert_store()
        assert store is not None  # a server context always has one
        for ca in client_ca.certificates:
            store.add_cert(crypto.X509.from_cryptography(ca))
            # The names sent in the CertificateRequest, so a client with
            # several certificates picks one from this CA.
            context.add_client_ca(ca)
        context.set_verify(_VERIFY_CLIENT)
        # Resumed here only when made under the same CAs (see the module doc).
        context.set_session_id(session_scope(client_ca))
    context.set_app_data(PolicyNames(frozenset(certificate.names), policy))
    return context


def load_certificate(
    cert_path: str, key_path: str | None, *, is_default: bool
) -> LoadedCertificate:
    """Read and parse one certificate (``key_path=None``: the key is in the same PEM file).

    Raises :class:`CertificateFileError` naming the file.
    """
    try:
        cert_data = read_pem_file(cert_path)
        key_data = read_pem_file(key_path) if key_path is not None else None
    except PEMFileError as e:
        raise CertificateFileError(e.path, e.message) from None
    return parse_certificate(
        cert_path, cert_data, key_data, key_source=key_path, is_default=is_default
    )


class CertificateIndex(certindex.CertificateIndex[LoadedCertificate]):
    """The pure :class:`edgeproxy.core.certindex.CertificateIndex` over loaded
    certificates, plus the OpenSSL context lookup of the SNI callback."""

    __slots__ = ()

    def lookup(self, server_name: bytes | None) -> SSL.Context | None:
        """The OpenSSL context for an SNI name (see :meth:`select`)."""
        found = self.select(server_name)
        return found.context if found is not None else None


_ALERT_HANDSHAKE_FAILURE = 40
_ALERT_PROTOCOL_VERSION = 70
_ALERT_INTERNAL_ERROR = 80

# The servername callback, installed through cryptography's bindings rather
# than pyOpenSSL's set_tlsext_servername_callback, whose wrapper cannot end a
# handshake with an alert of ours (only by raising, and then it prints the
# traceback and sends unrecognized_name).  It needs pyOpenSSL's map from SSL
# pointers to connections and the connection's SSL pointer (as pyOpenSSL's
# own wrapper does); when any is missing, pyOpenSSL's wrapper is used and a
# refusal leaves the connection on the bootstrap context instead: a fresh
# handshake still fails, a resumed one is left to the channel, which answers
# its requests 421 (see edgeproxy.proxy.h1channel, ``meets``).
try:
    _servername_binding: Any = _Binding()
    _set_servername = _servername_binding.lib.SSL_CTX_set_tlsext_servername_callback
    _session_reused = _servername_binding.lib.SSL_session_reused
    _ALERT_FATAL: int = _servername_binding.lib.SSL_TLSEXT_ERR_ALERT_FATAL
    _connections: Any = SSL.Connection._reverse_mapping
    # Without it, sessions cannot be scoped to a client_ca and the creator
    # turns resumption off (see SNIConnectionCreator.__init__).
    _set_msg_callback: Any = getattr(_servername_binding.lib, "SSL_CTX_set_msg_callback", None)
except (NameError, AttributeError):  # pragma: no cover - other bindings
    _set_servername = None
    _set_msg_callback = None


def _set_servername_callback(
    context: SSL.Context, handler: Callable[[SSL.Connection], int | None]
) -> object:
    """Install ``handler`` as ``context``'s servername callback; returns what
    must be kept alive as long as the context."""
    handle = getattr(context, "_context", None)
    if _set_servername is None or handle is None:

        def public(connection: SSL.Connection) -> None:
            handler(connection)  # a refusal: the connection was not switched

        context.set_tlsext_servername_callback(public)
        return public

    def callback(ssl: Any, alert: Any, arg: Any) -> int:
        try:
            refusal = handler(_connections[ssl])
        except BaseException:  # handler never raises; a missing connection might
            refusal = _ALERT_INTERNAL_ERROR
        if refusal is None:
            return 0  # SSL_TLSEXT_ERR_OK
        alert[0] = refusal
        return _ALERT_FATAL

    c_callback = _servername_binding.ffi.callback("int (*)(SSL *, int *, void *)", callback)
    _set_servername(handle, c_callback)
    return c_callback


def _resumed(connection: SSL.Connection) -> bool:
    """Whether the handshake resumes a session (so asks for no certificate)."""
    ssl = getattr(connection, "_ssl", None)
    if _set_servername is None or ssl is None:
        return False
    return bool(_session_reused(ssl))


_HANDSHAKE = 22  # the TLS content type of handshake messages


def _set_client_hello_callback(
    context: SSL.Context, handler: Callable[[SSL.Connection, bytes], None]
) -> object | None:
    """Call ``handler`` with every ClientHello a connection of ``context``
    reads, once OpenSSL has read it whole and before it processes it (so
    before the version choice and the session lookup), through OpenSSL's
    message callback: the only hook that early that cryptography's bindings
    offer (not SSL_CTX_set_client_hello_cb).  Returns what must be kept alive
    as long as the context, or None when the bindings lack it.

    The message callback sees every record of the connection's life, so it
    returns at once for anything but an incoming handshake message."""
    handle = getattr(context, "_context", None)
    if _set_servername is None or _set_msg_callback is None or handle is None:
        return None
    ffi = _servername_binding.ffi

    def callback(
        write_p: int, version: int, content_type: int, buf: Any, size: int, ssl: Any, arg: Any
    ) -> None:
        if write_p or content_type != _HANDSHAKE or size < 4:
            return
        try:
            if ffi.cast("unsigned char *", buf)[0] != 1:
                return
            handler(_connections[ssl], ffi.buffer(buf, size)[:])
        except BaseException:  # never raise into OpenSSL; the servername callback checks
            pass

    c_callback: object = ffi.callback(
        "void (*)(int, int, int, const void *, size_t, SSL *, void *)", callback
    )
    _set_msg_callback(handle, c_callback)
    return c_callback


#: Per-policy contexts kept at most (certificates x policies in use; far more
#: only while reloads change policies faster than the index changes).
_MAX_POLICY_CONTEXTS = 4096


@implementer(IOpenSSLServerConnectionCreator)
class SNIConnectionCreator:
    """Server connection creator for :class:`~edgeproxy.tls.server.TLSServerEndpoint`
    (or Twisted's ``wrapServerTLS``).

    Every connection starts on a long-lived bootstrap context (no
    certificate; it owns the session cache and ticket keys) whose SNI callback
    switches to the context of the certificate chosen by the current index.
    No SNI and no default certificate, or an unknown name and no default:
    the connection stays on the bootstrap context and the handshake fails.
    While some virtual host has a ``client_ca``, connections start on a
    second one that also scopes sessions to it (see the module doc): its
    message callback runs for every record (about 1.5 us per record written,
    25% of a 16 KiB record's cost), which the first spares the others.  The
    two hold separate sessions: when the first ``client_ca`` comes or the
    last goes, a client's next handshake is a full one.
    """

    log = Logger()

    def __init__(
        self,
        index_getter: Callable[[], CertificateIndex],
        tls_profile: str = DEFAULT_TLS_PROFILE,
        policy_for: Callable[[str], TLSPolicy | None] | None = None,
        client_ca_in_use: Callable[[], bool] | None = None,
        http2: bool = True,
    ) -> None:
        """``policy_for``: the TLS policy of the virtual host for a normalised
        SNI name in the running configuration (None: no per-name policy).
        ``client_ca_in_use``: whether any of them has a ``client_ca`` now
        (None: assume one may)."""
        self._index_getter = index_getter
        self._policy_for = policy_for
        self._tls_profile = tls_profile
        self._http2 = http2
        self._context = make_server_context(tls_profile=tls_profile, http2=http2)
        # Our own callback, not CertificateOptions' contextForServerName: it
        # needs the connection (the negotiated version, its verify mode), and
        # it may have to end the handshake with an alert.
        self._callback = _set_servername_callback(self._context, self._on_server_name)
        self._client_ca_in_use = client_ca_in_use
        #: The bootstrap context while a client_ca is in use (see the class doc).
        self._scoped_context: SSL.Context | None = None
        self._scoped_callbacks: tuple[object, object | None] | None = None
        if policy_for is not None:
            scoped = self._scoped_context = make_server_context(
                tls_profile=tls_profile, http2=http2
            )
            self._scoped_callbacks = (
                _set_servername_callback(scoped, self._on_server_name),
                _set_client_hello_callback(scoped, self._on_client_hello),
            )
            if self._scoped_callbacks[1] is None:
                # Unscoped, a session would resume into a client_ca host only
                # to be refused there (the client does not retry): none resumes.
                scoped.set_options(SSL.OP_NO_TICKET)
                scoped.set_session_cache_mode(SSL.SESS_CACHE_OFF)
                self.log.warn(
                    "TLS session resumption off while a virtual host has a client_ca: "
                    "this cryptography has no message callback to scope sessions to it"
                )
        self.log.info(
            "TLS profile {profile}: {versions}, groups {groups}",
            profile=tls_profile,
            versions="TLS 1.3" if tls_profile == "modern" else "TLS 1.2 (ECDHE, AEAD) and 1.3",
            groups=":".join(TLS_GROUPS) if groups_settable() else "P-256",
        )
        if not groups_settable():
            self.log.warn(
                "TLS groups: this cryptography or OpenSSL cannot set a list of groups; "
                "offering P-256 only"
            )
        self._warned_index: CertificateIndex | None = None
        #: Per (certificate, policy) contexts, built once each; emptied when
        #: the index is replaced (its certificates may be gone).
        self._policy_contexts: dict[tuple[LoadedCertificate, TLSPolicy], SSL.Context] = {}
        self._policy_index: CertificateIndex | None = None
        #: Handshakes refused because no certificate matched (for metrics).
        self.refused = 0
        #: Handshakes refused because the version was below the name's ``min_tls_version``.
        self.refused_version = 0

    def _on_server_name(self, connection: SSL.Connection) -> int | None:
        """Switch ``connection`` to the context for its SNI name.  Returns
        None to go on, or the TLS alert that ends the handshake.

        Runs inside OpenSSL's servername callback: must never raise.  Not
        switching leaves a fresh handshake on the certificate-less bootstrap
        context, where it fails (``handshake_failure``); an alert also ends
        one that resumes a session, which needs no certificate."""
        try:
            server_name = connection.get_servername()
            index = self._index_getter()
            found = index.select(server_name)
            if found is None:
                self._refuse_unknown(index, server_name)
                return None
            policy = None
            if server_name is not None and self._policy_for is not None:
                host = normalise_host(server_name)
                if host is not None:
                    policy = self._policy_for(host)
            if policy is None:
                if self._misscoped(connection, None):
                    return self._refuse_misscoped(server_name)
                connection.set_context(found.context)
                return None
            minimum = policy.min_version
            if minimum is not None:
                version = connection.get_protocol_version_name()
                if version in _BELOW[minimum]:
                    self.refused_version += 1
                    self.log.debug(
                        "TLS handshake refused: {version} for {server_name!r}, "
                        "which needs TLS {minimum} or later",
                        version=version,
                        server_name=server_name,
                        minimum=minimum,
                    )
                    return _ALERT_PROTOCOL_VERSION
            client_ca = policy.client_ca
            if self._misscoped(connection, client_ca):
                return self._refuse_misscoped(server_name)
            context = self._policy_context(index, found, policy)
            connection.set_context(context)
            if client_ca is not None:
                # SSL_set_SSL_CTX takes the store and CA names from the new
                # context but not the verify mode.
                connection.set_verify(_VERIFY_CLIENT)
            return None
        except BaseException:
            try:
                self.log.failure(
                    "while selecting the certificate for {server_name!r}",
                    server_name=connection.get_servername(),
                )
            except BaseException:
                pass
            return _ALERT_INTERNAL_ERROR

    def _on_client_hello(self, connection: SSL.Connection, message: bytes) -> None:
        """Before OpenSSL looks up the session a ClientHello resumes: switch
        a connection that names a ``client_ca`` host to its policy context,
        whose session id context (:func:`session_scope`) the lookup then
        checks the session against.  Anything else stays on the bootstrap
        context, which no ``client_ca`` context's session matches."""
        if self._policy_for is None:
            return
        server_name = client_hello_server_name(message)
        host = normalise_host(server_name) if server_name is not None else None
        if host is None:
            return
        policy = self._policy_for(host)
        if policy is None or policy.client_ca is None:
            return
        index = self._index_getter()
        found = index.select(server_name)
        if found is not None:
            connection.set_context(self._policy_context(index, found, policy))

    @staticmethod
    def _misscoped(connection: SSL.Connection, client_ca: ClientCA | None) -> bool:
        """Whether the servername callback's choice (``client_ca``: the CAs
        its name verifies clients against) disagrees with the scope the
        ClientHello callback set for the session lookup, in a way that would
        let a session into a ``client_ca`` name that its CAs did not verify:
        a resumed session scoped to other CAs (or none), or a new session
        that would be scoped to CAs that do not verify it.  Only when the two
        read the server name differently (or OpenSSL's TLS 1.2 resumption
        names the session's original host), or the ClientHello callback is
        missing; OpenSSL scopes every other case itself."""
        scoped = _client_cas(connection.get_context())
        wanted = client_ca.certificates if client_ca is not None else None
        if scoped == wanted:
            return False
        if _resumed(connection):
            return wanted is not None
        return scoped is not None

    def _refuse_misscoped(self, server_name: bytes | None) -> int:
        self.log.debug(
            "TLS handshake refused for {server_name!r}: its session is not scoped "
            "to the client_ca that verifies it",
            server_name=server_name,
        )
        return _ALERT_HANDSHAKE_FAILURE

    def _policy_context(
        self, index: CertificateIndex, certificate: LoadedCertificate, policy: TLSPolicy
    ) -> SSL.Context:
        if self._policy_index is not index:
            self._policy_index = index
            self._policy_contexts = {}
        key = (certificate, policy)
        context = self._policy_contexts.get(key)
        if context is None:
            if len(self._policy_contexts) >= _MAX_POLICY_CONTEXTS:
                self._policy_contexts.clear()  # a reload storm: rebuilt as used
            context = self._policy_contexts[key] = make_policy_context(
                certificate, policy, self._tls_profile, self._http2
            )
        return context

    def _refuse_unknown(self, index: CertificateIndex, server_name: bytes | None) -> None:
        self.refused += 1
        if self._warned_index is not index:
            # Once per index at warn level, then debug: scanners hit this.
            self._warned_index = index
            self.log.warn(
                "TLS handshake refused: no certificate for server name "
                "{server_name!r} and no default certificate "
                "(further refusals are logged at debug level)",
                server_name=server_name,
            )
        else:
            self.log.debug(
                "TLS handshake refused: no certificate for server name {server_name!r}",
                server_name=server_name,
            )

    def serverConnectionForTLS(self, protocol: object) -> SSL.Connection:
        scoped = self._scoped_context
        if scoped is not None and (self._client_ca_in_use is None or self._client_ca_in_use()):
            return SSL.Connection(scoped, None)
        return SSL.Connection(self._context, None)
