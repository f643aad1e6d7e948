"""The Auto Scaling group controller: one level-triggered pass over database state per group.

Each pass, per group (one group's failure never stops the others):
1. finish launch activities still InProgress (a restart mid-launch): resend the activity's
   stored request, whose client token (group + activity id) makes `instances run` answer the
   instance it already made instead of a second one; record the member.
2. follow Terminating members to terminated (terminate is idempotent; resent after a restart).
3. judge members against their instances: Pending -> InService once running; a member whose
   instance is gone or terminated outside the group is unhealthy at once; one stopped,
   impaired or on a down host once its health check grace period after launch has passed.
   Unhealthy members are terminated (a replacement follows in step 4).
4. compare capacity (Pending + InService members + launches in progress) with desired:
   launch the difference (one activity per instance, spread over the subnets) unless the
   group is in launch backoff, or terminate the difference by the termination policies
   (never protected members). Capacity never goes past desired, and desired <= max.
A failed launch (InsufficientInstanceCapacity, a template whose image went, ...) is a Failed
activity with the error, and the group's launches wait a doubling backoff before the next try.
The clock is a parameter (tests drive it); the pass runs every autoscaling_interval_s
(controller/app.py). A tick first reads once which groups have work for which step
(services/autoscaling_survey.py) and runs only those steps: a group in its steady state (no
policy, nothing due, nothing pending, capacity = desired) costs no statement of its own. Target
tracking policies (between the schedules and step 4) are evaluated for all groups at once: one
read per tick, a transaction only for the groups that change (scaling_policies.evaluate_all). A
group whose pass only evaluated policies or schedules gets step 4 at the end of the tick, and
only if its desired capacity moved (one read for all of them).
"""
from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from sqlmodel import select

from controller import periodic
from controller.db import Database
from controller.errors import KumoError, NotFound
from controller.ids import new_id, utcnow
from controller.models.autoscaling import AutoScalingGroup, AutoScalingInstance, ScalingActivity
from controller.models.instance import Instance, RunInstancesRequest
from controller.services import (autoscaling, group_metrics, instances, launch_templates,
                                 scaling_policies, scheduled_actions)
from controller.services.accounts import Caller
from controller.services.autoscaling_rules import (Member, backoff_s, choose_victim,
                                                   launch_subnet)
# unhealthy_reason: imported here too, where callers have always found it.
from controller.services.autoscaling_survey import GroupWork, survey, unhealthy_reason
from controller.settings import Settings

log = logging.getLogger(__name__)
GROUP_TAG = "aws:autoscaling:groupName"
_pass_lock = threading.Lock()


def _caller(account_id: str) -> Caller:
    return Caller(account_id=account_id, name="autoscaling", is_admin=False)


def client_token(group_id: str, activity_id: str) -> str:
    """The launch's idempotency token: the same for every resend of one activity."""
    return f"{group_id}:{activity_id}"


def tick(db: Database, settings: Settings, now: datetime | None = None) -> dict:
    """One pass over every group; -> counters (launched, terminated, failed, errors)."""
    now = now or utcnow()
    stats = {"launched": 0, "terminated": 0, "failed": 0, "errors": 0}
    with _pass_lock:
        with db.session(notify=False) as s:
            gids = list(s.exec(select(AutoScalingGroup.group_id)))
            # One read says which groups have work: most, most of the time, have none.
            work = survey(s, now)
        everything = GroupWork(launching=True, terminating=True, judging=True,
                               schedule_due=True, policies=True, off_capacity=True)
        work = {gid: work.get(gid) or everything for gid in gids}
        # Per group, steps 1-3 and schedules; then target tracking for every group at once
        # (one read: services/scaling_policies.py evaluate_all); then step 4. A group's steps
        # keep their order; only another group's steps may now run between two of its own,
        # and groups share nothing the steps read.
        ran, done = {}, []
        for gid in gids:
            try:
                ran[gid] = _steps_before_policies(db, settings, gid, now, stats, work[gid])
                done.append(gid)
            except Exception:  # this group's later steps wait for the next pass
                log.exception("auto scaling pass failed for group %s", gid)
                stats["errors"] += 1
        try:
            failed = set(scaling_policies.evaluate_all(
                db, settings, [gid for gid in done if work[gid].policies], now))
        except Exception:  # the batched read: the next pass evaluates again
            log.exception("auto scaling pass failed evaluating target tracking policies")
            failed = set()
            stats["errors"] += 1
        stats["errors"] += len(failed)
        evaluated = []
        for gid in done:
            if gid in failed:
                continue
            w = work[gid]
            if not (ran[gid] or w.off_capacity):
                if w.schedule_due or w.policies:
                    evaluated.append(gid)
                continue
            try:
                _converge(db, settings, gid, now, stats)  # 4
            except Exception:
                log.exception("auto scaling pass failed for group %s", gid)
                stats["errors"] += 1
        _converge_moved(db, settings, evaluated, work, now, stats)
        try:  # the groups' capacity metrics (services/group_metrics.py), once a period
            group_metrics.record(db, now)
        except Exception:
            log.exception("auto scaling pass failed recording group metrics")
            stats["errors"] += 1
    return stats


