"""Budgets: an optional monthly limit per account. The first time an account's month-to-date
total is seen above it, one event is appended to the event log (resource_type "budget",
resource_id "<account>:<YYYY-MM>", within -> exceeded) and the month's bill shows it. Budgets
are evaluated whenever a bill is computed and by a periodic pass (`run_forever`), both reading
the same persisted usage, so the event's existence never depends on which one saw it first.
"""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlmodel import Session, select

from controller import periodic
from controller.db import Database
from controller.errors import NotFound
from controller.events import record
from controller.ids import utcnow
from controller.models import Event
from controller.models.billing import Budget, BudgetSet
from controller.services import money, usage
from controller.services.prices import Timeline
from controller.services.usage_calc import stream_items
from controller.settings import Settings


def to_public(b: Budget) -> dict:
    return {"account_id": b.account_id, "monthly_limit": b.monthly_limit,
            "updated_at": b.updated_at}


def put(db: Database, caller, req: BudgetSet) -> dict:
    limit = money.parse_money(req.monthly_limit, "monthly_limit", code="InvalidBudget")
    with db.session() as s:
        acct = usage.target_account(s, caller, req.account_id)
        b = s.get(Budget, acct) or Budget(account_id=acct, monthly_limit="0",
                                          updated_at=utcnow())
        b.monthly_limit, b.updated_at = str(limit), utcnow()
        s.add(b)
        return to_public(b)


def get(db: Database, caller, account_id: str | None = None) -> dict:
    with db.session(notify=False) as s:
        acct = usage.target_account(s, caller, account_id)
        b = s.get(Budget, acct)
        if b is None:
            raise NotFound(f"account {acct} has no budget", code="BudgetNotFound")
        return to_public(b)


def delete(db: Database, caller, account_id: str | None = None) -> dict:
    with db.session() as s:
        acct = usage.target_account(s, caller, account_id)
        b = s.get(Budget, acct)
        if b is None:
            raise NotFound(f"account {acct} has no budget", code="BudgetNotFound")
        out = to_public(b)
        s.delete(b)
        return out


def check(s: Session, account_id: str, month: str, total: Decimal,
          now: datetime) -> dict | None:
    """The bill's budget section; records the crossing event once per account and month."""
    b = s.get(Budget, account_id)
    if b is None:
        return None
    key = f"{account_id}:{month}"
    ev = s.exec(select(Event).where(Event.resource_type == "budget",
                                    Event.resource_id == key)).first()
    limit = Decimal(b.monthly_limit)
    if ev is None and total > limit:
        ev = record(s, "budget", key, account_id, "within", "exceeded",
                    f"{month}: {total} > {limit}")
        ev.time = now
    return {"monthly_limit": b.monthly_limit, "exceeded": ev is not None,
            "exceeded_at": ev.time if ev is not None else None}


def evaluate_all(db: Database, now: datetime | None = None) -> int:
    """Check every budget against its account's month to date; the number of crossings."""
    now = now or utcnow()
    month = usage.month_of(now)
    start, end = usage.month_bounds(month)
    crossed = 0
    with db.session(notify=False) as s:
        prices = Timeline.load(s)
        for b in list(s.exec(select(Budget))):
            total = money.total_amount(i.amount for i in stream_items(
                usage.stream(s, b.account_id, start, end, by_resource=True), prices, start, end,
                now))
            info = check(s, b.account_id, month, total, now)
            crossed += bool(info and info["exceeded"])
    return crossed


async def run_forever(db: Database, settings: Settings) -> None:
    await periodic.every(settings.budget_interval_s, lambda: evaluate_all(db), "budget pass")
