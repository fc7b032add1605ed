"""Client addresses as rate-limit keys (pure: no I/O).

One IPv6 client usually holds a whole /64 (SLAAC and privacy addresses give a host as
many addresses as it wants inside its /64), so a limit per IPv6 address is no limit: a
limit per client address groups IPv6 addresses by /64. An IPv4 address is its own key,
and an IPv4-mapped IPv6 address (``::ffff:a.b.c.d``, how a dual-stack socket reports an
IPv4 client) is the IPv4 address it maps.
"""

from __future__ import annotations

import ipaddress


def address_key(ip: str) -> str:
    """The rate-limit key of a client address: IPv4 as is (normalised), IPv4-mapped
    IPv6 as the IPv4 address, other IPv6 as its /64 network (``2001:db8:1:2::/64``).
    Anything that is not an IP address (``unknown``, a Unix socket) is its own key."""
    text = ip.strip()
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return text
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(addr) >> 64 << 64, 64)))
    return str(addr)