def _steps_before_policies(db: Database, settings: Settings, gid: str, now: datetime,
                           stats: dict, work: GroupWork) -> bool:
    """Steps 1-3 and the group's scheduled actions, skipping those the survey found nothing
    for. Once one step ran, every later one runs too: it may have made their work (a finished
    launch is a Pending member to judge; a new desired capacity is a difference to converge).
    -> whether a step ran (then step 4 runs too; otherwise whether to converge is left to
    _converge_moved)."""
    ran = work.launching
    if ran:
        with db.session(notify=False) as s:
            pending = list(s.exec(select(ScalingActivity.activity_id).where(
                ScalingActivity.group_id == gid, ScalingActivity.kind == "launch",
                ScalingActivity.status_code == "InProgress")))
        for aid in pending:  # 1
            _finish_launch(db, settings, aid, now, stats)
    if ran or work.terminating:
        _follow_terminations(db, settings, gid, now, stats)  # 2
        ran = True
    if ran or work.judging:
        _judge_health(db, settings, gid, now, stats)  # 3
        ran = True
    # Schedules, then target tracking (in tick, for all groups at once), move desired
    # capacity; step 4 follows in this tick. evaluate() does nothing without due actions.
    if work.schedule_due:
        scheduled_actions.evaluate(db, settings, gid, now)
    return ran


def _converge_moved(db: Database, settings: Settings, gids: list[str],
                    work: dict[str, GroupWork], now: datetime, stats: dict) -> None:
    """Step 4 for the groups whose pass only evaluated policies or schedules: those whose
    desired capacity moved off their capacity (as the survey counted it; nothing else of
    theirs ran since). One read for all of them instead of a converge read per group: most
    evaluations change nothing."""
    if not gids:
        return
    try:
        moved = []
        with db.session(notify=False) as s:
            for i in range(0, len(gids), 500):  # bounded IN lists
                for gid, desired, status in s.exec(select(
                        AutoScalingGroup.group_id, AutoScalingGroup.desired_capacity,
                        AutoScalingGroup.status).where(
                        AutoScalingGroup.group_id.in_(gids[i:i + 500]))):
                    if desired != work[gid].capacity or status == autoscaling.DELETING:
                        moved.append(gid)
    except Exception:  # the next pass converges them: log, never stop the loop here
        log.exception("auto scaling pass failed reading desired capacities")
        stats["errors"] += 1
        return
    for gid in moved:
        try:
            _converge(db, settings, gid, now, stats)
        except Exception:
            log.exception("auto scaling pass failed for group %s", gid)
            stats["errors"] += 1


# -- launches ------------------------------------------------------------------------------------
def _start_launch(db: Database, g: AutoScalingGroup, subnet_id: str, cause: str,
                  now: datetime) -> str | None:
    """Write the launch activity with its exact request (committed before anything launches);
    a template that no longer resolves is a Failed activity at once. -> activity id or None."""
    aid = new_id("act")
    with db.session() as s:
        act = ScalingActivity(activity_id=aid, group_id=g.group_id, account_id=g.account_id,
                              kind="launch", description="Launching a new EC2 instance",
                              cause=cause, start_time=now)
        try:
            req, _, version = launch_templates.resolve(s, _caller(g.account_id),
                                                       g.launch_template_id,
                                                       g.launch_template_version)
        except KumoError as e:
            act.status_code, act.end_time = "Failed", now
            act.description = ("Launching a new EC2 instance.  Status Reason: "
                               + e.message)[:255]
            act.status_message = f"{e.code}: {e.message}"[:1024]
            s.add(act)
            _note_failure(s, g.group_id)
            return None
        tags = {**req.tags, **g.tags}
        req = req.model_copy(update={"subnet_id": subnet_id, "tags": tags, "min_count": 1,
                                     "max_count": 1,
                                     "client_token": client_token(g.group_id, aid)})
        act.request = req.model_dump(mode="json")
        act.launch_template_version = version
        s.add(act)
    return aid


