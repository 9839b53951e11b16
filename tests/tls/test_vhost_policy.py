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


def _no_tickets(ctx: ssl.SSLContext) -> ssl.SSLContext:
    # TLS 1.2 resumption by session id from the server's cache, not a ticket.
    ctx.options |= ssl.OP_NO_TICKET
    return ctx


RESUMPTIONS = [
    pytest.param(TLS12, False, id="tls1.2-ticket"),
    pytest.param(TLS12, True, id="tls1.2-session-id"),
    pytest.param(TLS13, False, id="tls1.3-ticket"),
]


def _resuming_client(version: ssl.TLSVersion, session_ids: bool) -> ssl.SSLContext:
    ctx = client_context(version=version)
    return _no_tickets(ctx) if session_ids else ctx


@pytest.fixture
def misscoped(monkeypatch) -> list[bool]:
    """Every answer of the servername callback's scope check: refusals there
    (rather than OpenSSL's full handshakes) show up as True."""
    answers: list[bool] = []
    check = SNIConnectionCreator._misscoped

    def spy(connection, client_ca):  # type: ignore[no-untyped-def]
        answers.append(check(connection, client_ca))
        return answers[-1]

    monkeypatch.setattr(SNIConnectionCreator, "_misscoped", staticmethod(spy))
    return answers


@pytest.mark.parametrize(("version", "session_ids"), RESUMPTIONS)
def test_a_client_of_an_intermediate_ca_resumes(
    index, clients, misscoped, version, session_ids
) -> None:
    # The usual layout: the root in client_ca, the client sends its leaf and
    # the intermediate.  The full handshake verified the chain; resuming is
    # not a second verification.
    intermediate = clients.create_child_ca()
    creator = _creator(index, {"mtls.example": TLSPolicy(client_ca=_ca_of(clients))})
    ctx = _with_cert(_resuming_client(version, session_ids), intermediate)
    first = memory_handshake(creator, "mtls.example", ctx)
    assert first.ok, first.error
    assert first.server is not None and first.session is not None
    for _ in range(2):
        resumed = memory_handshake(creator, "mtls.example", ctx, session=first.session)
        assert resumed.ok, resumed.error
        assert resumed.session_reused and resumed.version == first.version
        assert resumed.server is not None
        assert client_subject(resumed.server) == client_subject(first.server)
    assert not any(misscoped)


@pytest.mark.parametrize(("version", "session_ids"), RESUMPTIONS)
def test_a_session_from_a_name_without_client_ca_gets_a_full_handshake(
    index, clients, misscoped, version, session_ids
) -> None:
    creator = _creator(index, {"mtls.example": TLSPolicy(client_ca=_ca_of(clients))})
    # Without a certificate: the full handshake asks for one and fails.
    bare = _resuming_client(version, session_ids)
    plain = memory_handshake(creator, "shop.example", bare)
    assert plain.ok and plain.session is not None
    assert not memory_handshake(creator, "mtls.example", bare, session=plain.session).ok
    # With one from the CA: a full handshake verifies it.
    ctx = _with_cert(_resuming_client(version, session_ids), clients.create_child_ca())
    plain = memory_handshake(creator, "shop.example", ctx)
    assert plain.ok and plain.session is not None
    full = memory_handshake(creator, "mtls.example", ctx, session=plain.session)
    assert full.ok, full.error
    assert not full.session_reused
    assert full.server is not None and client_subject(full.server) is not None
    # And the other way: a session of the client_ca name on the plain name.
    back = memory_handshake(creator, "shop.example", ctx, session=full.session)
    assert back.ok and not back.session_reused
    assert back.server is not None and client_subject(back.server) is None
    # OpenSSL turned each into a full handshake: nothing was left to refuse.
    assert misscoped and not any(misscoped)


