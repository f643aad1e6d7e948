"""/v1/security-groups: create, list, describe, delete, and authorize/revoke ingress and egress
rules (controller/services/security_groups.py). Listing or describing creates the caller's
default VPC (and so its default group) the first time, like /v1/vpcs."""
from __future__ import annotations

from typing import Annotated, Literal, Optional

from fastapi import APIRouter, Query

from controller.api.deps import Ctx, CurrentCaller, Page, Paging
from controller.models.security_group import (AuthorizeRequest, RevokeRequest, RuleChange,
                                              SecurityGroupCreate, SecurityGroupPublic)
from controller.services import security_groups as sgs
from controller.services import vpcs
from controller.services.pagination import page

router = APIRouter(tags=["security-groups"])
Direction = Literal["ingress", "egress"]


@router.post("/security-groups", status_code=201, response_model=SecurityGroupPublic)
def create_group(body: SecurityGroupCreate, ctx: Ctx, caller: CurrentCaller):
    group = sgs.create(ctx.db, caller, body, sgs.Limits.from_settings(ctx.settings))
    with ctx.db.session() as s:
        return sgs.to_public(s, group)


@router.get("/security-groups", response_model=Page[SecurityGroupPublic])
def list_groups(ctx: Ctx, caller: CurrentCaller, p: Paging,
                vpc_id: Annotated[Optional[str], Query(max_length=32)] = None,
                group_name: Annotated[Optional[str], Query(max_length=255)] = None):
    vpcs.ensure_default(ctx.db, caller.account_id)
    with ctx.db.session() as s:
        rows = sgs.list_groups(s, caller, vpc_id, group_name)[p.offset:p.offset + p.limit + 1]
        items, token = page(rows, p.offset, p.limit)
        return Page(items=[sgs.to_public(s, g) for g in items], next_token=token)


@router.get("/security-groups/{group_id}", response_model=SecurityGroupPublic)
def get_group(group_id: str, ctx: Ctx, caller: CurrentCaller):
    vpcs.ensure_default(ctx.db, caller.account_id)
    with ctx.db.session() as s:
        return sgs.to_public(s, sgs.get(s, caller, group_id))


@router.delete("/security-groups/{group_id}", response_model=SecurityGroupPublic)
def delete_group(group_id: str, ctx: Ctx, caller: CurrentCaller):
    return sgs.delete(ctx.db, caller, group_id)


@router.post("/security-groups/{group_id}/{direction}", response_model=RuleChange)
def authorize(group_id: str, direction: Direction, body: AuthorizeRequest, ctx: Ctx,
              caller: CurrentCaller):
    return sgs.authorize(ctx.db, caller, group_id, direction,
                         [r.model_dump() for r in body.rules],
                         sgs.Limits.from_settings(ctx.settings))


@router.post("/security-groups/{group_id}/{direction}/revoke", response_model=RuleChange)
def revoke(group_id: str, direction: Direction, body: RevokeRequest, ctx: Ctx,
           caller: CurrentCaller):
    rules = None if body.rules is None else [r.model_dump() for r in body.rules]
    return sgs.revoke(ctx.db, caller, group_id, direction, body.rule_ids, rules)
