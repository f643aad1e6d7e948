"""The pure rules of target tracking and scheduled actions (controller/services/scaling_rules.py):
the ceil(measured * metric / target) arithmetic, the tolerance band, warmup exclusion, scale-in
hysteresis and clamping; cron occurrences over a week across Europe/Berlin's DST changes with a
fake clock, missed occurrences, start and end times; refused input."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from controller.errors import InvalidParameter
from controller.services.scaling_rules import (check_cron, check_target, check_zone,
                                               due_occurrence, next_occurrence, target_tracking)

UTC = timezone.utc


def tt(**kw):
    base = dict(desired=2, min_size=1, max_size=5, measured=2, warming=0, metric=50.0,
                target=50.0, disable_scale_in=False, below_for_s=None, scale_in_period_s=60,
                in_cooldown=False)
    return target_tracking(**{**base, **kw})


def test_scale_out_is_the_formula_clamped_to_max():
    assert tt(metric=78).desired == 4  # ceil(2 * 78 / 50) = 4
    assert "CPU 78% above target 50%" in tt(metric=78).reason
    assert tt(metric=100, measured=2, max_size=3).desired == 3
    assert tt(metric=100, desired=3, max_size=3).desired is None  # at max already
    # Scale out ignores the cooldown.
    assert tt(metric=90, in_cooldown=True).desired == 4


def test_warming_instances_are_not_counted_in_the_ask():
    # One measured instance at 100%, one new one warming: the ask stays 2, no compounding.
    assert tt(desired=2, measured=1, warming=1, metric=100).desired is None
    assert tt(desired=1, measured=1, warming=0, metric=100).desired == 2
    # No measured instance at all: no decision.
    assert tt(measured=0, warming=2, metric=None).desired is None


def test_tolerance_band_means_noise_moves_nothing():
    for m in (46, 48, 50, 52, 54.9):
        d = tt(metric=m, below_for_s=1000)
        assert d.desired is None and not d.below


def test_scale_in_waits_for_a_sustained_low_and_the_cooldown():
    d = tt(desired=3, measured=3, metric=10)
    assert d.desired is None and d.below  # first time below: the clock starts
    assert tt(desired=3, measured=3, metric=10, below_for_s=30).desired is None
    assert tt(desired=3, measured=3, metric=10, below_for_s=60).desired == 1  # ceil(0.6)
    assert tt(desired=3, measured=3, metric=10, below_for_s=60, in_cooldown=True).desired is None
    assert tt(desired=3, measured=2, warming=1, metric=10, below_for_s=60).desired is None
    assert tt(desired=3, measured=3, metric=10, below_for_s=60,
              disable_scale_in=True).desired is None
    # Never below min; by at most what the formula gives.
    assert tt(desired=3, measured=3, metric=1, below_for_s=60, min_size=2).desired == 2
    assert tt(desired=4, measured=4, metric=40, below_for_s=60).desired is None  # ceil(3.2)=4
    assert tt(desired=4, measured=4, metric=30, below_for_s=60).desired == 3  # ceil(2.4)


def test_target_and_schedule_validation():
    for bad in (0, -1, 100.5):
        with pytest.raises(InvalidParameter):
            check_target(bad)
    assert check_target(100) == 100
    for bad in ("* * * *", "61 * * * *", "0 0 * * 1-5 2026", "nonsense", "0 0 32 * *",
                "0 0 31 2 *", "@daily"):
        with pytest.raises(InvalidParameter):
            check_cron(bad)
    check_cron("0 0 * * 1-5")
    for bad in ("Europe/Nowhere", "Europe", "../etc", "", "UTC\x00"):
        with pytest.raises(InvalidParameter):
            check_zone(bad)
    check_zone("Europe/Berlin")


def fires(expr, zone, start, hours, step_s=300):
    """Drive a fake clock every step_s and record what fires (each occurrence once)."""
    done, now, out = start, start, []
    end = start + timedelta(hours=hours)
    while now < end:
        now += timedelta(seconds=step_s)
        occ = due_occurrence(expr, zone, done_until=done, now=now, start=None, end=None)
        if occ is not None:
            out.append(occ)
            done = occ
    return out


@pytest.mark.parametrize("start", [datetime(2026, 3, 23, 12, tzinfo=UTC),   # DST begins 29 Mar
                                   datetime(2026, 10, 19, 12, tzinfo=UTC)])  # DST ends 25 Oct
def test_weekdays_and_weekends_over_a_week_across_dst(start):
    week = 8 * 24
    weekdays = fires("0 0 * * 1-5", "Europe/Berlin", start, week)
    weekends = fires("0 0 * * 6,0", "Europe/Berlin", start, week)
    berlin = [t.astimezone(check_zone("Europe/Berlin")) for t in weekdays + weekends]
    assert all((b.hour, b.minute) == (0, 0) for b in berlin)  # local midnight, summer or winter
    # Tuesday to the next Tuesday: every local midnight once, each to the right action.
    assert sorted(b.isoweekday() for b in berlin) == [1, 2, 2, 3, 4, 5, 6, 7]
    assert len(weekdays) == 6 and len(weekends) == 2
    assert len(set(weekdays + weekends)) == len(weekdays + weekends)
    utc_hours = {t.hour for t in weekdays + weekends}
    assert utc_hours == {22, 23}  # the UTC time moved with the DST change


def test_dst_gap_and_repeat_fire_once():
    # 02:30 does not exist on 29 March in Berlin and happens twice on 25 October: once each.
    spring = fires("30 2 * * *", "Europe/Berlin", datetime(2026, 3, 28, 12, tzinfo=UTC), 48)
    assert len(spring) == 2
    autumn = fires("30 2 * * *", "Europe/Berlin", datetime(2026, 10, 24, 12, tzinfo=UTC), 48)
    assert len(autumn) == 2


def test_missed_start_end_and_next():
    t0 = datetime(2026, 12, 7, 0, 0, tzinfo=UTC)
    # Down for 3 hours across 3 hourly occurrences: only the latest is due.
    assert due_occurrence("0 * * * *", "Etc/UTC", done_until=t0, now=t0 + timedelta(hours=3,
                          minutes=5), start=None, end=None) == t0 + timedelta(hours=3)
    # Before start / after end: nothing.
    assert due_occurrence("0 * * * *", "Etc/UTC", done_until=t0, now=t0 + timedelta(hours=3),
                          start=t0 + timedelta(hours=4), end=None) is None
    assert due_occurrence("0 * * * *", "Etc/UTC", done_until=t0, now=t0 + timedelta(hours=3),
                          start=None, end=t0 + timedelta(minutes=90)) == t0 + timedelta(hours=1)
    # An occurrence exactly at start fires.
    assert due_occurrence("0 * * * *", "Etc/UTC", done_until=t0, now=t0 + timedelta(hours=2),
                          start=t0 + timedelta(hours=2), end=None) == t0 + timedelta(hours=2)
    assert next_occurrence("0 0 * * 6,0", "Europe/Berlin", datetime(2026, 3, 27, tzinfo=UTC)) \
        == datetime(2026, 3, 27, 23, tzinfo=UTC)
