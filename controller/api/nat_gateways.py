"""/v1/nat-gateways: create (public subnet + elastic IP), list (?vpc_id=), describe, delete."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from controller.api.deps import Ctx, CurrentCaller, Page, Paging
from controller.api.responses import errors
from controller.models.vpc import NatGatewayCreate, NatGatewayPublic
from controller.services import gateways

router = APIRouter(tags=["nat-gateways"])


@router.post("/nat-gateways", status_code=201, response_model=NatGatewayPublic,
             responses=errors(404))
def create_nat(body: NatGatewayCreate, ctx: Ctx, caller: CurrentCaller):
    return gateways.nat_public(gateways.nat_create(ctx.db, caller, body.subnet_id,
                                                   body.allocation_id))


@router.get("/nat-gateways", response_model=Page[NatGatewayPublic])
def list_nats(ctx: Ctx, caller: CurrentCaller, p: Paging,
              vpc_id: Annotated[str | None, Query(max_length=32)] = None):
    return gateways.nat_list_page(ctx.db, caller, p, vpc_id)


@router.get("/nat-gateways/{nat_gateway_id}", response_model=NatGatewayPublic)
def get_nat(nat_gateway_id: str, ctx: Ctx, caller: CurrentCaller):
    with ctx.db.session() as s:
        return gateways.nat_public(gateways.nat_get(s, caller, nat_gateway_id))


@router.delete("/nat-gateways/{nat_gateway_id}", response_model=NatGatewayPublic)
def delete_nat(nat_gateway_id: str, ctx: Ctx, caller: CurrentCaller):
    return gateways.nat_public(gateways.nat_delete(ctx.db, caller, nat_gateway_id))
