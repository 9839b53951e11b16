"""
The TLS profiles (``--tls-profile``) and the names a certificate context
carries for the 421 check: real handshakes in memory between Python ``ssl``
clients pinned to one version, suite or group and
:class:`~edgeproxy.tls.certificates.SNIConnectionCreator`.
"""

from __future__ import annotations

import datetime
import ssl

import pytest
import trustme
from OpenSSL import SSL
from twisted.logger import capturedLogs
from twisted.python import usage

from edgeproxy.app.tap import Options
from edgeproxy.tls import certificates
from edgeproxy.tls.certificates import (
    TLS12_CIPHERS,
    CertificateIndex,
    LoadedCertificate,
    SNIConnectionCreator,
    certificate_names,
    make_server_context,
    parse_certificate,
)
from tests.certutil import client_context, memory_handshake


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _load(
    ca: trustme.CA, key_type: trustme.KeyType, *names: str, profile: str
) -> LoadedCertificate:
    pem = ca.issue_cert(*names, key_type=key_type).private_key_and_cert_chain_pem.bytes()
    return parse_certificate(f"/certs/{names[0]}.pem", pem, tls_profile=profile)


def _creator(ca: trustme.CA, profile: str) -> SNIConnectionCreator:
    certs = [
        _load(ca, trustme.KeyType.ECDSA, "ecdsa.test", profile=profile),
        _load(ca, trustme.KeyType.RSA, "rsa.test", "*.rsa.test", profile=profile),
    ]
    index = CertificateIndex.build(certs, datetime.datetime.now(datetime.UTC))
    return SNIConnectionCreator(lambda: index, profile)


@pytest.fixture(scope="module")
def intermediate(ca: trustme.CA) -> SNIConnectionCreator:
    return _creator(ca, "intermediate")


@pytest.fixture(scope="module")
def modern(ca: trustme.CA) -> SNIConnectionCreator:
    return _creator(ca, "modern")


def _client(
    ca: trustme.CA,
    version: ssl.TLSVersion,
    cipher: str | None = None,
    group: str | None = None,
) -> ssl.SSLContext:
    ctx = client_context(ca, version=version)
    if cipher is not None:
        ctx.set_ciphers(cipher)
    if group is not None:
        ctx.set_ecdh_curve(group)
    return ctx


TLS12 = ssl.TLSVersion.TLSv1_2
TLS13 = ssl.TLSVersion.TLSv1_3


@pytest.mark.parametrize("suite", TLS12_CIPHERS)
def test_intermediate_takes_each_of_its_tls12_suites(
    ca: trustme.CA, intermediate: SNIConnectionCreator, suite: str
) -> None:
    sni = "ecdsa.test" if "ECDSA" in suite else "rsa.test"
    result = memory_handshake(intermediate, sni, _client(ca, TLS12, suite))
    assert result.ok, result.error
    assert result.version == "TLSv1.2"


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        # The server's order ...
        ("ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256"),
        # ... unless the client puts ChaCha20 first (no AES instructions).
        ("ECDHE-RSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-CHACHA20-POLY1305"),
        ("ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-CHACHA20-POLY1305", "ECDHE-RSA-AES256-GCM-SHA384"),
    ],
)
def test_server_order_but_chacha_for_clients_that_prefer_it(
    ca: trustme.CA, intermediate: SNIConnectionCreator, offered: str, chosen: str
) -> None:
    ctx = _client(ca, TLS12, offered)
    result = memory_handshake(intermediate, "rsa.test", ctx)
    assert result.ok, result.error
    assert result.cipher == chosen


