"""Metrics: the rules of ingesting agents' samples and answering CloudWatch-style statistics.

Ingest (POST /v1/agent/metrics): each sample of a MetricsBatch becomes one raw row per metric,
owned by the instance's account; samples of instances the controller does not know, or with a
time outside raw retention (or too far in the future), are refused and counted.

Statistics (GET /v1/metrics/statistics): Average, Minimum, Maximum, Sum and SampleCount of one
metric over consecutive periods of [start_time, end_time), for one dimension. A range that
starts within raw retention is answered from raw samples (period: a multiple of
metrics_sample_period_s); an older one from the 1-minute rollups, plus the raw samples the
rollup pass has not reached yet (period: a multiple of 60, start rounded down to the minute).
Validation follows CloudWatch: MissingParameter, InvalidParameterValue,
InvalidParameterCombination (400, nothing changed). A dimension resolves to a set of instances
(`_instances_of`): InstanceId, or AutoScalingGroupName (the group's instances). Users see
only their own instances' metrics (another account's instance answers no datapoints, as an
unknown one does); admins see all.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from sqlalchemy import func, insert, literal, select
from sqlmodel import col

from agent.contract.metrics_v1 import METRIC_UNITS, MetricsAck, MetricsBatch
from controller.db import Database
from controller.errors import InvalidParameter
from controller.models.instance import Instance
from controller.models.metric import MetricDatum, MetricRollup
from controller.services import autoscaling, group_metrics
from controller.services.accounts import Caller
from controller.settings import Settings

NAMESPACES = ("Kumo/EC2", "AWS/EC2")
STATISTICS = ("SampleCount", "Average", "Sum", "Minimum", "Maximum")
DIMENSIONS = ("InstanceId", "AutoScalingGroupName")
#: Samples stamped further than this in the future (agent clock skew) are refused.
MAX_FUTURE_MS = 300_000


@dataclass
class IngestCounters:
    """Process-local ingest counters for /metrics (Prometheus counters restart with the
    process; agents' dropped counts are their own cumulative totals, kept by host)."""

    accepted: int = 0
    rejected: int = 0
    batches: int = 0
    agent_dropped: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, host_id: str, accepted: int, rejected: int, dropped_total: int) -> None:
        with self.lock:
            self.accepted += accepted
            self.rejected += rejected
            self.batches += 1
            self.agent_dropped[host_id] = dropped_total


def _now_ms() -> int:
    return int(time.time() * 1000)


def ingest(db: Database, settings: Settings, batch: MetricsBatch, counters: IngestCounters,
           now_ms: int | None = None) -> MetricsAck:
    """Store a batch's samples as raw rows (one transaction); answer how many were taken."""
    now_ms = _now_ms() if now_ms is None else now_ms
    oldest = now_ms - settings.metrics_raw_retention_s * 1000
    ids = {s.instance_id for s in batch.samples}
    rows, rejected = [], 0
    # notify=False: samples change nothing the reconciler acts on.
    with db.session(notify=False) as s:
        owners = dict(s.execute(select(Instance.instance_id, Instance.account_id)
                             .where(col(Instance.instance_id).in_(ids))).all()) if ids else {}
        for sample in batch.samples:
            ts = int(sample.timestamp * 1000)
            account = owners.get(sample.instance_id)
            if account is None or ts < oldest or ts > now_ms + MAX_FUTURE_MS:
                rejected += 1
                continue
            rows.extend({"instance_id": sample.instance_id, "account_id": account,
                         "metric_name": name, "ts": ts, "value": float(value), "rolled": False}
                        for name, value in sample.values.items())
        if rows:
            s.execute(insert(MetricDatum), rows)
    accepted = len(batch.samples) - rejected
    counters.add(batch.host_id, accepted, rejected, batch.dropped_total)
    return MetricsAck(accepted=accepted, rejected=rejected)


