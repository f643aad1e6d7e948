"""The price list: rates per (usage type, dimension) with effective times.

A rate applies from its `effective_at` until the next entry of the same key; a change takes
effect from its moment on and never rewrites the past, so changes dated before now are refused
(400 PriceChangeInPast). Admins change it. Instance types' hourly prices live here (an
instance type's `hourly_price` seeds its entry when it is created; `seed` copies it into the
list once; the API shows the list's current rate, services/instance_types.py), as do the
storage, address and NAT rates (services/money.py DEFAULT_RATES).
"""
from __future__ import annotations

from bisect import bisect_right
from datetime import datetime, timezone
from decimal import Decimal

from sqlmodel import Session, select

from controller.db import Database
from controller.errors import Conflict, InvalidParameter
from controller.ids import utcnow
from controller.models import InstanceType
from controller.models.billing import Price, PriceChange
from controller.services import money

#: Seeded rates are effective since the epoch: there was no usage before them.
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def seed(db: Database) -> None:
    """Idempotent: price every instance type and usage type that has no price yet."""
    with db.session(notify=False) as s:
        have = set(s.exec(select(Price.usage_type, Price.dimension)).all())
        now = utcnow()
        for t in s.exec(select(InstanceType)):
            if ("instance-hours", t.name) not in have:
                s.add(Price(usage_type="instance-hours", dimension=t.name, effective_at=EPOCH,
                            rate=str(money.parse_money(t.hourly_price)), created_at=now))
        for usage_type, rate in money.DEFAULT_RATES.items():
            if (usage_type, "") not in have:
                s.add(Price(usage_type=usage_type, dimension="", rate=rate, effective_at=EPOCH,
                            created_at=now))


def add_for_new_type(s: Session, t: InstanceType) -> None:
    """A new (or revived) instance type is billed at its hourly_price from now on."""
    now = utcnow()
    s.add(Price(usage_type="instance-hours", dimension=t.name, effective_at=now, created_at=now,
                rate=str(money.parse_money(t.hourly_price))))


def to_public(p: Price) -> dict:
    return {"usage_type": p.usage_type, "dimension": p.dimension, "rate": p.rate,
            "unit": money.USAGE_TYPES[p.usage_type].unit, "effective_at": p.effective_at}


def list_prices(db: Database, usage_type: str | None = None) -> list[dict]:
    """Every entry, past and scheduled, by key then effective time."""
    q = select(Price).order_by(Price.usage_type, Price.dimension, Price.effective_at)
    if usage_type:
        q = q.where(Price.usage_type == usage_type)
    with db.session(notify=False) as s:
        return [to_public(p) for p in s.exec(q)]


def change(db: Database, req: PriceChange, now: datetime | None = None) -> dict:
    """Add a rate from `effective_at` (default now). Nothing changes on any refusal."""
    now = now or utcnow()
    if req.usage_type not in money.USAGE_TYPES:
        raise InvalidParameter(f"usage type {req.usage_type!r}: one of "
                               f"{', '.join(money.USAGE_TYPES)}", code="InvalidUsageType")
    rate = money.parse_money(req.rate)
    at = req.effective_at or now
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    if at < now:
        raise InvalidParameter(f"effective_at {at.isoformat()} is in the past: prices never "
                               "change retroactively", code="PriceChangeInPast")
    with db.session() as s:
        if money.USAGE_TYPES[req.usage_type].by_instance_type:
            if s.get(InstanceType, req.dimension) is None:
                raise InvalidParameter(f"instance-hours needs an instance type as dimension, "
                                       f"not {req.dimension!r}", code="InvalidInstanceType")
        elif req.dimension:
            raise InvalidParameter(f"{req.usage_type} has no dimension", code="InvalidUsageType")
        clash = s.exec(select(Price).where(Price.usage_type == req.usage_type,
                                           Price.dimension == req.dimension,
                                           Price.effective_at == at)).first()
        if clash is not None:
            raise Conflict(f"a price of {req.usage_type} {req.dimension} already starts at "
                           f"{at.isoformat()}", code="PriceAlreadyScheduled")
        p = Price(usage_type=req.usage_type, dimension=req.dimension, rate=str(rate),
                  effective_at=at, created_at=now)
        s.add(p)
        return to_public(p)


class Timeline:
    """(usage_type, dimension) -> the rates in effect over time, for usage computations."""

    def __init__(self, rows) -> None:
        self._keys: dict[tuple[str, str], tuple[list[int], list[Decimal]]] = {}
        for usage_type, dimension, effective_at, rate in sorted(rows, key=lambda r: r[2]):
            times, rates = self._keys.setdefault((usage_type, dimension), ([], []))
            times.append(int(effective_at.timestamp()))
            rates.append(Decimal(rate))

    @classmethod
    def load(cls, s: Session) -> "Timeline":
        return cls(s.exec(select(Price.usage_type, Price.dimension, Price.effective_at,
                                 Price.rate)).all())

    def at(self, usage_type: str, dimension: str, t: int) -> tuple[Decimal, int | None]:
        """The rate at epoch second t (0 before any price) and when the next rate starts."""
        times, rates = self._keys.get((usage_type, dimension), ((), ()))
        i = bisect_right(times, t)
        nxt = times[i] if i < len(times) else None
        return (rates[i - 1] if i else Decimal(0)), nxt
