"""The running month's open bill without re-reading the whole month on every read (issue 13).

A bill's lines are sums of base line items, and a base item belongs to one UTC day
(services/usage_calc.py): the items of the days before a midnight D are those of the period
[month start, D), the rest those of [D, month end). Once D is at least CLOSE_GRACE in the past,
the days before it are *settled*: this process keeps their grouped rows (usage.accumulate) per
(database, account, month) and each read computes only [D, month end) live, then adds the two
(usage.merge_rows). The answer is the one `fresh` computes, to the 1/100 cent: the same items,
the same rounding (each item once), the same sums.

A settled day can still change in ways the rules allow (a volume a host never had is ended at
its old `updated_at`; a start-up backfill or a late report writes old rows), so every read
first checks, in its own transaction (every transaction is serialized, controller/db.py), that
nothing the kept rows were computed from has changed, and recomputes them if anything has:
- no usage_interval row of the account starting before D has been added: rows get increasing
  ids in commit order (serialized transactions, no deletes), so one look past the highest id
  seen is enough;
- none of the intervals that were open then has been closed before D (`ended_at` is written
  once; a closed row never changes again). Those open rows, and every row started before D that
  reaches D, are kept (`carry`) and re-read by id: they are also the live part's rows from
  before D, so the live part only scans the rows started since D (an index range);
- the account's recorded amounts (usage_quantity) before D have the same count, sum and ids;
- the price list is the same (prices never change the past; any change recomputes anyway).
When midnight passes (a later D), the kept rows are checked as above at their own D, then the
new settled days are computed from the carried rows and the rows started since, and added: the
first read of a day pays for the day just ended, not the month. Anything else found changed
recomputes from the month's start.
"""
from __future__ import annotations

import dataclasses
import threading
import weakref
from collections import OrderedDict
from datetime import datetime, timedelta, timezone

from sqlalchemy import func
from sqlmodel import Session, select

from controller.db import Database
from controller.models.billing import Price, UsageInterval, UsageQuantity
from controller.services import usage
from controller.services.prices import Timeline
from controller.services.usage_calc import MINIMUM_RUN_S, Interval, stream_items, unordered_items

#: open bills kept per database (least recently used dropped first)
MAX_ENTRIES = 256
_ID_CHUNK = 500  # ids per IN (...) list: far below every database's parameter limit


@dataclasses.dataclass(frozen=True)
class _Entry:
    settled: datetime  # D: the kept rows are those of the days before it
    prices: tuple
    quantities: tuple
    max_id: int  # the highest usage_interval id when last checked
    carry: tuple[Interval, ...]  # rows started before D that reach D - 60 s, or are open
    rows: dict  # usage.accumulate(items before D, "usage_type"); never changed


_caches: "weakref.WeakKeyDictionary[Database, OrderedDict]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def clear() -> None:
    """Forget every kept bill (tests)."""
    with _lock:
        _caches.clear()


def settled_until(start: datetime, end: datetime, now: datetime, grace: timedelta) -> datetime:
    """D: the last UTC midnight at least `grace` before now, within [start, end]."""
    t = now - grace
    d = datetime(t.year, t.month, t.day, tzinfo=timezone.utc)
    return min(max(d, start), end)


def price_rows(s: Session) -> tuple:
    return tuple(sorted(tuple(r) for r in s.exec(
        select(Price.usage_type, Price.dimension, Price.effective_at, Price.rate))))


def fresh(s: Session, account_id: str, start: datetime, end: datetime, now: datetime,
          prices: Timeline) -> dict:
    """The bill's rows computed from every interval of the month (the reference)."""
    items = stream_items(usage.stream(s, account_id, start, end, by_resource=True), prices,
                         start, end, now)
    return usage.accumulate(items, "usage_type")


def rows(db: Database, s: Session, account_id: str, month: str, start: datetime,
         end: datetime, now: datetime, grace: timedelta) -> dict:
    """The open bill's rows: what `fresh` gives, from the kept settled days plus today's part."""
    prices_fp = price_rows(s)
    prices = Timeline(prices_fp)
    d = settled_until(start, end, now, grace)
    if d <= start:  # nothing settled yet this month
        return fresh(s, account_id, start, end, now, prices)
    key = (account_id, month)
    entry = _get(db, key)
    carry = None
    if entry is not None and entry.settled <= d and entry.prices == prices_fp:
        carry, entry = _recheck(s, entry, account_id, start)
        if carry is not None and entry.settled < d:  # midnight passed: settle the new days
            carry, entry = _extend(s, entry, carry, account_id, start, d, now, prices)
    if carry is None:
        entry = _build(s, account_id, start, d, now, prices, prices_fp)
        carry = entry.carry
    _put(db, key, entry)
    live = unordered_items(_live(s, account_id, carry, d, end), prices, d, end, now)
    return usage.merge_rows(entry.rows, usage.accumulate(live, "usage_type"))


