"""The metrics maintenance pass: raw samples -> 1-minute rollups, then retention of both.

Level-triggered and bounded: each pass looks at what the tables hold now (raw rows not yet
rolled up, rows past their retention) and handles at most `metrics_pass_rows` rows of each
kind, so a backlog (a controller that was down, a burst of late batches) is worked off over
several passes without one long transaction. A late sample of an already rolled-up minute is
simply merged into that minute's row. Raw rows are deleted only once rolled up, so no sample is
lost to retention before it reached its minute.

Cost per pass is proportional to the rows it handles, not to the backlog: the rows are claimed
by a primary-key range (_claim) and merged with one upsert (_upsert); at 10,000 instances x 9
metrics at 5 s (18,000 rows/s) that matters (bench/bench_autoscaling.py, RESULTS.md).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy import case, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import col

from controller import periodic
from controller.db import Database
from controller.models.metric import MetricDatum, MetricRollup
from controller.settings import Settings

log = logging.getLogger(__name__)

MINUTE_MS = 60_000


@dataclass(frozen=True)
class PassResult:
    rolled: int = 0
    raw_deleted: int = 0
    rollups_deleted: int = 0

    def full(self, limit: int) -> bool:
        """The pass hit its bound somewhere: there may be more to do right away."""
        return max(self.rolled, self.raw_deleted, self.rollups_deleted) >= limit


def rollup_rows(rows) -> dict[tuple[str, str, int], list]:
    """Raw rows (instance_id, account_id, metric_name, ts, value) -> per (instance, metric,
    minute): [account_id, count, sum, min, max]. Pure: the arithmetic of one pass."""
    out: dict[tuple[str, str, int], list] = {}
    for instance_id, account_id, name, ts, value in rows:
        key = (instance_id, name, ts - ts % MINUTE_MS)
        acc = out.get(key)
        if acc is None:
            out[key] = [account_id, 1, value, value, value]
        else:
            acc[1] += 1
            acc[2] += value
            acc[3] = min(acc[3], value)
            acc[4] = max(acc[4], value)
    return out


def _upsert(dialect: str):
    """INSERT of rollup rows that adds into the row of the same (instance, metric, minute)
    where one exists (a late sample of a minute rolled up before, and most minutes' rows: a
    minute's samples arrive over a minute of passes). One executemany per pass, no read:
    finding and updating the existing rows as ORM objects (one UPDATE each) was ~80% of a pass
    (bench/bench_autoscaling.py, profiled). SQLite and PostgreSQL spell it the same way
    (ON CONFLICT ... DO UPDATE over the unique key)."""
    # The Core table, not the mapped class: the ORM's bulk insert path cost ~4 us a row.
    table = MetricRollup.__table__
    ins = (sqlite_insert if dialect == "sqlite" else pg_insert)(table)
    r, new = table.c, ins.excluded
    return ins.on_conflict_do_update(
        index_elements=["instance_id", "metric_name", "minute"],
        set_=dict(sample_count=r.sample_count + new.sample_count, sum=r.sum + new.sum,
                  minimum=case((new.minimum < r.minimum, new.minimum), else_=r.minimum),
                  maximum=case((new.maximum > r.maximum, new.maximum), else_=r.maximum)))


def _claim(s, limit: int) -> list:
    """Mark up to `limit` unrolled raw rows rolled, the lowest ids first, and return them
    (instance_id, account_id, metric_name, ts, value): one UPDATE ... RETURNING over a range
    of the primary key, so exactly the rows summed are marked, even where an id below the
    range commits late (PostgreSQL sequences), and a concurrent pass cannot take them twice.

    Why by id range: "WHERE NOT rolled ORDER BY id LIMIT n" went through the (rolled, ts)
    index and sorted the whole backlog every pass (bench/bench_autoscaling.py: ~0.5 s a pass
    at a 540,000-row backlog, so catching up was quadratic). Here only the lowest unrolled id
    comes from that index (min() over its rolled = false entries, no sort, no table rows);
    the range's end is a walk of `limit` entries of the primary key. The rolled test in the
    UPDATE is written `IS NOT true` because SQLite would otherwise pick the (rolled, ts)
    index over the id range and visit the whole backlog."""
    d = MetricDatum
    lo = s.execute(select(func.min(d.id)).where(d.rolled == False)).scalar()  # noqa: E712
    if lo is None:
        return []
    hi = s.execute(select(d.id).where(d.id >= lo).order_by(d.id).offset(limit - 1)
                   .limit(1)).scalar()
    stmt = update(d).where(d.id >= lo, d.rolled.is_not(True))
    if hi is not None:
        stmt = stmt.where(d.id <= hi)
    # Plain tuples: rollup_rows unpacks each row, ~3x slower from a Row.
    return [tuple(row) for row in s.execute(stmt.values(rolled=True).returning(
        d.instance_id, d.account_id, d.metric_name, d.ts, d.value)
        .execution_options(synchronize_session=False))]


def maintain(db: Database, settings: Settings, now_ms: int | None = None) -> PassResult:
    """One bounded pass: roll up, then apply retention."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    limit = settings.metrics_pass_rows
    d, r = MetricDatum, MetricRollup
    with db.session(notify=False) as s:
        raw = _claim(s, limit)
        sums = rollup_rows(raw)
        if sums:
            s.execute(_upsert(db.engine.dialect.name), [
                dict(instance_id=instance_id, account_id=account, metric_name=name,
                     minute=minute, sample_count=n, sum=total, minimum=lo, maximum=hi)
                for (instance_id, name, minute), (account, n, total, lo, hi) in sums.items()])
        raw_horizon = now_ms - settings.metrics_raw_retention_s * 1000
        old = s.execute(select(d.id).where(d.rolled == True, d.ts < raw_horizon)  # noqa: E712
                        .order_by(d.ts).limit(limit)).scalars().all()
        if old:
            s.execute(delete(d).where(col(d.id).in_(old)))
        rollup_horizon = now_ms - settings.metrics_rollup_retention_s * 1000
        old_rollups = s.execute(select(r.id).where(r.minute < rollup_horizon)
                                .order_by(r.minute).limit(limit)).scalars().all()
        if old_rollups:
            s.execute(delete(r).where(col(r.id).in_(old_rollups)))
    return PassResult(len(raw), len(old), len(old_rollups))


async def run_forever(db: Database, settings: Settings) -> None:
    """The controller's maintenance loop: a pass every metrics_maintenance_interval_s, and at
    once again while passes come back full."""
    await periodic.every(settings.metrics_maintenance_interval_s, lambda: maintain(db, settings),
                         "metrics maintenance pass",
                         again=lambda result: result.full(settings.metrics_pass_rows))
