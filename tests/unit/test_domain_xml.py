"""Domain XML: golden files for the designer's output, each also defined on libvirt's
test:///default driver to validate it, plus LibvirtHypervisor on the test driver.

Regenerate the golden files with: KUMO_REGEN_GOLDEN=1 .venv/bin/pytest tests/unit/test_domain_xml.py
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import libvirt
import pytest

from agent.drivers.base import (DomainDisk, DomainNic, DomainNotFound, DomainPlan, DriverError,
                                FileSource, NetworkHost, NetworkSource)
from agent.drivers.disks import instance_disks, root_disk
from agent.libvirt.designer import design_domain, ec2_uuid, tap_name
from agent.libvirt.domain import KUMO_NS, Disk, Domain, KumoMetadata
from agent.libvirt.driver import LibvirtHypervisor

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "domains"
REGEN = os.environ.get("KUMO_REGEN_GOLDEN") == "1"
IID = "i-0123456789abcdef0"
IID2 = "i-00000000000000002"
EMU = "/usr/bin/qemu-system-x86_64"

libvirt.registerErrorHandler(lambda *_: None, None)


#: Volumes of every source kind a plan can carry, after the instance's own disks.
VOLUMES = (
    DomainDisk("vdb", FileSource(Path("/var/lib/kumo/volumes/vol-0000000000000b001.raw"), "raw"),
               serial="vol0000000000000b001", cache="none"),
    DomainDisk("vdc", NetworkSource("nbd", "vol-0000000000000c001", (
        NetworkHost(socket=Path("/run/kumo/nbd/vol-0000000000000c001.sock")),)),
               serial="vol0000000000000c001", cache="writethrough"),
    DomainDisk("vdd", NetworkSource("nbd", "snap-0000000000000d001", (
        NetworkHost("10.0.0.5", 10809),)), readonly=True),
    DomainDisk("vde", NetworkSource("rbd", "kumo/vol-0000000000000e001", (
        NetworkHost("mon-1.storage", 6789), NetworkHost("2001:db8::7"))),
               serial="vol0000000000000e001", cache="writeback"),
)


def _plan(name=IID, *, nics=2, seed=True, vcpus=2, memory_mib=256, generation=7,
          base="/var/lib/kumo/agent/instances", volumes=()) -> DomainPlan:
    d = Path(base) / name
    return DomainPlan(
        name=name, vcpus=vcpus, memory_mib=memory_mib,
        disks=instance_disks(d / "root.qcow2", d / "seed.iso" if seed else None) + volumes,
        console_log=d / "console.log",
        nics=tuple(DomainNic(mac=f"52:54:00:00:00:0{i + 1}", bridge=f"kbr-{i}")
                   for i in range(nics)),
        generation=generation)


CASES = {
    "tcg-seed-two-nics": lambda: design_domain(_plan(), "qemu", emulator=EMU),
    "tcg-no-seed-no-nic": lambda: design_domain(_plan(nics=0, seed=False, vcpus=1,
                                                      memory_mib=128, generation=1),
                                                "qemu", emulator=EMU),
    "tcg-cpu-max": lambda: design_domain(_plan(nics=0), "qemu", emulator=EMU,
                                         tcg_cpu_model="max"),
    "kvm-seed-one-nic": lambda: design_domain(_plan(nics=1), "kvm", emulator=EMU),
    # Characters that would break a string template are escaped by ElementTree.
    "escaping": lambda: design_domain(_plan(base="/srv/a&b/<x>/'q\""), "qemu", emulator=EMU),
    "tcg-volumes": lambda: design_domain(_plan(nics=1, volumes=VOLUMES), "qemu", emulator=EMU),
    # Per-disk boot orders replace <os><boot dev='hd'/> (libvirt refuses both together).
    "tcg-boot-order": lambda: design_domain(DomainPlan(
        name=IID, vcpus=1, memory_mib=128, console_log=Path("/var/lib/kumo/console.log"), disks=(
            replace(root_disk(Path("/var/lib/kumo/root.qcow2")), boot_order=2),
            replace(VOLUMES[0], boot_order=1))), "qemu", emulator=EMU),
}


def _test_conn(tmp_path) -> libvirt.virConnect:
    """A private test-driver connection (a node file gives each open its own empty state)."""
    node = tmp_path / "node.xml"
    node.write_text("<node><cpu><nodes>1</nodes><sockets>1</sockets><cores>2</cores>"
                    "<threads>1</threads></cpu><memory>8388608</memory></node>")
    return libvirt.open(f"test://{node}")


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case):
    xml = CASES[case]().to_xml()
    path = GOLDEN / f"{case}.xml"
    if REGEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(xml)
    assert path.exists(), f"missing golden file {path}; run with KUMO_REGEN_GOLDEN=1"
    assert xml == path.read_text(), f"{case} differs from {path} (KUMO_REGEN_GOLDEN=1 to update)"


@pytest.mark.parametrize("case", sorted(CASES))
def test_defines_on_libvirt_test_driver(case, tmp_path):
    domain = CASES[case]()
    conn = _test_conn(tmp_path)
    try:
        dom = conn.defineXML(domain.to_xml())
        back = ET.fromstring(dom.XMLDesc(0))
        assert back.get("type") == domain.type
        assert back.findtext("name") == domain.name
        assert int(back.findtext("memory")) == domain.memory_kib
        assert int(back.findtext("vcpu")) == domain.vcpus
        assert back.find("os/type").get("machine") == "pc"
        # Every disk reads back as designed (libvirt keeps them sorted by bus and target).
        disks = [Disk.from_element(d) for d in back.findall("devices/disk")]
        designed = [d for d in domain.devices if isinstance(d, Disk)]
        by_target = lambda d: d.target_dev  # noqa: E731
        assert sorted(disks, key=by_target) == sorted(designed, key=by_target)
        meta = KumoMetadata.from_xml(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, KUMO_NS, 0))
        assert meta == domain.metadata
        log = back.find("devices/serial/log")
        assert log.get("append") == "on" and log.get("file").endswith("/console.log")
    finally:
        conn.close()


def test_designer_policy():
    d = design_domain(_plan(), "qemu", emulator=EMU)
    root = d.to_element()
    cdrom = root.find("devices/disk[@device='cdrom']")
    assert cdrom.find("target").attrib == {"dev": "hdc", "bus": "ide"}
    assert cdrom.find("readonly") is not None and cdrom.find("driver").get("type") == "raw"
    vda = root.find("devices/disk[@device='disk']")
    assert vda.find("target").attrib == {"dev": "vda", "bus": "virtio"}
    assert vda.find("driver").get("type") == "qcow2"
    assert root.find("cpu").get("mode") == "custom"  # host-passthrough needs KVM
    kvm = design_domain(_plan(), "kvm").to_element()
    assert kvm.get("type") == "kvm" and kvm.find("cpu").get("mode") == "host-passthrough"
    taps = [i.find("target").get("dev") for i in root.findall("devices/interface")]
    assert taps == [tap_name(IID, 0), tap_name(IID, 1)]
    for i in root.findall("devices/interface"):
        assert i.get("type") == "bridge" and i.find("model").get("type") == "virtio"
    assert root.find("devices/rng/backend").text == "/dev/urandom"
    assert root.find("devices/console/target").get("type") == "serial"
    with pytest.raises(ValueError):
        design_domain(_plan(), "xen")


def test_tap_names_stable_short_distinct():
    names = {tap_name(f"i-{n:017x}", i) for n in range(200) for i in range(8)}
    assert len(names) == 1600
    assert all(len(n) <= 15 and n.startswith("tap") for n in names)
    assert tap_name(IID) == tap_name(IID, 0) == "tap" + tap_name(IID)[3:]


def test_escaping_is_structural():
    evil = "</name><devices><disk type='block'/></devices><name>"
    root = ET.fromstring(Domain(name=evil, memory_kib=1024, vcpus=1).to_xml())
    assert root.findtext("name") == evil
    assert root.find("devices/disk") is None


# -- LibvirtHypervisor on the test driver ---------------------------------------------------

@pytest.fixture
def hv(tmp_path):
    conn = _test_conn(tmp_path)
    h = LibvirtHypervisor(conn, "qemu", poll_interval=0.01)
    yield h
    h.close()


def test_define_start_status_list(hv):
    plan = _plan(nics=1)
    assert hv.status(IID).power == "absent"
    hv.define(plan)
    s = hv.status(IID)
    assert (s.power, s.vcpus, s.memory_mib) == ("shutoff", 2, 256)
    hv.start(IID)
    hv.start(IID)  # already running: no-op
    assert hv.status(IID).power == "running"
    hv.define(_plan(IID2, nics=0))
    # The test driver's own "test" domain is not Kumo's and is not listed.
    assert [d.name for d in hv.list_domains()] == [IID2, IID]
    assert hv.defined_generation(IID) == 7
    assert hv.defined_generation("i-fffffffffffffffff") is None


def test_redefine_keeps_uuid_and_applies(hv):
    hv.define(_plan(memory_mib=256, generation=1))
    conn = hv._connection()
    uuid = conn.lookupByName(IID).UUIDString()
    hv.define(_plan(memory_mib=512, generation=2))
    assert conn.lookupByName(IID).UUIDString() == uuid
    assert hv.status(IID).memory_mib == 512
    assert hv.defined_generation(IID) == 2


def test_destroy_shutdown_undefine_absent_are_noops(hv):
    hv.destroy("i-fffffffffffffffff")
    hv.shutdown("i-fffffffffffffffff", 0.1)
    hv.undefine("i-fffffffffffffffff")
    hv.define(_plan())
    hv.destroy(IID)  # shut off already: no-op
    hv.shutdown(IID, 0.1)


def test_start_reboot_missing_raise_not_found(hv):
    with pytest.raises(DomainNotFound):
        hv.start("i-fffffffffffffffff")
    with pytest.raises(DomainNotFound):
        hv.reboot("i-fffffffffffffffff")


def test_shutdown_then_destroy_after_timeout(hv):
    hv.define(_plan())
    hv.start(IID)
    hv.shutdown(IID, 0.2)  # the test driver powers off on ACPI at once
    assert hv.status(IID).power == "shutoff"


def test_reboot_and_undefine_running(hv):
    hv.define(_plan())
    hv.reboot(IID)  # shut off: a reboot starts it
    assert hv.status(IID).power == "running"
    hv.reboot(IID)
    assert hv.status(IID).power == "running"
    hv.undefine(IID)
    assert hv.status(IID).power == "absent"
    assert hv.list_domains() == []


def test_invalid_definition_has_stable_code(hv):
    with pytest.raises(DriverError) as e:
        hv.define(_plan(memory_mib=0))
    assert e.value.code in ("InvalidDomainDefinition", "HypervisorError")


def test_reconnects_after_connection_drop(tmp_path):
    """libvirtd restarts: the driver notices the dead connection and opens a new one."""
    opened = []

    def factory():
        c = libvirt.open("test:///default")  # shared state across opens within the process
        opened.append(c)
        return c

    keeper = libvirt.open("test:///default")  # keeps the shared state alive across reopens
    h = LibvirtHypervisor(factory, "qemu")
    name = "i-0000000000000dead"
    try:
        h.define(_plan(name, nics=0))
        opened[0].close()  # the connection dies under the driver
        assert h.status(name).power == "shutoff"
        assert len(opened) == 2
    finally:
        h.undefine(name)
        h.close()
        keeper.close()


def test_unreachable_libvirt_is_retryable_error(tmp_path):
    h = LibvirtHypervisor(f"qemu:///system?socket={tmp_path}/none.sock", "qemu")
    with pytest.raises(DriverError) as e:
        h.status(IID)
    assert e.value.code == "HypervisorUnavailable" and e.value.retryable


def test_status_and_stats_on_the_test_driver(hv):
    plan = _plan(nics=1, volumes=VOLUMES)
    hv.define(plan)
    assert hv.status(IID).disks == tuple(sorted(plan.disks, key=lambda d: d.target))
    hv.start(IID)
    assert hv.status(IID).disks == tuple(sorted(plan.disks, key=lambda d: d.target))
    conn = hv._connection()
    conn.defineXML(Domain(name="pet", memory_kib=1024, vcpus=1).to_xml())  # not Kumo's
    [s] = hv.stats()
    assert (s.name, s.active, s.run_id) == (IID, True, conn.lookupByName(IID).ID())
    assert [x.name for x in hv.stats(["pet", IID])] == [IID, "pet"]  # asked for by name
    hv.destroy(IID)
    assert hv.stats([IID])[0].active is False


def test_test_driver_without_hotplug_has_a_stable_code(hv):
    """The test driver cannot attach devices; the error says so with a stable code."""
    hv.define(_plan())
    with pytest.raises(DriverError) as e:
        hv.attach_disk(IID, VOLUMES[0])
    assert e.value.code == "HypervisorUnsupported" and not e.value.retryable
    with pytest.raises(DomainNotFound):
        hv.attach_disk("i-fffffffffffffffff", VOLUMES[0])


def test_smbios_says_ec2_as_cloud_init_checks(hv):
    """cloud-init (ds-identify, DataSourceEc2) takes a guest for EC2 when its SMBIOS system uuid
    and serial both start with "ec2" and are equal: the domain's uuid is derived from the
    instance id, and the sysinfo repeats whatever uuid the domain has."""
    hv.define(_plan())
    conn = hv._connection()
    xml = ET.fromstring(conn.lookupByName(IID).XMLDesc(0))
    uuid = xml.findtext("uuid")
    assert uuid == ec2_uuid(IID) and uuid.startswith("ec2") and ec2_uuid(IID2) != uuid
    entries = {e.get("name"): e.text for e in xml.findall("sysinfo[@type='smbios']/system/entry")}
    assert entries["uuid"] == entries["serial"] == uuid
    assert entries["manufacturer"] == "Kumo"
    assert xml.find("os/smbios").get("mode") == "sysinfo"
    # A domain defined before (another uuid) keeps it; its sysinfo follows it, as libvirt needs.
    conn.lookupByName(IID).undefine()
    legacy = design_domain(_plan(), "qemu", emulator=EMU)
    legacy.uuid = "0f0e0d0c-0b0a-0908-0706-050403020100"
    conn.defineXML(legacy.to_xml())
    hv.define(_plan(generation=8))
    xml = ET.fromstring(conn.lookupByName(IID).XMLDesc(0))
    assert xml.findtext("uuid") == legacy.uuid
    assert xml.find("sysinfo/system/entry[@name='serial']").text == legacy.uuid
