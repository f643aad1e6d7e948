"""DomainDisk and DomainPlan validation (bad input -> a stable code before any driver runs), the
attach rules both drivers share (agent/drivers/disks.py) and reading disks back from libvirt's
XML (agent/libvirt/disks.py)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from agent.drivers.base import (DeviceNotHotpluggable, DeviceSourceInUse, DeviceTargetInUse,
                                DomainDisk, DomainPlan, FileSource, InvalidDevice, NetworkHost,
                                NetworkSource)
from agent.drivers.disks import instance_disks, plan_attach, root_disk, seed_cdrom
from agent.libvirt import nbd_reconnect
from agent.libvirt.disks import disk_alias, from_domain_xml, from_xml_disk, to_xml_disk

VOL = DomainDisk("vdb", FileSource(Path("/v/vol.qcow2")), serial="vol0000000000000b001")
NBD = NetworkSource("nbd", "vol-1", (NetworkHost(socket=Path("/run/nbd.sock")),))


@pytest.mark.parametrize("make", [
    lambda: DomainDisk("vdb", FileSource(Path("vol.qcow2"))),                 # relative path
    lambda: DomainDisk("vdb", FileSource(Path("/v/a\nb"))),                   # control character
    lambda: DomainDisk("vdb", FileSource(Path("/v/a"), "vmdk")),              # format
    lambda: DomainDisk("sdb", FileSource(Path("/v/a"))),                      # virtio needs vd*
    lambda: DomainDisk("hde", FileSource(Path("/v/a")), bus="ide"),           # IDE has hda-hdd
    lambda: DomainDisk("vdb", FileSource(Path("/v/a")), bus="usb"),           # bus
    lambda: DomainDisk("vdb", FileSource(Path("/v/a")), cache="unsafe"),      # loses writes
    lambda: DomainDisk("vdb", FileSource(Path("/v/a")), serial="v" * 21),     # > 20 chars
    lambda: DomainDisk("vdb", FileSource(Path("/v/a")), serial="a b"),        # space
    lambda: DomainDisk("vdb", FileSource(Path("/v/a")), serial="</serial>"),  # markup
    lambda: DomainDisk("vdb", FileSource(Path("/v/a")), boot_order=0),
    lambda: DomainDisk("vdb", FileSource(Path("/v/a")), device="floppy"),
    lambda: DomainDisk("hdc", FileSource(Path("/v/a")), device="cdrom", bus="ide"),  # writable
    lambda: DomainDisk("vdb", FileSource(Path("/v/a")), device="cdrom", readonly=True),
    lambda: DomainDisk("vdb", "/v/a"),                                        # not a source
    lambda: NetworkSource("iscsi", "x", (NetworkHost("h"),)),
    lambda: NetworkSource("nbd", "x", ()),                                    # no host
    lambda: NetworkSource("nbd", "x", (NetworkHost("a"), NetworkHost("b"))),  # two hosts
    lambda: NetworkSource("nbd", "a b", (NetworkHost("h"),)),
    lambda: NetworkSource("rbd", "image-without-pool", (NetworkHost("h"),)),
    lambda: NetworkSource("rbd", "p/i", (NetworkHost(socket=Path("/s")),)),   # RBD is TCP
    lambda: NetworkHost(),                                                    # neither
    lambda: NetworkHost("h", socket=Path("/s")),                              # both
    lambda: NetworkHost("h", port=0),
    lambda: NetworkHost("h", port=65536),
    lambda: NetworkHost("h'><x", port=1),
    lambda: NetworkHost(socket=Path("/s"), port=1),
    lambda: NetworkHost(socket=Path("rel.sock")),
    lambda: DomainDisk("vdb", FileSource(Path("/v/a")), error_policy="ignore"),  # hides errors
])
def test_bad_disks_have_a_stable_code(make):
    with pytest.raises(InvalidDevice) as e:
        make()
    assert e.value.code == "InvalidDeviceDefinition" and not e.value.retryable


def test_good_disks():
    for cache in (None, "none", "writethrough", "writeback", "directsync"):
        DomainDisk("vdb", FileSource(Path("/v/a"), "raw"), cache=cache)
    DomainDisk("sda", NBD, bus="scsi")
    DomainDisk("sdc", FileSource(Path("/v/a.iso"), "raw"), device="cdrom", bus="sata",
               readonly=True)
    NetworkSource("rbd", "kumo/vol-1", (NetworkHost("10.0.0.1", 6789), NetworkHost("fd00::1")))


def test_instance_disks_policy():
    root, seed = instance_disks(Path("/i/root.qcow2"), Path("/i/seed.iso"))
    assert root == root_disk(Path("/i/root.qcow2"))
    assert (root.target, root.bus, root.device, root.source.format) == ("vda", "virtio", "disk",
                                                                       "qcow2")
    assert seed == seed_cdrom(Path("/i/seed.iso"))
    assert (seed.target, seed.bus, seed.device, seed.readonly, seed.source.format) == (
        "hdc", "ide", "cdrom", True, "raw")
    assert instance_disks(Path("/i/root.qcow2"), None) == (root,)


def test_plan_refuses_a_target_or_boot_order_twice():
    own = instance_disks(Path("/i/root.qcow2"), None)
    base = dict(name="i-00000000000000001", vcpus=1, memory_mib=64, console_log=Path("/i/c"))
    with pytest.raises(InvalidDevice):
        DomainPlan(disks=own + (replace(VOL, target="vda"),), **base)
    with pytest.raises(InvalidDevice):
        DomainPlan(disks=(replace(own[0], boot_order=1), replace(VOL, boot_order=1)), **base)
    DomainPlan(disks=(replace(own[0], boot_order=1), replace(VOL, boot_order=2)), **base)


def test_attach_rules():
    own = instance_disks(Path("/i/root.qcow2"), Path("/i/seed.iso"))
    assert plan_attach(own, None, VOL) == (True, False)      # shut off: the definition only
    assert plan_attach(own, own, VOL) == (True, True)        # running: both
    assert plan_attach(own + (VOL,), own + (VOL,), VOL) == (False, False)  # already there
    assert plan_attach(own + (VOL,), own, VOL) == (False, True)  # the guest lacks it only
    with pytest.raises(DeviceTargetInUse):  # another file on the root disk's target
        plan_attach(own, own, replace(own[0], source=FileSource(Path("/v/other.qcow2"))))
    with pytest.raises(DeviceTargetInUse):  # the same target, other settings
        plan_attach(own + (VOL,), None, replace(VOL, cache="none"))
    with pytest.raises(DeviceSourceInUse):  # the root disk's file writable a second time
        plan_attach(own, None, replace(own[0], target="vdc"))
    ro_seed = replace(own[1], target="hdd")  # a read-only source may be shared read-only
    assert plan_attach(own, None, ro_seed) == (True, False)
    with pytest.raises(DeviceNotHotpluggable):
        plan_attach(own, own, ro_seed)
    # Both definitions are checked before either would change.
    with pytest.raises(DeviceTargetInUse):
        plan_attach(own, own + (replace(VOL, serial=None),), VOL)


LIVE_XML = """<domain type='qemu' id='7'><name>i-00000000000000001</name><devices>
  <disk type='file' device='disk'>
    <driver name='qemu' type='qcow2'/>
    <source file='/i/root.qcow2' index='2'/>
    <backingStore type='file' index='3'><format type='qcow2'/><source file='/img/base.qcow2'/>
      <backingStore/></backingStore>
    <target dev='vda' bus='virtio'/>
    <alias name='virtio-disk0'/>
    <address type='pci' domain='0x0000' bus='0x00' slot='0x04' function='0x0'/>
  </disk>
  <disk type='network' device='disk'>
    <driver name='qemu' type='raw' cache='none'/>
    <source protocol='nbd' name='vol-1' index='1'><host transport='unix' socket='/run/nbd.sock'/>
    </source>
    <target dev='vdb' bus='virtio'/>
    <serial>vol0000000000000b001</serial>
    <alias name='virtio-disk1'/>
  </disk>
  <disk type='block' device='disk'><source dev='/dev/sdz'/><target dev='vdc' bus='virtio'/></disk>
  <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='hdc' bus='ide'/>
    <readonly/></disk>
  <disk type='file' device='disk'><source file='/x'/><target dev='sda' bus='usb'/></disk>
