"""Volumes through the real app (controller/services/volumes.py, controller/api/volumes.py) on the
fake stack: every rule of create/describe/delete/attach/detach/modify/tags, every refusal with
its status and stable code and nothing changed in the database afterwards (volume rows,
attachments, instance generations, events), other accounts' ids answering 404, the limits, the
client token, filters and pages.

The reconciler is not exercised (reconcile_interval_s 0 and no tick): the states it would move
volumes and instances to are set directly in the database."""
from __future__ import annotations

import pytest
from sqlmodel import select

from controller.models import Event, Instance, Volume, VolumeAttachmentRow
from tests.functional.fake_agent import Cloud
from tests.functional.vpc_support import err, is_id, ok


@pytest.fixture
def cloud(tmp_path):
    c = Cloud(tmp_path, storage_url="unix:/nonexistent", max_volume_gib=100,
              account_volume_gib_limit=300, volumes_per_instance=3)
    c.image()
    c.add_host("host-1")
    yield c
    c.close()


def db_state(cloud) -> dict:
    """Everything the volume rules write: volumes, attachments, instance generations, events."""
    with cloud.db.session(notify=False) as s:
        vols = sorted((v.volume_id, v.account_id, v.state, v.size_gib, v.generation,
                       v.modification_state, repr(sorted(v.tags.items())), v.updated_at)
                      for v in s.exec(select(Volume)))
        atts = sorted((a.volume_id, a.instance_id, a.device, a.state, a.force_detach,
                       a.delete_on_termination) for a in s.exec(select(VolumeAttachmentRow)))
        insts = sorted((i.instance_id, i.state, i.generation, i.updated_at)
                       for i in s.exec(select(Instance)))
        events = len(list(s.exec(select(Event))))
    return {"volumes": vols, "attachments": atts, "instances": insts, "events": events}


def refused(cloud, call, status: int, code: str) -> dict:
    """Run `call()`; assert the error and that nothing in the database changed."""
    before = db_state(cloud)
    e = err(call(), status, code)
    assert db_state(cloud) == before
    return e


def create(client, size: int = 10, **body) -> dict:
    return ok(client.post("/v1/volumes", json={"size_gib": size, **body}), 201)


def available(cloud, client, size: int = 10, **body) -> dict:
    vol = create(client, size, **body)
    cloud.set_row(Volume, vol["volume_id"], state="available", acked_generation=1)
    return vol


def instance(cloud, client, state: str = "running") -> dict:
    r = cloud.run(client)
    assert r.status_code == 201, r.text
    inst = r.json()["instances"][0]
    cloud.set_row(Instance, inst["instance_id"], state=state)
    return inst


def volume_row(cloud, vid: str) -> Volume:
    with cloud.db.session(notify=False) as s:
        return s.get(Volume, vid)


def generation(cloud, iid: str) -> int:
    with cloud.db.session(notify=False) as s:
        return s.get(Instance, iid).generation


def attach(client, vid: str, iid: str, device: str = "/dev/sdf", **kw):
    return client.post(f"/v1/volumes/{vid}/attach",
                       json={"instance_id": iid, "device": device, **kw})


# -- create ------------------------------------------------------------------------------------
def test_create_describe_and_event(cloud):
    alice = cloud.account("alice")
    vol = create(alice, 20, tags={"Name": "data"})
    assert is_id(vol["volume_id"], "vol")
    assert vol["state"] == "creating" and vol["size_gib"] == 20
    assert vol["availability_zone"] == "kumo-1a" and vol["attachments"] == []
    assert vol["tags"] == {"Name": "data"} and vol["modification_state"] is None
    row = volume_row(cloud, vol["volume_id"])
    assert (row.generation, row.acked_generation) == (1, 0)
    assert ok(alice.get(f"/v1/volumes/{vol['volume_id']}")) == vol
    evs = ok(alice.get("/v1/events", params={"resource_id": vol["volume_id"]}))["items"]
    assert [(e["resource_type"], e["from_state"], e["to_state"]) for e in evs] == [
        ("volume", None, "creating")]


