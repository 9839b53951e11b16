"""
TLS through the real ``twistd edgeproxy``: certificate selection by SNI, the
directory layouts, hot reload of the certificate directory, protocol versions,
ALPN and session resumption.  Every handshake that succeeds also carries an
HTTPS request to a real backend, so "the handshake worked" always means "the
site works".

Clients are Python's ``ssl``; the served certificate is compared (DER) with
the leaf in the file that should have been chosen.
"""

from __future__ import annotations

import datetime
import hashlib
import http.client
import json
import os
import re
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509

from tests.certutil import client_context, write_cert, write_key_mismatch, write_raw
from tests.e2e.conftest import check_tls_layer
from tests.e2e.harness import BackendServer, ProxyProcess, request

#: The docs promise a changed certificate directory takes effect "within
#: about 2 seconds (at most 5)"; polls give up (and report) after RELOAD_DEADLINE.
RELOAD_PROMISE = 5.0
RELOAD_DEADLINE = 8.0

ROUTED_NAMES = [
    "shop.example",
    "*.shop.example",
    "a.b.shop.example",
    "xn--bcher-kva.example",
    "crt.example",
    "certbot.example",
    "le.example",
    "unknown.example",
    "default.test",
    "new.example",
    "replace.example",
    "remove.example",
    "broken.example",
    "mismatch.example",
    "late.example",
    "127.0.0.1",
]

CONFIG = """
from edgeproxy.config import Cluster, Route, VirtualHost

app = Cluster("app", endpoints=["{app}"])
virtual_hosts = [VirtualHost({names!r}, routes=[Route("/", app)])]
"""


# --- helpers ---------------------------------------------------------------


def leaf_der(path: str | Path) -> bytes:
    """The DER of the first certificate in a PEM file (the leaf, as the helpers write it)."""
    text = Path(path).read_text()
    begin = text.index("-----BEGIN CERTIFICATE-----")
    end = text.index("-----END CERTIFICATE-----", begin) + len("-----END CERTIFICATE-----")
    return ssl.PEM_cert_to_DER_cert(text[begin:end])


def describe(der: bytes | None) -> str:
    """SANs, serial and fingerprint of a certificate, for assertion messages."""
    if der is None:
        return "<no certificate>"
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n.value) for n in san]
    except x509.ExtensionNotFound:
        names = []
    return (
        f"SAN={names} serial={cert.serial_number:x} sha256={hashlib.sha256(der).hexdigest()[:16]}"
    )


def tls_connect(
    port: int,
    sni: str | None,
    ctx: ssl.SSLContext,
    session: ssl.SSLSession | None = None,
    timeout: float = 5.0,
) -> ssl.SSLSocket:
    """A completed TLS handshake with the proxy on 127.0.0.1, sending ``sni`` (or none)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout)
    try:
        return ctx.wrap_socket(sock, server_hostname=sni, session=session)
    except BaseException:
        sock.close()
        raise


def over(tls: ssl.SSLSocket, port: int) -> http.client.HTTPConnection:
    """An HTTP connection on an existing TLS socket.  It is a *plain* HTTPConnection,
    so it can never silently reconnect: a dropped socket fails the next request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5.0)
    conn.sock = tls
    return conn


def served_der(port: int, sni: str | None) -> bytes:
    tls = tls_connect(port, sni, client_context())
    try:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der
    finally:
        tls.close()


def wait_until_served(port: int, sni: str, expected: bytes, what: str) -> float:
    """Poll handshakes until ``sni`` is served ``expected``; return the seconds it took."""
    start = time.monotonic()
    while True:
        der: bytes | None
        try:
            der = served_der(port, sni)
        except ssl.SSLError:  # refused: no certificate (yet)
            der = None
        elapsed = time.monotonic() - start
        if der == expected:
            return elapsed
        if elapsed > RELOAD_DEADLINE:
            raise AssertionError(
                f"{what}: {sni} still served {describe(der)} after {elapsed:.1f}s, "
                f"expected {describe(expected)}"
            )
        time.sleep(0.1)


def echo(body: bytes) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(body)
    return info


# --- the proxy under test ------------------------------------------------


