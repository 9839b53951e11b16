"""
Endpoints given by name (edgeproxy.cluster.discovery and
ClusterRuntime.set_addresses): joining, draining, failed and empty
resolutions keeping the last set, the TTL, health-gated joins.  All on a
Clock with a fake resolver whose answers the test sets.
"""

from __future__ import annotations

import random
import socket
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.names import cache, client, dns, hosts
from twisted.names.error import DNSNameError, DNSQueryTimeoutError
from twisted.names.resolve import ResolverChain
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from edgeproxy.cluster.discovery import MIN_INTERVAL, NameWatcher, make_resolver, resolve
from edgeproxy.cluster.runtime import ClusterRuntime, EndpointRuntime
from edgeproxy.config import Cluster, ConsistentHash, Endpoint, HealthCheck, OutlierDetection

NAME = Endpoint("app.internal", 8080)


def _a(address: str, ttl: int) -> dns.RRHeader:
    return dns.RRHeader(b"app.internal", dns.A, ttl=ttl, payload=dns.Record_A(address, ttl))


def _aaaa(address: str, ttl: int) -> dns.RRHeader:
    return dns.RRHeader(
        b"app.internal", dns.AAAA, ttl=ttl, payload=dns.Record_AAAA(address, ttl)
    )


class FakeResolver:
    """Answers with ``self.v4``/``self.v6`` (lists of addresses) or fails
    with ``self.error``; ``hold`` keeps the next answers pending."""

    def __init__(self) -> None:
        self.v4: list[str] = []
        self.v6: list[str] = []
        self.ttl = 300
        self.error: Exception | None = None
        self.queries: list[str] = []
        self.hold = False
        self.held: list[Deferred[Any]] = []

    def _answer(self, records: list[dns.RRHeader]) -> Deferred[Any]:
        if self.hold:
            d: Deferred[Any] = Deferred()
            self.held.append(d)
            return d
        if self.error is not None:
            return fail(self.error)
        if not records:
            return fail(DNSNameError("no such name"))
        return succeed((records, [], []))

    def lookupAddress(self, name: str, timeout: object = None) -> Deferred[Any]:
        self.queries.append(name)
        return self._answer([_a(a, self.ttl) for a in self.v4])

    def lookupIPV6Address(self, name: str, timeout: object = None) -> Deferred[Any]:
        return self._answer([_aaaa(a, self.ttl) for a in self.v6])


def make(
    *,
    health: HealthCheck | None = None,
    every: float = 30.0,
    policy: Any = None,
    endpoints: list[str | Endpoint] | None = None,
) -> tuple[ClusterRuntime, NameWatcher, FakeResolver, Clock, list[tuple[list[str], list[str]]]]:
    clock = Clock()
    kwargs: dict[str, Any] = {"policy": policy} if policy is not None else {}
    cluster = Cluster(
        "api",
        endpoints=endpoints or [NAME],
        health_check=health,
        outlier_detection=OutlierDetection(),
        resolve_every=every,
        **kwargs,
    )
    runtime = ClusterRuntime(cluster, clock, random.Random(0))
    changes: list[tuple[list[str], list[str]]] = []

    def on_change(_: ClusterRuntime, joined: list[EndpointRuntime], left: list[EndpointRuntime]) -> None:
        changes.append(([str(rt.endpoint) for rt in joined], [str(rt.endpoint) for rt in left]))

    resolver = FakeResolver()
    watcher = NameWatcher(runtime, resolver, clock, on_change)
    return runtime, watcher, resolver, clock, changes


def addresses(runtime: ClusterRuntime) -> list[str]:
    return sorted(str(rt.endpoint) for rt in runtime.endpoints)


def picks(runtime: ClusterRuntime, n: int) -> set[str]:
    seen = set()
    for _ in range(n):
        rt = runtime.choose([], None)
        assert isinstance(rt, EndpointRuntime)
        seen.add(str(rt.endpoint))
        runtime.release(rt)
    return seen


class ResolveTests(SynchronousTestCase):
    def test_a_and_aaaa_with_the_smallest_ttl(self) -> None:
        resolver = FakeResolver()
        resolver.v4, resolver.v6 = ["10.0.0.2", "10.0.0.1"], ["2001:db8::1"]
        result = self.successResultOf(resolve(resolver, "app.internal"))
        self.assertEqual(result.addresses, ("10.0.0.1", "10.0.0.2", "2001:db8::1"))
        self.assertEqual(result.ttl, 300)
        self.assertIsNone(result.error)

    def test_no_such_name_is_empty_not_an_error(self) -> None:
        result = self.successResultOf(resolve(FakeResolver(), "app.internal"))
        self.assertEqual((result.addresses, result.error), ((), None))

    def test_both_queries_failing_is_an_error(self) -> None:
        resolver = FakeResolver()
        resolver.error = DNSQueryTimeoutError("app.internal")
        result = self.successResultOf(resolve(resolver, "app.internal"))
        self.assertEqual(result.addresses, ())
        self.assertIn("DNSQueryTimeoutError", result.error or "")


