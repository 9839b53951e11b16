"""
Whether a new client connection may be accepted: the process-wide cap, the
cap per client address, a rate per client address (GCRA, with a burst) and
the networks refused outright.  Values in, decisions out; the clock is an
argument.  :mod:`edgeproxy.net.acceptgate` asks it at accept, before any TLS.

A client is its address as text (``"192.0.2.7"``, ``"2001:db8::1"``); the
caller gives the same text for the same client.
"""

from __future__ import annotations

import math
from enum import StrEnum

import attrs

from edgeproxy.core.addresses import IPNetwork, Networks
from edgeproxy.core.ratelimit import Buckets

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "MAX_RATE_ENTRIES",
    "AcceptLimits",
    "ConnectionGate",
    "Refusal",
    "default_burst",
]

#: Open client connections a process accepts by default (all https and http
#: listeners together; the admin listener is not counted).
DEFAULT_MAX_CONNECTIONS = 10_000
#: Open connections one client address may hold by default: a tenth of the
#: process's, so that no one address can take all of it (a few hundred
#: browsers behind one NAT address hold far fewer).
DEFAULT_MAX_PER_CLIENT = 1_000
#: Clients whose rate state is kept at most; past it the least recently seen
#: client's state is forgotten (it gets at most a fresh burst).
MAX_RATE_ENTRIES = 65_536


class Refusal(StrEnum):
    """Why a connection was closed at accept: the metric's ``reason`` label."""

    MAX_CONNECTIONS = "max_connections"
    PER_CLIENT = "per_client"
    RATE = "rate"
    DENY = "deny"


def default_burst(rate: float) -> int:
    """One second's worth of connections, at least 1 (HAProxy's ``src_conn_rate``
    over one second allows as many at once)."""
    return max(1, math.ceil(rate))


@attrs.frozen
class AcceptLimits:
    """The limits; 0 turns a number off."""

    #: Open connections in the process (``--max-connections``).
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    #: Open connections from one client address (``--max-connections-per-client``).
    max_per_client: int = DEFAULT_MAX_PER_CLIENT
    #: New connections per second from one client address, sustained
    #: (``--max-connection-rate-per-client RATE[:BURST]``).
    rate: float = 0.0
    #: How many may arrive at once from a client that has been quiet.
    burst: int = 1
    #: Client networks refused outright (``--deny CIDR``).
    deny: tuple[IPNetwork, ...] = ()
    #: Peers the per-client cap and rate do not apply to: the trusted
    #: forwarders (``--trusted-source``), each of which brings many clients.
    exempt: tuple[IPNetwork, ...] = ()

    @property
    def per_client(self) -> bool:
        """Whether anything depends on who the client is."""
        return bool(self.max_per_client or self.rate or self.deny)

    @property
    def active(self) -> bool:
        return bool(self.max_connections) or self.per_client


class ConnectionGate:
    """The open-connection counts and rate state of one process.

    :meth:`admit` (or :meth:`open` then :meth:`join`, when the client is
    known only later, as with the PROXY protocol) takes a place that
    :meth:`leave` and :meth:`close` give back; a refused connection holds none.
    Every refusal is counted in :attr:`refused`.
    """

    def __init__(self, limits: AcceptLimits, max_rate_entries: int = MAX_RATE_ENTRIES) -> None:
        self.limits = limits
        #: Open connections (the ones :meth:`open` or :meth:`admit` let in).
        self.open_connections = 0
        #: Open connections per client, when a per-client cap is set; a client
        #: with none has no entry.
        self.per_client: dict[str, int] = {}
        #: Refusals since start, by reason.
        self.refused: dict[Refusal, int] = {}
        # GCRA, as the routes' rate limits: each client's bucket, bounded.
        self._buckets = Buckets(max_rate_entries)
        self._deny = Networks(limits.deny)
        self._exempt = Networks(limits.exempt)

    def admit(self, client: str, now: float) -> Refusal | None:
        """A connection from ``client``: None when it may come in (and now
        holds a place), else why not."""
        refusal = self.open()
        if refusal is not None:
            return refusal
        refusal = self.join(client, now)
        if refusal is not None:
            self.close()
        return refusal

    def open(self) -> Refusal | None:
        """The process-wide cap alone, for a connection whose client is not known yet."""
        cap = self.limits.max_connections
        if cap and self.open_connections >= cap:
            return self._refuse(Refusal.MAX_CONNECTIONS)
        self.open_connections += 1
        return None

    def close(self) -> None:
        """Gives back what :meth:`open` took."""
        self.open_connections -= 1

    def join(self, client: str, now: float) -> Refusal | None:
        """The per-client rules for an opened connection: None when it may stay
        (its client then holds a place until :meth:`leave`), else why not."""
        limits = self.limits
        if self._deny and client in self._deny:
            return self._refuse(Refusal.DENY)
        if self._exempt and client in self._exempt:
            return None
        cap = limits.max_per_client
        if cap:
            held = self.per_client.get(client, 0)
            if held >= cap:
                return self._refuse(Refusal.PER_CLIENT)
        if limits.rate and not self._buckets.decide(client, now, limits.rate, limits.burst).allowed:
            return self._refuse(Refusal.RATE)
        if cap:
            self.per_client[client] = held + 1
        return None

    def leave(self, client: str) -> None:
        """Gives back what :meth:`join` took."""
        if not self.limits.max_per_client:
            return
        held = self.per_client.get(client, 0) - 1
        if held > 0:
            self.per_client[client] = held
        else:
            self.per_client.pop(client, None)

    def release(self, client: str) -> None:
        """Gives back what :meth:`admit` took."""
        self.leave(client)
        self.close()

    @property
    def rate_entries(self) -> int:
        """Clients whose rate state is kept (bounded by ``max_rate_entries``)."""
        return len(self._buckets)

    def _refuse(self, refusal: Refusal) -> Refusal:
        self.refused[refusal] = self.refused.get(refusal, 0) + 1
        return refusal
