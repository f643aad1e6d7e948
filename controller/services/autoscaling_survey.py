"""Which Auto Scaling groups have work in a group controller pass: one read per tick.

The pass (controller/services/autoscaling_controller.py) used to run every step for every
group, each step in its own session: with 1,000 groups that is ~20 statements per group every
autoscaling_interval_s, nearly all of them finding nothing to do. survey() reads, in one
transaction, what each step looks at (launch activities in progress, members and their
instances, policies, scheduled actions, capacity against desired) and says per group which
steps have work. It only decides what to *skip*: each step still reads its own rows fresh and
decides as before, so a survey that says "work" where there is none costs a step that does
nothing, never a wrong action.

Also here: the health rule (unhealthy_reason), which both the survey and the pass apply.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

from sqlmodel import Session, select

from controller.models.autoscaling import AutoScalingGroup, AutoScalingInstance, ScalingActivity
from controller.models.autoscaling_policies import ScalingPolicy, ScheduledAction
from controller.models.instance import Instance
from controller.services import autoscaling
from controller.services.scaling_rules import next_occurrence


def unhealthy_reason(inst, in_grace: bool) -> str | None:
    """Why a member's instance (an Instance, or any row with its state, instance_status and
    system_status; None: gone) is unhealthy, or None (pure)."""
    if inst is None or inst.state in ("shutting-down", "terminated"):
        return "the instance was terminated outside the group"  # never comes back: no grace
    if in_grace:
        return None
    if inst.state in ("stopping", "stopped"):
        return f"the instance is {inst.state}"
    if inst.instance_status == "impaired":
        return "the instance's status check failed (impaired)"
    if inst.system_status not in ("ok", "initializing"):
        return f"the instance's system status is {inst.system_status}"
    return None


def needs_judging(lifecycle_state: str, inst, in_grace: bool) -> bool:
    """A live member the health step would act on: unhealthy, or Pending and running."""
    if unhealthy_reason(inst, in_grace) is not None:
        return True
    return lifecycle_state == "Pending" and inst.state == "running"


@dataclass
class GroupWork:
    """What one group's pass has to do, as the survey saw it."""

    launching: bool = False  # launch activities InProgress (step 1)
    terminating: bool = False  # Terminating members (step 2)
    judging: bool = False  # live members the health step acts on (step 3)
    schedule_due: bool = False  # a scheduled action with an occurrence due
    policies: bool = False  # target tracking policies: evaluated every pass
    off_capacity: bool = False  # capacity != desired, or a forced delete to finish (step 4)
    capacity: int = 0  # Pending + InService members + launches in progress


# next_occurrence parses the cron expression each call (~0.1 ms); the answer for one action
# stays the same from one tick to the next until the action fires or changes, so a tick over
# many actions mostly hits this cache.
@lru_cache(maxsize=16384)
def _next_after(expr: str, zone: str, after: datetime) -> datetime:
    return next_occurrence(expr, zone, after)


def schedule_due(a, now: datetime) -> bool:
    """Has the action an occurrence in (last handled, now] inside [start, end]? The same
    window as scaling_rules.due_occurrence (which scheduled_actions.evaluate applies); only
    whether one exists, not which. An expression that cannot be evaluated counts as due, so
    evaluate() meets it (and reports it) as before."""
    done_until = a.last_occurrence or a.created_at
    if not a.recurrence:  # a one-time action (recurrence ""): its start is its one occurrence
        return a.start_time is not None and done_until < a.start_time <= now
    lo = max(done_until, a.start_time - timedelta(microseconds=1)) if a.start_time else done_until
    hi = min(now, a.end_time) if a.end_time else now
    if hi <= lo:
        return False
    try:
        return _next_after(a.recurrence, a.time_zone, lo) <= hi
    except Exception:
        return True


def survey(s: Session, now: datetime) -> dict[str, GroupWork]:
    """Every group (group_id -> its work), in one transaction of a few statements."""
    groups = {gid: (status, desired, grace) for gid, status, desired, grace in s.exec(select(
        AutoScalingGroup.group_id, AutoScalingGroup.status, AutoScalingGroup.desired_capacity,
        AutoScalingGroup.health_check_grace_period))}
    work = {gid: GroupWork() for gid in groups}
    capacity = dict.fromkeys(groups, 0)
    for gid in s.exec(select(ScalingActivity.group_id).where(
            ScalingActivity.kind == "launch", ScalingActivity.status_code == "InProgress")):
        if gid in work:
            work[gid].launching = True
            capacity[gid] += 1
    # Members with their instances (None: the instance row is gone).
    rows = s.exec(select(AutoScalingInstance.group_id, AutoScalingInstance.lifecycle_state,
                         AutoScalingInstance.launched_at, Instance.instance_id, Instance.state,
                         Instance.instance_status, Instance.system_status)
                  .join(Instance, Instance.instance_id == AutoScalingInstance.instance_id,
                        isouter=True))
    for row in rows:
        w = work.get(row.group_id)
        if w is None:
            continue
        if row.lifecycle_state == "Terminating":
            w.terminating = True
        elif row.lifecycle_state in autoscaling.LIVE:
            capacity[row.group_id] += 1
            if not w.judging:
                grace = groups[row.group_id][2]
                in_grace = now < row.launched_at + timedelta(seconds=grace)
                inst = row if row.instance_id is not None else None
                w.judging = needs_judging(row.lifecycle_state, inst, in_grace)
    for gid in set(s.exec(select(ScalingPolicy.group_id))):
        if gid in work:
            work[gid].policies = True
    for a in s.exec(select(ScheduledAction)):
        w = work.get(a.group_id)
        if w is not None and not w.schedule_due:
            w.schedule_due = schedule_due(a, now)
    for gid, (status, desired, _) in groups.items():
        work[gid].capacity = capacity[gid]
        work[gid].off_capacity = (capacity[gid] != desired or status == autoscaling.DELETING)
    return work
