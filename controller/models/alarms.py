"""Metric alarms (CloudWatch PutMetricAlarm / DescribeAlarms / DescribeAlarmHistory shapes,
snake_case) and their history.

An alarm watches one statistic of one metric of one dimension (an instance or an Auto Scaling
group) over fixed periods. Its row also keeps what the level-triggered alarm pass
(controller/services/alarm_controller.py) needs to be restart-safe: `evaluated_until_ms`, the
end of the last period it evaluated, committed with the state change and the actions that
evaluation ran, so a restart neither repeats nor skips an evaluation.
"""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from pydantic import Field as PField
from sqlalchemy import JSON, BigInteger, Column, Index, Integer, UniqueConstraint
from sqlmodel import Field, SQLModel

from controller.db import UtcDateTime

STATES = ("OK", "ALARM", "INSUFFICIENT_DATA")
COMPARISONS = ("GreaterThanOrEqualToThreshold", "GreaterThanThreshold", "LessThanThreshold",
               "LessThanOrEqualToThreshold")
MISSING_DATA = ("missing", "notBreaching", "breaching", "ignore")
ActionList = PField(default_factory=list, max_length=5)


class Dimension(BaseModel):
    #: InstanceId or AutoScalingGroupName (what the metrics service resolves).
    name: str = PField(min_length=1, max_length=255)
    value: str = PField(min_length=1, max_length=255)


class AlarmPut(BaseModel):
    metric_name: str = PField(min_length=1, max_length=32)
    #: Kumo/EC2 or AWS/EC2 (the metrics service answers both the same).
    namespace: str = "AWS/EC2"
    #: Exactly one dimension.
    dimensions: list[Dimension] = PField(min_length=1, max_length=1)
    statistic: str = "Average"
    #: Seconds; a multiple of the controller's metrics_sample_period_s, at most
    #: alarm_max_period_s.
    period: int
    evaluation_periods: int = PField(ge=1)
    #: M of the N evaluation periods that must breach; default N.
    datapoints_to_alarm: int | None = PField(default=None, ge=1)
    threshold: float
    comparison_operator: str
    treat_missing_data: str = "missing"
    actions_enabled: bool = True
    #: Scaling policy ARNs (step or simple) of the alarm's account.
    alarm_actions: list[str] = ActionList
    ok_actions: list[str] = ActionList
    insufficient_data_actions: list[str] = ActionList
    alarm_description: str | None = PField(default=None, max_length=1024)


class AlarmPublic(BaseModel):
    alarm_name: str
    alarm_arn: str
    alarm_description: str | None
    metric_name: str
    namespace: str
    dimensions: list[Dimension]
    statistic: str
    period: int
    evaluation_periods: int
    datapoints_to_alarm: int
    threshold: float
    comparison_operator: str
    treat_missing_data: str
    actions_enabled: bool
    alarm_actions: list[str]
    ok_actions: list[str]
    insufficient_data_actions: list[str]
    state_value: str
    state_reason: str
    state_updated_at: datetime
    alarm_configuration_updated_at: datetime


class AlarmStateSet(BaseModel):
    """SetAlarmState (for testing actions): the state holds until the next evaluation."""

    state_value: str
    state_reason: str = PField(min_length=1, max_length=1023)


class AlarmHistoryItem(BaseModel):
    alarm_name: str
    timestamp: datetime
    #: StateUpdate, Action or ConfigurationUpdate.
    history_item_type: str
    history_summary: str
    history_data: dict


class MetricAlarm(SQLModel, table=True):
    __tablename__ = "metric_alarm"
    __table_args__ = (UniqueConstraint("account_id", "name", name="uq_metric_alarm_name"),)
    alarm_id: str = Field(primary_key=True, max_length=32)
    account_id: str = Field(max_length=32, index=True)
    name: str = Field(max_length=255)
    description: str | None = Field(default=None, max_length=1024)
    namespace: str = Field(max_length=32)
    metric_name: str = Field(max_length=32)
    dimension_name: str = Field(max_length=32)
    dimension_value: str = Field(max_length=255)
    statistic: str = Field(max_length=16)
    period: int
    evaluation_periods: int
    datapoints_to_alarm: int
    threshold: float
    comparison_operator: str = Field(max_length=40)
    treat_missing_data: str = Field(max_length=16)
    actions_enabled: bool = True
    alarm_actions: list = Field(default_factory=list, sa_type=JSON)
    ok_actions: list = Field(default_factory=list, sa_type=JSON)
    insufficient_data_actions: list = Field(default_factory=list, sa_type=JSON)
    state_value: str = Field(max_length=20)
    state_reason: str = Field(max_length=1024)
    state_updated_at: datetime = Field(sa_type=UtcDateTime)
    #: End (epoch ms) of the last period the alarm pass evaluated; None: never evaluated.
    evaluated_until_ms: int | None = Field(default=None, sa_type=BigInteger)
    created_at: datetime = Field(sa_type=UtcDateTime)
    updated_at: datetime = Field(sa_type=UtcDateTime)


class AlarmHistory(SQLModel, table=True):
    """One history item; at most settings.alarm_history_max are kept per alarm."""

    __tablename__ = "alarm_history"
    __table_args__ = (Index("ix_alarm_history_alarm_ts", "alarm_id", "ts"),)
    id: int | None = Field(default=None, sa_column=Column(BigInteger().with_variant(
        Integer(), "sqlite"), primary_key=True, autoincrement=True))
    alarm_id: str = Field(max_length=32)
    account_id: str = Field(max_length=32)
    alarm_name: str = Field(max_length=255)
    ts: datetime = Field(sa_type=UtcDateTime)
    item_type: str = Field(max_length=32)
    summary: str = Field(max_length=1024)
    data: dict = Field(default_factory=dict, sa_type=JSON)
