"""
Endpoints given by name (``"app.internal:8080"``): every address the name
resolves to is an endpoint of its cluster, and the name is resolved again
every ``Cluster.resolve_every`` seconds, or sooner when the records' TTL is
shorter (never sooner than :data:`MIN_INTERVAL`).  See docs/dns.md.

A :class:`NameWatcher` per cluster runtime asks an ``IResolver``
(``twisted.names``: never blocking the reactor) for the A and AAAA records
of each name and hands a changed set to
:meth:`~edgeproxy.cluster.runtime.ClusterRuntime.set_addresses`, which
adds and drains endpoint runtimes in place: no configuration reload.  A
failed or empty resolution keeps the last good set; it is logged when the
name's state changes, not at every interval.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.names import dns
from twisted.names.error import DNSNameError
from twisted.python.failure import Failure

from edgeproxy.cluster.runtime import ClusterRuntime, EndpointRuntime
from edgeproxy.config import Endpoint

__all__ = [
    "MIN_INTERVAL",
    "QUERY_TIMEOUT",
    "NameWatcher",
    "Resolution",
    "make_resolver",
    "resolve",
]

#: Seconds: the shortest wait between two resolutions of a name, however short its TTL.
MIN_INTERVAL = 1.0
#: Seconds the resolver waits for each try of a query (twisted.names' retries).
QUERY_TIMEOUT: tuple[int, ...] = (1, 2)

#: Called with the cluster runtime, the endpoints that joined and those that left.
OnChange = Callable[[ClusterRuntime, list[EndpointRuntime], list[EndpointRuntime]], None]


@attrs.frozen
class Resolution:
    """What one resolution of a name found."""

    #: The addresses (A and AAAA), sorted; empty when the name has none.
    addresses: tuple[str, ...]
    #: The smallest TTL among the records, None without any.
    ttl: int | None
    #: Why neither query answered (the name's addresses then stay as they were).
    error: str | None = None


def make_resolver(server: tuple[str, int] | None, reactor: Any) -> Any:
    """The resolver for names: only ``server`` (``--resolver HOST:PORT``),
    or else /etc/hosts, then the servers of /etc/resolv.conf (Twisted's
    ``createResolver``, which caches answers for their TTL)."""
    from twisted.names import cache, client, hosts, resolve

    if server is not None:
        return client.Resolver(servers=[server], reactor=reactor)
    # What client.createResolver() builds on POSIX, on the reactor given.
    return resolve.ResolverChain(
        [
            hosts.Resolver(b"/etc/hosts"),
            cache.CacheResolver(reactor=reactor),
            client.Resolver(b"/etc/resolv.conf", reactor=reactor),
        ]
    )


def _records(result: tuple[list[Any], list[Any], list[Any]]) -> list[tuple[str, int]]:
    answers, _authority, _additional = result
    found: list[tuple[str, int]] = []
    for rr in answers:
        if rr.type == dns.A:
            found.append((socket.inet_ntop(socket.AF_INET, rr.payload.address), rr.ttl))
        elif rr.type == dns.AAAA:
            found.append((socket.inet_ntop(socket.AF_INET6, rr.payload.address), rr.ttl))
    return found


def resolve(resolver: Any, host: str) -> Deferred[Resolution]:
    """The A and AAAA records of ``host``, asked of ``resolver`` (an
    ``IResolver``) at once.  A name that does not exist, or has neither
    kind of record, resolves to no addresses; when both queries fail
    otherwise (a timeout, a refused query) the resolution has an error."""
    queries = [
        resolver.lookupAddress(host, timeout=QUERY_TIMEOUT),
        resolver.lookupIPV6Address(host, timeout=QUERY_TIMEOUT),
    ]

    def gathered(results: list[tuple[bool, Any]]) -> Resolution:
        found: list[tuple[str, int]] = []
        errors: list[str] = []
        for ok, value in results:
            if ok:
                found.extend(_records(value))
            elif isinstance(value, Failure) and value.check(DNSNameError):
                continue
            else:
                errors.append(_describe(value))
        addresses = tuple(sorted({address for address, _ in found}))
        ttl = min((t for _, t in found), default=None)
        failed = len(errors) == len(queries)
        return Resolution(addresses, ttl, "; ".join(errors) if failed else None)

    done: Deferred[list[tuple[bool, Any]]] = DeferredList(queries, consumeErrors=True)
    return done.addCallback(gathered)


def _describe(failure: object) -> str:
    if isinstance(failure, Failure):
        return f"{type(failure.value).__name__}: {failure.value}".rstrip(": ")
    return repr(failure)


class _Name:
    """One name's resolution loop."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.call: IDelayedCall | None = None
        self.query: Deferred[Resolution] | None = None
        #: "pending" (never resolved), "resolved", "failed" or "empty".
        self.state = "pending"
        self.addresses: tuple[str, ...] = ()
        self.error: str | None = None
        self.resolved_at: float | None = None
        self.next_at: float | None = None
        self.outcomes: dict[str, int] = {"resolved": 0, "failed": 0, "empty": 0}

    def record(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "addresses": list(self.addresses),
            "error": self.error,
            "resolved_at": self.resolved_at,
            "next_at": self.next_at,
            "resolutions": dict(self.outcomes),
        }


