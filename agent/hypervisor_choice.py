"""Which hypervisor a host uses: "kvm" (hardware virtualization) or "qemu" (TCG emulation).

KVM only when the CPU flags show vmx (Intel VT-x) or svm (AMD-V) AND /dev/kvm opens read-write.
A /dev/kvm alone is not enough: a paravirtual KVM (kvm_pvm) exposes /dev/kvm without vmx/svm,
and stock guest kernels hang under it. libvirt's capabilities are not trusted for the same reason.
An explicit setting wins; asking for kvm where it cannot work is an error, not a silent fallback.
"""
from __future__ import annotations

import os
from typing import Literal

from agent.drivers.base import DriverError

HypervisorKind = Literal["kvm", "qemu"]
_HW_FLAGS = frozenset({"vmx", "svm"})


class HypervisorUnavailable(DriverError):
    """The requested hypervisor cannot run on this host (a configuration error)."""

    code = "HypervisorUnavailable"
    retryable = False


def cpu_virt_flags(cpuinfo_path: str = "/proc/cpuinfo") -> set[str]:
    """The hardware virtualization flags (vmx/svm) any CPU in cpuinfo advertises."""
    found: set[str] = set()
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "flags":
                    found |= _HW_FLAGS.intersection(value.split())
    except OSError:
        return set()
    return found


def kvm_device_usable(kvm_path: str = "/dev/kvm") -> bool:
    """True when the KVM device opens read-write (exists and we have the rights)."""
    try:
        fd = os.open(kvm_path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def kvm_problems(cpuinfo_path: str = "/proc/cpuinfo", kvm_path: str = "/dev/kvm") -> list[str]:
    """Why KVM cannot be used here (empty: it can)."""
    problems = []
    if not cpu_virt_flags(cpuinfo_path):
        problems.append(f"no vmx/svm CPU flag in {cpuinfo_path}")
    if not kvm_device_usable(kvm_path):
        problems.append(f"{kvm_path} does not open read-write")
    return problems


def choose_hypervisor(setting: str = "auto", cpuinfo_path: str = "/proc/cpuinfo",
                      kvm_path: str = "/dev/kvm") -> HypervisorKind:
    """Resolve KUMO_AGENT_HYPERVISOR ("auto" | "kvm" | "qemu") to "kvm" or "qemu"."""
    setting = (setting or "auto").strip().lower()
    if setting == "qemu":
        return "qemu"
    if setting not in ("auto", "kvm"):
        raise ValueError(f"hypervisor setting must be auto, kvm or qemu, not {setting!r}")
    problems = kvm_problems(cpuinfo_path, kvm_path)
    if not problems:
        return "kvm"
    if setting == "kvm":
        raise HypervisorUnavailable("kvm was requested but cannot be used on this host: "
                                    + "; ".join(problems) + " (use qemu for TCG emulation)")
    return "qemu"
