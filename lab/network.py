"""The lab's wiring, all through pyroute2 and all inside lab namespaces: the fabric namespace with its
bridge, the internet namespace, the controller's and the storage node's namespaces, and each host's
uplink veth; and how this process acts inside a lab namespace without leaving its own (call_in). Nothing here ever touches the root
namespace: every veth is created inside the fabric namespace with its peer placed straight into the
target lab namespace.
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

from pyroute2 import NetNS, netns
from pyroute2.netlink.exceptions import NetlinkError

from lab import naming as nm

NETNS_DIR = "/run/netns"
T = TypeVar("T")


def exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, name))


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


@contextmanager
def opened(name: str) -> Iterator[NetNS]:
    ns = NetNS(name)
    try:
        yield ns
    finally:
        ns.close()


def ensure_netns(name: str) -> None:
    if not exists(name):
        netns.create(name)
    with opened(name) as ns:
        _up(ns, "lo")


def remove_netns(name: str) -> None:
    if exists(name):
        netns.remove(name)


def _index(ns: NetNS, ifname: str) -> int | None:
    found = ns.link_lookup(ifname=ifname)
    return found[0] if found else None


def _up(ns: NetNS, ifname: str) -> None:
    idx = _index(ns, ifname)
    if idx is not None:
        ns.link("set", index=idx, state="up")


def _ensure_addr(ns: NetNS, ifname: str, address: str, prefixlen: int) -> None:
    idx = _index(ns, ifname)
    have = {(a.get("address"), a["prefixlen"]) for a in ns.get_addr(index=idx, family=2)}
    if (address, prefixlen) not in have:
        ns.addr("add", index=idx, address=address, prefixlen=prefixlen)


def _delete_link(ns: NetNS, ifname: str) -> None:
    idx = _index(ns, ifname)
    if idx is not None:
        try:
            ns.link("del", index=idx)
        except NetlinkError as e:
            if e.code != 19:  # ENODEV: already gone
                raise


def ensure_fabric(prefix: str) -> None:
    name = nm.fabric_netns(prefix)
    ensure_netns(name)
    with opened(name) as ns:
        if _index(ns, nm.FABRIC_BRIDGE) is None:
            ns.link("add", ifname=nm.FABRIC_BRIDGE, kind="bridge")
        ns.link("set", index=_index(ns, nm.FABRIC_BRIDGE), mtu=nm.FABRIC_MTU)
        _up(ns, nm.FABRIC_BRIDGE)


def _ensure_uplink(prefix: str, port: str, peer_ns: str, mac: str) -> None:
    """veth `port` in the fabric (enslaved to its bridge) <-> `uplink0` in peer_ns. A half that lost
    its other end (a namespace was re-created) is deleted and the pair re-made."""
    fab = nm.fabric_netns(prefix)
    with opened(fab) as f, opened(peer_ns) as p:
        have_port = _index(f, port) is not None
        have_uplink = _index(p, nm.UPLINK) is not None
        if have_port != have_uplink or (have_port and not _paired(f, port, p)):
            _delete_link(f, port)
            _delete_link(p, nm.UPLINK)
            have_port = False
        if not have_port:
            peer = {"ifname": nm.UPLINK, "net_ns_fd": peer_ns, "address": mac}
            f.link("add", ifname=port, kind="veth", peer=peer)
        br = _index(f, nm.FABRIC_BRIDGE)
        f.link("set", index=_index(f, port), master=br, mtu=nm.FABRIC_MTU, state="up")
        p.link("set", index=_index(p, nm.UPLINK), mtu=nm.FABRIC_MTU)
        _up(p, nm.UPLINK)


def _paired(f: NetNS, port: str, p: NetNS) -> bool:
    # A veth's IFLA_LINK is its peer's ifindex (in the peer's namespace).
    link = f.get_links(_index(f, port))[0]
    return link.get("link") == _index(p, nm.UPLINK)


def ensure_inet(prefix: str) -> None:
    name = nm.inet_netns(prefix)
    ensure_netns(name)
    _ensure_uplink(prefix, nm.FABRIC_INET_PORT, name, nm.INET_MAC)
    addr = nm.inet_address()
    with opened(name) as ns:
        _ensure_addr(ns, nm.UPLINK, str(addr.ip), addr.network.prefixlen)
        # "A server on the internet": a /32 on the loopback. No default route: it routes nowhere else.
        _ensure_addr(ns, "lo", str(nm.INET_SERVER_ADDR), 32)
        # The public pool is on-link: the host carrying a public address answers ARP for it.
        # Filter in Python: get_routes(dst=...) is a route *lookup* in pyroute2 0.9 (ENETUNREACH
        # while the route is missing).
        pool = nm.PUBLIC_POOL
        have = [r for r in ns.get_routes(family=2, table=254)
                if r.get_attr("RTA_DST") == str(pool.network_address)
                and r["dst_len"] == pool.prefixlen]
        if not have:
            ns.route("add", dst=str(pool), oif=_index(ns, nm.UPLINK))
        # The internet routes between the hosts' public addresses (instance to instance over
        # public IPs), as a real upstream router does. It still routes nowhere outside the lab.
    subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
                   check=True, capture_output=True, timeout=30)


def ensure_host(prefix: str, hid: str) -> None:
    name = nm.host_netns(prefix, hid)
    ensure_netns(name)
    _ensure_uplink(prefix, nm.fabric_port(hid), name, nm.uplink_mac(hid))
    addr = nm.host_address(hid)
    with opened(name) as ns:
        _ensure_addr(ns, nm.UPLINK, str(addr.ip), addr.network.prefixlen)
        # The host's way "out" is the lab's internet namespace, which dead-ends.
        routes = ns.get_routes(family=2, dst_len=0, table=254)
        if not routes:
            ns.route("add", dst="0.0.0.0/0", gateway=str(nm.INET_FABRIC_ADDR))
        _ensure_storage_quickack(ns)


def route_storage_quickack(name: str, addr: str) -> None:
    """In host namespace `name`: the quickack route (below) to a storage node at `addr` (the
    volumes benchmark's own scratch node uses it too)."""
    with opened(name) as ns:
        _ensure_storage_quickack(ns, addr)


def _ensure_storage_quickack(ns: NetNS, addr: str = str(nm.STORAGE_ADDR.ip)) -> None:
    """A host's /32 route to the storage node, on-link via its uplink, with `quickack 1` (no
    delayed ACK on that route): what docs/deploy.md "NBD over TLS: acknowledge at once" asks of
    real hosts. QEMU's NBD server before 8.0 (Debian 12 ships 7.2) leaves Nagle on and does not
    push its replies; over TLS a read's reply header and payload are two TLS records, so the
    payload (one sub-MSS segment at the fabric's 9000 MTU) waits for the ACK of the header,
    which the host's QEMU delays ~40 ms. Measured in the lab (bench/RESULTS.md, volumes, issue
    14): 50 random 4 KiB reads with qemu-io from h1 over TLS, 46.4 ms each without this route,
    0.24 ms with it; the storage node's own route back with quickack changed nothing for reads.
    `replace`: idempotent, and it repairs a route that lost the attribute."""
    ns.route("replace", dst=f"{addr}/32", oif=_index(ns, nm.UPLINK),
             scope=253, metrics={"quickack": 1})


def ensure_storage(prefix: str) -> None:
    """The storage node's namespace: uplink0 on the fabric bridge at STORAGE_ADDR. No default route:
    it only serves the hosts, which are on-link, and has no business reaching anything else."""
    _ensure_fabric_member(prefix, nm.storage_netns(prefix), nm.STORAGE_FABRIC_PORT,
                          nm.STORAGE_MAC, nm.STORAGE_ADDR)


def ensure_ctl(prefix: str) -> None:
    """The controller's namespace: uplink0 on the fabric bridge at CTL_ADDR. No default route:
    it talks only to the hosts (on-link); its users reach it through a socket bound in the root
    namespace's loopback (lab/core.py), never through a link."""
    _ensure_fabric_member(prefix, nm.ctl_netns(prefix), nm.CTL_FABRIC_PORT, nm.CTL_MAC,
                          nm.CTL_ADDR)


def _ensure_fabric_member(prefix: str, name: str, port: str, mac: str, addr) -> None:
    """Namespace `name` with uplink0 on the fabric bridge (its end there: `port`) at `addr`."""
    ensure_netns(name)
    _ensure_uplink(prefix, port, name, mac)
    with opened(name) as ns:
        _ensure_addr(ns, nm.UPLINK, str(addr.ip), addr.network.prefixlen)


def remove_ctl(prefix: str) -> None:
    _remove_fabric_member(prefix, nm.ctl_netns(prefix), nm.CTL_FABRIC_PORT)


def _remove_fabric_member(prefix: str, name: str, port: str) -> None:
    """Namespace `name` and its uplink's end (`port`) on the fabric bridge."""
    fab = nm.fabric_netns(prefix)
    if exists(fab):
        with opened(fab) as f:
            _delete_link(f, port)
    remove_netns(name)


_CLONE_NEWNET = 0x40000000


def call_in(name: str, fn: Callable[..., T], *args) -> T:
    """fn(*args) run by a short-lived thread that entered lab namespace `name` first (setns
    changes only the calling thread's network namespace), its result or exception handed back:
    every socket it opens, directly or through a client library, is made in that namespace and
    keeps it. This process never leaves its own namespace, and the root one gets nothing."""
    out: dict = {}

    def run() -> None:
        try:
            fd = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc().setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {name}: {os.strerror(err)}")
            finally:
                os.close(fd)
            out["value"] = fn(*args)
        except BaseException as e:  # handed to the caller's thread
            out["error"] = e

    t = threading.Thread(target=run, name=f"netns-{name}", daemon=True)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def socket_in(name: str, family: int = socket.AF_INET,
              kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket created inside lab namespace `name` (a socket keeps the namespace it was made
    in): readiness checks and tests probe the fabric with it."""
    return call_in(name, socket.socket, family, kind)


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def tcp_answers(name: str, host: str, port: int, timeout: float = 0.5) -> bool:
    """Something accepts TCP connections at host:port as seen from inside namespace `name`."""
    if not exists(name):
        return False
    s = socket_in(name)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def remove_storage(prefix: str) -> None:
    _remove_fabric_member(prefix, nm.storage_netns(prefix), nm.STORAGE_FABRIC_PORT)


def remove_host(prefix: str, hid: str) -> None:
    fab = nm.fabric_netns(prefix)
    if exists(fab):
        with opened(fab) as f:
            _delete_link(f, nm.fabric_port(hid))
    remove_netns(nm.host_netns(prefix, hid))


def link_state(netns_name: str, ifname: str) -> dict | None:
    """{'ifname', 'up', 'addresses'} of a link in a lab namespace, or None when missing."""
    if not exists(netns_name):
        return None
    with opened(netns_name) as ns:
        idx = _index(ns, ifname)
        if idx is None:
            return None
        link = ns.get_links(idx)[0]
        addrs = [f"{a.get('address')}/{a['prefixlen']}" for a in ns.get_addr(index=idx, family=2)]
        return {"ifname": ifname, "up": link.get("operstate") in ("UP", "UNKNOWN"), "addresses": addrs}
