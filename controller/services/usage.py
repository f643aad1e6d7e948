"""Usage of an account over any period: load its intervals (and the amounts recorded at an
instant, usage_quantity: NAT gateways' bytes, read in the same query), price them
(services/usage_calc.py), group the line items (by resource, usage type or day; or none: the
base items; `accumulate` and `merge_rows` let a bill add groups computed apart) and render them
as JSON documents or CSV. Also owns reading periods and choosing whose usage a caller sees.
"""
from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from itertools import groupby
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from sqlalchemy import Integer, literal, or_, union_all
from sqlmodel import Session, select

from controller.errors import InvalidParameter, NotFound
from controller.ids import utcnow
from controller.models import Account
from controller.models.billing import UsageInterval, UsageQuantity
from controller.services import money
from controller.services.prices import Timeline
from controller.services.usage_calc import (MINIMUM_RUN_S, Interval, LineItem, line_items,
                                           pick_rate)

GROUPINGS = ("none", "resource", "usage_type", "day")
CSV_FIELDS = ("account_id", "resource_id", "kind", "usage_type", "dimension", "day", "quantity",
              "unit", "rate", "amount", "seconds")


_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


def month_of(t: datetime) -> str:
    return f"{t.year:04d}-{t.month:02d}"


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """A bill's month (YYYY-MM, a UTC calendar month) as [start, end)."""
    m = _MONTH.match(month or "")
    if not m or not 1 <= int(m.group(2)) <= 12 or not 1970 <= int(m.group(1)) <= 9998:
        raise InvalidParameter(f"month {month!r}: use YYYY-MM", code="InvalidMonth")
    y, mo = int(m.group(1)), int(m.group(2))
    return (datetime(y, mo, 1, tzinfo=timezone.utc),
            datetime(y + mo // 12, mo % 12 + 1, 1, tzinfo=timezone.utc))


def parse_time(text: str | None, what: str) -> datetime:
    if not text:
        raise InvalidParameter(f"{what} is required (ISO 8601)", code="InvalidPeriod")
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidParameter(f"{what} {text!r} is not an ISO 8601 time",
                               code="InvalidPeriod") from None
    t = t if t.tzinfo else t.replace(tzinfo=timezone.utc)
    if not 1970 <= t.year <= 9998:
        raise InvalidParameter(f"{what} {text!r} is outside 1970-9998", code="InvalidPeriod")
    return t.astimezone(timezone.utc)


def parse_period(start: str | None, end: str | None) -> tuple[datetime, datetime]:
    a, b = parse_time(start, "start"), parse_time(end, "end")
    if b <= a:
        raise InvalidParameter(f"end {b.isoformat()} is not after start {a.isoformat()}",
                               code="InvalidPeriod")
    return a, b


def target_account(s: Session, caller, account_id: str | None) -> str:
    """Whose usage: the caller's own; admins may name any account. Another account's is 404."""
    if account_id is None or account_id == caller.account_id:
        return caller.account_id
    if not caller.is_admin or s.get(Account, account_id) is None:
        raise NotFound(f"account {account_id!r} not found", code="InvalidAccountID.NotFound")
    return account_id


def _query(account_id: str | None, start: datetime, end: datetime, by_resource: bool):
    # A closed instance run is billed up to 60 s past its end (usage_calc.py).
    reach = start - timedelta(seconds=MINIMUM_RUN_S)
    q = select(UsageInterval.account_id, UsageInterval.resource_id, UsageInterval.kind,
               UsageInterval.usage_type, UsageInterval.dimension, UsageInterval.quantity,
               UsageInterval.started_at, UsageInterval.ended_at, UsageInterval.id).where(
        UsageInterval.started_at < end,
        or_(UsageInterval.ended_at == None, UsageInterval.ended_at > reach))  # noqa: E711
    # Amounts as intervals of no length (start == end == the instant; usage_calc.py). A second
    # of slack before `start`: usage_calc decides by whole seconds.
    u = UsageQuantity
    q2 = select(u.account_id, u.resource_id, u.kind, u.usage_type, u.dimension, u.quantity,
                u.recorded_at, u.recorded_at, literal(None, Integer)).where(
        u.recorded_at >= start - timedelta(seconds=1), u.recorded_at < end)
    if account_id is not None:
        q = q.where(UsageInterval.account_id == account_id)
        q2 = q2.where(u.account_id == account_id)
    # One query, so the database orders both kinds of rows by its own collation: by_account and
    # stream_items group consecutive rows.
    both = union_all(q, q2).subquery()
    out = select(*both.c)
    if by_resource:
        out = out.order_by(both.c.account_id, both.c.resource_id)
    return out


def stream(s: Session, account_id: str | None, start: datetime, end: datetime,
           by_resource: bool = False):
    """Intervals of one account (None: every account) that can reach into [start, end), and
    its recorded amounts inside it, streamed from the database (ordered by account and resource
    when `by_resource`)."""
    q = _query(account_id, start, end, by_resource).execution_options(yield_per=5000)
    return (Interval(*row) for row in s.exec(q))


def by_account(s: Session, start: datetime, end: datetime):
    """(account_id, an iterator of its intervals by resource) for every account with usage in
    [start, end), streamed in account order: a site's bills never hold more than a resource's
    intervals at a time."""
    for account_id, rows in groupby(stream(s, None, start, end, by_resource=True),
                                    key=lambda iv: iv.account_id):
        yield account_id, rows


def compute(s: Session, account_id: str | None, start: datetime, end: datetime,
            now: datetime | None = None) -> list[LineItem]:
    prices = Timeline.load(s)
    return line_items(stream(s, account_id, start, end), prices, start, end, now or utcnow())


def _row(item: LineItem) -> dict:
    return {"account_id": item.account_id, "resource_id": item.resource_id, "kind": item.kind,
            "usage_type": item.usage_type, "dimension": item.dimension,
            "day": item.day.isoformat(), "unit": money.USAGE_TYPES[item.usage_type].unit,
            "rate": item.rate, "seconds": item.seconds, "amount": item.amount,
            "gib": None if money.USAGE_TYPES[item.usage_type].per_byte else item.quantity,
            "gib_seconds": _gib_seconds(item)}


def _gib_seconds(item: LineItem) -> int:
    """What the unit counts: seconds, GiB x seconds, or bytes (summed exactly, divided once)."""
    return money.measure(item.usage_type, item.quantity, item.seconds)


_UNIT_SECONDS = {t.unit: t.unit_seconds for t in money.USAGE_TYPES.values()}
_KEYS = {"none": None,
         "resource": ("account_id", "resource_id", "kind", "usage_type", "dimension"),
         "usage_type": ("usage_type", "dimension"), "day": ("day",)}


def check_grouping(by: str) -> None:
    if by not in GROUPINGS:
        raise InvalidParameter(f"group_by {by!r}: one of {', '.join(GROUPINGS)}",
                               code="InvalidGrouping")


def group(items: Iterable[LineItem], by: str) -> list[dict]:
    """Rows of `items` summed per `by` (amounts are the rounded items' sums, never re-rounded);
    a field that differs inside a group is null."""
    check_grouping(by)
    if _KEYS[by] is None:
        return [_public(_row(item)) for item in items]
    return [_public(r) for r in accumulate(items, by).values()]


_SHARED = ("account_id", "resource_id", "kind", "usage_type", "dimension", "unit")


def accumulate(items: Iterable[LineItem], by: str) -> dict[tuple, dict]:
    """The groups of `group` before rendering (key -> internal row)."""
    keys = _KEYS[by]
    rows: dict[tuple, dict] = {}
    for item in items:
        k = tuple(getattr(item, f) for f in keys)
        g = rows.get(k)
        if g is None:
            rows[k] = _row(item)
            continue
        g["seconds"] += item.seconds
        g["gib_seconds"] += _gib_seconds(item)
        g["amount"] += item.amount
        for f in ("account_id", "resource_id", "kind", "usage_type", "dimension"):
            if g[f] is not None and g[f] != getattr(item, f):
                g[f] = None
        if g["rate"] is not None and g["rate"] is not item.rate:
            g["rate"] = pick_rate(g["rate"], item.rate)
        if g["day"] is not None and g["day"] != item.day.isoformat():
            g["day"] = None
        if g["gib"] is not None and g["gib"] != item.quantity:
            g["gib"] = None
        if g["unit"] is not None and g["unit"] != money.USAGE_TYPES[item.usage_type].unit:
            g["unit"] = None
    return rows


def merge_rows(a: dict[tuple, dict], b: dict[tuple, dict]) -> dict[tuple, dict]:
    """Two `accumulate` results of disjoint item sets grouped by usage type, as one: what
    accumulating both sets at once gives (sums add; a field stays where both agree), in the
    order of `a` then `b`'s new keys. Neither argument is changed."""
    out = {k: dict(r) for k, r in a.items()}
    for k, r in b.items():
        g = out.get(k)
        if g is None:
            out[k] = dict(r)
            continue
        for f in ("seconds", "gib_seconds", "amount"):
            g[f] += r[f]
        for f in _SHARED + ("day", "gib"):
            if g[f] != r[f]:
                g[f] = None
        g["rate"] = None if g["rate"] is None or r["rate"] is None else pick_rate(g["rate"],
                                                                                  r["rate"])
    return out


def public_rows(rows: Iterable[dict]) -> list[dict]:
    return [_public(r) for r in rows]


def _public(r: dict) -> dict:
    """Decimals as strings; `quantity` in the unit (hours, GiB-months) to 6 places (null when
    the group mixes units)."""
    out = {f: r[f] for f in ("account_id", "resource_id", "kind", "usage_type", "dimension",
                             "day", "unit", "seconds", "gib")}
    out["quantity"] = None if r["unit"] is None else money.show_quantity(
        Decimal(r["gib_seconds"]) / _UNIT_SECONDS[r["unit"]])
    out["rate"] = None if r["rate"] is None else str(r["rate"])
    out["amount"] = str(r["amount"])
    return out


def document(account_id: str, start: datetime, end: datetime, items: list[LineItem],
             by: str) -> dict:
    return {"account_id": account_id, "start": start.isoformat(), "end": end.isoformat(),
            "group_by": by, "currency": "USD", "items": group(items, by),
            "total": str(money.total_amount(i.amount for i in items))}


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue()


def report(db, caller, start: str | None, end: str | None, group_by: str = "none",
           account_id: str | None = None, now: datetime | None = None) -> dict:
    """GET /v1/usage: the document of a period (validated before anything is read)."""
    a, b = parse_period(start, end)
    check_grouping(group_by)
    with db.session(notify=False) as s:
        acct = target_account(s, caller, account_id)
        items = compute(s, acct, a, b, now)
    return document(acct, a, b, items, group_by)

