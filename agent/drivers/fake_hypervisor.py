"""FakeHypervisor: the Hypervisor Protocol (agent/drivers/base.py) with domains as dict entries.

It keeps the Protocol's promises as LibvirtHypervisor does (idempotent deletes, no-op starts of
running domains, power states, the device rules of agent/drivers/disks.py, counters that start
from zero with each run and only grow within it, CPU time that advances only while running) and
adds test handles: crash(), pause_on_io_error(), write_console(), fail(), hold_device()/release_device(),
set_cpu_load(), traffic(), disk_io(), set_disk_size(), `calls`. A detach the guest does not
answer raises at once what the real driver raises after its timeout: tests never sleep. Disk
sizes are what the fake was told (set_disk_size) or grew itself (resize_disk); a disk it knows
nothing of has 0 bytes.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from agent.drivers.base import (DeviceDetachTimeout, DeviceNotFound, DomainDisk, DomainNotFound,
                                DomainNotRunning, DomainPlan, DomainStatus, DriverError,
                                check_disk_size)
from agent.drivers.disks import on_target, plan_attach
from agent.drivers.faults import Faults
from agent.drivers.stats import DiskCounters, DomainStats, NicCounters
from agent.libvirt.names import tap_name

#: Share of its vCPUs a fake guest keeps busy unless a test sets another (set_cpu_load).
DEFAULT_CPU_LOAD = 0.5


@dataclass
class FakeDomain:
    plan: DomainPlan
    power: str = "shutoff"
    #: The definition the running guest was started with (a redefine applies at next start).
    live: DomainPlan | None = None
    starts: int = 0
    reboots: int = 0
    #: This run's id and counters (reset at each start, as a new QEMU process does).
    run_id: int | None = None
    cpu_ns: float = 0.0
    cpu_mark: float = 0.0
    nic_counters: dict[str, NicCounters] = field(default_factory=dict)
    disk_counters: dict[str, DiskCounters] = field(default_factory=dict)
    #: Targets the guest was asked to release and still holds (the unplug stays requested).
    unplugging: set[str] = field(default_factory=set)
    #: Paused by an I/O error on a disk with error_policy "stop" (power "paused").
    io_error: bool = False


def _without(plan: DomainPlan, target: str) -> DomainPlan:
    return replace(plan, disks=tuple(d for d in plan.disks if d.target != target))


def _grow(counters: dict, name: str, device: str, **deltas: int) -> None:
    """Add `deltas` to the counters of `device`; counters never go down."""
    if device not in counters:
        raise DriverError(f"{name} has no device {device}", code="NoSuchDevice")
    if any(v < 0 for v in deltas.values()):
        raise ValueError("counters only grow")
    c = counters[device]
    counters[device] = replace(c, **{f: getattr(c, f) + v for f, v in deltas.items()})


def _taps(plan: DomainPlan) -> list[str]:
    return [nic.tap or tap_name(plan.name, i) for i, nic in enumerate(plan.nics)]


class FakeHypervisor:
    """A hypervisor whose domains are dict entries. `kind` defaults to TCG ("qemu")."""

    def __init__(self, kind: str = "qemu",
                 capabilities: frozenset[str] = frozenset({"reboot", "resize_offline",
                                                           "console_log", "disk_hotplug",
                                                           "disk_resize_live", "stats"}),
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time):
        self.kind = kind
        self.capabilities = capabilities
        self.domains: dict[str, FakeDomain] = {}
        #: Every mutating call as (op, name), in order: tests assert what was (not) touched.
        self.calls: list[tuple[str, str]] = []
        #: Lines written to a domain's console on each start/reboot (e.g. a ready marker).
        self.boot_lines: dict[str, list[str]] = {}
        #: Guests that ignore ACPI power buttons: shutdown() leaves them running.
        self.ignore_acpi: set[str] = set()
        #: (domain, target) the guest holds on to: a detach waits in vain.
        self.held_devices: set[tuple[str, str]] = set()
        #: (domain, target) -> the disk's size in bytes (set_disk_size, resize_disk).
        self.disk_sizes: dict[tuple[str, str], int] = {}
        self._cpu_load: dict[str, float] = {}
        self._clock, self._wall = clock, wall_clock
        self._runs = 0
        self._faults = Faults()
        self._lock = threading.RLock()

    # -- test handles ----------------------------------------------------------------------
    def fail(self, op: str, name: str | None = None, error: Exception | None = None,
             times: int = 1) -> None:
        """Make the next `times` calls of `op` (for `name`, or any) raise `error` (-1: forever)."""
        self._faults.set(op, name, error or DriverError(f"injected {op} failure"), times)

    def clear_faults(self) -> None:
        self._faults.clear()

    def pause_on_io_error(self, name: str) -> None:
        """Test hook: a disk with error_policy "stop" failed a request; QEMU paused the guest."""
        with self._lock:
            dom = self._running(name)
            dom.power, dom.io_error = "paused", True

    def crash(self, name: str, power: str = "crashed") -> None:
        """The guest dies by itself (power "crashed" or "shutoff")."""
        with self._lock:
            self._power_off(self.domains[name], power)

    def write_console(self, name: str, text: str) -> None:
        """Append `text` (a line) to the domain's serial console log, as the guest would."""
        with self._lock:
            log = self.domains[name].plan.console_log
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:
            f.write(text if text.endswith("\n") else text + "\n")

    def add_foreign(self, plan: DomainPlan, power: str = "running") -> None:
        """A domain that appeared without the agent (e.g. an orphan left by an old agent)."""
        with self._lock:
            dom = FakeDomain(plan=plan)
            self.domains[plan.name] = dom
            if power == "running":
                self._power_on(dom)
            else:
                dom.power = power

    def reset_calls(self) -> None:
        with self._lock:
            self.calls.clear()

    def hold_device(self, name: str, target: str) -> None:
        """The guest will not release `target`: detaches time out (or, forced, stay pending)."""
        with self._lock:
            self.held_devices.add((name, target))

    def release_device(self, name: str, target: str) -> None:
        """The guest lets go of `target`: a pending unplug completes now."""
        with self._lock:
            self.held_devices.discard((name, target))
            dom = self.domains.get(name)
            if dom is not None and target in dom.unplugging:
                self._unplug(dom, target)

    def set_disk_size(self, name: str, target: str, size_bytes: int) -> None:
        """The disk on `target` has `size_bytes` (as its image was created or grown offline)."""
        with self._lock:
            self.disk_sizes[(name, target)] = size_bytes

    def set_cpu_load(self, name: str, fraction: float) -> None:
        """The share (0..1) of its vCPUs the guest keeps busy from now on."""
        with self._lock:
            dom = self.domains.get(name)
            if dom is not None:
                self._advance(dom)
            self._cpu_load[name] = fraction

    def traffic(self, name: str, device: str, *, rx_bytes: int = 0, rx_packets: int = 0,
                tx_bytes: int = 0, tx_packets: int = 0) -> None:
        """The running guest moves packets through its NIC whose tap is `device`."""
        with self._lock:
            _grow(self._running(name).nic_counters, name, device, rx_bytes=rx_bytes,
                  rx_packets=rx_packets, tx_bytes=tx_bytes, tx_packets=tx_packets)

    def disk_io(self, name: str, target: str, *, read_bytes: int = 0, read_requests: int = 0,
                write_bytes: int = 0, write_requests: int = 0) -> None:
        """The running guest reads and writes its disk on `target`."""
        with self._lock:
            _grow(self._running(name).disk_counters, name, target, read_bytes=read_bytes,
                  read_requests=read_requests, write_bytes=write_bytes,
                  write_requests=write_requests)

    # -- power and counters ------------------------------------------------------------------
    def _power_on(self, dom: FakeDomain) -> None:
        self._runs += 1
        dom.power, dom.live, dom.run_id = "running", dom.plan, self._runs
        dom.cpu_ns, dom.cpu_mark = 0.0, self._clock()
        dom.nic_counters = {t: NicCounters(t) for t in _taps(dom.plan)}
        dom.disk_counters = {d.target: DiskCounters(d.target) for d in dom.plan.disks}

    def _power_off(self, dom: FakeDomain, power: str = "shutoff") -> None:
        dom.power, dom.live, dom.run_id, dom.io_error = power, None, None, False
        dom.nic_counters, dom.disk_counters, dom.unplugging = {}, {}, set()

    def _unplug(self, dom: FakeDomain, target: str) -> None:
        """The running guest let go of `target`."""
        dom.live = _without(dom.live, target)
        dom.disk_counters.pop(target, None)
        dom.unplugging.discard(target)

    def _advance(self, dom: FakeDomain) -> None:
        """Bring the domain's CPU time up to now: it grows only while the guest runs."""
        now = self._clock()
        if dom.power == "running" and dom.live is not None:
            load = self._cpu_load.get(dom.plan.name, DEFAULT_CPU_LOAD)
            dom.cpu_ns += max(0.0, now - dom.cpu_mark) * 1e9 * dom.live.vcpus * load
        dom.cpu_mark = now

    def _running(self, name: str) -> FakeDomain:
        dom = self._get(name)
        if dom.power != "running":
            raise DomainNotRunning(f"domain {name} is not running")
        return dom

    # -- Hypervisor protocol -------------------------------------------------------------
    def _record(self, op: str, name: str) -> None:
        self._faults.check(op, name)
        self.calls.append((op, name))

    def define(self, plan: DomainPlan) -> None:
        with self._lock:
            self._record("define", plan.name)
            dom = self.domains.get(plan.name)
            if dom is None:
                self.domains[plan.name] = FakeDomain(plan=plan)
            else:
                dom.plan = plan

    def _get(self, name: str) -> FakeDomain:
        dom = self.domains.get(name)
        if dom is None:
            raise DomainNotFound(f"domain {name} not found")
        return dom

    def _boot(self, name: str, dom: FakeDomain) -> None:
        for line in self.boot_lines.get(name, []):
            self.write_console(name, line)

    def start(self, name: str) -> None:
        with self._lock:
            self._record("start", name)
            dom = self._get(name)
            if dom.power == "running":
                return
            if dom.power == "paused":  # resumed where it stopped: the same boot
                dom.power, dom.io_error = "running", False
                return
            if dom.power == "crashed":
                raise DriverError(f"domain {name} is crashed; destroy it first",
                                  code="DomainCrashed")
            self._power_on(dom)
            dom.starts += 1
            self._boot(name, dom)

    def shutdown(self, name: str, timeout: float) -> None:
        with self._lock:
            self._record("shutdown", name)
            dom = self.domains.get(name)
            if dom is not None and dom.power != "shutoff" and name not in self.ignore_acpi:
                self._power_off(dom)

    def destroy(self, name: str) -> None:
        with self._lock:
            self._record("destroy", name)
            dom = self.domains.get(name)
            if dom is not None:
                self._power_off(dom)

    def reboot(self, name: str) -> None:
        with self._lock:
            self._record("reboot", name)
            dom = self._get(name)
            if dom.power != "running":
                raise DriverError(f"domain {name} is not running", code="DomainNotRunning")
            dom.reboots += 1
            self._boot(name, dom)

    def undefine(self, name: str) -> None:
        with self._lock:
            self._record("undefine", name)
            self.domains.pop(name, None)

    def status(self, name: str) -> DomainStatus:
        with self._lock:
            self._faults.check("status", name)
            dom = self.domains.get(name)
            if dom is None:
                return DomainStatus(name=name, power="absent")
            # A running guest keeps the size and disks it has, as libvirt reports them.
            now = dom.live if dom.live is not None else dom.plan
            return DomainStatus(name=name, power=dom.power, vcpus=now.vcpus,
                                memory_mib=now.memory_mib,
                                disks=tuple(sorted(now.disks, key=lambda d: d.target)),
                                io_error=dom.io_error)

    def list_domains(self) -> list[DomainStatus]:
        with self._lock:
            return [self.status(n) for n in sorted(self.domains)]

    def attach_disk(self, name: str, disk: DomainDisk) -> None:
        with self._lock:
            self._record("attach_disk", name)
            dom = self._get(name)
            running = dom.power == "running" and dom.live is not None
            into_config, into_live = plan_attach(dom.plan.disks,
                                                 dom.live.disks if running else None, disk)
            if into_config:
                dom.plan = replace(dom.plan, disks=dom.plan.disks + (disk,))
            if into_live:
                dom.live = replace(dom.live, disks=dom.live.disks + (disk,))
                dom.disk_counters[disk.target] = DiskCounters(disk.target)

    def detach_disk(self, name: str, target: str, *, force: bool = False,
                    timeout: float = 10.0) -> None:
        with self._lock:
            self._record("detach_disk", name)
            dom = self.domains.get(name)
            if dom is None:
                return
            if dom.live is not None and on_target(dom.live.disks, target):
                if (name, target) not in self.held_devices:
                    self._unplug(dom, target)
                else:
                    dom.unplugging.add(target)
                    if not force:
                        raise DeviceDetachTimeout(f"{name}: the guest did not release "
                                                  f"{target} within {timeout} s")
            dom.plan = _without(dom.plan, target)

    def resize_disk(self, name: str, target: str, size_bytes: int) -> None:
        with self._lock:
            self._record("resize_disk", name)
            check_disk_size(size_bytes)
            dom = self._get(name)
            if dom.power not in ("running", "paused") or dom.live is None:
                raise DomainNotRunning(f"domain {name} is not running")
            if on_target(dom.live.disks, target) is None:
                raise DeviceNotFound(f"domain {name} has no disk on {target}")
            if size_bytes > self.disk_sizes.get((name, target), 0):  # grown, never shrunk
                self.disk_sizes[(name, target)] = size_bytes

    def disk_capacity(self, name: str, target: str) -> int:
        with self._lock:
            self._faults.check("disk_capacity", name)
            dom = self._get(name)
            if on_target((dom.live or dom.plan).disks, target) is None:
                raise DeviceNotFound(f"domain {name} has no disk on {target}")
            return self.disk_sizes.get((name, target), 0)

    def stats(self, names: list[str] | None = None) -> list[DomainStats]:
        with self._lock:
            self._faults.check("stats", None)
            wanted = sorted(self.domains if names is None else set(names) & set(self.domains))
            mono, wall = self._clock(), self._wall()
            out = []
            for name in wanted:
                dom = self.domains[name]
                self._advance(dom)
                if dom.live is None:
                    out.append(DomainStats(name, False, None, 0, 0, (), (), mono, wall))
                    continue
                out.append(DomainStats(
                    name, True, dom.run_id, int(dom.cpu_ns), dom.live.vcpus,
                    tuple(dom.nic_counters[t] for t in _taps(dom.live)),
                    tuple(dom.disk_counters[t] for t in sorted(dom.disk_counters)), mono, wall))
            return out

    def versions(self) -> dict[str, str]:
        return {"libvirt": "fake", "qemu": "fake"}
