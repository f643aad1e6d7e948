"""The metrics maintenance pass: raw samples -> 1-minute rollups, then retention of both.

Level-triggered and bounded: each pass looks at what the tables hold now (raw rows not yet
rolled up, rows past their retention) and handles at most `metrics_pass_rows` rows of each
kind, so a backlog (a controller that was down, a burst of late batches) is worked off over
several passes without one long transaction. A late sample of an already rolled-up minute is
simply merged into that minute's row. Raw rows are deleted only once rolled up, so no sample is
lost to retention before it reached its minute.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlmodel import col

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


def maintain(db: Database, settings: Settings, now_ms: int | None = None) -> PassResult:
    """One bounded pass: roll up, then apply retention."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    limit = settings.metrics_pass_rows
    d, r = MetricDatum, MetricRollup
    with db.session(notify=False) as s:
        raw = s.execute(select(d.id, d.instance_id, d.account_id, d.metric_name, d.ts, d.value)
                        .where(d.rolled == False)  # noqa: E712
                        .order_by(d.id).limit(limit)).all()
        for (instance_id, name, minute), (account, n, total, lo, hi) in rollup_rows(
                [row[1:] for row in raw]).items():
            row = s.execute(select(r).where(r.instance_id == instance_id, r.metric_name == name,
                                            r.minute == minute)).scalar_one_or_none()
            if row is None:
                s.add(MetricRollup(instance_id=instance_id, account_id=account, metric_name=name,
                                   minute=minute, sample_count=n, sum=total, minimum=lo,
                                   maximum=hi))
            else:
                row.sample_count += n
                row.sum += total
                row.minimum = min(row.minimum, lo)
                row.maximum = max(row.maximum, hi)
                s.add(row)
        if raw:
            s.execute(update(d).where(col(d.id).in_([row[0] for row in raw])).values(rolled=True))
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
    while True:
        try:
            result = await asyncio.to_thread(maintain, db, settings)
            if result.full(settings.metrics_pass_rows):
                await asyncio.sleep(0)
                continue
        except Exception:
            log.exception("metrics maintenance pass failed")
        await asyncio.sleep(settings.metrics_maintenance_interval_s)
