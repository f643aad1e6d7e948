"""The rules of controller/services/block_devices.py: device keys, root mappings, volume mappings
(sizes, snapshots, limits), images' mappings and their override, the quota over every instance,
and the rows apply() writes; on a migrated SQLite database, no controller app."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from pydantic import ValidationError
from sqlmodel import select

from controller import db_migrate
from controller.db import Database
from controller.errors import KumoError
from controller.models import (Account, Image, Instance, RunInstancesRequest, Snapshot, Volume,
                               VolumeAttachmentRow)
from controller.models.block_device import BlockDeviceMapping
from controller.services import block_devices
from controller.services.accounts import Caller
from controller.settings import Settings

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
ALICE = Caller(account_id="acct-alice", name="alice", is_admin=False)
BOB = Caller(account_id="acct-bob", name="bob", is_admin=False)


@pytest.fixture
def db(tmp_path):
    d = Database(f"sqlite:///{tmp_path}/c.db")
    db_migrate.upgrade(d)
    with d.session() as s:
        for c in (ALICE, BOB):
            s.add(Account(account_id=c.account_id, name=c.name, api_key_hash=c.name * 8,
                          is_admin=False, created_at=NOW))
        s.flush()
        for sid, owner, state, size in (("snap-done", ALICE, "completed", 4),
                                        ("snap-pending", ALICE, "pending", 1),
                                        ("snap-gone", ALICE, "deleted", 1),
                                        ("snap-bob", BOB, "completed", 2)):
            s.add(Snapshot(snapshot_id=sid, account_id=owner.account_id, volume_id="vol-x",
                           volume_size_gib=size, state=state, start_time=NOW, created_at=NOW,
                           updated_at=NOW))
    yield d
    d.dispose()


def settings(**kw) -> Settings:
    base = dict(storage_url="http://storage.test:8790")
    base.update(kw)
    return Settings(**base)


def m(device: str, **ebs) -> BlockDeviceMapping:
    no_device = ebs.pop("no_device", False)
    return BlockDeviceMapping(device_name=device, ebs=ebs, no_device=no_device)


def validate(db, mappings, caller=ALICE, st=None, **kw):
    with db.session(notify=False) as s:
        return block_devices.validate(s, st or settings(), caller, mappings, **kw)


def code(db, mappings, caller=ALICE, st=None, **kw) -> tuple[int, str]:
    with pytest.raises(KumoError) as e:
        validate(db, mappings, caller, st, **kw)
    return e.value.status, e.value.code


@pytest.mark.parametrize("device,key", [
    ("/dev/sda1", "root"), ("/dev/xvda", "root"), ("/dev/sda", "root"), ("/dev/vda", "root"),
    ("/dev/sdf", "vdf"), ("/dev/xvdf", "vdf"), ("/dev/vdz", "vdz"),
])
def test_device_key(device, key):
    assert block_devices.device_key(device) == key


def test_no_mappings_is_an_empty_plan(db):
    plan = validate(db, [])
    assert plan.root_gib is None and plan.volumes == () and plan.gib_per_instance == 0


def test_new_and_snapshot_volumes(db):
    plan = validate(db, [m("/dev/xvdg", snapshot_id="snap-done", delete_on_termination=False),
                         m("/dev/sdf", volume_size_gib=3), m("/dev/sda1", volume_size_gib=9),
                         m("/dev/sdh", snapshot_id="snap-done", volume_size_gib=6)])
    assert plan.root_gib == 9
    assert [(v.device, v.size_gib, v.snapshot_id, v.delete_on_termination)
            for v in plan.volumes] == [("/dev/sdf", 3, None, True),
                                       ("/dev/xvdg", 4, "snap-done", False),
                                       ("/dev/sdh", 6, "snap-done", True)]
    assert plan.gib_per_instance == 13


@pytest.mark.parametrize("mappings,kw,want", [
    ([m("/dev/sdf")], {}, (400, "MissingParameter")),
    ([m("/dev/hdb", volume_size_gib=1)], {}, (400, "InvalidParameterValue")),
    ([m("/dev/sdf1", volume_size_gib=1)], {}, (400, "InvalidParameterValue")),
    ([m("/dev/sdf", volume_size_gib=1), m("/dev/xvdf", volume_size_gib=1)], {},
     (400, "InvalidBlockDeviceMapping")),
    ([m("/dev/sda1", volume_size_gib=2), m("/dev/xvda", volume_size_gib=2)], {},
     (400, "InvalidBlockDeviceMapping")),
    ([m("/dev/sda1", snapshot_id="snap-done")], {}, (400, "InvalidBlockDeviceMapping")),
    ([m("/dev/xvda", volume_size_gib=2, delete_on_termination=False)], {},
     (400, "InvalidBlockDeviceMapping")),
    ([m("/dev/xvda", no_device=True)], {}, (400, "InvalidBlockDeviceMapping")),
    ([m("/dev/xvda", volume_size_gib=20000)], {}, (400, "InvalidBlockDeviceMapping")),
    ([m("/dev/xvda", volume_size_gib=5)], {"root_disk_gib": 6}, (400, "InvalidParameterValue")),
    ([m("/dev/sdf", volume_size_gib=20000)], {}, (400, "InvalidParameterValue")),
    ([m("/dev/sdf", snapshot_id="snap-done", volume_size_gib=3)], {},
     (400, "InvalidParameterValue")),
    ([m("/dev/sdf", snapshot_id="snap-nope")], {}, (404, "InvalidSnapshot.NotFound")),
    ([m("/dev/sdf", snapshot_id="snap-gone")], {}, (404, "InvalidSnapshot.NotFound")),
    ([m("/dev/sdf", snapshot_id="snap-bob")], {}, (404, "InvalidSnapshot.NotFound")),
    ([m("/dev/sdf", snapshot_id="snap-pending")], {}, (409, "IncorrectState")),
])
def test_refusals(db, mappings, kw, want):
    assert code(db, mappings, **kw) == want


def test_root_mapping_agreeing_with_root_disk_gib(db):
    assert validate(db, [m("/dev/sda1", volume_size_gib=5)], root_disk_gib=5).root_gib == 5
    assert validate(db, [m("/dev/sda1")], root_disk_gib=5).root_gib is None


def test_limits_and_storage(db):
    three = [m(f"/dev/sd{c}", volume_size_gib=1) for c in "fgh"]
    assert code(db, three, st=settings(volumes_per_instance=2)) == (400,
                                                                  "AttachmentLimitExceeded")
    assert code(db, three, st=settings(storage_url=None)) == (503, "StorageUnavailable")
    # Only the root size: no storage needed.
    assert validate(db, [m("/dev/sda1", volume_size_gib=3)],
                    st=settings(storage_url=None)).root_gib == 3
    # Another account's snapshot is visible to an admin.
    admin = Caller(account_id="acct-alice", name="admin", is_admin=True)
    assert validate(db, [m("/dev/sdf", snapshot_id="snap-bob")], admin).volumes[0].size_gib == 2


def test_request_mappings_are_at_most_24():
    maps = [{"device_name": "/dev/sdf", "ebs": {"volume_size_gib": 1}}] * 25
    with pytest.raises(ValidationError):
        RunInstancesRequest(image="i", instance_type="t", block_device_mappings=maps)


def _image(mappings: list) -> Image:
    return Image(image_id="ami-1", owner_account_id=BOB.account_id, name="captured", path="/x",
                 virtual_size=1, size=1, sha256="", created_at=NOW,
                 block_device_mappings=mappings)


def test_image_mappings_apply_and_are_overridden(db):
    img = _image([{"device": "/dev/sdf", "size_gib": 2, "snapshot_id": "snap-bob",
                   "delete_on_termination": True},
                  {"device": "/dev/sdg", "size_gib": 2, "snapshot_id": "snap-bob",
                   "delete_on_termination": True},
                  {"device": "/dev/sdh", "size_gib": 7}])  # recorded only: no snapshot
    # Alice launches Bob's (shared) image: his snapshots are usable through it.
    plan = validate(db, [], image=img)
    assert [(v.device, v.snapshot_id) for v in plan.volumes] == [("/dev/sdf", "snap-bob"),
                                                                 ("/dev/sdg", "snap-bob")]
    plan = validate(db, [m("/dev/xvdf", volume_size_gib=5), m("/dev/sdg", no_device=True)],
                    image=img)
    assert [(v.device, v.size_gib, v.snapshot_id) for v in plan.volumes] == [
        ("/dev/xvdf", 5, None)]
    # The image's snapshot went: the launch is refused.
    bad = _image([{"device": "/dev/sdf", "size_gib": 1, "snapshot_id": "snap-gone",
                   "delete_on_termination": True}])
    assert code(db, [], image=bad) == (404, "InvalidSnapshot.NotFound")


def _instance(s, iid: str) -> Instance:
    inst = Instance(instance_id=iid, reservation_id="r-1", account_id=ALICE.account_id,
                    image_id="ami-1", instance_type="t3.nano", vcpus=1, memory_mib=512,
                    root_disk_gib=1, created_at=NOW, updated_at=NOW)
    s.add(inst)
    return inst


def test_quota_counts_every_instance_and_apply_writes_rows(db):
    st = settings(account_volume_gib_limit=10)
    plan = validate(db, [m("/dev/sdf", volume_size_gib=3),
                         m("/dev/sdg", snapshot_id="snap-done", delete_on_termination=False)],
                    st=st)
    with db.session() as s:
        block_devices.check_quota(s, st, ALICE.account_id, plan, 1)  # 7 of 10
        with pytest.raises(KumoError) as e:
            block_devices.check_quota(s, st, ALICE.account_id, plan, 2)  # 14 of 10
        assert (e.value.status, e.value.code) == (400, "VolumeLimitExceeded")
        inst = _instance(s, "i-1")
        made = block_devices.apply(s, plan, inst)
    with db.session(notify=False) as s:
        vols = {v.volume_id: v for v in s.exec(select(Volume)).all()}
        atts = s.exec(select(VolumeAttachmentRow)).all()
        assert set(vols) == {v.volume_id for v in made}
        assert sorted((v.size_gib, v.snapshot_id, v.state) for v in vols.values()) == [
            (3, None, "creating"), (4, "snap-done", "creating")]
        assert sorted((a.device, a.state, a.delete_on_termination, a.instance_id)
                      for a in atts) == [("/dev/sdf", "attaching", True, "i-1"),
                                         ("/dev/sdg", "attaching", False, "i-1")]
        shown = block_devices.describe_rows(atts)
        assert [d["device_name"] for d in shown] == ["/dev/sdf", "/dev/sdg"]
        assert set(shown[0]) == {"device_name", "volume_id", "status", "delete_on_termination",
                                 "attach_time"}
    with db.session() as s:  # now the account has 7 GiB: 3 more fits, 4 more does not
        small = block_devices.Plan(volumes=plan.volumes[:1])
        block_devices.check_quota(s, st, ALICE.account_id, small, 1)
        with pytest.raises(KumoError):
            block_devices.check_quota(s, st, ALICE.account_id, plan, 1)


@pytest.mark.parametrize("text,want", [
    ("/dev/sdf=10", {"device_name": "/dev/sdf", "ebs": {"volume_size_gib": 10}}),
    ("/dev/sdg=snap-0123:keep", {"device_name": "/dev/sdg",
                                 "ebs": {"snapshot_id": "snap-0123",
                                         "delete_on_termination": False}}),
    ("/dev/sdh=20:snap-1", {"device_name": "/dev/sdh",
                            "ebs": {"volume_size_gib": 20, "snapshot_id": "snap-1"}}),
    ("/dev/sdf=none", {"device_name": "/dev/sdf", "no_device": True}),
])
def test_cli_block_device(text, want):
    from controller.cli.instances import parse_block_device
    assert parse_block_device(text) == want
    BlockDeviceMapping.model_validate(want)  # what the API takes


@pytest.mark.parametrize("text", ["/dev/sdf", "=10", "/dev/sdf=", "/dev/sdf=10:11",
                                  "/dev/sdf=big", "/dev/sdf=keep:keep"])
def test_cli_block_device_refuses(text):
    import typer
    from controller.cli.instances import parse_block_device
    with pytest.raises(typer.BadParameter):
        parse_block_device(text)
