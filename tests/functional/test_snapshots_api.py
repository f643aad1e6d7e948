"""Snapshots through the real app (controller/services/snapshots.py, controller/api/snapshots.py)
on the fake stack: every rule of create/describe/delete/tags and of creating a volume from a
snapshot, every refusal with its status and stable code and nothing changed in the database
afterwards (snapshots, volumes, events), other accounts' ids answering 404, filters and pages.

Then the sync (controller/snapshot_sync.py) against the real storage node app over
FakeVolumeBackend, reached through the controller's StorageClient by an in-process http factory:
pending -> completed with the snapshot on the node, the original changing without changing the
snapshot, a volume made from it with its content, blocks shared, delete -> gone, errors.

The reconciler is not exercised (reconcile_interval_s 0 and no tick): the volume states it would
set are set directly in the database."""
from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from agent.contract.storage_v1 import VolumeSpec
from agent.drivers.fake_volumes import FakeVolumeBackend
from agent.storage_node.app import create_storage_app
from controller.models import Event, Snapshot, Volume
from controller.snapshot_sync import sync_snapshots
from controller.storage import StorageClient
from tests.functional.fake_agent import AGENT_TOKEN, cloud_fixture
from tests.functional.vpc_support import err, is_id, ok

GIB = 1 << 30
STORAGE_URL = "http://storage.test:8790"
SNAP_MISSING = "snap-00000000000000000"


cloud = cloud_fixture(image=False, storage_url=STORAGE_URL, max_volume_gib=100,
                      account_volume_gib_limit=300)


def db_state(cloud) -> dict:
    with cloud.db.session(notify=False) as s:
        snaps = sorted((x.snapshot_id, x.account_id, x.volume_id, x.state, x.progress,
                        x.description, repr(sorted(x.tags.items())), x.updated_at)
                       for x in s.exec(select(Snapshot)))
        vols = sorted((v.volume_id, v.state, v.size_gib, v.snapshot_id, v.updated_at)
                      for v in s.exec(select(Volume)))
        events = len(list(s.exec(select(Event))))
    return {"snapshots": snaps, "volumes": vols, "events": events}


def refused(cloud, call, status: int, code: str) -> dict:
    """Run `call()`; assert the error and that nothing in the database changed."""
    before = db_state(cloud)
    e = err(call(), status, code)
    assert db_state(cloud) == before
    return e


def volume(cloud, client, size: int = 10, state: str = "available") -> str:
    vid = ok(client.post("/v1/volumes", json={"size_gib": size}), 201)["volume_id"]
    cloud.set_row(Volume, vid, state=state, acked_generation=1)
    return vid


def snapshot(client, vid: str, **body) -> dict:
    return ok(client.post("/v1/snapshots", json={"volume_id": vid, **body}), 201)


def completed(cloud, client, vid: str, **body) -> dict:
    snap = snapshot(client, vid, **body)
    cloud.set_row(Snapshot, snap["snapshot_id"], state="completed", progress="100%")
    return ok(client.get(f"/v1/snapshots/{snap['snapshot_id']}"))


def snap_row(cloud, sid: str) -> Snapshot | None:
    with cloud.db.session(notify=False) as s:
        return s.get(Snapshot, sid)


# -- create / describe -----------------------------------------------------------------------
def test_create_describe_and_event(cloud):
    alice = cloud.account("alice")
    vid = volume(cloud, alice, 20)
    snap = snapshot(alice, vid, description="before upgrade", tags={"Name": "nightly"})
    assert is_id(snap["snapshot_id"], "snap")
    assert snap == {**snap, "volume_id": vid, "volume_size_gib": 20, "state": "pending",
                    "progress": "0%", "description": "before upgrade", "encrypted": False,
                    "tags": {"Name": "nightly"}, "state_message": None}
    with cloud.db.session(notify=False) as s:
        assert snap["owner_id"] == s.get(Volume, vid).account_id
    assert ok(alice.get(f"/v1/snapshots/{snap['snapshot_id']}")) == snap
    evs = ok(alice.get("/v1/events", params={"resource_id": snap["snapshot_id"]}))["items"]
    assert [(e["resource_type"], e["from_state"], e["to_state"]) for e in evs] == [
        ("snapshot", None, "pending")]


