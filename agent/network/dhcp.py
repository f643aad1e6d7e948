"""DHCP with fixed leases for VPC guests: a pure dnsmasq renderer and a supervisor of one dnsmasq
per VPC router namespace.

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

Process tracking: dnsmasq runs in the foreground (--keep-in-foreground) as our child via
`ip netns exec` (which execs, so the child's pid is dnsmasq's), and is reaped by us; it drops
privileges to `user`, which must be able to traverse the state dir to re-read the hosts file on
SIGHUP (checked up front). After an agent restart a running server is found by its pid file and
trusted only if /proc/<pid>/cmdline is exactly ours and it lives in the expected namespace.
Every value written into a config comes from ipaddress types, regex-validated MACs, hostnames,
interface and path names (fullmatch: no newline can slip in).
"""
from __future__ import annotations

import grp
import logging
import os
import pwd
import re
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

from agent.network import names

log = logging.getLogger(__name__)

DNSMASQ = "/usr/sbin/dnsmasq"
DEFAULT_LEASE_SECONDS = 3600
MIN_LEASE_SECONDS = 120  # dnsmasq's own floor
MAX_LEASE_SECONDS = 0xFFFFFFFE  # 0xFFFFFFFF means infinite on the wire

_MAC_RE = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
_HOSTNAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_NETNS_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: Paths go into dnsmasq's config verbatim: no spaces, commas, quotes, '#' or control characters.
_PATH_RE = re.compile(r"/[A-Za-z0-9_./+@-]*")
_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


class DhcpError(Exception):
    """code is a stable name: InvalidParameterValue, DhcpUnavailable, DhcpStateDirNotReadable,
    DhcpStartFailed."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def _bad(message: str) -> DhcpError:
    return DhcpError("InvalidParameterValue", message)


def valid_mac(value: object) -> str:
    """A unicast, non-zero MAC, lower case; anything else raises InvalidParameterValue."""
    if not isinstance(value, str) or not _MAC_RE.fullmatch(value.lower()):
        raise _bad(f"bad MAC {value!r}")
    mac = value.lower()
    if int(mac[:2], 16) & 1 or mac == "00:00:00:00:00:00":
        raise _bad(f"MAC {value!r} is not a unicast address")
    return mac


def valid_hostname(value: object) -> str:
    if not isinstance(value, str) or not _HOSTNAME_RE.fullmatch(value.lower()):
        raise _bad(f"bad hostname {value!r} (one DNS label: letters, digits, '-')")
    return value.lower()


def _ipv4(value: object, what: str) -> IPv4Address:
    if isinstance(value, IPv4Address):
        return value
    if isinstance(value, str):
        try:
            return IPv4Address(value)
        except ValueError:
            pass
    raise _bad(f"bad {what} {value!r}")


def _network(value: object) -> IPv4Network:
    if isinstance(value, IPv4Network):
        return value
    if isinstance(value, str):
        try:
            return IPv4Network(value)
        except ValueError:
            pass
    raise _bad(f"bad subnet CIDR {value!r}")


def _path(value: Union[str, Path]) -> str:
    text = str(value)
    if not _PATH_RE.fullmatch(text) or "/../" in text + "/":
        raise _bad(f"path {text!r} must be absolute and use only [A-Za-z0-9_./+@-]")
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
            raise _bad(f"subnet {cidr} is too small for DHCP")
        if router not in cidr or router in (cidr.network_address, cidr.broadcast_address):
            raise _bad(f"router {router} is not a host address of {cidr}")

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
        _vni(vni)
        base = f"{_path(directory).rstrip('/')}/{vni:06x}"
        return cls(conf=f"{base}.conf", hosts=f"{base}.hosts", leases=f"{base}.leases",
                   pid=f"{base}.pid", log=f"{base}.log")


def _vni(vni: object) -> int:
    if not isinstance(vni, int) or isinstance(vni, bool) or not names.MIN_VNI <= vni <= names.MAX_VNI:
        raise _bad(f"bad VNI {vni!r}")
    return vni


def _iface(value: object) -> str:
    if not isinstance(value, str) or not names.IFNAME_RE.fullmatch(value) or value in (".", ".."):
        raise _bad(f"bad interface name {value!r}")
    return value


def check_ports(subnets: Iterable[DhcpSubnet], ports: Iterable[DhcpPort]) -> None:
    """Every port address is a usable host address of exactly one subnet; MACs and IPs unique."""
    subnets, seen_mac, seen_ip = list(subnets), set(), set()
    for a in subnets:
        for b in subnets:
            if a is not b and a.cidr.overlaps(b.cidr):
                raise _bad(f"subnets {a.cidr} and {b.cidr} overlap")
    for p in ports:
        home = [s for s in subnets if p.ip in s.cidr]
        if not home:
            raise _bad(f"port {p.mac} address {p.ip} is in no subnet")
        s = home[0]
        if p.ip in (s.cidr.network_address, s.cidr.broadcast_address, s.router_ip):
            raise _bad(f"port {p.mac} address {p.ip} is reserved in {s.cidr}")
        if p.mac in seen_mac:
            raise _bad(f"MAC {p.mac} appears twice")
        if p.ip in seen_ip:
            raise _bad(f"address {p.ip} appears twice")
        seen_mac.add(p.mac)
        seen_ip.add(p.ip)


def render_config(vni: int, iface: str, subnets: Iterable[object], paths: DhcpPaths, *,
                  lease_seconds: int = DEFAULT_LEASE_SECONDS, user: str = "dnsmasq",
                  group: str = "nogroup", log_dhcp: bool = False) -> str:
    """The dnsmasq configuration (file text) of one VPC's server. Raises InvalidParameterValue."""
    vni, iface = _vni(vni), _iface(iface)
    subs = sorted({DhcpSubnet.of(s) for s in subnets}, key=lambda s: s.cidr)
    check_ports(subs, ())
    if not subs:
        raise _bad("a DHCP server needs at least one subnet")
    if (not isinstance(lease_seconds, int) or isinstance(lease_seconds, bool)
            or not MIN_LEASE_SECONDS <= lease_seconds <= MAX_LEASE_SECONDS):
        raise _bad(f"lease time {lease_seconds!r} must be {MIN_LEASE_SECONDS}..{MAX_LEASE_SECONDS} s")
    for who in (user, group):
        if not isinstance(who, str) or not _USER_RE.fullmatch(who):
            raise _bad(f"bad user/group name {who!r}")
    p = DhcpPaths(*(_path(x) for x in (paths.conf, paths.hosts, paths.leases, paths.pid, paths.log)))
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
        if len(f) >= 3 and _MAC_RE.fullmatch(f[1].lower()):
            try:
                found.append((f[1].lower(), IPv4Address(f[2])))
            except ValueError:
                continue
    return found