class NameWatcherTests(SynchronousTestCase):
    def test_the_name_stands_until_first_resolved(self) -> None:
        runtime, watcher, resolver, clock, changes = make()
        self.assertEqual(addresses(runtime), ["app.internal:8080"])
        self.assertEqual(runtime.names["app.internal:8080"]["state"], "pending")
        resolver.v4 = ["10.0.0.1", "10.0.0.2"]
        watcher.startService()
        self.assertEqual(addresses(runtime), ["10.0.0.1:8080", "10.0.0.2:8080"])
        self.assertEqual(changes, [(["10.0.0.1:8080", "10.0.0.2:8080"], ["app.internal:8080"])])
        self.assertEqual(picks(runtime, 4), {"10.0.0.1:8080", "10.0.0.2:8080"})
        record = runtime.status()["names"]["app.internal:8080"]
        self.assertEqual(record["state"], "resolved")
        self.assertEqual(record["addresses"], ["10.0.0.1", "10.0.0.2"])

    def test_join_and_leave_every_resolve_every(self) -> None:
        runtime, watcher, resolver, clock, changes = make(every=5.0)
        resolver.v4 = ["10.0.0.1", "10.0.0.2"]
        watcher.startService()
        kept = next(rt for rt in runtime.endpoints if str(rt.endpoint) == "10.0.0.1:8080")
        kept.requests = 7
        resolver.v4 = ["10.0.0.1", "10.0.0.3"]
        clock.advance(4.9)
        self.assertEqual(addresses(runtime), ["10.0.0.1:8080", "10.0.0.2:8080"])
        clock.advance(0.1)
        self.assertEqual(addresses(runtime), ["10.0.0.1:8080", "10.0.0.3:8080"])
        self.assertEqual(changes[-1], (["10.0.0.3:8080"], ["10.0.0.2:8080"]))
        # The address kept keeps its runtime: counters, breaker, health.
        self.assertIn(kept, runtime.endpoints)
        self.assertEqual(kept.requests, 7)
        self.assertEqual(picks(runtime, 4), {"10.0.0.1:8080", "10.0.0.3:8080"})

    def test_an_address_that_leaves_drains(self) -> None:
        runtime, watcher, resolver, clock, changes = make(every=5.0)
        drained: list[str] = []
        runtime.on_drained = lambda rt: drained.append(str(rt.endpoint))
        resolver.v4 = ["10.0.0.1", "10.0.0.2"]
        watcher.startService()
        busy = [runtime.choose([], None) for _ in range(2)]
        leaving = next(
            rt for rt in busy if isinstance(rt, EndpointRuntime) and rt.endpoint.host == "10.0.0.2"
        )
        resolver.v4 = ["10.0.0.1"]
        clock.advance(5.0)
        # No new request picks it; the one in flight finishes.
        self.assertEqual(picks(runtime, 4), {"10.0.0.1:8080"})
        self.assertTrue(leaving.draining)
        self.assertEqual(runtime.draining, [leaving])
        # The name itself, idle, went at once when its first addresses came.
        self.assertEqual(drained, ["app.internal:8080"])
        statuses = {e["endpoint"]: e for e in runtime.status()["endpoints"]}
        self.assertTrue(statuses["10.0.0.2:8080"]["draining"])
        runtime.release(leaving)
        self.assertEqual(drained, ["app.internal:8080", "10.0.0.2:8080"])
        self.assertEqual(runtime.draining, [])

    def test_failure_keeps_the_last_set_and_logs_once(self) -> None:
        runtime, watcher, resolver, clock, changes = make(every=5.0)
        logged: list[str] = []

        @implementer(ILogObserver)
        def observe(event: dict[str, Any]) -> None:
            logged.append(event.get("log_format") or "")

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        resolver.v4 = ["10.0.0.1", "10.0.0.2"]
        watcher.startService()
        resolver.error = DNSQueryTimeoutError("app.internal")
        for _ in range(3):
            clock.advance(5.0)
        self.assertEqual(addresses(runtime), ["10.0.0.1:8080", "10.0.0.2:8080"])
        record = runtime.names["app.internal:8080"]
        self.assertEqual(record["state"], "failed")
        self.assertEqual(record["addresses"], ["10.0.0.1", "10.0.0.2"])
        self.assertEqual(record["resolutions"], {"resolved": 1, "failed": 3, "empty": 0})
        self.assertEqual(sum("keeping its addresses" in f for f in logged), 1)
        resolver.error = None
        resolver.v4 = ["10.0.0.2"]
        clock.advance(5.0)
        self.assertEqual(addresses(runtime), ["10.0.0.2:8080"])
        self.assertEqual(sum("resolves again" in f for f in logged), 1)

    def test_empty_keeps_the_last_set(self) -> None:
        runtime, watcher, resolver, clock, changes = make(every=5.0)
        resolver.v4 = ["10.0.0.1"]
        watcher.startService()
        resolver.v4 = []
        clock.advance(5.0)
        self.assertEqual(addresses(runtime), ["10.0.0.1:8080"])
        self.assertEqual(runtime.names["app.internal:8080"]["state"], "empty")

    def test_failure_before_any_answer_keeps_the_name(self) -> None:
        runtime, watcher, resolver, clock, changes = make(every=5.0)
        resolver.error = DNSQueryTimeoutError("app.internal")
        watcher.startService()
        self.assertEqual(addresses(runtime), ["app.internal:8080"])
        self.assertEqual(changes, [])

    def test_a_shorter_ttl_comes_first_but_not_below_the_minimum(self) -> None:
        runtime, watcher, resolver, clock, changes = make(every=30.0)
        resolver.v4, resolver.ttl = ["10.0.0.1"], 3
        watcher.startService()
        self.assertEqual(len(resolver.queries), 1)
        clock.advance(3.0)
        self.assertEqual(len(resolver.queries), 2)
        resolver.ttl = 0
        clock.advance(3.0)
        self.assertEqual(len(resolver.queries), 3)
        clock.advance(MIN_INTERVAL)
        self.assertEqual(len(resolver.queries), 4)
        resolver.ttl = 3600
        clock.advance(MIN_INTERVAL)
        clock.advance(29.9)
        self.assertEqual(len(resolver.queries), 5)
        clock.advance(0.1)
        self.assertEqual(len(resolver.queries), 6)

    def test_joining_waits_for_a_passing_check_when_checks_are_on(self) -> None:
        runtime, watcher, resolver, clock, changes = make(
            every=5.0, health=HealthCheck("/health", rise=3)
        )
        resolver.v4 = ["10.0.0.1"]
        watcher.startService()
        # The first set takes the name's place and starts as endpoints do.
        self.assertEqual(picks(runtime, 2), {"10.0.0.1:8080"})
        resolver.v4 = ["10.0.0.1", "10.0.0.2"]
        clock.advance(5.0)
        joined = next(rt for rt in runtime.endpoints if str(rt.endpoint) == "10.0.0.2:8080")
        self.assertFalse(joined.is_up)
        self.assertEqual(picks(runtime, 4), {"10.0.0.1:8080"})
        assert joined.health is not None
        joined.health.record_pass()  # one pass is enough to join, whatever rise says
        self.assertTrue(joined.is_up)
        self.assertEqual(picks(runtime, 4), {"10.0.0.1:8080", "10.0.0.2:8080"})

    def test_consistent_hashing_keeps_most_keys_when_one_joins(self) -> None:
        runtime, watcher, resolver, clock, changes = make(
            every=5.0, policy=ConsistentHash("header:X-User", table_size=2053)
        )
        resolver.v4 = [f"10.0.0.{i}" for i in range(1, 5)]
        watcher.startService()
        keys = [f"user{i}".encode() for i in range(400)]

        def owners() -> dict[bytes, str]:
            found = {}
            for key in keys:
                rt = runtime.choose([], key)
                assert isinstance(rt, EndpointRuntime)
                found[key] = str(rt.endpoint)
                runtime.release(rt)
            return found

        before = owners()
        resolver.v4.append("10.0.0.5")
        clock.advance(5.0)
        after = owners()
        moved = [key for key in keys if before[key] != after[key]]
        # Maglev: about 1/5 of the keys move, nearly all to the new address.
        to_new = sum(after[key] == "10.0.0.5:8080" for key in moved)
        self.assertLess(len(moved), len(keys) // 3)
        self.assertGreaterEqual(to_new, len(moved) * 8 // 10)

    def test_an_address_already_listed_is_not_added_twice(self) -> None:
        runtime, watcher, resolver, clock, changes = make(endpoints=["10.0.0.1:8080", NAME])
        resolver.v4 = ["10.0.0.1", "10.0.0.2"]
        watcher.startService()
        self.assertEqual(addresses(runtime), ["10.0.0.1:8080", "10.0.0.2:8080"])

    def test_stop_cancels_the_timer_and_the_query(self) -> None:
        runtime, watcher, resolver, clock, changes = make(every=5.0)
        resolver.v4 = ["10.0.0.1"]
        watcher.startService()
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        resolver.hold = True
        clock.advance(5.0)
        watcher.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertTrue(all(d.called for d in resolver.held))


def test_ipv6_addresses_become_bracketed_endpoints() -> None:
    runtime, watcher, resolver, clock, changes = make()
    resolver.v6 = ["::1"]
    watcher.startService()
    assert addresses(runtime) == ["[::1]:8080"]
    assert socket.inet_pton(socket.AF_INET6, "::1")


def test_make_resolver_asks_only_the_given_server() -> None:
    resolver = make_resolver(("127.0.0.1", 5353), Clock())
    assert isinstance(resolver, client.Resolver)
    assert resolver.servers == [("127.0.0.1", 5353)]


def test_make_resolver_defaults_to_hosts_then_resolv_conf() -> None:
    resolver = make_resolver(None, Clock())
    assert isinstance(resolver, ResolverChain)
    kinds = [type(each) for each in resolver.resolvers]
    assert kinds == [hosts.Resolver, cache.CacheResolver, client.Resolver]
