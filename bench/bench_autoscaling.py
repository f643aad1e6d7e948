"""Benchmark: the Auto Scaling evaluation cost (issue 11) on a real controller database.

(a) One group controller tick (controller/services/autoscaling_controller.py tick) with 1,000
groups and 10,000 InService member instances: half of the groups have a target tracking policy
(CPU 50%), a quarter have two scheduled actions (weekdays / weekends, not due), and every
instance has 15 s of raw samples (3 samples at 5 s of all nine metrics; CPU around the target,
so no policy changes anything). The steady state: a tick that must decide and change nothing.
Reported: time per tick (median and max of --ticks) and SQL statements per tick (a
SQLAlchemy before_cursor_execute listener). Same-run baselines: the floor any evaluation pays,
one plain SELECT of every group's average CPU over the same metric rows (sqlite3, no ORM); and
the same tick after the policies and schedules are deleted (the structure-only pass).

(b) Metric ingest through the real service (controller/services/metrics.py ingest, what POST
/v1/agent/metrics calls) of 10,000 instances' batches at 5 s sampling (--ingest-seconds of
data, in batches of --per-host samples as one agent per host sends them); baseline: a plain
sqlite3 executemany INSERT of the same rows, one transaction per batch, on the same table.
Then the store: bytes per raw row and per 1-minute rollup row (SQLite's dbstat, table plus its
indexes), metric_rollup.maintain's rate, and the size after the retention window configured in
Settings (raw + rollups), computed from the measured bytes per row.

Set-up rows are bulk-inserted directly (fast); the measured parts go through the services.
SQLite (the controller's default database) only. The clock of the measured parts is fixed
(the seeding time), as the tests drive it.

Usage: .venv/bin/python bench/bench_autoscaling.py [--groups 1000] [--per-group 10]
       [--ticks 3] [--ingest-seconds 30] [--per-host 100] [--profile] [--smoke]
"""
from __future__ import annotations

import argparse
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import SMOKE_HELP, exit_status, machine_note, median  # noqa: E402

CPU = "CPUUtilization"
PERIOD_S = 5
TICK_TARGET_S = 2.0  # the controller's autoscaling_interval_s: a tick must fit in it
FLOOR_SQL = ("SELECT ai.group_id, avg(m.value) FROM metric_datum m JOIN autoscaling_instance ai "
             "ON ai.instance_id = m.instance_id WHERE m.metric_name = ? AND m.ts > ? AND "
             "m.ts <= ? AND ai.lifecycle_state = 'InService' GROUP BY ai.group_id")


def sample_values(rng: random.Random) -> dict[str, float]:
    """One instance's 5 s of metrics; CPU within the 50% target's tolerance band."""
    return {CPU: rng.uniform(46.0, 54.0), "NetworkIn": rng.uniform(1e4, 1e6),
            "NetworkOut": rng.uniform(1e4, 1e6), "NetworkPacketsIn": float(rng.randint(10, 900)),
            "NetworkPacketsOut": float(rng.randint(10, 900)), "DiskReadBytes": 4096.0 * rng.randint(0, 99),
            "DiskWriteBytes": 4096.0 * rng.randint(0, 99), "DiskReadOps": float(rng.randint(0, 99)),
            "DiskWriteOps": float(rng.randint(0, 99))}


def make_app(state: Path):
    from controller.app import create_app
    from controller.settings import Settings
    # Loops off: nothing but the benchmark touches the database.
    return create_app(Settings(state_dir=state, reconcile_interval_s=0,
                               autoscaling_interval_s=0, metrics_maintenance_interval_s=0))