def test_snapshot_of_an_attached_volume(cloud):
    alice = cloud.account("alice")
    vid = volume(cloud, alice, 5, state="in-use")
    assert snapshot(alice, vid)["state"] == "pending"


def test_create_refusals_change_nothing(cloud):
    alice, bob = cloud.account("alice"), cloud.account("bob")
    vid = volume(cloud, alice)
    bob_vid = volume(cloud, bob)
    creating = ok(alice.post("/v1/volumes", json={"size_gib": 1}), 201)["volume_id"]
    deleting = volume(cloud, alice, 1, state="deleting")
    cases = [
        ({"volume_id": bob_vid}, 404, "InvalidVolume.NotFound"),  # another account's
        ({"volume_id": "vol-00000000000000000"}, 404, "InvalidVolume.NotFound"),
        ({"volume_id": creating}, 409, "IncorrectState"),
        ({"volume_id": deleting}, 409, "IncorrectState"),
        ({}, 400, "MissingParameter"),
        ({"volume_id": vid, "description": "x" * 256}, 400, "InvalidParameterValue"),
        ({"volume_id": vid, "description": "line\nbreak"}, 400, "InvalidParameterValue"),
        ({"volume_id": vid, "description": "bell\x07"}, 400, "InvalidParameterValue"),
        ({"volume_id": vid, "tags": {"kumo:x": "1"}}, 400, "InvalidTag"),
        ({"volume_id": vid, "tags": {"a\n": "1"}}, 400, "InvalidTag"),
        ({"volume_id": vid, "tags": {"a": "<b>"}}, 400, "InvalidTag"),
    ]
    for body, status, code in cases:
        refused(cloud, lambda: alice.post("/v1/snapshots", json=body), status, code)
    # Deleted volumes are gone.
    cloud.set_row(Volume, deleting, state="deleted")
    refused(cloud, lambda: alice.post("/v1/snapshots", json={"volume_id": deleting}), 404,
            "InvalidVolume.NotFound")


def test_create_without_storage_service_is_503(cloud):
    alice = cloud.account("alice")
    vid = volume(cloud, alice)
    cloud.settings.storage_url = None  # the same database, no storage service any more
    refused(cloud, lambda: alice.post("/v1/snapshots", json={"volume_id": vid}), 503,
            "StorageUnavailable")
    refused(cloud, lambda: alice.post("/v1/snapshots", json={"volume_id": SNAP_MISSING}), 404,
            "InvalidVolume.NotFound")


def test_admin_sees_every_account(cloud):
    alice = cloud.account("alice")
    sid = snapshot(alice, volume(cloud, alice))["snapshot_id"]
    assert ok(cloud.admin.get(f"/v1/snapshots/{sid}"))["snapshot_id"] == sid
    assert [s["snapshot_id"] for s in ok(cloud.admin.get("/v1/snapshots"))["items"]] == [sid]


def test_other_accounts_snapshots_are_404(cloud):
    alice, bob = cloud.account("alice"), cloud.account("bob")
    sid = snapshot(alice, volume(cloud, alice))["snapshot_id"]
    for call in (lambda: bob.get(f"/v1/snapshots/{sid}"),
                 lambda: bob.delete(f"/v1/snapshots/{sid}"),
                 lambda: bob.put(f"/v1/snapshots/{sid}/tags", json={"tags": {"a": "b"}}),
                 lambda: bob.post("/v1/volumes", json={"snapshot_id": sid})):
        refused(cloud, call, 404, "InvalidSnapshot.NotFound")
    assert ok(bob.get("/v1/snapshots"))["items"] == []
    assert ok(bob.get("/v1/snapshots", params={"snapshot_id": sid}))["items"] == []


