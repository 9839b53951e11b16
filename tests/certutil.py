"""
Test helpers that make certificates and write them in the layouts edgeproxy reads.

Typical use (unit or end-to-end)::

    from tests.certutil import make_ca, write_cert

    ca = make_ca()
    write_cert(certs_dir, "shop", ca, "shop.example", "*.shop.example")
    write_cert(certs_dir, "default", ca, "fallback.example")   # the default certificate
    # ... start `twistd edgeproxy --certs certs_dir`, then connect:
    ctx = ssl.create_default_context(cafile=write_ca_pem(ca, tmp_dir))  # or ca.configure_trust(ctx)

Files are written atomically (temp file + rename), so a running watcher never
sees half a file.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import ssl
from typing import Any, Literal

import attrs
import trustme
from OpenSSL import SSL

from edgeproxy.tls.certificates import CertificateIndex, parse_certificate

__all__ = [
    "HandshakeResult",
    "Layout",
    "client_context",
    "days",
    "default_index",
    "make_ca",
    "memory_handshake",
    "utc",
    "write_ca_pem",
    "write_cert",
    "write_key_mismatch",
    "write_raw",
]

Layout = Literal["pem", "crtkey", "certbot"]


def utc(
    year: int, month: int = 1, day: int = 1, hour: int = 0, minute: int = 0
) -> datetime.datetime:
    """``utc(2030, 1, 1)``: a tz-aware UTC datetime."""
    return datetime.datetime(year, month, day, hour, minute, tzinfo=datetime.UTC)


def days(n: float) -> datetime.timedelta:
    return datetime.timedelta(days=n)


def make_ca() -> trustme.CA:
    """A fresh test CA.  Trust it with ``ca.configure_trust(ssl_context)``."""
    return trustme.CA()


def default_index(ca: trustme.CA, name: str) -> CertificateIndex:
    """An index of one certificate for ``name``, issued by ``ca``, as the
    default certificate (served to clients without SNI too); no files."""
    leaf = ca.issue_cert(name)
    chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
    loaded = parse_certificate(
        "/certs/default.pem", chain + leaf.private_key_pem.bytes(), is_default=True
    )
    return CertificateIndex.build([loaded], datetime.datetime.now(datetime.UTC))


def write_ca_pem(ca: trustme.CA, directory: str, name: str = "ca.pem") -> str:
    """Write the CA certificate (PEM) for ``cafile=`` / ``--cacert``; returns its path."""
    path = os.path.join(directory, name)
    ca.cert_pem.write_to_path(path)
    return path


def write_raw(path: str, data: bytes) -> str:
    """Atomically write ``data`` to ``path`` (creating directories); returns ``path``."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path


def _issue(
    ca: trustme.CA,
    names: tuple[str, ...],
    not_before: datetime.datetime | None,
    not_after: datetime.datetime | None,
) -> trustme.LeafCert:
    if not names:
        raise ValueError("give at least one name (DNS, *.wildcard or IP)")
    return ca.issue_cert(*names, not_before=not_before, not_after=not_after)


def _write_layout(
    directory: str,
    stem: str,
    layout: Layout,
    key_pem: bytes,
    chain_pem: bytes,
) -> str:
    if layout == "pem":
        # Chain first, key last: edgeproxy accepts any order.
        return write_raw(os.path.join(directory, f"{stem}.pem"), chain_pem + key_pem)
    if layout == "crtkey":
        write_raw(os.path.join(directory, f"{stem}.key"), key_pem)
        return write_raw(os.path.join(directory, f"{stem}.crt"), chain_pem)
    if layout == "certbot":
        # certbot: archive/NAME/fullchainN.pem, live/NAME/fullchain.pem -> ../../archive/...
        archive = os.path.join(directory, "archive", stem)
        live = os.path.join(directory, "live", stem)
        os.makedirs(archive, exist_ok=True)
        os.makedirs(live, exist_ok=True)
        n = 1
        while os.path.exists(os.path.join(archive, f"fullchain{n}.pem")):
            n += 1
        write_raw(os.path.join(archive, f"privkey{n}.pem"), key_pem)
        write_raw(os.path.join(archive, f"fullchain{n}.pem"), chain_pem)
        for kind in ("privkey", "fullchain"):
            link = os.path.join(live, f"{kind}.pem")
            tmp = link + ".tmp"
            os.symlink(os.path.join("..", "..", "archive", stem, f"{kind}{n}.pem"), tmp)
            os.replace(tmp, link)
        readme = os.path.join(directory, "live", "README")
        if not os.path.exists(readme):
            write_raw(readme, b"This directory contains your keys and certificates.\n")
        return os.path.join(live, "fullchain.pem")
    raise ValueError(f"unknown layout {layout!r}")


