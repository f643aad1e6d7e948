"""Benchmark: the API with two controllers on one PostgreSQL vs one, and the takeover time
after the leader is killed (issue 14, "a controller that survives losing a machine").

Set-up: a throw-away PostgreSQL (tests/functional/pg.py: unix socket only), `python -m
controller` processes (unix sockets only; one shared state directory = the shared image store)
and two `python -m agent` processes with the fake driver heartbeating to the last controller.
1. Throughput and latency, one controller, then two (the same run's baseline): --clients
   threads send --requests describes (GET /v1/instances, 100 a page) and --requests launches
   (POST /v1/instances, a 64 MiB instance type), round-robin over the controllers;
   client-side latency per request (median, p95) and requests per second of each kind.
2. Takeover: --kills times, SIGKILL the leader, poll the survivor's /v1/admin/status every
   20 ms until it leads; time from the kill to that answer (median, p95, max), then start a
   new controller in place of the killed one and wait until it is registered.
3. Wake-up of the leader by a write through the other controller (controller/change_feed.py):
   --wake-launches launches, one at a time at random moments, through the controller that does
   NOT lead; time from its 201 until an agent has the instance (the leader's reconciler PUT
   it), with the change feed off (periodic tick only, KUMO_CHANGE_FEED=false) and on, both
   at --wake-interval (KUMO_RECONCILE_INTERVAL_S, default 1 s, the production default).
Lease settings are the defaults (TTL 5 s, renewal every 1 s) unless --ttl/--renew say.
The numbers are reported, not judged; the checks (every launch answered 201, the takeover's
epoch one higher each time) decide the exit status.

Usage: .venv/bin/python bench/bench_failover.py [--requests 400] [--clients 8] [--kills 10]
       [--ttl 5] [--renew 1] [--wake-launches 20] [--wake-interval 1] [--smoke]
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import SMOKE_HELP, exit_status, machine_note, median, percentile  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: An instance type of 64 MiB: hundreds of launches fit on two fake hosts (their memory is the
#: machine's).
TYPE = "bench.tiny"


class Procs:
    """The processes this benchmark started, stopped by PID at the end."""

    def __init__(self, tmp: Path):
        self.tmp, self.started = tmp, []

    def start(self, module: str, env: dict, log: str) -> subprocess.Popen:
        full = {k: v for k, v in os.environ.items() if not k.startswith("KUMO_")}
        full.update(env)
        p = subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, env=full,
                             stdout=open(self.tmp / log, "ab"), stderr=subprocess.STDOUT)
        self.started.append(p)
        return p

    def stop_all(self) -> None:
        for p in reversed(self.started):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def wait(pred, timeout: float, what: str, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = pred()
            if value:
                return value
        except Exception:
            pass
        time.sleep(every)
    raise RuntimeError(f"timed out waiting for {what}")


class Cloud:
    """Controllers + two fake agents on one fresh database."""

    def __init__(self, pg, procs: Procs, tmp: Path, name: str, ttl: float, renew: float):
        self.procs, self.tmp, self.name, self.ttl, self.renew = procs, tmp, name, ttl, renew
        self.url = pg.create_database(prefix=name)
        self.state = tmp / f"{name}-state"
        self.ctl: dict[Path, subprocess.Popen] = {}
        self.n = 0

    def start_controller(self, extra: dict | None = None) -> Path:
        from agent.contract import transport
        self.n += 1
        sock = self.tmp / f"{self.name}-c{self.n}.sock"
        self.ctl[sock] = self.procs.start("controller", {
            "KUMO_STATE_DIR": str(self.state), "KUMO_DATABASE_URL": self.url,
            "KUMO_LISTEN": "127.0.0.1:0", "KUMO_AGENT_SOCKET": str(sock),
            "KUMO_AGENT_TOKEN": "secret", "KUMO_AGENT_AUTH": "token", "KUMO_CPU_OVERCOMMIT": "1000",
            "KUMO_HEARTBEAT_TIMEOUT_S": "60", "KUMO_LOG_LEVEL": "WARNING",
            "KUMO_LEADER_LEASE_TTL_S": str(self.ttl),
            "KUMO_LEADER_RENEW_INTERVAL_S": str(self.renew), **(extra or {})},
            f"{self.name}-c{self.n}.log")
        wait(sock.exists, 60, f"controller {sock.name}")
        wait(lambda: transport.client(f"unix:{sock}").get("/healthz").status_code == 200, 30,
             "healthz")
        return sock

    def start_agents(self, controller_sock: Path) -> None:
        for h in ("host-1", "host-2"):
            self.procs.start("agent", {
                "KUMO_AGENT_HOST_ID": h, "KUMO_AGENT_STATE_DIR": str(self.tmp / f"{self.name}-{h}"),
                "KUMO_AGENT_LISTEN": f"unix:{self.tmp / f'{self.name}-{h}.sock'}",
                "KUMO_AGENT_CONTROLLER_URL": f"unix:{controller_sock}",
                "KUMO_AGENT_TOKEN": "secret", "KUMO_AGENT_AUTH": "token", "KUMO_AGENT_DRIVER": "fake",
                "KUMO_AGENT_HEARTBEAT_INTERVAL": "1"}, f"{self.name}-{h}.log")

    def clients(self):
        from agent.contract import transport
        key = (self.state / "admin.key").read_text().strip()
        return [transport.client(f"unix:{s}", key, timeout=30) for s in self.ctl]


def load(clients, n_requests: int, n_threads: int) -> dict:
    """n_requests describes and n_requests launches, round-robin over the controllers."""
    lat: dict[str, list[float]] = {"describe": [], "run-instances": []}
    failures: list[str] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        client = clients[i % len(clients)]
        kind = "describe" if i % 2 == 0 else "run-instances"
        t = time.perf_counter()
        if kind == "describe":
            r = client.get("/v1/instances", params={"max_results": 100})
            ok = r.status_code == 200
        else:
            r = client.post("/v1/instances", json={"image": "kumo-tiny", "instance_type": TYPE})
            ok = r.status_code == 201
        took = time.perf_counter() - t
        with lock:
            lat[kind].append(took)
            if not ok:
                failures.append(f"{kind}: {r.status_code} {r.text[:200]}")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(n_threads) as pool:
        list(pool.map(one, range(2 * n_requests)))
    wall = time.perf_counter() - t0
    return {"lat": lat, "wall": wall, "failures": failures}


def seed(apis, image) -> None:
    """Wait for both agents' hosts, then register the image and the benchmark's type."""
    wait(lambda: len(apis[-1].get("/v1/hosts").json()["items"]) == 2, 60, "hosts")
    r = apis[0].post("/v1/images", json={"name": "kumo-tiny", "path": str(image), "public": True})
    assert r.status_code == 201, r.text
    r = apis[0].post("/v1/instance-types", json={"name": TYPE, "vcpus": 1, "memory_mib": 64})
    assert r.status_code == 201, r.text


def throughput(pg, procs, tmp, name, controllers, image, args) -> dict:
    cloud = Cloud(pg, procs, tmp, name, args.ttl, args.renew)
    socks = [cloud.start_controller() for _ in range(controllers)]
    cloud.start_agents(socks[-1])
    apis = cloud.clients()
    try:
        seed(apis, image)
        return load(apis, args.requests, args.clients)
    finally:
        for a in apis:
            a.close()


def takeovers(pg, procs, tmp, image, args) -> tuple[list[float], bool]:
    cloud = Cloud(pg, procs, tmp, "takeover", args.ttl, args.renew)
    socks = [cloud.start_controller(), cloud.start_controller()]
    from agent.contract import transport
    key = (cloud.state / "admin.key").read_text().strip()

    def status(sock):
        with transport.client(f"unix:{sock}", key, timeout=5) as c:
            return c.get("/v1/admin/status").json()

    times, ok = [], True
    for k in range(args.kills):
        st = wait(lambda: (lambda s: s if s["leader"]["controller_id"] else None)(status(socks[0])),
                  30, "a leader")
        leader_id, epoch = st["leader"]["controller_id"], st["leader"]["epoch"]
        by_id = {status(s)["answered_by"]: s for s in socks}
        dead = by_id[leader_id]
        survivor = next(s for s in socks if s != dead)
        cloud.ctl[dead].send_signal(signal.SIGKILL)
        t = time.monotonic()
        cloud.ctl[dead].wait(timeout=10)
        new = wait(lambda: (lambda s: s if s["leader"]["controller_id"] not in (None, leader_id)
                            else None)(status(survivor)), args.ttl + 30, "takeover", every=0.02)
        times.append(time.monotonic() - t)
        ok = ok and new["leader"]["epoch"] == epoch + 1
        print(f"  kill {k + 1}: takeover {times[-1] * 1000:.0f} ms, epoch {epoch} -> "
              f"{new['leader']['epoch']}", flush=True)
        del cloud.ctl[dead]
        replacement = cloud.start_controller()
        socks = [survivor, replacement]
        wait(lambda: sum(c["alive"] for c in status(survivor)["controllers"]) >= 2, 30,
             "replacement registered")
    return times, ok


def wake_latency(pg, procs, tmp, image, args, feed: bool) -> list[float]:
    """Seconds from the non-leader's 201 to the instance on an agent, per launch."""
    from agent.contract import transport
    name = f"wake-{'feed' if feed else 'tick'}"
    cloud = Cloud(pg, procs, tmp, name, args.ttl, args.renew)
    extra = {"KUMO_RECONCILE_INTERVAL_S": str(args.wake_interval),
             "KUMO_CHANGE_FEED": "true" if feed else "false"}
    socks = [cloud.start_controller(extra), cloud.start_controller(extra)]
    cloud.start_agents(socks[-1])
    apis = cloud.clients()
    agents = [transport.client(f"unix:{tmp / f'{name}-{h}.sock'}", "secret", timeout=5)
              for h in ("host-1", "host-2")]
    try:
        seed(apis, image)
        st = wait(lambda: (lambda s: s if s["leader"]["controller_id"] else None)(
            apis[0].get("/v1/admin/status").json()), 30, "a leader")
        other = next(a for a in apis
                     if a.get("/v1/admin/status").json()["answered_by"] != st["leader"]["controller_id"])
        times = []
        for _ in range(args.wake_launches):
            time.sleep(random.uniform(0, args.wake_interval))  # not in step with the ticks
            r = other.post("/v1/instances", json={"image": "kumo-tiny", "instance_type": TYPE})
            assert r.status_code == 201, r.text
            t = time.monotonic()
            iid = r.json()["instances"][0]["instance_id"]
            wait(lambda: any(iid in {o["instance_id"] for o in a.get("/v1/instances").json()}
                             for a in agents), args.wake_interval + 30, "the PUT", every=0.005)
            times.append(time.monotonic() - t)
        return times
    finally:
        for c in apis + agents:
            c.close()


