"""The disks of an instance and the attach rules every Hypervisor applies (libvirt and the fake
alike, so a functional test cannot pass where libvirt would refuse).

Policy for an instance's own two disks, and why:
- the root disk is the per-instance qcow2 overlay on virtio-blk (vda), the disk the domain
  boots from;
- the NoCloud seed is a read-only IDE cdrom (hdc): the domain is machine 'pc' because the
  Debian cloud kernel has no AHCI (a q35 SATA cdrom is invisible), and ata_piix is built.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from agent.drivers.base import (DeviceNotHotpluggable, DeviceSourceInUse, DeviceTargetInUse,
                                DomainDisk, FileSource)

#: Buses a running domain can take a new disk on (PCI hot-plug for virtio, SCSI hot-plug).
HOTPLUG_BUSES = frozenset({"virtio", "scsi"})
ROOT_TARGET, SEED_TARGET = "vda", "hdc"
#: The targets of an instance's own disks; every other disk of its domain is a volume.
OWN_TARGETS = frozenset({ROOT_TARGET, SEED_TARGET})


def root_disk(path: Path) -> DomainDisk:
    """The instance's root disk: its qcow2 overlay as vda."""
    return DomainDisk(target=ROOT_TARGET, source=FileSource(Path(path), "qcow2"), bus="virtio")


def seed_cdrom(path: Path) -> DomainDisk:
    """The instance's NoCloud seed ISO as a read-only IDE cdrom (hdc)."""
    return DomainDisk(target=SEED_TARGET, source=FileSource(Path(path), "raw"), device="cdrom",
                      bus="ide", readonly=True)


def instance_disks(root: Path, seed: Path | None) -> tuple[DomainDisk, ...]:
    """An instance's own disks, first in every plan: the root disk, then the seed if any."""
    return (root_disk(root),) if seed is None else (root_disk(root), seed_cdrom(seed))


def on_target(disks: Sequence[DomainDisk], target: str) -> DomainDisk | None:
    return next((d for d in disks if d.target == target), None)


def needs_attach(disks: Sequence[DomainDisk], disk: DomainDisk, *, live: bool) -> bool:
    """Whether `disk` must be added to one definition holding `disks` (live: the running
    guest's). False when it is already there; raises when the definition cannot take it."""
    there = on_target(disks, disk.target)
    if there == disk:
        return False
    if there is not None:
        raise DeviceTargetInUse(f"target {disk.target} already holds another disk")
    if live and disk.bus not in HOTPLUG_BUSES:
        raise DeviceNotHotpluggable(f"a running domain cannot take a {disk.bus} disk "
                                    f"(hot-pluggable: {', '.join(sorted(HOTPLUG_BUSES))})")
    if any(d.source == disk.source and not (d.readonly and disk.readonly) for d in disks):
        raise DeviceSourceInUse(f"the source of {disk.target} is already attached writable "
                                "under another target")
    return True


def plan_attach(config: Sequence[DomainDisk], live: Sequence[DomainDisk] | None,
                disk: DomainDisk) -> tuple[bool, bool]:
    """(into the definition?, into the running guest?) for attaching `disk`; `live` is None
    when the domain is not running. Both definitions are checked before either is touched."""
    into_config = needs_attach(config, disk, live=False)
    into_live = live is not None and needs_attach(live, disk, live=True)
    return into_config, into_live