def test_filters_and_pages(cloud):
    alice = cloud.account("alice")
    v1, v2 = volume(cloud, alice), volume(cloud, alice)
    a = snapshot(alice, v1, tags={"env": "prod"})["snapshot_id"]
    b = completed(cloud, alice, v1)["snapshot_id"]
    c = snapshot(alice, v2, tags={"env": "dev"})["snapshot_id"]

    def ids(**params):
        return [s["snapshot_id"] for s in ok(alice.get("/v1/snapshots", params=params))["items"]]

    assert ids() == [a, b, c]
    assert ids(volume_id=v1) == [a, b]
    assert ids(**{"volume-id": v2}) == [c]
    assert ids(status="completed") == [b]
    assert ids(status="pending,completed") == [a, b, c]
    assert ids(snapshot_id=f"{a},{c}") == [a, c]
    assert ids(**{"tag:env": "prod"}) == [a]
    assert ids(**{"tag:a\nb": "x"}) == []
    page = ok(alice.get("/v1/snapshots", params={"max_results": 2}))
    assert [s["snapshot_id"] for s in page["items"]] == [a, b] and page["next_token"]
    rest = ok(alice.get("/v1/snapshots", params={"max_results": 2,
                                                 "next_token": page["next_token"]}))
    assert [s["snapshot_id"] for s in rest["items"]] == [c] and rest["next_token"] is None
    err(alice.get("/v1/snapshots", params={"next_token": "garbage"}), 400,
        "InvalidPaginationToken")


# -- delete / tags ----------------------------------------------------------------------------
def test_delete_and_repeat(cloud):
    alice = cloud.account("alice")
    sid = completed(cloud, alice, volume(cloud, alice))["snapshot_id"]
    assert ok(alice.delete(f"/v1/snapshots/{sid}"))["state"] == "deleting"
    before = db_state(cloud)
    assert ok(alice.delete(f"/v1/snapshots/{sid}"))["state"] == "deleting"  # idempotent
    assert db_state(cloud) == before
    evs = ok(alice.get("/v1/events", params={"resource_id": sid}))["items"]
    assert [(e["from_state"], e["to_state"]) for e in evs][-1] == ("completed", "deleting")
    cloud.set_row(Snapshot, sid, state="deleted")
    for call in (lambda: alice.get(f"/v1/snapshots/{sid}"),
                 lambda: alice.delete(f"/v1/snapshots/{sid}")):
        refused(cloud, call, 404, "InvalidSnapshot.NotFound")
    assert ok(alice.get("/v1/snapshots"))["items"] == []


@pytest.mark.parametrize("state", ["pending", "error"])
def test_delete_pending_or_error(cloud, state):
    alice = cloud.account("alice")
    sid = snapshot(alice, volume(cloud, alice))["snapshot_id"]
    cloud.set_row(Snapshot, sid, state=state)
    assert ok(alice.delete(f"/v1/snapshots/{sid}"))["state"] == "deleting"


def test_delete_while_a_volume_is_created_from_it_is_409(cloud):
    alice = cloud.account("alice")
    sid = completed(cloud, alice, volume(cloud, alice))["snapshot_id"]
    new = ok(alice.post("/v1/volumes", json={"snapshot_id": sid}), 201)
    refused(cloud, lambda: alice.delete(f"/v1/snapshots/{sid}"), 409, "InvalidSnapshot.InUse")
    cloud.set_row(Volume, new["volume_id"], state="available")  # the node made it
    assert ok(alice.delete(f"/v1/snapshots/{sid}"))["state"] == "deleting"


