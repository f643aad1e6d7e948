"""Auto Scaling groups: the user-facing rules (EC2 CreateAutoScalingGroup, Update, Describe,
Delete, SetDesiredCapacity, SetInstanceProtection, DescribeScalingActivities). Every check
passes before anything is written; refused input is 400 ValidationError (EC2 Auto Scaling's
code), a name in use 409 AlreadyExists, a delete of a group with instances 409 ResourceInUse.

These functions only change intent (the group row, members' protection); the group controller
(services/autoscaling_controller.py) launches and terminates to match it. set_desired() is the
one way desired capacity changes, whoever asks (a user now; scaling policies and scheduled
actions later).
"""
from __future__ import annotations

from datetime import datetime

from sqlmodel import Session, delete, select

from controller.db import Database
from controller.errors import Conflict, InvalidParameter, KumoError, NotFound
from controller.ids import new_id, utcnow
from controller.models.autoscaling import (ActivityPublic, AutoScalingGroup, AutoScalingInstance,
                                           GroupCreate, GroupInstancePublic, GroupPublic,
                                           GroupUpdate, LaunchTemplateSpec, ScalingActivity)
from controller.models.autoscaling_policies import ScalingPolicy, ScheduledAction
from controller.models.step_policies import StepScalingPolicy
from controller.models.vpc import Subnet
from controller.services import filters, instances, launch_templates, pagination
from controller.services.autoscaling_rules import (VALIDATION, check_capacity, check_set_desired,
                                                   check_termination_policies)
from controller.services.pagination import Page, PageRequest

NOT_FOUND = VALIDATION  # EC2 Auto Scaling answers an unknown group with ValidationError
DELETING = "Delete in progress"
#: Members that count as the group's capacity.
LIVE = ("Pending", "InService")
ORDER = pagination.Order(AutoScalingGroup.created_at, AutoScalingGroup.group_id)
ACTIVITY_ORDER = pagination.Order(ScalingActivity.start_time, ScalingActivity.activity_id)
FILTERS = {"auto-scaling-group-name": "auto_scaling_group_name"}


def get(s: Session, caller, name: str) -> AutoScalingGroup:
    g = s.exec(select(AutoScalingGroup).where(AutoScalingGroup.account_id == caller.account_id,
                                              AutoScalingGroup.name == name)).first()
    if g is None:
        raise NotFound(f"AutoScalingGroup name not found - {name}", code=NOT_FOUND)
    return g


# -- validation ----------------------------------------------------------------------------------
def _template(s: Session, caller, spec: LaunchTemplateSpec) -> tuple[str, str]:
    """-> (template id, version as given); unknown template or version: ValidationError."""
    ref = spec.launch_template_id or spec.launch_template_name
    if ref is None or (spec.launch_template_id and spec.launch_template_name):
        raise InvalidParameter("give exactly one of launch_template_id and "
                               "launch_template_name", code=VALIDATION)
    try:
        lt = launch_templates.get(s, caller, ref)
        launch_templates.get_version(s, lt, spec.version)
    except KumoError as e:
        raise InvalidParameter(f"You must use a valid fully-formed launch template. "
                               f"{e.message}", code=VALIDATION) from None
    return lt.launch_template_id, spec.version


def _subnets(s: Session, caller, subnet_ids: list[str]) -> tuple[str, list[str]]:
    """-> (the VPC, the subnets deduplicated); each of the caller's account, all of one VPC."""
    ids = list(dict.fromkeys(subnet_ids))
    vpc_ids = set()
    for sid in ids:
        sn = s.get(Subnet, sid)
        if sn is None or sn.account_id != caller.account_id:
            raise InvalidParameter(f"The subnet ID '{sid}' does not exist", code=VALIDATION)
        vpc_ids.add(sn.vpc_id)
    if len(vpc_ids) != 1:
        raise InvalidParameter("The subnets of a group must all be in one VPC",
                               code=VALIDATION)
    return vpc_ids.pop(), ids


