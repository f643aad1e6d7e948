"""Scheduled actions of Auto Scaling groups: put / describe / delete, and their evaluation in
the group controller's pass (controller/services/autoscaling_controller.py calls evaluate()
for each group before policies and capacity).

Level-triggered and restart-safe: each action records the last occurrence it handled
(`last_occurrence`, committed with the change it made). A pass looks for the latest occurrence
after that one and not after now (services/scaling_rules.py due_occurrence); one found fires
once, and is recorded. An occurrence missed while the controller was down fires once when it
comes back if it is at most autoscaling_schedule_grace_s old; an older one is recorded as
skipped (an activity says so) and does nothing: a stale schedule must not override what
happened since. Occurrences before the action was created never fire.

One-time actions (EC2's StartTime without Recurrence; stored with recurrence ""): the one
occurrence is start_time, which must be in the future when put. When it is due it fires (or is
skipped, or fails, as above) and the action is deleted in the same transaction, as EC2 deletes
a one-time action once it has run; the activity it leaves is its record.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlmodel import Session, select

from controller.db import Database
from controller.errors import InvalidParameter, KumoError, NotFound
from controller.ids import new_id, utcnow
from controller.models.autoscaling import AutoScalingGroup, ScalingActivity
from controller.models.autoscaling_policies import (ScheduledAction, ScheduledActionPublic,
                                                    ScheduledActionPut)
from controller.services import autoscaling, group_rows
from controller.services.autoscaling_rules import VALIDATION, check_capacity
from controller.services.scaling_rules import (check_cron, check_name, check_zone,
                                               due_occurrence, next_occurrence)
from controller.settings import Settings


def _aware(t: datetime | None) -> datetime | None:
    if t is None:
        return None
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def _public(g: AutoScalingGroup, a: ScheduledAction, now: datetime) -> ScheduledActionPublic:
    # The first occurrence at or after start (inclusive, as due_occurrence) or after now.
    after = max(now, a.start_time - timedelta(microseconds=1)) if a.start_time else now
    if not a.recurrence:  # one-time: its start (a row exists only until it has run)
        nxt = a.start_time
    else:
        try:
            nxt = next_occurrence(a.recurrence, a.time_zone, after)
        except (OverflowError, ValueError):  # past the calendar's end (a start in year 9999)
            nxt = None
    if nxt is not None and a.end_time is not None and nxt > a.end_time:
        nxt = None
    return ScheduledActionPublic(
        scheduled_action_name=a.name, auto_scaling_group_name=g.name,
        scheduled_action_arn=f"arn:kumo:autoscaling::{g.account_id}:scheduledUpdateGroupAction:"
                             f"{a.action_id}:autoScalingGroupName/{g.name}:"
                             f"scheduledActionName/{a.name}",
        recurrence=a.recurrence or None, time_zone=a.time_zone, start_time=a.start_time,
        end_time=a.end_time, min_size=a.min_size, max_size=a.max_size,
        desired_capacity=a.desired_capacity, next_occurrence=nxt,
        last_occurrence=a.last_occurrence)


def _check(body: ScheduledActionPut, now: datetime) -> None:
    if body.recurrence is not None:
        check_cron(body.recurrence)
    check_zone(body.time_zone)
    if body.recurrence is None:  # one-time (EC2: StartTime without Recurrence)
        start = _aware(body.start_time)
        if start is None:
            raise InvalidParameter("A scheduled action needs a recurrence or a start time",
                                   code=VALIDATION)
        if start <= now:
            raise InvalidParameter("Given start time is in the past", code=VALIDATION)
        if body.end_time is not None:
            raise InvalidParameter("An end time is only valid with a recurrence",
                                   code=VALIDATION)
    if body.min_size is None and body.max_size is None and body.desired_capacity is None:
        raise InvalidParameter("At least one of min_size, max_size and desired_capacity must "
                               "be given", code=VALIDATION)
    start, end = _aware(body.start_time), _aware(body.end_time)
    if start and end and end <= start:
        raise InvalidParameter("The end time must be after the start time", code=VALIDATION)
    if body.min_size is not None and body.max_size is not None:
        check_capacity(body.min_size, body.max_size, body.desired_capacity)


def put(db: Database, caller, group_name: str, name: str,
        body: ScheduledActionPut) -> ScheduledActionPublic:
    """Create or replace (EC2 PutScheduledUpdateGroupAction)."""
    now = utcnow()
    _check(body, now)
    check_name(name, "scheduled action")
    with db.session() as s:
        g = autoscaling.get(s, caller, group_name)
        a = group_rows.upsert(s, ScheduledAction, g, name, lambda: ScheduledAction(
            action_id=new_id("sch"), group_id=g.group_id, account_id=g.account_id, name=name,
            created_at=now, recurrence=body.recurrence or "", time_zone=body.time_zone))
        a.recurrence, a.time_zone = body.recurrence or "", body.time_zone
        a.start_time, a.end_time = _aware(body.start_time), _aware(body.end_time)
        a.min_size, a.max_size = body.min_size, body.max_size
        a.desired_capacity = body.desired_capacity
        a.last_occurrence = now  # a new or changed schedule starts from now, never backwards
        s.add(a)
        s.flush()
        return _public(g, a, now)


def describe(db: Database, caller, group_name: str) -> list[ScheduledActionPublic]:
    now = utcnow()
    with db.session(notify=False) as s:
        g = autoscaling.get(s, caller, group_name)
        return [_public(g, a, now) for a in s.exec(select(ScheduledAction).where(
            ScheduledAction.group_id == g.group_id).order_by(ScheduledAction.name))]


def delete(db: Database, caller, group_name: str, name: str) -> None:
    with db.session() as s:
        g = autoscaling.get(s, caller, group_name)
        a = group_rows.find(s, ScheduledAction, g, name)
        if a is None:
            raise NotFound(f"Scheduled action {name} not found for group {g.name}",
                           code=VALIDATION)
        s.delete(a)


# -- evaluation ----------------------------------------------------------------------------------
def _apply(s: Session, g: AutoScalingGroup, a: ScheduledAction, occ: datetime,
           now: datetime) -> None:
    """Set the action's min / max / desired (desired follows a new min or max, as an update)."""
    lo = g.min_size if a.min_size is None else a.min_size
    hi = g.max_size if a.max_size is None else a.max_size
    desired = a.desired_capacity
    if desired is None:
        desired = min(max(g.desired_capacity, lo), hi)
    check_capacity(lo, hi, desired)
    before = g.desired_capacity
    g.min_size, g.max_size = lo, hi
    autoscaling.set_desired(s, g, desired, now)
    autoscaling.record_change(
        s, g, before, f"At {occ:%Y-%m-%dT%H:%M:%SZ} the scheduled action {a.name} executed, "
        f"setting min size {lo}, max size {hi}, desired capacity {desired} (was {before}).", now)