@pytest.mark.parametrize(("version", "session_ids"), RESUMPTIONS)
def test_a_session_from_another_ca_gets_a_full_handshake(
    index, clients, misscoped, version, session_ids
) -> None:
    others = trustme.CA(organization_name="Others")
    creator = _creator(
        index,
        {
            "mtls.example": TLSPolicy(client_ca=_ca_of(clients)),
            "secure.example": TLSPolicy(
                client_ca=parse_client_ca("/etc/others.pem", others.cert_pem.bytes())
            ),
        },
    )
    ctx = _with_cert(_resuming_client(version, session_ids), clients)
    first = memory_handshake(creator, "mtls.example", ctx)
    assert first.ok and first.session is not None
    # secure.example's full handshake does not verify this client.
    assert not memory_handshake(creator, "secure.example", ctx, session=first.session).ok
    assert not any(misscoped)


def test_a_reload_that_changes_the_cas_ends_resumption_not_the_client(
    index, clients, misscoped
) -> None:
    policies = {"mtls.example": TLSPolicy(client_ca=_ca_of(clients))}
    creator = _creator(index, policies)
    for version in (TLS12, TLS13):
        ctx = _with_cert(client_context(version=version), clients)
        first = memory_handshake(creator, "mtls.example", ctx)
        assert first.ok and first.session is not None
        # The same file reloaded: the same CAs, the session still resumes.
        policies["mtls.example"] = TLSPolicy(client_ca=_ca_of(clients))
        again = memory_handshake(creator, "mtls.example", ctx, session=first.session)
        assert again.ok and again.session_reused
        # Another CA added: a new set, so a full handshake (which verifies).
        both = clients.cert_pem.bytes() + trustme.CA().cert_pem.bytes()
        policies["mtls.example"] = TLSPolicy(client_ca=parse_client_ca("/etc/c.pem", both))
        full = memory_handshake(creator, "mtls.example", ctx, session=first.session)
        assert full.ok, full.error
        assert not full.session_reused
        # The new session resumes under the new set.
        resumed = memory_handshake(creator, "mtls.example", ctx, session=full.session)
        assert resumed.ok and resumed.session_reused
        policies["mtls.example"] = TLSPolicy(client_ca=_ca_of(clients))
    assert not any(misscoped)


def test_names_with_the_same_cas_share_sessions(index, clients) -> None:
    policy = TLSPolicy(client_ca=_ca_of(clients))
    creator = _creator(index, {"mtls.example": policy, "secure.example": policy})
    ctx = _with_cert(client_context(version=TLS13), clients)
    first = memory_handshake(creator, "mtls.example", ctx)
    assert first.ok and first.session is not None
    shared = memory_handshake(creator, "secure.example", ctx, session=first.session)
    assert shared.ok and shared.session_reused
    assert shared.server is not None and connection_policy(shared.server) == policy


def test_the_session_scope_is_a_digest_of_the_cas(clients) -> None:
    scope = certificates.session_scope(_ca_of(clients))
    assert len(scope) == 32  # SSL_MAX_SID_CTX_LENGTH
    assert certificates.session_scope(ClientCA("/elsewhere.pem", _ca_of(clients).certificates)) == scope
    assert certificates.session_scope(_ca_of(trustme.CA())) != scope


class _Connection:
    """A connection as the servername callback sees it."""

    def __init__(self, context: object) -> None:
        self._context = context

    def get_context(self) -> object:
        return self._context