def _hosts_pairs(hosts_text: str) -> set[tuple[str, IPv4Address]]:
    pairs = set()
    for line in hosts_text.splitlines():
        mac, ip = line.split(",")[:2]
        pairs.add((mac, IPv4Address(ip)))
    return pairs


def _write(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read()
    except (FileNotFoundError, UnicodeDecodeError):
        return None


def _pid_alive(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


@dataclass
class _Server:
    vni: int
    pid: int
    popen: Optional[subprocess.Popen] = None  # None when adopted after an agent restart

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None  # reaps it if it died
        return _pid_alive(self.pid)


class DhcpServers:
    """The DHCP servers of one host: at most one dnsmasq per VNI, in that VPC's router namespace.

    state_dir: where every VPC's files live (dnsmasq's user must be able to traverse it).
    router_netns: the host tag (names.router_netns(tag, vni)) or a callable vni -> namespace name;
    used when ensure() is not told the namespace.
    """

    def __init__(self, state_dir: Union[str, Path],
                 router_netns: Union[str, Callable[[int], str], None] = None, *,
                 dnsmasq: str = DNSMASQ, user: str = "dnsmasq",
                 lease_seconds: int = DEFAULT_LEASE_SECONDS, log_dhcp: bool = False,
                 start_timeout: float = 5.0, stop_timeout: float = 5.0):
        if not os.access(dnsmasq, os.X_OK):
            raise DhcpError("DhcpUnavailable", f"{dnsmasq} missing: apt-get install dnsmasq-base")
        self.dir = _path(Path(state_dir).absolute())
        self.dnsmasq = _path(dnsmasq)
        self._router_netns = router_netns
        self.lease_seconds = lease_seconds
        self.log_dhcp = log_dhcp
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            pw = pwd.getpwnam("nobody")
            log.warning("user %s missing, dnsmasq runs as nobody", user)
        self.user, self.group = pw.pw_name, grp.getgrgid(pw.pw_gid).gr_name
        os.makedirs(self.dir, mode=0o755, exist_ok=True)
        if pw.pw_uid != 0:
            self._check_traversable(pw.pw_uid, pw.pw_gid)
        self._servers: dict[int, _Server] = {}

    # -- public API -----------------------------------------------------------------------------

    def paths(self, vni: int) -> DhcpPaths:
        return DhcpPaths.for_vni(self.dir, vni)

    def netns_for(self, vni: int) -> str:
        rn = self._router_netns
        if rn is None:
            raise _bad("no router namespace given and no host tag/callable configured")
        ns = rn(vni) if callable(rn) else names.router_netns(rn, vni)
        return _netns(ns)

    def ensure(self, vni: int, router_netns: Optional[str] = None, iface: Optional[str] = None,
               subnets: Iterable[object] = (), ports: Iterable[object] = ()) -> str:
        """Make VNI's server serve exactly `ports` on `subnets`. Returns what it did: "started",
        "restarted", "reloaded" (hosts rewritten + SIGHUP) or "unchanged"."""
        vni = _vni(vni)
        ns = _netns(router_netns) if router_netns is not None else self.netns_for(vni)
        iface = _iface(iface if iface is not None else names.link_name("r", vni))
        paths = self.paths(vni)
        subnets = list(subnets)
        conf = render_config(vni, iface, subnets, paths, lease_seconds=self.lease_seconds,
                             user=self.user, group=self.group, log_dhcp=self.log_dhcp)
        hosts = render_hosts(subnets, ports)
        server = self._current(vni, ns)
        if server is not None and _read(paths.conf) == conf:
            if _read(paths.hosts) == hosts:
                return "unchanged"
            if not self._lease_conflict(paths, hosts):
                _write(paths.hosts, hosts)
                if self._reload(server, paths):
                    return "reloaded"
                server = None  # it exited under us: start a fresh one
        action = "started"
        if server is not None:
            self._stop(server)
            action = "restarted"
        _write(paths.conf, conf)
        _write(paths.hosts, hosts)
        self._prune_leases(paths, hosts)
        self._start(vni, ns, paths)
        return action

    def stop(self, vni: int) -> bool:
        """Stop VNI's server (files stay); True if one was running."""
        vni = _vni(vni)
        server = self._lookup(vni)
        if server is None:
            return False
        self._stop(server)
        return True

    def remove(self, vni: int) -> None:
        """Stop VNI's server and delete its files."""
        self.stop(vni)
        for p in vars(self.paths(vni)).values():
            for f in (p, f"{p}.tmp"):
                try:
                    os.unlink(f)
                except FileNotFoundError:
                    pass

    def stop_all(self) -> None:
        for vni in self.owned():
            self.stop(vni)

    def owned(self) -> list[int]:
        """VNIs with a running server (ours or adopted from a previous agent), sorted."""
        found = set()
        for vni in self._known_vnis():
            if self._lookup(vni) is not None:
                found.add(vni)
        return sorted(found)

    def pid(self, vni: int) -> Optional[int]:
        server = self._lookup(_vni(vni))
        return server.pid if server is not None else None

    # -- internals ------------------------------------------------------------------------------

    def _check_traversable(self, uid: int, gid: int) -> None:
        # dnsmasq re-reads the hosts file on SIGHUP after dropping privileges.
        p = Path(self.dir)
        for d in [p, *p.parents]:
            st = os.stat(d)
            mode = st.st_mode
            if not ((st.st_uid == uid and mode & stat.S_IXUSR) or (st.st_gid == gid and mode & stat.S_IXGRP)
                    or mode & stat.S_IXOTH):
                raise DhcpError("DhcpStateDirNotReadable",
                                f"{d} is not traversable by uid {uid}: dnsmasq could not re-read "
                                f"its hosts file; use a state dir others can traverse (0755)")

    def _known_vnis(self) -> set[int]:
        vnis = set(self._servers)
        try:
            entries = os.listdir(self.dir)
        except FileNotFoundError:
            entries = []
        for name in entries:
            m = re.fullmatch(r"([0-9a-f]{6})\.pid", name)
            if m:
                vnis.add(int(m.group(1), 16))
        return vnis

    def _cmdline(self, paths: DhcpPaths) -> list[str]:
        return [self.dnsmasq, f"--conf-file={paths.conf}", "--keep-in-foreground"]

    def _lookup(self, vni: int) -> Optional[_Server]:
        """VNI's live server: the child we started, else one adopted from its pid file. A dead
        child is reaped and forgotten."""
        server = self._servers.get(vni)
        if server is not None and not server.alive():
            log.warning("dnsmasq of VNI %d (pid %d) exited", vni, server.pid)
            self._servers.pop(vni, None)
            server = None
        return server if server is not None else self._adopt(vni)

    def _current(self, vni: int, ns: str) -> Optional[_Server]:
        """VNI's live server if it runs in namespace ns; one elsewhere is stopped."""
        server = self._lookup(vni)
        if server is not None and not _in_netns(server.pid, ns):
            self._stop(server)
            return None
        return server

    def _adopt(self, vni: int) -> Optional[_Server]:
        """A server left running by an earlier agent, found by its pid file and trusted only if
        its command line is exactly ours (same dnsmasq, same conf file) and it is alive."""
        paths = self.paths(vni)
        text = (_read(paths.pid) or "").strip()
        if not text.isdigit():
            return None
        pid = int(text)
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().rstrip(b"\0").split(b"\0")
        except (FileNotFoundError, ProcessLookupError):
            return None
        if [a.decode(errors="replace") for a in argv] != self._cmdline(paths) or not _pid_alive(pid):
            return None
        server = _Server(vni, pid)
        self._servers[vni] = server
        log.info("adopted dnsmasq of VNI %d (pid %d)", vni, pid)
        return server

    def _lease_conflict(self, paths: DhcpPaths, hosts: str) -> bool:
        """True if a configured address is leased to another MAC (dnsmasq would refuse it)."""
        owner = {ip: mac for mac, ip in _hosts_pairs(hosts)}
        for mac, ip in parse_leases(_read(paths.leases) or ""):
            if ip in owner and owner[ip] != mac:
                return True
        return False

    def _prune_leases(self, paths: DhcpPaths, hosts: str) -> None:
        text = _read(paths.leases)
        if not text:
            return
        keep = _hosts_pairs(hosts)
        lines = []
        for line in text.splitlines():
            f = line.split()
            if len(f) >= 3 and (f[1].lower(), _maybe_ip(f[2])) in keep:
                lines.append(line)
        _write(paths.leases, "".join(line + "\n" for line in lines))

    def _start(self, vni: int, ns: str, paths: DhcpPaths) -> None:
        try:
            os.unlink(paths.pid)
        except FileNotFoundError:
            pass
        offset = _size(paths.log)
        logf = os.open(paths.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            # `ip netns exec` execs dnsmasq in place: the child's pid is dnsmasq's.
            popen = subprocess.Popen(["ip", "netns", "exec", ns, *self._cmdline(paths)],
                                     stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
        finally:
            os.close(logf)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if popen.poll() is not None:
                raise DhcpError("DhcpStartFailed", f"dnsmasq for VNI {vni} in {ns} exited with "
                                f"{popen.returncode}: {_tail(paths.log, offset)}")
            pid_text = (_read(paths.pid) or "").strip()
            if pid_text == str(popen.pid):  # written once its sockets are bound
                break
            if time.monotonic() > deadline:
                _terminate(popen.pid, popen, self.stop_timeout)
                raise DhcpError("DhcpStartFailed", f"dnsmasq for VNI {vni} in {ns} not ready in "
                                f"{self.start_timeout:.0f} s: {_tail(paths.log, offset)}")
            time.sleep(0.02)
        self._servers[vni] = _Server(vni, popen.pid, popen)
        log.info("dnsmasq for VNI %d started in %s (pid %d)", vni, ns, popen.pid)

    def _reload(self, server: _Server, paths: DhcpPaths) -> bool:
        """SIGHUP: dnsmasq re-reads its hosts file. False if the process is gone."""
        offset = _size(paths.log)
        try:
            os.kill(server.pid, signal.SIGHUP)
        except ProcessLookupError:
            server.alive()  # reap
            self._servers.pop(server.vni, None)
            return False
        # SIGHUP is asynchronous: wait (bounded) for dnsmasq to log the re-read, so a caller
        # can rely on the new hosts once ensure() returns.
        needle = f"read {paths.hosts}"
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            if needle in _tail(paths.log, offset, limit=1 << 16):
                return True
            time.sleep(0.02)
        log.warning("dnsmasq of VNI %d did not confirm re-reading %s", server.vni, paths.hosts)
        return True

    def _stop(self, server: _Server) -> None:
        _terminate(server.pid, server.popen, self.stop_timeout)
        self._servers.pop(server.vni, None)
        try:
            os.unlink(self.paths(server.vni).pid)
        except FileNotFoundError:
            pass


def _netns(value: object) -> str:
    if not isinstance(value, str) or not _NETNS_RE.fullmatch(value):
        raise _bad(f"bad namespace name {value!r}")
    return value


def _in_netns(pid: int, ns: str) -> bool:
    """True if process pid lives in the named network namespace (same namespace inode)."""
    try:
        a, b = os.stat(f"/proc/{pid}/ns/net"), os.stat(f"/run/netns/{ns}")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _maybe_ip(text: str) -> Optional[IPv4Address]:
    try:
        return IPv4Address(text)
    except ValueError:
        return None


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _tail(path: str, offset: int, limit: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(limit).decode(errors="replace").strip()
    except FileNotFoundError:
        return ""


def _terminate(pid: int, popen: Optional[subprocess.Popen], timeout: float) -> None:
    """SIGTERM, then SIGKILL after timeout; our own child is reaped (no zombie left behind)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if popen is not None:
            if popen.poll() is not None:
                return
            popen.send_signal(sig)
            try:
                popen.wait(timeout)
                return
            except subprocess.TimeoutExpired:
                continue
        if not _pid_alive(pid):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                return
            time.sleep(0.02)
    if popen is not None:
        popen.wait(timeout)  # after SIGKILL
