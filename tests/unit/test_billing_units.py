"""Billing's pure parts: money parsing and rounding (services/money.py), the interval -> line
item arithmetic (services/usage_calc.py) and months and periods (services/usage.py)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from controller.errors import InvalidParameter
from controller.services import money
from controller.services.prices import EPOCH, Timeline
from controller.services.usage import month_bounds, parse_period
from controller.services.usage_calc import Interval, line_items

UTC = timezone.utc
T = datetime(2026, 12, 1, 23, 0, tzinfo=UTC)


def prices(*extra):
    return Timeline([("instance-hours", "t3.micro", EPOCH, "0.0104"),
                     ("volume-gib-month", "", EPOCH, "0.08"), *extra])


def run(start, end, kind="instance", usage_type="instance-hours", dim="t3.micro", q=1):
    return Interval("a", "r", kind, usage_type, dim, q, start, end)


def test_rounding_is_half_up_per_item_and_per_total():
    # 0.00005 exactly: half-up gives 0.0001 (banker's rounding would give 0.0000).
    assert money.item_amount(Decimal("0.18"), "instance-hours", 1, 1) == Decimal("0.0001")
    assert money.item_amount(Decimal("0.17"), "instance-hours", 1, 1) == Decimal("0.0000")
    assert money.total_amount([Decimal("0.0050"), Decimal("0.0000")]) == Decimal("0.01")
    assert money.units("volume-gib-month", 8, 86400) == Decimal(8 * 86400) / 2628000


@pytest.mark.parametrize("bad", ["-1", "abc", "NaN", "Infinity", "", True, None, "1e9",
                                 "0.00000000001"])
def test_bad_money_is_refused(bad):
    with pytest.raises(InvalidParameter) as e:
        money.parse_money(bad)
    assert e.value.code == "InvalidPrice"


def test_money_reads_as_written():
    assert str(money.parse_money("0.0104")) == "0.0104"
    assert str(money.parse_money(0.0104)) == "0.0104"
    assert str(money.parse_money("1E+2")) == "100"


def test_items_cut_at_midnight_and_price_changes():
    change = ("instance-hours", "t3.micro", T + timedelta(hours=1, minutes=30), "0.02")
    items = line_items([run(T, T + timedelta(hours=2))], prices(change), T - timedelta(days=1),
                       T + timedelta(days=1), T + timedelta(days=1))
    got = [(i.day.isoformat(), str(i.rate), i.seconds, str(i.amount)) for i in items]
    assert got == [("2026-12-01", "0.0104", 3600, "0.0104"),
                   ("2026-12-02", "0.0104", 1800, "0.0052"),
                   ("2026-12-02", "0.02", 1800, "0.0100")]


def test_sixty_second_minimum_open_runs_and_clipping():
    now = T + timedelta(hours=1)
    short = line_items([run(T, T + timedelta(seconds=5, microseconds=900))], prices(), T, now,
                       now)
    assert [i.seconds for i in short] == [60]
    open_run = line_items([run(T, None)], prices(), T - timedelta(hours=5), T + timedelta(days=3),
                          now)
    assert [i.seconds for i in open_run] == [3600]  # an open run ends now, never later
    clipped = line_items([run(T - timedelta(hours=3), None)], prices(), T, T + timedelta(
        minutes=10), now)
    assert [i.seconds for i in clipped] == [600]
    assert line_items([run(T, T + timedelta(seconds=30))], prices(),
                      T + timedelta(seconds=61), now, now) == []


def test_volume_items_use_the_730_hour_month():
    items = line_items([run(T.replace(hour=0), T.replace(hour=0) + timedelta(days=1),
                            kind="volume", usage_type="volume-gib-month", dim="", q=8)],
                       prices(), T - timedelta(days=1), T + timedelta(days=2), T + timedelta(days=2))
    assert [(i.seconds, str(i.amount)) for i in items] == [(86400, "0.0210")]


def test_months_and_periods():
    assert month_bounds("2026-12") == (datetime(2026, 12, 1, tzinfo=UTC),
                                       datetime(2027, 1, 1, tzinfo=UTC))
    for bad in ("2026-13", "2026-1", "x", "1969-12"):
        with pytest.raises(InvalidParameter):
            month_bounds(bad)
    a, b = parse_period("2026-12-01T01:00:00+01:00", "2026-12-02")
    assert a == datetime(2026, 12, 1, tzinfo=UTC) and b.tzinfo is not None
    with pytest.raises(InvalidParameter):
        parse_period("2026-12-02", "2026-12-01")


def test_streamed_items_are_the_sorted_items():
    from controller.services.usage_calc import stream_items

    ivs = [Interval("a", r, "instance", "instance-hours", "t3.micro", 1,
                    T + timedelta(minutes=k * 7), T + timedelta(minutes=k * 7 + 5))
           for r in ("r1", "r2") for k in range(40)]
    end = T + timedelta(days=1)
    want = line_items(ivs, prices(), T, end, end)
    got = list(stream_items(ivs, prices(), T, end, end))
    key = lambda i: (i.resource_id, i.day, i.rate)  # noqa: E731
    assert sorted(got, key=key) == sorted(want, key=key) and len(got) == 4
