"""
TLS to upstream endpoints: one :class:`ClientTLS` per cluster TLS setting
(``Cluster.upstream_tls``), a connection creator per endpoint, each keeping
the endpoint's last TLS session to resume on its next connection.

Verification is Twisted's ``optionsForClientTLS``: the chain against the
trust root (the CA file's certificates, or the platform's store) and the
name against the leaf with service-identity, a DNS name as a DNS-ID (sent in
SNI), an IP literal as an IP-ID (no SNI: RFC 6066 forbids IP literals in it).
Its verify callback fails the handshake on a bad name, so no byte of the
request is ever sent to a backend that does not verify.

Sessions: Twisted's client creators make a fresh ``SSL.Connection`` per
connection and keep no session.  :class:`_ResumingCreator` wraps one and
sets the endpoint's saved session on each new connection
(``SSL_set_session``); the upstream client hands back a connection's session
(:meth:`ClientTLS.remember`) once it is resumable (after the handshake for
TLS 1.2; for TLS 1.3 once a response was read, by when the server's tickets
have been).
"""

from __future__ import annotations

import re
from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    PrivateCertificate,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from zope.interface import implementer

from edgeproxy.core.addresses import is_ip_literal

__all__ = ["ClientTLS"]

_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.*?-----END CERTIFICATE-----", re.DOTALL
)


@implementer(IOpenSSLClientConnectionCreator)
class _ResumingCreator:
    """One endpoint's connection creator: Twisted's, plus its last session."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.session: SSL.Session | None = None

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection: SSL.Connection = self.inner.clientConnectionForTLS(tlsProtocol)
        session = self.session
        if session is not None:
            try:
                connection.set_session(session)
            except SSL.Error:
                # (A session OpenSSL will not take: a full handshake, as without one.)
                self.session = None
        return connection


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedCreator:
    """``verify=False``: any certificate, SNI still sent for a DNS name."""

    def __init__(self, options: CertificateOptions, name: str) -> None:
        self._options = options
        self._sni = None if is_ip_literal(name) else name.encode("idna")

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection: SSL.Connection = self._options.clientConnectionForTLS(tlsProtocol)
        if self._sni is not None:
            connection.set_tlsext_host_name(self._sni)
        return connection


class ClientTLS:
    """The TLS of one cluster setting: what its connections verify and present.

    ``ca_pem``: the CA certificates to verify against (None: the platform's
    trust store); ``client_pem``: the private key, certificate and chain to
    present (None: none); ``server_name``: the name to verify and send
    instead of each endpoint's host; ``verify=False``: accept any certificate.
    Made from a configuration's files when it loads (no I/O here).
    """

    def __init__(
        self,
        *,
        ca_pem: bytes | None = None,
        client_pem: bytes | None = None,
        server_name: str | None = None,
        verify: bool = True,
    ) -> None:
        self.server_name = server_name
        self.verify = verify
        self._trust: Any = (
            trustRootFromCertificates(
                [Certificate.loadPEM(m.group(0)) for m in _CERTIFICATE.finditer(ca_pem)]
            )
            if ca_pem is not None
            else platformTrust()
        )
        self._client: PrivateCertificate | None = None
        self._chain: list[Any] = []
        if client_pem is not None:
            self._client = PrivateCertificate.loadPEM(client_pem)
            blocks = [m.group(0) for m in _CERTIFICATE.finditer(client_pem)]
            self._chain = [Certificate.loadPEM(block).original for block in blocks[1:]]
        self._creators: dict[tuple[str, int], _ResumingCreator] = {}
        #: The names of addresses found by resolving one (DNS-discovered endpoints).
        self._names: dict[tuple[str, int], str] = {}

    def name_endpoint(self, host: str, port: int, name: str) -> None:
        """The endpoint at address ``host`` is ``name``'s: verify it against
        the name (and send it in SNI), unless ``server_name`` says otherwise."""
        if self._names.get((host, port)) != name:
            self._names[host, port] = name
            self._creators.pop((host, port), None)

    def name_for(self, host: str, port: int | None = None) -> str:
        """The name an endpoint's certificate is verified against."""
        if self.server_name is not None:
            return self.server_name
        return self._names.get((host, port), host) if port is not None else host

    def creator_for(self, host: str, port: int) -> IOpenSSLClientConnectionCreator:
        """The endpoint's connection creator (one per endpoint, kept: its
        context and its saved session)."""
        return self._resuming(host, port)

    def _resuming(self, host: str, port: int) -> _ResumingCreator:
        creator = self._creators.get((host, port))
        if creator is None:
            creator = self._creators[host, port] = _ResumingCreator(
                self._inner_creator(self.name_for(host, port))
            )
        return creator

    def _inner_creator(self, name: str) -> Any:
        extra: dict[str, Any] = {"enableSessionTickets": True}
        if self._chain:
            extra["extraCertChain"] = self._chain
        if not self.verify:
            if self._client is not None:
                extra["privateKey"] = self._client.privateKey.original
                extra["certificate"] = self._client.original
            return _UnverifiedCreator(CertificateOptions(verify=False, **extra), name)
        return optionsForClientTLS(
            name,
            trustRoot=self._trust,
            clientCertificate=self._client,
            extraCertificateOptions=extra,
        )

    def checking_creator_for(self, host: str, port: int) -> IOpenSSLClientConnectionCreator:
        """The endpoint's creator for health checks: the same verification,
        but never a resumed session (a resumed handshake skips the
        certificate: a check must see whether a new one verifies)."""
        inner: IOpenSSLClientConnectionCreator = self._resuming(host, port).inner
        return inner

    def remember(self, host: str, port: int, connection: SSL.Connection) -> None:
        """Keep ``connection``'s session for the endpoint's next connection."""
        creator = self._creators.get((host, port))
        if creator is None:
            return
        session = connection.get_session()
        if session is not None:
            creator.session = session

    def forget(self, host: str, port: int) -> None:
        """Drop the endpoint's saved session (its handshake failed)."""
        creator = self._creators.get((host, port))
        if creator is not None:
            creator.session = None
