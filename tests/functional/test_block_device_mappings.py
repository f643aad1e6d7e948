"""Block device mappings at launch and images' mappings (issue 10), on the controller with the
reconciler driven by hand, fake agents that hot-plug their specs' volumes and the real storage
node app over FakeVolumeBackend (the harness of tests/functional/test_volume_reconcile.py):
volumes made at launch (new or from a snapshot) are in the instance's first spec, terminate
deletes the delete_on_termination ones, refused launches leave nothing behind, and an image
captured from an instance with a volume launches with a volume made from that volume's snapshot.
"""
from __future__ import annotations

import time

import pytest
from sqlmodel import select

from controller.models import Instance, Volume, VolumeAttachmentRow
from controller.services import image_capture
from tests.functional.fake_agent import GIB, Cloud
from tests.functional.test_image_capture import CapturingAgent
from tests.functional.volume_cloud import VolumeAgent, VolumeCloud


@pytest.fixture
def cloud(tmp_path):
    c = VolumeCloud(tmp_path)
    c.image()
    c.agent = c.add_volume_host("host-1")
    c.pushed = []  # every spec PUT to the agent, in order
    real = c.agent._put

    def put(spec):
        c.pushed.append(spec)
        return real(spec)
    c.agent._put = put
    yield c
    c.close()


