"""Billing tables: usage intervals (the metering record), the price list, closed monthly bills
and budgets; and the request bodies of the billing API.

Money is never a float here: rates, amounts and thresholds are decimal strings (parsed with
controller/services/money.py), so SQLite and PostgreSQL keep exactly what was written.
"""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field as PField
from sqlalchemy import Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from controller.db import UtcDateTime


class UsageInterval(SQLModel, table=True):
    """One metered stretch of a resource: opened in the transaction that made it billable (an
    instance reaching running, a volume created, an address allocated...), closed (`ended_at`
    set once, never changed again) in the transaction that ended it. Only these two writes ever
    happen to a row, so usage is a pure function of committed state changes."""
    __tablename__ = "usage_interval"
    __table_args__ = (Index("ix_usage_interval_account", "account_id", "started_at"),
                      Index("ix_usage_interval_open", "resource_id", "usage_type", "ended_at"),
                      Index("ix_usage_interval_started", "started_at"))
    id: int | None = Field(default=None, primary_key=True)
    account_id: str = Field(max_length=32)
    resource_id: str = Field(max_length=64)
    #: instance, root-volume, volume, snapshot, public-ip, nat-gateway
    kind: str = Field(max_length=16)
    #: a key of services/money.py USAGE_TYPES
    usage_type: str = Field(max_length=32)
    #: the price list's dimension: the instance type for instance-hours, else ""
    dimension: str = Field(default="", max_length=40)
    #: GiB for the *-gib-month usage types, 1 for the hourly ones
    quantity: int = 1
    started_at: datetime = Field(sa_type=UtcDateTime)
    ended_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class Price(SQLModel, table=True):
    """One entry of the price list: `rate` (decimal string, per unit of the usage type) applies
    to (usage_type, dimension) from `effective_at` until the next entry's effective_at."""
    __tablename__ = "price"
    __table_args__ = (UniqueConstraint("usage_type", "dimension", "effective_at",
                                       name="uq_price_effective"),)
    id: int | None = Field(default=None, primary_key=True)
    usage_type: str = Field(max_length=32)
    dimension: str = Field(default="", max_length=40)
    rate: str = Field(max_length=40)
    effective_at: datetime = Field(sa_type=UtcDateTime)
    created_at: datetime = Field(sa_type=UtcDateTime)


class Bill(SQLModel, table=True):
    """A closed monthly bill, written once when first asked for after its month ended; its
    `document` (the JSON answered) is never rewritten, whatever the price list says later."""
    __tablename__ = "bill"
    account_id: str = Field(primary_key=True, max_length=32)
    month: str = Field(primary_key=True, max_length=7)
    total: str = Field(max_length=40)
    closed_at: datetime = Field(sa_type=UtcDateTime)
    document: str


class Budget(SQLModel, table=True):
    """An account's optional monthly budget: crossing `monthly_limit` records one event per
    month (resource_type "budget")."""
    __tablename__ = "budget"
    account_id: str = Field(primary_key=True, max_length=32)
    monthly_limit: str = Field(max_length=40)
    updated_at: datetime = Field(sa_type=UtcDateTime)


class PriceChange(BaseModel):
    """POST /v1/prices: a new rate from `effective_at` (now when omitted; never in the past)."""
    usage_type: str = PField(max_length=32)
    #: the instance type for instance-hours; empty for the other usage types
    dimension: str = PField(default="", max_length=40)
    #: a decimal string (or number) >= 0; floats are read through their shortest repr
    rate: str | int | float
    effective_at: datetime | None = None


class BudgetSet(BaseModel):
    """PUT /v1/budget: the caller's (or, for admins, `account_id`'s) monthly limit."""
    monthly_limit: str | int | float
    account_id: str | None = PField(default=None, max_length=32)