@dataclass
class Site:
    proxy: ProxyProcess
    backend: BackendServer
    ca: trustme.CA
    certs: Path

    @property
    def port(self) -> int:
        return self.proxy.ports["https"]

    def path(self, stem: str) -> Path:
        return self.certs / f"{stem}.pem"

    def get(self, tls: ssl.SSLSocket, host: str, path: str = "/probe") -> dict[str, Any]:
        """One request on ``tls`` (kept open); asserts it reached the backend."""
        before = self.backend.requests
        response, body = request(over(tls, self.port), "GET", path, host)
        assert response.status == 200, (response.status, body[:200])
        info = echo(body)
        assert info["backend"] == "app" and info["path"] == path
        assert self.backend.requests == before + 1
        return info


def write_config(tmp: Path, backend: BackendServer) -> Path:
    config = tmp / "sites.py"
    config.write_text(CONFIG.format(app=backend.address, names=ROUTED_NAMES))
    return config


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory,
    backend: BackendServer,
    ca: trustme.CA,
    tls_layer: tuple[str, ...],
) -> Iterator[Site]:
    """One proxy whose --certs is a letsencrypt-like root that mixes every layout:
    default.pem, exact and wildcard NAME.pem, NAME.crt+NAME.key, live/NAME/ (certbot),
    plus the files the hot-reload tests change.  One per TLS layer: every test of
    this module runs on edgeproxy's and on Twisted's."""
    tmp = tmp_path_factory.mktemp("tls")
    certs = tmp / "certs"
    certs.mkdir()
    d = str(certs)
    write_cert(d, "default", ca, "default.test")
    write_cert(d, "exact", ca, "www.shop.example")
    write_cert(d, "wildcard", ca, "*.shop.example")
    write_cert(d, "idn", ca, "xn--bcher-kva.example")
    write_cert(d, "crt", ca, "crt.example", layout="crtkey")
    write_cert(d, "certbot", ca, "certbot.example", layout="certbot")
    now = datetime.datetime.now(datetime.UTC)
    write_cert(
        d,
        "replace",
        ca,
        "replace.example",
        not_before=now - datetime.timedelta(days=1),
        not_after=now + datetime.timedelta(days=30),
    )
    write_cert(d, "remove", ca, "remove.example")
    write_cert(d, "broken", ca, "broken.example")
    proxy = ProxyProcess(tmp, write_config(tmp, backend), certs, tls_layer).start()
    try:
        check_tls_layer(proxy, tls_layer)
        yield Site(proxy, backend, ca, certs)
    finally:
        proxy.stop()


@pytest.fixture(scope="module")
def nodefault(
    tmp_path_factory: pytest.TempPathFactory,
    backend: BackendServer,
    ca: trustme.CA,
    tls_layer: tuple[str, ...],
) -> Iterator[Site]:
    """A proxy with no default certificate, and --certs pointing at certbot's live/."""
    tmp = tmp_path_factory.mktemp("tls-nodefault")
    letsencrypt = tmp / "letsencrypt"
    write_cert(str(letsencrypt), "le", ca, "le.example", layout="certbot")
    proxy = ProxyProcess(tmp, write_config(tmp, backend), letsencrypt / "live", tls_layer).start()
    try:
        check_tls_layer(proxy, tls_layer)
        yield Site(proxy, backend, ca, letsencrypt)
    finally:
        proxy.stop()


# --- certificate selection by SNI -----------------------------------------

SELECTION = [
    # (SNI sent, file whose certificate must be served, does that certificate cover the name)
    ("www.shop.example", "exact.pem", True),  # exact beats the wildcard that also matches
    ("WWW.Shop.Example", "exact.pem", True),  # SNI is case-insensitive
    ("www.shop.example.", "exact.pem", False),  # trailing dot (Python won't verify it)
    ("eu.shop.example", "wildcard.pem", True),
    ("a.b.shop.example", "default.pem", False),  # a wildcard covers exactly one label
    ("shop.example", "default.pem", False),  # ... and not the bare domain
    ("bücher.example", "idn.pem", True),  # IDNA: sent and served as xn--bcher-kva.example
    ("crt.example", "crt.crt", True),  # NAME.crt + NAME.key
    ("certbot.example", "live/certbot/fullchain.pem", True),  # --certs /etc/letsencrypt
    ("default.test", "default.pem", True),  # the default also serves its own SAN
    ("unknown.example", "default.pem", False),
    (None, "default.pem", False),  # connect by IP: no SNI
]