def _finish_launch(db: Database, settings: Settings, aid: str, now: datetime,
                   stats: dict) -> None:
    with db.session(notify=False) as s:
        act = s.get(ScalingActivity, aid)
        g = s.get(AutoScalingGroup, act.group_id)
        req = RunInstancesRequest.model_validate(act.request)
    try:
        _, rows = instances.run(db, settings, _caller(act.account_id), req)
        if not rows:  # a replay long after: its instance ended and was purged meanwhile
            raise KumoError("the instance this launch made no longer exists",
                            code="InstanceGone")
    except KumoError as e:
        if e.retryable and e.code != "InsufficientInstanceCapacity":
            # e.g. another process raced us on this client token: the next pass resends it
            # and gets that launch's answer; marking it Failed could strand its instance.
            stats["errors"] += 1
            return
        with db.session() as s:
            act = s.get(ScalingActivity, aid)
            act.status_code, act.end_time = "Failed", now
            act.description = ("Launching a new EC2 instance.  Status Reason: " + e.message)[:255]
            act.status_message = f"{e.code}: {e.message}"[:1024]
            s.add(act)
            _note_failure(s, act.group_id)
        stats["failed"] += 1
        return
    inst = rows[0]
    with db.session() as s:
        act = s.get(ScalingActivity, aid)
        row = s.get(Instance, inst.instance_id)
        if row is not None and GROUP_TAG not in row.tags:
            row.tags = {**row.tags, GROUP_TAG: g.name}
            s.add(row)
        if s.get(AutoScalingInstance, inst.instance_id) is None:
            s.add(AutoScalingInstance(
                instance_id=inst.instance_id, group_id=g.group_id, account_id=g.account_id,
                lifecycle_state="Pending", health_status="Healthy",
                protected_from_scale_in=g.new_instances_protected_from_scale_in,
                subnet_id=req.subnet_id, launch_template_id=g.launch_template_id,
                launch_template_version=act.launch_template_version or 0, launched_at=now,
                launch_activity_id=aid))
        act.status_code, act.end_time, act.instance_id = "Successful", now, inst.instance_id
        act.description = f"Launching a new EC2 instance: {inst.instance_id}"
        s.add(act)
        grp = s.get(AutoScalingGroup, g.group_id)
        grp.launch_failures, grp.launch_retry_at = 0, None
        s.add(grp)
    stats["launched"] += 1


def _note_failure(s, group_id: str) -> None:
    """Count a failed launch; the pass turns the count into the group's next retry time."""
    g = s.get(AutoScalingGroup, group_id)
    g.launch_failures += 1
    s.add(g)


def _apply_backoff(db: Database, settings: Settings, gid: str, now: datetime) -> None:
    with db.session(notify=False) as s:
        g = s.get(AutoScalingGroup, gid)
        if g.launch_failures and (g.launch_retry_at is None or g.launch_retry_at <= now):
            wait = backoff_s(g.launch_failures, settings.autoscaling_backoff_base_s,
                             settings.autoscaling_backoff_max_s)
            g.launch_retry_at = now + timedelta(seconds=wait)
            s.add(g)


# -- terminations --------------------------------------------------------------------------------
def _start_terminate(db: Database, settings: Settings, m: AutoScalingInstance, cause: str,
                     now: datetime, stats: dict) -> None:
    aid = new_id("act")
    with db.session() as s:
        row = s.get(AutoScalingInstance, m.instance_id)
        if row is None or row.lifecycle_state == "Terminating":
            return
        row.lifecycle_state, row.terminate_activity_id = "Terminating", aid
        s.add(row)
        s.add(ScalingActivity(activity_id=aid, group_id=row.group_id, account_id=row.account_id,
                              kind="terminate", instance_id=row.instance_id,
                              description=f"Terminating EC2 instance: {row.instance_id}",
                              cause=cause, start_time=now))
    stats["terminated"] += 1
    _terminate(db, settings, m.account_id, m.instance_id)


def _terminate(db: Database, settings: Settings, account_id: str, instance_id: str) -> None:
    try:
        instances.terminate(db, settings, _caller(account_id), instance_id)
    except NotFound:
        pass  # already purged: nothing left to terminate


def _follow_terminations(db: Database, settings: Settings, gid: str, now: datetime,
                         stats: dict) -> None:
    with db.session(notify=False) as s:
        members = list(s.exec(select(AutoScalingInstance).where(
            AutoScalingInstance.group_id == gid,
            AutoScalingInstance.lifecycle_state == "Terminating")))
        states = _instance_states(s, [m.instance_id for m in members])
    for m in members:
        state = states.get(m.instance_id)
        if state not in (None, "terminated"):
            if state != "shutting-down":
                _terminate(db, settings, m.account_id, m.instance_id)  # resent after a restart
            continue
        with db.session() as s:  # Terminated: the member goes, its activity succeeds
            row = s.get(AutoScalingInstance, m.instance_id)
            if row is None:
                continue
            act = s.get(ScalingActivity, row.terminate_activity_id or "")
            if act is not None and act.status_code == "InProgress":
                act.status_code, act.end_time = "Successful", now
                s.add(act)
            s.delete(row)