def _check_tags(tags: dict[str, str]) -> None:
    try:
        instances._check_tags(tags)  # instance tag rules: they are propagated to instances
    except InvalidParameter as e:
        raise InvalidParameter(e.message, code=VALIDATION) from None


# -- operations ----------------------------------------------------------------------------------
def create(db: Database, caller, body: GroupCreate) -> GroupPublic:
    desired = check_capacity(body.min_size, body.max_size, body.desired_capacity)
    policies = check_termination_policies(body.termination_policies)
    _check_tags(body.tags)
    now = utcnow()
    with db.session() as s:
        lt_id, version = _template(s, caller, body.launch_template)
        vpc_id, subnet_ids = _subnets(s, caller, body.subnet_ids)
        if s.exec(select(AutoScalingGroup).where(
                AutoScalingGroup.account_id == caller.account_id,
                AutoScalingGroup.name == body.auto_scaling_group_name)).first():
            raise Conflict(f"AutoScalingGroup by this name already exists - "
                           f"{body.auto_scaling_group_name}", code="AlreadyExists")
        g = AutoScalingGroup(
            group_id=new_id("asg"), account_id=caller.account_id,
            name=body.auto_scaling_group_name, launch_template_id=lt_id,
            launch_template_version=version, min_size=body.min_size, max_size=body.max_size,
            desired_capacity=desired, vpc_id=vpc_id, subnet_ids=subnet_ids,
            health_check_grace_period=body.health_check_grace_period,
            default_cooldown=body.default_cooldown,
            default_instance_warmup=body.default_instance_warmup,
            termination_policies=policies, tags=dict(body.tags),
            new_instances_protected_from_scale_in=body.new_instances_protected_from_scale_in,
            created_at=now, updated_at=now)
        s.add(g)
        s.flush()
        return _describe(s, g)


def update(db: Database, caller, name: str, body: GroupUpdate) -> GroupPublic:
    with db.session() as s:
        g = get(s, caller, name)
        _refuse_if_deleting(g)
        min_size = g.min_size if body.min_size is None else body.min_size
        max_size = g.max_size if body.max_size is None else body.max_size
        desired = body.desired_capacity
        if desired is None:
            # EC2: a new min or max drags the current desired capacity along with it.
            desired = min(max(g.desired_capacity, min_size), max_size)
        desired = check_capacity(min_size, max_size, desired)
        if body.launch_template is not None:
            g.launch_template_id, g.launch_template_version = _template(s, caller,
                                                                        body.launch_template)
        if body.subnet_ids is not None:
            vpc_id, g.subnet_ids = _subnets(s, caller, body.subnet_ids)
            if vpc_id != g.vpc_id and s.exec(select(AutoScalingInstance).where(
                    AutoScalingInstance.group_id == g.group_id)).first():
                raise InvalidParameter("a group with instances keeps its VPC", code=VALIDATION)
            g.vpc_id = vpc_id
        if body.termination_policies is not None:
            g.termination_policies = check_termination_policies(body.termination_policies)
        if body.tags is not None:
            _check_tags(body.tags)
            g.tags = dict(body.tags)
        for field in ("health_check_grace_period", "default_cooldown",
                      "default_instance_warmup", "new_instances_protected_from_scale_in"):
            value = getattr(body, field)
            if value is not None:
                setattr(g, field, value)
        if desired != g.desired_capacity:
            g.last_scaling_at = utcnow()
        g.min_size, g.max_size, g.desired_capacity = min_size, max_size, desired
        g.updated_at = utcnow()
        s.add(g)
        return _describe(s, g)


def set_desired(s: Session, g: AutoScalingGroup, desired: int, now: datetime | None = None,
                honor_cooldown: bool = False) -> bool:
    """The one way desired capacity changes (a user; later policies and schedules): within
    [min, max] or 400 ValidationError; with honor_cooldown, refused (409 ScalingActivityInProgress)
    inside the group's cooldown after the last change. -> whether it changed."""
    now = now or utcnow()
    _refuse_if_deleting(g)
    check_set_desired(desired, g.min_size, g.max_size)
    if honor_cooldown and g.last_scaling_at is not None and (
            (now - g.last_scaling_at).total_seconds() < g.default_cooldown):
        raise Conflict("the group is in its cooldown period", code="ScalingActivityInProgress")
    if desired == g.desired_capacity:
        return False
    g.desired_capacity, g.last_scaling_at, g.updated_at = desired, now, now
    s.add(g)
    return True


