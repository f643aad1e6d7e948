"""/v1/events: the caller's account's event log (admins see every account)."""
from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter

from controller import events
from controller.api.deps import Ctx, CurrentCaller, Page, Paging
from controller.models import EventPublic

router = APIRouter(tags=["events"])


@router.get("/events", response_model=Page[EventPublic])
def get_events(ctx: Ctx, caller: CurrentCaller, p: Paging, resource_id: str | None = None,
               resource_type: str | None = None, since: datetime | None = None):
    return events.list_page(ctx.db, caller, p, resource_id=resource_id,
                            resource_type=resource_type, since=since)
