"""metric_rollup.maintain merges late samples into minutes already rolled up: the rollup rows
it finds in bulk (one query per chunk of 500 instances) are the ones it adds to, whatever
the number of instances in a pass; new keys get new rows.
"""
from __future__ import annotations

from sqlalchemy import insert
from sqlmodel import SQLModel, select

from controller.db import Database
from controller.models.metric import MetricDatum, MetricRollup
from controller.services.metric_rollup import maintain
from controller.settings import Settings

MINUTE = 1_800_000_000_000 - 1_800_000_000_000 % 60_000


def _raw(ids, ts, value):
    return [dict(instance_id=i, account_id="acct-1", metric_name="CPUUtilization", ts=ts,
                 value=value, rolled=False) for i in ids]


def test_late_samples_merge_into_existing_minutes(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'm.db'}")
    SQLModel.metadata.create_all(db.engine)
    settings = Settings(state_dir=tmp_path)
    now = MINUTE + 120_000
    ids = [f"i-{n:017x}" for n in range(700)]  # more than one chunk of instances
    with db.session() as s:
        s.execute(insert(MetricDatum), _raw(ids, MINUTE + 5_000, 10.0))
    assert maintain(db, settings, now).rolled == 700
    with db.session() as s:  # late: the same minute for all, plus a new instance
        s.execute(insert(MetricDatum), _raw(ids + ["i-" + "f" * 17], MINUTE + 50_000, 30.0))
    assert maintain(db, settings, now).rolled == 701
    with db.session(notify=False) as s:
        rows = {r.instance_id: r for r in s.exec(select(MetricRollup))}
    assert len(rows) == 701
    for i in ids:
        r = rows[i]
        assert (r.minute, r.sample_count, r.sum, r.minimum, r.maximum) == (
            MINUTE, 2, 40.0, 10.0, 30.0)
    assert rows["i-" + "f" * 17].sample_count == 1
    db.dispose()
