"""The Hypervisor contract as checks any driver must pass: run against FakeHypervisor and
libvirt's test:///default driver in tests/unit/test_hypervisor_contract.py, and against a real
libvirtd with booted guests in tests/lab/test_libvirt_driver_real.py. A rule the fake keeps and
libvirt does not (or the other way round) fails one of them.

Each check takes the driver and what it needs (plans, disks, a domain in the right state); none
cleans up the domains it was given.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from agent.drivers.base import (DeviceDetachTimeout, DeviceNotFound, DeviceNotHotpluggable,
                                DeviceSourceInUse, DeviceTargetInUse, DomainDisk, DomainNotFound,
                                DomainNotRunning, DomainPlan, DriverError, FileSource)
from agent.drivers.stats import cpu_utilization


def _by_target(disks) -> tuple[DomainDisk, ...]:
    return tuple(sorted(disks, key=lambda d: d.target))


def disks_of(hv, name: str) -> tuple[DomainDisk, ...]:
    return hv.status(name).disks


def other_file(disk: DomainDisk, directory: Path) -> DomainDisk:
    """The same target with another file behind it."""
    return replace(disk, source=FileSource(directory / f"other-{disk.target}.qcow2"))


def check_define_reports_plan_disks(hv, plan: DomainPlan) -> None:
    """A defined (shut-off) domain reports exactly the plan's disks, whatever their source."""
    hv.define(plan)
    st = hv.status(plan.name)
    assert st.power == "shutoff"
    assert st.disks == _by_target(plan.disks)
    assert [d.name for d in hv.list_domains() if d.name == plan.name] == [plan.name]
    listed = next(d for d in hv.list_domains() if d.name == plan.name)
    assert listed.disks == st.disks


def check_missing_domain(hv, name: str, disk: DomainDisk) -> None:
    """Attach needs the domain; detaching from a domain that is gone succeeds."""
    with pytest.raises(DomainNotFound) as e:
        hv.attach_disk(name, disk)
    assert e.value.code == "DomainNotFound"
    hv.detach_disk(name, disk.target)
    hv.detach_disk(name, disk.target, force=True)
    assert hv.stats([name]) == []


def check_stats_of_defined(hv, plan: DomainPlan) -> None:
    """A shut-off domain is sampled too, with no counters."""
    [s] = hv.stats([plan.name])
    assert (s.name, s.active, s.run_id, s.cpu_time_ns, s.vcpus) == (plan.name, False, None, 0, 0)
    assert s.nics == () and s.disks == ()
    assert plan.name in [x.name for x in hv.stats()]
    assert s.sampled_at_wall > 1.6e9  # a real wall-clock time


def check_config_attach_detach(hv, name: str, volume: DomainDisk, directory: Path) -> None:
    """On a shut-off domain: attach and detach change the definition, idempotently."""
    assert hv.status(name).power == "shutoff"
    before = disks_of(hv, name)
    hv.attach_disk(name, volume)
    assert disks_of(hv, name) == _by_target(before + (volume,))
    hv.attach_disk(name, volume)  # the same disk again: no-op
    assert disks_of(hv, name) == _by_target(before + (volume,))
    with pytest.raises(DeviceTargetInUse) as e:
        hv.attach_disk(name, other_file(volume, directory))
    assert e.value.code == "DeviceTargetInUse" and not e.value.retryable
    with pytest.raises(DeviceSourceInUse) as e:
        hv.attach_disk(name, replace(volume, target="vdz", serial=None))
    assert e.value.code == "DeviceSourceInUse"
    # Not hot-pluggable, but a shut-off domain takes it in its definition.
    ide = DomainDisk("hdd", FileSource(directory / "ide.qcow2"), bus="ide")
    hv.attach_disk(name, ide)
    assert ide in disks_of(hv, name)
    hv.detach_disk(name, ide.target)
    hv.detach_disk(name, volume.target)
    assert disks_of(hv, name) == before
    hv.detach_disk(name, volume.target)  # absent: succeeds
    assert disks_of(hv, name) == before


def check_live_attach(hv, name: str, volume: DomainDisk, directory: Path) -> None:
    """On a running domain: the guest gets the disk, and the rules hold as when shut off."""
    assert hv.status(name).power == "running"
    before = disks_of(hv, name)
    hv.attach_disk(name, volume)
    assert disks_of(hv, name) == _by_target(before + (volume,))
    hv.attach_disk(name, volume)
    assert disks_of(hv, name) == _by_target(before + (volume,))
    with pytest.raises(DeviceTargetInUse):
        hv.attach_disk(name, other_file(volume, directory))
    with pytest.raises(DeviceNotHotpluggable) as e:
        hv.attach_disk(name, DomainDisk("hdd", FileSource(directory / "ide.qcow2"), bus="ide"))
    assert e.value.code == "DeviceNotHotpluggable"
    assert disks_of(hv, name) == _by_target(before + (volume,))


