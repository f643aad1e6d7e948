"""/v1/route-tables (create, list ?vpc_id=, describe, delete, routes, subnet associations) and
/v1/route-table-associations/{id} (disassociate)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from controller.api.deps import Ctx, CurrentCaller, Page, Paging
from controller.api.responses import errors
from controller.models.vpc import (RouteCreate, RouteTableAssociate, RouteTableAssociated,
                                   RouteTableCreate, RouteTableDisassociated, RouteTablePublic)
from controller.services import route_tables

router = APIRouter(tags=["route-tables"])


@router.post("/route-tables", status_code=201, response_model=RouteTablePublic,
             responses=errors(404))
def create_route_table(body: RouteTableCreate, ctx: Ctx, caller: CurrentCaller):
    rtb = route_tables.create(ctx.db, caller, body.vpc_id)
    return route_tables.describe(ctx.db, caller, rtb.route_table_id)


@router.get("/route-tables", response_model=Page[RouteTablePublic])
def list_route_tables(ctx: Ctx, caller: CurrentCaller, p: Paging,
                      vpc_id: Annotated[str | None, Query(max_length=32)] = None):
    return route_tables.list_page(ctx.db, caller, p, vpc_id)


@router.get("/route-tables/{route_table_id}", response_model=RouteTablePublic)
def get_route_table(route_table_id: str, ctx: Ctx, caller: CurrentCaller):
    return route_tables.describe(ctx.db, caller, route_table_id)


@router.delete("/route-tables/{route_table_id}", response_model=RouteTablePublic)
def delete_route_table(route_table_id: str, ctx: Ctx, caller: CurrentCaller):
    return route_tables.delete(ctx.db, caller, route_table_id)


@router.post("/route-tables/{route_table_id}/routes", status_code=201,
             response_model=RouteTablePublic)
def create_route(route_table_id: str, body: RouteCreate, ctx: Ctx, caller: CurrentCaller):
    route_tables.add_route(ctx.db, caller, route_table_id, body)
    return route_tables.describe(ctx.db, caller, route_table_id)


@router.delete("/route-tables/{route_table_id}/routes", response_model=RouteTablePublic)
def delete_route(route_table_id: str, ctx: Ctx, caller: CurrentCaller,
                 destination_cidr_block: Annotated[str, Query(min_length=9, max_length=18)]):
    route_tables.delete_route(ctx.db, caller, route_table_id, destination_cidr_block)
    return route_tables.describe(ctx.db, caller, route_table_id)


@router.post("/route-tables/{route_table_id}/associations", status_code=201,
             response_model=RouteTableAssociated)
def associate(route_table_id: str, body: RouteTableAssociate, ctx: Ctx, caller: CurrentCaller):
    a = route_tables.associate(ctx.db, caller, route_table_id, body.subnet_id)
    return {"association_id": a.association_id, "route_table_id": a.route_table_id,
            "subnet_id": a.subnet_id}


@router.delete("/route-table-associations/{association_id}",
               response_model=RouteTableDisassociated)
def disassociate(association_id: str, ctx: Ctx, caller: CurrentCaller):
    a = route_tables.disassociate(ctx.db, caller, association_id)
    return {"association_id": a.association_id, "route_table_id": a.route_table_id,
            "subnet_id": a.subnet_id, "disassociated": True}