CREATE_REFUSALS = [
    ({"size_gib": 0}, 400, "InvalidParameterValue"),
    ({"size_gib": 101}, 400, "InvalidParameterValue"),  # over max_volume_gib
    ({"size_gib": -1}, 400, "InvalidParameterValue"),
    ({"size_gib": "x"}, 400, "InvalidParameterValue"),
    ({}, 400, "MissingParameter"),
    ({"size_gib": 5, "snapshot_id": "snap-00000000000000000"}, 404, "InvalidSnapshot.NotFound"),
    ({"snapshot_id": "snap-00000000000000000"}, 404, "InvalidSnapshot.NotFound"),
    ({"size_gib": 5, "tags": {"kumo:x": "y"}}, 400, "InvalidTag"),
    ({"size_gib": 5, "tags": {"": "y"}}, 400, "InvalidTag"),
    ({"size_gib": 5, "tags": {f"k{i}": "v" for i in range(51)}}, 400, "InvalidTag"),
    ({"size_gib": 5, "client_token": "bad token!"}, 400, "InvalidParameterValue"),
]


def test_create_refusals(cloud):
    alice = cloud.account("alice")
    create(alice, 1)
    for body, status, code in CREATE_REFUSALS:
        refused(cloud, lambda: alice.post("/v1/volumes", json=body), status, code)


def test_create_without_storage_is_503_retryable(tmp_path):
    c = Cloud(tmp_path)  # storage_url None
    try:
        alice = c.account("alice")
        e = refused(c, lambda: alice.post("/v1/volumes", json={"size_gib": 1}), 503,
                    "StorageUnavailable")
        assert e["retryable"] is True
    finally:
        c.close()


def test_account_gib_limit(cloud):
    alice, bob = cloud.account("alice"), cloud.account("bob")
    a = create(alice, 100)
    create(alice, 100)
    create(alice, 90)
    refused(cloud, lambda: alice.post("/v1/volumes", json={"size_gib": 11}), 400,
            "VolumeLimitExceeded")
    create(alice, 10)  # exactly at the limit
    create(bob, 100)  # another account's limit is its own
    # Deleted volumes stop counting; deleting ones still count.
    cloud.set_row(Volume, a["volume_id"], state="available")
    ok(alice.delete(f"/v1/volumes/{a['volume_id']}"))
    refused(cloud, lambda: alice.post("/v1/volumes", json={"size_gib": 1}), 400,
            "VolumeLimitExceeded")
    cloud.set_row(Volume, a["volume_id"], state="deleted")
    create(alice, 100)


def test_client_token_idempotency(cloud):
    alice, bob = cloud.account("alice"), cloud.account("bob")
    first = create(alice, 5, client_token="tok-1", tags={"a": "b"})
    again = create(alice, 5, client_token="tok-1", tags={"a": "b"})
    assert again == first
    assert len(ok(alice.get("/v1/volumes"))["items"]) == 1
    refused(cloud, lambda: alice.post("/v1/volumes", json={"size_gib": 6,
                                                           "client_token": "tok-1",
                                                           "tags": {"a": "b"}}),
            400, "IdempotentParameterMismatch")
    refused(cloud, lambda: alice.post("/v1/volumes", json={"size_gib": 5,
                                                           "client_token": "tok-1"}),
            400, "IdempotentParameterMismatch")
    # Tokens are per account.
    theirs = create(bob, 5, client_token="tok-1", tags={"a": "b"})
    assert theirs["volume_id"] != first["volume_id"]
    # A replay is answered even when the account is at its limit now.
    for _ in range(3):
        create(alice, 95)  # 290 of 300 GiB
    refused(cloud, lambda: alice.post("/v1/volumes", json={"size_gib": 11}), 400,
            "VolumeLimitExceeded")
    assert create(alice, 5, client_token="tok-1", tags={"a": "b"}) == first