#: Names served the default certificate, which does not cover them: the name
#: the client sent is served, another host the default does not cover is
#: misdirected (421) on that connection.
DEFAULT_FOR_OTHERS = frozenset({"a.b.shop.example", "shop.example", "unknown.example"})


@pytest.mark.parametrize(("sni", "source", "covers"), SELECTION)
def test_sni_selects_certificate_and_request_reaches_backend(
    site: Site, sni: str | None, source: str, covers: bool
) -> None:
    expected = leaf_der(site.certs / source)
    # A verifying client where the certificate is meant for the name: the
    # chain and the name check out, as a browser would see it.
    ctx = client_context(site.ca) if covers else client_context()
    tls = tls_connect(site.port, sni, ctx)
    try:
        der = tls.getpeercert(binary_form=True)
        assert der == expected, f"{sni!r}: got {describe(der)}, want {describe(expected)}"
        host = sni.encode("idna").decode().lower().rstrip(".") if sni else "127.0.0.1"
        site.get(tls, host)
        if host in DEFAULT_FOR_OTHERS:
            before = site.backend.requests
            response, body = request(over(tls, site.port), "GET", "/probe", "www.shop.example")
            assert (response.status, body) == (421, b"421 misdirected request\n")
            assert site.backend.requests == before
    finally:
        tls.close()


def test_certbot_live_directory_and_no_default(nodefault: Site) -> None:
    # --certs /etc/letsencrypt/live: NAME/fullchain.pem + NAME/privkey.pem.
    expected = leaf_der(nodefault.certs / "live" / "le" / "fullchain.pem")
    tls = tls_connect(nodefault.port, "le.example", client_context(nodefault.ca))
    try:
        assert tls.getpeercert(binary_form=True) == expected
        nodefault.get(tls, "le.example")
    finally:
        tls.close()


@pytest.mark.parametrize("sni", ["unknown.example", None])
def test_without_default_unknown_name_and_no_sni_are_refused(
    nodefault: Site, sni: str | None
) -> None:
    with pytest.raises(ssl.SSLError) as info:
        tls_connect(nodefault.port, sni, client_context()).close()
    # docs/certificates.md: "the client sees a handshake_failure alert".
    assert "HANDSHAKE_FAILURE" in str(info.value).upper(), info.value
    nodefault.proxy.wait_for_output(r"TLS handshake refused: no certificate for server name")
    # The listener is unaffected: a known name still works right after.
    tls = tls_connect(nodefault.port, "le.example", client_context(nodefault.ca))
    try:
        nodefault.get(tls, "le.example")
    finally:
        tls.close()


# --- TLS settings -------------------------------------------------------------


def test_default_client_negotiates_tls13(site: Site) -> None:
    tls = tls_connect(site.port, "www.shop.example", client_context(site.ca))
    try:
        assert tls.version() == "TLSv1.3"
        site.get(tls, "www.shop.example")
    finally:
        tls.close()


def test_tls12_only_client_works(site: Site) -> None:
    ctx = client_context(site.ca, version=ssl.TLSVersion.TLSv1_2)
    tls = tls_connect(site.port, "www.shop.example", ctx)
    try:
        assert tls.version() == "TLSv1.2"
        negotiated = tls.cipher()
        assert negotiated is not None
        cipher = negotiated[0]
        # Twisted's modern defaults: forward secret AEAD only.
        assert cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher), cipher
        site.get(tls, "www.shop.example")
    finally:
        tls.close()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls11_client_is_refused(site: Site) -> None:
    # The local OpenSSL may refuse to even offer TLS 1.1 (client-side error);
    # either way no TLS 1.1 connection must come up.  The raw ClientHello test
    # below checks the server side independently of the client's policy.
    ctx = client_context(version=ssl.TLSVersion.TLSv1_1)
    with pytest.raises(ssl.SSLError) as info:
        tls_connect(site.port, "www.shop.example", ctx).close()
    message = str(info.value).upper()
    # Server side: the protocol_version alert; client side: nothing to offer.
    assert any(
        reason in message
        for reason in ("ALERT_PROTOCOL_VERSION", "NO_PROTOCOLS_AVAILABLE", "UNSUPPORTED_PROTOCOL")
    ), info.value