class NameWatcher(Service):
    """Resolves the names among ``runtime``'s endpoints now and every
    ``resolve_every`` seconds, applying each change of a name's addresses to
    the runtime; ``on_change`` hears of it (the health checker and the
    connection pool follow)."""

    log = Logger()

    def __init__(
        self,
        runtime: ClusterRuntime,
        resolver: Any,
        clock: IReactorTime,
        on_change: OnChange | None = None,
    ) -> None:
        self.runtime = runtime
        self._resolver = resolver
        self._clock = clock
        self._on_change = on_change
        self._names = [_Name(ep) for ep in runtime.cluster.endpoints if ep.is_name()]
        for name in self._names:
            runtime.names[str(name.endpoint)] = name.record()

    @property
    def names(self) -> Sequence[Endpoint]:
        return [name.endpoint for name in self._names]

    def startService(self) -> None:
        super().startService()
        for name in self._names:
            self._resolve(name)

    def stopService(self) -> None:
        super().stopService()
        for name in self._names:
            if name.call is not None and name.call.active():
                name.call.cancel()
            name.call = None
            if name.query is not None:
                query, name.query = name.query, None
                query.cancel()

    def _resolve(self, name: _Name) -> None:
        name.call = None
        try:
            query = resolve(self._resolver, name.endpoint.host)
        except Exception:
            query = Deferred()
            query.errback()
        name.query = query
        query.addCallbacks(
            lambda resolution: self._resolved(name, resolution),
            lambda failure: self._resolved(name, Resolution((), None, _describe(failure))),
        )
        query.addErrback(
            lambda failure: self.log.failure(
                "{name}: applying its resolution failed", failure=failure, name=name.endpoint
            )
        )

    def _resolved(self, name: _Name, resolution: Resolution) -> None:
        if name.query is None:
            return  # stopped meanwhile
        name.query = None
        now = self._clock.seconds()
        cluster = self.runtime.cluster
        if resolution.error is not None or not resolution.addresses:
            state = "failed" if resolution.error is not None else "empty"
            if state != name.state or resolution.error != name.error:
                self.log.warn(
                    "{cluster}: resolving {name} {how}; keeping its addresses {addresses}",
                    cluster=cluster.name,
                    name=str(name.endpoint),
                    how=f"failed ({resolution.error})" if state == "failed" else "found none",
                    addresses=list(name.addresses) or "(the name itself)",
                )
            name.state, name.error = state, resolution.error
        else:
            if name.state in ("failed", "empty"):
                self.log.info(
                    "{cluster}: {name} resolves again",
                    cluster=cluster.name,
                    name=str(name.endpoint),
                )
            name.state, name.error, name.resolved_at = "resolved", None, now
            if resolution.addresses != name.addresses:
                joined, left = self.runtime.set_addresses(name.endpoint, resolution.addresses)
                self.log.info(
                    "{cluster}: {name} resolves to {addresses} (joined: {joined}; leaving: {left})",
                    cluster=cluster.name,
                    name=str(name.endpoint),
                    addresses=list(resolution.addresses),
                    joined=[str(rt.endpoint) for rt in joined],
                    left=[str(rt.endpoint) for rt in left],
                )
                name.addresses = resolution.addresses
                if self._on_change is not None and (joined or left):
                    self._on_change(self.runtime, joined, left)
        name.outcomes[name.state] += 1
        delay = cluster.resolve_every
        if name.state == "resolved" and resolution.ttl is not None:
            delay = min(delay, max(float(resolution.ttl), MIN_INTERVAL))
        name.next_at = now + delay
        self.runtime.names[str(name.endpoint)] = name.record()
        if self.running:
            name.call = self._clock.callLater(delay, self._resolve, name)