# -- statistics ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class StatisticsQuery:
    """A validated statistics request: times in epoch milliseconds."""

    metric_name: str
    dimension: tuple[str, str] | None
    start_ms: int
    end_ms: int
    period_s: int
    statistics: tuple[str, ...]
    from_rollups: bool
    #: A group metric (namespace AWS/AutoScaling): rows keyed by the group's id.
    group_metric: bool = False


def _missing(name: str) -> InvalidParameter:
    return InvalidParameter(f"the parameter {name} is required", code="MissingParameter")


def _combination(message: str) -> InvalidParameter:
    return InvalidParameter(message, code="InvalidParameterCombination")


def _epoch_ms(t: datetime) -> int:
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)  # CloudWatch reads a time without zone as UTC
    return int(t.timestamp() * 1000)


def parse_query(settings: Settings, *, namespace: str | None, metric_name: str | None,
                dimensions: list[str] | None, start_time: datetime | None,
                end_time: datetime | None, period: int | None, statistics: list[str] | None,
                now_ms: int | None = None) -> StatisticsQuery:
    """Validate a statistics request the way CloudWatch does (raises InvalidParameter with
    code MissingParameter / InvalidParameterValue / InvalidParameterCombination)."""
    now_ms = _now_ms() if now_ms is None else now_ms
    for name, value in (("Namespace", namespace), ("MetricName", metric_name),
                        ("StartTime", start_time), ("EndTime", end_time), ("Period", period)):
        if value is None or value == "":
            raise _missing(name)
    group_metric = namespace == group_metrics.NAMESPACE
    if namespace not in NAMESPACES and not group_metric:
        raise InvalidParameter(f"unknown namespace {namespace!r}: use one of "
                               f"{', '.join(NAMESPACES + (group_metrics.NAMESPACE,))}")
    if metric_name not in (group_metrics.GROUP_METRIC_UNITS if group_metric else METRIC_UNITS):
        raise InvalidParameter(f"unknown metric {metric_name!r} in {namespace}")
    stats = [x.strip() for item in (statistics or []) for x in item.split(",") if x.strip()]
    if not stats:
        raise _missing("Statistics")
    for x in stats:
        if x not in STATISTICS:
            raise InvalidParameter(f"unknown statistic {x!r}: use {', '.join(STATISTICS)}")
    dims = []
    for d in dimensions or []:
        name, sep, value = d.partition("=")
        if not sep or not value:
            raise InvalidParameter(f"dimension {d!r} is not Name=Value")
        if name not in DIMENSIONS:
            raise InvalidParameter(f"unknown dimension {name!r}: use {', '.join(DIMENSIONS)}")
        if len(value) > 255:
            raise InvalidParameter("a dimension value has at most 255 characters")
        dims.append((name, value))
    if len(dims) > 1:
        raise _combination("at most one dimension per request")
    if group_metric and [n for n, _ in dims] != [group_metrics.DIMENSION]:
        raise _combination(f"{namespace} metrics need the dimension {group_metrics.DIMENSION}")
    if period < 1:
        raise InvalidParameter("the parameter Period must be a positive number of seconds")
    start_ms, end_ms = _epoch_ms(start_time), _epoch_ms(end_time)
    if start_ms >= end_ms:
        raise InvalidParameter("the parameter StartTime must be less than the parameter EndTime")
    from_rollups = start_ms < now_ms - settings.metrics_raw_retention_s * 1000
    if from_rollups:
        if period % 60:
            raise _combination("a range that starts more than "
                               f"{settings.metrics_raw_retention_s} s ago is kept in 1-minute "
                               "statistics: Period must be a multiple of 60")
        start_ms -= start_ms % 60_000
    elif period % settings.metrics_sample_period_s and period % 60:
        raise InvalidParameter("the parameter Period must be a multiple of "
                               f"{settings.metrics_sample_period_s} (or of 60)")
    points = math.ceil((end_ms - start_ms) / (period * 1000))
    if points > settings.metrics_max_datapoints:
        raise _combination(f"you have requested up to {points} datapoints, which exceeds the "
                           f"limit of {settings.metrics_max_datapoints}: widen the Period or "
                           "narrow the range")
    return StatisticsQuery(metric_name, dims[0] if dims else None, start_ms, end_ms, period,
                           tuple(dict.fromkeys(stats)), from_rollups, group_metric)