# -- describe, filters, pages --------------------------------------------------------------------
def test_other_accounts_volumes_are_not_found(cloud):
    alice, bob = cloud.account("alice"), cloud.account("bob")
    vol = available(cloud, alice)
    vid = vol["volume_id"]
    bob_inst = instance(cloud, bob)
    for call in (lambda: bob.get(f"/v1/volumes/{vid}"),
                 lambda: bob.delete(f"/v1/volumes/{vid}"),
                 lambda: attach(bob, vid, bob_inst["instance_id"]),
                 lambda: bob.post(f"/v1/volumes/{vid}/detach", json={}),
                 lambda: bob.patch(f"/v1/volumes/{vid}", json={"size_gib": 20}),
                 lambda: bob.put(f"/v1/volumes/{vid}/tags", json={"tags": {}}),
                 lambda: bob.get("/v1/volumes/vol-00000000000000000")):
        refused(cloud, call, 404, "InvalidVolume.NotFound")
    assert ok(bob.get("/v1/volumes"))["items"] == []
    # The admin sees every account's.
    assert ok(cloud.admin.get(f"/v1/volumes/{vid}"))["volume_id"] == vid
    assert vid in [v["volume_id"] for v in ok(cloud.admin.get("/v1/volumes"))["items"]]


def test_filters_and_pages(cloud):
    alice = cloud.account("alice")
    inst = instance(cloud, alice)
    vols = [create(alice, 1 + i % 3, tags={"n": str(i), "team": "a" if i < 4 else "b"})
            for i in range(7)]
    for v in vols[:3]:
        cloud.set_row(Volume, v["volume_id"], state="available")
    ok(attach(alice, vols[0]["volume_id"], inst["instance_id"]))
    ids = [v["volume_id"] for v in vols]

    def listed(**params) -> list[str]:
        return [v["volume_id"] for v in ok(alice.get("/v1/volumes", params=params))["items"]]

    assert listed() == ids  # creation order
    assert listed(status="creating") == ids[3:]
    assert listed(status="available,in-use") == ids[:3]
    assert listed(volume_id=f"{ids[1]},{ids[5]}") == [ids[1], ids[5]]
    assert listed(**{"volume-id": ids[2]}) == [ids[2]]  # the EC2 filter name too
    assert listed(size="2") == [ids[1], ids[4]]
    assert listed(attachment_instance_id=inst["instance_id"]) == [ids[0]]
    assert listed(attachment_status="attaching") == [ids[0]]
    assert listed(attachment_status="attached") == []
    assert listed(**{"tag:team": "b"}) == ids[4:]
    assert listed(**{"tag:team": "a", "tag:n": "2"}) == [ids[2]]
    assert listed(**{"tag:bad key!": "a"}) == []
    err(alice.get("/v1/volumes", params={"size": "big"}), 400, "InvalidParameterValue")
    # Pages: every volume exactly once, in order.
    seen, token = [], None
    while True:
        page = ok(alice.get("/v1/volumes", params={"max_results": 3,
                                                   **({"next_token": token} if token else {})}))
        assert len(page["items"]) <= 3
        seen += [v["volume_id"] for v in page["items"]]
        token = page["next_token"]
        if not token:
            break
    assert seen == ids
    err(alice.get("/v1/volumes", params={"next_token": "garbage"}), 400,
        "InvalidPaginationToken")
    # The attachment shows in the volume.
    got = ok(alice.get(f"/v1/volumes/{ids[0]}"))
    assert got["state"] == "in-use"
    assert got["attachments"][0]["instance_id"] == inst["instance_id"]


# -- delete --------------------------------------------------------------------------------------
def test_delete_rules(cloud):
    alice = cloud.account("alice")
    inst = instance(cloud, alice)
    vol = create(alice)
    vid = vol["volume_id"]
    refused(cloud, lambda: alice.delete(f"/v1/volumes/{vid}"), 409, "IncorrectState")  # creating
    cloud.set_row(Volume, vid, state="available")
    ok(attach(alice, vid, inst["instance_id"]))
    refused(cloud, lambda: alice.delete(f"/v1/volumes/{vid}"), 409, "VolumeInUse")
    # Detached (what the reconciler does when the host let go).
    with cloud.db.session() as s:
        s.delete(s.get(VolumeAttachmentRow, vid))
    cloud.set_row(Volume, vid, state="available")
    before = volume_row(cloud, vid)
    gone = ok(alice.delete(f"/v1/volumes/{vid}"))
    assert gone["state"] == "deleting"
    after = volume_row(cloud, vid)
    assert after.state == "deleting" and after.updated_at > before.updated_at
    refused(cloud, lambda: alice.delete(f"/v1/volumes/{vid}"), 409, "IncorrectState")
    cloud.set_row(Volume, vid, state="deleted")
    refused(cloud, lambda: alice.delete(f"/v1/volumes/{vid}"), 404, "InvalidVolume.NotFound")
    refused(cloud, lambda: alice.get(f"/v1/volumes/{vid}"), 404, "InvalidVolume.NotFound")
    assert ok(alice.get("/v1/volumes"))["items"] == []
    # A volume the storage node refused (error) can be deleted.
    bad = create(alice)["volume_id"]
    cloud.set_row(Volume, bad, state="error")
    assert ok(alice.delete(f"/v1/volumes/{bad}"))["state"] == "deleting"


