"""The storage node's routes of extension "snapshots" (agent/contract/storage_v1.py): an APIRouter
over any VolumeBackend with the capability, included by the node's app (app.py).

Thin like the volume routes: ids are validated by the backend contract (agent/drivers/volumes.py)
and every rule is the backend's. Errors are raised as DriverErrors, which the app answers as
{"error": {"code", "message", "retryable"}} with the status STATUS_OF_CODE gives: the codes this
router adds are in SNAPSHOT_STATUS_OF_CODE, for the app to merge into its table.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Optional

from fastapi import APIRouter, Response

from agent.contract.storage_v1 import SnapshotObserved, SnapshotSpec
from agent.drivers.base import DriverError
from agent.drivers.volumes import (SnapshotInfo, SnapshotNotFound, VolumeBackend,
                                   valid_snapshot_id)

#: Backend error code -> HTTP status, for the codes snapshots bring (the others, e.g.
#: InvalidVolume.NotFound or IdempotentParameterMismatch, are the volume routes' already).
SNAPSHOT_STATUS_OF_CODE = {
    "InvalidSnapshotID.Malformed": 400,
    "InvalidSnapshot.NotFound": 404,
    "InvalidParameterValue": 400,
}


def observed(info: SnapshotInfo) -> SnapshotObserved:
    return SnapshotObserved(snapshot_id=info.snapshot_id, volume_id=info.volume_id,
                            size_bytes=info.size_bytes, stored_bytes=info.stored_bytes)


def snapshot_router(backend: VolumeBackend,
                    lock: Optional[threading.Lock] = None) -> APIRouter:
    """/v1/snapshots routes over `backend`. `lock`: the app's lock for changes (its put_lock),
    so a snapshot never interleaves with a volume's compare-then-act PUT or DELETE."""
    r = APIRouter(prefix="/v1")
    changing = lock if lock is not None else contextlib.nullcontext()

    def find(snapshot_id: str) -> SnapshotInfo:
        info = next((s for s in backend.snapshots() if s.snapshot_id == snapshot_id), None)
        if info is None:
            raise SnapshotNotFound(f"snapshot {snapshot_id} does not exist")
        return info

    @r.get("/snapshots", response_model=list[SnapshotObserved])
    def list_snapshots() -> list[SnapshotObserved]:
        return [observed(s) for s in backend.snapshots()]  # sorted by id

    @r.get("/snapshots/{snapshot_id}", response_model=SnapshotObserved)
    def get_snapshot(snapshot_id: str) -> SnapshotObserved:
        return observed(find(valid_snapshot_id(snapshot_id)))

    @r.put("/snapshots/{snapshot_id}", response_model=SnapshotObserved)
    def put_snapshot(snapshot_id: str, spec: SnapshotSpec) -> SnapshotObserved:
        valid_snapshot_id(snapshot_id)
        if spec.snapshot_id != snapshot_id:
            raise DriverError(f"spec.snapshot_id {spec.snapshot_id} does not match the URL",
                              code="InvalidParameterValue", retryable=False)
        with changing:
            return observed(backend.snapshot(spec.volume_id, snapshot_id))

    @r.delete("/snapshots/{snapshot_id}", status_code=204)
    def delete_snapshot(snapshot_id: str) -> Response:
        valid_snapshot_id(snapshot_id)
        with changing:
            backend.delete_snapshot(snapshot_id)  # already gone: success
        return Response(status_code=204)

    return r
