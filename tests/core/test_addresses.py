"""Who the client is behind trusted forwarders (nginx's ``real_ip_recursive on``)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeproxy.core.addresses import (
    Networks,
    forwarded_client,
    forwarded_elements,
    parse_address,
)

TRUSTED = Networks([ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32")])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.1", "192.0.2.1"),
        (" 192.0.2.1 ", "192.0.2.1"),
        ("192.0.2.1:4711", "192.0.2.1"),
        ('"192.0.2.1:4711"', "192.0.2.1"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ('"[2001:db8::1]:4711"', "2001:db8::1"),
        ("2001:0db8:0000::0001", "2001:db8::1"),
    ],
)
def test_addresses_as_forwarders_write_them(text: str, expected: str) -> None:
    assert str(parse_address(text)) == expected


@pytest.mark.parametrize("text", ["", "unknown", "_hidden", "[2001:db8::1", "1.2.3", "a:b:c"])
def test_what_is_not_an_address(text: str) -> None:
    assert parse_address(text) is None


def test_networks_judge_text_and_remember_it() -> None:
    assert "10.1.2.3" in TRUSTED
    assert "::ffff:10.1.2.3" in TRUSTED  # a dual-stack socket's IPv4 client
    assert "2001:db8::7" in TRUSTED
    assert "192.0.2.1" not in TRUSTED
    assert "-" not in TRUSTED  # no address (a UNIX socket)
    assert b"10.1.2.3" not in TRUSTED
    assert not Networks([])


def test_networks_memo_is_bounded() -> None:
    networks = Networks([ipaddress.ip_network("10.0.0.0/8")])
    for n in range(Networks._MEMO * 3):
        assert f"192.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}" not in networks
    assert len(networks._verdicts) <= Networks._MEMO


def test_chain_from_x_forwarded_for_lines_in_order() -> None:
    assert forwarded_elements([b"192.0.2.1, 10.0.0.1", b"10.0.0.2"], [b"for=198.51.100.1"]) == [
        "192.0.2.1",
        "10.0.0.1",
        "10.0.0.2",
    ]


def test_chain_from_forwarded_without_x_forwarded_for() -> None:
    assert forwarded_elements(
        [], [b'for=192.0.2.60;proto=http;by=203.0.113.43, for="[2001:db8:cafe::17]:4711"', b"For=10.0.0.1"]
    ) == ["192.0.2.60", '"[2001:db8:cafe::17]:4711"', "10.0.0.1"]


@pytest.mark.parametrize(
    ("chain", "client"),
    [
        ([], "10.9.9.9"),  # nothing forwarded: the peer
        (["192.0.2.1"], "192.0.2.1"),
        (["192.0.2.1", "10.0.0.1"], "192.0.2.1"),  # a trusted hop skipped
        (["198.51.100.7", "192.0.2.1", "10.0.0.1"], "192.0.2.1"),  # forged left part ignored
        (["10.0.0.5", "10.0.0.1"], "10.0.0.5"),  # all trusted: the left-most
        (["192.0.2.1", "garbage", "10.0.0.1"], "10.0.0.1"),  # the walk ends at garbage
        (["192.0.2.1", "unknown"], "10.9.9.9"),
        (["192.0.2.1:5555", "[2001:db8::1]:80"], "192.0.2.1"),
    ],
)
def test_client_is_right_most_untrusted(chain: list[str], client: str) -> None:
    assert forwarded_client(chain, "10.9.9.9", TRUSTED) == client


_address = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.sampled_from(["10.0.0.1", "10.200.3.4", "2001:db8::5", "unknown", "", "1.2.3"]),
)


@given(st.lists(_address, max_size=8))
def test_client_is_never_a_forger_behind_an_untrusted_hop(chain: list[str]) -> None:
    """Whatever the chain, the client is the peer or an address from it; and
    every address to its right is trusted (nothing untrusted is skipped)."""
    client = forwarded_client(chain, "10.9.9.9", TRUSTED)
    parsed = [parse_address(e) for e in chain]
    assert client == "10.9.9.9" or client in {str(p) for p in parsed if p is not None}
    if client != "10.9.9.9":
        index = max(i for i, p in enumerate(parsed) if p is not None and str(p) == client)
        assert all(p is not None and TRUSTED.holds(p) for p in parsed[index + 1 :])
