"""/v1/instance-types."""
from __future__ import annotations

from fastapi import APIRouter

from controller.api.deps import AdminCaller, Ctx, CurrentCaller, Page
from controller.models import InstanceTypeCreate, InstanceTypePublic
from controller.services import instance_types

router = APIRouter(tags=["instance-types"])


def _pub(t) -> InstanceTypePublic:
    return InstanceTypePublic.model_validate(t, from_attributes=True)


@router.get("/instance-types", response_model=Page[InstanceTypePublic])
def list_types(ctx: Ctx, _: CurrentCaller, include_retired: bool = False):
    with ctx.db.session() as s:
        return Page(items=[_pub(t) for t in instance_types.list_types(s, include_retired)])


@router.post("/instance-types", status_code=201, response_model=InstanceTypePublic)
def create_type(body: InstanceTypeCreate, ctx: Ctx, _: AdminCaller):
    return _pub(instance_types.create(ctx.db, body))


@router.delete("/instance-types/{name}", response_model=InstanceTypePublic)
def retire_type(name: str, ctx: Ctx, _: AdminCaller):
    """Answers the type as retired."""
    return _pub(instance_types.retire(ctx.db, name))
