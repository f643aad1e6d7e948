"""Fixed-lease DHCP for the VPCs of one host, driven by NetworkService (agent.network.dhcp does the
work: one dnsmasq per VPC in its router namespace `<host tag>-kvr-<vni hex6>`, bound to
kr-<vni hex6>, serving only this host's ports).

- prune(host) (before the dataplane pass): stops and removes the servers of VPCs the host no
  longer serves, so a router namespace the dataplane is about to delete has no dnsmasq left in it.
- ensure(host) (after the dataplane pass, when the router namespaces and kr- links exist): one
  DhcpServers.ensure per VPC that has at least one subnet and one LOCAL port (a VPC with no local
  port here needs no server: every other host answers only its own guests). Errors are collected
  per VPC, never raised: the other VPCs still get theirs.
- Servers outlive the agent (stop() of the service leaves them) and a restarted agent adopts them
  (DhcpServers finds them through agent/supervisor.py: pid file and command line).
- NetworkService runs this as its "dhcp" subsystem (agent.network.subsystems.dhcp_subsystem).

Files live in <agent state_dir>/dhcp (0755). dnsmasq drops privileges to `user` (default
"dnsmasq") and must traverse that path to re-read its hosts file on SIGHUP: DhcpServers checks it
up front and answers DhcpStateDirNotReadable otherwise, which the service reports in
NetworkObserved.error (the agent's default /var/lib/kumo/agent and the lab's
/var/lib/kumo/lab/hosts/<h>/agent are traversable; a state dir under a 0700 directory is not:
choose another state dir, or KUMO_AGENT_DHCP_USER=root to keep dnsmasq as root).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Optional

from agent.network import names
from agent.network.dhcp import DhcpError, DhcpServers
from agent.network.model import HostNetwork, VpcNet

log = logging.getLogger(__name__)


class DhcpSync:
    """The DHCP servers NetworkService keeps equal to the VPCs (and local ports) of its spec."""

    def __init__(self, directory: Path, host_tag: str, *, user: str = "dnsmasq",
                 factory: Optional[Callable[[], Any]] = None):
        self.directory = Path(directory)
        self.host_tag = host_tag
        self.user = user
        self._factory = factory or (lambda: DhcpServers(self.directory, host_tag, user=user))
        self._servers: Any = None

    def servers(self) -> Any:
        if self._servers is None:
            self._servers = self._factory()
        return self._servers

    @staticmethod
    def wanted(host: Optional[HostNetwork]) -> dict[int, VpcNet]:
        if host is None:
            return {}
        return {v.vni: v for v in host.vpcs if v.subnets and v.ports}

    def prune(self, host: Optional[HostNetwork]) -> list[tuple[int, Exception]]:
        """Stop and remove servers of VPCs `host` does not need (all of them for None)."""
        errors: list[tuple[int, Exception]] = []
        want = self.wanted(host)
        try:
            servers = self.servers()
            for vni in servers.owned():
                if vni not in want:
                    log.info("stopping the DHCP server of VNI %d", vni)
                    servers.remove(vni)
        except (DhcpError, OSError) as e:
            errors.append((0, e))
        return errors

    def ensure(self, host: HostNetwork) -> list[tuple[int, Exception]]:
        """Make every wanted VPC's server serve exactly its local ports; (vni, error) pairs."""
        errors: list[tuple[int, Exception]] = []
        try:
            servers = self.servers()
        except (DhcpError, OSError) as e:
            return [(0, e)]
        for vni, vpc in sorted(self.wanted(host).items()):
            try:
                what = servers.ensure(vni, names.router_netns(self.host_tag, vni),
                                      names.link_name("r", vni), vpc.subnets, vpc.ports)
                if what != "unchanged":
                    log.info("DHCP server of VNI %d %s", vni, what)
            except (DhcpError, OSError, ValueError) as e:
                errors.append((vni, e))
        return errors

    def pids(self) -> dict[int, int]:
        """Running servers: VNI -> pid."""
        servers = self.servers()
        return {vni: pid for vni in servers.owned() if (pid := servers.pid(vni)) is not None}

    def close(self) -> None:
        """Nothing to release: servers keep running for the guests (adopted on restart)."""
