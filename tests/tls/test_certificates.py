"""Tests for edgeproxy.tls.certificates: parsing, the context lookup, and real in-memory TLS
handshakes (the pure index has its own tests, tests/core/test_certindex.py)."""

from __future__ import annotations

import datetime
import ssl

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import connectedServerAndClient

from edgeproxy.tls.certificates import (
    CertificateFileError,
    CertificateIndex,
    LoadedCertificate,
    SNIConnectionCreator,
    load_certificate,
    parse_certificate,
)
from tests.certutil import (
    client_context,
    make_ca,
    memory_handshake,
    utc,
    write_cert,
    write_key_mismatch,
    write_raw,
)

NOW = utc(2030, 6, 1)
NOT_BEFORE = utc(2030, 1, 1)
NOT_AFTER = utc(2031, 1, 1)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return make_ca()


# --- loading ------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["pem", "crtkey", "certbot"])
def test_load_each_layout(tmp_path, ca, layout) -> None:
    main = write_cert(str(tmp_path), "shop", ca, "shop.example", layout=layout)
    key = None if layout == "pem" else main.replace(".crt", ".key").replace(
        "fullchain.pem", "privkey.pem"
    )
    loaded = load_certificate(main, key, is_default=False)
    assert loaded.source == main
    assert loaded.names == ("shop.example",)
    assert not loaded.is_default
    assert loaded.not_before.tzinfo is not None
    assert loaded.not_before < loaded.not_after
    assert isinstance(loaded.context, SSL.Context)
    assert len(loaded.fingerprint) == 64


def test_pem_any_order_and_chain(tmp_path, ca) -> None:
    intermediate = ca.create_child_ca()
    leaf = intermediate.issue_cert("shop.example")
    chain = [b.bytes() for b in leaf.cert_chain_pems]  # leaf, intermediate
    key = leaf.private_key_pem.bytes()
    # Intermediate first, key in the middle, leaf last.
    path = write_raw(str(tmp_path / "shop.pem"), chain[1] + key + chain[0])
    loaded = load_certificate(path, None, is_default=False)
    leaf_cert = x509.load_pem_x509_certificate(chain[0])
    assert loaded.fingerprint == leaf_cert.fingerprint(hashes.SHA256()).hex()
    # The chain is served: a client trusting only the root verifies it.
    creator = SNIConnectionCreator(lambda: CertificateIndex.build([loaded], NOW))
    result = memory_handshake(creator, "shop.example", client_context(ca))
    assert result.ok, result.error


def test_names_from_san_with_wildcard_and_ip(tmp_path, ca) -> None:
    path = write_cert(
        str(tmp_path), "anything", ca,
        "Shop.Example", "*.Shop.Example", "127.0.0.1", "::1", "2001:DB8:0:0::1",
    )
    loaded = load_certificate(path, None, is_default=False)
    assert loaded.names == (
        "shop.example", "*.shop.example", "127.0.0.1", "::1", "2001:db8::1",
    )


def _self_signed(san: list[x509.GeneralName] | None) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cn.example")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(utc(2020, 1, 1))
        .not_valid_after(utc(2040, 1, 1))
    )
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ) + cert.public_bytes(serialization.Encoding.PEM)


def test_no_san_is_an_error_except_for_default() -> None:
    data = _self_signed(None)
    with pytest.raises(CertificateFileError, match="subjectAltName"):
        parse_certificate("/certs/cn.pem", data)
    loaded = parse_certificate("/certs/default.pem", data, is_default=True)
    assert loaded.names == ()
    assert loaded.is_default


def test_partial_wildcards_are_not_served() -> None:
    data = _self_signed([x509.DNSName("f*.example"), x509.DNSName("ok.example")])
    assert parse_certificate("/c/x.pem", data).names == ("ok.example",)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"hello, not a certificate\n", "no PEM certificate"),
        (
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "cannot parse a certificate",
        ),
    ],
)
def test_broken_file_names_its_path(tmp_path, content, message) -> None:
    path = write_raw(str(tmp_path / "broken.pem"), content)
    with pytest.raises(CertificateFileError) as info:
        load_certificate(path, None, is_default=False)
    assert info.value.path == path
    assert message in info.value.message
    assert str(info.value) == f"{path}: {info.value.message}"