def test_tags_replace(cloud):
    alice = cloud.account("alice")
    sid = snapshot(alice, volume(cloud, alice), tags={"a": "1"})["snapshot_id"]
    assert ok(alice.put(f"/v1/snapshots/{sid}/tags",
                        json={"tags": {"b": "2", "c": ""}}))["tags"] == {"b": "2", "c": ""}
    refused(cloud, lambda: alice.put(f"/v1/snapshots/{sid}/tags",
                                     json={"tags": {"kumo:x": "1"}}), 400, "InvalidTag")
    refused(cloud, lambda: alice.put(f"/v1/snapshots/{sid}/tags",
                                     json={"tags": {str(i): "" for i in range(51)}}),
            400, "InvalidTag")
    assert ok(alice.get(f"/v1/snapshots/{sid}"))["tags"] == {"b": "2", "c": ""}


# -- volumes from snapshots ------------------------------------------------------------------
def test_volume_from_a_snapshot(cloud):
    alice = cloud.account("alice")
    sid = completed(cloud, alice, volume(cloud, alice, 8))["snapshot_id"]
    v = ok(alice.post("/v1/volumes", json={"snapshot_id": sid}), 201)
    assert (v["size_gib"], v["snapshot_id"], v["state"]) == (8, sid, "creating")
    bigger = ok(alice.post("/v1/volumes", json={"snapshot_id": sid, "size_gib": 12}), 201)
    assert (bigger["size_gib"], bigger["snapshot_id"]) == (12, sid)
    evs = ok(alice.get("/v1/events", params={"resource_id": v["volume_id"]}))["items"]
    assert sid in evs[0]["reason"]
    # A client token replays with the size the snapshot gave.
    t = ok(alice.post("/v1/volumes", json={"snapshot_id": sid, "client_token": "t1"}), 201)
    again = ok(alice.post("/v1/volumes", json={"snapshot_id": sid, "client_token": "t1"}), 201)
    assert again["volume_id"] == t["volume_id"]
    assert ok(alice.post("/v1/volumes", json={"snapshot_id": sid, "size_gib": 8,
                                              "client_token": "t1"}), 201)["volume_id"] \
        == t["volume_id"]
    refused(cloud, lambda: alice.post("/v1/volumes", json={"snapshot_id": sid, "size_gib": 9,
                                                           "client_token": "t1"}),
            400, "IdempotentParameterMismatch")


def test_volume_from_snapshot_refusals_change_nothing(cloud):
    alice, bob = cloud.account("alice"), cloud.account("bob")
    vid = volume(cloud, alice, 8)
    done = completed(cloud, alice, vid)["snapshot_id"]
    pending = snapshot(alice, vid)["snapshot_id"]
    erred = snapshot(alice, vid)["snapshot_id"]
    cloud.set_row(Snapshot, erred, state="error")
    deleting = completed(cloud, alice, vid)["snapshot_id"]
    cloud.set_row(Snapshot, deleting, state="deleting")
    gone = completed(cloud, alice, vid)["snapshot_id"]
    cloud.set_row(Snapshot, gone, state="deleted")
    bobs = completed(cloud, bob, volume(cloud, bob, 1))["snapshot_id"]
    cases = [
        ({"snapshot_id": SNAP_MISSING}, 404, "InvalidSnapshot.NotFound"),
        ({"snapshot_id": bobs}, 404, "InvalidSnapshot.NotFound"),
        ({"snapshot_id": gone}, 404, "InvalidSnapshot.NotFound"),
        ({"snapshot_id": pending}, 409, "IncorrectState"),
        ({"snapshot_id": erred}, 409, "IncorrectState"),
        ({"snapshot_id": deleting}, 409, "IncorrectState"),
        ({"snapshot_id": done, "size_gib": 7}, 400, "InvalidParameterValue"),
        ({"snapshot_id": done, "size_gib": 101}, 400, "InvalidParameterValue"),
        ({"snapshot_id": done, "tags": {"kumo:a": "b"}}, 400, "InvalidTag"),
    ]
    for body, status, code in cases:
        refused(cloud, lambda: alice.post("/v1/volumes", json=body), status, code)


