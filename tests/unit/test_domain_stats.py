"""Per-domain statistics: the CPU utilization helper, DomainStats from libvirt's bulk records,
and the fake's counters (they start with each run, grow only within it, CPU only while running)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from agent.drivers.base import DomainDisk, DomainNic, DomainPlan, DriverError, FileSource
from agent.drivers.disks import instance_disks
from agent.drivers.fake import FakeHypervisor
from agent.drivers.stats import DiskCounters, DomainStats, NicCounters, cpu_utilization
from agent.libvirt.names import tap_name
from agent.libvirt.stats import from_record

IID = "i-00000000000005a7a"


def sample(t: float, cpu_s: float, *, vcpus: int = 2, run_id: int | None = 4,
           active: bool = True, name: str = IID) -> DomainStats:
    return DomainStats(name, active, run_id, int(cpu_s * 1e9), vcpus, (), (), t, 1.7e9 + t)


def test_cpu_utilization():
    # 3 s of CPU over 2 vCPUs in 2 s: 75 %.
    assert cpu_utilization(sample(10, 1), sample(12, 4)) == pytest.approx(0.75)
    assert cpu_utilization(sample(10, 1), sample(12, 1)) == 0.0  # idle
    assert cpu_utilization(sample(10, 1, vcpus=1), sample(11, 2.5, vcpus=1)) == 1.0  # capped


@pytest.mark.parametrize("prev,cur", [
    (sample(10, 5), sample(12, 1, run_id=5)),        # restarted: counters began again
    (sample(10, 5, run_id=None), sample(12, 6, run_id=None)),
    (sample(10, 1), sample(12, 0.5)),                # backwards within "one run"
    (sample(12, 1), sample(10, 2)),                  # out of order
    (sample(10, 1), sample(10, 2)),                  # no time elapsed
    (sample(10, 1), sample(12, 2, name="i-00000000000000bad")),
    (sample(10, 1), sample(12, 0, active=False, run_id=None, vcpus=0)),
    (sample(10, 1, vcpus=0), sample(12, 2, vcpus=0)),
])
def test_cpu_utilization_is_none_when_not_comparable(prev, cur):
    assert cpu_utilization(prev, cur) is None


def test_from_libvirt_record():
    record = {
        "state.state": 1, "state.reason": 1, "cpu.time": 123_000_000, "cpu.user": 1,
        "vcpu.current": 2, "vcpu.maximum": 2, "vcpu.0.state": 1, "vcpu.0.time": 50_000_000,
        "net.count": 1, "net.0.name": "tap0123456789a", "net.0.rx.bytes": 1000,
        "net.0.rx.pkts": 10, "net.0.rx.errs": 0, "net.0.tx.bytes": 2000, "net.0.tx.pkts": 20,
        "block.count": 2, "block.0.name": "vdb", "block.0.rd.bytes": 4096, "block.0.rd.reqs": 1,
        "block.0.wr.bytes": 8192, "block.0.wr.reqs": 2, "block.1.name": "vda",
        "block.1.rd.bytes": 512, "block.1.rd.reqs": 3, "block.1.wr.reqs": 4,
    }
    s = from_record(IID, 9, record, 5.0, 1.7e9)
    assert s == DomainStats(IID, True, 9, 123_000_000, 2,
                            (NicCounters("tap0123456789a", 1000, 10, 2000, 20),),
                            (DiskCounters("vda", 512, 3, 0, 4), DiskCounters("vdb", 4096, 1, 8192, 2)),
                            5.0, 1.7e9)
    # Without a cpuacct cgroup: the vCPUs' own time.
    no_cgroup = {k: v for k, v in record.items() if k != "cpu.time"}
    no_cgroup["vcpu.1.time"] = 25_000_000
    assert from_record(IID, 9, no_cgroup, 5.0, 1.7e9).cpu_time_ns == 75_000_000
    # Shut off (id -1): no counters whatever the record holds.
    assert from_record(IID, -1, {"state.state": 5}, 5.0, 1.7e9) == DomainStats(
        IID, False, None, 0, 0, (), (), 5.0, 1.7e9)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake(tmp_path):
    clock = Clock()
    hv = FakeHypervisor(clock=clock)
    hv.clock = clock
    d = tmp_path / IID
    hv.define(DomainPlan(name=IID, vcpus=2, memory_mib=64, console_log=d / "console.log",
                         disks=instance_disks(d / "root.qcow2", d / "seed.iso"),
                         nics=(DomainNic("52:54:00:00:5a:01", "kb-000001"),)))
    return hv


def test_fake_cpu_advances_only_while_running(fake):
    [off] = fake.stats([IID])
    fake.clock.now += 10
    assert fake.stats([IID])[0].cpu_time_ns == off.cpu_time_ns == 0
    fake.start(IID)
    fake.set_cpu_load(IID, 0.25)
    fake.clock.now += 4
    [a] = fake.stats([IID])
    assert a.cpu_time_ns == 2_000_000_000  # 4 s x 2 vCPUs x 25 %
    fake.set_cpu_load(IID, 1.0)
    fake.clock.now += 1
    [b] = fake.stats([IID])
    assert b.cpu_time_ns == 4_000_000_000 and cpu_utilization(a, b) == 1.0
    fake.shutdown(IID, 1)
    fake.clock.now += 10
    assert fake.stats([IID])[0].cpu_time_ns == 0
    fake.start(IID)
    fake.clock.now += 1
    [c] = fake.stats([IID])
    assert c.run_id != b.run_id and c.cpu_time_ns == 2_000_000_000  # a new run from zero


def test_fake_traffic_and_io_grow_within_a_run(fake):
    with pytest.raises(DriverError) as e:
        fake.traffic(IID, tap_name(IID, 0), rx_bytes=1)  # a shut-off guest moves nothing
    assert e.value.code == "DomainNotRunning"
    fake.start(IID)
    tap = tap_name(IID, 0)
    fake.traffic(IID, tap, rx_bytes=1500, rx_packets=1)
    fake.traffic(IID, tap, tx_bytes=100, tx_packets=2)
    fake.disk_io(IID, "vda", read_bytes=4096, read_requests=1)
    with pytest.raises(DriverError):
        fake.disk_io(IID, "vdq", read_bytes=1)
    [s] = fake.stats([IID])
    assert s.nics == (NicCounters(tap, 1500, 1, 100, 2),)
    assert s.disks == (DiskCounters("hdc"), DiskCounters("vda", 4096, 1, 0, 0))
    vol = DomainDisk("vdb", FileSource(Path("/v/vol.qcow2")))
    fake.attach_disk(IID, vol)
    fake.disk_io(IID, "vdb", write_bytes=512, write_requests=1)
    assert fake.stats([IID])[0].disks[-1] == DiskCounters("vdb", 0, 0, 512, 1)
    fake.detach_disk(IID, "vdb")
    assert [d.target for d in fake.stats([IID])[0].disks] == ["hdc", "vda"]
    fake.destroy(IID)
    fake.start(IID)
    assert fake.stats([IID])[0].nics == (NicCounters(tap),)  # a new run starts from zero


def test_fake_stats_names(fake, tmp_path):
    other = "i-00000000000005a7b"
    fake.define(replace(fake.domains[IID].plan, name=other))
    assert [s.name for s in fake.stats()] == [IID, other]
    assert [s.name for s in fake.stats([other, "i-fffffffffffffffff"])] == [other]
    assert fake.stats([]) == []
