"""The pure arithmetic of step and simple scaling (no database, no clock): validating step
adjustments as EC2 Auto Scaling does, picking the step a metric value falls in, and turning
an adjustment into a new desired capacity. Unit-tested alone (tests/unit/test_step_rules.py);
services/step_scaling.py applies it to groups.
"""
from __future__ import annotations

import math

from controller.errors import InvalidParameter
from controller.services.autoscaling_rules import VALIDATION

INF = math.inf


def _bad(message: str) -> InvalidParameter:
    return InvalidParameter(message, code=VALIDATION)


def check_steps(steps: list[dict]) -> list[dict]:
    """-> the steps sorted by lower bound. Refused (ValidationError): none, a step whose lower
    bound is not below its upper one, more than one open bound on a side, gaps or overlaps
    between neighbours (as AWS: the intervals must tile one range)."""
    if not steps:
        raise _bad("Step scaling needs at least one step adjustment")
    lows = [s for s in steps if s.get("metric_interval_lower_bound") is None]
    highs = [s for s in steps if s.get("metric_interval_upper_bound") is None]
    if len(lows) > 1 or len(highs) > 1:
        raise _bad("At most one step adjustment may have a null lower bound, and at most one "
                   "a null upper bound")
    for s in steps:
        lo, hi = _bounds(s)
        if not lo < hi:
            raise _bad(f"Step adjustment lower bound {lo} must be less than its upper bound "
                       f"{hi}")
    ordered = sorted(steps, key=lambda s: _bounds(s)[0])
    for a, b in zip(ordered, ordered[1:]):
        if _bounds(a)[1] != _bounds(b)[0]:
            raise _bad(f"Step adjustments must not overlap or leave gaps: an interval ends at "
                       f"{_bounds(a)[1]} and the next starts at {_bounds(b)[0]}")
    return ordered


def _bounds(step: dict) -> tuple[float, float]:
    lo, hi = step.get("metric_interval_lower_bound"), step.get("metric_interval_upper_bound")
    return (-INF if lo is None else lo), (INF if hi is None else hi)


def pick_step(steps: list[dict], value: float, threshold: float) -> dict | None:
    """The step that holds value - threshold (AWS: above the threshold an interval's lower
    bound is inclusive and its upper exclusive; below it, the other way round; at the
    threshold itself either reading, the upper side first). None: no step holds it."""
    d = value - threshold
    above = [s for s in steps if _bounds(s)[0] <= d < _bounds(s)[1]]
    below = [s for s in steps if _bounds(s)[0] < d <= _bounds(s)[1]]
    found = (above or below) if d == 0 else (above if d > 0 else below)
    return found[0] if found else None


def percent_delta(current: int, percent: int, min_magnitude: int | None) -> int:
    """AWS rounding of a percent change: above 1 rounded down, in (0, 1) up to 1, in (-1, 0) to
    -1, below -1 rounded toward zero; then at least min_magnitude in size."""
    raw = current * percent / 100
    if raw == 0:
        delta = 0
    elif abs(raw) < 1:
        delta = 1 if raw > 0 else -1
    else:
        delta = math.trunc(raw)
    if min_magnitude is not None and delta != 0 and abs(delta) < min_magnitude:
        delta = min_magnitude if delta > 0 else -min_magnitude
    return delta


def new_capacity(*, adjustment_type: str, adjustment: int, min_magnitude: int | None,
                 desired: int, warming: int, min_size: int, max_size: int) -> int:
    """The desired capacity an adjustment asks for, clamped to [min, max].

    warming: capacity asked for but not yet ready (launching or inside its warmup). A scale
    out counts it as already there (AWS step scaling): it is computed from the ready capacity
    and never lowers desired, so a further breach of the same step adds nothing and a breach
    of a larger step adds only the difference. A scale in is computed from desired."""
    if adjustment_type == "ExactCapacity":
        wanted = adjustment
    else:
        base = desired - warming if adjustment > 0 else desired
        if adjustment_type == "PercentChangeInCapacity":
            delta = percent_delta(base, adjustment, min_magnitude)
        else:
            delta = adjustment
        wanted = base + delta
        if adjustment > 0:
            wanted = max(wanted, desired)
    return max(min_size, min(max_size, wanted))
