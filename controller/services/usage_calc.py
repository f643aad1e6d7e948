"""Pure usage arithmetic: usage intervals + the price timeline + a period -> base line items.

A base line item is one (account, resource, usage type, dimension, GiB, rate, UTC day): the
whole seconds of the resource's intervals inside the period on that day at that rate. Its
amount is rounded once (services/money.py); groupings only add rounded items.

Rules, in the order they apply to one interval:
1. Times count in whole seconds (fractions of a second dropped from both ends).
2. An open interval ends at `now`; a closed instance-hours interval lasts at least 60 s (EC2's
   minimum per start): [start, max(end, start + 60)).
3. The interval is clipped to the period, then cut at UTC midnights and at price changes.
An amount recorded at an instant (a per-byte usage type: a NAT gateway's bytes, whose Interval
has start == end == the instant, quantity == bytes) belongs to the period, the UTC day and the
rate of that instant's whole second; a base item sums the bytes of its day and rate.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import groupby
from datetime import date, datetime
from decimal import Decimal

from controller.services import money
from controller.services.prices import Timeline

DAY = 86400
MINIMUM_RUN_S = 60
PER_BYTE = frozenset(k for k, t in money.USAGE_TYPES.items() if t.per_byte)


@dataclass(frozen=True, slots=True)
class Interval:
    account_id: str
    resource_id: str
    kind: str
    usage_type: str
    dimension: str
    quantity: int
    start: datetime
    end: datetime | None
    #: the usage_interval row's id (None for recorded amounts): the open bill's cache
    #: (services/open_bills.py) re-reads the rows it keeps by id
    id: int | None = None


def pick_rate(a: Decimal, b: Decimal) -> Decimal | None:
    """None when the rates differ; of two equal rates written differently ("0.1", "0.10"), the
    one with fewer decimal places, whichever came first: an item's or a line's rate never
    depends on the order the database returned the rows in."""
    if a != b:
        return None
    return max(a, b, key=lambda d: (d.as_tuple().exponent, str(d)))


@dataclass(slots=True)
class LineItem:
    account_id: str
    resource_id: str
    kind: str
    usage_type: str
    dimension: str
    quantity: int
    rate: Decimal
    day: date
    seconds: int = 0
    #: set once all seconds are in (line_items): money.item_amount, rounded once
    amount: Decimal = Decimal(0)

    @property
    def units(self) -> Decimal:
        return money.units(self.usage_type, self.quantity, self.seconds)


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def _sec(t: datetime) -> int:
    return int(t.timestamp())


def billed_span(iv: Interval, now: int) -> tuple[int, int]:
    """Rules 1 and 2: the interval's billed [start, end) in epoch seconds."""
    start = _sec(iv.start)
    if iv.end is None:
        return start, max(start, now)
    end = _sec(iv.end)
    if iv.usage_type == "instance-hours":
        end = max(end, start + MINIMUM_RUN_S)
    return start, end


def line_items(intervals, prices: Timeline, start: datetime, end: datetime,
               now: datetime) -> list[LineItem]:
    """Base line items of `intervals` within [start, end), in a stable order."""
    items = _collect(intervals, prices, _sec(start), _sec(end), _sec(now), {})
    return sorted(items, key=lambda i: (i.account_id, i.day, i.resource_id, i.usage_type,
                                        i.dimension, i.quantity, i.rate))


def stream_items(intervals, prices: Timeline, start: datetime, end: datetime,
                 now: datetime) -> Iterator[LineItem]:
    """The same items as line_items, unordered, from intervals ordered by resource: each
    resource's items are yielded once its intervals are done, so memory stays that of one
    resource (bills of big accounts)."""
    p0, p1, t_now, days = _sec(start), _sec(end), _sec(now), {}
    for _, ivs in groupby(intervals, key=lambda iv: iv.resource_id):
        yield from _collect(ivs, prices, p0, p1, t_now, days)


def unordered_items(intervals, prices: Timeline, start: datetime, end: datetime,
                    now: datetime) -> list[LineItem]:
    """The same items as line_items, in no particular order (any interval order)."""
    return _collect(intervals, prices, _sec(start), _sec(end), _sec(now), {})


def _collect(intervals, prices: Timeline, p0: int, p1: int, t_now: int,
             days: dict[int, date]) -> list[LineItem]:
    items: dict[tuple, LineItem] = {}
    for iv in intervals:
        if iv.usage_type in PER_BYTE:
            _add_amount(items, iv, prices, p0, p1, days)
            continue
        a, b = billed_span(iv, t_now)
        a, b = max(a, p0), min(b, p1)
        while a < b:
            rate, next_change = prices.at(iv.usage_type, iv.dimension, a)
            cut = min(b, (a // DAY + 1) * DAY)
            if next_change is not None and next_change < cut:
                cut = next_change
            day = days.get(a // DAY)
            if day is None:
                day = days[a // DAY] = date.fromordinal(_EPOCH_ORDINAL + a // DAY)
            key = (iv.account_id, iv.resource_id, iv.usage_type, iv.dimension, iv.quantity, rate,
                   day)
            item = items.get(key)
            if item is None:
                item = items[key] = LineItem(iv.account_id, iv.resource_id, iv.kind,
                                             iv.usage_type, iv.dimension, iv.quantity, rate, day)
            elif item.rate is not rate:  # an equal rate of another price entry
                item.rate = pick_rate(item.rate, rate)
            item.seconds += cut - a
            a = cut
    for item in items.values():
        item.amount = money.item_amount(item.rate, item.usage_type, item.quantity, item.seconds)
    return list(items.values())


def _add_amount(items: dict[tuple, LineItem], iv: Interval, prices: Timeline, p0: int, p1: int,
                days: dict[int, date]) -> None:
    """An amount recorded at an instant: into the item of its day and rate (quantity summed)."""
    a = _sec(iv.start)
    if not p0 <= a < p1:
        return
    rate, _ = prices.at(iv.usage_type, iv.dimension, a)
    day = days.get(a // DAY)
    if day is None:
        day = days[a // DAY] = date.fromordinal(_EPOCH_ORDINAL + a // DAY)
    key = (iv.account_id, iv.resource_id, iv.usage_type, iv.dimension, 0, rate, day)
    item = items.get(key)
    if item is None:
        item = items[key] = LineItem(iv.account_id, iv.resource_id, iv.kind, iv.usage_type,
                                     iv.dimension, 0, rate, day)
    elif item.rate is not rate:
        item.rate = pick_rate(item.rate, rate)
    item.quantity += iv.quantity
