"""/v1/volumes: create, list (filters volume_id, status, attachment_instance_id,
attachment_status, size, tag:K=V; keyset pages), describe, delete, attach, detach, modify (grow),
tags (controller/services/volumes.py). Every mutation wakes the reconciler when the service's
transaction commits (controller/db.py), which carries it to the storage node and the hosts."""
from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from controller.api.deps import Ctx, CurrentCaller, Page, Paging
from controller.api.responses import errors
from controller.models.volume import (AttachmentPublic, VolumeAttach, VolumeCreate, VolumeDetach,
                                      VolumeModify, VolumePublic)
from controller.services import volumes

router = APIRouter(tags=["volumes"])


class VolumeTags(BaseModel):
    """The volume's new tags: they replace all of its tags."""

    tags: dict[str, str]


@router.post("/volumes", status_code=201, response_model=VolumePublic,
             responses=errors(404, 503))
def create_volume(body: VolumeCreate, ctx: Ctx, caller: CurrentCaller):
    return volumes.to_public(volumes.create(ctx.db, ctx.settings, caller, body))


@router.get("/volumes", response_model=Page[VolumePublic])
def list_volumes(request: Request, ctx: Ctx, caller: CurrentCaller, p: Paging):
    filters = volumes.VolumeFilters.from_query(request.query_params.multi_items())
    return volumes.list_page(ctx.db, caller, p, filters)


@router.get("/volumes/{volume_id}", response_model=VolumePublic)
def get_volume(volume_id: str, ctx: Ctx, caller: CurrentCaller):
    return volumes.get_public(ctx.db, caller, volume_id)


@router.delete("/volumes/{volume_id}", response_model=VolumePublic)
def delete_volume(volume_id: str, ctx: Ctx, caller: CurrentCaller):
    return volumes.to_public(volumes.delete(ctx.db, caller, volume_id))


@router.post("/volumes/{volume_id}/attach", response_model=AttachmentPublic)
def attach_volume(volume_id: str, body: VolumeAttach, ctx: Ctx, caller: CurrentCaller):
    return volumes.attachment_public(
        volumes.attach(ctx.db, ctx.settings, caller, volume_id, body))


@router.post("/volumes/{volume_id}/detach", response_model=AttachmentPublic)
def detach_volume(volume_id: str, body: VolumeDetach, ctx: Ctx, caller: CurrentCaller):
    return volumes.attachment_public(volumes.detach(ctx.db, caller, volume_id, body))


@router.patch("/volumes/{volume_id}", response_model=VolumePublic)
def modify_volume(volume_id: str, body: VolumeModify, ctx: Ctx, caller: CurrentCaller):
    volumes.modify(ctx.db, ctx.settings, caller, volume_id, body.size_gib)
    return volumes.get_public(ctx.db, caller, volume_id)


@router.put("/volumes/{volume_id}/tags", response_model=VolumePublic)
def set_volume_tags(volume_id: str, body: VolumeTags, ctx: Ctx, caller: CurrentCaller):
    volumes.set_tags(ctx.db, caller, volume_id, body.tags)
    return volumes.get_public(ctx.db, caller, volume_id)
