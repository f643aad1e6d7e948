"""The named parts of the network service's pass (agent/network/service.py): the Subsystem type
every part is registered as, the PassContext they share, and the built-in firewall and DHCP
subsystems (the dataplane's pass lives in the service: it owns the dataplane and the underlay).

A subsystem turns its failures into an ErrorInfo (its status, reported in
NetworkObserved.subsystems); it never stops the others. The metadata server comes next as one
more Subsystem, its server run by agent/supervisor.py.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from agent.contract.v1 import ErrorInfo, NetworkSpec, SubsystemStatus
from agent.firewall.apply import FirewallApplyError
from agent.firewall.model import FirewallInputError
from agent.network.firewall_sync import FirewallNotEnforced
from agent.network.model import HostNetwork

log = logging.getLogger(__name__)


@dataclass
class PassContext:
    """What one pass's subsystems share: the spec, and what the dataplane made of it."""

    spec: NetworkSpec
    #: The HostNetwork the dataplane applied (None until it ran, or when it failed to build one).
    host: Optional[HostNetwork] = None
    #: Dataplane records that failed (NetworkObserved.failed).
    failed: int = 0


def _retryable(error: ErrorInfo) -> bool:
    return error.retryable


@dataclass
class Subsystem:
    """One named part of the network service's pass, and its status.

    run(ctx) applies it and returns the error to report (expected failures are returned, not
    raised; anything raised is reported as InternalError). needs_host: run only when the dataplane
    produced this pass's HostNetwork (else skipped: no error, applied_generation kept).
    prepare(host): called by the dataplane with the new HostNetwork before it changes the kernel
    (e.g. stop a server whose namespace is about to go). check(spec): the cheap verification run
    between passes (every firewall_interval); its error replaces the status's. quick_retry(error):
    whether that error wants the next pass soon (retry_interval) rather than at the resync.
    rank: position in NetworkObserved.error (lower first). close(): on NetworkService.stop().
    """

    name: str
    run: Callable[[PassContext], Optional[ErrorInfo]]
    needs_host: bool = False
    prepare: Optional[Callable[[HostNetwork], None]] = None
    check: Optional[Callable[[NetworkSpec], Optional[ErrorInfo]]] = None
    quick_retry: Callable[[ErrorInfo], bool] = _retryable
    rank: int = 10
    close: Optional[Callable[[], None]] = None
    #: Status: the last pass's (or check's) error, and the last generation applied in full.
    error: Optional[ErrorInfo] = field(default=None, compare=False)
    applied_generation: int = field(default=0, compare=False)

    def status(self) -> SubsystemStatus:
        return SubsystemStatus(name=self.name, ok=self.error is None, error=self.error,
                               applied_generation=self.applied_generation)


def firewall_subsystem(firewall: Any, host_firewall: Callable[[NetworkSpec], Any]) -> Subsystem:
    """"firewall": apply(HostFirewall of the spec) each pass, check() between passes.

    firewall: FirewallSync or FakeFirewall (apply, check, close); host_firewall(spec): the spec's
    HostFirewall (the service caches the conversion accept() made)."""

    def run(spec: NetworkSpec, check_only: bool = False) -> Optional[ErrorInfo]:
        try:
            if check_only:
                firewall.check()
            else:
                firewall.apply(host_firewall(spec))
            return None
        except FirewallInputError as e:  # accept() validated it: only a spec saved by hand
            return ErrorInfo(code="InvalidNetworkSpec", message=f"security groups: {e}",
                             retryable=False)
        except FirewallNotEnforced as e:
            return ErrorInfo(code=e.code, message=str(e), retryable=True)
        except FirewallApplyError as e:
            return ErrorInfo(code="FirewallApplyFailed", message=str(e)[:2000], retryable=True)
        except Exception as e:
            log.exception("firewall pass failed")
            try:
                firewall.close()  # a fresh backend next time (setup re-reads the kernel)
            except Exception:
                pass
            return ErrorInfo(code="FirewallApplyFailed", message=f"{type(e).__name__}: {e}",
                             retryable=True)

    return Subsystem("firewall", lambda ctx: run(ctx.spec),
                     check=lambda spec: run(spec, check_only=True), rank=1,
                     close=getattr(firewall, "close", None))


def dhcp_subsystem(dhcp: Any) -> Subsystem:
    """"dhcp": DhcpSync.prune(host) before the dataplane (servers of VPCs gone), ensure(host)
    after it (the router namespaces exist by then); the first VPC's error is reported."""

    def prune(host: HostNetwork) -> None:
        for vni, e in dhcp.prune(host):
            log.warning("stopping DHCP servers: %s", e)

    def run(ctx: PassContext) -> Optional[ErrorInfo]:
        errors = dhcp.ensure(ctx.host)
        if not errors:
            return None
        vni, e = errors[0]
        code = getattr(e, "code", None) or "DhcpFailed"
        where = f" of VNI {vni}" if vni else ""
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return ErrorInfo(code=code, message=f"DHCP server{where}: {e}{more}", retryable=True)

    return Subsystem("dhcp", run, needs_host=True, prepare=prune, rank=2,
                     close=getattr(dhcp, "close", None))
