"""The one kernel interface of the dataplane: read owned state into records and apply records,
with pyroute2 (netlink) for links, addresses, neighbours, fdb, routes and rules, and nft / sysctl
as processes inside the namespace (plus one `ip -j neigh show proxy` read: pyroute2 0.9 cannot
dump proxy entries). Library errors are translated here: adding what exists and
deleting what is gone both succeed; everything else raises NetlinkOpError naming the record.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Iterable, Optional

from pyroute2 import IPRoute, netns as pnetns
from pyroute2.netlink.exceptions import NetlinkError

from agent.netns import drop_stale, exec_argv, inode, is_live
from agent.network import names
from agent.network.records import (
    HOST, Addr, BrPort, Fdb, Link, Mac, Master, Neigh, Netns, NftTable, ProxyNeigh, Record,
    Route, Rule, Sysctl, Up,
)

IFF_UP = 0x1
NTF_SELF, NTF_MASTER, NTF_PROXY = 0x02, 0x04, 0x08
NUD_NOARP, NUD_PERMANENT = 0x40, 0x80
RTNH_F_ONLINK = 0x4
RTPROT_STATIC = 4
_GONE = {errno.ENOENT, errno.ENODEV, errno.ESRCH, errno.EADDRNOTAVAIL}


class NetlinkOpError(Exception):
    def __init__(self, rec: object, detail: str):
        super().__init__(f"{rec}: {detail}")
        self.record = rec
        self.detail = detail


class Kernel:
    """Netlink handles on the host namespace and the VPC router namespaces of one host.

    netns=None means this process's own namespace (production: the root namespace of a host)."""

    def __init__(self, netns: Optional[str]):
        self.netns = netns
        self._handles: dict[str, IPRoute] = {}
        self._index: dict[str, dict[str, int]] = {}
        self._inodes: dict[str, Optional[int]] = {}

    # -- plumbing --------------------------------------------------------------------------
    def _real_ns(self, ns: str) -> Optional[str]:
        return self.netns if ns == HOST else ns

    def ipr(self, ns: str) -> IPRoute:
        real = self._real_ns(ns)
        # A cached socket keeps its namespace alive: if the name now points at a new namespace
        # (deleted and re-created behind our back), the old handle would write into a ghost.
        ino = inode(real)
        if ns in self._handles and self._inodes.get(ns) != ino:
            self.forget(ns)
        if ns not in self._handles:
            self._handles[ns] = IPRoute(netns=real) if real else IPRoute()
            self._inodes[ns] = ino
        return self._handles[ns]

    def forget(self, ns: str) -> None:
        h = self._handles.pop(ns, None)
        self._index.pop(ns, None)
        self._inodes.pop(ns, None)
        if h is not None:
            h.close()

    def close(self) -> None:
        for ns in list(self._handles):
            self.forget(ns)

    def index(self, ns: str, name: str) -> Optional[int]:
        idx = self._index.setdefault(ns, {})
        if name not in idx:
            found = self.ipr(ns).link_lookup(ifname=name)
            if not found:
                return None
            idx[name] = found[0]
        return idx[name]

    def link_mac(self, ns: str, dev: str) -> str:
        i = self.index(ns, dev)
        if i is None:
            raise NetlinkOpError(dev, "no such device")
        return self.ipr(ns).get_links(i)[0].get("address")

    def _exec(self, ns: str, argv: list[str], stdin: Optional[str] = None) -> str:
        real = self._real_ns(ns)
        res = subprocess.run(exec_argv(real, argv), input=stdin, capture_output=True, text=True,
                             timeout=30)
        if res.returncode != 0:
            raise NetlinkOpError(argv[0], res.stderr.strip() or f"exit {res.returncode}")
        return res.stdout

    # -- observation -----------------------------------------------------------------------
    def list_router_netns(self, host_tag: str) -> list[str]:
        """Router namespaces that really exist. A /run/netns entry that is no namespace mount
        any more (its mount lived in a mount namespace that is gone) is stale: removed here, so
        the next ensure() re-creates the namespace instead of failing to enter it forever."""
        prefix = names.router_netns_prefix(host_tag)
        out = []
        for n in sorted(pnetns.listnetns()):
            if not n.startswith(prefix):
                continue
            if is_live(n):
                out.append(n)
            else:
                drop_stale(n)
        return out

    def observe(self, underlay_dev: str, router_ns: Iterable[str]) -> set[Record]:
        out = self._observe_host(underlay_dev)
        for rns in router_ns:
            out.add(Netns(rns))
            out |= self._observe_router(rns)
        return out

    def _links(self, ns: str) -> dict[int, object]:
        links = {m["index"]: m for m in self.ipr(ns).get_links()}
        self._index[ns] = {m.get("ifname"): i for i, m in links.items()}
        return links

    def _observe_host(self, underlay_dev: str) -> set[Record]:
        ipr = self.ipr(HOST)
        links = self._links(HOST)
        name_of = {i: m.get("ifname") for i, m in links.items()}
        owned = {i for i, n in name_of.items() if names.HOST_LINK_RE.match(n or "")}
        out: set[Record] = set()
        for i in owned:
            m = links[i]
            name, kind = name_of[i], m.get(("linkinfo", "kind"))
            sig: tuple = ()
            if kind == "vxlan":
                data = m.get(("linkinfo", "data"))
                sig = (data.get("vxlan_id"), data.get("vxlan_local"),
                       name_of.get(data.get("vxlan_link")), data.get("vxlan_port"))
            out.add(Link(HOST, name, kind or "?", sig))
            if m["flags"] & IFF_UP:
                out.add(Up(HOST, name))
            if kind == "bridge":
                out.add(Mac(HOST, name, m.get("address")))
        for i, m in links.items():
            master = m.get("master")
            if master in owned and name_of[master].startswith("kb-"):
                out.add(Master(HOST, name_of[i], name_of[master]))
        for m in ipr.brport("dump"):
            if m["index"] in owned and m.get("protinfo") is not None:
                p = m.get("protinfo")
                out.add(BrPort(HOST, name_of[m["index"]], bool(p.get("learning")),
                               bool(p.get("neigh_suppress"))))
        for m in ipr.get_addr(family=socket.AF_INET):
            if m["index"] in owned:
                out.add(Addr(HOST, name_of[m["index"]],
                             IPv4Interface(f"{m.get('address')}/{m['prefixlen']}")))
        for m in ipr.get_neighbours(family=socket.AF_INET):
            if m["ifindex"] in owned and m["state"] & NUD_PERMANENT and m.get("lladdr"):
                out.add(Neigh(HOST, name_of[m["ifindex"]], IPv4Address(m.get("dst")), m.get("lladdr")))
        for m in ipr.fdb("dump"):
            i = m["ifindex"]
            if i not in owned:
                continue
            dst = m.get("dst")
            if dst:
                out.add(Fdb(HOST, name_of[i], m.get("lladdr"), IPv4Address(dst)))
            elif m["state"] == NUD_NOARP and m.get("master"):
                out.add(Fdb(HOST, name_of[i], m.get("lladdr")))
        for m in ipr.route("dump", family=socket.AF_INET, table=254):
            if m["proto"] == names.RTPROT_KUMO:
                out.add(Route(HOST, 254, IPv4Network(f"{m.get('dst') or '0.0.0.0'}/{m['dst_len']}"),
                              "unicast", _ip(m.get("gateway")), name_of.get(m.get("oif"))))
        # pyroute2 0.9 cannot dump proxy entries (its dump filter drops NTF_PROXY), so read them
        # with iproute2 in the same namespace. Owned = every proxy entry on the uplink.
        for e in json.loads(self._exec(HOST, ["ip", "-j", "neigh", "show", "proxy"]) or "[]"):
            ip = IPv4Address(e["dst"]) if "." in e.get("dst", "") else None
            if ip is not None and e.get("dev") == underlay_dev:
                out.add(ProxyNeigh(HOST, underlay_dev, ip))
        return out

    def _observe_router(self, rns: str) -> set[Record]:
        ipr = self.ipr(rns)
        links = self._links(rns)
        name_of = {i: m.get("ifname") for i, m in links.items()}
        out: set[Record] = set()
        for i, m in links.items():
            name = name_of[i]
            if m["flags"] & IFF_UP:
                out.add(Up(rns, name))
            if name == "lo":
                continue
            out.add(Link(rns, name, m.get(("linkinfo", "kind")) or "?"))
            if name[:2] in ("kr", "kn"):
                out.add(Mac(rns, name, m.get("address")))
        for m in ipr.get_addr(family=socket.AF_INET):
            if name_of.get(m["index"]) not in (None, "lo"):
                out.add(Addr(rns, name_of[m["index"]],
                             IPv4Interface(f"{m.get('address')}/{m['prefixlen']}")))
        for m in ipr.get_neighbours(family=socket.AF_INET):
            if m["state"] & NUD_PERMANENT and m.get("lladdr"):
                out.add(Neigh(rns, name_of[m["ifindex"]], IPv4Address(m.get("dst")), m.get("lladdr")))
        for table in (names.TABLE_IGW, names.TABLE_NAT):
            for m in ipr.route("dump", family=socket.AF_INET, table=table):
                kind = "throw" if m["type"] == 9 else "unicast"
                out.add(Route(rns, table, IPv4Network(f"{m.get('dst') or '0.0.0.0'}/{m['dst_len']}"),
                              kind, _ip(m.get("gateway")), name_of.get(m.get("oif"))))
        for m in ipr.get_rules(family=socket.AF_INET):
            prio = m.get("priority")
            if prio is not None and 1000 <= prio < 2000:
                out.add(Rule(rns, prio, IPv4Network(f"{m.get('src') or '0.0.0.0'}/{m['src_len']}"),
                             m.get("table")))
        return out

    # -- actions ---------------------------------------------------------------------------
    def add(self, rec: Record) -> None:
        try:
            self._add(rec)
        except NetlinkError as e:
            if e.code == errno.EEXIST:
                return
            raise NetlinkOpError(rec, f"add: {e}") from e
        except (OSError, subprocess.SubprocessError) as e:
            raise NetlinkOpError(rec, f"add: {e}") from e

    def remove(self, rec: Record) -> None:
        try:
            self._remove(rec)
        except NetlinkError as e:
            if e.code in _GONE:
                return
            raise NetlinkOpError(rec, f"remove: {e}") from e
        except (OSError, subprocess.SubprocessError) as e:
            raise NetlinkOpError(rec, f"remove: {e}") from e

    def _need(self, ns: str, dev: str, rec: object) -> int:
        i = self.index(ns, dev)
        if i is None:
            raise NetlinkOpError(rec, f"no device {dev}")
        return i

    def _add(self, rec: Record) -> None:
        if isinstance(rec, Netns):
            if rec.name not in pnetns.listnetns() or not is_live(rec.name):
                self.forget(rec.name)
                drop_stale(rec.name)
                pnetns.create(rec.name)
            return
        if isinstance(rec, NftTable):
            self._exec(rec.ns, ["nft", "-j", "-f", "-"], stdin=rec.payload)
            return
        if isinstance(rec, Sysctl):
            self.set_sysctls(rec.ns, [(rec.key, rec.value)])
            return
        ipr = self.ipr(rec.ns)
        if isinstance(rec, Link):
            if rec.created_by_peer:
                self._need(rec.ns, rec.name, rec)
                return
            kw: dict = {"ifname": rec.name, "kind": rec.kind}
            if rec.kind == "vxlan":
                vni, local, dev, port = rec.sig
                kw.update(vxlan_id=vni, vxlan_local=local, vxlan_port=port, vxlan_learning=0,
                          vxlan_link=self._need(rec.ns, dev, rec))
            elif rec.kind == "veth":
                kw["peer"] = {"ifname": rec.peer, "net_ns_fd": rec.peer_ns}
            ipr.link("add", **kw)
            self._index.get(rec.ns, {}).pop(rec.name, None)
            if rec.peer_ns is not None:
                self._index.get(rec.peer_ns, {}).pop(rec.peer, None)
        elif isinstance(rec, Up):
            ipr.link("set", index=self._need(rec.ns, rec.dev, rec), state="up")
        elif isinstance(rec, Mac):
            ipr.link("set", index=self._need(rec.ns, rec.dev, rec), address=rec.mac)
        elif isinstance(rec, Master):
            ipr.link("set", index=self._need(rec.ns, rec.dev, rec),
                     master=self._need(rec.ns, rec.master, rec))
        elif isinstance(rec, BrPort):
            ipr.brport("set", index=self._need(rec.ns, rec.dev, rec), learning=int(rec.learning),
                       neigh_suppress=int(rec.neigh_suppress))
        elif isinstance(rec, Addr):
            ipr.addr("add", index=self._need(rec.ns, rec.dev, rec), address=str(rec.cidr.ip),
                     prefixlen=rec.cidr.network.prefixlen)
        elif isinstance(rec, Neigh):
            ipr.neigh("replace", dst=str(rec.ip), lladdr=rec.mac, state=NUD_PERMANENT,
                      ifindex=self._need(rec.ns, rec.dev, rec))
        elif isinstance(rec, ProxyNeigh):
            ipr.neigh("add", dst=str(rec.ip), ifindex=self._need(rec.ns, rec.dev, rec), flags=NTF_PROXY)
        elif isinstance(rec, Fdb):
            i = self._need(rec.ns, rec.dev, rec)
            if rec.dst is not None:
                ipr.fdb("append", ifindex=i, lladdr=rec.mac, dst=str(rec.dst))
            else:
                ipr.fdb("replace", ifindex=i, lladdr=rec.mac, flags=NTF_MASTER, state=NUD_NOARP)
        elif isinstance(rec, Route):
            ipr.route("replace", **self._route_kw(rec))
        elif isinstance(rec, Rule):
            ipr.rule("add", src=str(rec.src.network_address), src_len=rec.src.prefixlen,
                     table=rec.table, priority=rec.priority)

    def _route_kw(self, rec: Route) -> dict:
        kw: dict = {"dst": str(rec.dst), "table": rec.table,
                    "proto": names.RTPROT_KUMO if rec.ns == HOST else RTPROT_STATIC}
        if rec.kind == "throw":
            kw["type"] = "throw"
        else:
            kw.update(gateway=str(rec.gateway), oif=self._need(rec.ns, rec.dev, rec),
                      flags=RTNH_F_ONLINK)
        return kw

    def _remove(self, rec: Record) -> None:
        if isinstance(rec, Netns):
            self.forget(rec.name)
            if rec.name in pnetns.listnetns():
                pnetns.remove(rec.name)
            return
        if isinstance(rec, (NftTable, Sysctl, Up, Mac, BrPort)):
            return
        ipr = self.ipr(rec.ns)
        if isinstance(rec, Rule):
            ipr.rule("del", src=str(rec.src.network_address), src_len=rec.src.prefixlen,
                     table=rec.table, priority=rec.priority)
            return
        if isinstance(rec, Route):
            kw = {"dst": str(rec.dst), "table": rec.table}
            if rec.ns == HOST:  # only ever Kumo's own route, never a same-prefix foreign one
                kw["proto"] = names.RTPROT_KUMO
            if rec.kind == "throw":
                kw["type"] = "throw"
            ipr.route("del", **kw)
            return
        i = self.index(rec.ns, rec.name if isinstance(rec, Link) else rec.dev)
        if i is None:
            return
        if isinstance(rec, Link):
            ipr.link("del", index=i)
            self._index.get(rec.ns, {}).pop(rec.name, None)
        elif isinstance(rec, Master):
            ipr.link("set", index=i, master=0)
        elif isinstance(rec, Addr):
            ipr.addr("del", index=i, address=str(rec.cidr.ip), prefixlen=rec.cidr.network.prefixlen)
        elif isinstance(rec, Neigh):
            ipr.neigh("del", dst=str(rec.ip), ifindex=i)
        elif isinstance(rec, ProxyNeigh):
            ipr.neigh("del", dst=str(rec.ip), ifindex=i, flags=NTF_PROXY)
        elif isinstance(rec, Fdb):
            if rec.dst is not None:
                ipr.fdb("del", ifindex=i, lladdr=rec.mac, dst=str(rec.dst))
            else:
                ipr.fdb("del", ifindex=i, lladdr=rec.mac, flags=NTF_MASTER)

    def set_sysctls(self, ns: str, pairs: list[tuple[str, str]]) -> None:
        real = self._real_ns(ns)
        if real is None:
            for key, value in pairs:
                with open(os.path.join("/proc/sys", *key.split(".")), "w") as f:
                    f.write(value)
            return
        self._exec(ns, ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in pairs)])


def _ip(value: Optional[str]) -> Optional[IPv4Address]:
    return IPv4Address(value) if value else None
