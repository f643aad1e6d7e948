"""/v1/autoscaling-groups: create, list (filter auto_scaling_group_name, tag:K=V; keyset
pages), describe (with its instances), update, delete (?force=true terminates its instances),
desired capacity, instance scale-in protection, activity history
(controller/services/autoscaling.py; the group controller does the launching)."""
from __future__ import annotations

from fastapi import APIRouter, Request, Response

from controller.api.deps import Ctx, CurrentCaller, Page, Paging
from controller.models.autoscaling import (ActivityPublic, GroupCreate, GroupPublic, GroupUpdate,
                                           SetDesiredCapacity, SetInstanceProtection)
from controller.services import autoscaling

router = APIRouter(tags=["autoscaling-groups"])


@router.post("/autoscaling-groups", status_code=201, response_model=GroupPublic)
def create(body: GroupCreate, ctx: Ctx, caller: CurrentCaller):
    return autoscaling.create(ctx.db, caller, body)


@router.get("/autoscaling-groups", response_model=Page[GroupPublic])
def list_groups(request: Request, ctx: Ctx, caller: CurrentCaller, p: Paging):
    return autoscaling.list_page(ctx.db, caller, p, request.query_params.multi_items())


@router.get("/autoscaling-groups/{name}", response_model=GroupPublic)
def get_group(name: str, ctx: Ctx, caller: CurrentCaller):
    return autoscaling.describe(ctx.db, caller, name)


@router.patch("/autoscaling-groups/{name}", response_model=GroupPublic)
def update(name: str, body: GroupUpdate, ctx: Ctx, caller: CurrentCaller):
    return autoscaling.update(ctx.db, caller, name, body)


@router.delete("/autoscaling-groups/{name}", status_code=204)
def delete(name: str, ctx: Ctx, caller: CurrentCaller, force: bool = False):
    """Without force, refused (409 ResourceInUse) while the group has instances; with force,
    its instances are terminated and the group goes once they are."""
    autoscaling.delete_group(ctx.db, caller, name, force)
    return Response(status_code=204)


@router.post("/autoscaling-groups/{name}/desired-capacity", response_model=GroupPublic)
def set_desired_capacity(name: str, body: SetDesiredCapacity, ctx: Ctx, caller: CurrentCaller):
    return autoscaling.set_desired_capacity(ctx.db, caller, name, body.desired_capacity,
                                            body.honor_cooldown)


@router.post("/autoscaling-groups/{name}/instance-protection", response_model=GroupPublic)
def set_instance_protection(name: str, body: SetInstanceProtection, ctx: Ctx,
                            caller: CurrentCaller):
    return autoscaling.set_protection(ctx.db, caller, name, body.instance_ids,
                                      body.protected_from_scale_in)


@router.get("/autoscaling-groups/{name}/activities", response_model=Page[ActivityPublic])
def activities(name: str, ctx: Ctx, caller: CurrentCaller, p: Paging):
    return autoscaling.activities(ctx.db, caller, name, p)