def record_change(s: Session, g: AutoScalingGroup, before: int, cause: str,
                  now: datetime) -> None:
    """A change of desired capacity by a policy or a schedule, in the activity history (kind
    "capacity", Successful at once: the launches and terminations follow as their own)."""
    s.add(ScalingActivity(activity_id=new_id("act"), group_id=g.group_id,
                          account_id=g.account_id, kind="capacity", status_code="Successful",
                          description=f"Changing the desired capacity from {before} to "
                                      f"{g.desired_capacity}", cause=cause[:1024],
                          start_time=now, end_time=now))


def set_desired_capacity(db: Database, caller, name: str, desired: int,
                         honor_cooldown: bool = False) -> GroupPublic:
    with db.session() as s:
        g = get(s, caller, name)
        set_desired(s, g, desired, honor_cooldown=honor_cooldown)
        return _describe(s, g)


def set_protection(db: Database, caller, name: str, instance_ids: list[str],
                   protected: bool) -> GroupPublic:
    with db.session() as s:
        g = get(s, caller, name)
        rows = {m.instance_id: m for m in s.exec(select(AutoScalingInstance).where(
            AutoScalingInstance.group_id == g.group_id,
            AutoScalingInstance.instance_id.in_(instance_ids)))}
        missing = [i for i in instance_ids if i not in rows]
        if missing:
            raise InvalidParameter(f"The instance {missing[0]} is not part of Auto Scaling "
                                   f"group {name}.", code=VALIDATION)
        for m in rows.values():
            m.protected_from_scale_in = protected
            s.add(m)
        return _describe(s, g)


def delete_group(db: Database, caller, name: str, force: bool = False) -> None:
    """Without force: refused (409 ResourceInUse) while the group has instances or launches in
    progress; else gone at once. With force: min/max/desired go to 0 and the group is marked
    "Delete in progress"; the group controller terminates its instances, then removes it."""
    with db.session() as s:
        g = get(s, caller, name)
        busy = s.exec(select(AutoScalingInstance.instance_id).where(
            AutoScalingInstance.group_id == g.group_id)).first() or s.exec(
            select(ScalingActivity.activity_id).where(
                ScalingActivity.group_id == g.group_id,
                ScalingActivity.status_code == "InProgress")).first()
        if busy and not force:
            raise Conflict("You cannot delete an AutoScalingGroup while there are instances "
                           "or launches in progress still in the group.", code="ResourceInUse")
        if busy:
            g.status, g.min_size, g.max_size, g.desired_capacity = DELETING, 0, 0, 0
            g.updated_at = utcnow()
            s.add(g)
            return
        remove(s, g)


def remove(s: Session, g: AutoScalingGroup) -> None:
    """Drop an empty group and its history."""
    s.exec(delete(ScalingActivity).where(ScalingActivity.group_id == g.group_id))
    s.exec(delete(ScalingPolicy).where(ScalingPolicy.group_id == g.group_id))
    s.exec(delete(ScheduledAction).where(ScheduledAction.group_id == g.group_id))
    s.exec(delete(StepScalingPolicy).where(StepScalingPolicy.group_id == g.group_id))
    s.flush()  # the group's dependants go before the group (foreign keys)
    s.delete(g)


def _refuse_if_deleting(g: AutoScalingGroup) -> None:
    if g.status == DELETING:
        raise Conflict(f"AutoScalingGroup {g.name} is being deleted",
                       code="ScalingActivityInProgress")


