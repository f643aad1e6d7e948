"""Monthly bills (UTC calendar months). The running month's bill is open: an estimate to date,
recomputed on every read (its settled days kept between reads, services/open_bills.py, with
the same answer). Once the month has ended (plus CLOSE_GRACE, so transitions committed a moment
after midnight by a pass that began before it are in), the first read closes it: the document
is computed once and stored (models/billing.py Bill) and answered as stored ever after, so no
later price change or correction alters a closed bill.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from controller.db import Database
from controller.errors import InvalidParameter
from controller.ids import utcnow
from controller.models import Account
from controller.models.billing import Bill
from controller.services import budgets, money, open_bills, usage
from controller.services.usage import month_bounds
from controller.services.prices import Timeline
from controller.services.usage_calc import stream_items

CLOSE_GRACE = timedelta(minutes=10)


def _checked_month(month: str, now: datetime) -> tuple[datetime, datetime]:
    start, end = month_bounds(month)
    if start > now:
        raise InvalidParameter(f"month {month} has not begun", code="MonthInFuture")
    return start, end


_TYPE_ORDER = {t: i for i, t in enumerate(money.USAGE_TYPES)}


def _document(s: Session, account_id: str, month: str, rows: dict, now: datetime,
              closing: bool) -> dict:
    """`rows`: usage.accumulate(items, "usage_type"). Lines in usage-type order (as listed in
    money.USAGE_TYPES), then by dimension: never the order the database returned rows in."""
    start, end = month_bounds(month)
    lines = usage.public_rows(sorted(rows.values(), key=lambda r: (_TYPE_ORDER[r["usage_type"]],
                                                                   r["dimension"])))
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


def _bill(s: Session, account_id: str, month: str, rows: Callable[[bool], dict],
          now: datetime) -> dict:
    """The stored bill if closed; else compute it (`rows(closing)`), and store it if its month
    is over."""
    stored = s.get(Bill, (account_id, month))
    if stored is not None:
        return json.loads(stored.document)
    _, end = month_bounds(month)
    closing = now >= end + CLOSE_GRACE
    doc = _document(s, account_id, month, rows(closing), now, closing)
    if closing:
        s.add(Bill(account_id=account_id, month=month, total=doc["total"], closed_at=now,
                   document=json.dumps(doc, sort_keys=True)))
    return doc


def get(db: Database, caller, month: str, account_id: str | None = None,
        now: datetime | None = None, cached: bool = True) -> dict:
    """GET /v1/bills/{month}: the caller's bill (admins: any account's; others' are 404).
    An open bill keeps its settled days between reads (open_bills.py); `cached=False`
    computes it from every interval (the reference the cache must equal)."""
    now = now or utcnow()
    start, end = _checked_month(month, now)

    def rows(s: Session, acct: str, closing: bool) -> dict:
        if cached and not closing:
            return open_bills.rows(db, s, acct, month, start, end, now, CLOSE_GRACE)
        return open_bills.fresh(s, acct, start, end, now, Timeline.load(s))

    for attempt in (1, 2):
        try:
            with db.session(notify=False) as s:
                acct = usage.target_account(s, caller, account_id)
                return _bill(s, acct, month, lambda closing: rows(s, acct, closing), now)
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
                docs[acct] = _bill(s, acct, month,
                                   lambda _closing: usage.accumulate(items, "usage_type"), now)
        return [docs.get(a) or _bill(s, a, month, lambda _closing: {}, now) for a in accounts]