@dataclass
class Bucket:
    """Running statistics of one period; merge() adds partial statistics of the same period."""

    count: int = 0
    total: float = 0.0
    minimum: float = math.inf
    maximum: float = -math.inf

    def merge(self, count: int, total: float, minimum: float, maximum: float) -> None:
        self.count += count
        self.total += total
        self.minimum = min(self.minimum, minimum)
        self.maximum = max(self.maximum, maximum)

    def statistic(self, name: str) -> float:
        return {"SampleCount": float(self.count), "Sum": self.total,
                "Average": self.total / self.count if self.count else 0.0,
                "Minimum": self.minimum, "Maximum": self.maximum}[name]


def _instances_of(s, caller: Caller, q: StatisticsQuery) -> list[str] | None:
    """The instances the query's dimension names (None: no dimension, every instance)."""
    if q.dimension is None:
        return None
    name, value = q.dimension
    if q.group_metric:  # group metrics' rows are keyed by the group's id
        return group_metrics.group_ids(s, None if caller.is_admin else caller.account_id, value)
    if name == "AutoScalingGroupName":
        account = None if caller.is_admin else caller.account_id
        return autoscaling.group_instance_ids(s, account, value)
    return [value]


def _scope(stmt, table, caller: Caller, q: StatisticsQuery, ids: list[str] | None):
    """Rows of the query's metric that the caller may see, of the dimension's instances."""
    stmt = stmt.where(table.metric_name == q.metric_name)
    if not caller.is_admin:
        stmt = stmt.where(table.account_id == caller.account_id)
    if ids is not None:
        stmt = stmt.where(col(table.instance_id).in_(ids))
    return stmt


def get_statistics(db: Database, caller: Caller, q: StatisticsQuery) -> dict:
    """Datapoints of the query's metric, oldest first; periods without samples are left out."""
    period_ms = q.period_s * 1000
    buckets: dict[int, Bucket] = {}

    def add(rows) -> None:
        for b, count, total, lo, hi in rows:
            buckets.setdefault(int(b), Bucket()).merge(int(count), float(total), float(lo),
                                                       float(hi))

    # Integer division on integer milliseconds: the same truncation in SQLite and PostgreSQL.
    with db.session(notify=False) as s:
        ids = _instances_of(s, caller, q)
        if q.from_rollups:
            r = MetricRollup
            b = ((r.minute - literal(q.start_ms)) // literal(period_ms)).label("b")
            stmt = select(b, func.sum(r.sample_count), func.sum(r.sum), func.min(r.minimum),
                          func.max(r.maximum)).where(r.minute >= q.start_ms, r.minute < q.end_ms)
            add(s.execute(_scope(stmt, r, caller, q, ids).group_by(b)).all())
        d = MetricDatum
        b = ((d.ts - literal(q.start_ms)) // literal(period_ms)).label("b")
        stmt = select(b, func.count(), func.sum(d.value), func.min(d.value),
                      func.max(d.value)).where(d.ts >= q.start_ms, d.ts < q.end_ms)
        if q.from_rollups:
            stmt = stmt.where(d.rolled == False)  # noqa: E712  (rolled rows are in the rollups)
        add(s.execute(_scope(stmt, d, caller, q, ids).group_by(b)).all())
    unit = (group_metrics.GROUP_METRIC_UNITS if q.group_metric else METRIC_UNITS)[q.metric_name]
    points = []
    for b in sorted(buckets):
        at = datetime.fromtimestamp((q.start_ms + b * period_ms) / 1000, tz=timezone.utc)
        point = {"timestamp": at.isoformat().replace("+00:00", "Z"), "unit": unit}
        point.update({name: round(buckets[b].statistic(name), 6) for name in q.statistics})
        points.append(point)
    return {"label": q.metric_name, "datapoints": points}
