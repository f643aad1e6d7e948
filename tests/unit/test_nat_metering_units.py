"""NAT gateways' data processed, controller side, pure parts (issue 13): counter deltas with
resets (services/nat_metering.delta), bytes -> GiB money (services/money.py) and amounts
recorded at an instant -> line items by day and rate (services/usage_calc.py), against hand
computations written here."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal

import pytest

from controller.services import money
from controller.services.nat_metering import delta
from controller.services.prices import EPOCH, Timeline
from controller.services.usage import group
from controller.services.usage_calc import Interval, line_items

UTC = timezone.utc
GIB = 1 << 30
T = datetime(2026, 12, 1, 23, 0, tzinfo=UTC)


def fold(values):
    """The controller's running total over a sequence of reports of one counter."""
    last, total = None, 0
    for v in values:
        total += delta(last, v)
        last = v
    return total


@pytest.mark.parametrize("values,expected", [
    ([0, 100, 250], 250),               # plain growth
    ([500], 500),                       # first report: all of it is new (the counter is new)
    ([100, 100, 100], 100),             # no traffic
    ([100, 400, 50, 80], 480),          # recreated: 50 is a new counter counted from zero
    ([100, 400, 0, 0, 30], 430),        # recreated, then idle, then traffic
    ([2**40, 2**40 + 7], 2**40 + 7),    # beyond 32 bits
])
def test_delta_handles_growth_and_resets(values, expected):
    assert fold(values) == expected


def test_delta_of_one_report():
    assert delta(None, 7) == 7
    assert delta(7, 7) == 0
    assert delta(7, 9) == 2
    assert delta(9, 3) == 3


def test_bytes_are_billed_per_gib_exactly():
    rate = Decimal("0.045")
    assert money.units("nat-gateway-gib", GIB, 0) == 1
    assert money.item_amount(rate, "nat-gateway-gib", 3 * GIB, 0) == Decimal("0.1350")
    # 5 MiB: 0.045 * 5 / 1024 = 0.00021972... -> 0.0002 (half-up to 1/100 cent)
    assert money.item_amount(rate, "nat-gateway-gib", 5 << 20, 0) == Decimal("0.0002")
    # seconds are irrelevant to an amount
    assert money.item_amount(rate, "nat-gateway-gib", GIB, 99999) == Decimal("0.0450")
    assert money.USAGE_TYPES["nat-gateway-gib"].unit == "GiB"
    assert money.DEFAULT_RATES["nat-gateway-gib"] == "0.045"


def amount(start, nbytes, resource="nat-1"):
    return Interval("a", resource, "nat-gateway", "nat-gateway-gib", "", nbytes, start, start)


def test_amounts_go_to_their_day_and_rate():
    change = T + timedelta(minutes=30)  # 23:30 on Dec 1: 0.045 -> 0.09
    prices = Timeline([("nat-gateway-gib", "", EPOCH, "0.045"),
                       ("nat-gateway-gib", "", change, "0.09")])
    ivs = [amount(T, 2 * GIB), amount(T + timedelta(minutes=10), GIB),   # Dec 1, 0.045
           amount(change, GIB),                                        # Dec 1, 0.09
           amount(T + timedelta(hours=1), 4 * GIB),                    # Dec 2, 0.09
           amount(T - timedelta(days=1), 99 * GIB),                    # before the period
           amount(T + timedelta(days=1), 99 * GIB)]                    # at its end: outside
    items = line_items(ivs, prices, T - timedelta(hours=1), T + timedelta(days=1),
                       now=T + timedelta(days=2))
    got = sorted((i.day.isoformat(), str(i.rate), i.quantity, i.seconds, i.amount) for i in items)
    assert got == [("2026-12-01", "0.045", 3 * GIB, 0, Decimal("0.1350")),
                   ("2026-12-01", "0.09", GIB, 0, Decimal("0.0900")),
                   ("2026-12-02", "0.09", 4 * GIB, 0, Decimal("0.3600"))]
    # The bill's line: quantity in GiB (6 places), summed amounts, no seconds.
    (line,) = group(items, "usage_type")
    assert line["unit"] == "GiB" and line["quantity"] == "8.000000"
    assert line["amount"] == "0.5850" and line["gib"] is None and line["seconds"] == 0


def test_amounts_beside_intervals_of_the_same_gateway():
    prices = Timeline([("nat-gateway-gib", "", EPOCH, "0.045"),
                       ("nat-gateway-hours", "", EPOCH, "0.045")])
    hours = Interval("a", "nat-1", "nat-gateway", "nat-gateway-hours", "", 1, T, None)
    items = line_items([hours, amount(T + timedelta(minutes=5), 300 << 20)], prices,
                       T, T + timedelta(hours=1), now=T + timedelta(hours=1))
    by_type = {i.usage_type: i for i in items}
    assert by_type["nat-gateway-hours"].seconds == 3600
    assert by_type["nat-gateway-hours"].amount == Decimal("0.0450")
    exact = Decimal("0.045") * Decimal(300) / Decimal(1024)
    assert by_type["nat-gateway-gib"].amount == exact.quantize(Decimal("0.0001"), ROUND_HALF_UP)
    (row,) = [r for r in group(items, "resource") if r["usage_type"] == "nat-gateway-gib"]
    assert row["quantity"] == money.show_quantity(Decimal(300) / 1024)