def _client_hello(legacy_version: int, server_name: str) -> bytes:
    """A minimal pre-TLS-1.3 ClientHello (no supported_versions extension) that a
    TLS 1.2 server accepts when ``legacy_version`` is 0x0303."""
    name = server_name.encode()

    def extension(kind: int, data: bytes) -> bytes:
        return struct.pack("!HH", kind, len(data)) + data

    def vector16(*items: int) -> bytes:
        return struct.pack(f"!H{len(items)}H", 2 * len(items), *items)

    extensions = (
        extension(0x0000, struct.pack("!HBH", len(name) + 3, 0, len(name)) + name)  # SNI
        + extension(0x000A, vector16(0x001D, 0x0017))  # groups: x25519, secp256r1
        + extension(0x000B, b"\x01\x00")  # EC point formats: uncompressed
        + extension(0x000D, vector16(0x0403, 0x0804, 0x0401))  # signature algorithms
    )
    # ECDHE-ECDSA/RSA with AES-GCM, then CBC suites an old client would offer.
    ciphers = vector16(0xC02B, 0xC02F, 0xC009, 0xC013, 0x002F)
    body = (
        struct.pack("!H", legacy_version)
        + os.urandom(32)
        + b"\x00"  # no session id
        + ciphers
        + b"\x01\x00"  # compression: null only
        + struct.pack("!H", len(extensions))
        + extensions
    )
    handshake = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


def _first_record_header(port: int, hello: bytes) -> bytes:
    """Send ``hello``; return the server's first 7 bytes (record header + 2)."""
    with socket.create_connection(("127.0.0.1", port), 5.0) as sock:
        sock.sendall(hello)
        answer = b""
        while len(answer) < 7:
            chunk = sock.recv(7 - len(answer))
            if not chunk:
                break
            answer += chunk
    return answer


def test_raw_tls12_client_hello_gets_server_hello(site: Site) -> None:
    # The control for the test below: the same hand-made hello, as TLS 1.2, is answered.
    answer = _first_record_header(site.port, _client_hello(0x0303, "www.shop.example"))
    assert answer[:3] == b"\x16\x03\x03", answer.hex()  # a TLS 1.2 handshake record
    assert answer[5:6] == b"\x02", answer.hex()  # ServerHello


@pytest.mark.parametrize(
    "legacy_version", [0x0300, 0x0301, 0x0302], ids=["SSLv3", "TLSv1.0", "TLSv1.1"]
)
def test_old_protocol_gets_protocol_version_alert(site: Site, legacy_version: int) -> None:
    answer = _first_record_header(site.port, _client_hello(legacy_version, "www.shop.example"))
    # An alert record (21), fatal (2), protocol_version (70): not a ServerHello.
    assert answer[:1] == b"\x15", answer.hex()
    assert answer[5:7] == b"\x02\x46", answer.hex()


@pytest.mark.parametrize(
    ("offered", "negotiated"),
    [
        (("http/1.1",), "http/1.1"),
        (("spdy/3",), None),  # no overlap: no ALPN protocol, still HTTP/1.1
        ((), None),  # no ALPN at all
    ],
)
def test_alpn(site: Site, offered: tuple[str, ...], negotiated: str | None) -> None:
    """HTTP/1.1 when ALPN picks it or picks nothing (h2: tests/e2e/test_http2.py)."""
    tls = tls_connect(site.port, "www.shop.example", client_context(site.ca, alpn=offered))
    try:
        assert tls.selected_alpn_protocol() == negotiated
        site.get(tls, "www.shop.example")
    finally:
        tls.close()


def test_alpn_prefers_h2(site: Site) -> None:
    ctx = client_context(site.ca, alpn=("http/1.1", "h2"))
    tls = tls_connect(site.port, "www.shop.example", ctx)
    try:
        assert tls.selected_alpn_protocol() == "h2"
    finally:
        tls.close()


