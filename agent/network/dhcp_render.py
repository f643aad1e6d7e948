"""The pure half of VPC DHCP: dnsmasq's configuration and hosts file rendered from the model, and
the validation of every value that goes into them. No process, no file is touched here; the
servers themselves are agent/network/dhcp.py (DhcpServers, on agent/supervisor.py).

Guests get their address from the seed's network-config; images that ask DHCP get the same
address here. One dnsmasq per VPC and host runs inside the router namespace `<tag>-kvr-<vni>` and
binds only to kr-<vni>, the interface that holds every subnet's router address (.1). It serves
DHCP only (port=0: no DNS), one `static` dhcp-range per subnet (only configured hosts get an
address), and one `dhcp-host=<mac>,<ip>` per port LOCAL to this host, kept in a dhcp-hostsfile so
a port change is a rewrite plus SIGHUP.

Why this is right with the distributed router: every host carrying the VPC has its own kr-<vni>
with the same router MAC and addresses, and a guest's DHCP broadcasts are flooded over VXLAN to
every other host of the VPC. Each host's dnsmasq knows only its own local ports, so only the
guest's own host answers the DISCOVER. The REQUEST that follows is broadcast too and carries the
server identifier = the subnet's router address, which every host's dnsmasq owns: without more,
a remote dnsmasq would find no address for that MAC in its static range and broadcast a DHCPNAK
("address not available", see dnsmasq's rfc2131.c) racing the real ACK. `dhcp-ignore=tag:!known`
makes every dnsmasq ignore clients it has no dhcp-host for, for every message type, so remote
hosts stay silent. dhcp-authoritative stays off for the same reason (it NAKs unknown INIT-REBOOT
and REBINDING requests). Renewals are unicast to the router address, which each host answers
locally (the router MAC is local on every host).

`dhcp-broadcast` makes dnsmasq broadcast its replies to unconfigured clients instead of
injecting the client's MAC into the router namespace's ARP table (SIOCSARP), which would turn the
dataplane's permanent neighbour entries for local ports into ordinary (stale) ones.

Leases are bookkeeping only (every address is fixed), but dnsmasq refuses a configured address
while its lease database records it for another MAC ("not using configured address ... because
it is leased to ..."). So when an address moves to another MAC the server is restarted with its
lease file pruned to the configured (mac, ip) pairs instead of being sent SIGHUP.

Every value written into a config comes from ipaddress types, MACs (agent.validators), hostnames,
interface and path names, all checked with fullmatch (no newline can slip in).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Iterable, Optional, Union

from agent import netns, validators
from agent.network import names

DNSMASQ = "/usr/sbin/dnsmasq"
DEFAULT_LEASE_SECONDS = 3600
MIN_LEASE_SECONDS = 120  # dnsmasq's own floor
MAX_LEASE_SECONDS = 0xFFFFFFFE  # 0xFFFFFFFF means infinite on the wire

_HOSTNAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
#: Paths go into dnsmasq's config verbatim: no spaces, commas, quotes, '#' or control characters.
_PATH_RE = re.compile(r"/[A-Za-z0-9_./+@-]*")
_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


class DhcpError(Exception):
    """code is a stable name: InvalidParameterValue, DhcpUnavailable, DhcpStateDirNotReadable,
    DhcpStartFailed."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def invalid(message: str) -> DhcpError:
    return DhcpError("InvalidParameterValue", message)


def valid_mac(value: object) -> str:
    """A unicast, non-zero MAC, lower case (agent.validators); else InvalidParameterValue."""
    try:
        return validators.unicast_mac(value)
    except ValueError as e:
        raise invalid(str(e)) from None


def valid_netns(value: object) -> str:
    """An `ip netns` name (agent.netns's rule), else InvalidParameterValue."""
    try:
        return netns.valid_netns_name(value)
    except ValueError:
        raise invalid(f"bad namespace name {value!r}") from None


def valid_hostname(value: object) -> str:
    if not isinstance(value, str) or not _HOSTNAME_RE.fullmatch(value.lower()):
        raise invalid(f"bad hostname {value!r} (one DNS label: letters, digits, '-')")
    return value.lower()


