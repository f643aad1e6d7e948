"""choose_hypervisor: KVM only with vmx/svm AND a /dev/kvm that opens read-write."""
from __future__ import annotations

import os

import pytest

from agent.hypervisor_choice import (
    HypervisorUnavailable,
    choose_hypervisor,
    cpu_virt_flags,
    kvm_device_usable,
)

CPU_TEMPLATE = """processor\t: {n}
vendor_id\t: GenuineIntel
model name\t: Some CPU
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep {extra} sse sse2 hypervisor lahf_lm
bugs\t\t: spectre_v1

"""


def _cpuinfo(tmp_path, extra_per_cpu: list[str]):
    p = tmp_path / "cpuinfo"
    p.write_text("".join(CPU_TEMPLATE.format(n=i, extra=e) for i, e in enumerate(extra_per_cpu)))
    return str(p)


@pytest.fixture
def kvm_ok(tmp_path):
    """A stand-in for /dev/kvm that opens read-write."""
    p = tmp_path / "kvm"
    p.write_bytes(b"")
    return str(p)


@pytest.fixture
def kvm_readonly(tmp_path):
    p = tmp_path / "kvm-ro"
    p.write_bytes(b"")
    p.chmod(0o444)
    if os.access(p, os.W_OK):  # root ignores file modes: use a directory (O_RDWR fails: EISDIR)
        p.unlink()
        p.mkdir()
    return str(p)


def test_flags_found(tmp_path):
    assert cpu_virt_flags(_cpuinfo(tmp_path, ["vmx", "vmx"])) == {"vmx"}
    assert cpu_virt_flags(_cpuinfo(tmp_path, ["svm"])) == {"svm"}
    assert cpu_virt_flags(_cpuinfo(tmp_path, ["", ""])) == set()


def test_flag_substrings_do_not_count(tmp_path):
    # "vmxnet" or "svm_lock" style names must not be mistaken for the flags themselves.
    assert cpu_virt_flags(_cpuinfo(tmp_path, ["vmx_ept svm_lock xvmx"])) == set()


def test_missing_cpuinfo_means_no_flags(tmp_path):
    assert cpu_virt_flags(str(tmp_path / "nope")) == set()


def test_auto_picks_kvm_with_flags_and_device(tmp_path, kvm_ok):
    assert choose_hypervisor("auto", _cpuinfo(tmp_path, ["vmx"]), kvm_ok) == "kvm"
    assert choose_hypervisor("auto", _cpuinfo(tmp_path, ["svm"]), kvm_ok) == "kvm"


def test_auto_picks_tcg_without_flags_even_with_device(tmp_path, kvm_ok):
    # The paravirtual-KVM case of these machines: /dev/kvm works, no vmx/svm.
    assert choose_hypervisor("auto", _cpuinfo(tmp_path, [""]), kvm_ok) == "qemu"


def test_auto_picks_tcg_without_device(tmp_path, kvm_readonly):
    assert not kvm_device_usable(str(tmp_path / "absent"))
    assert not kvm_device_usable(kvm_readonly)
    absent = str(tmp_path / "absent")
    assert choose_hypervisor("auto", _cpuinfo(tmp_path, ["vmx"]), absent) == "qemu"
    assert choose_hypervisor("auto", _cpuinfo(tmp_path, ["vmx"]), kvm_readonly) == "qemu"


def test_explicit_qemu_wins(tmp_path, kvm_ok):
    assert choose_hypervisor("qemu", _cpuinfo(tmp_path, ["vmx"]), kvm_ok) == "qemu"


def test_explicit_kvm_without_support_is_a_clear_error(tmp_path, kvm_ok):
    with pytest.raises(HypervisorUnavailable) as e:
        choose_hypervisor("kvm", _cpuinfo(tmp_path, [""]), kvm_ok)
    assert e.value.code == "HypervisorUnavailable"
    assert "vmx/svm" in str(e.value)
    with pytest.raises(HypervisorUnavailable, match="read-write"):
        choose_hypervisor("kvm", _cpuinfo(tmp_path, ["vmx"]), str(tmp_path / "absent"))


def test_explicit_kvm_with_support(tmp_path, kvm_ok):
    assert choose_hypervisor("kvm", _cpuinfo(tmp_path, ["svm"]), kvm_ok) == "kvm"


def test_bad_setting_rejected():
    with pytest.raises(ValueError):
        choose_hypervisor("xen")


def test_this_machine_auto_is_tcg():
    """On the project's machines (paravirtual KVM, no vmx/svm) auto must choose TCG."""
    if cpu_virt_flags():
        pytest.skip("this CPU advertises vmx/svm")
    assert choose_hypervisor("auto") == "qemu"