@pytest.mark.parametrize(
    ("sni", "suite"),
    [
        ("rsa.test", "AES128-GCM-SHA256"),
        ("rsa.test", "AES256-SHA"),
        ("rsa.test", "ECDHE-RSA-AES128-SHA"),
        ("rsa.test", "ECDHE-RSA-AES128-SHA256"),
        ("rsa.test", "DHE-RSA-AES256-GCM-SHA384"),
        ("ecdsa.test", "ECDHE-ECDSA-AES256-SHA"),
        ("ecdsa.test", "ECDHE-ECDSA-AES128-SHA256"),
    ],
)
def test_intermediate_refuses_rsa_kx_cbc_and_dhe(
    ca: trustme.CA, intermediate: SNIConnectionCreator, sni: str, suite: str
) -> None:
    result = memory_handshake(intermediate, sni, _client(ca, TLS12, suite))
    assert not result.ok
    assert "HANDSHAKE_FAILURE" in (result.error or "")


@pytest.mark.parametrize(("version", "sni"), [(TLS12, "rsa.test"), (TLS13, "ecdsa.test")])
@pytest.mark.parametrize(
    ("group", "ok"),
    [
        ("X25519", True),
        ("prime256v1", True),
        ("secp384r1", True),
        ("X448", False),
        ("secp521r1", False),
    ],
)
def test_groups(
    ca: trustme.CA,
    intermediate: SNIConnectionCreator,
    version: ssl.TLSVersion,
    sni: str,
    group: str,
    ok: bool,
) -> None:
    result = memory_handshake(intermediate, sni, _client(ca, version, group=group))
    assert result.ok is ok, result.error


def test_modern_is_tls13_only(ca: trustme.CA, modern: SNIConnectionCreator) -> None:
    refused = memory_handshake(modern, "rsa.test", _client(ca, TLS12))
    assert not refused.ok
    assert "PROTOCOL_VERSION" in (refused.error or "")
    accepted = memory_handshake(modern, "ecdsa.test", _client(ca, TLS13))
    assert (accepted.ok, accepted.version) == (True, "TLSv1.3")


def test_groups_fall_back_to_p256_when_the_list_cannot_be_set(
    ca: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(certificates, "_set_groups_list", lambda handle, groups: 0)
    certificates.groups_settable.cache_clear()
    try:
        with capturedLogs() as events:
            creator = _creator(ca, "intermediate")
        assert not certificates.groups_settable()
        assert any("offering P-256 only" in e.get("log_format", "") for e in events)
        # Still serving, on P-256 alone (a group of the profile), not failing.
        p256 = memory_handshake(creator, "ecdsa.test", _client(ca, TLS12, group="prime256v1"))
        assert p256.ok, p256.error
        x25519 = memory_handshake(creator, "ecdsa.test", _client(ca, TLS12, group="X25519"))
        assert not x25519.ok
    finally:
        certificates.groups_settable.cache_clear()


def test_groups_settable_here() -> None:
    assert certificates.groups_settable()
    # A pyOpenSSL whose context has no OpenSSL handle: not settable, no AttributeError.
    assert certificates._set_groups_on(object()) is False  # type: ignore[arg-type]


def test_unknown_profile_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown TLS profile 'old'"):
        make_server_context(tls_profile="old")


def test_option_reaches_settings() -> None:
    options = Options()
    options.parseOptions(["--tls-profile", "modern"])
    assert options["settings"].tls_profile == "modern"
    default = Options()
    default.parseOptions([])
    assert default["settings"].tls_profile == "intermediate"
    with pytest.raises(usage.UsageError, match="must be intermediate or modern"):
        Options().parseOptions(["--tls-profile", "old"])


# --- the names a connection's certificate covers ------------------------------------


def test_certificate_context_carries_its_names(ca: trustme.CA) -> None:
    loaded = _load(ca, trustme.KeyType.RSA, "rsa.test", "*.rsa.test", profile="intermediate")
    connection = SSL.Connection(loaded.context, None)
    assert certificate_names(connection) == frozenset({"rsa.test", "*.rsa.test"})


def test_bootstrap_context_has_no_names(intermediate: SNIConnectionCreator) -> None:
    assert certificate_names(intermediate.serverConnectionForTLS(None)) is None