# -- describe ------------------------------------------------------------------------------------
def _describe_many(s: Session, groups: list[AutoScalingGroup]) -> list[GroupPublic]:
    ids = [g.group_id for g in groups]
    members: dict[str, list[AutoScalingInstance]] = {}
    if ids:
        for m in s.exec(select(AutoScalingInstance).where(AutoScalingInstance.group_id.in_(ids))
                        .order_by(AutoScalingInstance.launched_at,
                                  AutoScalingInstance.instance_id)):
            members.setdefault(m.group_id, []).append(m)
    return [GroupPublic(
        auto_scaling_group_name=g.name, auto_scaling_group_id=g.group_id,
        launch_template=LaunchTemplateSpec(launch_template_id=g.launch_template_id,
                                           version=g.launch_template_version),
        min_size=g.min_size, max_size=g.max_size, desired_capacity=g.desired_capacity,
        vpc_id=g.vpc_id, subnet_ids=list(g.subnet_ids),
        health_check_grace_period=g.health_check_grace_period,
        default_cooldown=g.default_cooldown, default_instance_warmup=g.default_instance_warmup,
        termination_policies=list(g.termination_policies), tags=dict(g.tags),
        new_instances_protected_from_scale_in=g.new_instances_protected_from_scale_in,
        status=g.status, created_time=g.created_at,
        instances=[GroupInstancePublic(
            instance_id=m.instance_id, lifecycle_state=m.lifecycle_state,
            health_status=m.health_status, protected_from_scale_in=m.protected_from_scale_in,
            subnet_id=m.subnet_id, launch_template_id=m.launch_template_id,
            launch_template_version=m.launch_template_version, launch_time=m.launched_at)
            for m in members.get(g.group_id, [])]) for g in groups]


def _describe(s: Session, g: AutoScalingGroup) -> GroupPublic:
    s.flush()
    return _describe_many(s, [g])[0]


def describe(db: Database, caller, name: str) -> GroupPublic:
    with db.session(notify=False) as s:
        return _describe(s, get(s, caller, name))


def list_page(db: Database, caller, page: PageRequest, params) -> Page[GroupPublic]:
    by, tags = filters.parse(FILTERS, filters.group_query(FILTERS, params))
    q = select(AutoScalingGroup).where(AutoScalingGroup.account_id == caller.account_id)
    q = filters.where_in(q, (AutoScalingGroup.name, by.get("auto_scaling_group_name")))
    q = filters.where_tags(q, AutoScalingGroup, tags)
    with db.session(notify=False) as s:
        return pagination.list_page(s, q, ORDER, page, lambda rows: _describe_many(s, rows))


def activities(db: Database, caller, name: str, page: PageRequest) -> Page[ActivityPublic]:
    """The group's activity history, oldest first (keyset pages)."""
    with db.session(notify=False) as s:
        g = get(s, caller, name)
        q = select(ScalingActivity).where(ScalingActivity.group_id == g.group_id)
        return pagination.list_page(s, q, ACTIVITY_ORDER, page, lambda rows: [ActivityPublic(
            activity_id=a.activity_id, auto_scaling_group_name=g.name,
            description=a.description, cause=a.cause, status_code=a.status_code,
            status_message=a.status_message, instance_id=a.instance_id,
            start_time=a.start_time, end_time=a.end_time) for a in rows])


def group_instance_ids(s: Session, account_id: str | None, name: str) -> list[str]:
    """The instances of the named group (metrics' AutoScalingGroupName dimension): its members
    and every instance its launch activities recorded (terminated ones keep their history)."""
    q = select(AutoScalingGroup.group_id).where(AutoScalingGroup.name == name)
    if account_id is not None:
        q = q.where(AutoScalingGroup.account_id == account_id)
    gids = list(s.exec(q))
    if not gids:
        return []
    ids = set(s.exec(select(AutoScalingInstance.instance_id).where(
        AutoScalingInstance.group_id.in_(gids))))
    ids.update(i for i in s.exec(select(ScalingActivity.instance_id).where(
        ScalingActivity.group_id.in_(gids), ScalingActivity.kind == "launch")) if i)
    return sorted(ids)