</devices></domain>"""


def test_disks_read_back_from_live_xml():
    """What libvirt adds (index, backing chain, alias, address) is ignored; kinds Kumo never
    defines (a block device, an empty cdrom tray, a USB disk) are left out."""
    assert from_domain_xml(LIVE_XML) == (
        root_disk(Path("/i/root.qcow2")),
        DomainDisk("vdb", NBD, serial="vol0000000000000b001", cache="none"))
    assert disk_alias(LIVE_XML, "vdb") == "virtio-disk1"
    assert disk_alias(LIVE_XML, "vdz") is None


def test_error_policy_stop_reads_back_only_when_reads_and_writes_both_stop():
    both = LIVE_XML.replace("cache='none'/>",
                            "cache='none' error_policy='stop' rerror_policy='stop'/>")
    assert from_domain_xml(both)[1].error_policy == "stop"
    for one in ("error_policy='stop'", "rerror_policy='stop'",
                "error_policy='stop' rerror_policy='report'"):
        xml = LIVE_XML.replace("cache='none'/>", f"cache='none' {one}/>")
        assert from_domain_xml(xml)[1].error_policy is None


def test_nbd_reconnect_finds_the_network_disks_block_node():
    assert nbd_reconnect.storage_node(LIVE_XML, "vdb") == "libvirt-1-storage"
    assert nbd_reconnect.storage_node(LIVE_XML, "vda") is None  # a file disk
    assert nbd_reconnect.storage_node(LIVE_XML, "vdz") is None
    assert nbd_reconnect.storage_node(LIVE_XML.replace(" index='1'", ""), "vdb") is None
    assert nbd_reconnect.storage_node(LIVE_XML.replace("index='1'", "index='1 x'"), "vdb") is None
    assert nbd_reconnect.network_nodes(LIVE_XML) == ["libvirt-1-storage"]
    assert nbd_reconnect.network_nodes(LIVE_XML.replace("protocol='nbd'", "protocol='rbd'")) == []
    with pytest.raises(ValueError):
        nbd_reconnect.poke(None, 'libvirt-1-storage" "write 0 1')  # never reaches the monitor


@pytest.mark.parametrize("disk", [
    VOL, DomainDisk("vdc", NBD, readonly=True, boot_order=3, cache="directsync"),
    DomainDisk("vdc", NBD, serial="vol0000000000000b001", cache="none", error_policy="stop"),
    DomainDisk("vdd", NetworkSource("rbd", "p/i", (NetworkHost("m1", 6789), NetworkHost("m2")))),
    seed_cdrom(Path("/i/seed.iso")),
])
def test_xml_round_trip(disk):
    assert from_xml_disk(to_xml_disk(disk)) == disk
