"""/v1/subnets: create, list (?vpc_id=), describe, modify map_public_ip_on_launch, delete."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from controller.api.deps import Ctx, CurrentCaller, Page, Paging
from controller.models.vpc import SubnetCreate, SubnetModify, SubnetPublic
from controller.services import subnets, vpcs
from controller.services.pagination import page

router = APIRouter(tags=["subnets"])


@router.post("/subnets", status_code=201, response_model=SubnetPublic)
def create_subnet(body: SubnetCreate, ctx: Ctx, caller: CurrentCaller):
    subnet = subnets.create(ctx.db, caller, body)
    with ctx.db.session() as s:
        return subnets.to_public(s, subnet)


@router.get("/subnets", response_model=Page[SubnetPublic])
def list_subnets(ctx: Ctx, caller: CurrentCaller, p: Paging,
                 vpc_id: Annotated[str | None, Query(max_length=32)] = None):
    vpcs.ensure_default(ctx.db, caller.account_id)
    with ctx.db.session() as s:
        rows = subnets.list_subnets(s, caller, vpc_id)[p.offset:p.offset + p.limit + 1]
        items, token = page(rows, p.offset, p.limit)
        return Page(items=[subnets.to_public(s, x) for x in items], next_token=token)


@router.get("/subnets/{subnet_id}", response_model=SubnetPublic)
def get_subnet(subnet_id: str, ctx: Ctx, caller: CurrentCaller):
    vpcs.ensure_default(ctx.db, caller.account_id)
    with ctx.db.session() as s:
        return subnets.to_public(s, subnets.get(s, caller, subnet_id))


@router.patch("/subnets/{subnet_id}", response_model=SubnetPublic)
def modify_subnet(subnet_id: str, body: SubnetModify, ctx: Ctx, caller: CurrentCaller):
    subnet = subnets.modify(ctx.db, caller, subnet_id, body.map_public_ip_on_launch)
    with ctx.db.session() as s:
        return subnets.to_public(s, subnet)


@router.delete("/subnets/{subnet_id}", response_model=SubnetPublic)
def delete_subnet(subnet_id: str, ctx: Ctx, caller: CurrentCaller):
    return subnets.delete(ctx.db, caller, subnet_id)
