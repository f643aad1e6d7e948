"""The designer: turns a DomainPlan into libvirt domain objects. All domain policy lives here.

Policy, and why:
- machine 'pc' (i440fx): the Debian cloud kernel has no AHCI, so a q35 SATA cdrom is invisible
  (which disks an instance has, and on which bus, is agent/drivers/disks.py's policy).
- disks in the plan's order; the domain boots its first hard disk (<os><boot dev='hd'/>) unless
  a disk has a boot order, which libvirt does not allow beside <os><boot>.
- TCG ("qemu"): a named CPU model (host-passthrough needs KVM). KVM: host-passthrough.
- serial console on a pty (`virsh console`) and appended to the instance's console.log.
- virtio-rng from /dev/urandom: guests otherwise stall early in boot waiting for entropy.
- memballoon none: nothing in Kumo inflates balloons, and it saves a device.
- taps get stable names derived from the instance id so the network side can find them.
- <metadata><kumo:instance> carries the instance id and spec generation.
- SMBIOS as EC2 presents it to guests: the system uuid and serial are the domain's uuid, which
  starts with "ec2" (derived from the instance id, so a redefined or moved domain keeps it).
  That is what cloud-init's ds-identify and DataSourceEc2 check to recognise EC2 and read
  169.254.169.254 (uuid and serial both starting "ec2" and equal). The manufacturer says Kumo.
  A domain defined before this keeps its libvirt uuid (the driver reuses the existing one), so
  its guests are not taken for EC2 and go on reading their NoCloud seed.
"""
from __future__ import annotations

import hashlib
from typing import Literal

from agent.drivers.base import DomainPlan
from agent.libvirt.disks import to_xml_disk
from agent.libvirt.domain import (
    CPU,
    OS,
    BridgeInterface,
    Clock,
    Device,
    Domain,
    KumoMetadata,
    MemBalloon,
    PtySerial,
    Rng,
    SerialConsole,
    SysInfo,
    Timer,
)
# tap_name lives in a pure module so the network side can use it; re-exported here.
from agent.libvirt.names import tap_name  # noqa: F401

HypervisorKind = Literal["kvm", "qemu"]
DEFAULT_EMULATOR = "/usr/bin/qemu-system-x86_64"
#: CPU model under TCG; "max" means QEMU's -cpu max (every feature TCG emulates).
DEFAULT_TCG_CPU_MODEL = "qemu64"


SMBIOS_MANUFACTURER = "Kumo"
SMBIOS_PRODUCT = "Kumo Cloud Instance"


def ec2_uuid(instance_id: str) -> str:
    """The domain uuid of `instance_id`: "ec2" then 29 hex digits of a hash of the id."""
    digits = "ec2" + hashlib.sha256(instance_id.encode()).hexdigest()[:29]
    return "-".join((digits[:8], digits[8:12], digits[12:16], digits[16:20], digits[20:]))


def _cpu(kind: HypervisorKind, tcg_cpu_model: str) -> CPU:
    if kind == "kvm":
        return CPU(mode="host-passthrough", match=None, check="none")
    if tcg_cpu_model == "max":
        return CPU(mode="maximum", match=None, check="none")
    return CPU(mode="custom", model=tcg_cpu_model, match="exact", check="none")


def design_domain(plan: DomainPlan, kind: HypervisorKind, *,
                  emulator: str | None = DEFAULT_EMULATOR,
                  generation: int | None = None,
                  tcg_cpu_model: str = DEFAULT_TCG_CPU_MODEL) -> Domain:
    """The domain objects for `plan` on a `kind` hypervisor."""
    if kind not in ("kvm", "qemu"):
        raise ValueError(f"unknown hypervisor kind {kind!r}")
    devices: list[Device] = [to_xml_disk(disk) for disk in plan.disks]
    boot_devs = () if any(d.boot_order is not None for d in plan.disks) else ("hd",)
    for index, nic in enumerate(plan.nics):
        # AMIs boot from their disk: the iPXE option ROM would only cost ~1 s of every boot.
        devices.append(BridgeInterface(mac=nic.mac, bridge=nic.bridge,
                                       target_dev=nic.tap or tap_name(plan.name, index),
                                       rom=False))
    devices += [
        PtySerial(log_file=str(plan.console_log), port=0),
        SerialConsole(port=0),
        Rng(source="/dev/urandom"),
        MemBalloon(model="none"),
    ]
    # Under TCG the guest is slow to service timer ticks; catch up rather than drift.
    timers = (Timer("rtc", tickpolicy="catchup"), Timer("pit", tickpolicy="delay"),
              Timer("hpet", present=False))
    return Domain(
        name=plan.name,
        type=kind,
        uuid=ec2_uuid(plan.name),
        sysinfo=SysInfo(manufacturer=SMBIOS_MANUFACTURER, product=SMBIOS_PRODUCT),
        memory_kib=plan.memory_mib * 1024,
        vcpus=plan.vcpus,
        os=OS(arch="x86_64", machine="pc", boot_devs=boot_devs, smbios_sysinfo=True),
        features=("acpi", "apic"),
        cpu=_cpu(kind, tcg_cpu_model),
        clock=Clock(offset="utc", timers=timers),
        on_poweroff="destroy",
        on_reboot="restart",
        on_crash="destroy",
        emulator=emulator,
        devices=devices,
        metadata=KumoMetadata(instance_id=plan.name,
                              generation=plan.generation if generation is None else generation),
    )
