"""Benchmark: describing 10,000 instances of one account through the API (GET /v1/instances),
page by page, against the same query as raw SQL on the same database in the same run.

Set-up: a controller app (controller.app.create_app with Settings(state_dir=tmp)) migrates a fresh
SQLite database; an account is created with the controller's own service; 10,000 instance rows
(running, tagged, on a host id that has no host row, so the reconciler has nothing to push) are
inserted in one bulk INSERT through the controller's Database/models. The app is then served by a
real uvicorn server in a child process on 127.0.0.1 (a free port) and walked with httpx (one
keep-alive connection): every page of max_results 100 and 1000, following next_token, --walks
times. Times are per page, client side (request sent -> JSON parsed).

Baselines, same DB, same run (sqlite3, no ORM): the page query itself (WHERE account_id ORDER BY
created_at, instance_id LIMIT/OFFSET), and the unpaged account query. An in-process breakdown of
one page (authentication, service query, serialisation) says where the API's time goes.

Target: a 100-instance page in under 50 ms (median and p95 reported); --smoke (300 instances,
one walk, 3 in-process repetitions) reports it without judging it.

Usage: .venv/bin/python bench/bench_describe.py [--instances 10000] [--walks 2]
       [--reconciler-interval 1.0]  (the controller's default; 0 = background loop off)
       [--smoke]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (SMOKE_HELP, exit_status, free_port, machine_note, median,  # noqa: E402
                          percentile)

TARGET_S = 0.050
PAGE_SQL = ("SELECT * FROM instance WHERE account_id = ? ORDER BY created_at, instance_id "
            "LIMIT ? OFFSET ?")
ALL_SQL = "SELECT * FROM instance WHERE account_id = ? ORDER BY created_at, instance_id"


def serve(state_dir: str, port: int, reconcile: float) -> None:
    """Child process: the controller app on 127.0.0.1:port until terminated."""
    import uvicorn

    from controller.app import create_app
    from controller.settings import Settings
    app = create_app(Settings(state_dir=Path(state_dir), listen=f"127.0.0.1:{port}",
                              reconcile_interval_s=reconcile))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def populate(state_dir: Path, n: int) -> tuple[str, str]:
    """Migrate the DB, create an account, insert n instances. Returns (account_id, api key)."""
    from sqlalchemy import insert

    from controller.app import close_app, create_app
    from controller.ids import new_id, utcnow
    from controller.models import Instance
    from controller.services import accounts
    from controller.settings import Settings
    app = create_app(Settings(state_dir=state_dir, reconcile_interval_s=0))
    try:
        db = app.state.kumo.db
        acct, key = accounts.create(db, "bench")
        t0 = utcnow() - timedelta(days=1)
        rows = []
        for i in range(n):
            ts = t0 + timedelta(milliseconds=i)
            rows.append(dict(
                instance_id=new_id("i"), reservation_id=new_id("r"), image_id=new_id("ami"),
                instance_type="t3.nano", vcpus=1, memory_mib=256, root_disk_gib=1,
                key_name=None, tags={"Name": f"web-{i:05d}", "team": "bench"}, state="running",
                instance_status="ok", system_status="ok", host_id="h-bench",
                launch_time=ts, private_ip=f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
                mac=f"52:54:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
                hostname=f"ip-10-0-{i >> 8 & 255}-{i & 255}", client_token=None,
                created_at=ts, updated_at=ts, account_id=acct.account_id,
                user_data_b64="", generation=1, acked_generation=1, power="running",
                observed_power="running", observed_booted=True, observed_boot_count=1))
        t = time.perf_counter()
        with db.session() as s:
            s.execute(insert(Instance), rows)
        print(f"inserted {n} instances in {time.perf_counter() - t:.2f} s (one bulk INSERT)")
        return acct.account_id, key
    finally:
        close_app(app)


def breakdown(state_dir: Path, key: str, limit: int, offset: int, reps: int) -> dict[str, float]:
    """In-process median times of the parts of one list request (no HTTP)."""
    from sqlmodel import select

    from controller.app import close_app, create_app
    from controller.models import Instance, InstancePublic
    from controller.services import accounts, instances
    from controller.services.instances import to_public
    from controller.settings import Settings
    app = create_app(Settings(state_dir=state_dir, reconcile_interval_s=0))
    out: dict[str, list[float]] = {"authenticate": [], "service list_instances (ORM)": [],
                                   "to_public + JSON of the page": []}
    try:
        db = app.state.kumo.db
        account_id = accounts.authenticate(db, key).account_id
        with db.session() as s:
            prev = s.exec(select(Instance).where(Instance.account_id == account_id)
                          .order_by(Instance.created_at, Instance.instance_id)
                          .offset(offset - 1).limit(1)).one()
            after = (prev.created_at, prev.instance_id)
        for _ in range(reps):
            t = time.perf_counter()
            caller = accounts.authenticate(db, key)
            out["authenticate"].append(time.perf_counter() - t)
            t = time.perf_counter()
            with db.session() as s:
                # Keyset pages: the page at `offset` starts after the key of the row before it.
                rows = instances.list_instances(s, caller, states=[], ids=[], tags={},
                                                after=after, limit=limit + 1)
            out["service list_instances (ORM)"].append(time.perf_counter() - t)
            t = time.perf_counter()
            items = [to_public(r) for r in rows[:limit]]
            json.dumps([InstancePublic.model_dump(i, mode="json") for i in items])
            out["to_public + JSON of the page"].append(time.perf_counter() - t)
        # The served controller runs this every reconcile_interval_s in the same process: it
        # competes with list requests for the GIL.
        out["(reconciler tick, nothing to push)"] = []
        for _ in range(3):
            t = time.perf_counter()
            app.state.kumo.reconciler.tick()
            out["(reconciler tick, nothing to push)"].append(time.perf_counter() - t)
    finally:
        close_app(app)
    return {k: median(v) for k, v in out.items()}


def what_if(state_dir: Path, key: str, n: int, reps: int) -> dict[str, float]:
    """Median ms of a 100-page at offset n/2 done differently, on a copy of the same DB (the
    controller's code is not changed): the ORM with LIMIT/OFFSET in SQL (+ to_public), and the
    same after adding an index (account_id, created_at, instance_id)."""
    from sqlmodel import select

    from controller.db import Database
    from controller.models import Instance, InstancePublic
    from controller.services import accounts
    from controller.services.instances import to_public
    copy = state_dir.parent / "whatif.db"
    src = sqlite3.connect(state_dir / "kumo.db")
    dst = sqlite3.connect(copy)
    src.backup(dst)
    src.close()
    out: dict[str, float] = {}
    try:
        for label in ("ORM, LIMIT/OFFSET in SQL", "ORM, LIMIT/OFFSET in SQL + composite index"):
            if "index" in label:
                dst.execute("CREATE INDEX ix_bench_acct_created ON instance "
                            "(account_id, created_at, instance_id)")
                dst.commit()
            db = Database(f"sqlite:///{copy}")
            try:
                caller = accounts.authenticate(db, key)
                times = []
                for _ in range(reps):
                    t = time.perf_counter()
                    with db.session() as s:
                        q = (select(Instance).where(Instance.account_id == caller.account_id)
                             .order_by(Instance.created_at, Instance.instance_id)
                             .offset(n // 2).limit(101))
                        rows = list(s.exec(q))
                    items = [to_public(r) for r in rows[:100]]
                    json.dumps([InstancePublic.model_dump(i, mode="json") for i in items])
                    times.append(time.perf_counter() - t)
                out[label] = median(times)
            finally:
                db.dispose()
    finally:
        dst.close()
    return out


def raw_sql(db_path: Path, account_id: str, page_size: int, n: int, walks: int) -> dict:
    conn = sqlite3.connect(db_path)
    try:
        pages = []
        for _ in range(walks):
            for off in range(0, n, page_size):
                t = time.perf_counter()
                rows = conn.execute(PAGE_SQL, (account_id, page_size + 1, off)).fetchall()
                pages.append(time.perf_counter() - t)
                assert len(rows) in (page_size + 1, n - off)
        alls = []
        for _ in range(5):
            t = time.perf_counter()
            rows = conn.execute(ALL_SQL, (account_id,)).fetchall()
            alls.append(time.perf_counter() - t)
            assert len(rows) == n
        return {"page": pages, "all": alls}
    finally:
        conn.close()


def walk(client, page_size: int, n: int, walks: int) -> list[float]:
    times = []
    for _ in range(walks):
        token, seen = None, 0
        while True:
            params = {"max_results": page_size}
            if token:
                params["next_token"] = token
            t = time.perf_counter()
            r = client.get("/v1/instances", params=params)
            body = r.json()
            times.append(time.perf_counter() - t)
            if r.status_code != 200:
                raise SystemExit(f"GET /v1/instances: {r.status_code} {r.text[:300]}")
            seen += len(body["items"])
            token = body["next_token"]
            if not token:
                break
        if seen != n:
            raise SystemExit(f"walked {seen} instances, expected {n}")
    return times


def stats(xs: list[float]) -> str:
    return (f"median {median(xs) * 1000:8.1f} ms  p95 {percentile(xs, 95) * 1000:8.1f} ms  "
            f"max {max(xs) * 1000:8.1f} ms  (n={len(xs)})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--instances", type=int, default=10_000)
    ap.add_argument("--walks", type=int, default=2, help="full walks through the pages per size")
    ap.add_argument("--reconciler-interval", type=float, default=1.0,
                    help="the served controller's reconcile_interval_s (0: loop off)")
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP + " (300 instances)")
    ap.add_argument("--serve", nargs=2, metavar=("STATE_DIR", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]), args.reconciler_interval)
        return 0

    import httpx
    reps = 10  # in-process repetitions of the breakdown and the what-ifs
    if args.smoke:
        args.instances, args.walks, reps = 300, 1, 3
    print("describe benchmark;", machine_note())
    n = args.instances
    tmp = Path(tempfile.mkdtemp(prefix="kumo-bench-describe-"))
    server = None
    try:
        state = tmp / "controller"
        account_id, key = populate(state, n)
        db_path = state / "kumo.db"
        port = free_port()
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(state), str(port),
                                   "--reconciler-interval", str(args.reconciler_interval)],
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                          timeout=60) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the controller did not come up")
                time.sleep(0.2)
            print(f"controller served by uvicorn at {url} (pid {server.pid}), reconciler interval "
                  f"{args.reconciler_interval} s; {n} instances in one account; "
                  f"{args.walks} walks per page size\n")
            client.get("/v1/instances", params={"max_results": 1})  # warm-up (imports, pool)
            results = {}
            for size in (100, 1000):
                results[size] = (walk(client, size, n, args.walks),
                                 raw_sql(db_path, account_id, size, n, args.walks))
        for size, (api, raw) in results.items():
            print(f"max_results={size}:")
            print(f"  kumo API  GET /v1/instances page   {stats(api)}")
            print(f"  baseline raw SQL page (LIMIT/OFFSET) {stats(raw['page'])}")
            print(f"  baseline raw SQL whole account      {stats(raw['all'])}")
            print(f"  API / raw page: {median(api) / median(raw['page']):.0f}x (medians)")
        server.terminate()
        server.wait(10)
        server = None
        print(f"\nin-process breakdown of one 100-page at offset {n // 2} (median of {reps}, "
              "no HTTP):")
        for part, t in breakdown(state, key, 100, n // 2, reps).items():
            print(f"  {part:34s} {t * 1000:8.1f} ms")
        print(f"what-if, same data, controller code unchanged (a 100-page at offset {n // 2}, "
              f"median of {reps}, in-process, query + to_public + JSON):")
        for part, t in what_if(state, key, n, reps).items():
            print(f"  {part:44s} {t * 1000:8.1f} ms")
        api100 = results[100][0]
        ok = median(api100) < TARGET_S and percentile(api100, 95) < TARGET_S
        print(f"\ntarget: 100-instance page under {TARGET_S * 1000:.0f} ms (median and p95): "
              f"{'PASS' if ok else 'FAIL'} (median {median(api100) * 1000:.1f} ms, p95 "
              f"{percentile(api100, 95) * 1000:.1f} ms)")
        # A walk that misses or repeats instances, or an error page, exited above.
        return exit_status(True, ok, args.smoke)
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
