"""
Which fast paths this process runs, chosen once at start-up, and the one log
line that says so.

A fast path is one of edgeproxy's reaches past a public API, for speed: the
direct OpenSSL calls and the TLS layer of :mod:`edgeproxy.tls.server`,
:mod:`edgeproxy.net.writethrough` and :mod:`edgeproxy.net.fastpoll`.  Each checks what
it relies on when it is switched on and, if anything is missing, stays off
with a warning: the stock path is taken and start-up goes on.
``--no-fast-paths`` (:attr:`Settings.fast_paths` False) takes the stock path
for all of them: Twisted's ``TLSMemoryBIOProtocol`` on the https listeners,
Twisted's own ``write`` and event dispatch.

The heap settings (:mod:`edgeproxy.net.heap`) are not a fast path: they use only
public interfaces (``gc``, glibc's ``mallopt``) and change how much memory is
kept, not what any code does, so they stay on either way.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.endpoints import wrapServerTLS
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IStreamServerEndpoint
from twisted.logger import Logger

from edgeproxy.net import fastpoll, writethrough
from edgeproxy.tls import server as tlsserver

__all__ = ["TLS_OPENSSL_DIRECT", "TLS_PYOPENSSL", "TLS_TWISTED", "FastPaths"]

log = Logger(namespace="edgeproxy.fastpaths")

#: edgeproxy's TLS layer, calling OpenSSL directly on its hot path.
TLS_OPENSSL_DIRECT = "openssl-direct"
#: edgeproxy's TLS layer on pyOpenSSL's public calls (a symbol was missing).
TLS_PYOPENSSL = "pyopenssl"
#: Twisted's own TLS layer (``--no-fast-paths``).
TLS_TWISTED = "twisted"


class FastPaths:
    """The fast paths of one process: TLS chosen when built (the https
    listeners need it), the rest installed by :meth:`install`."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        #: The first symbol of the direct OpenSSL path found missing, if any.
        self.missing: str | None = None
        if enabled:
            self.missing = tlsserver.use_direct_openssl()
            self.tls = TLS_OPENSSL_DIRECT if self.missing is None else TLS_PYOPENSSL
        else:
            self.tls = TLS_TWISTED
        self.writethrough = False
        self.fastpoll = False

    def tls_endpoint(
        self, creator: IOpenSSLServerConnectionCreator, wrapped: IStreamServerEndpoint
    ) -> IStreamServerEndpoint:
        """``wrapped`` with TLS (certificates chosen by ``creator``) on top."""
        if self.tls == TLS_TWISTED:
            endpoint: IStreamServerEndpoint = wrapServerTLS(creator, wrapped)
            return endpoint
        return tlsserver.TLSServerEndpoint(creator, wrapped)

    def install(self, reactor: Any) -> None:
        """Write-through and the lean event dispatch (each falls back by itself,
        with a warning), then the start-up line."""
        if self.enabled:
            self.writethrough = writethrough.install()
            self.fastpoll = fastpoll.install(reactor)
        reasons = []
        if not self.enabled:
            reasons.append("--no-fast-paths")
        if self.missing is not None:
            reasons.append(f"direct OpenSSL calls off: {self.missing} missing")
        log.info(
            "fast paths: tls={tls} writethrough={writethrough} fastpoll={fastpoll}{why}",
            tls=self.tls,
            writethrough="on" if self.writethrough else "off",
            fastpoll="on" if self.fastpoll else "off",
            why=f" ({'; '.join(reasons)})" if reasons else "",
            reasons=reasons,
        )
