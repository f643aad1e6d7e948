"""Dataplane: the idempotent applier of a HostNetwork on one host (plan / ensure / teardown).

ensure() diffs the desired records against what the host carries and applies only the
difference, so unchanged VPCs, ports and flows are never touched. It removes whatever carries
Kumo's names and is no longer desired. "What the host carries" is read from the kernel on the
first call, after any failure and at least every resync_seconds (drift repair); in between, a
change is diffed against the last applied state, which makes a one-port change or an elastic IP
move a few milliseconds of work instead of a full read (see bench/RESULTS.md, dataplane).
One record failing does not stop the others (e.g. a tap libvirt has not created yet); the
failures are returned (EnsureResult.failed) and retried by the next ensure().

NAT gateways' last counts (issue 13): a NAT gateway's counter is read one last time when the
dataplane stops feeding it, and handed to `on_nat_final` ({gateway id: bytes}; the
NetworkService persists it in agent.network.nat_finals and reports it until delivered) before
the counter can go: (1) right after a NAT table load of a router namespace that dropped a
gateway's counter from the table (or whose previous table is unknown: agent start), every
counter there of a gateway this host no longer holds (the load removed its counting rules, so
the value is exact) is read, handed over, then deleted; (2) before a router namespace is removed (ensure or
teardown), its forward chain is sealed (counters stop, nothing crosses), then its counters are
read and handed over. A failed read is logged; the namespace goes anyway (never block a
teardown on billing).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from agent.firewall import load
from agent.firewall.load import FirewallApplyError
from agent.network import names, nat
from agent.network.desired import host_records
from agent.network.diff import Plan, diff
from agent.network.model import HostNetwork
from agent.network.garp import send_garp
from agent.network.netlink import Kernel, NetlinkOpError
from agent.network.records import HOST, Netns, NftTable, ProxyNeigh, Record, Sysctl

log = logging.getLogger(__name__)


class DataplaneError(Exception):
    """code is a stable name: RootNamespaceRefused, DataplaneApplyFailed."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class EnsureResult:
    plan: Plan
    failed: list[tuple[Record, str]] = field(default_factory=list)
    seconds: float = 0.0
    full_read: bool = True

    @property
    def ok(self) -> bool:
        return not self.failed

    def raise_for_failures(self) -> None:
        if self.failed:
            rec, detail = self.failed[0]
            raise DataplaneError("DataplaneApplyFailed",
                                 f"{len(self.failed)} dataplane changes failed, first: {rec}: {detail}")


def _counters(payload: str) -> set[str]:
    """Names of the named counters a NAT table payload declares."""
    try:
        return {name for kind, _f, name in load.declared(json.loads(payload)) if kind == "counter"}
    except (ValueError, KeyError, TypeError):
        return {"?"}  # unparsable: read to be safe


def local_nat_gateways(host: HostNetwork) -> frozenset:
    """Ids of the NAT gateways `host` places on this host."""
    return frozenset(v.nat_gateway.nat_gateway_id for v in host.vpcs
                     if v.nat_gateway is not None
                     and v.nat_gateway.host_underlay_ip == host.underlay_ip)