def _get(db: Database, key) -> _Entry | None:
    with _lock:
        per_db = _caches.get(db)
        return None if per_db is None else per_db.get(key)


def _put(db: Database, key, entry: _Entry) -> None:
    with _lock:
        per_db = _caches.setdefault(db, OrderedDict())
        per_db[key] = entry
        per_db.move_to_end(key)
        while len(per_db) > MAX_ENTRIES:
            per_db.popitem(last=False)


def _max_id(s: Session) -> int:
    return s.exec(select(func.max(UsageInterval.id))).one() or 0


def _quantities(s: Session, account_id: str, start: datetime, d: datetime) -> tuple:
    u = UsageQuantity
    return tuple(s.exec(select(func.count(), func.sum(u.quantity), func.max(u.id)).where(
        u.account_id == account_id, u.recorded_at >= start - timedelta(seconds=1),
        u.recorded_at < d)).one())


def _build(s: Session, account_id: str, start: datetime, d: datetime, now: datetime,
           prices: Timeline, prices_fp: tuple) -> _Entry:
    max_id = _max_id(s)  # before reading the rows: nothing commits in between anyway
    quantities = _quantities(s, account_id, start, d)
    reach = d - timedelta(seconds=MINIMUM_RUN_S)
    carry: list[Interval] = []

    def keep(ivs):
        for iv in ivs:
            if iv.id is not None and (iv.end is None or iv.end >= reach):
                carry.append(iv)
            yield iv

    rows_ = usage.accumulate(stream_items(keep(usage.stream(s, account_id, start, d,
                                                            by_resource=True)),
                                          prices, start, d, now), "usage_type")
    return _Entry(d, prices_fp, quantities, max_id, tuple(carry), rows_)


def _recheck(s: Session, e: _Entry, account_id: str, start: datetime):
    """(the carried rows as they are now, the entry with its max_id moved on), or (None, e)
    when anything the kept rows depend on has changed."""
    iv = UsageInterval
    if _quantities(s, account_id, start, e.settled) != e.quantities:
        return None, e
    # Only the rows added since the last read, site-wide (a primary key range; filtered here,
    # so no planner prefers scanning the account's index instead).
    max_id = e.max_id
    for row_id, acct, started in s.exec(select(iv.id, iv.account_id, iv.started_at).where(
            iv.id > e.max_id)):
        if acct == account_id and started < e.settled:
            return None, e
        max_id = max(max_id, row_id)
    open_ids = [c.id for c in e.carry if c.end is None]
    ends: dict[int, datetime | None] = {}
    for i in range(0, len(open_ids), _ID_CHUNK):
        ends.update(s.exec(select(iv.id, iv.ended_at).where(
            iv.id.in_(open_ids[i:i + _ID_CHUNK]))).all())
    if len(ends) != len(open_ids):
        return None, e
    carry = []
    for c in e.carry:
        ended = ends.get(c.id) if c.end is None else None
        if ended is not None:
            if ended < e.settled:  # closed inside a kept day
                return None, e
            c = dataclasses.replace(c, end=ended)
        carry.append(c)
    return carry, (e if max_id == e.max_id else dataclasses.replace(e, max_id=max_id))


def _extend(s: Session, e: _Entry, carry, account_id: str, start: datetime, d: datetime,
            now: datetime, prices: Timeline):
    """The entry (just rechecked) settled up to the later midnight d: the items of
    [e.settled, d) from its carried rows and the rows started since, added to its rows."""
    ivs = _live(s, account_id, carry, e.settled, d)
    items = unordered_items(ivs, prices, e.settled, d, now)
    reach = d - timedelta(seconds=MINIMUM_RUN_S)
    kept = tuple(iv for iv in ivs if iv.id is not None and (iv.end is None or iv.end >= reach))
    return list(kept), dataclasses.replace(
        e, settled=d, quantities=_quantities(s, account_id, start, d), max_id=_max_id(s),
        carry=kept, rows=usage.merge_rows(e.rows, usage.accumulate(items, "usage_type")))


def _live(s: Session, account_id: str, carry, d: datetime, end: datetime) -> list[Interval]:
    """Every row that can reach into [d, end): the carried ones, those started since d (an
    index range) and the amounts recorded since d (a second of slack, as usage._query)."""
    iv, u = UsageInterval, UsageQuantity
    started = s.exec(select(iv.account_id, iv.resource_id, iv.kind, iv.usage_type, iv.dimension,
                            iv.quantity, iv.started_at, iv.ended_at, iv.id).where(
        iv.account_id == account_id, iv.started_at >= d, iv.started_at < end))
    amounts = s.exec(select(u.account_id, u.resource_id, u.kind, u.usage_type, u.dimension,
                            u.quantity, u.recorded_at, u.recorded_at).where(
        u.account_id == account_id, u.recorded_at >= d - timedelta(seconds=1),
        u.recorded_at < end))
    return [*carry, *(Interval(*r) for r in started), *(Interval(*r) for r in amounts)]
