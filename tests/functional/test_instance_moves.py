"""A stopped instance starts on another host when its own cannot take it (issue 10;
controller/services/instance_moves.py): a controller with ticks driven by hand, fake agents per
host, and the real storage node app over FakeVolumeBackend (VolumeCloud) for the volumes that
follow the instance.

What is checked: the start stays on a usable host (even a full one: the stopped instance holds
its slot there); it moves when the host is down, disabled or shrank; the new host's spec carries
the volumes and the attachment stays attached; no host fits -> 503 InsufficientInstanceCapacity
with nothing changed; a host that never confirmed the stop keeps the instance (409); the old
host drops its copy when it reports in again, and the new host keeps running it.
"""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import select

from controller.ids import utcnow
from controller.models import Event, Host, Instance
from tests.functional.fake_agent import GIB
from tests.functional.volume_cloud import volume_cloud


@pytest.fixture
def cloud(tmp_path):
    yield from volume_cloud(tmp_path)


def _stopped_on_h1(cloud, user, **run):
    """Hosts h1 and h2; one instance launched on h1 (h2 disabled meanwhile), then stopped and
    acknowledged stopped by h1. -> (h1, h2, instance id)."""
    h1, h2 = cloud.add_volume_host("h1"), cloud.add_volume_host("h2")
    _admin(cloud, "h2", "disable")
    iid = cloud.launch_running(user, **run)
    assert cloud.instance(user, iid)["host_id"] == "h1"
    _admin(cloud, "h2", "enable")
    assert user.post(f"/v1/instances/{iid}/stop").status_code == 200
    cloud.converge()
    assert cloud.instance(user, iid)["state"] == "stopped"
    return h1, h2, iid


def _admin(cloud, host_id: str, verb: str) -> dict:
    r = cloud.admin.post(f"/v1/hosts/{host_id}/{verb}")
    assert r.status_code == 200, r.text
    return r.json()


def _host_down(cloud, agent) -> None:
    """The agent goes silent past the heartbeat timeout; the next tick marks its host down."""
    agent.unreachable = True
    cloud.set_row(Host, agent.host_id, last_heartbeat=utcnow() - timedelta(minutes=5))
    cloud.tick()
    assert cloud.admin.get(f"/v1/hosts/{agent.host_id}").json()["state"] == "down"


def _moves(cloud, iid: str) -> list[str]:
    with cloud.db.session(notify=False) as s:
        return [e.reason for e in s.exec(select(Event).where(Event.resource_id == iid))
                if e.reason and e.reason.startswith("moved from host")]


def _row(cloud, iid: str) -> Instance:
    with cloud.db.session(notify=False) as s:
        return s.get(Instance, iid)


def _start(cloud, user, iid: str) -> dict:
    r = user.post(f"/v1/instances/{iid}/start")
    assert r.status_code == 200, r.text
    return r.json()


def test_start_stays_on_its_usable_host(cloud):
    user = cloud.account("alice")
    h1, h2, iid = _stopped_on_h1(cloud, user)
    assert _start(cloud, user, iid)["host_id"] == "h1"
    cloud.converge()
    doc = cloud.instance(user, iid)
    assert (doc["state"], doc["host_id"]) == ("running", "h1")
    assert iid in h1.specs and iid not in h2.specs
    assert _moves(cloud, iid) == []


def test_start_stays_on_a_full_host_whose_slot_it_holds(cloud):
    # h1 has exactly one t3.nano of memory, held by the stopped instance: it still starts there.
    user = cloud.account("alice")
    h1 = cloud.add_volume_host("h1")
    h1.info = h1.info.model_copy(update={"memory_mib": 256})
    cloud.heartbeat(h1)
    iid = cloud.launch_running(user)
    assert cloud.run(user).status_code == 503  # really full
    user.post(f"/v1/instances/{iid}/stop")
    cloud.converge()
    assert _start(cloud, user, iid)["host_id"] == "h1"
    assert _moves(cloud, iid) == []


@pytest.mark.parametrize("how", ["down", "disabled", "shrunk"])
def test_start_moves_when_its_host_cannot_take_it(cloud, how):
    user = cloud.account("alice")
    h1, h2, iid = _stopped_on_h1(cloud, user, root_disk_gib=3)
    before = _row(cloud, iid)
    if how == "down":
        _host_down(cloud, h1)
    elif how == "disabled":
        _admin(cloud, "h1", "disable")
    else:  # the host now reports less memory than its instances hold
        h1.info = h1.info.model_copy(update={"memory_mib": 128})
        cloud.heartbeat(h1)
    doc = _start(cloud, user, iid)
    assert (doc["state"], doc["host_id"]) == ("pending", "h2")
    assert doc["system_status"] == "ok"
    assert _moves(cloud, iid) == [
        f"moved from host h1 to host h2: its root disk is re-created there from image "
        f"{before.image_id} (3 GiB) and cloud-init runs again; its volumes follow it"]
    # Its slot moved with it.
    assert cloud.admin.get("/v1/hosts/h2").json()["disk_bytes_used"] == 3 * GIB
    assert cloud.admin.get("/v1/hosts/h1").json()["disk_bytes_used"] == 0
    cloud.tick()
    spec = h2.specs[iid]
    assert spec.power == "running" and spec.root_disk_bytes == 3 * GIB
    assert spec.generation > before.generation
    doc = cloud.instance(user, iid)
    assert (doc["state"], doc["host_id"]) == ("running", "h2")
    # The old host still holds the stopped copy (it was not told anything yet)...
    assert h1.specs[iid].power == "stopped"


