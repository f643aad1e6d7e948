"""Monthly bills (UTC calendar months). The running month's bill is open: an estimate to date,
recomputed on every read. Once the month has ended (plus CLOSE_GRACE, so transitions committed
a moment after midnight by a pass that began before it are in), the first read closes it: the
document is computed once and stored (models/billing.py Bill) and answered as stored ever
after, so no later price change or correction alters a closed bill.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from controller.db import Database
from controller.errors import InvalidParameter
from controller.ids import utcnow
from controller.models import Account
from controller.models.billing import Bill
from controller.services import budgets, money, usage
from controller.services.usage import month_bounds
from controller.services.prices import Timeline
from controller.services.usage_calc import LineItem, stream_items

CLOSE_GRACE = timedelta(minutes=10)


def _checked_month(month: str, now: datetime) -> tuple[datetime, datetime]:
    start, end = month_bounds(month)
    if start > now:
        raise InvalidParameter(f"month {month} has not begun", code="MonthInFuture")
    return start, end


def _document(s: Session, account_id: str, month: str, items: Iterable[LineItem],
              now: datetime, closing: bool) -> dict:
    start, end = month_bounds(month)
    lines = usage.group(items, "usage_type")  # one pass: items may be a stream
    # The lines' amounts are exact sums of the rounded items: their sum is the items' sum.
    total = money.total_amount(Decimal(ln["amount"]) for ln in lines)
    return {"account_id": account_id, "month": month, "status": "closed" if closing else "open",
            "start": start.isoformat(), "end": end.isoformat(), "as_of": now.isoformat(),
            "currency": "USD", "lines": lines, "total": str(total),
            "budget": _json_safe(budgets.check(s, account_id, month, total, now))}


def _json_safe(info: dict | None) -> dict | None:
    if info and info.get("exceeded_at") is not None:
        info = dict(info, exceeded_at=info["exceeded_at"].isoformat())
    return info


def _bill(s: Session, account_id: str, month: str, items: Iterable[LineItem],
          now: datetime) -> dict:
    """The stored bill if closed; else compute it (and store it if its month is over)."""
    stored = s.get(Bill, (account_id, month))
    if stored is not None:
        return json.loads(stored.document)
    _, end = month_bounds(month)
    closing = now >= end + CLOSE_GRACE
    doc = _document(s, account_id, month, items, now, closing)
    if closing:
        s.add(Bill(account_id=account_id, month=month, total=doc["total"], closed_at=now,
                   document=json.dumps(doc, sort_keys=True)))
    return doc


def get(db: Database, caller, month: str, account_id: str | None = None,
        now: datetime | None = None) -> dict:
    """GET /v1/bills/{month}: the caller's bill (admins: any account's; others' are 404)."""
    now = now or utcnow()
    start, end = _checked_month(month, now)
    for attempt in (1, 2):
        try:
            with db.session(notify=False) as s:
                acct = usage.target_account(s, caller, account_id)
                if s.get(Bill, (acct, month)) is not None:
                    return _bill(s, acct, month, [], now)
                items = stream_items(usage.stream(s, acct, start, end, by_resource=True),
                                     Timeline.load(s), start, end, now)
                return _bill(s, acct, month, items, now)
        except IntegrityError:  # another request closed it first: answer what it stored
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def list_month(db: Database, caller, month: str, now: datetime | None = None) -> list[dict]:
    """GET /v1/bills?month=: admins get every account's bill of the month, computed in one pass
    over the site's intervals; others get their own."""
    if not caller.is_admin:
        return [get(db, caller, month, now=now)]
    now = now or utcnow()
    start, end = _checked_month(month, now)
    with db.session(notify=False) as s:
        accounts = sorted(s.exec(select(Account.account_id)))
        closed = {b.account_id for b in s.exec(select(Bill).where(Bill.month == month))}
        docs: dict[str, dict] = {}
        if len(closed) < len(accounts):
            prices = Timeline.load(s)
            # One account's line items at a time: memory stays that of the largest account.
            for acct, intervals in usage.by_account(s, start, end):
                items = [] if acct in closed else stream_items(intervals, prices, start, end, now)
                docs[acct] = _bill(s, acct, month, items, now)
        return [docs.get(a) or _bill(s, a, month, [], now) for a in accounts]
