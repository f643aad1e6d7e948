"""The host's security groups (contract extension "security-groups") as the agent enforces them:
the accepted NetworkSpec -> agent.firewall.model.HostFirewall (pure, `host_firewall`), and
FirewallSync, which keeps the kernel's `kumo` nft tables equal to it with the firewall applier.

Conversion (`host_firewall`):
- one PortFirewall per local port WITH security groups: tap = agent.libvirt.names.tap_name (the
  same name the dataplane and the domain use), bridge = the VPC's bridge kb-<vni hex6>, mac, ipv4
  = the port's address, zone = the VPC's VNI (the conntrack zone; the firewall allows 1..65535, a
  larger VNI with grouped ports is refused), group_ids = port.security_group_ids;
- every group of NetworkSpec.security_groups (its zone, rules and members as sent);
- tap_prefix = "tap" (every tap_name starts with it): a tap with that prefix that is NOT in the
  firewall gets nothing through the bridge (bridge-family drop, ARP and DHCP included). So a port
  WITHOUT groups is left out of `ports` and is fully isolated, as is a tap of an instance this
  host has no port for. (The contract's wording for a port without groups, "nothing but ARP/DHCP
  for its own address", is stricter here: not even ARP/DHCP.)
Invalid input raises agent.firewall.model.FirewallInputError (EC2-style `code`); NetworkService
calls this at accept() time, so a bad spec is answered 400 and changes nothing.

FirewallSync (one per NetworkService, used only by its thread):
- apply(fw): the first call on a fresh sync (agent start) is applier.setup(fw), which moves what
  is loaded to fw in place in one transaction: a restarting agent never opens anything (clear() is
  never called). Later calls: update(fw) when fw changed (incremental element deltas when the
  layout is the same), ensure() (verify + restore on drift) otherwise. A failed update falls back
  to setup(fw) once (it re-reads the kernel's ruleset).
- check(): ensure() only; the service calls it about every second, so `nft flush ruleset` in the
  host namespace is repaired within a couple of seconds.
- Backend: libnftables in process (LibNft) when the host namespace is the one this process runs
  in (the agent in production and in the lab runs inside it), else the nft CLI entered into the
  named namespace (Nft(netns=...), e.g. tests driving a private namespace from outside).
- br_netfilter: the `bridge kumo` table (anti-spoofing, unknown-tap drop) works without it, but
  the `inet kumo` table (conntrack zones, the groups' stateful rules) sees bridged guest traffic
  only when net.bridge.bridge-nf-call-iptables=1 in the host namespace. The sync checks that on
  its first apply and every NETFILTER_RECHECK seconds; when the sysctl exists but is 0 it sets it
  to 1 (a per-namespace sysctl of the host namespace); when it does not exist (br_netfilter not
  loaded: a machine-wide module the agent never loads) apply() raises FirewallNotEnforced, which
  the service reports in NetworkObserved.error (the rules are loaded all the same).
"""
from __future__ import annotations

import logging
import subprocess
import time
from typing import Any, Callable, Optional

from agent.contract.v1 import NetworkSpec, vpc_bridge
from agent.firewall.apply import FirewallApplier, FirewallApplyError
from agent.firewall.load import backend_for
from agent.firewall.model import FirewallInputError, HostFirewall, PortFirewall, Rule, SecurityGroup
from agent.libvirt.names import tap_name
from agent.netns import exec_argv, is_current

log = logging.getLogger(__name__)

#: Every agent.libvirt.names.tap_name starts with this.
TAP_PREFIX = "tap"
#: Seconds between checks of net.bridge.bridge-nf-call-iptables.
NETFILTER_RECHECK = 30.0
_BRNF = "/proc/sys/net/bridge/bridge-nf-call-iptables"


def host_firewall(spec: NetworkSpec) -> HostFirewall:
    """The HostFirewall of `spec` on this host (see the module docstring). Raises
    FirewallInputError."""
    groups: dict[str, SecurityGroup] = {}
    for g in spec.security_groups:
        if g.group_id in groups:
            raise FirewallInputError("InvalidParameterValue",
                                     f"security group {g.group_id} appears twice", field="group_id")
        rules = tuple(Rule(rule_id=r.rule_id, direction=r.direction, protocol=r.protocol,
                           from_port=r.from_port, to_port=r.to_port, icmp_type=r.icmp_type,
                           icmp_code=r.icmp_code, cidr=r.cidr, peer_group=r.peer_group)
                      for r in g.rules)
        groups[g.group_id] = SecurityGroup(group_id=g.group_id, zone=g.zone, rules=rules,
                                           members=frozenset(g.members))
    ports = []
    for v in spec.vpcs:
        for p in v.ports:
            if not p.security_group_ids:
                continue  # not in the firewall: its tap gets nothing through (tap_prefix)
            ports.append(PortFirewall(tap=tap_name(p.port_id, int(p.device[3:])),
                                      bridge=vpc_bridge(v.vni), mac=p.mac, ipv4=p.ip, zone=v.vni,
                                      group_ids=tuple(p.security_group_ids)))
    return HostFirewall(ports=tuple(ports), groups=groups, tap_prefix=TAP_PREFIX)


