"""`kumo snapshots ...` and `kumo volumes create --snapshot` against the real controller app (in
process, through TestClient): each command, its REST call and status, --wait until the state the
sync would set (simulated by the fake sleep), errors as `error: <code>: <message>` with exit 1."""
from __future__ import annotations

from sqlmodel import select

from controller.models import Snapshot, Volume
from tests.functional.fake_agent import cloud_fixture
from tests.functional.test_cli_volumes import Kumo


cloud = cloud_fixture(image=False, storage_url="unix:/nonexistent")


def _volume(kumo: Kumo, cloud, size: str = "2") -> str:
    vid = kumo("volumes", "create", "--size", size)["volume_id"]
    cloud.set_row(Volume, vid, state="available")
    return vid


def test_snapshot_commands(cloud):
    kumo = Kumo(cloud)
    vid = _volume(kumo, cloud)
    snap = kumo("snapshots", "create", "--volume", vid, "--description", "nightly",
                "--tag", "Name=n1")
    sid = snap["snapshot_id"]
    assert snap == {**snap, "volume_id": vid, "state": "pending", "description": "nightly",
                    "tags": {"Name": "n1"}, "volume_size_gib": 2}
    assert ("POST", "/v1/snapshots", 201) in kumo.answers
    assert [s["snapshot_id"] for s in kumo("snapshots", "list")["items"]] == [sid]
    assert kumo("snapshots", "list", "--volume", vid)["items"][0]["snapshot_id"] == sid
    assert kumo("snapshots", "list", "--status", "completed")["items"] == []
    assert kumo("snapshots", "list", "--tag", "Name=n1")["items"][0]["snapshot_id"] == sid
    assert kumo("snapshots", "show", sid)["progress"] == "0%"
    assert kumo("snapshots", "set-tags", sid, "--tag", "a=1")["tags"] == {"a": "1"}
    cloud.set_row(Snapshot, sid, state="completed", progress="100%")  # the sync's part
    # A volume from the snapshot: its size by default, or a larger one.
    new = kumo("volumes", "create", "--snapshot", sid)
    assert (new["snapshot_id"], new["size_gib"]) == (sid, 2)
    assert kumo("volumes", "create", "--snapshot", sid, "--size", "3")["size_gib"] == 3
    r = kumo.invoke("snapshots", "delete", sid)
    assert r.exit_code == 1 and "error: InvalidSnapshot.InUse:" in r.stderr
    # the node made them
    cloud.set_rows(select(Volume).where(Volume.snapshot_id == sid), state="available")
    assert kumo("snapshots", "delete", sid)["state"] == "deleting"
    assert ("DELETE", f"/v1/snapshots/{sid}", 200) in kumo.answers


def test_wait_until_completed(cloud):
    kumo = Kumo(cloud)
    vid = _volume(kumo, cloud)

    kumo.on_sleep = lambda: cloud.set_rows(select(Snapshot), state="completed", progress="100%")
    snap = kumo("snapshots", "create", "--volume", vid, "--wait")
    assert snap["state"] == "completed" and snap["progress"] == "100%"
    assert kumo.sleeps >= 1


def test_wait_fails_on_error(cloud):
    kumo = Kumo(cloud)
    vid = _volume(kumo, cloud)

    kumo.on_sleep = lambda: cloud.set_rows(select(Snapshot), state="error",
                                           observed_error="InvalidVolume.NotFound: gone")
    r = kumo.invoke("snapshots", "create", "--volume", vid, "--wait")
    assert r.exit_code == 1 and "error: SnapshotFailed:" in r.stderr and "gone" in r.stderr


def test_errors(cloud):
    kumo = Kumo(cloud)
    r = kumo.invoke("snapshots", "show", "snap-00000000000000000")
    assert r.exit_code == 1 and "error: InvalidSnapshot.NotFound:" in r.stderr
    r = kumo.invoke("snapshots", "create", "--volume", "vol-00000000000000000")
    assert r.exit_code == 1 and "error: InvalidVolume.NotFound:" in r.stderr
    r = kumo.invoke("volumes", "create", "--snapshot", "snap-00000000000000000")
    assert r.exit_code == 1 and "error: InvalidSnapshot.NotFound:" in r.stderr
    r = kumo.invoke("volumes", "create")
    assert r.exit_code == 2  # neither --size nor --snapshot
    r = kumo.invoke("snapshots", "show", "../x")
    assert r.exit_code == 2
    r = kumo.invoke("snapshots", "list", output="table")
    assert r.exit_code == 0 and "SNAPSHOT" in r.stdout
