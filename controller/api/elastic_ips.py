"""/v1/elastic-ips: allocate, list, describe, associate, disassociate, release."""
from __future__ import annotations

from fastapi import APIRouter

from controller.api.deps import Ctx, CurrentCaller, Page, Paging
from controller.api.responses import errors
from controller.models.vpc import AddressAssociate, ElasticIpPublic
from controller.services import elastic_ips

router = APIRouter(tags=["elastic-ips"])


@router.post("/elastic-ips", status_code=201, response_model=ElasticIpPublic,
             responses=errors(400))
def allocate(ctx: Ctx, caller: CurrentCaller):
    return elastic_ips.to_public(elastic_ips.allocate(ctx.db, caller, ctx.settings.public_pool))


@router.get("/elastic-ips", response_model=Page[ElasticIpPublic])
def list_addresses(ctx: Ctx, caller: CurrentCaller, p: Paging):
    return elastic_ips.list_page(ctx.db, caller, p)


@router.get("/elastic-ips/{allocation_id}", response_model=ElasticIpPublic)
def get_address(allocation_id: str, ctx: Ctx, caller: CurrentCaller):
    with ctx.db.session() as s:
        return elastic_ips.to_public(elastic_ips.get(s, caller, allocation_id))


@router.post("/elastic-ips/{allocation_id}/associate", response_model=ElasticIpPublic)
def associate(allocation_id: str, body: AddressAssociate, ctx: Ctx, caller: CurrentCaller):
    return elastic_ips.to_public(elastic_ips.associate(ctx.db, caller, allocation_id, body))


@router.post("/elastic-ips/{allocation_id}/disassociate", response_model=ElasticIpPublic)
def disassociate(allocation_id: str, ctx: Ctx, caller: CurrentCaller):
    return elastic_ips.to_public(elastic_ips.disassociate(ctx.db, caller, allocation_id))


@router.delete("/elastic-ips/{allocation_id}", response_model=ElasticIpPublic)
def release(allocation_id: str, ctx: Ctx, caller: CurrentCaller):
    return elastic_ips.release(ctx.db, caller, allocation_id)
