"""The storage node's extension "snapshots" (agent/contract/storage_v1.py) for the controller's
StorageClient (controller/storage.py): the same boundary habits, as functions over a client.
Transport failures and the node's error bodies become StorageError; a DELETE of a snapshot
already gone is success."""
from __future__ import annotations

from agent.contract.storage_v1 import SnapshotObserved, SnapshotSpec
from controller.storage import StorageClient, StorageError, _raise_for


def put_snapshot(client: StorageClient, spec: SnapshotSpec) -> SnapshotObserved:
    """Take the snapshot (idempotent: the same spec again answers the existing snapshot)."""
    resp = client._call("PUT", f"/v1/snapshots/{spec.snapshot_id}",
                        json=spec.model_dump(mode="json"))
    _raise_for(resp)
    return client._decode(resp, SnapshotObserved)


def get_snapshot(client: StorageClient, snapshot_id: str) -> SnapshotObserved | None:
    resp = client._call("GET", f"/v1/snapshots/{snapshot_id}")
    if resp.status_code == 404:
        return None
    _raise_for(resp)
    return client._decode(resp, SnapshotObserved)


def list_snapshots(client: StorageClient) -> list[SnapshotObserved]:
    resp = client._call("GET", "/v1/snapshots")
    _raise_for(resp)
    try:
        return [SnapshotObserved.model_validate(v) for v in resp.json()]
    except Exception as exc:
        raise StorageError("StorageBadResponse", f"{type(exc).__name__}: {exc}"[:300],
                           True, resp.status_code) from exc


def delete_snapshot(client: StorageClient, snapshot_id: str) -> None:
    resp = client._call("DELETE", f"/v1/snapshots/{snapshot_id}")
    if resp.status_code == 404:
        try:
            code = resp.json()["error"]["code"]
        except Exception:
            code = None
        if code in (None, "InvalidSnapshot.NotFound", "NotFound"):
            return  # already gone is success
    _raise_for(resp)
