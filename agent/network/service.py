"""NetworkService: the host's accepted VPC NetworkSpec (contract extension "vpc-network") and the
background thread that keeps the VPC dataplane (agent.network.Dataplane) equal to it.

- accept(spec) applies the generation rules (lower: StaleGeneration; same generation with other
  content: IdempotentParameterMismatch; same content: no-op), validates the spec by converting it
  into a HostNetwork, persists it atomically under <state_dir>/network/spec.json and kicks the
  thread. A restarted agent reloads that file and rebuilds the dataplane without the controller.
- The thread runs Dataplane.ensure() right after a kick, every second while records fail and at
  least every resync_interval otherwise (the Dataplane reads the kernel in full only every
  KERNEL_RESYNC seconds; between, a pass costs milliseconds). Failures that are only guest taps
  not created yet (instances not started: error code WaitingForTaps) wait for the resync.
  It records NetworkObserved and calls on_change (the heartbeat's kick) when that changes.
  Nothing it raises stops it.
- Before any spec was ever accepted the dataplane is left alone: an agent that lost its state
  never tears down a host's networks; the controller's first PUT decides.

Tap names come from agent.libvirt.names.tap_name(port_id, N) for device ethN: the name the
instance's libvirt domain gives its tap (NIC at position N of InstanceSpec.nics).

Security groups and DHCP (extension security-groups; optional `firewall` and `dhcp` objects, see
agent.network.firewall_sync and agent.network.dhcp_sync). accept() also converts the spec into a
HostFirewall, so invalid rules are refused (400 with the firewall's code, e.g.
InvalidPermission.Malformed) before anything is persisted.

Subsystems: a pass runs a registry of named `Subsystem`s in order, each with its own status
(NetworkObserved.subsystems). The built-in ones, in this order: "firewall" (first pass after
start: setup; a changed spec: update; else verify/restore), so a new port's rules are in place
before its tap joins the bridge; "dataplane" (Dataplane.ensure; first, every subsystem's
`prepare` hook sees the new HostNetwork: DHCP servers of VPCs no longer carried are stopped
before their router namespaces go); "dhcp" (each carried VPC's server, its router namespace
exists by then; needs the dataplane's HostNetwork, so it is skipped when that failed). More are
added with register() (the metadata server next). Between passes the subsystems with a `check`
(the firewall) are verified every `firewall_interval` seconds (drift, e.g. `nft flush ruleset`,
is restored within that). A failure is that subsystem's status (FirewallApplyFailed,
BridgeNetfilterUnavailable, Dhcp*; retryable) and never stops the others; NetworkObserved.error
is the first one (wire.combine_errors, by `rank`: dataplane, firewall, the others) and
applied_generation needs every subsystem to succeed.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Callable, Optional

from agent.contract.generations import GenerationConflict, is_resend
from agent.contract.v1 import ErrorInfo, NatProcessed, NetworkObserved, NetworkSpec
from agent.fsutil import atomic_write
from agent.firewall.model import FirewallInputError
from agent.network.apply import DataplaneError
from agent.network.firewall_sync import host_firewall
from agent.network.subsystems import PassContext, Subsystem, dhcp_subsystem, firewall_subsystem
from agent.network.wire import (NetworkSpecRejected, combine_errors, failure_info, host_network,
                                model_port_id, nic_index)
from agent.network.host import Underlay, UnderlayError
from agent.network.nat_finals import NatFinals

log = logging.getLogger(__name__)

#: Seconds between full kernel reads of the Dataplane (drift repair); passes in between diff
#: against what was applied.
KERNEL_RESYNC = 30.0
#: Seconds between passes while records fail.
RETRY_INTERVAL = 1.0
#: Seconds between verifications of the firewall (restore after drift).
FIREWALL_INTERVAL = 1.0
#: Placeholder underlay used only to validate a spec before the real one is known.
_UNKNOWN_UNDERLAY = IPv4Address("0.0.0.0")


# Wire -> model conversion and error summaries live in agent.network.wire (re-exported here).
__all__ = ["NetworkService", "NetworkSpecRejected", "PassContext", "Subsystem", "host_network",
           "model_port_id", "nic_index"]


# -- the service -------------------------------------------------------------------------------

class NetworkService:
    """The accepted NetworkSpec, its persistence, and the thread applying it.

    dataplane: an object with ensure(HostNetwork) -> result(.ok, .failed) and close(), or a
    zero-argument factory building one (called in the thread; its DataplaneError is reported).
    underlay: returns this host's Underlay (may raise UnderlayError; retried).
    link_up: link_up(name) -> bool, whether a link exists and is up in the host's namespace.
    firewall: None, or an object with apply(HostFirewall), check() and close() (FirewallSync,
    FakeFirewall). dhcp: None, or a DhcpSync (prune(host), ensure(host) -> [(vni, error)]).
    Each present part becomes a Subsystem ("firewall", "dataplane", "dhcp"); register() adds more.
    """

    def __init__(self, state_dir: Path, *, dataplane: Any, underlay: Callable[[], Underlay],
                 link_up: Callable[[str], bool],
                 resync_interval: float = 5.0, retry_interval: float = RETRY_INTERVAL,
                 on_change: Optional[Callable[[], None]] = None,
                 clock: Callable[[], float] = time.time,
                 firewall: Any = None, dhcp: Any = None,
                 firewall_interval: float = FIREWALL_INTERVAL):
        self.path = Path(state_dir) / "network" / "spec.json"
        if callable(dataplane) and not hasattr(dataplane, "ensure"):
            self._factory, self._dp = dataplane, None
        else:
            self._factory, self._dp = None, dataplane
        self._underlay_fn = underlay
        self._underlay: Optional[Underlay] = None
        self._underlay_error: Optional[Exception] = None
        self.link_up = link_up
        self.resync_interval = resync_interval
        self.retry_interval = retry_interval
        self.on_change = on_change
        self.clock = clock
        self.firewall, self.dhcp = firewall, dhcp
        self.firewall_interval = firewall_interval
        self._fw_cache: tuple[Any, Any] = (None, None)  # (spec, its HostFirewall)
        self._failed = 0  # failed dataplane records of the last full pass
        self.passes = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._spec: Optional[NetworkSpec] = self._load()
        #: Last counts of NAT gateways that left this host, reported until delivered (issue 13).
        self.nat_finals = NatFinals(state_dir, clock=clock)
        self._hook_finals(self._dp)
        self._observed = NetworkObserved(generation=self._spec.generation if self._spec else 0)
        #: The pass's subsystems, in the order it runs them (register() adds more).
        self.subsystems: list[Subsystem] = []
        if firewall is not None:
            self.register(firewall_subsystem(firewall, self._host_firewall))
        self.register(Subsystem("dataplane", self._dataplane_pass, rank=0,
                                quick_retry=lambda e: e.retryable and e.code != "WaitingForTaps",
                                close=self._close_dataplane))
        if dhcp is not None:
            self.register(dhcp_subsystem(dhcp))

    def register(self, subsystem: Subsystem, before: Optional[str] = None) -> None:
        """Add `subsystem` to every pass: last, or just before the one named `before`. Call it
        before start(); names are unique."""
        names = [x.name for x in self.subsystems]
        if subsystem.name in names:
            raise ValueError(f"subsystem {subsystem.name!r} is registered already")
        at = names.index(before) if before is not None else len(names)
        self.subsystems.insert(at, subsystem)
        with self._lock:
            self._observed = self._observed.model_copy(
                update={"subsystems": [x.status() for x in self.subsystems]})

    # -- persistence -----------------------------------------------------------------------
    def _load(self) -> Optional[NetworkSpec]:
        try:
            return NetworkSpec.model_validate_json(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            # Unreadable: keep it for a human, start as if none was accepted (the controller
            # sees generation 0 in the heartbeat and sends the spec again).
            bad = self.path.with_name(f"spec.json.corrupt-{int(time.time())}")
            log.error("network spec %s is unreadable (%s); moved to %s", self.path, e, bad)
            try:
                os.replace(self.path, bad)
            except OSError:
                pass
            return None

    def _save(self, spec: NetworkSpec) -> None:
        data = spec.model_dump_json().encode()
        atomic_write(self.path, lambda f: f.write(data))

    # -- API side ---------------------------------------------------------------------------
    def spec(self) -> Optional[NetworkSpec]:
        with self._lock:
            return self._spec

    def observed(self) -> NetworkObserved:
        with self._lock:
            return self._observed

    def nat_processed(self) -> list[NatProcessed]:
        """Bytes each NAT gateway of this host forwarded (extension nat-processed): the live
        counters read now from the dataplane (none when there is no spec, underlay or dataplane
        yet, or the dataplane cannot count) merged with the final counts of gateways that left
        (agent.network.nat_finals: pending until nat_delivered says the controller has them)."""
        with self._lock:
            spec = self._spec
        u, dp = self._underlay, self._dp
        counters = getattr(dp, "nat_counters", None)
        live: dict[str, int] = {}
        if spec is not None and u is not None and counters is not None:
            try:
                live = counters(host_network(spec, u.ip, u.dev))
            except NetworkSpecRejected:
                pass
        merged = self.nat_finals.merge(live)
        return [NatProcessed(nat_gateway_id=k, bytes=v) for k, v in sorted(merged.items())]

    def nat_delivered(self, sent: list[NatProcessed]) -> None:
        """The controller answered (2xx) a heartbeat that carried `sent`: count the finals in
        it as delivered once more (dropped after nat_finals.DELIVERIES)."""
        self.nat_finals.delivered((x.nat_gateway_id, x.bytes) for x in sent)

    def _hook_finals(self, dp: Any) -> None:
        # The real Dataplane reads a gateway's last count when it stops feeding it; it must be
        # persisted before the counter goes (fakes have no such hook).
        if dp is not None and hasattr(dp, "on_nat_final"):
            dp.on_nat_final = self.nat_finals.record

    def underlay_ip(self) -> Optional[IPv4Address]:
        u = self._underlay
        return u.ip if u is not None else None

    def accept(self, spec: NetworkSpec) -> NetworkObserved:
        """Take `spec` as the host's desired dataplane (see the module docstring for the rules)."""
        with self._lock:
            try:
                if is_resend(spec, self._spec):
                    return self._observed
            except GenerationConflict as e:
                raise NetworkSpecRejected(409, e.code, e.message) from None
            u = self._underlay
            host_network(spec, u.ip if u else _UNKNOWN_UNDERLAY, u.dev if u else "uplink0")
            try:
                fw = host_firewall(spec)
            except FirewallInputError as e:
                raise NetworkSpecRejected(400, e.code, f"security groups: {e.message}") from None
            self._save(spec)
            self._fw_cache = (spec, fw)
            self._spec = spec
            self._observed = self._observed.model_copy(update={"generation": spec.generation})
            obs = self._observed
        self.kick()
        self._changed()
        return obs

    def bridge_ready(self, name: str) -> bool:
        return self.link_up(name)

    def wait_bridge(self, name: str, timeout: float = 2.0) -> bool:
        """Kick a pass and wait up to `timeout` seconds for bridge `name` to be up."""
        if self.link_up(name):
            return True
        self.kick()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if self.link_up(name):
                return True
        return False

    # -- thread ----------------------------------------------------------------------------
    def start(self) -> None:
        self._resolve_underlay()  # so the first heartbeat already carries underlay_ip
        self._stop.clear()
        self._thread = threading.Thread(target=self._main, name="kumo-network", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread; the dataplane stays as it is (guests keep their network)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        closers = [getattr(self.link_up, "close", None)] + [x.close for x in self.subsystems]
        for close in closers:
            if callable(close):
                try:
                    close()
                except Exception as e:
                    log.debug("closing %r: %s", close, e)
        if self._factory is not None:
            self._dp = None

    def _close_dataplane(self) -> None:
        close = getattr(self._dp, "close", None)
        if callable(close):
            close()

    def kick(self) -> None:
        self._wake.set()

    def _main(self) -> None:
        next_full, kicked = 0.0, True
        while not self._stop.is_set():
            self._wake.clear()
            try:
                if kicked or time.monotonic() >= next_full:
                    retry = self.run_once()
                    wait = self.retry_interval if retry else self.resync_interval
                    next_full = time.monotonic() + wait
                elif self.check_subsystems():
                    next_full = min(next_full, time.monotonic() + self.retry_interval)
            except Exception:  # both handle their errors; this is the last line of defence
                log.exception("network pass crashed")
                next_full = time.monotonic() + self.retry_interval
            wait = max(0.0, next_full - time.monotonic())
            if any(x.check is not None for x in self.subsystems):
                wait = min(wait, self.firewall_interval)
            kicked = self._wake.wait(wait)

    def _resolve_underlay(self) -> Optional[Underlay]:
        if self._underlay is None:
            try:
                self._underlay = self._underlay_fn()
                log.info("underlay: %s on %s", self._underlay.ip, self._underlay.dev)
                self._changed()
                self._underlay_error = None
            except (UnderlayError, DataplaneError) as e:
                if str(e) != str(self._underlay_error):
                    log.warning("underlay not known yet: %s", e)
                self._underlay_error = e
        return self._underlay

    def _dataplane(self) -> Any:
        if self._dp is None:
            self._dp = self._factory()
            self._hook_finals(self._dp)
        return self._dp

    def run_once(self) -> bool:
        """One pass over the subsystems, in order; True when a quick retry is wanted."""
        self.passes += 1
        with self._lock:
            spec = self._spec
        if spec is None:
            underlay = self._resolve_underlay()
            return underlay is None and isinstance(self._underlay_error, UnderlayError)
        ctx = PassContext(spec)
        for sub in self.subsystems:
            if sub.needs_host and ctx.host is None:
                sub.error = None  # skipped: the dataplane's error says why
                continue
            try:
                sub.error = sub.run(ctx)
            except Exception as e:
                log.exception("network subsystem %s failed", sub.name)
                sub.error = ErrorInfo(code="InternalError", message=f"{type(e).__name__}: {e}")
            if sub.error is None:
                sub.applied_generation = spec.generation
        self._failed = ctx.failed
        ok = all(x.error is None for x in self.subsystems)
        self._record(spec, spec.generation if ok else None, ctx.failed, self._first_error())
        return any(x.error is not None and x.quick_retry(x.error) for x in self.subsystems)

    def _first_error(self) -> Optional[ErrorInfo]:
        return combine_errors([x.error for x in sorted(self.subsystems, key=lambda x: x.rank)])

    def _dataplane_pass(self, ctx: PassContext) -> Optional[ErrorInfo]:
        """Every subsystem's prepare(host), then Dataplane.ensure; sets ctx.host and ctx.failed."""
        try:
            underlay = self._resolve_underlay()
            if underlay is None:
                raise self._underlay_error or UnderlayError("underlay unknown")
            host = host_network(ctx.spec, underlay.ip, underlay.dev)
            for sub in self.subsystems:
                if sub.prepare is not None:
                    sub.prepare(host)
            result = self._dataplane().ensure(host)
        except NetworkSpecRejected as e:
            return ErrorInfo(code="InvalidNetworkSpec", message=e.message, retryable=False)
        except DataplaneError as e:
            return ErrorInfo(code=e.code, message=str(e),
                             retryable=e.code != "RootNamespaceRefused")
        except UnderlayError as e:
            return ErrorInfo(code=e.code, message=str(e))
        except Exception as e:
            log.exception("network pass failed")
            self._reset_dataplane()
            return ErrorInfo(code="InternalError", message=f"{type(e).__name__}: {e}")
        ctx.host = host
        failed = list(result.failed)
        ctx.failed = len(failed)
        # Only missing taps (WaitingForTaps) want no quick retry: libvirt enslaves a tap to its
        # bridge itself when it creates it, so nothing waits on us; the normal resync (a full
        # kernel read each time while records fail) picks the taps up without a read every
        # second for every stopped instance.
        return failure_info(host, failed) if failed else None

    def _host_firewall(self, spec: NetworkSpec) -> Any:
        """spec's HostFirewall, converted once per spec (accept() already did it)."""
        with self._lock:
            cached_spec, fw = self._fw_cache
        if cached_spec is not spec:
            fw = host_firewall(spec)
            with self._lock:
                self._fw_cache = (spec, fw)
        return fw

    def check_subsystems(self) -> bool:
        """Run every subsystem's check between full passes (no-op before the first spec).
        Updates NetworkObserved when a status changes; True when a check failed."""
        with self._lock:
            spec = self._spec
        if spec is None:
            return False
        changed, failing = False, False
        for sub in self.subsystems:
            if sub.check is None:
                continue
            err = sub.check(spec)
            failing = failing or err is not None
            if err != sub.error:
                sub.error, changed = err, True
        if changed:
            self._record(spec, None, self._failed, self._first_error())
        return failing

    #: The firewall is the one subsystem with a check today.
    check_firewall = check_subsystems

    def _reset_dataplane(self) -> None:
        """After an unexpected error, rebuild the dataplane (fresh netlink handles)."""
        if self._factory is None or self._dp is None:
            return
        try:
            self._dp.close()
        except Exception:
            pass
        self._dp = None

    def _record(self, spec: Optional[NetworkSpec], applied: Optional[int], failed: int,
                error: Optional[ErrorInfo]) -> None:
        with self._lock:
            old = self._observed
            # A newer spec may have been accepted during the pass: it is not applied yet.
            update: dict = {"failed": failed, "error": error, "applied_at": self.clock(),
                            "subsystems": [x.status() for x in self.subsystems]}
            if applied is not None:
                update["applied_generation"] = applied
            self._observed = old.model_copy(update=update)
            new = self._observed
        if old.model_copy(update={"applied_at": None}) != new.model_copy(update={"applied_at": None}):
            self._changed()

    def _changed(self) -> None:
        cb = self.on_change
        if cb is not None:
            try:
                cb()
            except Exception as e:
                log.debug("network on_change: %s", e)
