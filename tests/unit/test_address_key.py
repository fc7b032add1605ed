"""address_key: IPv4 as is, IPv4-mapped IPv6 as the IPv4, other IPv6 by /64; the guest
token's ``addr`` claim round-trips and is keyed."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.errors import Unauthorized
from domain.identity import TokenIssuer
from policy.addresses import address_key

ipv4 = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
ipv6 = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1)).filter(lambda a: a.ipv4_mapped is None)
low64 = st.integers(0, 2**64 - 1)
KEY, OTHER_KEY = "k" * 32, "o" * 32


@given(ipv4)
def test_ipv4_is_its_own_key(addr: ipaddress.IPv4Address) -> None:
    assert address_key(str(addr)) == str(addr)


@given(ipv4)
def test_ipv4_mapped_ipv6_is_the_ipv4_key(addr: ipaddress.IPv4Address) -> None:
    mapped = ipaddress.IPv6Address((0xFFFF << 32) | int(addr))
    assert address_key(str(mapped)) == str(addr)  # compressed: ::ffff:a.b.c.d
    assert address_key(mapped.exploded) == str(addr)  # 0000:...:ffff:xxxx:xxxx


@given(ipv6, low64)
def test_ipv6_addresses_in_one_64_share_a_key(addr: ipaddress.IPv6Address, host: int) -> None:
    neighbour = ipaddress.IPv6Address((int(addr) >> 64 << 64) | host)
    if neighbour.ipv4_mapped is not None:
        return  # ::ffff:0:0/96 lies inside ::/64; those are IPv4 clients
    key = address_key(str(addr))
    assert address_key(str(neighbour)) == key == address_key(addr.exploded)
    assert ipaddress.IPv6Network(key).prefixlen == 64
    assert addr in ipaddress.IPv6Network(key)


@given(ipv6, ipv6)
def test_ipv6_addresses_in_different_64s_have_different_keys(a: ipaddress.IPv6Address, b: ipaddress.IPv6Address) -> None:
    if int(a) >> 64 != int(b) >> 64:
        assert address_key(str(a)) != address_key(str(b))


@given(ipv4, ipv6)
def test_an_ipv4_key_never_equals_an_ipv6_key(a: ipaddress.IPv4Address, b: ipaddress.IPv6Address) -> None:
    assert address_key(str(a)) != address_key(str(b))


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        (" 192.0.2.7 ", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:DB8:1:2::1", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::1", "::/64"),
        ("unknown", "unknown"),
    ],
)
def test_examples(raw: str, key: str) -> None:
    assert address_key(raw) == key


def test_a_guest_token_carries_its_address_tag() -> None:
    issuer = TokenIssuer(KEY)
    tag = issuer.address_tag("2001:db8:1:2::/64")
    assert "2001" not in tag and tag == issuer.address_tag("2001:db8:1:2::/64")
    assert tag != issuer.address_tag("2001:db8:1:3::/64")
    assert tag != TokenIssuer(OTHER_KEY).address_tag("2001:db8:1:2::/64")  # keyed
    assert issuer.verify(issuer.issue("g_1", "G", address=tag)).address == tag
    assert issuer.verify(issuer.issue("u1", "U")).address is None


def test_a_malformed_address_claim_is_refused() -> None:
    import jwt

    for bad in (5, "", ["x"]):
        token = jwt.encode({"sub": "g_1", "exp": 2**40, "addr": bad}, KEY, algorithm="HS256")
        with pytest.raises(Unauthorized):
            TokenIssuer(KEY).verify(token)
