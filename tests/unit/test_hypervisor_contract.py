"""The Hypervisor contract (tests/unit/hypervisor_contract.py) on FakeHypervisor and, for what
needs no running guest, on LibvirtHypervisor over libvirt's test:///default driver (which has no
device hot-plug and no virDomainBlockResize: those parts run on a real libvirtd in
tests/lab/test_libvirt_driver_real.py)."""
from __future__ import annotations

from pathlib import Path

import libvirt
import pytest

from agent.drivers.base import (DomainDisk, DomainNic, DomainPlan, DriverError, FileSource,
                                NetworkHost, NetworkSource)
from agent.drivers.disks import instance_disks
from agent.drivers.fake import FakeHypervisor
from agent.libvirt.driver import LibvirtHypervisor
from tests.unit import hypervisor_contract as contract

IID = "i-0000000000000c0de"
MISSING = "i-fffffffffffffffff"

libvirt.registerErrorHandler(lambda *_: None, None)


class FakeClock:
    """Monotonic time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def plan(tmp_path: Path, name: str = IID) -> DomainPlan:
    d = tmp_path / name
    return DomainPlan(
        name=name, vcpus=2, memory_mib=128, console_log=d / "console.log",
        disks=instance_disks(d / "root.qcow2", d / "seed.iso") + (
            DomainDisk("vdc", NetworkSource("nbd", "vol-0000000000000c001", (
                NetworkHost(socket=tmp_path / "nbd.sock"),)), serial="vol0000000000000c001"),
            DomainDisk("vdd", NetworkSource("rbd", "kumo/vol-0000000000000d001", (
                NetworkHost("10.1.0.1", 6789), NetworkHost("10.1.0.2"))), cache="none"),
        ),
        nics=(DomainNic("52:54:00:00:0c:01", "kb-000001"),))


def volume(tmp_path: Path) -> DomainDisk:
    return DomainDisk("vdb", FileSource(tmp_path / "vol.qcow2"), serial="vol0000000000000b001",
                      cache="writethrough")


@pytest.fixture(params=["fake", "libvirt-test"])
def hv(request, tmp_path):
    if request.param == "fake":
        yield FakeHypervisor()
        return
    node = tmp_path / "node.xml"  # a private test-driver state per test
    node.write_text("<node><cpu><nodes>1</nodes><sockets>1</sockets><cores>2</cores>"
                    "<threads>1</threads></cpu><memory>8388608</memory></node>")
    h = LibvirtHypervisor(libvirt.open(f"test://{node}"), "qemu", poll_interval=0.01)
    yield h
    h.close()


def test_defined_domain_reports_its_disks(hv, tmp_path):
    contract.check_define_reports_plan_disks(hv, plan(tmp_path))


def test_missing_domain(hv, tmp_path):
    contract.check_missing_domain(hv, MISSING, volume(tmp_path))


def test_stats_of_a_shut_off_domain(hv, tmp_path):
    hv.define(plan(tmp_path))
    contract.check_stats_of_defined(hv, plan(tmp_path))


def test_resize_refusals(hv, tmp_path):
    hv.define(plan(tmp_path))
    contract.check_resize_refusals(hv, IID, MISSING)


# -- what the test driver cannot do: on the fake here, on a real libvirtd in the lab ----------

@pytest.fixture
def fake():
    clock = FakeClock()
    hv = FakeHypervisor(clock=clock)
    hv.clock = clock
    return hv


def test_fake_config_attach_detach(fake, tmp_path):
    fake.define(plan(tmp_path))
    contract.check_config_attach_detach(fake, IID, volume(tmp_path), tmp_path)


def test_fake_live_attach_and_released_detach(fake, tmp_path):
    fake.define(plan(tmp_path))
    fake.start(IID)
    contract.check_live_attach(fake, IID, volume(tmp_path), tmp_path)
    contract.check_live_detach_released(fake, IID, "vdb", timeout=1)
    fake.destroy(IID)
    assert "vdb" not in [d.target for d in fake.status(IID).disks]  # the definition lost it too


def test_fake_live_detach_held(fake, tmp_path):
    fake.define(plan(tmp_path))
    fake.start(IID)
    fake.attach_disk(IID, volume(tmp_path))
    fake.hold_device(IID, "vdb")

    def power_cycle():
        fake.destroy(IID)
        fake.start(IID)
    contract.check_live_detach_held(fake, IID, "vdb", power_cycle)


def test_fake_stats_running_and_restart(fake, tmp_path):
    fake.define(plan(tmp_path))
    fake.start(IID)

    def wait():
        fake.clock.now += 5
    wait()  # a guest that has been up a while
    contract.check_stats_running(fake, IID, wait)
    contract.check_stats_across_restart(fake, IID)


def test_fake_live_resize(fake, tmp_path):
    fake.define(plan(tmp_path))
    fake.set_disk_size(IID, "vda", 8 << 20)
    fake.start(IID)
    contract.check_live_resize(fake, IID, "vda")
    assert fake.disk_sizes[(IID, "vda")] == (8 << 20) + (64 << 20)


def test_libvirt_resize_translates_errors_at_the_boundary(tmp_path):
    """test:///default has no virDomainBlockResize: a grow past its fixed capacity is the stable,
    permanent HypervisorUnsupported; a size it already has is a no-op (never a shrink)."""
    node = tmp_path / "node.xml"
    node.write_text("<node><cpu><nodes>1</nodes><sockets>1</sockets><cores>2</cores>"
                    "<threads>1</threads></cpu><memory>8388608</memory></node>")
    h = LibvirtHypervisor(libvirt.open(f"test://{node}"), "qemu", poll_interval=0.01)
    try:
        h.define(plan(tmp_path))
        h.start(IID)
        capacity = h.disk_capacity(IID, "vda")
        h.resize_disk(IID, "vda", 1 << 30)  # below the capacity: nothing asked of libvirt
        with pytest.raises(DriverError) as e:
            h.resize_disk(IID, "vda", capacity + (1 << 30))
        assert e.value.code == "HypervisorUnsupported" and not e.value.retryable
        assert "disk_resize_live" in h.capabilities
    finally:
        h.close()