def test_missing_key(tmp_path, ca) -> None:
    leaf = ca.issue_cert("shop.example")
    path = write_raw(str(tmp_path / "shop.pem"), leaf.cert_chain_pems[0].bytes())
    with pytest.raises(CertificateFileError, match="no PEM private key"):
        load_certificate(path, None, is_default=False)


def test_encrypted_key(tmp_path, ca) -> None:
    leaf = ca.issue_cert("shop.example")
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    path = write_raw(str(tmp_path / "shop.pem"), leaf.cert_chain_pems[0].bytes() + encrypted)
    with pytest.raises(CertificateFileError, match="encrypted"):
        load_certificate(path, None, is_default=False)


@pytest.mark.parametrize("layout", ["pem", "crtkey"])
def test_key_mismatch(tmp_path, ca, layout) -> None:
    path = write_key_mismatch(str(tmp_path), "shop", ca, "shop.example", layout=layout)
    key = None if layout == "pem" else path.replace(".crt", ".key")
    with pytest.raises(CertificateFileError, match="does not match") as info:
        load_certificate(path, key, is_default=False)
    assert path in str(info.value)


def test_unreadable_file(tmp_path) -> None:
    with pytest.raises(CertificateFileError, match="cannot read") as info:
        load_certificate(str(tmp_path / "nope.pem"), None, is_default=False)
    assert info.value.path == str(tmp_path / "nope.pem")


# --- the index over loaded certificates (contexts are placeholders) --------------
# Which certificate wins a name: tests/core/test_certindex.py.


def fake(
    source: str,
    *names: str,
    not_before: datetime.datetime = NOT_BEFORE,
    not_after: datetime.datetime = NOT_AFTER,
    is_default: bool = False,
) -> LoadedCertificate:
    return LoadedCertificate(
        source=source,
        names=names,
        not_before=not_before,
        not_after=not_after,
        fingerprint=source,
        is_default=is_default,
        context=SSL.Context(SSL.TLS_METHOD),
    )


def test_valid_from_not_before_until_just_before_not_after() -> None:
    cert = fake("shop.pem", "shop.example")
    assert not cert.is_valid_at(NOT_BEFORE - datetime.timedelta(microseconds=1))
    assert cert.is_valid_at(NOT_BEFORE)
    assert cert.is_valid_at(NOT_AFTER - datetime.timedelta(microseconds=1))
    assert not cert.is_valid_at(NOT_AFTER)


def test_lookup_gives_the_selected_certificates_context() -> None:
    wild = fake("wild.pem", "*.shop.example")
    exact = fake("exact.pem", "api.shop.example")
    default = fake("default.pem", is_default=True)
    index = CertificateIndex.build([wild, exact, default], NOW)
    assert isinstance(index, CertificateIndex)
    assert index.lookup(b"api.shop.example") is exact.context
    assert index.lookup(b"www.shop.example") is wild.context
    assert index.lookup(b"a.b.shop.example") is default.context
    assert index.lookup(None) is default.context


def test_no_default_lookup_none() -> None:
    index = CertificateIndex.build([fake("shop.pem", "shop.example")], NOW)
    assert index.lookup(None) is None
    assert index.lookup(b"other.example") is None
    assert CertificateIndex.empty().lookup(b"shop.example") is None


# --- real TLS handshakes, in memory --------------------------------------------


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, ca) -> dict[str, LoadedCertificate]:
    d = str(tmp_path_factory.mktemp("certs"))
    result = {}
    for stem, names in {
        "shop": ("shop.example", "*.shop.example"),
        "api": ("api.shop.example",),
        "default": ("fallback.example",),
    }.items():
        path = write_cert(d, stem, ca, *names)
        result[stem] = load_certificate(path, None, is_default=stem == "default")
    return result


def _creator(*certs: LoadedCertificate) -> SNIConnectionCreator:
    index = CertificateIndex.build(certs, datetime.datetime.now(datetime.UTC))
    return SNIConnectionCreator(lambda: index)