# -- attach --------------------------------------------------------------------------------------
def test_attach(cloud):
    alice = cloud.account("alice")
    inst = instance(cloud, alice)
    iid = inst["instance_id"]
    vid = available(cloud, alice)["volume_id"]
    gen_before = generation(cloud, iid)
    att = ok(attach(alice, vid, iid, "/dev/xvdg", delete_on_termination=True))
    assert att["volume_id"] == vid and att["instance_id"] == iid
    assert att["device"] == "/dev/xvdg" and att["state"] == "attaching"
    assert att["delete_on_termination"] is True
    row = volume_row(cloud, vid)
    assert row.state == "in-use" and row.generation == 2
    assert generation(cloud, iid) == gen_before + 1
    got = ok(alice.get(f"/v1/volumes/{vid}"))
    assert got["state"] == "in-use" and got["attachments"] == [att]
    evs = ok(alice.get("/v1/events", params={"resource_id": vid}))["items"]
    assert (evs[-1]["from_state"], evs[-1]["to_state"]) == ("available", "in-use")


def test_attach_bad_device_names(cloud):
    alice = cloud.account("alice")
    iid = instance(cloud, alice)["instance_id"]
    vid = available(cloud, alice)["volume_id"]
    for device in ("/dev/sda", "/dev/sda1", "/dev/vda", "/dev/xvda"):
        e = refused(cloud, lambda: attach(alice, vid, iid, device), 400, "InvalidParameterValue")
        assert "reserved for the root device" in e["message"]
    for device in ("/dev/sdf1", "/dev/hdb", "/dev/sdB", "sdf", "/dev/sd", "/dev/nvme1n1",
                   "/dev/../sdf", "/dev/vdaa", "/dev/sdf/"):
        refused(cloud, lambda: attach(alice, vid, iid, device), 400, "InvalidParameterValue")


def test_attach_instance_rules(cloud):
    alice, bob = cloud.account("alice"), cloud.account("bob")
    vid = available(cloud, alice)["volume_id"]
    theirs = instance(cloud, bob)["instance_id"]
    refused(cloud, lambda: attach(alice, vid, theirs), 404, "InvalidInstanceID.NotFound")
    refused(cloud, lambda: attach(alice, vid, "i-00000000000000000"), 404,
            "InvalidInstanceID.NotFound")
    for state in ("pending", "stopping", "shutting-down", "terminated"):
        iid = instance(cloud, alice, state)["instance_id"]
        refused(cloud, lambda: attach(alice, vid, iid), 409, "IncorrectInstanceState")
    stopped = instance(cloud, alice, "stopped")["instance_id"]
    assert ok(attach(alice, vid, stopped))["state"] == "attaching"
    # An admin attaches an account's volume to that account's instances only.
    vid2 = available(cloud, alice)["volume_id"]
    refused(cloud, lambda: attach(cloud.admin, vid2, theirs), 404, "InvalidInstanceID.NotFound")
    assert ok(attach(cloud.admin, vid2, stopped, "/dev/sdg"))["instance_id"] == stopped


