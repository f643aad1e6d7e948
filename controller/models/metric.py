"""Metric tables: raw per-instance samples and their 1-minute rollups (CloudWatch-like).

Both are long (one row per metric and instance and time) so a new metric name needs no schema
change. Times are integer epoch milliseconds: bucketing a range into periods is then integer
division, which SQLite and PostgreSQL both do the same way (truncating), inside the database.
The dimension a query names (InstanceId now, an Auto Scaling group later) is resolved to a set
of instance ids by controller/services/metrics.py; rows carry the instance's account for
scoping.
"""
from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, UniqueConstraint
from sqlmodel import Field, SQLModel


class MetricDatum(SQLModel, table=True):
    """One raw sample: what an instance did in one agent sampling interval."""

    __tablename__ = "metric_datum"
    __table_args__ = (Index("ix_metric_datum_query", "instance_id", "metric_name", "ts"),
                      Index("ix_metric_datum_account", "account_id", "metric_name", "ts"),
                      Index("ix_metric_datum_rolled_ts", "rolled", "ts"))
    id: int | None = Field(default=None, sa_column=Column(BigInteger().with_variant(
        Integer(), "sqlite"), primary_key=True, autoincrement=True))
    instance_id: str = Field(max_length=32)
    account_id: str = Field(max_length=32)
    metric_name: str = Field(max_length=32)
    #: End of the sampling interval, epoch milliseconds.
    ts: int = Field(sa_type=BigInteger)
    value: float
    #: Already added to its minute's MetricRollup row (the rollup pass sets it).
    rolled: bool = False


class MetricRollup(SQLModel, table=True):
    """Statistics of one metric of one instance over one minute."""

    __tablename__ = "metric_rollup"
    __table_args__ = (UniqueConstraint("instance_id", "metric_name", "minute",
                                       name="uq_metric_rollup_key"),
                      Index("ix_metric_rollup_account", "account_id", "metric_name", "minute"),
                      Index("ix_metric_rollup_minute", "minute"))
    id: int | None = Field(default=None, sa_column=Column(BigInteger().with_variant(
        Integer(), "sqlite"), primary_key=True, autoincrement=True))
    instance_id: str = Field(max_length=32)
    account_id: str = Field(max_length=32)
    metric_name: str = Field(max_length=32)
    #: Start of the minute, epoch milliseconds (a multiple of 60000).
    minute: int = Field(sa_type=BigInteger)
    sample_count: int
    sum: float
    minimum: float
    maximum: float