def _parsed(value: object, kind: type, what: str):
    """`value` as an ipaddress `kind` (given as one or as its text), else InvalidParameterValue."""
    if isinstance(value, kind):
        return value
    if isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            pass
    raise invalid(f"bad {what} {value!r}")


def _ipv4(value: object, what: str) -> IPv4Address:
    return _parsed(value, IPv4Address, what)


def _network(value: object) -> IPv4Network:
    return _parsed(value, IPv4Network, "subnet CIDR")


def valid_path(value: Union[str, Path]) -> str:
    text = str(value)
    if not _PATH_RE.fullmatch(text) or "/../" in text + "/":
        raise invalid(f"path {text!r} must be absolute and use only [A-Za-z0-9_./+@-]")
    return text


@dataclass(frozen=True)
class DhcpSubnet:
    """A subnet served on kr-<vni>: its router address is the DHCP router option."""

    cidr: IPv4Network
    router_ip: IPv4Address

    def __post_init__(self) -> None:
        cidr, router = _network(self.cidr), _ipv4(self.router_ip, "router address")
        object.__setattr__(self, "cidr", cidr)
        object.__setattr__(self, "router_ip", router)
        if cidr.prefixlen > 30:
            raise invalid(f"subnet {cidr} is too small for DHCP")
        if router not in cidr or router in (cidr.network_address, cidr.broadcast_address):
            raise invalid(f"router {router} is not a host address of {cidr}")

    @classmethod
    def of(cls, obj: object) -> "DhcpSubnet":
        """From a DhcpSubnet, agent.network.model.SubnetNet or anything with cidr/router_ip."""
        return obj if isinstance(obj, cls) else cls(getattr(obj, "cidr"), getattr(obj, "router_ip"))


@dataclass(frozen=True)
class DhcpPort:
    """A guest NIC on this host: its MAC always gets ip (and hostname, when given)."""

    mac: str
    ip: IPv4Address
    hostname: Optional[str] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mac", valid_mac(self.mac))
        object.__setattr__(self, "ip", _ipv4(self.ip, "port address"))
        if self.hostname is not None:
            object.__setattr__(self, "hostname", valid_hostname(self.hostname))

    @classmethod
    def of(cls, obj: object) -> "DhcpPort":
        """From a DhcpPort, agent.network.model.PortNet or anything with mac/ip[/hostname]."""
        if isinstance(obj, cls):
            return obj
        return cls(getattr(obj, "mac"), getattr(obj, "ip"), getattr(obj, "hostname", None))


@dataclass(frozen=True)
class DhcpPaths:
    """The files of one VPC's server, all in the agent's state dir."""

    conf: str
    hosts: str
    leases: str
    pid: str
    log: str

    @classmethod
    def for_vni(cls, directory: Union[str, Path], vni: int) -> "DhcpPaths":
        valid_vni(vni)
        base = f"{valid_path(directory).rstrip('/')}/{vni:06x}"
        return cls(conf=f"{base}.conf", hosts=f"{base}.hosts", leases=f"{base}.leases",
                   pid=f"{base}.pid", log=f"{base}.log")


def valid_vni(vni: object) -> int:
    if not isinstance(vni, int) or isinstance(vni, bool) or not names.MIN_VNI <= vni <= names.MAX_VNI:
        raise invalid(f"bad VNI {vni!r}")
    return vni


def valid_iface(value: object) -> str:
    if not isinstance(value, str) or not names.IFNAME_RE.fullmatch(value) or value in (".", ".."):
        raise invalid(f"bad interface name {value!r}")
    return value


def check_ports(subnets: Iterable[DhcpSubnet], ports: Iterable[DhcpPort]) -> None:
    """Every port address is a usable host address of exactly one subnet; MACs and IPs unique."""
    subnets, seen_mac, seen_ip = list(subnets), set(), set()
    for a in subnets:
        for b in subnets:
            if a is not b and a.cidr.overlaps(b.cidr):
                raise invalid(f"subnets {a.cidr} and {b.cidr} overlap")
    for p in ports:
        home = [s for s in subnets if p.ip in s.cidr]
        if not home:
            raise invalid(f"port {p.mac} address {p.ip} is in no subnet")
        s = home[0]
        if p.ip in (s.cidr.network_address, s.cidr.broadcast_address, s.router_ip):
            raise invalid(f"port {p.mac} address {p.ip} is reserved in {s.cidr}")
        if p.mac in seen_mac:
            raise invalid(f"MAC {p.mac} appears twice")
        if p.ip in seen_ip:
            raise invalid(f"address {p.ip} appears twice")
        seen_mac.add(p.mac)
        seen_ip.add(p.ip)