def test_volume_from_snapshot_counts_against_the_limit(cloud):
    alice = cloud.account("alice")
    sid = completed(cloud, alice, volume(cloud, alice, 100))["snapshot_id"]
    for _ in range(2):  # 300 GiB in all: the account's limit
        ok(alice.post("/v1/volumes", json={"snapshot_id": sid}), 201)
    refused(cloud, lambda: alice.post("/v1/volumes", json={"snapshot_id": sid}), 400,
            "VolumeLimitExceeded")


# -- the sync against a storage node ---------------------------------------------------------
class Node:
    """The real storage node app over FakeVolumeBackend, and a StorageClient routed to it."""

    def __init__(self):
        self.backend = FakeVolumeBackend(host="192.0.2.10", port=10809)
        self.app = TestClient(create_storage_app(self.backend, node_id="sn1", token=AGENT_TOKEN),
                              raise_server_exceptions=False)
        self.down = False
        self.client = StorageClient(STORAGE_URL, AGENT_TOKEN, 5.0, self._http)

    def _http(self, url: str, token: str | None, timeout: float) -> httpx.Client:
        def handle(request: httpx.Request) -> httpx.Response:
            if self.down:
                raise httpx.ConnectError("storage node unreachable", request=request)
            r = self.app.request(request.method, request.url.path, content=request.content,
                                 headers=dict(request.headers))
            return httpx.Response(r.status_code, content=r.content, headers=r.headers)

        return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"},
                            timeout=timeout, transport=httpx.MockTransport(handle))

    def snapshot_ids(self) -> list[str]:
        return [s.snapshot_id for s in self.backend.snapshots()]


@pytest.fixture
def node():
    n = Node()
    yield n
    n.client.close()


def node_volume(cloud, node: Node, client, size_gib: int = 1) -> str:
    """A volume the reconciler made: available in the database and on the node (exported, so
    the test can write to it as a host would)."""
    vid = volume(cloud, client, size_gib)
    node.backend.create(vid, size_gib * GIB)
    node.backend.export(vid)
    return vid


def sync(cloud, node) -> int:
    return sync_snapshots(cloud.db, cloud.settings, node.client)


def test_sync_takes_shares_and_deletes(cloud, node):
    alice = cloud.account("alice")
    vid = node_volume(cloud, node, alice)
    node.backend.write(vid, 0, b"before")
    sid = snapshot(alice, vid)["snapshot_id"]
    assert node.snapshot_ids() == []
    assert sync(cloud, node) == 0
    snap = ok(alice.get(f"/v1/snapshots/{sid}"))
    assert (snap["state"], snap["progress"], snap["volume_size_gib"]) == ("completed", "100%", 1)
    assert node.snapshot_ids() == [sid]
    evs = ok(alice.get("/v1/events", params={"resource_id": sid}))["items"]
    assert [(e["from_state"], e["to_state"]) for e in evs] == [(None, "pending"),
                                                               ("pending", "completed")]
    assert sync(cloud, node) == 0  # nothing left to do
    # The original keeps changing; the snapshot does not.
    used = node.backend.allocated_bytes()
    node.backend.write(vid, 0, b"after!")
    assert node.backend.read(vid, 0, 6) == b"after!"
    assert node.backend.allocated_bytes() - used <= 64 << 10  # one chunk copied, no more
    # A volume from the snapshot: the row carries snapshot_id; the reconciler passes it to the
    # node as VolumeSpec.from_snapshot (done here by hand).
    new = ok(alice.post("/v1/volumes", json={"snapshot_id": sid}), 201)
    assert new["snapshot_id"] == sid
    node.client.put_volume(VolumeSpec(volume_id=new["volume_id"], size_bytes=GIB,
                                      exported=True, from_snapshot=sid))
    assert node.backend.read(new["volume_id"], 0, 6) == b"before"
    cloud.set_row(Volume, new["volume_id"], state="available")
    # Delete: deleting -> gone on the node -> deleted (404 for users) -> purged.
    assert ok(alice.delete(f"/v1/snapshots/{sid}"))["state"] == "deleting"
    assert sync(cloud, node) == 0
    assert node.snapshot_ids() == []
    err(alice.get(f"/v1/snapshots/{sid}"), 404, "InvalidSnapshot.NotFound")
    row = snap_row(cloud, sid)
    assert row.state == "deleted" and row.deleted_at is not None
    assert node.backend.read(new["volume_id"], 0, 6) == b"before"  # the volume keeps its data
    cloud.set_row(Snapshot, sid, deleted_at=row.deleted_at - timedelta(
        seconds=cloud.settings.terminated_retention_s + 1))
    assert sync(cloud, node) == 0
    assert snap_row(cloud, sid) is None


