"""The pure rule of metric alarms (no database, no clock): which state the last N periods'
datapoints put an alarm in, with CloudWatch's M-of-N and missing-data treatments. Unit-tested
alone (tests/unit/test_alarm_rules.py); services/alarm_controller.py feeds it datapoints.

The rule, over the N most recent complete periods (a datapoint None: no sample in that period):
- breaching: a datapoint compares to the threshold as comparison_operator says;
- treat_missing_data `breaching` / `notBreaching`: a missing datapoint counts as breaching /
  not breaching, so the alarm always reaches ALARM or OK;
- ALARM when at least M (datapoints_to_alarm) datapoints breach; OK when so many do not that
  M breaching ones are impossible (more than N - M);
- `missing` (default) and `ignore`: a missing datapoint counts for neither side, so the
  datapoints may decide neither: then the alarm keeps its state (one breaching datapoint and
  one gap, 2 of 2, neither alarms nor clears); with no datapoint at all, `missing` goes to
  INSUFFICIENT_DATA and `ignore` keeps the state.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

COMPARE = {"GreaterThanOrEqualToThreshold": (operator.ge, "greater than or equal to"),
           "GreaterThanThreshold": (operator.gt, "greater than"),
           "LessThanThreshold": (operator.lt, "less than"),
           "LessThanOrEqualToThreshold": (operator.le, "less than or equal to")}


@dataclass(frozen=True)
class Verdict:
    """The state the datapoints ask for (None: keep the current one) and why."""

    state: str | None
    reason: str
    breaching: int


def breaches(value: float, threshold: float, comparison: str) -> bool:
    return COMPARE[comparison][0](value, threshold)


def evaluate(datapoints: list[float | None], *, threshold: float, comparison: str,
             datapoints_to_alarm: int, treat_missing_data: str) -> Verdict:
    """datapoints: the last N periods, oldest first."""
    n, m = len(datapoints), datapoints_to_alarm
    present = [v for v in datapoints if v is not None]
    missing = n - len(present)
    words = COMPARE[comparison][1]
    hits = sum(breaches(v, threshold, comparison) for v in present)
    good = len(present) - hits
    if treat_missing_data == "breaching":
        hits += missing
    elif treat_missing_data == "notBreaching":
        good += missing
    shown = ", ".join("missing" if v is None else f"{v:g}" for v in datapoints)
    if hits >= m:
        return Verdict("ALARM", f"Threshold Crossed: {hits} out of the last {n} datapoints "
                       f"[{shown}] were {words} the threshold ({threshold:g}) (minimum {m} "
                       "datapoints for OK -> ALARM transition).", hits)
    if good > n - m:
        return Verdict("OK", f"Threshold Crossed: {good} out of the last {n} datapoints "
                       f"[{shown}] were not {words} the threshold ({threshold:g}) (minimum "
                       f"{n - m + 1} datapoints for ALARM -> OK transition).", hits)
    if not present and treat_missing_data == "missing":
        return Verdict("INSUFFICIENT_DATA", f"Insufficient Data: {n} datapoint"
                       f"{'s were' if n > 1 else ' was'} unknown.", 0)
    return Verdict(None, f"Undecided: the datapoints [{shown}] neither reach {m} breaching "
                   "nor rule it out; the state is kept.", hits)
