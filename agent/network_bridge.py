"""Host bridges with pyroute2, in the agent's current network namespace (the Network driver).

The lab runs each agent inside its host's namespace, so "current namespace" is that host.
Because a bridge or address in the machine's initial namespace would break the hard network
rules of the lab machines, the driver refuses to act there unless explicitly allowed
(production hosts, where the root namespace IS the host).
"""
from __future__ import annotations

import os
import threading
from ipaddress import IPv4Interface

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agent.drivers.base import DriverError

IFF_UP = 0x1


def _ns_id(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def in_private_netns(netns_dir: str = "/run/netns") -> bool:
    """True when this process runs in a network namespace other than the machine's own.

    Either a named namespace (`ip netns`, as the lab's hosts are) or one that differs from
    PID 1's. When neither can be shown, assume the machine's own namespace: the safe answer.
    """
    me = _ns_id("/proc/self/ns/net")
    try:
        for name in os.listdir(netns_dir):
            try:
                if _ns_id(os.path.join(netns_dir, name)) == me:
                    return True
            except OSError:
                continue
    except OSError:
        pass
    try:
        return _ns_id("/proc/1/ns/net") != me
    except OSError:  # /proc/1 is hidden in some sandboxes
        return False


class BridgeNetwork:
    """Network driver: Linux bridges, set up, optionally holding the subnet router address."""

    capabilities = frozenset({"bridge"})

    def __init__(self, allow_root_netns: bool = False):
        self.allow_root_netns = allow_root_netns
        self._lock = threading.Lock()

    def _guard(self) -> None:
        if not self.allow_root_netns and not in_private_netns():
            raise DriverError("refusing to create bridges in the machine's initial network "
                              "namespace (set KUMO_AGENT_ALLOW_ROOT_NETNS=true on a real host)",
                              code="NetworkNamespaceRefused", retryable=False)

    @staticmethod
    def _state(ipr: IPRoute, name: str) -> tuple[int | None, bool, set[IPv4Interface]]:
        idx = ipr.link_lookup(ifname=name)
        if not idx:
            return None, False, set()
        link = ipr.get_links(idx[0])[0]
        up = bool(link["flags"] & IFF_UP)
        addrs = {IPv4Interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
                 for a in ipr.get_addr(index=idx[0], family=2)}
        return idx[0], up, addrs

    def bridge_ready(self, name: str, router: IPv4Interface | None) -> bool:
        with IPRoute() as ipr:
            idx, up, addrs = self._state(ipr, name)
        return idx is not None and up and (router is None or router in addrs)

    def ensure_bridge(self, name: str, router: IPv4Interface | None) -> None:
        self._guard()
        with self._lock, IPRoute() as ipr:
            try:
                idx, up, addrs = self._state(ipr, name)
                if idx is None:
                    ipr.link("add", ifname=name, kind="bridge")
                    idx, up, addrs = self._state(ipr, name)
                else:
                    kind = ipr.get_links(idx)[0].get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
                    if kind != "bridge":
                        raise DriverError(f"{name} exists and is a {kind}, not a bridge",
                                          code="NetworkConflict", retryable=False)
                if not up:
                    ipr.link("set", index=idx, state="up")
                if router is not None and router not in addrs:
                    ipr.addr("add", index=idx, address=str(router.ip),
                             prefixlen=router.network.prefixlen)
            except NetlinkError as e:
                raise DriverError(f"bridge {name}: {e}", code="NetworkError") from None
