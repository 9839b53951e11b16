"""The accept-time decisions: the process cap, the per-client cap, the GCRA
rate with its burst, ``deny``, and bounded rate state."""

from __future__ import annotations

import ipaddress

import pytest

from edgeproxy.core.connlimits import (
    DEFAULT_MAX_CONNECTIONS,
    AcceptLimits,
    ConnectionGate,
    Refusal,
    default_burst,
)


def test_defaults_cap_the_process_and_a_tenth_of_it_per_client() -> None:
    limits = AcceptLimits()
    assert limits.max_connections == DEFAULT_MAX_CONNECTIONS == 10_000
    assert (limits.max_per_client, limits.rate, limits.deny) == (1_000, 0.0, ())
    assert limits.active and limits.per_client
    assert not AcceptLimits(max_connections=0, max_per_client=0).active


def test_trusted_forwarders_are_exempt_from_the_per_client_rules_not_from_deny() -> None:
    forwarder = ipaddress.ip_network("10.0.0.0/8")
    limits = AcceptLimits(
        max_per_client=1, rate=1.0, burst=1, exempt=(forwarder,), deny=(ipaddress.ip_network("10.9.0.0/16"),)
    )
    gate = ConnectionGate(limits)
    for _ in range(5):
        assert gate.admit("10.0.0.1", 0.0) is None
    assert gate.per_client == {}
    assert gate.admit("10.9.0.1", 0.0) is Refusal.DENY
    assert gate.admit("192.0.2.1", 0.0) is None
    assert gate.admit("192.0.2.1", 0.0) is Refusal.PER_CLIENT
    for _ in range(5):
        gate.release("10.0.0.1")
    assert gate.per_client == {"192.0.2.1": 1}


def test_the_process_cap_counts_every_client_and_frees_on_release() -> None:
    gate = ConnectionGate(AcceptLimits(max_connections=2))
    assert gate.admit("192.0.2.1", 0.0) is None
    assert gate.admit("192.0.2.2", 0.0) is None
    assert gate.admit("192.0.2.3", 0.0) is Refusal.MAX_CONNECTIONS
    assert gate.open_connections == 2
    gate.release("192.0.2.1")
    assert gate.admit("192.0.2.3", 0.0) is None
    assert gate.refused == {Refusal.MAX_CONNECTIONS: 1}


def test_zero_is_no_limit() -> None:
    gate = ConnectionGate(AcceptLimits(max_connections=0, max_per_client=0))
    for _ in range(50_000):
        assert gate.admit("192.0.2.1", 0.0) is None
    assert gate.per_client == {}


def test_the_per_client_cap_is_per_address() -> None:
    gate = ConnectionGate(AcceptLimits(max_per_client=2))
    assert gate.admit("192.0.2.1", 0.0) is None
    assert gate.admit("192.0.2.1", 0.0) is None
    assert gate.admit("192.0.2.1", 0.0) is Refusal.PER_CLIENT
    assert gate.admit("192.0.2.2", 0.0) is None
    assert gate.per_client == {"192.0.2.1": 2, "192.0.2.2": 1}
    # A refusal holds nothing, not even a place under the process cap.
    assert gate.open_connections == 3
    gate.release("192.0.2.1")
    assert gate.admit("192.0.2.1", 0.0) is None
    for _ in range(2):
        gate.release("192.0.2.1")
    gate.release("192.0.2.2")
    assert gate.per_client == {}
    assert gate.open_connections == 0


def test_a_client_refused_by_the_process_cap_holds_no_client_place() -> None:
    gate = ConnectionGate(AcceptLimits(max_connections=1, max_per_client=5))
    assert gate.admit("192.0.2.1", 0.0) is None
    assert gate.admit("192.0.2.2", 0.0) is Refusal.MAX_CONNECTIONS
    assert gate.per_client == {"192.0.2.1": 1}


