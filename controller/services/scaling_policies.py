"""Scaling policies of Auto Scaling groups: put / describe / delete of all three types (step
and simple ones are kept and run by services/step_scaling.py), and target tracking's
evaluation in the group controller's pass (controller/services/autoscaling_controller.py
calls evaluate_all() once per tick, after the groups' other steps and before it converges
capacity; evaluate() is the one-group evaluation, which evaluate_all() runs only for the groups
its batched read found changing).

An evaluation averages the group's CPU over the last autoscaling_metric_window_s of raw samples
(controller/models/metric.py), leaving out members still warming up, and applies the pure rule
services/scaling_rules.py target_tracking; a change goes through autoscaling.set_desired and is
an activity with its cause. With several policies, scale out follows the largest ask and scale
in happens only when every policy agrees (as EC2 Auto Scaling).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
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
from controller.models.step_policies import STEP_TYPES
from controller.services import alarms, autoscaling, group_rows, step_scaling
from controller.services.autoscaling_rules import VALIDATION
from controller.services.scaling_rules import check_name, check_target, target_tracking
from controller.settings import Settings

log = logging.getLogger(__name__)
CPU = "CPUUtilization"


def _public(g: AutoScalingGroup, p: ScalingPolicy, refs: dict) -> PolicyPublic:
    arn = step_scaling.policy_arn(g, p.policy_id, p.name)
    return PolicyPublic(
        policy_name=p.name, auto_scaling_group_name=g.name, policy_type=p.policy_type,
        policy_arn=arn, alarms=refs.get(arn, []),
        target_tracking_configuration=TargetTrackingConfiguration(
            predefined_metric_specification=PredefinedMetricSpec(
                predefined_metric_type=p.metric_type),
            target_value=p.target_value, disable_scale_in=p.disable_scale_in),
        estimated_instance_warmup=p.estimated_instance_warmup,
        scale_in_period=p.scale_in_period)


def _get(s: Session, g: AutoScalingGroup, name: str) -> ScalingPolicy:
    p = group_rows.find(s, ScalingPolicy, g, name)
    if p is None:
        raise NotFound(f"Policy {name} not found for group {g.name}", code=VALIDATION)
    return p


def put(db: Database, caller, group_name: str, name: str, body: PolicyPut) -> PolicyPublic:
    """Create or replace (EC2 PutScalingPolicy); step and simple policies go to
    services/step_scaling.py."""
    if body.policy_type in STEP_TYPES:
        return step_scaling.put(db, caller, group_name, name, body, alarms.attached)
    if body.policy_type != "TargetTrackingScaling":
        raise InvalidParameter(f"Unsupported policy type {body.policy_type}: Kumo has "
                               "TargetTrackingScaling, StepScaling and SimpleScaling",
                               code=VALIDATION)
    cfg = body.target_tracking_configuration
    if cfg is None:
        raise InvalidParameter("A target tracking policy needs target_tracking_configuration",
                               code=VALIDATION)
    metric = cfg.predefined_metric_specification.predefined_metric_type
    if metric not in PREDEFINED_METRICS:
        raise InvalidParameter(f"Unknown predefined metric type {metric}; known: "
                               + ", ".join(PREDEFINED_METRICS), code=VALIDATION)
    check_target(cfg.target_value)
    check_name(name, "policy")
    with db.session() as s:
        g = autoscaling.get(s, caller, group_name)
        p = group_rows.upsert(s, ScalingPolicy, g, name, lambda: ScalingPolicy(
            policy_id=new_id("pol"), group_id=g.group_id, account_id=g.account_id, name=name,
            created_at=utcnow(), policy_type=body.policy_type, metric_type=metric,
            target_value=cfg.target_value))
        step_scaling.drop_named(s, g, name)  # a put replaces a policy of another type
        p.policy_type, p.metric_type, p.target_value = body.policy_type, metric, cfg.target_value
        p.disable_scale_in = cfg.disable_scale_in
        p.estimated_instance_warmup = body.estimated_instance_warmup
        p.scale_in_period = body.scale_in_period
        p.below_since = None
        s.add(p)
        s.flush()
        return _public(g, p, alarms.attached(s, g.account_id))


def describe(db: Database, caller, group_name: str) -> list[PolicyPublic]:
    """Every policy of the group, of all three types, by name, each with its alarms."""
    with db.session(notify=False) as s:
        g = autoscaling.get(s, caller, group_name)
        refs = alarms.attached(s, g.account_id)
        out = [_public(g, p, refs) for p in s.exec(select(ScalingPolicy).where(
            ScalingPolicy.group_id == g.group_id))]
        out += step_scaling.describe(s, g, refs)
        return sorted(out, key=lambda p: p.policy_name)


def delete(db: Database, caller, group_name: str, name: str) -> None:
    with db.session() as s:
        g = autoscaling.get(s, caller, group_name)
        if not step_scaling.drop_named(s, g, name):
            s.delete(_get(s, g, name))


# -- evaluation ----------------------------------------------------------------------------------
def warmup_s(g: AutoScalingGroup, p: ScalingPolicy) -> int:
    """The policy's warmup, else the group's default instance warmup, else its cooldown."""
    for v in (p.estimated_instance_warmup, g.default_instance_warmup):
        if v is not None:
            return v
    return g.default_cooldown


def _window_ms(now: datetime, window_s: float) -> tuple[int, int]:
    hi = int(now.timestamp() * 1000)
    return hi - int(window_s * 1000), hi


def group_cpu(s: Session, ids: list[str], now: datetime, window_s: float) -> float | None:
    """Average CPU of these instances' raw samples in (now - window, now]; None: no data."""
    if not ids:
        return None
    lo, hi = _window_ms(now, window_s)
    avg = s.exec(select(func.avg(MetricDatum.value)).where(
        MetricDatum.instance_id.in_(ids), MetricDatum.metric_name == CPU,
        MetricDatum.ts > lo, MetricDatum.ts <= hi)).one()
    return None if avg is None else float(avg)


