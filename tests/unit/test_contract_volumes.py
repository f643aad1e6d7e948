"""Contract extension "volumes": InstanceSpec.volumes validation, the disks the agent derives
from it, the fingerprint DomainDefined redefines on, and InstanceObserved.volumes."""
from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.contract.v1 import EXTENSIONS, InstanceObserved, InstanceSpec, VolumeAttachment
from agent.drivers.base import DomainDisk, FileSource, NetworkHost, NetworkSource
from agent.drivers.fake import FakeHypervisor, FakeStorage
from agent.reconcile.steps import Drivers, InstanceContext, attached_volumes, volume_disk
from agent.state import Runtime

VOL1 = "vol-" + "a" * 17
VOL2 = "vol-" + "b" * 17


def make_spec(**over) -> dict:
    spec = {"instance_id": "i-" + "1" * 17, "generation": 1, "power": "running", "vcpus": 1,
            "memory_mib": 128, "root_disk_bytes": 2 << 30, "hostname": "web-1",
            "image": {"image_id": "ami-" + "1" * 17, "url": "file:///nonexistent/img.qcow2",
                      "sha256": "ab" * 32, "virtual_size": 1 << 30}}
    spec.update(over)
    return spec


def vol(volume_id=VOL1, device="vdb", **source) -> dict:
    src = {"protocol": "nbd", "host": "10.9.0.5", "port": 10809, "export": volume_id}
    src.update(source)
    return {"volume_id": volume_id, "device": device, "source": src}


def spec(volumes) -> InstanceSpec:
    return InstanceSpec.model_validate(make_spec(volumes=volumes))


def test_extension_is_named_and_defaults_are_empty():
    assert "volumes" in EXTENSIONS
    assert InstanceSpec.model_validate(make_spec()).volumes == []
    assert InstanceObserved(instance_id="i-" + "0" * 17, power="running").volumes == []


def test_a_valid_volume():
    v = spec([vol(), vol(VOL2, "vdz", host="storage-1.lab.example", port=1)]).volumes
    assert [(x.volume_id, x.device, x.source.host) for x in v] == [
        (VOL1, "vdb", "10.9.0.5"), (VOL2, "vdz", "storage-1.lab.example")]
    assert v[0].disk_serial == "vol" + "a" * 17 and len(v[0].disk_serial) == 20
    given = VolumeAttachment.model_validate({**vol(), "serial": "data-1"})
    assert given.disk_serial == "data-1"


@pytest.mark.parametrize("bad", [
    {"device": "vda"}, {"device": "vdaa"}, {"device": "sdb"}, {"device": "hdc"},
    {"device": "vdb\n"}, {"volume_id": "vol-123"}, {"volume_id": "vol-" + "A" * 17},
    {"serial": "x" * 21}, {"serial": "a b"}, {"serial": "<x>"},
])
def test_bad_attachment_fields_are_refused(bad):
    with pytest.raises(ValidationError):
        spec([{**vol(), **bad}])


@pytest.mark.parametrize("bad", [
    {"host": "10.0.0.256"}, {"host": "1.2.3"}, {"host": "a b"}, {"host": "-storage"},
    {"host": "storage:10809"}, {"host": "[::1]"}, {"host": ""}, {"host": "h" * 254},
    {"host": "x'/><disk"}, {"port": 0}, {"port": 65536},
    {"export": ""}, {"export": "a b"}, {"export": "../etc"}, {"export": "-x"},
    {"export": "a/b"}, {"export": "x" * 129}, {"protocol": "rbd"}, {"protocol": "iscsi"},
])
def test_bad_sources_are_refused(bad):
    with pytest.raises(ValidationError):
        spec([vol(**bad)])


@pytest.mark.parametrize("volumes", [
    [vol(VOL1, "vdb"), vol(VOL2, "vdb")],                       # device twice
    [vol(VOL1, "vdb"), vol(VOL1, "vdc")],                       # volume twice
    [vol(VOL1, "vdb"), vol(VOL2, "vdc", export=VOL1)],          # one export twice
    [{**vol(VOL1, "vdb"), "serial": "s1"}, {**vol(VOL2, "vdc"), "serial": "s1"}],
    [vol(f"vol-{i:017x}", "vd" + chr(ord("b") + i)) for i in range(17)],  # more than 16
])
def test_duplicates_and_too_many_are_refused(volumes):
    with pytest.raises(ValidationError):
        spec(volumes)


def test_volume_disk_is_a_virtio_nbd_disk_that_honours_flushes_and_pauses_on_errors():
    v = spec([vol()]).volumes[0]
    assert volume_disk(v) == DomainDisk(
        target="vdb", source=NetworkSource("nbd", VOL1, (NetworkHost("10.9.0.5", 10809),)),
        bus="virtio", serial="vol" + "a" * 17, cache="none", error_policy="stop")


def ctx_for(s: InstanceSpec, tmp_path: Path) -> InstanceContext:
    rt = Runtime(disk_path=str(tmp_path / "root.qcow2"), seed_path=str(tmp_path / "seed.iso"))
    return InstanceContext(spec=s, rt=rt, drivers=Drivers(FakeHypervisor(), FakeStorage(tmp_path)),
                           shutdown_timeout=1, clock=lambda: 0.0)


def test_plan_carries_volumes_but_the_define_key_ignores_them(tmp_path):
    bare, with_vol = ctx_for(spec([]), tmp_path), ctx_for(spec([vol()]), tmp_path)
    assert [d.target for d in with_vol.plan().disks] == ["vda", "hdc", "vdb"]
    assert bare.plan_key() == with_vol.plan_key()
    bigger = ctx_for(InstanceSpec.model_validate(make_spec(vcpus=2, volumes=[vol()])), tmp_path)
    assert bigger.plan_key() != with_vol.plan_key()


def test_observed_volumes_name_each_volume_disk(tmp_path):
    s = spec([vol()])
    root = DomainDisk("vda", FileSource(tmp_path / "root.qcow2"))
    foreign = DomainDisk("vdc", NetworkSource("nbd", "other", (NetworkHost("h", 1),)),
                         serial="vol" + "c" * 17)
    unknown = DomainDisk("vdd", NetworkSource("nbd", "x", (NetworkHost("h", 1),)))
    got = attached_volumes(s, (unknown, root, volume_disk(s.volumes[0]), foreign))
    assert [(a.device, a.volume_id) for a in got] == [
        ("vdb", VOL1), ("vdc", "vol-" + "c" * 17), ("vdd", None)]
