"""The storage node's snapshot routes (agent/storage_node/snapshot_routes.py, extension
"snapshots" of agent/contract/storage_v1.py) over FakeVolumeBackend: mounted on a bare FastAPI
app with the node app's error answer (StorageApiError.from_driver, its STATUS_OF_CODE merged with
SNAPSHOT_STATUS_OF_CODE, as app.py is to do), and once included in the node's own app (bearer
token, request validation)."""
from __future__ import annotations

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from agent.contract.storage_v1 import EXTENSIONS, SnapshotObserved
from agent.drivers.base import DriverError
from agent.drivers.fake_volumes import FakeVolumeBackend
from agent.storage_node import app as node_app
from agent.storage_node.snapshot_routes import SNAPSHOT_STATUS_OF_CODE, snapshot_router

MiB = 1 << 20
V1 = "vol-0000000000000a001"
V2 = "vol-0000000000000a002"
S1 = "snap-0000000000000a001"
S2 = "snap-0000000000000a002"
TOKEN = "s3cret-token"


@pytest.fixture(autouse=True)
def status_codes(monkeypatch):
    """What app.py's STATUS_OF_CODE is to contain once the router is included."""
    for code, status in SNAPSHOT_STATUS_OF_CODE.items():
        monkeypatch.setitem(node_app.STATUS_OF_CODE, code, status)


@pytest.fixture
def backend():
    return FakeVolumeBackend(host="100.64.0.250", port=10809)


@pytest.fixture
def client(backend):
    app = FastAPI()

    @app.exception_handler(DriverError)
    async def _driver_error(request: Request, exc: DriverError) -> JSONResponse:
        e = node_app.StorageApiError.from_driver(exc)
        return JSONResponse({"error": {"code": e.code, "message": e.message,
                                       "retryable": e.retryable}}, e.status)

    app.include_router(snapshot_router(backend))
    with TestClient(app) as c:
        yield c


def put(c, sid, vid):
    return c.put(f"/v1/snapshots/{sid}", json={"snapshot_id": sid, "volume_id": vid})


def err(r) -> tuple[int, str]:
    e = r.json()["error"]
    assert set(e) == {"code", "message", "retryable"} and e["message"]
    return r.status_code, e["code"]


def test_snapshot_lifecycle(client, backend):
    assert client.get("/v1/snapshots").json() == []
    assert err(put(client, S1, V1)) == (404, "InvalidVolume.NotFound")
    backend.create(V1, 8 * MiB)
    backend.create(V2, 16 * MiB)
    backend.export(V1)
    backend.write(V1, 0, b"old")

    r = put(client, S2, V1)
    assert r.status_code == 200
    s2 = SnapshotObserved.model_validate(r.json())
    # stored: the one 64 KiB chunk written (the fake's measure; extension snapshot-stored-bytes)
    assert s2 == SnapshotObserved(snapshot_id=S2, volume_id=V1, size_bytes=8 * MiB,
                                  stored_bytes=64 << 10)
    assert put(client, S2, V1).json() == r.json()  # the same again: the same answer
    assert err(put(client, S2, V2)) == (400, "IdempotentParameterMismatch")
    r1 = put(client, S1, V2)
    assert r1.status_code == 200 and r1.json()["size_bytes"] == 16 * MiB
    assert [s["snapshot_id"] for s in client.get("/v1/snapshots").json()] == [S1, S2]
    assert client.get(f"/v1/snapshots/{S2}").json() == r.json()

    # The snapshot holds the data of its moment, and outlives its volume.
    backend.write(V1, 0, b"new")
    backend.unexport(V1)
    backend.delete(V1)
    assert client.get(f"/v1/snapshots/{S2}").json() == r.json()
    backend.create("vol-0000000000000a003", 8 * MiB, from_snapshot=S2)
    backend.export("vol-0000000000000a003")
    assert backend.read("vol-0000000000000a003", 0, 3) == b"old"

    assert client.delete(f"/v1/snapshots/{S2}").status_code == 204
    assert client.delete(f"/v1/snapshots/{S2}").status_code == 204  # gone: success
    assert err(client.get(f"/v1/snapshots/{S2}")) == (404, "InvalidSnapshot.NotFound")
    assert [s["snapshot_id"] for s in client.get("/v1/snapshots").json()] == [S1]


@pytest.mark.parametrize("bad", ["snap-0123", "snap-0123456789ABCDEF0", "vol-0000000000000a001",
                                 "snap-0000000000000a001x", "snap-..", "snap-0000000000000a001:1"])
def test_malformed_snapshot_ids(client, backend, bad):
    backend.create(V1, 8 * MiB)
    for r in (client.get(f"/v1/snapshots/{bad}"), client.delete(f"/v1/snapshots/{bad}"),
              client.put(f"/v1/snapshots/{bad}", json={"snapshot_id": S1, "volume_id": V1})):
        assert err(r) == (400, "InvalidSnapshotID.Malformed"), r.request
    assert backend.snapshots() == []


def test_body_must_match_the_url(client, backend):
    backend.create(V1, 8 * MiB)
    assert err(client.put(f"/v1/snapshots/{S1}", json={"snapshot_id": S2, "volume_id": V1})) \
        == (400, "InvalidParameterValue")
    r = client.put(f"/v1/snapshots/{S1}", json={"snapshot_id": S1, "volume_id": "vol-1"})
    assert r.status_code == 422  # a bare app: FastAPI's own validation answer
    assert backend.snapshots() == []


def test_included_in_the_node_app(backend):
    app = node_app.create_storage_app(backend, node_id="sn1", token=TOKEN, ensure_interval=60)
    app.include_router(snapshot_router(backend, lock=app.state.put_lock))
    backend.create(V1, 8 * MiB)
    with TestClient(app) as c:
        assert c.get("/v1/snapshots").status_code == 401  # the app's token applies
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert "snapshots" in EXTENSIONS
        assert "snapshots" in c.get("/v1/storage", headers=auth).json()["extensions"]
        r = c.put(f"/v1/snapshots/{S1}", json={"snapshot_id": S1, "volume_id": V1}, headers=auth)
        assert r.status_code == 200 and r.json()["volume_id"] == V1
        bad = c.put(f"/v1/snapshots/{S2}", json={"snapshot_id": S2}, headers=auth)
        assert err(bad) == (400, "InvalidParameterValue")  # the app's validation answer
        assert err(c.get("/v1/snapshots/snap-1", headers=auth)) == \
            (400, "InvalidSnapshotID.Malformed")
        assert c.delete(f"/v1/snapshots/{S1}", headers=auth).status_code == 204
        assert c.get("/v1/snapshots", headers=auth).json() == []
