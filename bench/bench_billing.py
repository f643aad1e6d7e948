"""Billing at scale: a month's bill for one account with many instances and transitions, and
every account's bill of a site, computed by Kumo's billing services (controller/services/
bills.py -> usage.py -> usage_calc.py) from usage intervals in a real (migrated) SQLite
database; time and peak memory, against a baseline measured in the same run on the same rows:
one plain SQL SUM of the clipped seconds times the rate (the floor of reading the rows once,
with no per-day items, price timeline or rounding).

The account's open bill is read three ways: computed from every interval (`cached=False`, the
reference), then the first and second reads with its settled days kept between reads
(services/open_bills.py); all three documents must be identical. The start-up metering
backfill (services/metering_backfill.py) is timed over the account's instances too.

    .venv/bin/python bench/bench_billing.py            # 10,000 x 100 transitions; 100,000 site
    .venv/bin/python bench/bench_billing.py --smoke    # tiny sizes (the test suite runs this)

Rows are generated directly (instance runs of 5-20 minutes, 100 transitions = 50 runs per
instance in the month; each instance's root disk for the whole month), which is what the
metering hooks would have written; the sum of billed seconds of both paths must agree exactly.
"""
from __future__ import annotations

import argparse
import random
import resource
import sys
import tempfile
import time
import tracemalloc
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import insert, text  # noqa: E402

from bench.common import machine_note  # noqa: E402
from controller import db_migrate  # noqa: E402
from controller.db import Database  # noqa: E402
from controller.models import Account, Instance  # noqa: E402
from controller.models.billing import UsageInterval  # noqa: E402
from controller.services import (bills, instance_types, metering_backfill,  # noqa: E402
                                 open_bills, prices)

MONTH = "2026-11"
START = datetime(2026, 11, 1, tzinfo=timezone.utc)
END = datetime(2026, 12, 1, tzinfo=timezone.utc)
NOW = datetime(2026, 11, 30, 23, 0, tzinfo=timezone.utc)  # an open bill: nothing is stored
# Seconds inside the period times the (single, current) rate of the row's usage type.
RATE_SQL = """
SELECT SUM(secs * CASE usage_type WHEN 'instance-hours' THEN 0.0104 / 3600.0
                                  ELSE quantity * 0.08 / 2628000.0 END),
       SUM(CASE usage_type WHEN 'instance-hours' THEN secs ELSE 0 END)
FROM (SELECT usage_type, quantity,
             ROUND((MIN(julianday(COALESCE(ended_at, :now)), julianday(:end))
                    - MAX(julianday(started_at), julianday(:start))) * 86400.0) AS secs
      FROM usage_interval
      WHERE {where} started_at < :end AND (ended_at IS NULL OR ended_at > :start))
"""


def populate(db: Database, accounts: int, instances: int, transitions: int, seed: int) -> int:
    """`instances` spread over `accounts`, each `transitions // 2` runs + a root disk."""
    rng = random.Random(seed)
    naive = lambda t: t.replace(tzinfo=None)  # noqa: E731 (UtcDateTime stores naive UTC)
    with db.engine.begin() as conn:
        conn.execute(insert(Account.__table__), [
            {"account_id": f"acct-{a:05d}", "name": f"a{a}", "is_admin": False,
             "api_key_hash": f"{a:064d}", "created_at": naive(START)} for a in range(accounts)])
        rows, n = [], 0
        span = (END - START).total_seconds() - 60
        for i in range(instances):
            acct, iid = f"acct-{i % accounts:05d}", f"i-{i:017x}"
            rows.append(dict(account_id=acct, resource_id=iid, kind="root-volume",
                             usage_type="volume-gib-month", dimension="", quantity=8,
                             started_at=naive(START - timedelta(days=1)), ended_at=None))
            runs = transitions // 2
            slot = span / runs
            for r in range(runs):
                begin = START + timedelta(seconds=int(r * slot + rng.uniform(0, slot / 3)))
                length = rng.randint(300, 1200)
                rows.append(dict(account_id=acct, resource_id=iid, kind="instance",
                                 usage_type="instance-hours", dimension="t3.micro", quantity=1,
                                 started_at=naive(begin),
                                 ended_at=naive(begin + timedelta(seconds=length))))
            if len(rows) >= 50000:
                conn.execute(insert(UsageInterval.__table__), rows)
                n, rows = n + len(rows), []
        if rows:
            conn.execute(insert(UsageInterval.__table__), rows)
            n += len(rows)
    return n


def measure(fn):
    """(seconds, result) of one timed call, then the peak traced MiB of a second call."""
    t = time.perf_counter()
    result = fn()
    took = time.perf_counter() - t
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return took, peak, result


def baseline(db: Database, account_id: str | None):
    where = "account_id = :acct AND" if account_id else ""
    params = {"now": NOW.replace(tzinfo=None).isoformat(sep=" "),
              "start": START.replace(tzinfo=None).isoformat(sep=" "),
              "end": END.replace(tzinfo=None).isoformat(sep=" "), "acct": account_id}
    with db.engine.connect() as conn:
        return conn.execute(text(RATE_SQL.format(where=where)), params).one()


