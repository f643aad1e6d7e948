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
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Callable, Optional

from pydantic import ValidationError

from agent.contract.v1 import ErrorInfo, NetworkObserved, NetworkSpec
from agent.fsutil import atomic_write
from agent.libvirt.names import tap_name
from agent.network.apply import DataplaneError
from agent.network.host import Underlay, UnderlayError
from agent.network.model import (HostNetwork, NatGatewayNet, PortNet, RemotePort, SubnetNet,
                                 VpcNet)
from agent.network.records import Master

log = logging.getLogger(__name__)

#: Seconds between full kernel reads of the Dataplane (drift repair); passes in between diff
#: against what was applied.
KERNEL_RESYNC = 30.0
#: Seconds between passes while records fail.
RETRY_INTERVAL = 1.0
#: Placeholder underlay used only to validate a spec before the real one is known.
_UNKNOWN_UNDERLAY = IPv4Address("0.0.0.0")


class NetworkSpecRejected(Exception):
    """accept() refused a spec; answered as HTTP `status` with a stable `code`."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


# -- wire -> model ---------------------------------------------------------------------------

def nic_index(device: str) -> int:
    """Position of NIC `device` (ethN -> N) in the instance's domain."""
    return int(device[3:])


def model_port_id(port_id: str, device: str) -> str:
    """The dataplane model's port id of NIC `device` of instance `port_id`. The model wants one
    id per port (VPC-unique) while the wire names a NIC by (instance id, device): eth0 keeps the
    instance id, ethN (N > 0) gets a stable derived id, so one instance may have several NICs in
    one VPC."""
    if device == "eth0":
        return port_id
    return "eni-" + hashlib.sha256(f"{port_id}/{device}".encode()).hexdigest()[:17]


def host_network(spec: NetworkSpec, underlay_ip: IPv4Address, underlay_dev: str) -> HostNetwork:
    """The dataplane model of `spec` on this host. Raises NetworkSpecRejected (400
    InvalidParameterValue) for what the wire schema allows but the dataplane cannot carry."""
    try:
        vpcs = []
        for v in spec.vpcs:
            ports = tuple(PortNet(port_id=model_port_id(p.port_id, p.device),
                                  tap=tap_name(p.port_id, nic_index(p.device)),
                                  mac=p.mac, ip=p.ip, subnet_id=p.subnet_id,
                                  public_ip=p.public_ip) for p in v.ports)
            ng = v.nat_gateway
            vpcs.append(VpcNet(
                vpc_id=v.vpc_id, vni=v.vni, cidr=v.cidr,
                subnets=tuple(SubnetNet(**s.model_dump()) for s in v.subnets),
                ports=ports,
                remote_ports=tuple(RemotePort(**r.model_dump()) for r in v.remote_ports),
                internet=v.internet,
                nat_gateway=NatGatewayNet(**ng.model_dump()) if ng is not None else None))
        return HostNetwork(underlay_ip=underlay_ip, underlay_dev=underlay_dev, vpcs=tuple(vpcs))
    except ValidationError as e:
        parts = [f"{'.'.join(str(x) for x in err.get('loc', ()))}: {err.get('msg')}"
                 for err in e.errors()[:5]]
        raise NetworkSpecRejected(400, "InvalidParameterValue",
                                  "network spec: " + "; ".join(parts)) from None


# -- the service -------------------------------------------------------------------------------