def test_attach_volume_states(cloud):
    alice = cloud.account("alice")
    i1 = instance(cloud, alice)["instance_id"]
    i2 = instance(cloud, alice)["instance_id"]
    vid = create(alice)["volume_id"]
    refused(cloud, lambda: attach(alice, vid, i1), 409, "IncorrectState")  # creating
    for state in ("deleting", "error"):
        cloud.set_row(Volume, vid, state=state)
        refused(cloud, lambda: attach(alice, vid, i1), 409, "IncorrectState")
    cloud.set_row(Volume, vid, state="available")
    ok(attach(alice, vid, i1))
    refused(cloud, lambda: attach(alice, vid, i2, "/dev/sdg"), 409, "VolumeInUse")
    refused(cloud, lambda: attach(alice, vid, i1, "/dev/sdg"), 409, "VolumeInUse")
    cloud.set_row(VolumeAttachmentRow, vid, state="attached")
    refused(cloud, lambda: attach(alice, vid, i2), 409, "VolumeInUse")


def test_attach_device_in_use_and_limit(cloud):
    alice = cloud.account("alice")
    iid = instance(cloud, alice)["instance_id"]
    other = instance(cloud, alice)["instance_id"]
    v = [available(cloud, alice)["volume_id"] for _ in range(5)]
    ok(attach(alice, v[0], iid, "/dev/sdf"))
    # Same virtio target (vdf) under any spelling is in use on that instance...
    for device in ("/dev/sdf", "/dev/xvdf", "/dev/vdf"):
        e = refused(cloud, lambda: attach(alice, v[1], iid, device), 400,
                    "InvalidParameterValue")
        assert "in use" in e["message"]
    # ... but free on another instance.
    ok(attach(alice, v[1], other, "/dev/xvdf"))
    ok(attach(alice, v[2], iid, "/dev/sdg"))
    ok(attach(alice, v[3], iid, "/dev/vdh"))
    refused(cloud, lambda: attach(alice, v[4], iid, "/dev/sdi"), 400, "AttachmentLimitExceeded")
    # A detaching attachment still holds its device and its slot.
    ok(alice.post(f"/v1/volumes/{v[2]}/detach", json={}))
    refused(cloud, lambda: attach(alice, v[4], iid, "/dev/sdi"), 400, "AttachmentLimitExceeded")


def test_attach_malformed_bodies(cloud):
    alice = cloud.account("alice")
    vid = available(cloud, alice)["volume_id"]
    for body, code in (({}, "MissingParameter"),
                       ({"instance_id": "i-1"}, "MissingParameter"),
                       ({"device": "/dev/sdf"}, "MissingParameter"),
                       ({"instance_id": "i-1", "device": "/dev/sdf",
                         "delete_on_termination": "maybe"}, "InvalidParameterValue"),
                       ({"instance_id": "", "device": "/dev/sdf"}, "InvalidParameterValue")):
        refused(cloud, lambda: alice.post(f"/v1/volumes/{vid}/attach", json=body), 400, code)


# -- detach --------------------------------------------------------------------------------------
def test_detach(cloud):
    alice = cloud.account("alice")
    iid = instance(cloud, alice)["instance_id"]
    other = instance(cloud, alice)["instance_id"]
    vid = available(cloud, alice)["volume_id"]
    detach = lambda **body: alice.post(f"/v1/volumes/{vid}/detach", json=body)  # noqa: E731
    refused(cloud, detach, 409, "IncorrectState")  # not attached
    ok(attach(alice, vid, iid))
    cloud.set_row(VolumeAttachmentRow, vid, state="attached")
    refused(cloud, lambda: detach(instance_id=other), 400, "InvalidAttachment.NotFound")
    refused(cloud, lambda: detach(force="sure"), 400, "InvalidParameterValue")
    gen = generation(cloud, iid)
    vol_gen = volume_row(cloud, vid).generation
    d = ok(detach(instance_id=iid))
    assert d["state"] == "detaching" and d["instance_id"] == iid
    assert generation(cloud, iid) == gen + 1
    assert volume_row(cloud, vid).generation == vol_gen  # the storage node keeps exporting
    with cloud.db.session(notify=False) as s:
        assert s.get(VolumeAttachmentRow, vid).force_detach is False
    # Again: idempotent, nothing changes...
    before = db_state(cloud)
    assert ok(detach())["state"] == "detaching"
    assert db_state(cloud) == before
    # ... except a force asked for now, which is kept (and pushed).
    assert ok(detach(force=True))["state"] == "detaching"
    with cloud.db.session(notify=False) as s:
        assert s.get(VolumeAttachmentRow, vid).force_detach is True
    assert generation(cloud, iid) == gen + 2
    ok(detach())  # a later unforced detach does not take the force back
    with cloud.db.session(notify=False) as s:
        assert s.get(VolumeAttachmentRow, vid).force_detach is True


