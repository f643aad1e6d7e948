"""/v1/autoscaling-groups/{name}/policies and /scheduled-actions: put (create or replace),
list, get, delete scaling policies (target tracking, step, simple) and scheduled actions
(controller/services/scaling_policies.py, scheduled_actions.py; the group controller
evaluates target tracking and schedules, metric alarms run step and simple policies)."""
from __future__ import annotations

from fastapi import APIRouter, Response

from controller.api.deps import Ctx, CurrentCaller
from controller.errors import NotFound
from controller.models.autoscaling_policies import (PolicyPublic, PolicyPut,
                                                    ScheduledActionPublic, ScheduledActionPut)
from controller.services import scaling_policies, scheduled_actions
from controller.services.autoscaling_rules import VALIDATION

router = APIRouter(tags=["autoscaling-groups"])
BASE = "/autoscaling-groups/{name}"


@router.put(BASE + "/policies/{policy}", response_model=PolicyPublic)
def put_policy(name: str, policy: str, body: PolicyPut, ctx: Ctx, caller: CurrentCaller):
    return scaling_policies.put(ctx.db, caller, name, policy, body)


@router.get(BASE + "/policies", response_model=list[PolicyPublic])
def list_policies(name: str, ctx: Ctx, caller: CurrentCaller):
    return scaling_policies.describe(ctx.db, caller, name)


@router.get(BASE + "/policies/{policy}", response_model=PolicyPublic)
def get_policy(name: str, policy: str, ctx: Ctx, caller: CurrentCaller):
    for p in scaling_policies.describe(ctx.db, caller, name):
        if p.policy_name == policy:
            return p
    raise NotFound(f"Policy {policy} not found for group {name}", code=VALIDATION)


@router.delete(BASE + "/policies/{policy}", status_code=204)
def delete_policy(name: str, policy: str, ctx: Ctx, caller: CurrentCaller):
    scaling_policies.delete(ctx.db, caller, name, policy)
    return Response(status_code=204)


@router.put(BASE + "/scheduled-actions/{action}", response_model=ScheduledActionPublic)
def put_action(name: str, action: str, body: ScheduledActionPut, ctx: Ctx,
               caller: CurrentCaller):
    return scheduled_actions.put(ctx.db, caller, name, action, body)


@router.get(BASE + "/scheduled-actions", response_model=list[ScheduledActionPublic])
def list_actions(name: str, ctx: Ctx, caller: CurrentCaller):
    return scheduled_actions.describe(ctx.db, caller, name)


@router.delete(BASE + "/scheduled-actions/{action}", status_code=204)
def delete_action(name: str, action: str, ctx: Ctx, caller: CurrentCaller):
    scheduled_actions.delete(ctx.db, caller, name, action)
    return Response(status_code=204)
