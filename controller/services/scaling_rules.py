"""The pure arithmetic of target tracking and of scheduled actions (no database, no clock of
its own): which desired capacity a CPU average asks for, and which cron occurrence is due.
Unit-tested alone (tests/unit/test_scaling_rules.py); services/scaling_policies.py and
services/scheduled_actions.py apply them to rows.

Target tracking, as EC2 Auto Scaling computes it (desired = ceil(measured * metric / target)),
with Kumo's guards against flapping on a metric sampled every few seconds:
- a tolerance band (TOLERANCE of the target either side) inside which nothing changes, so noise
  around the target moves nothing;
- `measured` counts only the instances whose CPU went into the average (not those warming
  up): the load they carry is what must be spread, so a second evaluation while the new
  instances warm asks for the same capacity again instead of compounding;
- scale out at once and clamped to max; scale in only after the metric stayed below the band
  for a sustained period, outside the cooldown, with nothing warming, never below min.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from controller.errors import InvalidParameter
from controller.services.autoscaling_rules import VALIDATION

TOLERANCE = 0.10
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")


def check_name(name: str, what: str) -> str:
    """Policy and scheduled action names (they are path segments)."""
    if not _NAME.match(name):
        raise InvalidParameter(f"Invalid {what} name: {name!r}", code=VALIDATION)
    return name


@dataclass(frozen=True)
class Decision:
    """What one evaluation concluded: the new desired capacity (None: leave it) and whether
    the metric is below the scale-in band (the caller keeps when that started)."""

    desired: int | None
    below: bool
    reason: str


def check_target(value: float) -> float:
    if not (0 < value <= 100):
        raise InvalidParameter(f"TargetValue {value} must be greater than 0 and at most 100 "
                               "for ASGAverageCPUUtilization", code=VALIDATION)
    return value


def target_tracking(*, desired: int, min_size: int, max_size: int, measured: int,
                    warming: int, metric: float | None, target: float, disable_scale_in: bool,
                    below_for_s: float | None, scale_in_period_s: float,
                    in_cooldown: bool) -> Decision:
    """One evaluation. measured: instances in the average; warming: live ones left out;
    below_for_s: how long the metric has been below the band before this evaluation (None:
    it was not); in_cooldown: a change happened less than the group's cooldown ago."""
    if metric is None or measured == 0:
        return Decision(None, False, "no data")
    wanted = max(min_size, min(max_size, math.ceil(measured * metric / target)))
    if metric > target * (1 + TOLERANCE):
        if wanted > desired:  # scale out: no cooldown, no waiting
            return Decision(wanted, False, f"CPU {metric:.0f}% above target {target:g}%")
        return Decision(None, False, "at max or already scaled out")
    below = metric < target * (1 - TOLERANCE)
    if not below or disable_scale_in or wanted >= desired:
        return Decision(None, below, "within target")
    if warming or in_cooldown:
        return Decision(None, below, "waiting: warmup or cooldown")
    if below_for_s is None or below_for_s < scale_in_period_s:
        return Decision(None, below, "waiting: scale in needs a sustained low")
    return Decision(wanted, below, f"CPU {metric:.0f}% below target {target:g}%")


# -- schedules -----------------------------------------------------------------------------------
def check_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "Europe" is a directory
        raise InvalidParameter(f"Invalid time zone: {name}", code=VALIDATION) from None


def check_cron(expr: str) -> str:
    ok = len(expr.split()) == 5 and croniter.is_valid(expr)
    if ok:
        try:  # valid but never due (`0 0 31 2 *`) is refused too
            croniter(expr, datetime(2000, 1, 1, tzinfo=timezone.utc)).get_next(datetime)
        except Exception:
            ok = False
    if not ok:
        raise InvalidParameter(f"Given recurrence string is not a valid cron expression: "
                               f"{expr}", code=VALIDATION)
    return expr


def _utc(t: datetime) -> datetime:
    return t.astimezone(timezone.utc)


def next_occurrence(expr: str, zone: str, after: datetime) -> datetime:
    """The first occurrence strictly after `after`, as UTC (the cron read in the zone's wall
    clock: `0 0 * * *` in Europe/Berlin is 23:00 UTC in winter, 22:00 UTC in summer)."""
    tz = ZoneInfo(zone)
    it = croniter(expr, after.astimezone(tz))
    while True:
        occ = it.get_next(datetime).astimezone(tz)
        # A wall time repeated when the clocks go back fires once, at its first passing (as
        # cron does); a wall time skipped when they go forward fires at the first instant after.
        if occ.fold == 1 and occ.replace(fold=0).utcoffset() != occ.utcoffset():
            continue
        return _utc(occ)


def due_occurrence(expr: str, zone: str, *, done_until: datetime, now: datetime,
                   start: datetime | None, end: datetime | None) -> datetime | None:
    """The latest occurrence in (done_until, now] inside [start, end], or None. Only the
    latest: occurrences missed before it are superseded (they set the same thing)."""
    lo = max(done_until, start - timedelta(microseconds=1)) if start else done_until
    hi = min(now, end) if end else now
    if hi <= lo:
        return None
    occ = next_occurrence(expr, zone, lo)
    if occ > hi:
        return None
    # Walk forward to the last one <= hi (bounded: at most a few per missed interval).
    for _ in range(10000):
        nxt = next_occurrence(expr, zone, occ)
        if nxt > hi:
            return occ
        occ = nxt
    return occ
