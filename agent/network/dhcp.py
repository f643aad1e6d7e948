"""DHCP with fixed leases for VPC guests: DhcpServers keeps one dnsmasq per VPC router namespace
serving exactly the configuration agent/network/dhcp_render.py renders (re-exported here, with
its rationale: why every host runs its own server, dhcp-ignore, dhcp-broadcast, leases).

What a server change costs: the same config and hosts file: nothing; only the hosts file changed:
a rewrite plus SIGHUP (waited for until dnsmasq logs the re-read); an address moving to another
MAC, a config change or a server in the wrong namespace: a restart with the lease file pruned to
the configured (mac, ip) pairs (dnsmasq refuses an address its lease database gives another MAC).

Process tracking is agent/supervisor.py's: dnsmasq runs in the foreground (--keep-in-foreground)
as our child, entered into the router namespace (agent.netns.exec_argv: the child's pid is
dnsmasq's), and is reaped by us; it writes its pid file once its sockets are bound, which is the
readiness signal. It drops privileges to `user`, which must be able to traverse the state dir to
re-read the hosts file on SIGHUP (checked up front). After an agent restart a running server is
found by its pid file and trusted only if /proc/<pid>/cmdline is exactly ours; one that is not in
the expected namespace (deleted and re-created under it) is stopped and started again. A server
that keeps dying is restarted with the supervisor's backoff (DhcpStartFailed meanwhile).
"""
from __future__ import annotations

import dataclasses
import grp
import logging
import os
import pwd
import re
import signal
import stat
import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

from agent.network import names
from agent.network.dhcp_render import (
    DEFAULT_LEASE_SECONDS, DNSMASQ, MAX_LEASE_SECONDS, MIN_LEASE_SECONDS, DhcpError, DhcpPaths,
    DhcpPort, DhcpSubnet, check_ports, hosts_pairs, invalid, parse_leases, render_config,
    render_hosts, valid_hostname, valid_iface, valid_mac, valid_netns, valid_path, valid_vni)