def _err(r, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text


def _snapshot(cloud, user, size_gib: int = 2, data: bytes = b"") -> str:
    r = user.post("/v1/volumes", json={"size_gib": size_gib})
    assert r.status_code == 201, r.text
    vid = r.json()["volume_id"]
    cloud.tick()
    if data:  # as a client of the export would have written it
        cloud.backend.served.add(vid)
        cloud.backend.write(vid, 0, data)
        cloud.backend.served.discard(vid)
    r = user.post("/v1/snapshots", json={"volume_id": vid})
    assert r.status_code == 201, r.text
    sid = r.json()["snapshot_id"]
    cloud.tick()
    assert user.get(f"/v1/snapshots/{sid}").json()["state"] == "completed"
    return sid


def _rows(cloud):
    with cloud.app.state.kumo.db.session(notify=False) as s:
        return (list(s.exec(select(Instance))), list(s.exec(select(Volume))),
                list(s.exec(select(VolumeAttachmentRow))))


def _bdm(device: str, **ebs) -> dict:
    return {"device_name": device, "ebs": ebs}


def test_launch_with_new_and_snapshot_volumes(cloud):
    user = cloud.account("alice")
    sid = _snapshot(cloud, user, 2, b"hello from the snapshot")
    r = cloud.run(user, block_device_mappings=[
        _bdm("/dev/sdf", volume_size_gib=3),
        _bdm("/dev/xvdg", snapshot_id=sid, delete_on_termination=False),
        _bdm("/dev/sda1", volume_size_gib=5)])
    assert r.status_code == 201, r.text
    inst = r.json()["instances"][0]
    iid = inst["instance_id"]
    assert inst["root_disk_gib"] == 5
    bdm = inst["block_device_mappings"]
    assert [(b["device_name"], b["status"], b["delete_on_termination"]) for b in bdm] == [
        ("/dev/sdf", "attaching", True), ("/dev/xvdg", "attaching", False)]
    new, from_snap = (user.get(f"/v1/volumes/{b['volume_id']}").json() for b in bdm)
    assert (new["size_gib"], new["snapshot_id"], new["state"]) == (3, None, "creating")
    assert (from_snap["size_gib"], from_snap["snapshot_id"]) == (2, sid)
    assert from_snap["attachments"][0]["instance_id"] == iid

    cloud.tick()  # the node makes and exports both; then the instance's first spec goes out
    first = [p for p in cloud.pushed if p.instance_id == iid][0]
    assert [(v.device, v.volume_id) for v in first.volumes] == [
        ("vdf", new["volume_id"]), ("vdg", from_snap["volume_id"])]
    assert first.root_disk_bytes == 5 * GIB
    assert cloud.backend.sizes[new["volume_id"]] == 3 * GIB
    assert cloud.backend.read(from_snap["volume_id"], 0, 23) == b"hello from the snapshot"
    cloud.converge()
    doc = cloud.instance(user, iid)
    assert doc["state"] == "running"
    assert [b["status"] for b in doc["block_device_mappings"]] == ["attached", "attached"]
    assert user.get(f"/v1/volumes/{new['volume_id']}").json()["state"] == "in-use"
    # The list shows them too.
    listed = user.get("/v1/instances").json()["items"]
    assert [len(i["block_device_mappings"]) for i in listed] == [2]

    r = user.post(f"/v1/instances/{iid}/terminate")
    assert r.status_code == 200, r.text
    for _ in range(4):
        cloud.converge(1)
        cloud.reconciler.volumes._backoff.clear()
    assert cloud.instance(user, iid)["state"] == "terminated"
    assert cloud.instance(user, iid)["block_device_mappings"] == []
    _err(user.get(f"/v1/volumes/{new['volume_id']}"), 404, "InvalidVolume.NotFound")
    assert new["volume_id"] not in cloud.backend.sizes
    kept = user.get(f"/v1/volumes/{from_snap['volume_id']}").json()
    assert kept["state"] == "available" and kept["attachments"] == []


def test_each_instance_gets_its_volumes_and_client_tokens_cover_mappings(cloud):
    user = cloud.account("alice")
    maps = [_bdm("/dev/sdf", volume_size_gib=1)]
    r = cloud.run(user, max_count=2, client_token="t1", block_device_mappings=maps)
    assert r.status_code == 201, r.text
    insts = r.json()["instances"]
    vols = {i["instance_id"]: [b["volume_id"] for b in i["block_device_mappings"]]
            for i in insts}
    assert len(vols) == 2 and all(len(v) == 1 for v in vols.values())
    assert len({v[0] for v in vols.values()}) == 2
    # The same request again: the same reservation, no new volumes.
    again = cloud.run(user, max_count=2, client_token="t1", block_device_mappings=maps)
    assert again.status_code == 201 and again.json()["reservation_id"] == r.json()["reservation_id"]
    assert len(_rows(cloud)[1]) == 2
    # The same token with other mappings (or none) is a mismatch.
    for other in ([_bdm("/dev/sdf", volume_size_gib=2)], []):
        _err(cloud.run(user, max_count=2, client_token="t1", block_device_mappings=other),
             400, "IdempotentParameterMismatch")


@pytest.mark.parametrize("extra,status,code", [
    ({"block_device_mappings": [_bdm("/dev/sdf")]}, 400, "MissingParameter"),
    ({"block_device_mappings": [_bdm("/dev/hdf", volume_size_gib=1)]}, 400,
     "InvalidParameterValue"),
    ({"block_device_mappings": [_bdm("/dev/sdf", volume_size_gib=1),
                                _bdm("/dev/xvdf", volume_size_gib=1)]}, 400,
     "InvalidBlockDeviceMapping"),
    ({"block_device_mappings": [_bdm("/dev/sda1", snapshot_id="snap-0123456789abcdef0")]},
     400, "InvalidBlockDeviceMapping"),
    ({"root_disk_gib": 4, "block_device_mappings": [_bdm("/dev/xvda", volume_size_gib=5)]},
     400, "InvalidParameterValue"),
    ({"block_device_mappings": [_bdm("/dev/sdf", volume_size_gib=20000)]}, 400,
     "InvalidParameterValue"),
    ({"block_device_mappings": [_bdm("/dev/sdf", snapshot_id="snap-0123456789abcdef0")]},
     404, "InvalidSnapshot.NotFound"),
    ({"block_device_mappings": [_bdm("/dev/sdf", volume_size_gib=1)] * 25}, 400,
     "InvalidParameterValue"),
    # A valid volume, then a bad one: nothing at all.
    ({"block_device_mappings": [_bdm("/dev/sdf", volume_size_gib=1),
                                _bdm("/dev/sdg", volume_size_gib=0)]}, 400,
     "InvalidParameterValue"),
])
def test_refused_launches_change_nothing(cloud, extra, status, code):
    user = cloud.account("alice")
    before = _rows(cloud)
    _err(cloud.run(user, **extra), status, code)
    after = _rows(cloud)
    assert [len(x) for x in after] == [len(x) for x in before] == [0, 0, 0]


def test_snapshot_rules_and_limits(tmp_path):
    c = VolumeCloud(tmp_path, account_volume_gib_limit=10, volumes_per_instance=2)
    try:
        c.image()
        c.add_volume_host("host-1")
        alice, bob = c.account("alice"), c.account("bob")
        theirs = _snapshot(c, bob, 2)
        mine = _snapshot(c, alice, 2)
        n_vols = len(_rows(c)[1])
        _err(c.run(alice, block_device_mappings=[_bdm("/dev/sdf", snapshot_id=theirs)]),
             404, "InvalidSnapshot.NotFound")
        _err(c.run(alice, block_device_mappings=[_bdm("/dev/sdf", snapshot_id=mine,
                                                      volume_size_gib=1)]),
             400, "InvalidParameterValue")
        c.storage_down = True  # a new snapshot stays pending
        r = alice.post("/v1/snapshots", json={"volume_id": _rows(c)[1][-1].volume_id})
        pending = r.json()["snapshot_id"]
        c.tick()
        _err(c.run(alice, block_device_mappings=[_bdm("/dev/sdf", snapshot_id=pending)]),
             409, "IncorrectState")
        c.storage_down = False
        _err(c.run(alice, block_device_mappings=[_bdm(f"/dev/sd{x}", volume_size_gib=1)
                                                 for x in "fgh"]),
             400, "AttachmentLimitExceeded")
        # Alice has 2 GiB: 2 instances x 5 GiB more exceeds 10, one instance (7 GiB) fits.
        maps = [_bdm("/dev/sdf", volume_size_gib=5)]
        _err(c.run(alice, min_count=2, max_count=2, block_device_mappings=maps),
             400, "VolumeLimitExceeded")
        assert len(_rows(c)[0]) == 0 and len(_rows(c)[1]) == n_vols
        r = c.run(alice, block_device_mappings=maps + [_bdm("/dev/sdg", snapshot_id=mine)])
        assert r.status_code == 201, r.text
        assert len(_rows(c)[1]) == n_vols + 2
    finally:
        c.close()


def test_volumes_need_the_storage_service(tmp_path):
    c = Cloud(tmp_path)  # no storage_url
    try:
        c.image()
        c.add_host("host-1")
        user = c.account("alice")
        _err(c.run(user, block_device_mappings=[_bdm("/dev/sdf", volume_size_gib=1)]),
             503, "StorageUnavailable")
        # The root size alone needs no storage.
        r = c.run(user, block_device_mappings=[_bdm("/dev/sda1", volume_size_gib=3)])
        assert r.status_code == 201, r.text
        inst = r.json()["instances"][0]
        assert inst["root_disk_gib"] == 3 and inst["block_device_mappings"] == []
    finally:
        c.close()


# -- images' mappings -----------------------------------------------------------------------------
class CapturingVolumeAgent(VolumeAgent, CapturingAgent):
    """Carries its specs' volumes and captures root disks (both fakes' behaviour)."""


def _drive(cloud, client, image_id: str, timeout: float = 20.0) -> dict:
    k = cloud.app.state.kumo
    deadline = time.monotonic() + timeout
    while True:
        left = image_capture.advance(k.db, k.settings, k.pool)
        cloud.converge(1)
        img = client.get(f"/v1/images/{image_id}").json()
        if img.get("state") == "available" and left == 0:
            return img
        assert img.get("state") == "pending", img
        assert time.monotonic() < deadline, f"image {image_id}: {img}, {left} captures left"
        time.sleep(0.02)


def test_image_capture_snapshots_volumes_and_launches_with_them(tmp_path):
    c = VolumeCloud(tmp_path)
    try:
        c.image()
        agent = CapturingVolumeAgent("host-1", c.backend, root=tmp_path / "agent")
        c.agents[agent.url] = agent
        c.heartbeat(agent)
        alice = c.account("alice")
        r = c.run(alice, block_device_mappings=[_bdm("/dev/sdf", volume_size_gib=2)])
        assert r.status_code == 201, r.text
        iid = r.json()["instances"][0]["instance_id"]
        c.converge()
        doc = c.instance(alice, iid)
        assert doc["state"] == "running"
        vid = doc["block_device_mappings"][0]["volume_id"]
        c.backend.write(vid, 0, b"data on the volume")

        # The storage node is down at first: the image waits for its snapshot.
        c.storage_down = True
        r = alice.post(f"/v1/instances/{iid}/image", json={"name": "with-volume"})
        assert r.status_code == 201, r.text
        image_id = r.json()["image_id"]
        k = c.app.state.kumo
        for _ in range(30):
            image_capture.advance(k.db, k.settings, k.pool)
            c.converge(1)
            img = alice.get(f"/v1/images/{image_id}").json()
            if img["block_device_mappings"] and "snapshot_id" in img["block_device_mappings"][0]:
                break
        snaps = alice.get("/v1/snapshots").json()["items"]
        assert len(snaps) == 1 and snaps[0]["state"] == "pending"
        for _ in range(5):
            image_capture.advance(k.db, k.settings, k.pool)
            c.converge(1)
        assert alice.get(f"/v1/images/{image_id}").json()["state"] == "pending"
        assert c.instance(alice, iid)["state"] == "stopped"  # not restarted before the snapshot
        c.storage_down = False
        c.reconciler.volumes._backoff.clear()
        img = _drive(c, alice, image_id)
        sid = snaps[0]["snapshot_id"]
        assert img["block_device_mappings"] == [{"device": "/dev/sdf", "size_gib": 2,
                                                 "snapshot_id": sid,
                                                 "delete_on_termination": True}]
        assert alice.get(f"/v1/snapshots/{sid}").json()["state"] == "completed"
        for _ in range(5):
            if c.instance(alice, iid)["state"] == "running":
                break
            image_capture.advance(k.db, k.settings, k.pool)
            c.converge(1)
        assert c.instance(alice, iid)["state"] == "running"  # started again

        # A launch from the image gets a volume made from the snapshot.
        r = c.run(alice, image=image_id)
        assert r.status_code == 201, r.text
        inst = r.json()["instances"][0]
        [bd] = inst["block_device_mappings"]
        assert bd["device_name"] == "/dev/sdf" and bd["delete_on_termination"] is True
        new = alice.get(f"/v1/volumes/{bd['volume_id']}").json()
        assert (new["snapshot_id"], new["size_gib"]) == (sid, 2)
        c.converge()
        assert c.instance(alice, inst["instance_id"])["state"] == "running"
        assert c.backend.read(bd["volume_id"], 0, 18) == b"data on the volume"
        # The request's mapping of the same device replaces the image's.
        r = c.run(alice, image=image_id,
                  block_device_mappings=[_bdm("/dev/xvdf", volume_size_gib=1)])
        [bd] = r.json()["instances"][0]["block_device_mappings"]
        new = alice.get(f"/v1/volumes/{bd['volume_id']}").json()
        assert (bd["device_name"], new["snapshot_id"], new["size_gib"]) == ("/dev/xvdf", None, 1)
        # The image's snapshot stays while the image is registered (EC2 refuses the delete too).
        r = alice.delete(f"/v1/snapshots/{sid}")
        assert r.status_code == 409 and r.json()["error"]["code"] == "InvalidSnapshot.InUse", r.text
        assert alice.get(f"/v1/snapshots/{sid}").json()["state"] == "completed"
        assert alice.delete(f"/v1/images/{image_id}").status_code == 200
        assert alice.delete(f"/v1/snapshots/{sid}").json()["state"] == "deleting"
    finally:
        c.close()
