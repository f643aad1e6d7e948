"""Step and simple scaling policies of Auto Scaling groups (EC2 Auto Scaling PutScalingPolicy
with policy_type StepScaling / SimpleScaling), run when a metric alarm
(controller/models/alarms.py) invokes them.

They live in their own table, not in scaling_policy: the target tracking evaluation
(services/scaling_policies.evaluate) reads every scaling_policy row of a group as target
tracking, and these policies have no target. Policy names stay unique per group across both
tables (services/step_scaling.py checks). `last_run_at` is when the policy last changed the
group (simple scaling's cooldown starts there).
"""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from pydantic import Field as PField
from sqlalchemy import JSON, UniqueConstraint
from sqlmodel import Field, SQLModel

from controller.db import UtcDateTime

ADJUSTMENT_TYPES = ("ChangeInCapacity", "ExactCapacity", "PercentChangeInCapacity")
AGGREGATION_TYPES = ("Average", "Minimum", "Maximum")
STEP_TYPES = ("StepScaling", "SimpleScaling")


class StepAdjustment(BaseModel):
    """Bounds are relative to the alarm threshold: the step applies when
    lower <= metric - threshold < upper (None: unbounded on that side)."""

    metric_interval_lower_bound: float | None = None
    metric_interval_upper_bound: float | None = None
    scaling_adjustment: int = PField(ge=-10000, le=10000)


class AlarmRef(BaseModel):
    alarm_name: str
    alarm_arn: str


class StepScalingPolicy(SQLModel, table=True):
    __tablename__ = "step_scaling_policy"
    __table_args__ = (UniqueConstraint("group_id", "name", name="uq_step_scaling_policy_name"),)
    policy_id: str = Field(primary_key=True, max_length=32)
    group_id: str = Field(foreign_key="autoscaling_group.group_id", max_length=32, index=True)
    account_id: str = Field(max_length=32)
    name: str = Field(max_length=255)
    #: StepScaling or SimpleScaling.
    policy_type: str = Field(max_length=32)
    adjustment_type: str = Field(max_length=32)
    min_adjustment_magnitude: int | None = None
    #: Simple scaling: the adjustment and the cooldown (None: the group's default_cooldown).
    scaling_adjustment: int | None = None
    cooldown: int | None = None
    #: Step scaling: StepAdjustment dicts sorted by lower bound.
    step_adjustments: list = Field(default_factory=list, sa_type=JSON)
    metric_aggregation_type: str | None = Field(default=None, max_length=16)
    estimated_instance_warmup: int | None = None
    last_run_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    created_at: datetime = Field(sa_type=UtcDateTime)
