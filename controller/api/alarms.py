"""/v1/alarms: put (create or replace), list (name prefix, state), get, delete, history and
set-state of metric alarms (CloudWatch's shapes); a thin router over
controller/services/alarms.py (the alarm pass evaluates them)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from controller.api.deps import Ctx, CurrentCaller, Page, Paging
from controller.models.alarms import AlarmHistoryItem, AlarmPublic, AlarmPut, AlarmStateSet
from controller.services import alarms

router = APIRouter(tags=["alarms"])


@router.put("/alarms/{name}", response_model=AlarmPublic)
def put_alarm(name: str, body: AlarmPut, ctx: Ctx, caller: CurrentCaller):
    return alarms.put(ctx.db, ctx.settings, caller, name, body)


@router.get("/alarms", response_model=Page[AlarmPublic])
def list_alarms(ctx: Ctx, caller: CurrentCaller, p: Paging,
                name_prefix: Annotated[str | None, Query(max_length=255)] = None,
                state_value: Annotated[str | None, Query(max_length=32)] = None):
    return alarms.describe(ctx.db, caller, p, name_prefix, state_value)


@router.get("/alarms/{name}", response_model=AlarmPublic)
def get_alarm(name: str, ctx: Ctx, caller: CurrentCaller):
    return alarms.get(ctx.db, caller, name)


@router.delete("/alarms/{name}", status_code=204)
def delete_alarm(name: str, ctx: Ctx, caller: CurrentCaller):
    alarms.delete(ctx.db, caller, name)
    return Response(status_code=204)


@router.get("/alarms/{name}/history", response_model=list[AlarmHistoryItem])
def alarm_history(name: str, ctx: Ctx, caller: CurrentCaller,
                  history_item_type: Annotated[str | None, Query(max_length=32)] = None,
                  max_records: Annotated[int, Query(ge=1, le=1000)] = 100):
    return alarms.history(ctx.db, caller, name, history_item_type, max_records)


@router.post("/alarms/{name}/state", response_model=AlarmPublic)
def set_alarm_state(name: str, body: AlarmStateSet, ctx: Ctx, caller: CurrentCaller):
    return alarms.set_alarm_state(ctx.db, ctx.settings, caller, name, body)