def instance_rows(account_id: str, n: int, now) -> list[dict]:
    from controller.ids import new_id
    t0 = now - timedelta(hours=2)
    return [dict(instance_id=new_id("i"), reservation_id=new_id("r"), image_id="ami-bench",
                 instance_type="t3.nano", vcpus=1, memory_mib=256, root_disk_gib=1,
                 key_name=None, tags={}, state="running", instance_status="ok",
                 system_status="ok", host_id="h-bench", launch_time=t0,
                 private_ip=f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
                 mac=f"52:54:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
                 hostname=f"ip-{i}", client_token=None, created_at=t0, updated_at=t0,
                 account_id=account_id, user_data_b64="", generation=1, acked_generation=1,
                 power="running", observed_power="running", observed_booted=True,
                 observed_boot_count=1) for i in range(n)]


def seed_groups(db, account_id: str, groups: int, per_group: int, now, rng) -> list[str]:
    """Groups, members, policies, schedules and 15 s of samples; -> the instance ids."""
    from sqlalchemy import insert

    from controller.ids import new_id
    from controller.models import Instance
    from controller.models.autoscaling import AutoScalingGroup, AutoScalingInstance
    from controller.models.autoscaling_policies import ScalingPolicy, ScheduledAction
    from controller.models.metric import MetricDatum
    t = time.perf_counter()
    insts = instance_rows(account_id, groups * per_group, now)
    grows, members, policies, actions = [], [], [], []
    for g in range(groups):
        gid = new_id("asg")
        grows.append(dict(group_id=gid, account_id=account_id, name=f"bench-{g:05d}",
                          launch_template_id="lt-bench", launch_template_version="$Default",
                          min_size=1, max_size=per_group * 2, desired_capacity=per_group,
                          vpc_id="vpc-bench", subnet_ids=["subnet-bench"],
                          health_check_grace_period=300, default_cooldown=300,
                          termination_policies=["Default"], tags={},
                          new_instances_protected_from_scale_in=False, launch_failures=0,
                          created_at=now - timedelta(days=1), updated_at=now - timedelta(days=1)))
        for row in insts[g * per_group:(g + 1) * per_group]:
            members.append(dict(instance_id=row["instance_id"], group_id=gid,
                                account_id=account_id, lifecycle_state="InService",
                                health_status="Healthy", protected_from_scale_in=False,
                                subnet_id="subnet-bench", launch_template_id="lt-bench",
                                launch_template_version=1, launched_at=now - timedelta(hours=1),
                                in_service_at=now - timedelta(hours=1),
                                launch_activity_id="act-seed"))
        if g % 2 == 0:
            policies.append(dict(policy_id=new_id("pol"), group_id=gid, account_id=account_id,
                                 name="cpu50", policy_type="TargetTrackingScaling",
                                 metric_type="ASGAverageCPUUtilization", target_value=50.0,
                                 disable_scale_in=False, created_at=now - timedelta(days=1)))
        if g % 4 == 1:
            for name, cron in (("weekdays", "0 8 * * 1-5"), ("weekends", "0 8 * * 0,6")):
                actions.append(dict(action_id=new_id("sch"), group_id=gid,
                                    account_id=account_id, name=name, recurrence=cron,
                                    time_zone="Europe/Paris", desired_capacity=per_group,
                                    last_occurrence=now, created_at=now - timedelta(days=1)))
    now_ms = int(now.timestamp() * 1000)
    datums = [dict(instance_id=row["instance_id"], account_id=account_id, metric_name=name,
                   ts=now_ms - k * PERIOD_S * 1000, value=value, rolled=False)
              for row in insts for k in range(3)
              for name, value in sample_values(rng).items()]
    with db.session(notify=False) as s:
        s.execute(insert(Instance), insts)
        s.execute(insert(AutoScalingGroup), grows)
        s.execute(insert(AutoScalingInstance), members)
        if policies:
            s.execute(insert(ScalingPolicy), policies)
        if actions:
            s.execute(insert(ScheduledAction), actions)
        s.execute(insert(MetricDatum), datums)
    print(f"seeded {groups} groups, {len(members)} InService members, {len(policies)} target "
          f"tracking policies, {len(actions)} scheduled actions, {len(datums)} raw metric rows "
          f"in {time.perf_counter() - t:.1f} s (bulk INSERTs)", flush=True)
    return [row["instance_id"] for row in insts]