def test_the_rate_allows_a_burst_then_one_per_interval() -> None:
    gate = ConnectionGate(AcceptLimits(rate=2.0, burst=3))
    now = 100.0
    assert [gate.admit("a", now) for _ in range(4)] == [None, None, None, Refusal.RATE]
    # Another client has its own bucket.
    assert gate.admit("b", now) is None
    # Half a second later one more is allowed, and not two.
    assert gate.admit("a", now + 0.5) is None
    assert gate.admit("a", now + 0.5) is Refusal.RATE
    # Refused attempts do not add to the debt: after a rest, a full burst again.
    assert [gate.admit("a", now + 3.0) for _ in range(4)] == [None, None, None, Refusal.RATE]


def test_a_burst_of_one_spaces_connections_evenly() -> None:
    gate = ConnectionGate(AcceptLimits(rate=10.0, burst=1))
    assert gate.admit("a", 0.0) is None
    assert gate.admit("a", 0.05) is Refusal.RATE
    assert gate.admit("a", 0.1) is None


def test_default_burst_is_one_seconds_worth() -> None:
    assert default_burst(20.0) == 20
    assert default_burst(0.5) == 1
    assert default_burst(2.5) == 3


def test_rate_state_expires_and_stays_bounded() -> None:
    gate = ConnectionGate(AcceptLimits(rate=1.0, burst=1), max_rate_entries=100)
    for i in range(1_000):
        assert gate.admit(f"10.0.{i // 256}.{i % 256}", 0.0) is None
    assert gate.rate_entries == 100
    # Rested clients are dropped as new ones arrive.
    for i in range(10):
        gate.admit("192.0.2.1", 10.0 + 2 * i)
        gate.release("192.0.2.1")
    assert gate.rate_entries < 100


def test_a_forgotten_client_gets_at_most_a_fresh_burst() -> None:
    gate = ConnectionGate(AcceptLimits(rate=0.001, burst=2), max_rate_entries=2)
    assert gate.admit("a", 0.0) is None
    assert gate.admit("a", 0.0) is None
    assert gate.admit("a", 0.0) is Refusal.RATE
    assert gate.admit("b", 0.0) is None
    assert gate.admit("c", 0.0) is None  # "a" (least recently seen) is forgotten
    assert gate.rate_entries == 2
    assert gate.admit("a", 0.0) is None


def test_deny_matches_networks_v4_v6_and_mapped() -> None:
    deny = (ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::/32"))
    gate = ConnectionGate(AcceptLimits(deny=deny))
    assert gate.admit("192.0.2.77", 0.0) is Refusal.DENY
    assert gate.admit("::ffff:192.0.2.77", 0.0) is Refusal.DENY
    assert gate.admit("2001:db8:0:0:0:0:0:7", 0.0) is Refusal.DENY
    assert gate.admit("198.51.100.1", 0.0) is None
    assert gate.admit("not-an-address", 0.0) is None
    assert gate.refused == {Refusal.DENY: 3}
    assert gate.open_connections == 2


def test_deny_comes_before_the_counts_and_the_rate() -> None:
    gate = ConnectionGate(
        AcceptLimits(
            max_per_client=1, rate=1.0, burst=1, deny=(ipaddress.ip_network("10.0.0.0/8"),)
        )
    )
    assert gate.admit("10.1.2.3", 0.0) is Refusal.DENY
    assert gate.rate_entries == 0
    assert gate.per_client == {}


def test_a_client_over_its_cap_spends_no_rate() -> None:
    gate = ConnectionGate(AcceptLimits(max_per_client=1, rate=1.0, burst=2))
    assert gate.admit("a", 0.0) is None
    assert gate.admit("a", 0.0) is Refusal.PER_CLIENT
    gate.release("a")
    assert gate.admit("a", 0.0) is None  # the second of the burst


def test_open_then_join_for_a_client_known_later() -> None:
    gate = ConnectionGate(AcceptLimits(max_connections=2, max_per_client=1))
    assert gate.open() is None
    assert gate.join("a", 0.0) is None
    assert gate.open() is None
    assert gate.join("a", 0.0) is Refusal.PER_CLIENT
    gate.close()  # the caller gives the refused one's process place back
    assert gate.open_connections == 1
    gate.leave("a")
    gate.close()
    assert (gate.open_connections, gate.per_client) == (0, {})


@pytest.mark.parametrize("reason", list(Refusal))
def test_refusal_tokens_are_the_metric_labels(reason: Refusal) -> None:
    assert reason.value in {"max_connections", "per_client", "rate", "deny"}