class NetworkService:
    """The accepted NetworkSpec, its persistence, and the thread applying it.

    dataplane: an object with ensure(HostNetwork) -> result(.ok, .failed) and close(), or a
    zero-argument factory building one (called in the thread; its DataplaneError is reported).
    underlay: returns this host's Underlay (may raise UnderlayError; retried).
    link_up: link_up(name) -> bool, whether a link exists and is up in the host's namespace.
    """

    def __init__(self, state_dir: Path, *, dataplane: Any, underlay: Callable[[], Underlay],
                 link_up: Callable[[str], bool],
                 resync_interval: float = 5.0, retry_interval: float = RETRY_INTERVAL,
                 on_change: Optional[Callable[[], None]] = None,
                 clock: Callable[[], float] = time.time):
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
        self.passes = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._spec: Optional[NetworkSpec] = self._load()
        self._observed = NetworkObserved(generation=self._spec.generation if self._spec else 0)

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

    def underlay_ip(self) -> Optional[IPv4Address]:
        u = self._underlay
        return u.ip if u is not None else None

    def accept(self, spec: NetworkSpec) -> NetworkObserved:
        """Take `spec` as the host's desired dataplane (see the module docstring for the rules)."""
        with self._lock:
            cur = self._spec
            if cur is not None:
                if spec.generation < cur.generation:
                    raise NetworkSpecRejected(409, "StaleGeneration",
                                              f"generation {spec.generation} is older than the "
                                              f"accepted {cur.generation}")
                if spec.generation == cur.generation:
                    if spec == cur:
                        return self._observed
                    raise NetworkSpecRejected(409, "IdempotentParameterMismatch",
                                              f"generation {spec.generation} was already "
                                              "accepted with different content")
            u = self._underlay
            host_network(spec, u.ip if u else _UNKNOWN_UNDERLAY, u.dev if u else "uplink0")
            self._save(spec)
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
        for closable in (self._dp, self.link_up):
            close = getattr(closable, "close", None)
            if callable(close):
                try:
                    close()
                except Exception as e:
                    log.debug("closing %r: %s", closable, e)
        if self._factory is not None:
            self._dp = None

    def kick(self) -> None:
        self._wake.set()

    def _main(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                retry = self.run_once()
            except Exception:  # run_once handles its errors; this is the last line of defence
                log.exception("network pass crashed")
                retry = True
            self._wake.wait(self.retry_interval if retry else self.resync_interval)

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
        return self._dp

    def run_once(self) -> bool:
        """One pass; True when a quick retry is wanted."""
        self.passes += 1
        with self._lock:
            spec = self._spec
        try:
            underlay = self._resolve_underlay()
            if spec is None:
                return underlay is None and isinstance(self._underlay_error, UnderlayError)
            if underlay is None:
                raise self._underlay_error or UnderlayError("underlay unknown")
            host = host_network(spec, underlay.ip, underlay.dev)
            result = self._dataplane().ensure(host)
        except NetworkSpecRejected as e:
            self._record(spec, None, 0, ErrorInfo(code="InvalidNetworkSpec", message=e.message,
                                                  retryable=False))
            return False
        except DataplaneError as e:
            retryable = e.code != "RootNamespaceRefused"
            self._record(spec, None, 0, ErrorInfo(code=e.code, message=str(e),
                                                  retryable=retryable))
            return retryable
        except UnderlayError as e:
            self._record(spec, None, 0, ErrorInfo(code=e.code, message=str(e)))
            return True
        except Exception as e:
            log.exception("network pass failed")
            self._reset_dataplane()
            self._record(spec, None, 0, ErrorInfo(code="InternalError",
                                                  message=f"{type(e).__name__}: {e}"))
            return True
        failed = list(result.failed)
        if not failed:
            self._record(spec, spec.generation, 0, None)
            return False
        info = _failure_info(host, failed)
        self._record(spec, None, len(failed), info)
        # Only missing taps: libvirt enslaves a tap to its bridge itself when it creates it, so
        # nothing waits on us; the normal resync (a full kernel read each time while records
        # fail) picks the taps up without a read every second for every stopped instance.
        return info.code != "WaitingForTaps"

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
            update: dict = {"failed": failed, "error": error, "applied_at": self.clock()}
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


def _failure_info(host: HostNetwork, failed: list) -> ErrorInfo:
    taps = {p.tap for v in host.vpcs for p in v.ports}
    waiting = sorted({rec.dev for rec, _ in failed if isinstance(rec, Master) and rec.dev in taps})
    if len(waiting) == len(failed):
        # Only taps that do not exist (yet): instances not started; not a dataplane fault.
        return ErrorInfo(code="WaitingForTaps",
                         message=f"{len(waiting)} guest taps not present: {', '.join(waiting[:8])}")
    rec, detail = failed[0]
    return ErrorInfo(code="DataplaneApplyFailed",
                     message=f"{len(failed)} dataplane changes failed, first: {rec}: {detail}")