@contextmanager
def counting(engine):
    """Count the SQL statements the engine sends while the block runs."""
    from sqlalchemy import event
    n = [0]

    def bump(*_a, **_k):
        n[0] += 1
    event.listen(engine, "before_cursor_execute", bump)
    try:
        yield n
    finally:
        event.remove(engine, "before_cursor_execute", bump)


def time_ticks(db, settings, now, ticks: int) -> tuple[list[float], int, dict]:
    from controller.services import autoscaling_controller
    times, stats = [], {}
    with counting(db.engine) as n:
        for _ in range(ticks):
            t = time.perf_counter()
            stats = autoscaling_controller.tick(db, settings, now)
            times.append(time.perf_counter() - t)
    return times, n[0] // ticks, stats


def desired_total(db_path: Path) -> int:
    with sqlite3.connect(db_path) as c:
        return c.execute("SELECT sum(desired_capacity) FROM autoscaling_group").fetchone()[0]


def bench_tick(tmp: Path, groups: int, per_group: int, ticks: int,
               profile: bool) -> tuple[bool, bool]:
    from controller.app import close_app
    from controller.ids import utcnow
    rng = random.Random(11)
    state = tmp / "tick"
    app = make_app(state)
    ok = True
    try:
        db, settings = app.state.kumo.db, app.state.kumo.settings
        from controller.services import accounts
        acct, _ = accounts.create(db, "bench")
        now = utcnow().replace(microsecond=0)
        seed_groups(db, acct.account_id, groups, per_group, now, rng)
        db_path = state / "kumo.db"
        before = desired_total(db_path)
        times, queries, stats = time_ticks(db, settings, now, ticks)
        changed = desired_total(db_path) != before
        quiet = not changed and not any(stats.values())
        ok = ok and quiet
        print(f"\n(a) {groups} groups, {groups * per_group} instances, tick x{ticks}:")
        print(f"  kumo tick (policies + schedules)      median {median(times) * 1000:9.1f} ms  "
              f"max {max(times) * 1000:9.1f} ms  {queries} SQL statements/tick  "
              f"= {median(times) / groups * 1e6:.0f} us/group")
        print(f"  tick result: {stats}; desired capacity unchanged: {not changed} "
              f"({'OK' if quiet else 'FAIL: the steady state changed something'})")
        if profile:
            import cProfile
            import pstats
            from controller.services import autoscaling_controller
            prof = cProfile.Profile()
            prof.runcall(autoscaling_controller.tick, db, settings, now)
            print("  profile of one tick (cumulative, top 25):")
            pstats.Stats(prof, stream=sys.stdout).sort_stats("cumulative").print_stats(25)
        lo, hi = int(now.timestamp() * 1000) - 15_000, int(now.timestamp() * 1000)
        floors = []
        with sqlite3.connect(db_path) as c:
            for _ in range(max(3, ticks)):
                t = time.perf_counter()
                rows = c.execute(FLOOR_SQL, (CPU, lo, hi)).fetchall()
                floors.append(time.perf_counter() - t)
            assert len(rows) == groups, len(rows)
            c.execute("DELETE FROM scaling_policy")
            c.execute("DELETE FROM scheduled_action")
        print(f"  baseline: one SELECT of every group's avg CPU (sqlite3)  median "
              f"{median(floors) * 1000:9.1f} ms  ({len(rows)} groups)")
        bare, bare_q, bare_stats = time_ticks(db, settings, now, ticks)
        ok = ok and not any(bare_stats.values())
        print(f"  baseline: same tick, no policies or schedules  median "
              f"{median(bare) * 1000:9.1f} ms  max {max(bare) * 1000:9.1f} ms  "
              f"{bare_q} SQL statements/tick")
        print(f"  tick / one-SELECT floor: {median(times) / median(floors):.0f}x; "
              f"tick / structure-only tick: {median(times) / median(bare):.1f}x")
        fits = median(times) < TICK_TARGET_S
        print(f"target: a {groups}-group tick within the {TICK_TARGET_S:.0f} s interval: "
              f"{'PASS' if fits else 'FAIL'}")
    finally:
        close_app(app)
    return ok, fits