def _instance_states(s, ids: list[str]) -> dict[str, str]:
    if not ids:
        return {}
    return dict(s.exec(select(Instance.instance_id, Instance.state)
                       .where(Instance.instance_id.in_(ids))).all())


# -- health --------------------------------------------------------------------------------------
def _instances(s, ids: list[str]) -> dict[str, Instance]:
    if not ids:
        return {}
    return {i.instance_id: i for i in s.exec(select(Instance)
                                             .where(Instance.instance_id.in_(ids)))}


def _judge_health(db: Database, settings: Settings, gid: str, now: datetime,
                  stats: dict) -> None:
    unhealthy = []
    with db.session(notify=False) as s:
        g = s.get(AutoScalingGroup, gid)
        live = list(s.exec(select(AutoScalingInstance).where(
            AutoScalingInstance.group_id == gid,
            AutoScalingInstance.lifecycle_state.in_(autoscaling.LIVE))))
        insts = _instances(s, [m.instance_id for m in live])  # one query, not one per member
        for m in live:
            inst = insts.get(m.instance_id)
            in_grace = now < m.launched_at + timedelta(seconds=g.health_check_grace_period)
            why = unhealthy_reason(inst, in_grace)
            if why is not None:
                unhealthy.append((m, why))
            elif m.lifecycle_state == "Pending" and inst.state == "running":
                m.lifecycle_state, m.in_service_at = "InService", now
                s.add(m)
    for m, why in unhealthy:
        with db.session(notify=False) as s:
            row = s.get(AutoScalingInstance, m.instance_id)
            row.health_status = "Unhealthy"
            s.add(row)
        _start_terminate(db, settings, m, "an instance was taken out of service in response to "
                         f"a health check: {why}", now, stats)


# -- capacity ------------------------------------------------------------------------------------
def _converge(db: Database, settings: Settings, gid: str, now: datetime, stats: dict) -> None:
    with db.session(notify=False) as s:
        g = s.get(AutoScalingGroup, gid)
        live = list(s.exec(select(AutoScalingInstance).where(
            AutoScalingInstance.group_id == gid,
            AutoScalingInstance.lifecycle_state.in_(autoscaling.LIVE))))
        in_progress = list(s.exec(select(ScalingActivity).where(
            ScalingActivity.group_id == gid, ScalingActivity.kind == "launch",
            ScalingActivity.status_code == "InProgress")))
        left = s.exec(select(AutoScalingInstance.instance_id).where(
            AutoScalingInstance.group_id == gid)).first()
        if g.status == autoscaling.DELETING and not left and not in_progress:
            autoscaling.remove(s, g)
            return
    capacity = len(live) + len(in_progress)
    if capacity < g.desired_capacity:
        if g.launch_retry_at is not None and now < g.launch_retry_at:
            return  # backing off after failed launches
        occupied = [m.subnet_id for m in live] + [a.request.get("subnet_id")
                                                  for a in in_progress]
        cause = (f"an instance was started in response to a difference between desired and "
                 f"actual capacity, increasing the capacity from {capacity} to "
                 f"{g.desired_capacity}")
        for _ in range(g.desired_capacity - capacity):
            subnet = launch_subnet(g.subnet_ids, occupied)
            aid = _start_launch(db, g, subnet, cause, now)
            if aid is None:
                stats["failed"] += 1
                break
            before = stats["launched"]
            _finish_launch(db, settings, aid, now, stats)
            if stats["launched"] == before:
                break  # failed: stop this round, back off
            occupied.append(subnet)
        _apply_backoff(db, settings, gid, now)
    elif capacity > g.desired_capacity:
        force = g.status == autoscaling.DELETING  # a forced delete takes protected ones too
        members = [Member(m.instance_id, m.subnet_id, m.launch_template_version, m.launched_at,
                          m.protected_from_scale_in and not force) for m in live]
        by_id = {m.instance_id: m for m in live}
        cause = (f"an instance was taken out of service in response to a difference between "
                 f"desired and actual capacity, shrinking the capacity from {capacity} to "
                 f"{g.desired_capacity}")
        for _ in range(capacity - g.desired_capacity):
            pick = choose_victim(members, g.termination_policies)
            if pick is None:
                break  # the rest are protected from scale in
            members = [m for m in members if m.instance_id != pick.instance_id]
            _start_terminate(db, settings, by_id[pick.instance_id], cause, now, stats)


async def run_forever(db: Database, settings: Settings) -> None:
    """The controller's group loop: a pass every autoscaling_interval_s."""
    await periodic.every(settings.autoscaling_interval_s, lambda: tick(db, settings),
                         "auto scaling pass")
