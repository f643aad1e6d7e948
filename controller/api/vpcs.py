"""/v1/vpcs: create, list, describe, delete (controller/services/vpcs.py, which also creates the
caller's default VPC the first time it is listed or described)."""
from __future__ import annotations

from fastapi import APIRouter

from controller.api.deps import Ctx, CurrentCaller, Page, Paging
from controller.models.vpc import VpcCreate, VpcPublic
from controller.services import vpcs

router = APIRouter(tags=["vpcs"])


@router.post("/vpcs", status_code=201, response_model=VpcPublic)
def create_vpc(body: VpcCreate, ctx: Ctx, caller: CurrentCaller):
    vpc = vpcs.create(ctx.db, caller, body.cidr_block)
    with ctx.db.session() as s:
        return vpcs.to_public(s, vpc)


@router.get("/vpcs", response_model=Page[VpcPublic])
def list_vpcs(ctx: Ctx, caller: CurrentCaller, p: Paging):
    return vpcs.list_page(ctx.db, caller, p)


@router.get("/vpcs/{vpc_id}", response_model=VpcPublic)
def get_vpc(vpc_id: str, ctx: Ctx, caller: CurrentCaller):
    return vpcs.describe(ctx.db, caller, vpc_id)


@router.delete("/vpcs/{vpc_id}", response_model=VpcPublic)
def delete_vpc(vpc_id: str, ctx: Ctx, caller: CurrentCaller):
    return vpcs.delete(ctx.db, caller, vpc_id)
