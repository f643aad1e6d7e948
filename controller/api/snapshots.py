"""/v1/snapshots: create (of a volume, attached or not), list (filters snapshot_id, volume_id,
status, tag:K=V; keyset pages), describe, delete, tags (controller/services/snapshots.py). The
storage node takes and deletes them when the reconciler runs controller/snapshot_sync.py; a
volume is made from one with POST /v1/volumes {"snapshot_id"}."""
from __future__ import annotations

from fastapi import APIRouter, Request

from controller.api.deps import Ctx, CurrentCaller, Page, Paging
from controller.api.responses import errors
from controller.models.snapshot import SnapshotCreate, SnapshotPublic, SnapshotTags
from controller.services import snapshots

router = APIRouter(tags=["snapshots"])


@router.post("/snapshots", status_code=201, response_model=SnapshotPublic,
             responses=errors(404, 503))
def create_snapshot(body: SnapshotCreate, ctx: Ctx, caller: CurrentCaller):
    return snapshots.to_public(snapshots.create(ctx.db, ctx.settings, caller, body))


@router.get("/snapshots", response_model=Page[SnapshotPublic])
def list_snapshots(request: Request, ctx: Ctx, caller: CurrentCaller, p: Paging):
    filters = snapshots.SnapshotFilters.from_query(request.query_params.multi_items())
    return snapshots.list_page(ctx.db, caller, p, filters)


@router.get("/snapshots/{snapshot_id}", response_model=SnapshotPublic)
def get_snapshot(snapshot_id: str, ctx: Ctx, caller: CurrentCaller):
    return snapshots.get_public(ctx.db, caller, snapshot_id)


@router.delete("/snapshots/{snapshot_id}", response_model=SnapshotPublic)
def delete_snapshot(snapshot_id: str, ctx: Ctx, caller: CurrentCaller):
    return snapshots.to_public(snapshots.delete(ctx.db, caller, snapshot_id))


@router.put("/snapshots/{snapshot_id}/tags", response_model=SnapshotPublic)
def set_snapshot_tags(snapshot_id: str, body: SnapshotTags, ctx: Ctx, caller: CurrentCaller):
    return snapshots.to_public(snapshots.set_tags(ctx.db, caller, snapshot_id, body.tags))