class Dataplane:
    """The VPC dataplane of one host.

    netns: the host's namespace name (the lab), or None for this process's own namespace, which
    is refused unless allow_own_namespace=True (a production host, where that IS the host).
    host_tag: distinguishes this host's VPC router namespaces from other hosts' on one machine.
    """

    def __init__(self, netns: Optional[str], host_tag: Optional[str] = None,
                 allow_own_namespace: bool = False, resync_seconds: float = 30.0,
                 kernel: Optional[Kernel] = None,
                 nat_loader: Optional[Callable[[Optional[str], str], None]] = None,
                 nat_io: Optional[nat.CounterIO] = None):
        if netns is None and not allow_own_namespace:
            raise DataplaneError("RootNamespaceRefused",
                                 "refusing to program this process's own namespace")
        self.netns = netns
        self.host_tag = host_tag or netns or "kumo"
        names.router_netns(self.host_tag, 1)  # validates the tag
        self.kernel = kernel if kernel is not None else Kernel(netns)
        # NAT tables go through the agent's one nft loader (in place, atomic: agent.network.nat);
        # an injected kernel (tests) receives them as records unless a loader is injected too.
        self.nat_loader = nat_loader if nat_loader is not None or kernel is not None else nat.load_table
        #: Reads/seals/drops NAT counters for final values (None: no final values, e.g. tests
        #: with an injected kernel and no nat_io).
        self.nat_io = nat_io if nat_io is not None or kernel is not None else nat.CounterIO()
        #: Called with {gateway id: bytes} final counters (must persist them before returning).
        self.on_nat_final: Optional[Callable[[dict[str, int]], None]] = None
        #: Last payload loaded per namespace: nft tables and sysctls are write-only state.
        self._applied: set[Record] = set()
        #: Desired records of the last ensure that applied without failure, and when the kernel
        #: was last read in full. Between full reads a change is diffed against what we applied
        #: (milliseconds); a full read (hundreds of ms with 200 ports: pyroute2 parsing) repairs
        #: drift at least every resync_seconds, after any failure, and on the first ensure.
        self._last: Optional[set[Record]] = None
        self._last_full = float("-inf")
        self.resync_seconds = resync_seconds

    def close(self) -> None:
        self.kernel.close()

    def __enter__(self) -> "Dataplane":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plan ------------------------------------------------------------------------------
    def observe(self, host: HostNetwork) -> set[Record]:
        rns = self.kernel.list_router_netns(self.host_tag)
        observed = self.kernel.observe(host.underlay_dev, rns)
        live_ns = {HOST} | set(rns)
        # Write-only records count as present only if we applied them to a namespace that still
        # exists (a recreated namespace starts from defaults).
        observed |= {r for r in self._applied if r.ns in live_ns}
        return observed

    def plan(self, host: HostNetwork) -> Plan:
        """What ensure() would do after a full read of the kernel (never the fast path)."""
        return diff(host_records(host, self.host_tag), self.observe(host))

    # -- ensure ----------------------------------------------------------------------------
    def ensure(self, host: HostNetwork, full: Optional[bool] = None) -> EnsureResult:
        """Make the host carry `host`. full=True reads the kernel (repairs drift), False diffs
        against the last applied state, None (default) reads it when a resync is due."""
        t0 = time.monotonic()
        want = host_records(host, self.host_tag)
        if full is None:
            full = self._last is None or t0 - self._last_full >= self.resync_seconds
        if full or self._last is None:
            observed = self.observe(host)
            self._last_full = t0
        else:
            observed = self._last
        plan = diff(want, observed)
        result = EnsureResult(plan)
        self._local_nat = local_nat_gateways(host)
        for rec in plan.remove:
            if isinstance(rec, Netns):
                self._final_counts(rec.name, seal=True)
            self._do(rec, add=False, result=result)
        # Sysctls of one namespace in one process.
        sysctls: dict[str, list[Sysctl]] = {}
        for rec in plan.add:
            if isinstance(rec, Sysctl):
                sysctls.setdefault(rec.ns, []).append(rec)
        done_sysctl: set[str] = set()
        for rec in plan.add:
            if isinstance(rec, Sysctl):
                if rec.ns in done_sysctl:
                    continue
                done_sysctl.add(rec.ns)
                batch = sysctls[rec.ns]
                try:
                    self.kernel.set_sysctls(rec.ns, [(r.key, r.value) for r in batch])
                    self._applied |= set(batch)
                except NetlinkOpError as e:
                    result.failed.extend((r, e.detail) for r in batch)
                continue
            self._do(rec, add=True, result=result)
        self._announce(host, plan, result)
        self._last = None if result.failed else want
        result.full_read = full
        result.seconds = time.monotonic() - t0
        if result.failed:
            log.warning("dataplane: %d records failed: %s", len(result.failed), result.failed[:5])
        return result

    def _announce(self, host: HostNetwork, plan: Plan, result: EnsureResult) -> None:
        """Gratuitous ARP for public IPs this host just started answering for."""
        failed = {r for r, _ in result.failed}
        ips = [r.ip for r in plan.add if isinstance(r, ProxyNeigh) and r not in failed]
        if not ips:
            return
        try:
            mac = self.kernel.link_mac(HOST, host.underlay_dev)
            send_garp(self.netns, host.underlay_dev, mac, ips)
        except (OSError, NetlinkOpError) as e:
            # Not fatal: the outside router re-resolves the address when its entry expires.
            log.warning("dataplane: gratuitous ARP for %s failed: %s", ips, e)

    def _do(self, rec: Record, add: bool, result: EnsureResult) -> None:
        try:
            if add:
                if isinstance(rec, NftTable) and self.nat_loader is not None:
                    self.nat_loader(self.netns if rec.ns == HOST else rec.ns, rec.payload)
                else:
                    self.kernel.add(rec)
                if isinstance(rec, NftTable):
                    old = [r for r in self._applied if isinstance(r, NftTable) and r.ns == rec.ns]
                    self._applied = {r for r in self._applied
                                     if not (isinstance(r, NftTable) and r.ns == rec.ns)}
                    self._applied.add(rec)
                    # A read only when a counter may have stopped being fed: a gateway's counter
                    # left the table, or nothing is known of what was loaded before (agent
                    # start, namespace made again): an elastic IP move pays no nft read.
                    if rec.ns != HOST and (not old or _counters(old[0].payload)
                                           - _counters(rec.payload)):
                        self._final_counts(rec.ns, seal=False)
            else:
                self.kernel.remove(rec)
                if isinstance(rec, Netns):
                    self._applied = {r for r in self._applied if r.ns != rec.name}
        except NetlinkOpError as e:
            result.failed.append((rec, e.detail))
        except FirewallApplyError as e:  # nft refused the NAT table: nothing changed
            result.failed.append((rec, str(e)))

    # -- NAT gateway counters -----------------------------------------------------------------
    _local_nat: frozenset = frozenset()

    def _final_counts(self, netns: str, seal: bool) -> None:
        """Hand the counters in `netns` of gateways not held here (self._local_nat) to
        on_nat_final (see the module docstring). seal: the namespace is about to be removed."""
        io, sink = self.nat_io, self.on_nat_final
        if io is None or sink is None:
            return
        if seal:
            try:
                io.seal(netns)
            except (FirewallApplyError, OSError) as e:  # no NAT table there: nothing to count
                log.debug("sealing %s: %s", netns, e)
        try:
            found = io.read(netns)
        except (FirewallApplyError, OSError, ValueError) as e:
            log.warning("final NAT counters of %s unread: %s", netns, e)
            return
        gone = {k: v for k, v in found.items() if seal or k not in self._local_nat}
        if not gone:
            return
        sink(gone)  # persisted: the counters may go now
        log.info("final NAT counters of %s: %s", netns, gone)
        if not seal:
            try:
                io.drop(netns, gone)
            except (FirewallApplyError, OSError, ValueError) as e:
                # Read again at the next load: the same value, which bills nothing twice.
                log.warning("stale NAT counters of %s kept: %s", netns, e)

    def nat_counters(self, host: HostNetwork,
                     reader: Optional[Callable[[str], dict[str, int]]] = None) -> dict[str, int]:
        """{NAT gateway id: bytes forwarded} of the NAT gateways `host` places here, read from
        their router namespaces' named counters (agent.network.nat). A namespace that cannot be
        read (not made yet, nft failing) is left out: the counts are cumulative, the next read
        has everything."""
        read = reader or nat.read_counters
        out: dict[str, int] = {}
        for vpc in host.vpcs:
            ng = vpc.nat_gateway
            if ng is None or ng.host_underlay_ip != host.underlay_ip:
                continue
            try:
                found = read(names.router_netns(self.host_tag, vpc.vni))
            except (FirewallApplyError, OSError, ValueError) as e:
                log.debug("NAT counters of %s: %s", vpc.vpc_id, e)
                continue
            if ng.nat_gateway_id in found:
                out[ng.nat_gateway_id] = found[ng.nat_gateway_id]
        return out

    # -- teardown --------------------------------------------------------------------------
    def teardown(self, underlay_dev: str) -> EnsureResult:
        """Remove everything Kumo's dataplane owns on this host: router namespaces, owned links,
        public routes and proxy ARP entries on the uplink. Guest taps are left to their owner
        (they only lose their bridge); host sysctls stay."""
        t0 = time.monotonic()
        rns = self.kernel.list_router_netns(self.host_tag)
        observed = self.kernel.observe(underlay_dev, rns)
        keep = {r for r in observed if isinstance(r, Sysctl)}
        plan = diff(keep, observed)
        result = EnsureResult(plan)
        for rec in plan.remove:
            if isinstance(rec, Netns):
                self._final_counts(rec.name, seal=True)
            self._do(rec, add=False, result=result)
        self._applied = {r for r in self._applied if r.ns == HOST}
        self._last = None
        result.seconds = time.monotonic() - t0
        return result
