"""The pure rules of controller/services/volumes.py: device names and their virtio targets, sizes,
the live-grow check, tags, and list filters parsed from REST parameters and EC2 filter names."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from controller.errors import InvalidParameter, KumoError
from controller.models.volume import Volume
from controller.services import volumes
from controller.services.volumes import VolumeFilters, check_device, virtio_target
from controller.settings import Settings


@pytest.mark.parametrize("device,target", [
    ("/dev/sdf", "vdf"), ("/dev/xvdf", "vdf"), ("/dev/vdf", "vdf"),
    ("/dev/sdb", "vdb"), ("/dev/xvdz", "vdz"), ("/dev/vdp", "vdp"),
])
def test_virtio_target(device, target):
    assert virtio_target(device) == target
    assert check_device(device) == target


@pytest.mark.parametrize("device", [
    "/dev/sda", "/dev/vda", "/dev/xvda", "/dev/sda1", "/dev/sdf1", "/dev/hdb", "/dev/sdB",
    "sdf", "vdf", "/dev/sd", "/dev/nvme1n1", "/dev/../sdf", "/dev/sdf\n", " /dev/sdf", "",
    "/dev/vdaa", "/dev/sdff",
])
def test_virtio_target_refuses(device):
    with pytest.raises(ValueError):
        virtio_target(device)
    with pytest.raises(InvalidParameter) as e:
        check_device(device)
    assert e.value.code == "InvalidParameterValue" and e.value.status == 400


@pytest.mark.parametrize("device", sorted(volumes.ROOT_DEVICES))
def test_root_devices_are_reserved(device):
    with pytest.raises(InvalidParameter, match="reserved for the root device"):
        check_device(device)


def test_every_letter_maps_to_its_own_target():
    letters = "bcdefghijklmnopqrstuvwxyz"
    targets = {virtio_target(f"/dev/sd{c}") for c in letters}
    assert len(targets) == 25 and "vda" not in targets


def test_check_size():
    s = Settings(max_volume_gib=10)
    volumes.check_size(1, s)
    volumes.check_size(10, s)
    for bad in (0, -1, 11):
        with pytest.raises(InvalidParameter):
            volumes.check_size(bad, s)


def _volume(state: str) -> Volume:
    now = datetime.now(timezone.utc)
    return Volume(volume_id="vol-1", account_id="acct-1", size_gib=1, state=state,
                  availability_zone="kumo-1a", created_at=now, updated_at=now)


def test_an_attached_volume_grows_live():
    volumes.check_growable(_volume("available"))
    volumes.check_growable(_volume("in-use"))


def test_growing_an_attached_volume_on_a_stack_that_cannot(monkeypatch):
    monkeypatch.setattr(volumes, "LIVE_GROW_SUPPORTED", False)
    with pytest.raises(KumoError) as e:
        volumes.check_growable(_volume("in-use"))
    assert (e.value.code, e.value.status) == ("UnsupportedOperation", 400)
    assert "detach the volume to grow it" in e.value.message


def test_check_tags():
    volumes.check_tags({"Name": "x", "a b": ""})
    for bad in ({"kumo:x": "1"}, {"KUMO:x": "1"}, {"": "1"}, {"k": "\n"},
                {f"k{i}": "" for i in range(51)}):
        with pytest.raises(InvalidParameter) as e:
            volumes.check_tags(bad)
        assert e.value.code == "InvalidTag"


def test_filters_from_rest_query():
    f = VolumeFilters.from_query([
        ("volume_id", "vol-1,vol-2"), ("volume_id", "vol-3"), ("status", "available"),
        ("attachment_instance_id", "i-1"), ("attachment_status", "attached,detaching"),
        ("size", "10,20"), ("tag:Name", "web"), ("max_results", "5"), ("next_token", "x")])
    assert f.volume_ids == ("vol-1", "vol-2", "vol-3")
    assert f.states == ("available",)
    assert f.attachment_instance_ids == ("i-1",)
    assert f.attachment_states == ("attached", "detaching")
    assert f.sizes == (10, 20)
    assert f.tags == {"Name": "web"}
    assert VolumeFilters.from_query([]) == VolumeFilters()
    assert VolumeFilters.from_query([("status", "")]) == VolumeFilters()


def test_filters_from_ec2_names():
    f = VolumeFilters.from_filters({"volume-id": ["vol-1"], "status": ["in-use"],
                                    "attachment.instance-id": ["i-1"],
                                    "attachment.status": ["attaching"], "size": ["3"],
                                    "tag:team": ["a"]})
    assert f == VolumeFilters(("vol-1",), ("in-use",), ("i-1",), ("attaching",), (3,),
                              {"team": "a"})
    with pytest.raises(InvalidParameter):
        VolumeFilters.from_filters({"color": ["red"]})
    with pytest.raises(InvalidParameter):
        VolumeFilters.from_filters({"size": ["big"]})
