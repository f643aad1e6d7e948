"""The group controller's survey (controller/services/autoscaling_survey.py) may only skip
work that is not there: its schedule pre-check must say "due" exactly when
scaling_rules.due_occurrence (what scheduled_actions.evaluate applies) finds an occurrence, over
a week across a DST change and with start / end windows; its health pre-check must flag every
member the health step would act on.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from controller.services.autoscaling_survey import needs_judging, schedule_due
from controller.services.scaling_rules import due_occurrence

UTC = timezone.utc
T0 = datetime(2026, 3, 25, 0, 0, tzinfo=UTC)  # Europe/Paris changes to summer time on 03-29


def _action(expr, zone, last, start=None, end=None):
    return SimpleNamespace(recurrence=expr, time_zone=zone, last_occurrence=last,
                           created_at=T0 - timedelta(days=1), start_time=start, end_time=end)


@pytest.mark.parametrize("expr,zone", [("0 8 * * 1-5", "Europe/Paris"),
                                       ("0 8 * * 0,6", "Europe/Paris"),
                                       ("30 2 * * *", "Europe/Paris"),  # in the DST gap
                                       ("*/20 * * * *", "Etc/UTC")])
@pytest.mark.parametrize("window", [None, "start", "end"])
def test_schedule_precheck_agrees_with_due_occurrence(expr, zone, window):
    start = T0 + timedelta(days=2) if window == "start" else None
    end = T0 + timedelta(days=4) if window == "end" else None
    last = T0
    now = T0
    while now < T0 + timedelta(days=8):
        now += timedelta(minutes=7)
        a = _action(expr, zone, last, start, end)
        occ = due_occurrence(expr, zone, done_until=last, now=now, start=start, end=end)
        assert schedule_due(a, now) == (occ is not None), (expr, now, last)
        if occ is not None:
            last = occ  # as evaluate() records it


def test_one_time_action_is_due_once_its_start_has_come():
    """recurrence "" (one-time): due from its start on, until evaluate() deletes it; never
    before it, nor when its start is at or before the last handled instant (put after it)."""
    start = T0 + timedelta(hours=1)
    a = _action("", "Europe/Paris", T0, start)
    assert not schedule_due(a, start - timedelta(seconds=1))
    assert schedule_due(a, start) and schedule_due(a, start + timedelta(days=1))
    assert not schedule_due(_action("", "Etc/UTC", start, start), start + timedelta(hours=1))
    assert not schedule_due(_action("", "Etc/UTC", T0, None), T0 + timedelta(days=1))


def test_schedule_without_last_occurrence_counts_from_creation():
    a = _action("0 * * * *", "Etc/UTC", None)
    assert schedule_due(a, a.created_at + timedelta(minutes=59)) is False
    assert schedule_due(a, a.created_at + timedelta(hours=1)) is True


def test_health_precheck():
    def inst(**kw):
        return SimpleNamespace(**{"state": "running", "instance_status": "ok",
                                  "system_status": "ok", **kw})
    assert needs_judging("InService", None, True)  # gone
    assert needs_judging("Pending", inst(), True)  # becomes InService
    assert not needs_judging("Pending", inst(state="pending"), True)
    assert not needs_judging("InService", inst(), False)
    assert not needs_judging("InService", inst(state="stopped"), True)  # in grace
    assert needs_judging("InService", inst(state="stopped"), False)
    assert needs_judging("InService", inst(system_status="host-down"), False)