def test_handshake_selects_by_sni(ca, loaded) -> None:
    creator = _creator(*loaded.values())
    ctx = client_context(ca)
    for name, stem in [
        ("shop.example", "shop"),
        ("www.shop.example", "shop"),
        ("api.shop.example", "api"),
        ("fallback.example", "default"),
    ]:
        result = memory_handshake(creator, name, ctx)
        assert result.ok, (name, result.error)
        assert result.fingerprint == loaded[stem].fingerprint, name


def test_handshake_default_for_no_sni_and_unknown(loaded) -> None:
    creator = _creator(*loaded.values())
    ctx = client_context()  # no verification: look at what is served
    for name in (None, "unknown.example", "127.0.0.1"):
        result = memory_handshake(creator, name, ctx)
        assert result.ok, (name, result.error)
        assert result.fingerprint == loaded["default"].fingerprint


def test_handshake_refused_without_default(loaded) -> None:
    creator = _creator(loaded["shop"], loaded["api"])
    ctx = client_context()
    with capturedLogs() as events:
        for name in ("unknown.example", None, "other.example"):
            result = memory_handshake(creator, name, ctx)
            assert not result.ok, name
    assert creator.refused == 3
    levels = [e["log_level"] for e in events]
    assert levels == [LogLevel.warn, LogLevel.debug, LogLevel.debug]
    assert events[0]["server_name"] == b"unknown.example"
    # A known name still works.
    assert memory_handshake(creator, "shop.example", ctx).ok


def test_callback_never_raises_into_openssl(loaded) -> None:
    def broken() -> CertificateIndex:
        raise RuntimeError("boom")

    creator = SNIConnectionCreator(broken)
    with capturedLogs() as events:
        result = memory_handshake(creator, "shop.example", client_context())
    assert not result.ok
    assert [e["log_failure"].type for e in events if "log_failure" in e] == [RuntimeError]


def test_index_swap_takes_effect_on_next_handshake(loaded) -> None:
    current = [CertificateIndex.build([loaded["shop"]], NOW)]
    creator = SNIConnectionCreator(lambda: current[0])
    ctx = client_context()
    assert memory_handshake(creator, "api.shop.example", ctx).fingerprint == (
        loaded["shop"].fingerprint
    )
    current[0] = CertificateIndex.build([loaded["shop"], loaded["api"]], NOW)
    assert memory_handshake(creator, "api.shop.example", ctx).fingerprint == (
        loaded["api"].fingerprint
    )


def test_alpn_prefers_h2(loaded) -> None:
    creator = _creator(loaded["shop"])
    result = memory_handshake(creator, "shop.example", client_context(alpn=("http/1.1", "h2")))
    assert result.ok and result.alpn == "h2"
    result = memory_handshake(creator, "shop.example", client_context(alpn=("http/1.1",)))
    assert result.ok and result.alpn == "http/1.1"
    # A client offering neither gets no ALPN protocol, not a failed handshake.
    result = memory_handshake(creator, "shop.example", client_context(alpn=("spdy/3",)))
    assert result.ok and result.alpn is None


def test_alpn_http11_only_without_http2(tmp_path, ca) -> None:
    """``--no-http2``: the bootstrap and every certificate's context offer
    http/1.1 alone (OpenSSL asks the certificate's after the SNI switch)."""
    path = write_cert(str(tmp_path), "shop", ca, "shop.example")
    with open(path, "rb") as f:
        data = f.read()
    shop = parse_certificate(path, data, http2=False)
    index = CertificateIndex.build([shop], datetime.datetime.now(datetime.UTC))
    creator = SNIConnectionCreator(lambda: index, http2=False)
    result = memory_handshake(creator, "shop.example", client_context(alpn=("h2", "http/1.1")))
    assert result.ok and result.alpn == "http/1.1"
    # A client that offers only h2 gets no ALPN protocol, not a failed handshake.
    result = memory_handshake(creator, "shop.example", client_context(alpn=("h2",)))
    assert result.ok and result.alpn is None


def test_tls13_preferred(loaded) -> None:
    result = memory_handshake(_creator(loaded["shop"]), "shop.example", client_context())
    assert result.version == "TLSv1.3"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_old_tls_refused(loaded, version) -> None:
    creator = _creator(loaded["shop"])
    result = memory_handshake(creator, "shop.example", client_context(version=version))
    assert not result.ok
    # The server refuses the version (the client could offer it: SECLEVEL=0).
    assert result.error is not None and "VERSION" in result.error.upper(), result.error