def _decide(settings: Settings, g: AutoScalingGroup, policies: list, live: list,
            cpu: Callable[[list[str]], float | None], now: datetime) -> tuple[list, tuple | None]:
    """The evaluation of one group, pure given its rows and cpu (ready instance ids -> their
    average CPU, None: no data). -> ([(policy, Decision)] in policy name order, the (policy,
    Decision) that moves desired capacity or None). Shared by evaluate() and evaluate_all(),
    so the one-group and the batched reads cannot decide differently."""
    in_cooldown = g.last_scaling_at is not None and (
        now - g.last_scaling_at).total_seconds() < g.default_cooldown
    asks = []
    for p in policies:
        # Warming: launched less than the warmup ago, or not yet running (Pending).
        ready = [m.instance_id for m in live if m.lifecycle_state == "InService" and
                 now >= m.launched_at + timedelta(seconds=warmup_s(g, p))]
        below_for = (now - p.below_since).total_seconds() if p.below_since else None
        d = target_tracking(desired=g.desired_capacity, min_size=g.min_size,
                            max_size=g.max_size, measured=len(ready),
                            warming=len(live) - len(ready), metric=cpu(ready),
                            target=p.target_value, disable_scale_in=p.disable_scale_in,
                            below_for_s=below_for,
                            scale_in_period_s=(settings.autoscaling_scale_in_period_s
                                               if p.scale_in_period is None
                                               else p.scale_in_period),
                            in_cooldown=in_cooldown)
        asks.append((p, d))
    outs = [(p, d) for p, d in asks if d.desired is not None and d.desired > g.desired_capacity]
    ins = [(p, d) for p, d in asks if d.desired is not None and d.desired < g.desired_capacity]
    if outs:
        return asks, max(outs, key=lambda pd: pd[1].desired)
    if ins and len(ins) == len(asks):
        return asks, max(ins, key=lambda pd: pd[1].desired)  # the smallest scale in
    return asks, None


