"""/v1/instance-types."""
from __future__ import annotations

from fastapi import APIRouter

from controller.api.deps import AdminCaller, Ctx, CurrentCaller, Page, Paging
from controller.models import InstanceTypeCreate, InstanceTypePublic
from controller.services import instance_types

router = APIRouter(tags=["instance-types"])


@router.get("/instance-types", response_model=Page[InstanceTypePublic])
def list_types(ctx: Ctx, _: CurrentCaller, p: Paging, include_retired: bool = False):
    return instance_types.list_page(ctx.db, p, include_retired)


@router.post("/instance-types", status_code=201, response_model=InstanceTypePublic)
def create_type(body: InstanceTypeCreate, ctx: Ctx, _: AdminCaller):
    return instance_types.get_public(ctx.db, instance_types.create(ctx.db, body))


@router.delete("/instance-types/{name}", response_model=InstanceTypePublic)
def retire_type(name: str, ctx: Ctx, _: AdminCaller):
    """Answers the type as retired."""
    return instance_types.get_public(ctx.db, instance_types.retire(ctx.db, name))
