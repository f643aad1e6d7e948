"""Step and simple scaling policies (EC2 Auto Scaling PutScalingPolicy with policy_type
StepScaling / SimpleScaling): put / describe / delete, ARN resolution for alarm actions, and
execute(), what an alarm's action does (services/alarm_controller.py calls it inside the
transaction that records the alarm's evaluation, so the change and its record commit together).

Execution: simple scaling waits for its cooldown (the policy's, else the group's
default_cooldown) after the group's last scaling change; step scaling picks the step the
alarm's metric value falls in (bounds relative to the alarm threshold) and counts capacity
still launching or warming up as already there (services/step_rules.py new_capacity). Every
change goes through autoscaling.set_desired, clamped to [min, max], and is an activity whose
cause names the alarm and the policy.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import Session, select

from controller.db import Database
from controller.errors import InvalidParameter
from controller.ids import new_id, utcnow
from controller.models.autoscaling import AutoScalingGroup, AutoScalingInstance
from controller.models.autoscaling_policies import PolicyPublic, PolicyPut, ScalingPolicy
from controller.models.step_policies import (ADJUSTMENT_TYPES, AGGREGATION_TYPES,
                                             StepAdjustment, StepScalingPolicy)
from controller.services import autoscaling, group_rows
from controller.services.autoscaling_rules import VALIDATION
from controller.services.scaling_rules import check_name
from controller.services.step_rules import check_steps, new_capacity, pick_step

ARN_PREFIX = "arn:kumo:autoscaling::"


def policy_arn(g: AutoScalingGroup, policy_id: str, name: str) -> str:
    return (f"{ARN_PREFIX}{g.account_id}:scalingPolicy:{policy_id}:"
            f"autoScalingGroupName/{g.name}:policyName/{name}")


def _bad(message: str) -> InvalidParameter:
    return InvalidParameter(message, code=VALIDATION)


def _check(body: PolicyPut) -> dict:
    """The policy's stored fields, or ValidationError: the fields of the other types must be
    absent (a mixed request is a mistake, not something to ignore)."""
    simple = body.policy_type == "SimpleScaling"
    if body.target_tracking_configuration is not None or body.scale_in_period is not None:
        raise _bad(f"{body.policy_type} takes no target tracking configuration")
    if body.adjustment_type not in ADJUSTMENT_TYPES:
        raise _bad(f"adjustment_type must be one of {', '.join(ADJUSTMENT_TYPES)}")
    if (body.min_adjustment_magnitude is not None
            and body.adjustment_type != "PercentChangeInCapacity"):
        raise _bad("min_adjustment_magnitude is only valid with PercentChangeInCapacity")
    steps: list[dict] = []
    if simple:
        if body.scaling_adjustment is None:
            raise _bad("SimpleScaling needs scaling_adjustment")
        if body.step_adjustments is not None or body.metric_aggregation_type is not None \
                or body.estimated_instance_warmup is not None:
            raise _bad("SimpleScaling takes no step_adjustments, metric_aggregation_type or "
                       "estimated_instance_warmup")
        adjustments = [body.scaling_adjustment]
    else:
        if body.scaling_adjustment is not None or body.cooldown is not None:
            raise _bad("StepScaling takes step_adjustments, not scaling_adjustment or cooldown")
        steps = check_steps([a.model_dump() for a in body.step_adjustments or []])
        if body.metric_aggregation_type not in (None, *AGGREGATION_TYPES):
            raise _bad(f"metric_aggregation_type must be one of {', '.join(AGGREGATION_TYPES)}")
        adjustments = [a["scaling_adjustment"] for a in steps]
    if body.adjustment_type == "ExactCapacity" and any(a < 0 for a in adjustments):
        raise _bad("An ExactCapacity adjustment cannot be negative")
    return dict(policy_type=body.policy_type, adjustment_type=body.adjustment_type,
                min_adjustment_magnitude=body.min_adjustment_magnitude,
                scaling_adjustment=body.scaling_adjustment,
                cooldown=body.cooldown if simple else None, step_adjustments=steps,
                metric_aggregation_type=None if simple else (body.metric_aggregation_type
                                                             or "Average"),
                estimated_instance_warmup=None if simple else body.estimated_instance_warmup)


def public(g: AutoScalingGroup, p: StepScalingPolicy, refs: dict) -> PolicyPublic:
    arn = policy_arn(g, p.policy_id, p.name)
    return PolicyPublic(
        policy_name=p.name, policy_arn=arn, auto_scaling_group_name=g.name,
        policy_type=p.policy_type, adjustment_type=p.adjustment_type,
        min_adjustment_magnitude=p.min_adjustment_magnitude,
        scaling_adjustment=p.scaling_adjustment, cooldown=p.cooldown,
        step_adjustments=([StepAdjustment(**a) for a in p.step_adjustments]
                          if p.policy_type == "StepScaling" else None),
        metric_aggregation_type=p.metric_aggregation_type,
        estimated_instance_warmup=p.estimated_instance_warmup, alarms=refs.get(arn, []))


def put(db: Database, caller, group_name: str, name: str, body: PolicyPut,
        attached: Callable[[Session, str], dict]) -> PolicyPublic:
    """Create or replace; attached(s, account) -> {policy ARN: alarm refs} (services/alarms.py,
    passed in: alarms resolves its actions with this module, so it cannot be imported here)."""
    fields = _check(body)
    check_name(name, "policy")
    with db.session() as s:
        g = autoscaling.get(s, caller, group_name)
        p = group_rows.upsert(s, StepScalingPolicy, g, name, lambda: StepScalingPolicy(
            policy_id=new_id("pol"), group_id=g.group_id, account_id=g.account_id, name=name,
            created_at=utcnow(), **fields))
        for k, v in fields.items():
            setattr(p, k, v)
        old = group_rows.find(s, ScalingPolicy, g, name)
        if old is not None:  # a put replaces a target tracking policy of the same name
            s.delete(old)
        s.add(p)
        s.flush()
        return public(g, p, attached(s, g.account_id))


def describe(s: Session, g: AutoScalingGroup, refs: dict) -> list[PolicyPublic]:
    return [public(g, p, refs) for p in s.exec(select(StepScalingPolicy).where(
        StepScalingPolicy.group_id == g.group_id))]


def drop_named(s: Session, g: AutoScalingGroup, name: str) -> bool:
    """Delete the group's step or simple policy of that name; -> whether there was one."""
    p = group_rows.find(s, StepScalingPolicy, g, name)
    if p is not None:
        s.delete(p)
    return p is not None