def evaluate(db: Database, settings: Settings, gid: str, now: datetime) -> None:
    with db.session(notify=False) as s:
        ids = list(s.exec(select(ScheduledAction.action_id).where(
            ScheduledAction.group_id == gid).order_by(ScheduledAction.name)))
    for aid in ids:  # one transaction per action: the change and its record together
        with db.session() as s:
            a = s.get(ScheduledAction, aid)
            g = s.get(AutoScalingGroup, gid)
            if a is None or g is None or g.status == autoscaling.DELETING:
                continue
            done_until = a.last_occurrence or a.created_at
            if not a.recurrence:  # one-time: due once its start has come; then it goes
                occ = a.start_time if a.start_time and done_until < a.start_time <= now \
                    else None
            else:
                occ = due_occurrence(a.recurrence, a.time_zone, done_until=done_until,
                                     now=now, start=a.start_time, end=a.end_time)
            if occ is None:
                continue
            if a.recurrence:
                a.last_occurrence = occ
                s.add(a)
            else:
                s.delete(a)  # with the change below, in this one transaction
            late = (now - occ).total_seconds()
            if late > settings.autoscaling_schedule_grace_s:
                s.add(ScalingActivity(
                    activity_id=new_id("act"), group_id=g.group_id, account_id=g.account_id,
                    kind="capacity", status_code="Cancelled", start_time=now, end_time=now,
                    description=f"Skipping the scheduled action {a.name}",
                    cause=f"The occurrence at {occ:%Y-%m-%dT%H:%M:%SZ} was missed by "
                          f"{late:.0f} s, more than the grace of "
                          f"{settings.autoscaling_schedule_grace_s:.0f} s."))
                continue
            try:
                _apply(s, g, a, occ, now)
            except KumoError as e:  # e.g. desired outside the group's bounds: recorded, done
                s.add(ScalingActivity(
                    activity_id=new_id("act"), group_id=g.group_id, account_id=g.account_id,
                    kind="capacity", status_code="Failed", start_time=now, end_time=now,
                    description=f"Executing the scheduled action {a.name}",
                    cause=f"The occurrence at {occ:%Y-%m-%dT%H:%M:%SZ}",
                    status_message=f"{e.code}: {e.message}"[:1024]))
