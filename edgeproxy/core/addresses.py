"""
Client addresses: whether one is in a set of networks, and who the client
is behind trusted forwarders (``--trusted-source``).

The rule is nginx's ``real_ip_recursive on``: walking ``X-Forwarded-For``
(else the ``for=`` of ``Forwarded``) from the right, each address a trusted
forwarder appended is skipped; the first one not in a trusted network is the
client.  When every address is trusted, the left-most is.  An element that is
not an address (``unknown``, an obfuscated ``_name``, garbage) ends the walk:
the client is the last address walked, the one nearest to us that was vouched
for.  Pure: no I/O, no Twisted.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

__all__ = ["IPNetwork", "Networks", "forwarded_client", "forwarded_elements", "is_ip_literal"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_ip_literal(host: str) -> bool:
    """``host`` is an IPv4 or IPv6 address, not a name (no SNI is sent for
    one, and it is checked as an address, not a DNS name)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_address(text: str) -> IPAddress | None:
    """An address as a forwarder writes it: bare, ``[v6]``, with ``:port``
    (IPv4 or bracketed IPv6) or in quotes; None when it is not one."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class Networks:
    """A fixed set of networks with a (bounded) memo of verdicts per address
    text: a connection's or a client's address is judged once, not per request."""

    _MEMO = 4096

    def __init__(self, networks: Iterable[IPNetwork]) -> None:
        self.networks: tuple[IPNetwork, ...] = tuple(networks)
        self._verdicts: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, str):
            return False
        verdict = self._verdicts.get(address)
        if verdict is None:
            verdict = self.holds(parse_address(address))
            if len(self._verdicts) >= self._MEMO:
                self._verdicts.clear()
            self._verdicts[address] = verdict
        return verdict

    def holds(self, ip: IPAddress | None) -> bool:
        """Whether a parsed address is in one of the networks (never for None)."""
        if ip is None:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # a dual-stack socket's view of an IPv4 client
        return any(ip in network for network in self.networks)

    def __repr__(self) -> str:
        return f"Networks({[str(n) for n in self.networks]})"


def forwarded_elements(x_forwarded_for: Sequence[bytes], forwarded: Sequence[bytes]) -> list[str]:
    """The forwarding chain, left (first hop) to right (last): the elements of
    every ``X-Forwarded-For`` line in order, or, without any, the ``for=``
    parameters of ``Forwarded`` (RFC 7239)."""
    if x_forwarded_for:
        return [
            element.strip()
            for line in x_forwarded_for
            for element in line.decode("latin-1").split(",")
            if element.strip()
        ]
    chain = []
    for line in forwarded:
        for element in line.decode("latin-1").split(","):
            for pair in element.split(";"):
                name, sep, value = pair.partition("=")
                if sep and name.strip().lower() == "for":
                    chain.append(value.strip())
    return chain


def forwarded_client(chain: Sequence[str], peer: str, trusted: Networks) -> str:
    """The client address for a request from ``peer`` (which is trusted) with
    the forwarding ``chain`` (:func:`forwarded_elements`), as text in canonical
    form."""
    client = peer
    for element in reversed(chain):
        ip = parse_address(element)
        if ip is None:
            break
        client = str(ip)
        if not trusted.holds(ip):
            break
    return client
