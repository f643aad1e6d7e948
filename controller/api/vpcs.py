"""/v1/vpcs: create, list, describe, delete. Listing or describing creates the caller's default
VPC the first time (controller/services/vpcs.py)."""
from __future__ import annotations

from fastapi import APIRouter

from controller.api.deps import Ctx, CurrentCaller, Page, Paging
from controller.models.vpc import VpcCreate, VpcPublic
from controller.services import vpcs
from controller.services.pagination import page

router = APIRouter(tags=["vpcs"])


@router.post("/vpcs", status_code=201, response_model=VpcPublic)
def create_vpc(body: VpcCreate, ctx: Ctx, caller: CurrentCaller):
    vpc = vpcs.create(ctx.db, caller, body.cidr_block)
    with ctx.db.session() as s:
        return vpcs.to_public(s, vpc)


@router.get("/vpcs", response_model=Page[VpcPublic])
def list_vpcs(ctx: Ctx, caller: CurrentCaller, p: Paging):
    vpcs.ensure_default(ctx.db, caller.account_id)
    with ctx.db.session() as s:
        rows = vpcs.list_vpcs(s, caller)[p.offset:p.offset + p.limit + 1]
        items, token = page(rows, p.offset, p.limit)
        return Page(items=[vpcs.to_public(s, v) for v in items], next_token=token)


@router.get("/vpcs/{vpc_id}", response_model=VpcPublic)
def get_vpc(vpc_id: str, ctx: Ctx, caller: CurrentCaller):
    vpcs.ensure_default(ctx.db, caller.account_id)
    with ctx.db.session() as s:
        return vpcs.to_public(s, vpcs.get(s, caller, vpc_id))


@router.delete("/vpcs/{vpc_id}", response_model=VpcPublic)
def delete_vpc(vpc_id: str, ctx: Ctx, caller: CurrentCaller):
    return vpcs.delete(ctx.db, caller, vpc_id)
