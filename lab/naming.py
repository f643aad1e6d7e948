"""Pure naming and addressing rules of the lab: namespace, interface and host names, fabric addresses.

Everything here is a pure function so the rules can be unit-tested and so `down` can recompute the
names of what `up` made even when the state file is missing or stale.
"""

from __future__ import annotations

import ipaddress
import re

from lab.errors import LabError

# Linux limits interface names (and, by habit, namespace names) to 15 characters (IFNAMSIZ - 1).
IFNAMSIZ_MAX = 15
MAX_HOSTS = 99  # host ids h1..h99 keep every derived name within 15 characters with an 8-char prefix.
# Prefixes are used verbatim in namespace names: keep them short and shell/filename safe.
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
_HOST_ID_RE = re.compile(r"^h([1-9][0-9]?)$")

# The underlay: RFC 6598 shared space, so it never collides with a VPC's CIDR (the default VPC is
# 172.31.0.0/16, custom ones are usually 10/8 or 192.168/16).
FABRIC_NET = ipaddress.ip_network("100.64.0.0/24")
INET_FABRIC_ADDR = ipaddress.ip_address("100.64.0.1")
# VXLAN adds 50 bytes: a jumbo underlay lets guests keep a 1500-byte MTU (as real clouds do).
FABRIC_MTU = 9000
# The deployment's public pool in the lab (TEST-NET-3): on-link on the fabric for the internet
# namespace; each host answers ARP for the public addresses it carries.
PUBLIC_POOL = ipaddress.ip_network("203.0.113.0/24")
# An address standing for "a server on the internet" (TEST-NET-2, RFC 5737): it only exists in the
# lab's internet namespace.
INET_SERVER_ADDR = ipaddress.ip_address("198.51.100.1")
FABRIC_BRIDGE = "br0"
# The storage node (issue 10): its own namespace on the fabric, at an underlay address no other lab
# part uses (the internet is .1, hosts are .11-.109), serving volumes over NBD to every host.
STORAGE_ADDR = ipaddress.ip_interface(f"100.64.0.250/{FABRIC_NET.prefixlen}")
STORAGE_NBD_PORT = 10809  # NBD's registered port
STORAGE_FABRIC_PORT = "p-sn"  # its uplink's end on the fabric bridge
STORAGE_MAC = "02:4b:4c:00:00:fa"
UPLINK = "uplink0"  # the uplink inside each host namespace and inside the internet namespace
# The controller (issue 14): its own namespace on the fabric, so agents and controller talk as in
# production, mutual TLS over TCP across the fabric. Its API for users stays on the root
# namespace's loopback (a socket bound there and handed to it: lab/core.py).
CTL_ADDR = ipaddress.ip_interface(f"100.64.0.2/{FABRIC_NET.prefixlen}")
CTL_AGENT_PORT = 8789  # the controller's agent-facing listener (KUMO_AGENT_LISTEN)
CTL_FABRIC_PORT = "p-ctl"
CTL_MAC = "02:4b:4c:00:00:fc"
AGENT_PORT = 8788  # each agent's API on its host's fabric address (agent/settings.py's default)


def validate_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix):
        raise LabError("InvalidLabPrefix", f"lab prefix must match {_PREFIX_RE.pattern}: {prefix!r}")
    return prefix


def host_id(n: int) -> str:
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_HOSTS:
        raise LabError("InvalidHostCount", f"host number must be 1..{MAX_HOSTS}: {n!r}")
    return f"h{n}"


def host_number(hid: str) -> int:
    m = _HOST_ID_RE.match(hid or "")
    if not m:
        raise LabError("InvalidHostId", f"not a lab host id: {hid!r}")
    return int(m.group(1))


def host_ids(count: int) -> list[str]:
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_HOSTS:
        raise LabError("InvalidHostCount", f"hosts must be 1..{MAX_HOSTS}: {count!r}")
    return [host_id(i) for i in range(1, count + 1)]


def host_netns(prefix: str, hid: str) -> str:
    return _checked(f"{validate_prefix(prefix)}-{hid}")


def fabric_netns(prefix: str) -> str:
    return _checked(f"{validate_prefix(prefix)}-fab")


def inet_netns(prefix: str) -> str:
    return _checked(f"{validate_prefix(prefix)}-inet")


def storage_netns(prefix: str) -> str:
    return _checked(f"{validate_prefix(prefix)}-sn")


def ctl_netns(prefix: str) -> str:
    return _checked(f"{validate_prefix(prefix)}-ctl")


def controller_agent_listen() -> str:
    """HOST:PORT of the controller's agent-facing listener on the fabric."""
    return f"{CTL_ADDR.ip}:{CTL_AGENT_PORT}"


def agent_listen(hid: str) -> str:
    """HOST:PORT of host `hid`'s agent API on the fabric."""
    return f"{host_address(hid).ip}:{AGENT_PORT}"


def all_netns_pattern(prefix: str) -> re.Pattern[str]:
    """Matches every namespace name this prefix's lab may have created (for cleanup scans)."""
    p = re.escape(validate_prefix(prefix))
    # hN-kvr-<vni>: the VPC router namespaces a host's agent creates (agent.network.names).
    return re.compile(rf"^{p}-(fab|inet|sn|ctl|h[1-9][0-9]?(-kvr-[0-9a-f]{{6}})?)$")


def fabric_port(hid: str) -> str:
    """Fabric-side end of a host's uplink veth (lives only in the fabric namespace)."""
    host_number(hid)
    return _checked(f"p-{hid}")


FABRIC_INET_PORT = "p-inet"


def host_address(hid: str) -> ipaddress.IPv4Interface:
    n = host_number(hid)
    return ipaddress.ip_interface(f"{FABRIC_NET.network_address + 10 + n}/{FABRIC_NET.prefixlen}")


# Uplinks get fixed, locally administered MACs so that re-creating one during a repair does not
# leave stale ARP entries pointing at a MAC that no longer exists on the fabric.
def uplink_mac(hid: str) -> str:
    return f"02:4b:4c:00:00:{host_number(hid):02x}"


INET_MAC = "02:4b:4c:00:00:fe"


def inet_address() -> ipaddress.IPv4Interface:
    return ipaddress.ip_interface(f"{INET_FABRIC_ADDR}/{FABRIC_NET.prefixlen}")


def _checked(name: str) -> str:
    if len(name) > IFNAMSIZ_MAX:
        raise LabError("NameTooLong", f"name longer than {IFNAMSIZ_MAX} characters: {name!r}")
    return name