def kumo_seconds(docs: list[dict]) -> int:
    return sum(line["seconds"] for d in docs for line in d["lines"])


def scenario(title: str, accounts: int, instances: int, transitions: int, one: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{tmp}/bench.db")
        db_migrate.upgrade(db)
        instance_types.seed(db)
        prices.seed(db)
        t = time.perf_counter()
        rows = populate(db, accounts, instances, transitions, seed=13)
        print(f"{title}: {instances} instances x {transitions} transitions in {accounts} "
              f"account(s): {rows} usage intervals (inserted in {time.perf_counter() - t:.1f} s)")
        admin = SimpleNamespace(account_id="admin", name="admin", is_admin=True)
        if one:
            acct = "acct-00000"
            k_time, k_peak, doc = measure(lambda: bills.get(db, admin, MONTH, acct, now=NOW,
                                                            cached=False))
            docs = [doc]
            open_bills.clear()
            t = time.perf_counter()
            first = bills.get(db, admin, MONTH, acct, now=NOW)
            first_time = time.perf_counter() - t
            t = time.perf_counter()
            second = bills.get(db, admin, MONTH, acct, now=NOW)
            second_time = time.perf_counter() - t
            # The first read after a midnight: the kept days end a day earlier, and the day
            # just ended is added to them (not the month recomputed).
            open_bills.clear()
            bills.get(db, admin, MONTH, acct, now=NOW - timedelta(days=1))
            t = time.perf_counter()
            next_day = bills.get(db, admin, MONTH, acct, now=NOW)
            next_day_time = time.perf_counter() - t
            b_time, b_peak, (b_amount, b_secs) = measure(lambda: baseline(db, acct))
        else:
            k_time, k_peak, docs = measure(lambda: bills.list_month(db, admin, MONTH, now=NOW))
            b_time, b_peak, (b_amount, b_secs) = measure(lambda: baseline(db, None))
        total = sum(float(d["total"]) for d in docs)
        print(f"  kumo bills ({len(docs)} bill(s))      {k_time:8.2f} s  peak traced "
              f"{k_peak:8.1f} MiB  total {total:.2f} (uncached: every interval)")
        if one:
            same = first == doc and second == doc and next_day == doc
            print(f"  open bill, settled days kept: first read {first_time:8.2f} s, second read "
                  f"{second_time:8.2f} s ({k_time / max(second_time, 1e-9):.0f}x faster than "
                  f"uncached), first read after a midnight {next_day_time:8.2f} s: "
                  f"{'identical' if same else 'DIFFERENT'}")
            if not same:
                raise SystemExit("cached open bill differs from the uncached computation")
        print(f"  baseline SQL SUM          {b_time:8.2f} s  peak traced {b_peak:8.1f} MiB  "
              f"total {b_amount:.2f} (unrounded)")
        print(f"  kumo / baseline: {k_time / max(b_time, 1e-9):.1f}x time")
        instance_secs = sum(ln["seconds"] for d in docs for ln in d["lines"]
                            if ln["usage_type"] == "instance-hours")
        print(f"  instance seconds: kumo {instance_secs} baseline {int(b_secs)}: "
              f"{'identical' if instance_secs == int(b_secs) else 'DIFFERENT'}")
        if one:
            backfill(db, accounts, instances)
        db.dispose()


def backfill(db: Database, accounts: int, instances: int) -> None:
    """The start-up backfill with every instance running and metered (nothing to open): what
    every controller start pays."""
    naive = NOW.replace(tzinfo=None)
    with db.engine.begin() as conn:
        conn.execute(insert(Instance.__table__), [
            dict(instance_id=f"i-{i:017x}", reservation_id=f"r-{i:017x}", image_id="ami-bench",
                 instance_type="t3.micro", vcpus=2, memory_mib=1024, root_disk_gib=8,
                 state="running", created_at=naive, updated_at=naive,
                 account_id=f"acct-{i % accounts:05d}") for i in range(instances)])
        # The runs' last stretch is open (the rows above all ended).
        conn.execute(text("UPDATE usage_interval SET ended_at = NULL WHERE id IN (SELECT MAX(id) "
                          "FROM usage_interval WHERE usage_type = 'instance-hours' "
                          "GROUP BY resource_id)"))
    with db.session(notify=False) as s:
        t = time.perf_counter()
        opened = metering_backfill.backfill(s, NOW)
        took = time.perf_counter() - t
        s.rollback()
    print(f"  metering backfill at start-up ({instances} running instances): {took:8.2f} s, "
          f"opened {opened}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (the test suite)")
    args = ap.parse_args()
    print(machine_note())
    if args.smoke:
        scenario("account bill", 1, 20, 10, one=True)
        scenario("site bills", 5, 100, 4, one=False)
    else:
        scenario("account bill", 1, 10_000, 100, one=True)
        scenario("site bills", 1_000, 100_000, 10, one=False)
    print(f"max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
