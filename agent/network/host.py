"""Where a host's VPC dataplane lives, found at run time: the host's network namespace (named, the
agent's own, or the machine's own only when allowed), its underlay device and address, and a
cheap "is this link up" probe in that namespace. Reads only; never changes a namespace.
"""
from __future__ import annotations

import hashlib
import logging
import socket
import threading
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any, Optional

from agent.netns import NamespaceRefused, own_netns_name, require_private
from agent.network.apply import DataplaneError

log = logging.getLogger(__name__)


class UnderlayError(Exception):
    code = "UnderlayUnavailable"


@dataclass(frozen=True)
class Underlay:
    ip: IPv4Address
    dev: str


@dataclass(frozen=True)
class HostNamespace:
    #: `ip netns` name of the host's namespace; None: this process's own (unnamed) namespace.
    netns: Optional[str]
    #: Prefix of this host's VPC router namespaces (names are global on a machine).
    host_tag: str


def resolve_namespace(netns: Optional[str], host_id: str, allow_root_netns: bool) -> HostNamespace:
    """Which namespace the dataplane programs (see AgentSettings.netns). Raises DataplaneError
    RootNamespaceRefused for the machine's own namespace unless allowed."""
    if netns:
        return HostNamespace(netns, netns)
    name = own_netns_name()
    if name:
        return HostNamespace(name, name)
    try:
        require_private(allow_root_netns, "program the VPC dataplane")
    except NamespaceRefused as e:
        raise DataplaneError(e.code, str(e)) from None
    return HostNamespace(None, host_id)


def resolve_underlay(netns: Optional[str], dev: Optional[str],
                     ip: Optional[IPv4Address]) -> Underlay:
    """The underlay device (default: the default route's) and address (default: its first IPv4
    address), read with netlink in `netns`."""
    if dev and ip:
        return Underlay(ip, dev)
    from pyroute2 import IPRoute
    try:
        with (IPRoute(netns=netns) if netns else IPRoute()) as ipr:
            if not dev:
                best = None
                for r in ipr.get_default_routes(family=socket.AF_INET):
                    oif = r.get("oif")
                    prio = r.get("priority") or 0
                    if oif and (best is None or prio < best[0]):
                        best = (prio, oif)
                if best is None:
                    raise UnderlayError(f"no IPv4 default route in namespace {netns or '(own)'}"
                                        " to pick the underlay device from")
                dev = ipr.get_links(best[1])[0].get("ifname")
            if ip is None:
                idx = ipr.link_lookup(ifname=dev)
                if not idx:
                    raise UnderlayError(f"underlay device {dev} does not exist")
                addrs = [a.get("address") for a in ipr.get_addr(index=idx[0], family=socket.AF_INET)]
                if not addrs:
                    raise UnderlayError(f"underlay device {dev} has no IPv4 address")
                ip = IPv4Address(addrs[0])
    except UnderlayError:
        raise
    except Exception as e:  # netlink/namespace errors: retried by the caller
        raise UnderlayError(f"reading the underlay in {netns or '(own)'}: {e}") from e
    return Underlay(ip, dev)


def fake_underlay_ip(host_id: str) -> IPv4Address:
    """A stable TEST-NET-1 address (192.0.2.1-254) from host_id, for fake-driver agents."""
    n = int.from_bytes(hashlib.sha256(host_id.encode()).digest()[:4], "big")
    return IPv4Address(f"192.0.2.{1 + n % 254}")


class LinkProbe:
    """"Does link NAME exist and is it up" in one namespace, over one cached netlink socket."""

    IFF_UP = 0x1

    def __init__(self, netns: Optional[str]):
        self.netns = netns
        self._ipr: Any = None
        self._lock = threading.Lock()

    def __call__(self, name: str) -> bool:
        from pyroute2 import IPRoute
        with self._lock:
            for _ in range(2):  # a stale socket (namespace re-created) gets one reconnect
                try:
                    if self._ipr is None:
                        self._ipr = IPRoute(netns=self.netns) if self.netns else IPRoute()
                    idx = self._ipr.link_lookup(ifname=name)
                    if not idx:
                        return False
                    return bool(self._ipr.get_links(idx[0])[0]["flags"] & self.IFF_UP)
                except Exception as e:
                    log.debug("link probe %s in %s: %s", name, self.netns, e)
                    self.close_locked()
            return False

    def close_locked(self) -> None:
        if self._ipr is not None:
            try:
                self._ipr.close()
            except Exception:
                pass
            self._ipr = None

    def close(self) -> None:
        with self._lock:
            self.close_locked()
