"""/v1/subnets: create, list (?vpc_id=), describe, modify map_public_ip_on_launch, delete."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from controller.api.deps import Ctx, CurrentCaller, Page, Paging
from controller.api.responses import errors
from controller.models.vpc import SubnetCreate, SubnetModify, SubnetPublic
from controller.services import subnets

router = APIRouter(tags=["subnets"])


@router.post("/subnets", status_code=201, response_model=SubnetPublic, responses=errors(404))
def create_subnet(body: SubnetCreate, ctx: Ctx, caller: CurrentCaller):
    subnet = subnets.create(ctx.db, caller, body)
    with ctx.db.session() as s:
        return subnets.to_public(s, subnet)


@router.get("/subnets", response_model=Page[SubnetPublic])
def list_subnets(ctx: Ctx, caller: CurrentCaller, p: Paging,
                 vpc_id: Annotated[str | None, Query(max_length=32)] = None):
    return subnets.list_page(ctx.db, caller, p, vpc_id)


@router.get("/subnets/{subnet_id}", response_model=SubnetPublic)
def get_subnet(subnet_id: str, ctx: Ctx, caller: CurrentCaller):
    return subnets.describe(ctx.db, caller, subnet_id)


@router.patch("/subnets/{subnet_id}", response_model=SubnetPublic)
def modify_subnet(subnet_id: str, body: SubnetModify, ctx: Ctx, caller: CurrentCaller):
    subnet = subnets.modify(ctx.db, caller, subnet_id, body.map_public_ip_on_launch)
    with ctx.db.session() as s:
        return subnets.to_public(s, subnet)


@router.delete("/subnets/{subnet_id}", response_model=SubnetPublic)
def delete_subnet(subnet_id: str, ctx: Ctx, caller: CurrentCaller):
    return subnets.delete(ctx.db, caller, subnet_id)
