"""Billing tables: usage intervals (the metering record), metered quantities (NAT gateways'
bytes processed) with the counters they are read from, the price list, closed monthly bills and
budgets; and the request bodies of the billing API.

Money is never a float here: rates, amounts and thresholds are decimal strings (parsed with
controller/services/money.py), so SQLite and PostgreSQL keep exactly what was written.
"""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field as PField
from sqlalchemy import BigInteger, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from controller.db import UtcDateTime


class UsageFields(SQLModel):
    """What a usage row is of (the columns usage_interval and usage_quantity share; no table)."""
    account_id: str = Field(max_length=32)
    resource_id: str = Field(max_length=64)
    #: instance, root-volume, volume, snapshot, public-ip, nat-gateway
    kind: str = Field(max_length=16)
    #: a key of services/money.py USAGE_TYPES
    usage_type: str = Field(max_length=32)
    #: the price list's dimension: the instance type for instance-hours, else ""
    dimension: str = Field(default="", max_length=40)


class UsageInterval(UsageFields, table=True):
    """One metered stretch of a resource: opened in the transaction that made it billable (an
    instance reaching running, a volume created, an address allocated...), closed (`ended_at`
    set once, never changed again) in the transaction that ended it. Only these two writes ever
    happen to a row, so usage is a pure function of committed state changes."""
    __tablename__ = "usage_interval"
    __table_args__ = (Index("ix_usage_interval_account", "account_id", "started_at"),
                      Index("ix_usage_interval_open", "resource_id", "usage_type", "ended_at"),
                      Index("ix_usage_interval_started", "started_at"))
    id: int | None = Field(default=None, primary_key=True)
    #: GiB for the *-gib-month usage types, 1 for the hourly ones
    quantity: int = 1
    started_at: datetime = Field(sa_type=UtcDateTime)
    ended_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class UsageQuantity(UsageFields, table=True):
    """An amount used, not a time: the bytes a NAT gateway processed (services/nat_metering.py).
    One row per resource, usage type and bucket; `recorded_at` is the bucket's start: a UTC hour,
    or the later moment a price of the usage type took effect inside that hour, so a bucket
    never spans a day or a price change. The counter reports of that stretch add to `quantity`
    (in the transaction that moves the counter's last value, NatCounter) while it lasts; once
    its hour is over the row never changes again, so a closed month's bill has final rows.
    Its kind is nat-gateway and its usage type per byte (nat-gateway-gib)."""
    __tablename__ = "usage_quantity"
    __table_args__ = (UniqueConstraint("resource_id", "usage_type", "recorded_at",
                                       name="uq_usage_quantity_bucket"),
                      Index("ix_usage_quantity_account", "account_id", "recorded_at"),
                      Index("ix_usage_quantity_recorded", "recorded_at"))
    id: int | None = Field(default=None, primary_key=True)
    #: bytes (64-bit: a NAT gateway moves more than 2 GiB an hour)
    quantity: int = Field(sa_column=Column(BigInteger, nullable=False))
    recorded_at: datetime = Field(sa_type=UtcDateTime)


class NatCounter(SQLModel, table=True):
    """The last value of a NAT gateway's byte counter as reported by one host's agent: the
    base of the next delta. Per host, because a gateway moved to another host starts a new
    counter there while the old host may still report its own once more."""
    __tablename__ = "nat_counter"
    nat_gateway_id: str = Field(primary_key=True, max_length=32)
    host_id: str = Field(primary_key=True, max_length=63)
    bytes: int = Field(sa_column=Column(BigInteger, nullable=False))
    updated_at: datetime = Field(sa_type=UtcDateTime)


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
