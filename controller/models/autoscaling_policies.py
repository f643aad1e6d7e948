"""Target tracking scaling policies and scheduled actions of Auto Scaling groups (EC2 Auto
Scaling's PutScalingPolicy / PutScheduledUpdateGroupAction shapes, snake_case).

Both attach to a group by group_id and change it only through services/autoscaling.py
set_desired. Each row also keeps the little state its level-triggered evaluation needs, so a
controller restart neither forgets nor repeats: a policy's `below_since` (when the metric went
below the scale-in band) and an action's `last_occurrence` (the last occurrence fired or
skipped).
"""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from pydantic import Field as PField
from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from controller.db import UtcDateTime
from controller.models.autoscaling import MAX_CAPACITY
from controller.models.step_policies import AlarmRef, StepAdjustment

PolicyName = PField(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
PREDEFINED_METRICS = ("ASGAverageCPUUtilization",)


class PredefinedMetricSpec(BaseModel):
    predefined_metric_type: str = PField(min_length=1, max_length=64)


class TargetTrackingConfiguration(BaseModel):
    predefined_metric_specification: PredefinedMetricSpec
    #: Percent CPU, in (0, 100].
    target_value: float
    disable_scale_in: bool = False


class PolicyPut(BaseModel):
    #: TargetTrackingScaling, StepScaling or SimpleScaling.
    policy_type: str = "TargetTrackingScaling"
    #: Target tracking only (required there).
    target_tracking_configuration: TargetTrackingConfiguration | None = None
    #: Step and simple scaling (models/step_policies.py): ChangeInCapacity, ExactCapacity or
    #: PercentChangeInCapacity; min_adjustment_magnitude only with PercentChangeInCapacity.
    adjustment_type: str | None = None
    min_adjustment_magnitude: int | None = PField(default=None, ge=1, le=10000)
    #: Simple scaling: the change and the seconds to wait after it (default: the group's
    #: default_cooldown).
    scaling_adjustment: int | None = PField(default=None, ge=-10000, le=10000)
    cooldown: int | None = PField(default=None, ge=0, le=86400)
    #: Step scaling: the steps, bounds relative to the alarm threshold (no gaps, no
    #: overlaps, at most one open bound each side).
    step_adjustments: list[StepAdjustment] | None = PField(default=None, max_length=20)
    metric_aggregation_type: str | None = None
    #: Seconds a new instance stays out of the average; default the group's
    #: default_instance_warmup, else its default_cooldown.
    estimated_instance_warmup: int | None = PField(default=None, ge=0, le=3600)
    #: Kumo extension: seconds the metric must stay below the target's band before a scale
    #: in; default the controller's autoscaling_scale_in_period_s.
    scale_in_period: int | None = PField(default=None, ge=0, le=3600)


class PolicyPublic(BaseModel):
    policy_name: str
    policy_arn: str
    auto_scaling_group_name: str
    policy_type: str
    target_tracking_configuration: TargetTrackingConfiguration | None = None
    estimated_instance_warmup: int | None
    scale_in_period: int | None = None
    adjustment_type: str | None = None
    min_adjustment_magnitude: int | None = None
    scaling_adjustment: int | None = None
    cooldown: int | None = None
    step_adjustments: list[StepAdjustment] | None = None
    metric_aggregation_type: str | None = None
    #: The metric alarms whose actions name this policy (EC2's Alarms).
    alarms: list[AlarmRef] = []
    enabled: bool = True


class ScheduledActionPut(BaseModel):
    #: Five-field cron expression, evaluated in time_zone. None (or absent): a one-time action
    #: that fires once at start_time (then required, in the future) and is then deleted.
    recurrence: str | None = PField(default=None, min_length=1, max_length=255)
    #: IANA time zone name; default UTC.
    time_zone: str = PField(default="Etc/UTC", min_length=1, max_length=64)
    start_time: datetime | None = None
    end_time: datetime | None = None
    min_size: int | None = PField(default=None, ge=0, le=MAX_CAPACITY)
    max_size: int | None = PField(default=None, ge=0, le=MAX_CAPACITY)
    desired_capacity: int | None = PField(default=None, ge=0, le=MAX_CAPACITY)


class ScheduledActionPublic(BaseModel):
    scheduled_action_name: str
    scheduled_action_arn: str
    auto_scaling_group_name: str
    #: None: a one-time action (fires at start_time, then is deleted).
    recurrence: str | None
    time_zone: str
    start_time: datetime | None
    end_time: datetime | None
    min_size: int | None
    max_size: int | None
    desired_capacity: int | None
    #: The next occurrence (UTC), or None when the action has ended.
    next_occurrence: datetime | None
    last_occurrence: datetime | None


class ScalingPolicy(SQLModel, table=True):
    __tablename__ = "scaling_policy"
    __table_args__ = (UniqueConstraint("group_id", "name", name="uq_scaling_policy_name"),)
    policy_id: str = Field(primary_key=True, max_length=32)
    group_id: str = Field(foreign_key="autoscaling_group.group_id", max_length=32, index=True)
    account_id: str = Field(max_length=32)
    name: str = Field(max_length=255)
    policy_type: str = Field(max_length=32)
    metric_type: str = Field(max_length=64)
    target_value: float
    disable_scale_in: bool = False
    estimated_instance_warmup: int | None = None
    scale_in_period: int | None = None
    #: The evaluation at which the metric first went below the scale-in band (None: not below).
    below_since: datetime | None = Field(default=None, sa_type=UtcDateTime)
    created_at: datetime = Field(sa_type=UtcDateTime)


class ScheduledAction(SQLModel, table=True):
    __tablename__ = "scheduled_action"
    __table_args__ = (UniqueConstraint("group_id", "name", name="uq_scheduled_action_name"),)
    action_id: str = Field(primary_key=True, max_length=32)
    group_id: str = Field(foreign_key="autoscaling_group.group_id", max_length=32, index=True)
    account_id: str = Field(max_length=32)
    name: str = Field(max_length=255)
    #: The cron; "" for a one-time action (fires at start_time; the column stays NOT NULL).
    recurrence: str = Field(max_length=255)
    time_zone: str = Field(max_length=64)
    start_time: datetime | None = Field(default=None, sa_type=UtcDateTime)
    end_time: datetime | None = Field(default=None, sa_type=UtcDateTime)
    min_size: int | None = None
    max_size: int | None = None
    desired_capacity: int | None = None
    #: The last occurrence fired or skipped (UTC); occurrences up to it are done.
    last_occurrence: datetime | None = Field(default=None, sa_type=UtcDateTime)
    created_at: datetime = Field(sa_type=UtcDateTime)
