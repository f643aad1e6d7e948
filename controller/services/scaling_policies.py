"""Target tracking scaling policies of Auto Scaling groups: put / describe / delete, and their
evaluation in the group controller's pass (controller/services/autoscaling_controller.py calls
evaluate() for each group before it converges capacity).

An evaluation averages the group's CPU over the last autoscaling_metric_window_s of raw samples
(controller/models/metric.py), leaving out members still warming up, and applies the pure rule
services/scaling_rules.py target_tracking; a change goes through autoscaling.set_desired and is
an activity with its cause. With several policies, scale out follows the largest ask and scale
in happens only when every policy agrees (as EC2 Auto Scaling).
"""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func
from sqlmodel import Session, select

from controller.db import Database
from controller.errors import InvalidParameter, NotFound
from controller.ids import new_id, utcnow
from controller.models.autoscaling import AutoScalingGroup, AutoScalingInstance
from controller.models.autoscaling_policies import (PREDEFINED_METRICS, PolicyPublic, PolicyPut,
                                                    PredefinedMetricSpec, ScalingPolicy,
                                                    TargetTrackingConfiguration)
from controller.models.metric import MetricDatum
from controller.services import autoscaling
from controller.services.autoscaling_rules import VALIDATION
from controller.services.scaling_rules import check_name, check_target, target_tracking
from controller.settings import Settings

CPU = "CPUUtilization"


def _public(g: AutoScalingGroup, p: ScalingPolicy) -> PolicyPublic:
    return PolicyPublic(
        policy_name=p.name, auto_scaling_group_name=g.name, policy_type=p.policy_type,
        policy_arn=f"arn:kumo:autoscaling::{g.account_id}:scalingPolicy:{p.policy_id}:"
                   f"autoScalingGroupName/{g.name}:policyName/{p.name}",
        target_tracking_configuration=TargetTrackingConfiguration(
            predefined_metric_specification=PredefinedMetricSpec(
                predefined_metric_type=p.metric_type),
            target_value=p.target_value, disable_scale_in=p.disable_scale_in),
        estimated_instance_warmup=p.estimated_instance_warmup,
        scale_in_period=p.scale_in_period)


def _get(s: Session, g: AutoScalingGroup, name: str) -> ScalingPolicy:
    p = s.exec(select(ScalingPolicy).where(ScalingPolicy.group_id == g.group_id,
                                           ScalingPolicy.name == name)).first()
    if p is None:
        raise NotFound(f"Policy {name} not found for group {g.name}", code=VALIDATION)
    return p


def put(db: Database, caller, group_name: str, name: str, body: PolicyPut) -> PolicyPublic:
    """Create or replace (EC2 PutScalingPolicy)."""
    if body.policy_type != "TargetTrackingScaling":
        raise InvalidParameter(f"Unsupported policy type {body.policy_type}: Kumo has "
                               "TargetTrackingScaling", code=VALIDATION)
    cfg = body.target_tracking_configuration
    metric = cfg.predefined_metric_specification.predefined_metric_type
    if metric not in PREDEFINED_METRICS:
        raise InvalidParameter(f"Unknown predefined metric type {metric}; known: "
                               + ", ".join(PREDEFINED_METRICS), code=VALIDATION)
    check_target(cfg.target_value)
    check_name(name, "policy")
    with db.session() as s:
        g = autoscaling.get(s, caller, group_name)
        p = s.exec(select(ScalingPolicy).where(ScalingPolicy.group_id == g.group_id,
                                               ScalingPolicy.name == name)).first()
        if p is None:
            p = ScalingPolicy(policy_id=new_id("pol"), group_id=g.group_id,
                              account_id=g.account_id, name=name, created_at=utcnow(),
                              policy_type=body.policy_type, metric_type=metric,
                              target_value=cfg.target_value)
        p.policy_type, p.metric_type, p.target_value = body.policy_type, metric, cfg.target_value
        p.disable_scale_in = cfg.disable_scale_in
        p.estimated_instance_warmup = body.estimated_instance_warmup
        p.scale_in_period = body.scale_in_period
        p.below_since = None
        s.add(p)
        s.flush()
        return _public(g, p)


