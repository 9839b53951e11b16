"""
A DNS server for end-to-end tests: ``python -m tests.e2e.dnsserver ANSWERS``
serves on 127.0.0.1 (an ephemeral UDP port, printed as ``dns on PORT``) the
A records in the JSON file ANSWERS (``{"app.internal": ["127.0.0.2"]}``),
read again for every query so a test changes the answers by rewriting it.
Every answer has TTL 0; AAAA queries get no records; other names do not exist.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.names import common, dns, error, server


class FileResolver(common.ResolverBase):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self._path = path

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> Deferred[Any]:
        answers = json.loads(self._path.read_text())
        addresses = answers.get(name.decode("ascii").lower().rstrip("."))
        if addresses is None:
            return fail(error.DomainError(name))
        records = [
            dns.RRHeader(name, dns.A, cls, 0, dns.Record_A(address, 0), auth=True)
            for address in addresses
            if type in (dns.A, dns.ALL_RECORDS)
        ]
        return succeed((records, [], []))


def main() -> None:
    resolver = FileResolver(Path(sys.argv[1]))
    factory = server.DNSServerFactory(authorities=[resolver])
    port = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")  # type: ignore[attr-defined]
    print(f"dns on {port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
