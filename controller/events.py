"""The event log: `record()` appends one state change inside the caller's transaction, so an
event exists exactly when the change it describes was committed; `list_events()` reads it back.
"""
from __future__ import annotations

from datetime import datetime

from sqlmodel import Session, select

from controller.ids import new_id, utcnow
from controller.models import Event


def record(session: Session, resource_type: str, resource_id: str, account_id: str | None,
           from_state: str | None, to_state: str | None, reason: str | None = None) -> Event:
    ev = Event(event_id=new_id("evt"), time=utcnow(), resource_type=resource_type,
               resource_id=resource_id, account_id=account_id, from_state=from_state,
               to_state=to_state, reason=(reason or None) and reason[:1024])
    session.add(ev)
    return ev


def list_events(session: Session, *, account_id: str | None, resource_id: str | None = None,
                resource_type: str | None = None, since: datetime | None = None,
                offset: int = 0, limit: int = 100) -> list[Event]:
    """Events in insertion order; account_id None means every account (admins)."""
    q = select(Event)
    if account_id is not None:
        q = q.where(Event.account_id == account_id)
    if resource_id:
        q = q.where(Event.resource_id == resource_id)
    if resource_type:
        q = q.where(Event.resource_type == resource_type)
    if since:
        q = q.where(Event.time >= since)
    return list(session.exec(q.order_by(Event.seq).offset(offset).limit(limit)))