class FirewallNotEnforced(Exception):
    """The rules are loaded but bridged traffic bypasses the inet table (br_netfilter missing)."""

    code = "BridgeNetfilterUnavailable"
    retryable = True


#: LibNft in this process's namespace when that is the host's, else the nft CLI in `netns`.
default_backend = backend_for


class FirewallSync:
    """Keeps the host's `kumo` tables equal to the last HostFirewall given to apply().

    netns: the host namespace (`ip netns` name; None: this process's own). backend: a factory
    of the nft backend (default: default_backend(netns)), built lazily in the service thread.
    """

    def __init__(self, netns: Optional[str] = None, *,
                 backend: Optional[Callable[[], Any]] = None,
                 check_netfilter: bool = True, clock: Callable[[], float] = time.monotonic):
        self.netns = netns
        self._backend_factory = backend or (lambda: default_backend(netns))
        self._backend: Any = None
        self.applier: Optional[FirewallApplier] = None
        self.check_netfilter = check_netfilter
        self.clock = clock
        self._next_netfilter = 0.0
        self._netfilter_error: Optional[str] = None
        self.repairs = 0

    def _applier(self) -> FirewallApplier:
        if self.applier is None:
            self._backend = self._backend_factory()
            self.applier = FirewallApplier(self._backend)
        return self.applier

    def apply(self, fw: HostFirewall) -> str:
        """Make the kernel enforce `fw`; returns "setup", "update" or "ensure" (what ran).
        Raises FirewallApplyError (nothing changed) or FirewallNotEnforced (rules loaded)."""
        applier = self._applier()
        if applier.current is None:
            applier.setup(fw)
            what = "setup"
        elif applier.current != fw:
            try:
                applier.update(fw)
            except FirewallApplyError as e:
                log.warning("incremental firewall update failed (%s); replacing in full", e)
                applier.setup(fw)
            what = "update"
        else:
            self._ensure(applier)
            what = "ensure"
        self._netfilter()
        return what

    def check(self) -> None:
        """Verify the loaded tables and restore them on drift (no-op before the first apply)."""
        if self.applier is not None and self.applier.current is not None:
            self._ensure(self.applier)
            self._netfilter()

    def _ensure(self, applier: FirewallApplier) -> None:
        result = applier.ensure()
        if not result.ok:
            self.repairs += 1
            log.warning("firewall drift repaired: %s", "; ".join(result.differences[:5]))

    def _netfilter(self) -> None:
        if not self.check_netfilter:
            return
        now = self.clock()
        if now >= self._next_netfilter:
            self._next_netfilter = now + NETFILTER_RECHECK
            self._netfilter_error = self._bridge_netfilter()
        if self._netfilter_error:
            raise FirewallNotEnforced(self._netfilter_error)

    def _bridge_netfilter(self) -> Optional[str]:
        """None when bridged IPv4 traverses the inet hooks in the host namespace (enabling the
        per-namespace sysctl if needed), else why not."""
        value = self._sysctl(None)
        if value is None:
            return (f"{_BRNF} missing in {self.netns or 'the agent namespace'}: br_netfilter is "
                    "not loaded (modprobe br_netfilter), security groups are not enforced")
        if value == "1":
            return None
        log.warning("enabling net.bridge.bridge-nf-call-iptables in %s", self.netns or "(own)")
        self._sysctl("1")
        if self._sysctl(None) != "1":
            return "net.bridge.bridge-nf-call-iptables is 0 and could not be set: security groups " \
                   "are not enforced"
        return None

    def _sysctl(self, write: Optional[str]) -> Optional[str]:
        if is_current(self.netns):
            try:
                if write is not None:
                    with open(_BRNF, "w") as f:
                        f.write(write)
                    return write
                with open(_BRNF) as f:
                    return f.read().strip()
            except OSError:
                return None
        cmd = (["sysctl", "-qw", f"net.bridge.bridge-nf-call-iptables={write}"]
               if write is not None else ["cat", _BRNF])
        try:
            proc = subprocess.run(exec_argv(self.netns, cmd), capture_output=True, text=True,
                                  timeout=10, check=False)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    def close(self) -> None:
        close = getattr(self._backend, "close", None)
        if callable(close):
            try:
                close()
            except Exception as e:
                log.debug("closing the nft backend: %s", e)
        self._backend, self.applier = None, None