def test_old_host_drops_its_copy_when_it_returns(cloud):
    user = cloud.account("alice")
    h1, h2, iid = _stopped_on_h1(cloud, user)
    _host_down(cloud, h1)
    _start(cloud, user, iid)
    cloud.tick()
    assert cloud.instance(user, iid)["state"] == "running"
    h2_requests = len(h2.requests)
    # h1 comes back: its heartbeat reports the instance the controller gave to h2 (an orphan),
    # and the next tick deletes it there, and only there.
    h1.unreachable = False
    cloud.heartbeat(h1)
    assert cloud.admin.get("/v1/hosts/h1").json()["state"] == "up"
    cloud.tick()
    assert iid not in h1.specs and h1.deleted[iid] >= 1
    assert ("DELETE", f"/v1/instances/{iid}") in h1.requests
    assert ("DELETE", f"/v1/instances/{iid}") not in h2.requests[h2_requests:]
    assert h2.specs[iid].power == "running" and h2.observed[iid]["power"] == "running"
    cloud.converge()
    doc = cloud.instance(user, iid)
    assert (doc["state"], doc["host_id"], doc["instance_status"]) == ("running", "h2", "ok")
    assert iid not in h1.specs


def test_volumes_follow_the_instance(cloud):
    user = cloud.account("alice")
    h1, h2, iid = _stopped_on_h1(cloud, user)
    vid = user.post("/v1/volumes", json={"size_gib": 1}).json()["volume_id"]
    cloud.tick()
    r = user.post(f"/v1/volumes/{vid}/attach", json={"instance_id": iid, "device": "/dev/sdf"})
    assert r.status_code == 200, r.text
    cloud.converge()
    assert cloud.attachment(vid).state == "attached"
    assert [v.volume_id for v in h1.specs[iid].volumes] == [vid]
    _admin(cloud, "h1", "disable")
    _start(cloud, user, iid)
    cloud.tick()
    spec = h2.specs[iid]
    assert [(v.volume_id, v.device) for v in spec.volumes] == [(vid, "vdf")]
    src = spec.volumes[0].source
    assert (src.host, src.port, src.export) == ("192.0.2.10", 10809, vid)  # no fence: same name
    assert h2.disks[iid] == {"vdf": vid}
    cloud.converge()  # h1 reports its stale copy and deletes it: its NBD client goes
    assert iid not in h1.specs and iid not in h1.disks
    assert cloud.backend.clients[vid] == 1  # h2's only
    assert cloud.attachment(vid).state == "attached"
    doc = user.get(f"/v1/volumes/{vid}").json()
    assert doc["state"] == "in-use" and doc["attachments"][0]["instance_id"] == iid
    inst = cloud.instance(user, iid)
    assert inst["block_device_mappings"][0]["volume_id"] == vid
    assert (inst["state"], inst["host_id"]) == ("running", "h2")


def test_no_host_fits_changes_nothing(cloud):
    user = cloud.account("alice")
    h1, h2, iid = _stopped_on_h1(cloud, user)
    _admin(cloud, "h1", "disable")
    h2.info = h2.info.model_copy(update={"memory_mib": 128})  # too small for a t3.nano
    cloud.heartbeat(h2)
    before = _row(cloud, iid)
    with cloud.db.session(notify=False) as s:
        events = len(s.exec(select(Event)).all())
    r = user.post(f"/v1/instances/{iid}/start")
    assert r.status_code == 503, r.text
    err = r.json()["error"]
    assert err["code"] == "InsufficientInstanceCapacity" and "RamFilter" in err["message"]
    after = _row(cloud, iid)
    assert (after.state, after.host_id, after.generation, after.acked_generation) == \
        (before.state, before.host_id, before.generation, before.acked_generation)
    with cloud.db.session(notify=False) as s:
        assert len(s.exec(select(Event)).all()) == events
    # Once a host fits, the same start works.
    _admin(cloud, "h1", "enable")
    assert _start(cloud, user, iid)["host_id"] == "h1"


def test_unconfirmed_stop_on_a_silent_host_does_not_move(cloud):
    # The host was told to keep it stopped but never acknowledged that: it may run it still.
    user = cloud.account("alice")
    h1, h2, iid = _stopped_on_h1(cloud, user)
    _host_down(cloud, h1)
    row = _row(cloud, iid)
    cloud.set_row(Instance, iid, generation=row.generation + 1)
    r = user.post(f"/v1/instances/{iid}/start")
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "IncorrectInstanceState"
    after = _row(cloud, iid)
    assert (after.state, after.host_id) == ("stopped", "h1")
    assert iid not in h2.specs


def test_moving_back_before_the_orphan_delete_keeps_the_new_spec(cloud):
    # h1 reports its stale copy (an orphan then), but before a tick deletes it the instance is
    # started there again: the stale report must not delete the new spec.
    user = cloud.account("alice")
    h1, h2, iid = _stopped_on_h1(cloud, user)
    _host_down(cloud, h1)
    _start(cloud, user, iid)
    cloud.tick()
    user.post(f"/v1/instances/{iid}/stop")
    cloud.tick()
    cloud.heartbeat(h2)
    assert cloud.instance(user, iid)["state"] == "stopped"
    h1.unreachable = False
    cloud.heartbeat(h1)  # reports iid, which the controller gives to h2: noted as an orphan
    _admin(cloud, "h2", "disable")
    assert _start(cloud, user, iid)["host_id"] == "h1"
    cloud.tick()
    assert ("DELETE", f"/v1/instances/{iid}") not in h1.requests
    assert h1.specs[iid].power == "running"
    cloud.converge()
    doc = cloud.instance(user, iid)
    assert (doc["state"], doc["host_id"]) == ("running", "h1")
    assert iid in h1.specs and iid not in h2.specs  # h2's copy went on its next heartbeat
    assert len(_moves(cloud, iid)) == 2