def write_cert(
    directory: str,
    stem: str,
    ca: trustme.CA,
    *names: str,
    layout: Layout = "pem",
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> str:
    """Issue a leaf for ``names`` from ``ca`` and write it under ``directory``.

    Layouts: ``"pem"`` writes ``STEM.pem`` (chain + key); ``"crtkey"`` writes
    ``STEM.crt`` + ``STEM.key``; ``"certbot"`` treats ``directory`` as
    ``/etc/letsencrypt`` and writes ``archive/STEM/{fullchain,privkey}N.pem``
    with ``live/STEM/{fullchain,privkey}.pem`` symlinks (call again to "renew").
    ``stem="default"`` makes the default certificate.  Returns the main file
    (``STEM.pem``, ``STEM.crt`` or ``live/STEM/fullchain.pem``).
    """
    leaf = _issue(ca, names, not_before, not_after)
    chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
    return _write_layout(directory, stem, layout, leaf.private_key_pem.bytes(), chain)


def write_key_mismatch(
    directory: str, stem: str, ca: trustme.CA, *names: str, layout: Layout = "pem"
) -> str:
    """Like :func:`write_cert`, but the private key belongs to another certificate."""
    leaf = _issue(ca, names, None, None)
    other = _issue(ca, names, None, None)
    chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
    return _write_layout(directory, stem, layout, other.private_key_pem.bytes(), chain)


# --- In-memory TLS handshakes against an IOpenSSLServerConnectionCreator -----



def client_context(
    ca: trustme.CA | None = None,
    *,
    version: ssl.TLSVersion | None = None,
    alpn: tuple[str, ...] | None = ("http/1.1",),
) -> ssl.SSLContext:
    """A Python ``ssl`` client context.  With ``ca`` it verifies the server
    (and the host name); without, it accepts any certificate (to inspect
    which one was served).  ``version`` pins min and max TLS version.  Reuse
    the same context for a resumed handshake (Python requires it)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca is not None:
        ca.configure_trust(ctx)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if version is not None:
        if version < ssl.TLSVersion.TLSv1_2:
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = version
        ctx.maximum_version = version
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


@attrs.frozen
class HandshakeResult:
    ok: bool
    #: The client's error when the handshake failed.
    error: str | None = None
    version: str | None = None
    alpn: str | None = None
    session_reused: bool = False
    session: ssl.SSLSession | None = None
    #: sha256 hex of the served leaf (compare with LoadedCertificate.fingerprint).
    fingerprint: str | None = None
    #: The suite agreed on (OpenSSL's name).
    cipher: str | None = None
    #: The server's connection, after a complete handshake (to read what it learnt).
    server: SSL.Connection | None = attrs.field(default=None, eq=False, repr=False)


class _NoTransport:
    """Stands in for the TLSMemoryBIOProtocol as the connection's app data."""

    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True


def memory_handshake(
    creator: Any,
    server_name: str | None,
    ctx: ssl.SSLContext,
    session: ssl.SSLSession | None = None,
) -> HandshakeResult:
    """Run one TLS handshake in memory: Python ``ssl`` client (MemoryBIO) against
    ``creator.serverConnectionForTLS(...)``; then the server sends a few bytes
    (so a TLS 1.3 client receives its session ticket).  No sockets, no sleeps."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name, session=session)
    server: SSL.Connection = creator.serverConnectionForTLS(None)
    server.set_accept_state()
    server.set_app_data(_NoTransport())
    client_done = server_done = False
    client_error: str | None = None
    server_error: str | None = None
    for _ in range(100):
        moved = False
        if not client_done and client_error is None:
            try:
                client.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLError, OSError) as e:
                client_error = f"{type(e).__name__}: {e}"
        data = outgoing.read()
        if data:
            moved = True
            server.bio_write(data)
        if not server_done and server_error is None:
            try:
                server.do_handshake()
                server_done = True
            except SSL.WantReadError:
                pass
            except SSL.Error as e:
                server_error = f"server: {e}"
        try:
            data = server.bio_read(65536)
        except SSL.WantReadError:
            data = b""
        if data:
            moved = True
            incoming.write(data)
        if not moved and ((client_done and server_done) or client_error or server_error):
            break
    if not (client_done and server_done):
        return HandshakeResult(ok=False, error=client_error or server_error or "stalled")
    server.send(b"ping")
    incoming.write(server.bio_read(65536))
    assert client.read(4) == b"ping"
    der = client.getpeercert(binary_form=True)
    # Close cleanly (close_notify), as Twisted's loseConnection does: OpenSSL
    # drops a session from the server cache when the connection is freed
    # without a shutdown.
    server.shutdown()
    return HandshakeResult(
        ok=True,
        version=client.version(),
        alpn=client.selected_alpn_protocol(),
        cipher=(client.cipher() or (None,))[0],
        session_reused=client.session_reused,
        session=client.session,
        fingerprint=hashlib.sha256(der).hexdigest() if der else None,
        server=server,
    )