@pytest.mark.parametrize(
    ("version", "name", "tickets"),
    [
        (ssl.TLSVersion.TLSv1_2, "TLSv1.2", True),
        (ssl.TLSVersion.TLSv1_2, "TLSv1.2", False),  # session-ID cache, no tickets
        (ssl.TLSVersion.TLSv1_3, "TLSv1.3", True),
    ],
)
def test_session_resumption(ca, loaded, version, name, tickets) -> None:
    creator = _creator(*loaded.values())
    ctx = client_context(ca, version=version)
    if not tickets:
        ctx.options |= ssl.OP_NO_TICKET
    first = memory_handshake(creator, "shop.example", ctx)
    assert first.ok, first.error
    assert first.version == name
    assert not first.session_reused
    second = memory_handshake(creator, "shop.example", ctx, session=first.session)
    assert second.ok, second.error
    assert second.session_reused
    assert second.version == name
    # Resumption also survives an index swap that keeps the certificate.
    swapped = [CertificateIndex.build([loaded["shop"]], NOW)]
    creator._index_getter = lambda: swapped[0]
    third = memory_handshake(creator, "shop.example", ctx, session=second.session)
    assert third.ok and third.session_reused


def test_through_twisted_tls_stack(ca, loaded) -> None:
    """The creator works under TLSMemoryBIOFactory (what wrapServerTLS uses)."""
    creator = _creator(*loaded.values())

    class Server(protocol.Protocol):
        def connectionMade(self) -> None:
            self.transport.write(b"hello")

    class Client(protocol.Protocol):
        data = b""
        lost = None

        def dataReceived(self, data: bytes) -> None:
            self.data += data

        def connectionLost(self, reason) -> None:
            self.lost = reason

    client_proto = Client()
    clock = Clock()  # TLSMemoryBIOProtocol aggregates small writes with callLater(0)
    server_factory = TLSMemoryBIOFactory(
        creator, False, protocol.Factory.forProtocol(Server), clock=clock
    )
    client_options = optionsForClientTLS(
        "api.shop.example",
        trustRoot=Certificate.loadPEM(ca.cert_pem.bytes()),
        acceptableProtocols=[b"h2", b"http/1.1"],
    )
    client_factory = TLSMemoryBIOFactory(
        client_options, True, protocol.Factory.forProtocol(lambda: client_proto), clock=clock
    )
    client_tls, _server_tls, pump = connectedServerAndClient(
        lambda: server_factory.buildProtocol(None),
        lambda: client_factory.buildProtocol(None),
        clock=clock,
    )
    pump.flush()
    assert client_proto.lost is None, client_proto.lost
    assert client_proto.data == b"hello"
    assert client_tls.negotiatedProtocol == b"h2"
    peer = client_tls.getHandle().get_peer_certificate(as_cryptography=True)
    assert peer.fingerprint(hashes.SHA256()).hex() == loaded["api"].fingerprint


def test_through_twisted_tls_stack_refused(ca, loaded) -> None:
    creator = _creator(loaded["shop"])
    clock = Clock()
    server_factory = TLSMemoryBIOFactory(
        creator, False, protocol.Factory.forProtocol(protocol.Protocol), clock=clock
    )
    lost = []

    class Client(protocol.Protocol):
        def connectionLost(self, reason) -> None:
            lost.append(reason)

    client_options = optionsForClientTLS(
        "unknown.example", trustRoot=Certificate.loadPEM(ca.cert_pem.bytes())
    )
    client_factory = TLSMemoryBIOFactory(
        client_options, True, protocol.Factory.forProtocol(Client), clock=clock
    )
    with capturedLogs():
        _client_tls, _server_tls, pump = connectedServerAndClient(
            lambda: server_factory.buildProtocol(None),
            lambda: client_factory.buildProtocol(None),
            clock=clock,
        )
        pump.flush()
    assert len(lost) == 1
    assert lost[0].check(SSL.Error)