def resolve(s: Session, account_id: str, arn: str) -> tuple[AutoScalingGroup,
                                                            StepScalingPolicy] | None:
    """The step or simple policy an ARN names, of that account; None: none (unknown,
    malformed, another account's, or a target tracking policy)."""
    parts = arn.split(":")
    if not arn.startswith(ARN_PREFIX) or len(parts) != 9 or parts[4] != account_id \
            or parts[5] != "scalingPolicy":
        return None
    p = s.get(StepScalingPolicy, parts[6])
    if p is None or p.account_id != account_id:
        return None
    g = s.get(AutoScalingGroup, p.group_id)
    return None if g is None else (g, p)


# -- execution -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """What one invocation did, for the alarm's history."""

    changed: bool
    summary: str


def _warming(s: Session, g: AutoScalingGroup, p: StepScalingPolicy, now: datetime) -> int:
    """Capacity asked for but not ready: desired minus members InService past the warmup."""
    warmup = next((v for v in (p.estimated_instance_warmup, g.default_instance_warmup)
                   if v is not None), g.default_cooldown)
    ready = s.exec(select(AutoScalingInstance).where(
        AutoScalingInstance.group_id == g.group_id,
        AutoScalingInstance.lifecycle_state == "InService")).all()
    n = sum(1 for m in ready if now >= m.launched_at + timedelta(seconds=warmup))
    return max(0, g.desired_capacity - n)


def execute(s: Session, arn: str, account_id: str, alarm_name: str, state: str,
            threshold: float, value: float | None, now: datetime) -> Outcome:
    """Run the policy an alarm action names; the caller's transaction commits it."""
    found = resolve(s, account_id, arn)
    if found is None:
        return Outcome(False, f"Failed to execute action {arn}: the policy does not exist")
    g, p = found
    if g.status == autoscaling.DELETING:
        return Outcome(False, f"Failed to execute action {arn}: the group is being deleted")
    if p.policy_type == "SimpleScaling":
        cooldown = g.default_cooldown if p.cooldown is None else p.cooldown
        if g.last_scaling_at is not None and (now - g.last_scaling_at).total_seconds() < cooldown:
            return Outcome(False, f"Policy {p.name} not executed: the group is in its cooldown "
                                  f"({cooldown} s)")
        adjustment, warming = p.scaling_adjustment, 0
        step_note = ""
    else:
        if value is None:
            return Outcome(False, f"Policy {p.name} not executed: no metric value")
        step = pick_step(p.step_adjustments, value, threshold)
        if step is None:
            return Outcome(False, f"Policy {p.name} not executed: no step adjustment for the "
                                  f"metric value {value:g}")
        adjustment, warming = step["scaling_adjustment"], _warming(s, g, p, now)
        step_note = f" (metric value {value:g}, threshold {threshold:g})"
    before = g.desired_capacity
    wanted = new_capacity(adjustment_type=p.adjustment_type, adjustment=adjustment,
                          min_magnitude=p.min_adjustment_magnitude, desired=before,
                          warming=warming, min_size=g.min_size, max_size=g.max_size)
    if not autoscaling.set_desired(s, g, wanted, now):
        return Outcome(False, f"Policy {p.name} executed: the desired capacity stays "
                              f"{before}{step_note}")
    p.last_run_at = now
    s.add(p)
    autoscaling.record_change(
        s, g, before, f"At {now:%Y-%m-%dT%H:%M:%SZ} a monitor alarm {alarm_name} in state "
        f"{state} triggered policy {p.name} changing the desired capacity from {before} to "
        f"{g.desired_capacity}{step_note}.", now)
    return Outcome(True, f"Policy {p.name} changed the desired capacity from {before} to "
                         f"{g.desired_capacity}{step_note}")
