"""The per virtual host TLS policy in the SNI callback, over real in-memory
handshakes: ``min_tls_version`` refuses a lower version for its name only,
``client_ca`` requires a client certificate verified against it, and what the
channel reads of the connection afterwards (policy, subject)."""

from __future__ import annotations

import ssl

import pytest
import trustme
from cryptography import x509

from edgeproxy.config.tlspolicy import ClientCA, TLSPolicy, parse_client_ca
from edgeproxy.tls import certificates
from edgeproxy.tls.certificates import (
    CertificateIndex,
    SNIConnectionCreator,
    certificate_names,
    client_subject,
    connection_policy,
    parse_certificate,
    version_meets,
)
from tests.certutil import client_context, memory_handshake, utc

NOW = utc(2030, 6, 1)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def clients() -> trustme.CA:
    """The CA client certificates are verified against."""
    return trustme.CA(organization_name="Clients")


@pytest.fixture(scope="module")
def index(ca: trustme.CA) -> CertificateIndex:
    # One certificate for every name: only the policy tells the names apart.
    leaf = ca.issue_cert("shop.example", "secure.example", "mtls.example")
    pem = b"".join(b.bytes() for b in leaf.cert_chain_pems) + leaf.private_key_pem.bytes()
    return CertificateIndex.build([parse_certificate("/certs/shop.pem", pem)], NOW)


def _ca_of(ca: trustme.CA) -> ClientCA:
    return parse_client_ca("/etc/clients.pem", ca.cert_pem.bytes())


def _creator(index: CertificateIndex, policies: dict[str, TLSPolicy]) -> SNIConnectionCreator:
    return SNIConnectionCreator(lambda: index, policy_for=policies.get)


def _with_cert(ctx: ssl.SSLContext, issuer: trustme.CA, cn: str = "alice") -> ssl.SSLContext:
    issuer.issue_cert(f"{cn}@example", common_name=cn, organization_name="Example").configure_cert(
        ctx
    )
    return ctx


TLS12 = ssl.TLSVersion.TLSv1_2
TLS13 = ssl.TLSVersion.TLSv1_3


def test_min_version_refuses_a_lower_client_for_that_name_only(index) -> None:
    creator = _creator(index, {"secure.example": TLSPolicy(min_version="1.3")})
    refused = memory_handshake(creator, "secure.example", client_context(version=TLS12))
    assert not refused.ok
    assert "PROTOCOL_VERSION" in (refused.error or "").upper().replace(" ", "_")
    assert creator.refused_version == 1
    # The same client, another name on the same listener.
    other = memory_handshake(creator, "shop.example", client_context(version=TLS12))
    assert other.ok and other.version == "TLSv1.2"
    # A TLS 1.3 client to the 1.3-only name.
    modern = memory_handshake(creator, "secure.example", client_context(version=TLS13))
    assert modern.ok and modern.version == "TLSv1.3"
    assert modern.server is not None
    assert connection_policy(modern.server) == TLSPolicy(min_version="1.3")
    assert certificate_names(modern.server) == frozenset(
        {"shop.example", "secure.example", "mtls.example"}
    )
    assert creator.refused_version == 1


def test_min_version_12_takes_12(index) -> None:
    creator = _creator(index, {"secure.example": TLSPolicy(min_version="1.2")})
    assert memory_handshake(creator, "secure.example", client_context(version=TLS12)).ok


def test_client_ca_requires_a_verified_certificate(index, ca, clients) -> None:
    policy = TLSPolicy(client_ca=_ca_of(clients))
    creator = _creator(index, {"mtls.example": policy})
    for version in (TLS12, TLS13):
        # No certificate.
        assert not memory_handshake(creator, "mtls.example", client_context(version=version)).ok
        # One from another CA.
        stranger = _with_cert(client_context(version=version), trustme.CA())
        assert not memory_handshake(creator, "mtls.example", stranger).ok
        # The right one.
        good = memory_handshake(
            creator, "mtls.example", _with_cert(client_context(version=version), clients)
        )
        assert good.ok, good.error
        assert good.server is not None
        assert connection_policy(good.server) == policy
        subject = client_subject(good.server)
        assert subject is not None
        assert subject.startswith(b"CN=alice,OU=") and subject.endswith(b",O=Example")
    # Names without the policy ask for no certificate.
    plain = memory_handshake(creator, "shop.example", client_context())
    assert plain.ok and plain.server is not None
    assert connection_policy(plain.server) is None
    assert client_subject(plain.server) is None


def test_policy_contexts_are_built_once(index, clients) -> None:
    creator = _creator(index, {"mtls.example": TLSPolicy(client_ca=_ca_of(clients))})
    first = memory_handshake(creator, "mtls.example", _with_cert(client_context(), clients))
    second = memory_handshake(creator, "mtls.example", _with_cert(client_context(), clients))
    assert first.server is not None and second.server is not None
    assert first.server.get_context() is second.server.get_context()


def test_policy_follows_the_running_configuration(index, clients) -> None:
    policies: dict[str, TLSPolicy] = {}
    creator = _creator(index, policies)
    assert memory_handshake(creator, "mtls.example", client_context()).ok
    policies["mtls.example"] = TLSPolicy(client_ca=_ca_of(clients))  # a reload
    assert not memory_handshake(creator, "mtls.example", client_context()).ok
    del policies["mtls.example"]
    assert memory_handshake(creator, "mtls.example", client_context()).ok