def table_bytes(db_path: Path, table: str) -> int:
    """Bytes of a table and its indexes (SQLite's dbstat)."""
    with sqlite3.connect(db_path) as c:
        names = [table] + [r[0] for r in c.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?", (table,))]
        return sum(c.execute("SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name = ?",
                             (name,)).fetchone()[0] for name in names)


def bench_ingest(tmp: Path, n: int, seconds: int, per_host: int) -> bool:
    from agent.contract.metrics_v1 import MetricsBatch
    from controller.app import close_app
    from controller.ids import utcnow
    from controller.models import Instance
    from controller.services import accounts, metric_rollup, metrics
    from sqlalchemy import insert
    rng = random.Random(5)
    state = tmp / "ingest"
    app = make_app(state)
    ok = True
    try:
        db, settings = app.state.kumo.db, app.state.kumo.settings
        acct, _ = accounts.create(db, "bench")
        # Every sample in one minute (at :20-:50): the rollup count does not depend on when
        # the benchmark runs (a 30 s window would straddle a minute now and then).
        now = utcnow().replace(second=50, microsecond=0)
        insts = instance_rows(acct.account_id, n, now)
        with db.session(notify=False) as s:
            s.execute(insert(Instance), insts)
        ids = [r["instance_id"] for r in insts]
        t0 = now.timestamp() - seconds
        rounds = seconds // PERIOD_S
        batches = []  # (now_ms, batch): built before timing, as the route's body parsing is
        for k in range(rounds):
            ts = t0 + (k + 1) * PERIOD_S
            for h in range(0, n, per_host):
                batches.append((int(ts * 1000) + 50, MetricsBatch(
                    host_id=f"h-{h // per_host}", sent_at=ts,
                    samples=[{"instance_id": i, "timestamp": ts, "interval": PERIOD_S,
                              "values": sample_values(rng)} for i in ids[h:h + per_host]])))
        counters = metrics.IngestCounters()
        t = time.perf_counter()
        for now_ms, batch in batches:
            ack = metrics.ingest(db, settings, batch, counters, now_ms=now_ms)
            ok = ok and ack.rejected == 0
        took = time.perf_counter() - t
        samples = counters.accepted
        rows = samples * 9
        need = n / PERIOD_S
        print(f"\n(b) ingest: {n} instances x {rounds} rounds of {PERIOD_S} s sampling, "
              f"{len(batches)} batches of {per_host} samples ({rows} rows):")
        print(f"  kumo metrics.ingest          {took:7.2f} s = {samples / took:9.0f} samples/s "
              f"= {rows / took:9.0f} rows/s  ({samples / took / need:.1f}x the {need:.0f} "
              f"samples/s {n} instances at {PERIOD_S} s make)")
        db_path = state / "kumo.db"
        raw_bytes = table_bytes(db_path, "metric_datum")
        per_raw = raw_bytes / rows
        # Baseline: the same rows, one executemany per batch, straight into the same table.
        account = acct.account_id
        plain = [[(s.instance_id, account, name, int(s.timestamp * 1000), float(v), 0)
                  for s in b.samples for name, v in s.values.items()] for _, b in batches]
        c = sqlite3.connect(db_path, isolation_level=None)
        c.execute("PRAGMA synchronous=NORMAL")
        top = c.execute("SELECT max(id) FROM metric_datum").fetchone()[0]
        t = time.perf_counter()
        for chunk in plain:
            c.execute("BEGIN IMMEDIATE")
            c.executemany("INSERT INTO metric_datum (instance_id, account_id, metric_name, ts, "
                          "value, rolled) VALUES (?, ?, ?, ?, ?, ?)", chunk)
            c.execute("COMMIT")
        base = time.perf_counter() - t
        c.execute("DELETE FROM metric_datum WHERE id > ?", (top,))
        c.close()
        print(f"  baseline plain executemany   {base:7.2f} s = {samples / base:9.0f} samples/s "
              f"= {rows / base:9.0f} rows/s;  kumo / baseline time: {took / base:.2f}x")
        # Maintenance: roll everything up, as the loop would (passes until one is not full).
        end_ms = int(now.timestamp() * 1000) + 1000
        t = time.perf_counter()
        passes = rolled = 0
        while True:
            r = metric_rollup.maintain(db, settings, now_ms=end_ms)
            passes += 1
            rolled += r.rolled
            if not r.full(settings.metrics_pass_rows):
                break
        mt = time.perf_counter() - t
        with sqlite3.connect(db_path) as c:
            nroll = c.execute("SELECT count(*) FROM metric_rollup").fetchone()[0]
            left = c.execute("SELECT count(*) FROM metric_datum WHERE rolled = 0").fetchone()[0]
        ok = ok and rolled == rows and left == 0
        per_roll = table_bytes(db_path, "metric_rollup") / nroll
        print(f"  metric_rollup.maintain: {rolled} raw rows -> {nroll} rollup rows in "
              f"{passes} passes, {mt:.2f} s = {rolled / mt:.0f} raw rows/s (ingest of "
              f"10,000 instances at {PERIOD_S} s makes {10_000 * 9 / PERIOD_S:.0f} rows/s)")
        print(f"  store: {per_raw:.0f} bytes per raw row, {per_roll:.0f} bytes per rollup row "
              "(table + indexes, dbstat)")
        raw_rows = 10_000 * 9 * settings.metrics_raw_retention_s / PERIOD_S
        roll_rows = 10_000 * 9 * settings.metrics_rollup_retention_s / 60
        gib = 1024 ** 3
        print(f"  10,000 instances after retention (raw {settings.metrics_raw_retention_s} s, "
              f"rollups {settings.metrics_rollup_retention_s} s): raw {raw_rows / 1e6:.1f} M "
              f"rows = {raw_rows * per_raw / gib:.1f} GiB, rollups {roll_rows / 1e6:.0f} M rows "
              f"= {roll_rows * per_roll / gib:.1f} GiB, total "
              f"{(raw_rows * per_raw + roll_rows * per_roll) / gib:.1f} GiB")
        print(f"  ingest checks (nothing rejected, everything rolled up): "
              f"{'OK' if ok else 'FAIL'}")
    finally:
        close_app(app)
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--groups", type=int, default=1000)
    ap.add_argument("--per-group", type=int, default=10, help="InService members per group")
    ap.add_argument("--ticks", type=int, default=3)
    ap.add_argument("--instances", type=int, default=10_000, help="instances for ingest")
    ap.add_argument("--ingest-seconds", type=int, default=30)
    ap.add_argument("--per-host", type=int, default=100, help="samples per agent batch")
    ap.add_argument("--profile", action="store_true", help="cProfile one more tick")
    ap.add_argument("--smoke", action="store_true",
                    help=SMOKE_HELP + " (20 groups x 3, 200 instances x 10 s)")
    args = ap.parse_args()
    if args.smoke:
        args.groups, args.per_group, args.ticks = 20, 3, 2
        args.instances, args.ingest_seconds, args.per_host = 200, 10, 50
    print("auto scaling evaluation benchmark;", machine_note())
    tmp = Path(tempfile.mkdtemp(prefix="kumo-bench-autoscaling-"))
    try:
        ok, fits = bench_tick(tmp, args.groups, args.per_group, args.ticks, args.profile)
        ok = bench_ingest(tmp, args.instances, args.ingest_seconds, args.per_host) and ok
        return exit_status(ok, fits, args.smoke)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