def check_live_detach_released(hv, name: str, target: str, timeout: float) -> None:
    """A guest that lets go: the disk leaves the guest and the definition."""
    hv.detach_disk(name, target, timeout=timeout)
    assert target not in [d.target for d in disks_of(hv, name)]
    hv.detach_disk(name, target, timeout=timeout)  # gone: succeeds


def check_live_detach_held(hv, name: str, target: str, power_cycle: Callable[[], None]) -> None:
    """A guest that holds on: DeviceDetachTimeout and nothing changed; forced, the definition
    loses the disk and the guest keeps it until its next power-off."""
    with pytest.raises(DeviceDetachTimeout) as e:
        hv.detach_disk(name, target, timeout=0.5)
    assert e.value.code == "DeviceDetachTimeout" and e.value.retryable
    assert target in [d.target for d in disks_of(hv, name)]
    with pytest.raises(DeviceDetachTimeout):  # asking again while the first request is pending
        hv.detach_disk(name, target, timeout=0.5)
    hv.detach_disk(name, target, force=True, timeout=0.5)
    assert target in [d.target for d in disks_of(hv, name)]  # the running guest still has it
    power_cycle()
    assert target not in [d.target for d in disks_of(hv, name)]


def check_stats_running(hv, name: str, wait: Callable[[], None]) -> None:
    """Counters of a running guest: one run, CPU time advancing, nothing going backwards."""
    [a] = hv.stats([name])
    wait()
    [b] = hv.stats([name])
    assert a.active and b.active and a.run_id is not None and a.run_id == b.run_id
    assert b.vcpus == hv.status(name).vcpus > 0
    assert b.cpu_time_ns > a.cpu_time_ns > 0
    assert b.sampled_at_monotonic > a.sampled_at_monotonic
    assert b.sampled_at_wall >= a.sampled_at_wall
    util = cpu_utilization(a, b)
    assert util is not None and 0.0 < util <= 1.0
    assert [d.target for d in b.disks] == [d.target for d in disks_of(hv, name)]
    for old, new in zip(a.disks + a.nics, b.disks + b.nics):
        assert old.__class__ is new.__class__
        assert all(getattr(new, f) >= getattr(old, f) for f in vars(old) if f not in
                   ("device", "target"))
    assert [n.device for n in a.nics] == [n.device for n in b.nics]


def check_stats_across_restart(hv, name: str) -> None:
    """Stopping ends the run (no counters); a start begins a new one, not comparable."""
    [a] = hv.stats([name])
    hv.destroy(name)
    [off] = hv.stats([name])
    assert not off.active and off.cpu_time_ns == 0 and cpu_utilization(a, off) is None
    hv.start(name)
    [b] = hv.stats([name])
    assert b.active and b.run_id != a.run_id and cpu_utilization(a, b) is None


def check_resize_refusals(hv, name: str, missing: str) -> None:
    """resize_disk needs a running domain, a disk on the target and a size in whole sectors;
    disk_capacity needs the disk. `name` is defined and shut off; `missing` does not exist."""
    assert hv.status(name).power == "shutoff"
    before = disks_of(hv, name)
    with pytest.raises(DomainNotFound) as e:
        hv.resize_disk(missing, "vda", 1 << 30)
    assert e.value.code == "DomainNotFound"
    with pytest.raises(DomainNotFound):
        hv.disk_capacity(missing, "vda")
    with pytest.raises(DomainNotRunning) as e:  # a shut-off disk is grown offline (Storage)
        hv.resize_disk(name, "vda", 1 << 30)
    assert e.value.code == "DomainNotRunning" and e.value.retryable
    for bad in (0, -512, (1 << 30) + 1):
        with pytest.raises(DriverError) as e:
            hv.resize_disk(name, "vda", bad)
        assert e.value.code == "InvalidParameterValue" and not e.value.retryable
    with pytest.raises(DeviceNotFound) as e:
        hv.disk_capacity(name, "vdz")
    assert e.value.code == "NoSuchDevice" and not e.value.retryable
    assert disks_of(hv, name) == before


def check_live_resize(hv, name: str, target: str, grow_by: int = 64 << 20) -> None:
    """On a running domain: the disk on `target` grows at once, as the guest sees it; the same
    or a smaller size is a no-op (never a shrink); a missing target is DeviceNotFound."""
    assert hv.status(name).power == "running"
    disks = disks_of(hv, name)
    before = hv.disk_capacity(name, target)
    bigger = before + grow_by
    hv.resize_disk(name, target, bigger)
    assert hv.disk_capacity(name, target) == bigger
    hv.resize_disk(name, target, bigger)  # the same size: no-op
    hv.resize_disk(name, target, max(512, before))  # smaller: never shrinks
    assert hv.disk_capacity(name, target) == bigger
    with pytest.raises(DeviceNotFound):
        hv.resize_disk(name, "vdz", bigger + grow_by)
    with pytest.raises(DriverError) as e:
        hv.resize_disk(name, target, bigger + 1)
    assert e.value.code == "InvalidParameterValue"
    assert hv.disk_capacity(name, target) == bigger
    assert disks_of(hv, name) == disks and hv.status(name).power == "running"