from agent.supervisor import (ChildSpec, Supervised, SupervisorError, file_size, read_tail,
                              read_text)

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_LEASE_SECONDS", "DNSMASQ", "MAX_LEASE_SECONDS", "MIN_LEASE_SECONDS", "DhcpError",
    "DhcpPaths", "DhcpPort", "DhcpServers", "DhcpSubnet", "check_ports", "parse_leases",
    "render_config", "render_hosts", "valid_hostname", "valid_mac",
]


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
        self.dir = valid_path(Path(state_dir).absolute())
        self.dnsmasq = valid_path(dnsmasq)
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
        self._servers: dict[int, Supervised] = {}

    # -- public API -----------------------------------------------------------------------------

    def paths(self, vni: int) -> DhcpPaths:
        return DhcpPaths.for_vni(self.dir, vni)

    def netns_for(self, vni: int) -> str:
        rn = self._router_netns
        if rn is None:
            raise invalid("no router namespace given and no host tag/callable configured")
        ns = rn(vni) if callable(rn) else names.router_netns(rn, vni)
        return valid_netns(ns)

    def ensure(self, vni: int, router_netns: Optional[str] = None, iface: Optional[str] = None,
               subnets: Iterable[object] = (), ports: Iterable[object] = ()) -> str:
        """Make VNI's server serve exactly `ports` on `subnets`. Returns what it did: "started",
        "restarted", "reloaded" (hosts rewritten + SIGHUP) or "unchanged"."""
        vni = valid_vni(vni)
        ns = valid_netns(router_netns) if router_netns is not None else self.netns_for(vni)
        iface = valid_iface(iface if iface is not None else names.link_name("r", vni))
        paths = self.paths(vni)
        subnets = list(subnets)
        conf = render_config(vni, iface, subnets, paths, lease_seconds=self.lease_seconds,
                             user=self.user, group=self.group, log_dhcp=self.log_dhcp)
        hosts = render_hosts(subnets, ports)
        server = self._current(vni, ns)
        same_conf, same_hosts = read_text(paths.conf) == conf, read_text(paths.hosts) == hosts
        if server is not None and same_conf:
            if same_hosts:
                return "unchanged"
            if not self._lease_conflict(paths, hosts):
                _write(paths.hosts, hosts)
                if self._reload(server, paths):
                    return "reloaded"
                server = None  # it exited under us: start a fresh one
        action = "started"
        if server is not None:
            server.stop()
            action = "restarted"
        if not (same_conf and same_hosts):
            self._server(vni).reset_backoff()  # a new configuration deserves a prompt try
        _write(paths.conf, conf)
        _write(paths.hosts, hosts)
        self._prune_leases(paths, hosts)
        try:
            self._server(vni).start()
        except SupervisorError as e:
            raise DhcpError("DhcpStartFailed", str(e)) from None
        return action

    def stop(self, vni: int) -> bool:
        """Stop VNI's server (files stay); True if one was running."""
        return self._server(valid_vni(vni)).stop()

    def remove(self, vni: int) -> None:
        """Stop VNI's server and delete its files."""
        self.stop(vni)
        self._servers.pop(vni, None)
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
        return sorted(vni for vni in self._known_vnis() if self._server(vni).pid() is not None)

    def pid(self, vni: int) -> Optional[int]:
        return self._server(valid_vni(vni)).pid()

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

    def _server(self, vni: int, ns: Optional[str] = None) -> Supervised:
        """VNI's supervised dnsmasq (tracking our child or adopting an earlier agent's); with
        `ns`, the namespace it must run in from now on."""
        server = self._servers.get(vni)
        if server is None:
            paths = self.paths(vni)
            argv = (self.dnsmasq, f"--conf-file={paths.conf}", "--keep-in-foreground")
            spec = ChildSpec(name=f"dnsmasq of VNI {vni}", argv=argv,
                             pid_file=paths.pid, log_file=paths.log, child_writes_pid_file=True)
            server = self._servers[vni] = Supervised(spec, start_timeout=self.start_timeout,
                                                     stop_timeout=self.stop_timeout)
        if ns is not None and server.spec.netns != ns:
            server.spec = dataclasses.replace(server.spec, netns=ns,
                                              name=f"dnsmasq for VNI {vni} in {ns}")
        return server

    def _current(self, vni: int, ns: str) -> Optional[Supervised]:
        """VNI's server if it runs in namespace ns; one elsewhere is stopped."""
        server = self._server(vni, ns)
        if server.pid() is None:
            return None
        if not server.in_place():
            server.stop()
            return None
        return server

    def _lease_conflict(self, paths: DhcpPaths, hosts: str) -> bool:
        """True if a configured address is leased to another MAC (dnsmasq would refuse it)."""
        owner = {ip: mac for mac, ip in hosts_pairs(hosts)}
        for mac, ip in parse_leases(read_text(paths.leases) or ""):
            if ip in owner and owner[ip] != mac:
                return True
        return False

    def _prune_leases(self, paths: DhcpPaths, hosts: str) -> None:
        text = read_text(paths.leases)
        if not text:
            return
        keep = hosts_pairs(hosts)
        lines = []
        for line in text.splitlines():
            f = line.split()
            if len(f) >= 3 and (f[1].lower(), _maybe_ip(f[2])) in keep:
                lines.append(line)
        _write(paths.leases, "".join(line + "\n" for line in lines))

    def _reload(self, server: Supervised, paths: DhcpPaths) -> bool:
        """SIGHUP: dnsmasq re-reads its hosts file. False if the process is gone."""
        offset = file_size(paths.log)
        if not server.signal(signal.SIGHUP):
            return False
        # SIGHUP is asynchronous: wait (bounded) for dnsmasq to log the re-read, so a caller
        # can rely on the new hosts once ensure() returns.
        needle = f"read {paths.hosts}"
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            if needle in read_tail(paths.log, offset, limit=1 << 16):
                return True
            time.sleep(0.02)
        log.warning("%s did not confirm re-reading %s", server.spec.name, paths.hosts)
        return True


def _write(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _maybe_ip(text: str) -> Optional[IPv4Address]:
    try:
        return IPv4Address(text)
    except ValueError:
        return None
