"""/v1/events: the caller's account's event log (admins see every account)."""
from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter

from controller.api.deps import Ctx, CurrentCaller, Page, Paging
from controller.events import list_events
from controller.models import EventPublic
from controller.services.pagination import page

router = APIRouter(tags=["events"])


@router.get("/events", response_model=Page[EventPublic])
def get_events(ctx: Ctx, caller: CurrentCaller, p: Paging, resource_id: str | None = None,
               resource_type: str | None = None, since: datetime | None = None):
    with ctx.db.session() as s:
        rows = list_events(s, account_id=None if caller.is_admin else caller.account_id,
                           resource_id=resource_id, resource_type=resource_type, since=since,
                           offset=p.offset, limit=p.limit + 1)
    items, token = page(rows, p.offset, p.limit)
    return Page(items=[EventPublic.model_validate(e, from_attributes=True) for e in items],
                next_token=token)