def render_config(vni: int, iface: str, subnets: Iterable[object], paths: DhcpPaths, *,
                  lease_seconds: int = DEFAULT_LEASE_SECONDS, user: str = "dnsmasq",
                  group: str = "nogroup", log_dhcp: bool = False) -> str:
    """The dnsmasq configuration (file text) of one VPC's server. Raises InvalidParameterValue."""
    vni, iface = valid_vni(vni), valid_iface(iface)
    subs = sorted({DhcpSubnet.of(s) for s in subnets}, key=lambda s: s.cidr)
    check_ports(subs, ())
    if not subs:
        raise invalid("a DHCP server needs at least one subnet")
    if (not isinstance(lease_seconds, int) or isinstance(lease_seconds, bool)
            or not MIN_LEASE_SECONDS <= lease_seconds <= MAX_LEASE_SECONDS):
        raise invalid(f"lease time {lease_seconds!r} must be {MIN_LEASE_SECONDS}..{MAX_LEASE_SECONDS} s")
    for who in (user, group):
        if not isinstance(who, str) or not _USER_RE.fullmatch(who):
            raise invalid(f"bad user/group name {who!r}")
    p = DhcpPaths(*(valid_path(x) for x in (paths.conf, paths.hosts, paths.leases, paths.pid, paths.log)))
    lines = [
        f"# Kumo DHCP server of VNI {vni} ({vni:06x}), generated by agent.network.dhcp: do not edit.",
        "port=0",  # no DNS at all
        "no-resolv",
        "no-hosts",
        "no-ping",
        f"interface={iface}",
        "bind-interfaces",
        # Remote hosts' servers see this host's guests (flooded over VXLAN) and own the same
        # server identifier: they must stay silent, not NAK (module docstring).
        "dhcp-ignore=tag:!known",
        "dhcp-broadcast",
        f"dhcp-hostsfile={p.hosts}",
        f"dhcp-leasefile={p.leases}",
        f"pid-file={p.pid}",
        f"log-facility={p.log}",
        f"user={user}",
        f"group={group}",
    ]
    # Routine per-packet lines (including "ignored" for other hosts' guests) only when asked.
    lines.append("log-dhcp" if log_dhcp else "quiet-dhcp")
    for i, s in enumerate(subs):
        lines.append(f"dhcp-range=set:s{i},{s.cidr.network_address},static,{s.cidr.netmask},"
                     f"{lease_seconds}")
        lines.append(f"dhcp-option=tag:s{i},option:router,{s.router_ip}")
    return "\n".join(lines) + "\n"


def render_hosts(subnets: Iterable[object], ports: Iterable[object]) -> str:
    """The dhcp-hostsfile text: one `<mac>,<ip>[,<hostname>]` line per local port, sorted."""
    subs = [DhcpSubnet.of(s) for s in subnets]
    prts = sorted({DhcpPort.of(p) for p in ports}, key=lambda p: (p.ip, p.mac))
    check_ports(subs, prts)
    out = []
    for p in prts:
        out.append(f"{p.mac},{p.ip}" + (f",{p.hostname}" if p.hostname else ""))
    return "".join(line + "\n" for line in out)


def parse_leases(text: str) -> list[tuple[str, IPv4Address]]:
    """(mac, ip) of each IPv4 lease in a dnsmasq lease file; foreign lines are skipped."""
    found = []
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 3 and validators.MAC_RE.fullmatch(f[1].lower()):
            try:
                found.append((f[1].lower(), IPv4Address(f[2])))
            except ValueError:
                continue
    return found


def hosts_pairs(hosts_text: str) -> set[tuple[str, IPv4Address]]:
    """The (mac, ip) pairs of a hosts file rendered by render_hosts."""
    pairs = set()
    for line in hosts_text.splitlines():
        mac, ip = line.split(",")[:2]
        pairs.add((mac, IPv4Address(ip)))
    return pairs
