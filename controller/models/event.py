"""The append-only event log: one row per state change of any resource."""
from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from controller.db import UtcDateTime


class EventBase(SQLModel):
    event_id: str = Field(max_length=32, unique=True)
    time: datetime = Field(sa_type=UtcDateTime, index=True)
    resource_type: str = Field(max_length=32, index=True)
    resource_id: str = Field(max_length=64, index=True)
    account_id: str | None = Field(default=None, max_length=32, index=True)
    from_state: str | None = Field(default=None, max_length=32)
    to_state: str | None = Field(default=None, max_length=32)
    reason: str | None = Field(default=None, max_length=1024)


class EventPublic(EventBase):
    pass


class Event(EventBase, table=True):
    # Monotonic insertion order for stable listing (event_id is random).
    seq: int | None = Field(default=None, primary_key=True)