# --- session resumption ---------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "tickets"),
    [
        (None, True),  # TLS 1.3: tickets
        (ssl.TLSVersion.TLSv1_2, True),  # TLS 1.2 session ticket
        (ssl.TLSVersion.TLSv1_2, False),  # TLS 1.2 session-ID cache, clean close
    ],
    ids=["tls13", "tls12-ticket", "tls12-session-id"],
)
def test_session_resumption(site: Site, version: ssl.TLSVersion | None, tickets: bool) -> None:
    # The same context for both connections (Python requires it for session=).
    ctx = client_context(site.ca, version=version)
    if not tickets:
        ctx.options |= ssl.OP_NO_TICKET
    first = tls_connect(site.port, "www.shop.example", ctx)
    try:
        assert not first.session_reused
        # Read a response first: a TLS 1.3 ticket arrives after the handshake.
        site.get(first, "www.shop.example")
        session = first.session
        assert session is not None
        if not tickets:
            # close_notify both ways: OpenSSL drops an uncleanly closed session
            # from the server's session-ID cache.
            first = first.unwrap()  # type: ignore[assignment]
    finally:
        first.close()
    second = tls_connect(site.port, "www.shop.example", ctx, session=session)
    try:
        assert second.session_reused, f"{second.version()} session not resumed"
        if version is None:
            assert second.version() == "TLSv1.3"
        # The resumed connection still serves the right site.
        assert second.getpeercert(binary_form=True) == leaf_der(site.path("exact"))
        site.get(second, "www.shop.example")
    finally:
        second.close()


# --- hot reload -------------------------------------------------------------------
# These change site.certs while the proxy runs; each uses its own name.


def test_added_certificate_is_served_and_sessions_survive_the_reload(site: Site) -> None:
    # A TLS 1.3 session from before the reload (docs: the session cache and
    # ticket keys belong to the listener, so a reload does not lose them).
    ctx = client_context(site.ca)
    before = tls_connect(site.port, "www.shop.example", ctx)
    try:
        site.get(before, "www.shop.example")
        session = before.session
    finally:
        before.close()

    default = leaf_der(site.path("default"))
    assert served_der(site.port, "new.example") == default
    path = write_cert(str(site.certs), "new", site.ca, "new.example")
    took = wait_until_served(site.port, "new.example", leaf_der(path), "added certificate")
    assert took <= RELOAD_PROMISE, f"added certificate served after {took:.1f}s"
    tls = tls_connect(site.port, "new.example", ctx)
    try:
        site.get(tls, "new.example")
    finally:
        tls.close()

    resumed = tls_connect(site.port, "www.shop.example", ctx, session=session)
    try:
        assert resumed.session_reused, "session lost across a certificate reload"
        site.get(resumed, "www.shop.example")
    finally:
        resumed.close()


def test_replaced_certificate_is_served_and_open_connection_survives(site: Site) -> None:
    old = leaf_der(site.path("replace"))
    ctx = client_context(site.ca)
    kept = tls_connect(site.port, "replace.example", ctx)
    try:
        assert kept.getpeercert(binary_form=True) == old
        site.get(kept, "replace.example", "/before")

        now = datetime.datetime.now(datetime.UTC)
        path = write_cert(
            str(site.certs),
            "replace",
            site.ca,
            "replace.example",
            not_before=now - datetime.timedelta(days=1),
            not_after=now + datetime.timedelta(days=90),
        )
        new = leaf_der(path)
        assert new != old
        old_cert, new_cert = (
            x509.load_der_x509_certificate(old),
            x509.load_der_x509_certificate(new),
        )
        assert new_cert.serial_number != old_cert.serial_number
        assert new_cert.not_valid_after_utc > old_cert.not_valid_after_utc

        took = wait_until_served(site.port, "replace.example", new, "replaced certificate")
        assert took <= RELOAD_PROMISE, f"replaced certificate served after {took:.1f}s"

        # The connection opened before the swap is not dropped: same socket,
        # same certificate, another request goes through.
        conn = over(kept, site.port)
        response, body = request(conn, "GET", "/after", "replace.example")
        assert response.status == 200
        assert echo(body)["path"] == "/after"
        assert conn.sock is kept
        assert kept.getpeercert(binary_form=True) == old
    finally:
        kept.close()
    fresh = tls_connect(site.port, "replace.example", ctx)
    try:
        site.get(fresh, "replace.example")
    finally:
        fresh.close()