def test_snapshot_outlives_its_volume(cloud, node):
    alice = cloud.account("alice")
    vid = node_volume(cloud, node, alice)
    node.backend.write(vid, 0, b"keep")
    sid = snapshot(alice, vid)["snapshot_id"]
    assert sync(cloud, node) == 0
    node.backend.unexport(vid)
    node.backend.delete(vid)
    cloud.set_row(Volume, vid, state="deleted")
    snap = ok(alice.get(f"/v1/snapshots/{sid}"))
    assert snap["state"] == "completed" and snap["volume_id"] == vid
    new = ok(alice.post("/v1/volumes", json={"snapshot_id": sid, "size_gib": 2}), 201)
    node.client.put_volume(VolumeSpec(volume_id=new["volume_id"], size_bytes=2 * GIB,
                                      exported=True, from_snapshot=sid))
    assert node.backend.read(new["volume_id"], 0, 4) == b"keep"


def test_sync_retries_an_unreachable_node_and_errors_on_a_permanent_refusal(cloud, node):
    alice = cloud.account("alice")
    vid = node_volume(cloud, node, alice)
    sid = snapshot(alice, vid)["snapshot_id"]
    node.down = True
    assert sync(cloud, node) == 1
    row = snap_row(cloud, sid)
    assert row.state == "pending" and "StorageUnreachable" in row.observed_error
    node.down = False
    assert sync(cloud, node) == 0
    assert snap_row(cloud, sid).state == "completed"
    assert snap_row(cloud, sid).observed_error is None
    # The volume is gone from the node (nothing in the database knew yet): permanent.
    lost = snapshot(alice, vid)["snapshot_id"]
    node.backend.unexport(vid)
    node.backend.delete(vid)
    assert sync(cloud, node) == 1
    snap = ok(alice.get(f"/v1/snapshots/{lost}"))
    assert snap["state"] == "error" and "InvalidVolume.NotFound" in snap["state_message"]
    assert sync(cloud, node) == 0  # error is final: nothing retried
    # An error snapshot can be deleted (the node never had it: already gone is success).
    assert ok(alice.delete(f"/v1/snapshots/{lost}"))["state"] == "deleting"
    assert sync(cloud, node) == 0
    assert snap_row(cloud, lost).state == "deleted"


def test_deleted_while_being_taken_is_not_resurrected(cloud, node):
    alice = cloud.account("alice")
    vid = node_volume(cloud, node, alice)
    sid = snapshot(alice, vid)["snapshot_id"]
    ok(alice.delete(f"/v1/snapshots/{sid}"))
    assert sync(cloud, node) == 0
    assert snap_row(cloud, sid).state == "deleted" and node.snapshot_ids() == []


def test_sync_without_storage_does_nothing(cloud):
    alice = cloud.account("alice")
    snapshot(alice, volume(cloud, alice))
    before = db_state(cloud)
    assert sync_snapshots(cloud.db, cloud.settings, None) == 0
    assert db_state(cloud) == before