def test_an_empty_ca_verifies_no_client(index, clients) -> None:
    # What a client_ca that failed to load becomes: closed, not open.
    creator = _creator(index, {"mtls.example": TLSPolicy(client_ca=ClientCA("/gone.pem", ()))})
    assert not memory_handshake(creator, "mtls.example", _with_cert(client_context(), clients)).ok


def test_a_session_resumed_on_the_name_keeps_its_verified_subject(index, clients) -> None:
    creator = _creator(index, {"mtls.example": TLSPolicy(client_ca=_ca_of(clients))})
    for version in (TLS12, TLS13):
        ctx = _with_cert(client_context(version=version), clients)
        first = memory_handshake(creator, "mtls.example", ctx)
        assert first.ok and first.session is not None
        resumed = memory_handshake(creator, "mtls.example", ctx, session=first.session)
        assert resumed.ok and resumed.session_reused
        assert resumed.server is not None
        assert client_subject(resumed.server) == client_subject(first.server)  # type: ignore[arg-type]


class _Resuming:
    """A connection resuming a session, as the servername callback sees it."""

    def __init__(self, name: bytes, peer: x509.Certificate | None) -> None:
        self._name = name
        self._peer = peer
        self.switched_to: object = None

    def get_servername(self) -> bytes:
        return self._name

    def get_protocol_version_name(self) -> str:
        return "TLSv1.2"

    def get_peer_certificate(self, *, as_cryptography: bool) -> x509.Certificate | None:
        return self._peer

    def set_context(self, context: object) -> None:
        self.switched_to = context

    def set_verify(self, mode: int) -> None:
        pass


def test_a_resumed_session_must_hold_a_certificate_from_the_ca(index, clients, monkeypatch) -> None:
    # OpenSSL looks a session up before the servername callback, in a scope
    # every name shares: a client that resumes a session from another name
    # (OpenSSL's own clients send that session's name again; others need not)
    # gets in only with a client certificate from this name's CA.
    monkeypatch.setattr(certificates, "_resumed", lambda connection: True)
    creator = _creator(index, {"mtls.example": TLSPolicy(client_ca=_ca_of(clients))})
    ours = x509.load_pem_x509_certificate(
        clients.issue_cert("a@example").cert_chain_pems[0].bytes()
    )
    theirs = x509.load_pem_x509_certificate(
        trustme.CA().issue_cert("a@example").cert_chain_pems[0].bytes()
    )
    for peer in (None, theirs):
        connection = _Resuming(b"mtls.example", peer)
        assert creator._on_server_name(connection) == 40  # type: ignore[arg-type]
        assert connection.switched_to is None
    connection = _Resuming(b"mtls.example", ours)
    assert creator._on_server_name(connection) is None  # type: ignore[arg-type]
    assert connection.switched_to is not None


def test_a_broken_policy_lookup_refuses_the_handshake(index) -> None:
    def broken(host: str) -> TLSPolicy | None:
        raise RuntimeError("boom")

    creator = SNIConnectionCreator(lambda: index, policy_for=broken)
    assert not memory_handshake(creator, "shop.example", client_context()).ok


@pytest.mark.parametrize(
    ("version", "minimum", "meets"),
    [
        ("TLSv1.3", "1.3", True),
        ("TLSv1.2", "1.3", False),
        ("TLSv1.2", "1.2", True),
        ("TLSv1.1", "1.2", False),
        (None, "1.2", False),
        ("Unknown", "1.2", False),
    ],
)
def test_version_meets(version, minimum, meets) -> None:
    assert version_meets(version, minimum) is meets


def test_subject_controls_are_escaped(clients) -> None:
    leaf = clients.issue_cert("x@example", common_name="a\nb")
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())

    class _Connection:
        def get_peer_certificate(self, *, as_cryptography: bool) -> x509.Certificate:
            return cert

    subject = client_subject(_Connection())  # type: ignore[arg-type]
    assert subject is not None and subject.startswith(b"CN=a\\0Ab,")


def test_without_the_direct_callback_a_refusal_still_fails_the_handshake(
    index, clients, monkeypatch
) -> None:
    # pyOpenSSL's own servername callback: a refusal leaves the connection on
    # the certificate-less bootstrap context instead of sending an alert.
    monkeypatch.setattr(certificates, "_set_servername", None)
    creator = _creator(
        index,
        {
            "secure.example": TLSPolicy(min_version="1.3"),
            "mtls.example": TLSPolicy(client_ca=_ca_of(clients)),
        },
    )
    refused = memory_handshake(creator, "secure.example", client_context(version=TLS12))
    assert not refused.ok and "HANDSHAKE_FAILURE" in (refused.error or "").upper()
    assert memory_handshake(creator, "shop.example", client_context(version=TLS12)).ok
    assert not memory_handshake(creator, "mtls.example", client_context()).ok
    good = memory_handshake(creator, "mtls.example", _with_cert(client_context(), clients))
    assert good.ok and good.server is not None and client_subject(good.server) is not None
