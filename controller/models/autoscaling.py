"""Auto Scaling groups, their member instances and their activity history (EC2 Auto Scaling).

The group row is the intent (launch template + version, min/max/desired, subnets, policies of
termination and health); AutoScalingInstance rows are the members with their lifecycle state
and health; ScalingActivity rows are the history *and* the group controller's work log: a launch
activity holds the exact RunInstancesRequest it sends (with a client token derived from the
group and the activity), so a controller restarted mid-launch resends the same request and gets
the same instance back (controller/services/autoscaling_controller.py). Scaling policies and
scheduled actions (next part) attach to a group by group_id and change desired capacity through
services/autoscaling.py set_desired, as a manual set does.
"""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from pydantic import Field as PField
from sqlalchemy import JSON, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from controller.db import UtcDateTime

GroupName = PField(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
TERMINATION_POLICIES = ("Default", "OldestInstance", "NewestInstance", "OldestLaunchTemplate")
MAX_CAPACITY = 1000


class LaunchTemplateSpec(BaseModel):
    """Which template and version a group launches from: id or name, and "$Default",
    "$Latest" or a number (resolved at each launch)."""

    launch_template_id: str | None = PField(default=None, min_length=1, max_length=32)
    launch_template_name: str | None = PField(default=None, min_length=1, max_length=128)
    version: str = PField(default="$Default", min_length=1, max_length=16)


class GroupCreate(BaseModel):
    auto_scaling_group_name: str = GroupName
    launch_template: LaunchTemplateSpec
    min_size: int = PField(ge=0, le=MAX_CAPACITY)
    max_size: int = PField(ge=0, le=MAX_CAPACITY)
    #: Default: min_size.
    desired_capacity: int | None = PField(default=None, ge=0, le=MAX_CAPACITY)
    #: One or more subnets of one VPC of the caller's account (EC2's VPCZoneIdentifier).
    subnet_ids: list[str] = PField(min_length=1, max_length=16)
    health_check_grace_period: int = PField(default=300, ge=0, le=7200)
    default_cooldown: int = PField(default=300, ge=0, le=86400)
    default_instance_warmup: int | None = PField(default=None, ge=0, le=3600)
    termination_policies: list[str] = PField(default_factory=lambda: ["Default"],
                                              max_length=4)
    #: Propagated to the group's instances at launch.
    tags: dict[str, str] = PField(default_factory=dict)
    new_instances_protected_from_scale_in: bool = False


class GroupUpdate(BaseModel):
    """What to change (EC2 UpdateAutoScalingGroup); absent fields keep their value."""

    launch_template: LaunchTemplateSpec | None = None
    min_size: int | None = PField(default=None, ge=0, le=MAX_CAPACITY)
    max_size: int | None = PField(default=None, ge=0, le=MAX_CAPACITY)
    desired_capacity: int | None = PField(default=None, ge=0, le=MAX_CAPACITY)
    subnet_ids: list[str] | None = PField(default=None, min_length=1, max_length=16)
    health_check_grace_period: int | None = PField(default=None, ge=0, le=7200)
    default_cooldown: int | None = PField(default=None, ge=0, le=86400)
    default_instance_warmup: int | None = PField(default=None, ge=0, le=3600)
    termination_policies: list[str] | None = PField(default=None, max_length=4)
    tags: dict[str, str] | None = None
    new_instances_protected_from_scale_in: bool | None = None


class SetDesiredCapacity(BaseModel):
    desired_capacity: int = PField(ge=0, le=MAX_CAPACITY)
    honor_cooldown: bool = False


class SetInstanceProtection(BaseModel):
    instance_ids: list[str] = PField(min_length=1, max_length=50)
    protected_from_scale_in: bool


class GroupInstancePublic(BaseModel):
    instance_id: str
    lifecycle_state: str
    health_status: str
    protected_from_scale_in: bool
    subnet_id: str | None
    launch_template_id: str
    launch_template_version: int
    launch_time: datetime


class GroupPublic(BaseModel):
    auto_scaling_group_name: str
    auto_scaling_group_id: str
    launch_template: LaunchTemplateSpec
    min_size: int
    max_size: int
    desired_capacity: int
    vpc_id: str
    subnet_ids: list[str]
    health_check_grace_period: int
    default_cooldown: int
    default_instance_warmup: int | None
    termination_policies: list[str]
    tags: dict[str, str]
    new_instances_protected_from_scale_in: bool
    #: None, or "Delete in progress" after a forced delete.
    status: str | None
    instances: list[GroupInstancePublic]
    created_time: datetime


class ActivityPublic(BaseModel):
    activity_id: str
    auto_scaling_group_name: str
    description: str
    cause: str
    #: InProgress, Successful, Failed or Cancelled.
    status_code: str
    status_message: str | None
    instance_id: str | None
    start_time: datetime
    end_time: datetime | None


class AutoScalingGroup(SQLModel, table=True):
    __tablename__ = "autoscaling_group"
    __table_args__ = (UniqueConstraint("account_id", "name", name="uq_autoscaling_group_name"),
                      Index("ix_autoscaling_group_account_created", "account_id", "created_at",
                            "group_id"))
    group_id: str = Field(primary_key=True, max_length=32)
    account_id: str = Field(foreign_key="account.account_id", max_length=32)
    name: str = Field(max_length=255)
    launch_template_id: str = Field(max_length=32)
    launch_template_version: str = Field(max_length=16)
    min_size: int
    max_size: int
    desired_capacity: int
    vpc_id: str = Field(max_length=32)
    subnet_ids: list = Field(default_factory=list, sa_type=JSON)
    health_check_grace_period: int = 300
    default_cooldown: int = 300
    default_instance_warmup: int | None = None
    termination_policies: list = Field(default_factory=list, sa_type=JSON)
    tags: dict = Field(default_factory=dict, sa_type=JSON)
    new_instances_protected_from_scale_in: bool = False
    status: str | None = Field(default=None, max_length=32)
    # Launch backoff: consecutive failed launches and when the next may start.
    launch_failures: int = 0
    launch_retry_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    #: The last change of desired capacity (cooldowns of simple scaling policies).
    last_scaling_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    created_at: datetime = Field(sa_type=UtcDateTime)
    updated_at: datetime = Field(sa_type=UtcDateTime)


class AutoScalingInstance(SQLModel, table=True):
    """One member of a group (until it is terminated)."""

    __tablename__ = "autoscaling_instance"
    instance_id: str = Field(primary_key=True, max_length=32)
    group_id: str = Field(foreign_key="autoscaling_group.group_id", max_length=32, index=True)
    account_id: str = Field(max_length=32)
    #: Pending, InService, Terminating (then the row goes; the activity history keeps it).
    lifecycle_state: str = Field(max_length=32)
    health_status: str = Field(default="Healthy", max_length=16)
    protected_from_scale_in: bool = False
    subnet_id: str | None = Field(default=None, max_length=32)
    launch_template_id: str = Field(max_length=32)
    launch_template_version: int
    #: The group controller's clock when it launched the instance (grace period, age).
    launched_at: datetime = Field(sa_type=UtcDateTime)
    in_service_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    #: The activity that launched it, and the one terminating it.
    launch_activity_id: str = Field(max_length=32)
    terminate_activity_id: str | None = Field(default=None, max_length=32)


class ScalingActivity(SQLModel, table=True):
    __tablename__ = "scaling_activity"
    __table_args__ = (Index("ix_scaling_activity_group_start", "group_id", "start_time",
                            "activity_id"),)
    activity_id: str = Field(primary_key=True, max_length=32)
    group_id: str = Field(max_length=32)
    account_id: str = Field(max_length=32)
    #: "launch", "terminate", or "capacity" (a policy or schedule changed desired capacity).
    kind: str = Field(max_length=16)
    status_code: str = Field(default="InProgress", max_length=16, index=True)
    description: str = Field(max_length=255)
    cause: str = Field(max_length=1024)
    status_message: str | None = Field(default=None, max_length=1024)
    instance_id: str | None = Field(default=None, max_length=32)
    #: A launch's exact request (RunInstancesRequest as JSON, with its client token) and the
    #: template version it came from: resent unchanged after a restart.
    request: dict = Field(default_factory=dict, sa_type=JSON)
    launch_template_version: int | None = None
    start_time: datetime = Field(sa_type=UtcDateTime)
    end_time: datetime | None = Field(default=None, sa_type=UtcDateTime)