def report(name: str, res: dict) -> None:
    for kind, xs in res["lat"].items():
        rate = len(xs) / res["wall"] if res["wall"] else float("nan")
        print(f"{name:>15} {kind:<13} n={len(xs):4d}  median {median(xs) * 1000:7.1f} ms  "
              f"p95 {percentile(xs, 95) * 1000:7.1f} ms  {rate:6.1f} req/s (mixed load)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=400, help="describes and launches each")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--ttl", type=float, default=5.0)
    ap.add_argument("--renew", type=float, default=1.0)
    ap.add_argument("--wake-launches", type=int, default=20)
    ap.add_argument("--wake-interval", type=float, default=1.0)
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = ap.parse_args()
    if args.smoke:
        args.requests, args.clients, args.kills = 10, 2, 2
        args.ttl, args.renew = 2.0, 0.5
        args.wake_launches = 3

    sys.path.insert(0, str(ROOT))
    from tests.functional.pg import PostgresServer, why_unavailable
    reason = why_unavailable()
    if reason:
        print(f"cannot run: {reason}")
        return 1
    print(f"# {machine_note()}")
    print(f"# requests {args.requests} describes + {args.requests} launches, {args.clients} "
          f"client threads; {args.kills} kills; lease TTL {args.ttl} s, renewal {args.renew} s")
    # SIGTERM/SIGHUP end the run through the clean-up below (processes, server, temp dir).
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="kumo-bfo-"))
    procs = Procs(tmp)
    pg = PostgresServer()
    checks = True
    try:
        pg.start()
        image = tmp / "tiny.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
        results = {}
        for name, n in (("one controller", 1), ("two controllers", 2)):
            results[name] = res = throughput(pg, procs, tmp, name.replace(" ", "-"), n, image, args)
            report(name, res)
            if res["failures"]:
                checks = False
                print(f"  failures: {res['failures'][:3]}")
        for kind in ("describe", "run-instances"):
            one, two = (median(results[n]["lat"][kind]) for n in results)
            print(f"{'two vs one':>15} {kind:<13} median latency x{two / one:.2f}")
        total = {n: 2 * args.requests / r["wall"] for n, r in results.items()}
        print(f"{'two vs one':>15} {'all':<13} throughput {total['one controller']:.1f} -> "
              f"{total['two controllers']:.1f} req/s")
        times, ok = takeovers(pg, procs, tmp, image, args)
        checks = checks and ok
        print(f"{'takeover':>15} n={len(times)}  median {median(times) * 1000:.0f} ms  "
              f"p95 {percentile(times, 95) * 1000:.0f} ms  max {max(times) * 1000:.0f} ms "
              f"(lease TTL {args.ttl * 1000:.0f} ms)")
        for feed in (False, True):
            xs = wake_latency(pg, procs, tmp, image, args, feed)
            what = "change feed" if feed else "periodic tick"
            print(f"{'wake':>15} {what:<13} n={len(xs)}  median {median(xs) * 1000:.0f} ms  "
                  f"p95 {percentile(xs, 95) * 1000:.0f} ms  max {max(xs) * 1000:.0f} ms "
                  f"(non-leader 201 -> agent has it; reconcile interval {args.wake_interval} s)",
                  flush=True)
    finally:
        procs.stop_all()
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return exit_status(checks, True, args.smoke)


if __name__ == "__main__":
    sys.exit(main())