def describe(db: Database, caller, group_name: str) -> list[PolicyPublic]:
    with db.session(notify=False) as s:
        g = autoscaling.get(s, caller, group_name)
        return [_public(g, p) for p in s.exec(select(ScalingPolicy).where(
            ScalingPolicy.group_id == g.group_id).order_by(ScalingPolicy.name))]


def delete(db: Database, caller, group_name: str, name: str) -> None:
    with db.session() as s:
        g = autoscaling.get(s, caller, group_name)
        s.delete(_get(s, g, name))


# -- evaluation ----------------------------------------------------------------------------------
def warmup_s(g: AutoScalingGroup, p: ScalingPolicy) -> int:
    """The policy's warmup, else the group's default instance warmup, else its cooldown."""
    for v in (p.estimated_instance_warmup, g.default_instance_warmup):
        if v is not None:
            return v
    return g.default_cooldown


def group_cpu(s: Session, ids: list[str], now: datetime, window_s: float) -> float | None:
    """Average CPU of these instances' raw samples in (now - window, now]; None: no data."""
    if not ids:
        return None
    hi = int(now.timestamp() * 1000)
    lo = hi - int(window_s * 1000)
    avg = s.exec(select(func.avg(MetricDatum.value)).where(
        MetricDatum.instance_id.in_(ids), MetricDatum.metric_name == CPU,
        MetricDatum.ts > lo, MetricDatum.ts <= hi)).one()
    return None if avg is None else float(avg)


def evaluate(db: Database, settings: Settings, gid: str, now: datetime) -> None:
    with db.session() as s:
        g = s.get(AutoScalingGroup, gid)
        policies = list(s.exec(select(ScalingPolicy).where(ScalingPolicy.group_id == gid)
                               .order_by(ScalingPolicy.name)))
        if g is None or g.status == autoscaling.DELETING or not policies:
            return
        live = list(s.exec(select(AutoScalingInstance).where(
            AutoScalingInstance.group_id == gid,
            AutoScalingInstance.lifecycle_state.in_(autoscaling.LIVE))))
        in_cooldown = g.last_scaling_at is not None and (
            now - g.last_scaling_at).total_seconds() < g.default_cooldown
        asks = []
        for p in policies:
            # Warming: launched less than the warmup ago, or not yet running (Pending).
            ready = [m.instance_id for m in live if m.lifecycle_state == "InService" and
                     now >= m.launched_at + timedelta(seconds=warmup_s(g, p))]
            metric = group_cpu(s, ready, now, settings.autoscaling_metric_window_s)
            below_for = (now - p.below_since).total_seconds() if p.below_since else None
            d = target_tracking(desired=g.desired_capacity, min_size=g.min_size,
                                max_size=g.max_size, measured=len(ready),
                                warming=len(live) - len(ready), metric=metric,
                                target=p.target_value, disable_scale_in=p.disable_scale_in,
                                below_for_s=below_for,
                                scale_in_period_s=(settings.autoscaling_scale_in_period_s
                                                   if p.scale_in_period is None
                                                   else p.scale_in_period),
                                in_cooldown=in_cooldown)
            if d.below and p.below_since is None:
                p.below_since = now
            elif not d.below and p.below_since is not None:
                p.below_since = None
            s.add(p)
            asks.append((p, d))
        outs = [(p, d) for p, d in asks if d.desired is not None and d.desired > g.desired_capacity]
        ins = [(p, d) for p, d in asks if d.desired is not None and d.desired < g.desired_capacity]
        if outs:
            p, d = max(outs, key=lambda pd: pd[1].desired)
        elif ins and len(ins) == len(asks):
            p, d = max(ins, key=lambda pd: pd[1].desired)  # the smallest scale in
        else:
            return
        before = g.desired_capacity
        if autoscaling.set_desired(s, g, d.desired, now):
            for q in policies:
                q.below_since = None  # a new capacity: the sustained low starts again
                s.add(q)
            autoscaling.record_change(
                s, g, before, f"At {now:%Y-%m-%dT%H:%M:%SZ} a monitor alarm "
                f"TargetTracking-{g.name}-{p.name} was in state ALARM: {d.reason}, "
                f"triggered policy {p.name} changing the desired capacity from {before} to "
                f"{g.desired_capacity}.", now)