def test_forced_detach(cloud):
    alice = cloud.account("alice")
    iid = instance(cloud, alice)["instance_id"]
    vid = available(cloud, alice)["volume_id"]
    ok(attach(alice, vid, iid))
    ok(alice.post(f"/v1/volumes/{vid}/detach", json={"force": True}))
    with cloud.db.session(notify=False) as s:
        row = s.get(VolumeAttachmentRow, vid)
        assert (row.state, row.force_detach) == ("detaching", True)


# -- modify --------------------------------------------------------------------------------------
def test_modify(cloud):
    alice = cloud.account("alice")
    vid = available(cloud, alice, 10)["volume_id"]
    grow = lambda size: alice.patch(f"/v1/volumes/{vid}", json={"size_gib": size})  # noqa: E731
    refused(cloud, lambda: grow(9), 400, "InvalidParameterValue")
    refused(cloud, lambda: grow(101), 400, "InvalidParameterValue")
    refused(cloud, lambda: grow(0), 400, "InvalidParameterValue")
    refused(cloud, lambda: alice.patch(f"/v1/volumes/{vid}", json={}), 400, "MissingParameter")
    before = db_state(cloud)
    assert ok(grow(10))["size_gib"] == 10  # the same size: a no-op
    assert db_state(cloud) == before
    got = ok(grow(50))
    assert got["size_gib"] == 50 and got["modification_state"] == "modifying"
    row = volume_row(cloud, vid)
    assert row.generation == 2 and row.state == "available"
    # The account limit counts the growth only.
    create(alice, 100)
    create(alice, 100)
    create(alice, 1)  # 251 of 300 GiB
    refused(cloud, lambda: grow(101), 400, "InvalidParameterValue")
    refused(cloud, lambda: grow(100), 400, "VolumeLimitExceeded")  # 251 + 50 > 300
    assert ok(grow(99))["size_gib"] == 99  # 251 + 49 = 300: exactly the limit
    assert volume_row(cloud, vid).generation == 3


def test_modify_states(cloud):
    alice = cloud.account("alice")
    iid = instance(cloud, alice)["instance_id"]
    vid = create(alice, 10)["volume_id"]
    grow = lambda: alice.patch(f"/v1/volumes/{vid}", json={"size_gib": 20})  # noqa: E731
    for state in ("creating", "deleting", "error"):
        cloud.set_row(Volume, vid, state=state)
        refused(cloud, grow, 409, "IncorrectState")
    cloud.set_row(Volume, vid, state="available")
    ok(attach(alice, vid, iid))
    got = ok(grow())  # attached: grows live
    assert got["size_gib"] == 20 and got["modification_state"] == "modifying"
    refused(cloud, lambda: alice.patch(f"/v1/volumes/{vid}", json={"size_gib": 10}), 400,
            "InvalidParameterValue")  # never shrinks
    cloud.set_row(Volume, vid, state="deleted")
    refused(cloud, grow, 404, "InvalidVolume.NotFound")


# -- tags ----------------------------------------------------------------------------------------
def test_tags_replace(cloud):
    alice = cloud.account("alice")
    vid = create(alice, tags={"a": "1", "b": "2"})["volume_id"]
    got = ok(alice.put(f"/v1/volumes/{vid}/tags", json={"tags": {"c": "3"}}))
    assert got["tags"] == {"c": "3"}
    assert ok(alice.get(f"/v1/volumes/{vid}"))["tags"] == {"c": "3"}
    refused(cloud, lambda: alice.put(f"/v1/volumes/{vid}/tags", json={"tags": {"kumo:x": "1"}}),
            400, "InvalidTag")
    refused(cloud, lambda: alice.put(f"/v1/volumes/{vid}/tags", json={}), 400,
            "MissingParameter")
    assert ok(alice.put(f"/v1/volumes/{vid}/tags", json={"tags": {}}))["tags"] == {}
