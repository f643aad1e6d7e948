"""The pure arithmetic of step and simple scaling (controller/services/step_rules.py): step
validation (gaps, overlaps, open bounds), picking a step, each adjustment type, percent
rounding with a minimum magnitude, warming capacity, clamping."""
from __future__ import annotations

import pytest

from controller.errors import InvalidParameter
from controller.services.step_rules import check_steps, new_capacity, percent_delta, pick_step


def st(lo, hi, adj=1):
    return {"metric_interval_lower_bound": lo, "metric_interval_upper_bound": hi,
            "scaling_adjustment": adj}


def test_valid_steps_are_sorted():
    steps = check_steps([st(20, None, 3), st(0, 10, 1), st(10, 20, 2)])
    assert [s["scaling_adjustment"] for s in steps] == [1, 2, 3]
    assert check_steps([st(None, None)])  # one step covering everything
    assert check_steps([st(None, 0, -1), st(0, None, 1)])


@pytest.mark.parametrize("steps", [
    [],
    [st(0, 10), st(20, None)],           # gap
    [st(0, 15), st(10, None)],           # overlap
    [st(None, 0), st(None, 10)],         # two open lower bounds
    [st(0, None), st(10, None)],         # two open upper bounds
    [st(10, 10)],                        # empty interval
    [st(10, 0)],                         # reversed
])
def test_invalid_steps(steps):
    with pytest.raises(InvalidParameter) as e:
        check_steps(steps)
    assert e.value.code == "ValidationError"


def test_pick_step_bounds():
    steps = check_steps([st(0, 10, 1), st(10, 20, 2), st(20, None, 3)])
    assert pick_step(steps, 50, 50)["scaling_adjustment"] == 1  # lower bound inclusive above
    assert pick_step(steps, 60, 50)["scaling_adjustment"] == 2
    assert pick_step(steps, 99, 50)["scaling_adjustment"] == 3
    assert pick_step(steps, 40, 50) is None  # below every step
    down = check_steps([st(None, -10, -2), st(-10, 0, -1)])
    assert pick_step(down, 50, 50)["scaling_adjustment"] == -1  # upper inclusive below
    assert pick_step(down, 45, 50)["scaling_adjustment"] == -1
    assert pick_step(down, 40, 50)["scaling_adjustment"] == -2  # -10: upper inclusive below
    assert pick_step(down, 30, 50)["scaling_adjustment"] == -2


@pytest.mark.parametrize("current,pct,mam,delta", [
    (10, 25, None, 2), (10, 127, None, 12), (3, 10, None, 1), (3, -10, None, -1),
    (15, -44, None, -6), (10, 10, 3, 3), (10, -10, 3, -3), (10, 50, 2, 5), (0, 50, 2, 0)])
def test_percent_rounding_and_min_magnitude(current, pct, mam, delta):
    assert percent_delta(current, pct, mam) == delta


def cap(kind, adj, desired=4, warming=0, lo=1, hi=10, mam=None):
    return new_capacity(adjustment_type=kind, adjustment=adj, min_magnitude=mam,
                        desired=desired, warming=warming, min_size=lo, max_size=hi)


def test_adjustment_types_and_clamping():
    assert cap("ChangeInCapacity", 2) == 6
    assert cap("ChangeInCapacity", -2) == 2
    assert cap("ChangeInCapacity", -9) == 1      # clamped to min
    assert cap("ChangeInCapacity", 20) == 10     # clamped to max
    assert cap("ExactCapacity", 7) == 7
    assert cap("ExactCapacity", 0) == 1
    assert cap("PercentChangeInCapacity", 50) == 6
    assert cap("PercentChangeInCapacity", 10, mam=2) == 6
    assert cap("PercentChangeInCapacity", -50) == 2


def test_warming_capacity_counts_as_there():
    # 10 ready; step A (+1) took desired to 11, that one still warms: A again adds nothing,
    # step B (+3) adds only the difference (10 + 3 = 13).
    assert cap("ChangeInCapacity", 1, desired=11, warming=1, hi=20) == 11
    assert cap("ChangeInCapacity", 3, desired=11, warming=1, hi=20) == 13
    # A scale in is computed from desired, whatever warms.
    assert cap("ChangeInCapacity", -1, desired=11, warming=1, hi=20) == 10
    # Percent of the ready capacity.
    assert cap("PercentChangeInCapacity", 50, desired=6, warming=2, hi=20) == 6
