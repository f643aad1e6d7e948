"""Validators shared by the agent's wire contract, dataplane, firewall and DHCP models.

One definition of what a MAC address, an interface name and a resource id look like, so the
contract, nft rendering and dnsmasq host files cannot disagree about what is safe to pass on.
Patterns are applied with fullmatch (a trailing newline, which `$` lets through, is refused). Each
raises ValueError (pydantic turns that into a 422 on the agent's API; callers that are not
pydantic translate it to their own stable code).
"""
from __future__ import annotations

import re

#: Lower-case colon-separated MAC, as Kumo writes them everywhere.
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
#: Linux interface names: at most 15 bytes; a safe subset (no '/', spaces or quotes).
IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
ZERO_MAC = "00:00:00:00:00:00"
#: Kumo resource ids: a lower-case prefix, a dash, 8 to 17 hex digits (vpc-..., subnet-..., i-...).
RESOURCE_ID_RE = re.compile(r"^[a-z]{1,8}-[0-9a-f]{8,17}$")
#: MAC prefixes Kumo keeps for its own router and NAT gateway ports; guests never get them.
RESERVED_MAC_PREFIXES = ("02:a0:", "02:a1:")


def mac(value: object) -> str:
    """A MAC address, lower-cased; ValueError otherwise."""
    if not isinstance(value, str) or not MAC_RE.fullmatch(value.lower()):
        raise ValueError(f"bad MAC {value!r}")
    return value.lower()


def unicast_mac(value: object) -> str:
    """A unicast, non-zero MAC, lower-cased."""
    m = mac(value)
    if int(m[:2], 16) & 1 or m == ZERO_MAC:
        raise ValueError(f"MAC {value!r} is not a unicast address")
    return m


def guest_mac(value: object) -> str:
    """A MAC a guest port may have: unicast, non-zero, outside Kumo's reserved ranges."""
    m = unicast_mac(value)
    if m.startswith(RESERVED_MAC_PREFIXES):
        raise ValueError(f"MAC {value!r} is in Kumo's router/NAT gateway range")
    return m


def ifname(value: object) -> str:
    if not isinstance(value, str) or not IFNAME_RE.fullmatch(value) or value in (".", ".."):
        raise ValueError(f"bad interface name {value!r}")
    return value


def resource_id(value: object) -> str:
    """A Kumo resource id (RESOURCE_ID_RE)."""
    if not isinstance(value, str) or not RESOURCE_ID_RE.fullmatch(value):
        raise ValueError(f"bad resource id {value!r}")
    return value
