"""The event log: `record()` appends one state change inside the caller's transaction, so an
event exists exactly when the change it describes was committed; `list_page()` reads it back
in insertion order.
"""
from __future__ import annotations

from datetime import datetime

from sqlmodel import Session, select

from controller.db import Database
from controller.ids import new_id, utcnow
from controller.models import Event, EventPublic
from controller.services import pagination
from controller.services.pagination import Page, PageRequest

ORDER = pagination.Order(Event.seq)


def record(session: Session, resource_type: str, resource_id: str, account_id: str | None,
           from_state: str | None, to_state: str | None, reason: str | None = None) -> Event:
    ev = Event(event_id=new_id("evt"), time=utcnow(), resource_type=resource_type,
               resource_id=resource_id, account_id=account_id, from_state=from_state,
               to_state=to_state, reason=(reason or None) and reason[:1024])
    session.add(ev)
    return ev


def list_page(db: Database, caller, page: PageRequest, *, resource_id: str | None = None,
              resource_type: str | None = None,
              since: datetime | None = None) -> Page[EventPublic]:
    """The caller's account's events in insertion order (admins see every account's)."""
    q = select(Event)
    if not caller.is_admin:
        q = q.where(Event.account_id == caller.account_id)
    if resource_id:
        q = q.where(Event.resource_id == resource_id)
    if resource_type:
        q = q.where(Event.resource_type == resource_type)
    if since:
        q = q.where(Event.time >= since)
    with db.session() as s:
        return pagination.list_page(
            s, q, ORDER, page,
            lambda rows: [EventPublic.model_validate(e, from_attributes=True) for e in rows])