def test_the_servername_callback_refuses_what_scoping_missed(
    index, clients, monkeypatch
) -> None:
    # When the ClientHello callback and OpenSSL read the name differently (or
    # a TLS 1.2 resumption is judged under the session's original name):
    # never a session into a client_ca name that its CAs did not verify, and
    # no new session scoped to CAs that did not verify it.
    ours = TLSPolicy(client_ca=_ca_of(clients))
    theirs = TLSPolicy(client_ca=_ca_of(trustme.CA()))
    loaded = index.select(b"mtls.example")
    assert loaded is not None
    bootstrap = SNIConnectionCreator(lambda: index)._context
    scoped = {
        None: bootstrap,
        "ours": certificates.make_policy_context(loaded, ours),
        "theirs": certificates.make_policy_context(loaded, theirs),
    }
    wanted = {None: None, "ours": ours.client_ca, "theirs": theirs.client_ca}
    for resumed in (True, False):
        monkeypatch.setattr(certificates, "_resumed", lambda connection, r=resumed: r)
        for before, context in scoped.items():
            for now, client_ca in wanted.items():
                refused = SNIConnectionCreator._misscoped(_Connection(context), client_ca)  # type: ignore[arg-type]
                if before == now:
                    expected = False
                elif resumed:
                    expected = now is not None
                else:
                    expected = before is not None
                assert refused is expected, (resumed, before, now)


def test_without_the_message_callback_no_session_resumes(index, clients, monkeypatch) -> None:
    # No way to scope sessions: none resumes, rather than one being refused.
    monkeypatch.setattr(certificates, "_set_msg_callback", None)
    creator = _creator(index, {"mtls.example": TLSPolicy(client_ca=_ca_of(clients))})
    for version, session_ids in ((TLS12, False), (TLS12, True), (TLS13, False)):
        ctx = _with_cert(_resuming_client(version, session_ids), clients.create_child_ca())
        for name in ("mtls.example", "shop.example"):
            first = memory_handshake(creator, name, ctx)
            assert first.ok, first.error
            again = memory_handshake(creator, name, ctx, session=first.session)
            assert again.ok and not again.session_reused


def test_sessions_are_scoped_only_while_a_client_ca_is_in_use(index, clients) -> None:
    in_use = [False]
    policies: dict[str, TLSPolicy] = {}
    creator = SNIConnectionCreator(
        lambda: index, policy_for=policies.get, client_ca_in_use=lambda: in_use[0]
    )
    # Without a client_ca, connections start on the context without the
    # message callback, and resume there.
    assert creator.serverConnectionForTLS(None).get_context() is creator._context
    ctx = _with_cert(client_context(version=TLS13), clients)
    first = memory_handshake(creator, "mtls.example", ctx)
    assert first.ok and first.session is not None
    again = memory_handshake(creator, "mtls.example", ctx, session=first.session)
    assert again.ok and again.session_reused
    # The first client_ca (a reload): the other context, its own sessions,
    # so one full handshake.
    policies["mtls.example"] = TLSPolicy(client_ca=_ca_of(clients))
    in_use[0] = True
    assert creator.serverConnectionForTLS(None).get_context() is creator._scoped_context
    full = memory_handshake(creator, "mtls.example", ctx, session=first.session)
    assert full.ok, full.error
    assert not full.session_reused
    resumed = memory_handshake(creator, "mtls.example", ctx, session=full.session)
    assert resumed.ok and resumed.session_reused
    # A connection accepted just before that reload, whose ClientHello comes
    # after it, starts unscoped: resuming an unscoped session into the
    # client_ca host is refused there (closed, not open).
    in_use[0] = False
    assert not memory_handshake(creator, "mtls.example", ctx, session=first.session).ok


def _client_hello(server_name: str | None) -> bytes:
    """A real ClientHello handshake message (as the message callback gets it)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    ctx = client_context()
    client = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    record = outgoing.read()
    assert record[0] == 22  # one handshake record
    return record[5 : 5 + int.from_bytes(record[3:5], "big")]


def test_the_client_hello_server_name() -> None:
    hello = _client_hello("mtls.example")
    assert certificates.client_hello_server_name(hello) == b"mtls.example"
    assert certificates.client_hello_server_name(_client_hello(None)) is None
    assert certificates.client_hello_server_name(b"\x02" + hello[1:]) is None
    # Cut anywhere: None, never an exception.
    for n in range(len(hello)):
        assert certificates.client_hello_server_name(hello[:n]) is None, n


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