def evaluate(db: Database, settings: Settings, gid: str, now: datetime) -> None:
    """Evaluate one group's policies and write what changes, in one transaction of its own
    (fresh reads). evaluate_all() calls it for the groups its batched read found changing."""
    with db.session() as s:
        g = s.get(AutoScalingGroup, gid)
        policies = list(s.exec(select(ScalingPolicy).where(ScalingPolicy.group_id == gid)
                               .order_by(ScalingPolicy.name)))
        if g is None or g.status == autoscaling.DELETING or not policies:
            return
        live = list(s.exec(select(AutoScalingInstance).where(
            AutoScalingInstance.group_id == gid,
            AutoScalingInstance.lifecycle_state.in_(autoscaling.LIVE))))
        asks, pick = _decide(settings, g, policies, live, lambda ids: group_cpu(
            s, ids, now, settings.autoscaling_metric_window_s), now)
        for p, d in asks:
            if d.below and p.below_since is None:
                p.below_since = now
            elif not d.below and p.below_since is not None:
                p.below_since = None
            s.add(p)
        if pick is None:
            return
        p, d = pick
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


def _changes(asks: list, pick: tuple | None) -> bool:
    """Would evaluate() write anything: a new desired capacity, or a policy whose sustained
    low starts or ends (below_since)?"""
    return pick is not None or any(d.below != (p.below_since is not None) for p, d in asks)


def evaluate_all(db: Database, settings: Settings, gids: list[str], now: datetime) -> list[str]:
    """Evaluate these groups' policies in one read for all of them (the group controller's
    tick: bench/bench_autoscaling.py measured ~3.4 ms and 6 statements per group one by one,
    1.7 s of a 1,000-group tick). Reads, in one transaction, every policy-bearing group, its
    policies, its live members and the CPU sum and count of each InService member over the
    window (one GROUP BY, combined per group and warmup in Python: the average of a set of
    instances is the sum of their sums over the sum of their counts, as AVG over their rows).
    Groups whose evaluation would change nothing (nearly all, nearly always) cost nothing more;
    each changing one is evaluate()d in its own transaction, which reads its rows fresh and
    decides again (so the batch only decides what to skip), and one failing never stops the
    others. -> the group ids that failed (logged)."""
    wanted = set(gids)
    if not wanted:
        return []
    lo, hi = _window_ms(now, settings.autoscaling_metric_window_s)
    bearing = select(ScalingPolicy.group_id).distinct()
    m, d = AutoScalingInstance, MetricDatum
    with db.session(notify=False) as s:
        groups = {g.group_id: g for g in s.exec(select(AutoScalingGroup).where(
            AutoScalingGroup.group_id.in_(bearing))) if g.group_id in wanted}
        policies: dict[str, list[ScalingPolicy]] = {}
        for p in s.exec(select(ScalingPolicy).order_by(ScalingPolicy.group_id,
                                                       ScalingPolicy.name)):
            policies.setdefault(p.group_id, []).append(p)
        live: dict[str, list] = {}
        for row in s.exec(select(m.group_id, m.instance_id, m.lifecycle_state, m.launched_at)
                          .where(m.group_id.in_(bearing), m.lifecycle_state.in_(autoscaling.LIVE))):
            live.setdefault(row.group_id, []).append(row)
        # Only InService members can be ready; the index (instance_id, metric_name, ts) finds
        # each one's window.
        sums = {iid: (total, n) for iid, total, n in s.exec(
            select(d.instance_id, func.sum(d.value), func.count(d.value))
            .join(m, m.instance_id == d.instance_id)
            .where(m.group_id.in_(bearing), m.lifecycle_state == "InService",
                   d.metric_name == CPU, d.ts > lo, d.ts <= hi)
            .group_by(d.instance_id))}

    def cpu(ids: list[str]) -> float | None:
        total = n = 0
        for iid in ids:
            t = sums.get(iid)
            if t is not None:
                total += t[0]
                n += t[1]
        return None if n == 0 else float(total) / n

    changing = []
    for gid, g in groups.items():
        ps = policies.get(gid)
        if g.status == autoscaling.DELETING or not ps:
            continue
        if _changes(*_decide(settings, g, ps, live.get(gid, []), cpu, now)):
            changing.append(gid)
    failed = []
    for gid in changing:
        try:
            evaluate(db, settings, gid, now)
        except Exception:
            log.exception("target tracking evaluation failed for group %s", gid)
            failed.append(gid)
    return failed