def test_removed_certificate_falls_back_to_default(site: Site) -> None:
    assert served_der(site.port, "remove.example") == leaf_der(site.path("remove"))
    os.remove(site.path("remove"))
    default = leaf_der(site.path("default"))
    took = wait_until_served(site.port, "remove.example", default, "removed certificate")
    assert took <= RELOAD_PROMISE, f"removed certificate still served after {took:.1f}s"
    tls = tls_connect(site.port, "remove.example", client_context())
    try:
        # The default certificate does not cover remove.example, but it is the
        # name the client sent: still served (a monitor using -k sees no change).
        site.get(tls, "remove.example")
    finally:
        tls.close()


def test_broken_file_keeps_previous_certificate(site: Site) -> None:
    path = site.path("broken")
    good = leaf_der(path)
    assert served_der(site.port, "broken.example") == good
    start = len(site.proxy.output)
    write_raw(
        str(path),
        b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
        b"-----BEGIN PRIVATE KEY-----\nZ2FyYmFnZQ==\n-----END PRIVATE KEY-----\n",
    )
    line = site.proxy.wait_for_output(
        r"certificate problem: .*" + str(path).replace(".", r"\."),
        timeout=RELOAD_DEADLINE,
        start=start,
    )
    assert f"certificate problem: {path}: cannot parse a certificate: " in line, line
    # The scan that logged the error has kept the previous good certificate.
    assert served_der(site.port, "broken.example") == good
    tls = tls_connect(site.port, "broken.example", client_context(site.ca))
    try:
        site.get(tls, "broken.example")
    finally:
        tls.close()
    # Fixing the file takes effect like any change.
    fixed = write_cert(str(site.certs), "broken", site.ca, "broken.example")
    wait_until_served(site.port, "broken.example", leaf_der(fixed), "fixed certificate")


def test_key_mismatch_is_logged_and_not_served(site: Site) -> None:
    start = len(site.proxy.output)
    path = write_key_mismatch(str(site.certs), "mismatch", site.ca, "mismatch.example")
    line = site.proxy.wait_for_output(
        r"certificate problem: .*" + path.replace(".", r"\."),
        timeout=RELOAD_DEADLINE,
        start=start,
    )
    assert "does not match" in line, line
    # A file that never loaded serves nothing: the name gets the default.
    assert served_der(site.port, "mismatch.example") == leaf_der(site.path("default"))


def test_certbot_renewal_is_picked_up(site: Site) -> None:
    live = site.certs / "live" / "certbot" / "fullchain.pem"
    old = leaf_der(live)
    assert served_der(site.port, "certbot.example") == old
    # certbot renew: new archive/certbot/*2.pem, live/ symlinks re-pointed.
    write_cert(str(site.certs), "certbot", site.ca, "certbot.example", layout="certbot")
    new = leaf_der(live)
    assert new != old
    took = wait_until_served(site.port, "certbot.example", new, "certbot renewal")
    assert took <= RELOAD_PROMISE, f"renewed certificate served after {took:.1f}s"
    tls = tls_connect(site.port, "certbot.example", client_context(site.ca))
    try:
        site.get(tls, "certbot.example")
    finally:
        tls.close()


def test_missing_certificate_directory_is_picked_up_when_it_appears(
    tmp_path: Path, backend: BackendServer, ca: trustme.CA, tls_layer: tuple[str, ...]
) -> None:
    certs = tmp_path / "certs"
    proxy = ProxyProcess(tmp_path, write_config(tmp_path, backend), certs, tls_layer).start()
    try:
        line = proxy.wait_for_output(r"certificate problem: " + re.escape(str(certs)) + ": ")
        assert "does not exist" in line, line
        port = proxy.ports["https"]
        with pytest.raises(ssl.SSLError):
            tls_connect(port, "late.example", client_context()).close()

        staging = tmp_path / "staging"
        path = write_cert(str(staging), "late", ca, "late.example")
        os.rename(staging, certs)
        expected = leaf_der(certs / Path(path).name)
        took = wait_until_served(port, "late.example", expected, "certificate directory created")
        assert took <= RELOAD_PROMISE, f"new certificate directory used after {took:.1f}s"
        site = Site(proxy, backend, ca, certs)
        tls = tls_connect(port, "late.example", client_context(ca))
        try:
            site.get(tls, "late.example")
        finally:
            tls.close()
    finally:
        proxy.stop()
