"""/v1/security-groups: create, list, describe, delete, and authorize/revoke ingress and egress
rules (controller/services/security_groups.py, which also creates the caller's default VPC, and
so its default group, the first time they are listed or described)."""
from __future__ import annotations

from typing import Annotated, Literal, Optional

from fastapi import APIRouter, Query

from controller.api.deps import Ctx, CurrentCaller, Page, Paging
from controller.api.responses import errors
from controller.models.security_group import (AuthorizeRequest, RevokeRequest, RuleChange,
                                              SecurityGroupCreate, SecurityGroupPublic)
from controller.services import security_groups as sgs

router = APIRouter(tags=["security-groups"])
Direction = Literal["ingress", "egress"]


@router.post("/security-groups", status_code=201, response_model=SecurityGroupPublic,
             responses=errors(404))
def create_group(body: SecurityGroupCreate, ctx: Ctx, caller: CurrentCaller):
    group = sgs.create(ctx.db, ctx.settings, caller, body)
    with ctx.db.session() as s:
        return sgs.to_public(s, group)


@router.get("/security-groups", response_model=Page[SecurityGroupPublic])
def list_groups(ctx: Ctx, caller: CurrentCaller, p: Paging,
                vpc_id: Annotated[Optional[str], Query(max_length=32)] = None,
                group_name: Annotated[Optional[str], Query(max_length=255)] = None):
    return sgs.list_page(ctx.db, caller, p, vpc_id, group_name)


@router.get("/security-groups/{group_id}", response_model=SecurityGroupPublic)
def get_group(group_id: str, ctx: Ctx, caller: CurrentCaller):
    return sgs.describe(ctx.db, caller, group_id)


@router.delete("/security-groups/{group_id}", response_model=SecurityGroupPublic)
def delete_group(group_id: str, ctx: Ctx, caller: CurrentCaller):
    return sgs.delete(ctx.db, caller, group_id)


@router.post("/security-groups/{group_id}/{direction}", response_model=RuleChange)
def authorize(group_id: str, direction: Direction, body: AuthorizeRequest, ctx: Ctx,
              caller: CurrentCaller):
    return sgs.authorize(ctx.db, ctx.settings, caller, group_id, direction,
                         [r.model_dump() for r in body.rules])


@router.post("/security-groups/{group_id}/{direction}/revoke", response_model=RuleChange)
def revoke(group_id: str, direction: Direction, body: RevokeRequest, ctx: Ctx,
           caller: CurrentCaller):
    rules = None if body.rules is None else [r.model_dump() for r in body.rules]
    return sgs.revoke(ctx.db, caller, group_id, direction, body.rule_ids, rules)
