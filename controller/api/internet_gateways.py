"""/v1/internet-gateways: create, list, describe, attach, detach, delete."""
from __future__ import annotations

from fastapi import APIRouter

from controller.api.deps import Ctx, CurrentCaller, Page, Paging
from controller.models.vpc import IgwAttach, InternetGatewayPublic
from controller.services import gateways

router = APIRouter(tags=["internet-gateways"])


@router.post("/internet-gateways", status_code=201, response_model=InternetGatewayPublic)
def create_igw(ctx: Ctx, caller: CurrentCaller):
    return gateways.igw_public(gateways.igw_create(ctx.db, caller))


@router.get("/internet-gateways", response_model=Page[InternetGatewayPublic])
def list_igws(ctx: Ctx, caller: CurrentCaller, p: Paging):
    return gateways.igw_list_page(ctx.db, caller, p)


@router.get("/internet-gateways/{igw_id}", response_model=InternetGatewayPublic)
def get_igw(igw_id: str, ctx: Ctx, caller: CurrentCaller):
    with ctx.db.session() as s:
        return gateways.igw_public(gateways.igw_get(s, caller, igw_id))


@router.post("/internet-gateways/{igw_id}/attach", response_model=InternetGatewayPublic)
def attach_igw(igw_id: str, body: IgwAttach, ctx: Ctx, caller: CurrentCaller):
    return gateways.igw_public(gateways.igw_attach(ctx.db, caller, igw_id, body.vpc_id))


@router.post("/internet-gateways/{igw_id}/detach", response_model=InternetGatewayPublic)
def detach_igw(igw_id: str, body: IgwAttach, ctx: Ctx, caller: CurrentCaller):
    return gateways.igw_public(gateways.igw_detach(ctx.db, caller, igw_id, body.vpc_id))


@router.delete("/internet-gateways/{igw_id}", response_model=InternetGatewayPublic)
def delete_igw(igw_id: str, ctx: Ctx, caller: CurrentCaller):
    return gateways.igw_delete(ctx.db, caller, igw_id)
