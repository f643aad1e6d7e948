"""Benchmark: what the reconciler pays per tick for the hosts' VPC network documents.

Set-up: the controller app with its reconciler driven by hand and fake agents that speak the
vpc-network extension (tests/functional/fake_agent.py; no guests, no network): --hosts hosts, one
VPC with one /16 subnet, and --instances running instances in it spread over the hosts (one
launched through the API, the rest inserted as copies of its row with their own address and MAC).
Every host carries the VPC, so each document lists every port (its own, or as a remote port).

Measured, in the same run:
- baseline: a full rebuild of every host's document (host_networks.refresh: what every tick did
  before the inputs fingerprint; it still does when an input changed);
- the inputs fingerprint alone (host_networks.inputs_fingerprint);
- an idle reconciler tick (nothing changed: the fingerprint matches, the last build is reused);
- a tick after one change (an elastic IP associated: rebuild, one host pushed).

    .venv/bin/python bench/bench_network_docs.py [--instances 2000 10000] [--hosts 10] [--reps 5]
        [--smoke]   (50 instances on 3 hosts, 1 repetition)

No target is gated: the run fails only when a tick does not do what it should (an idle tick that
rebuilds, a change that does not rebuild and push to exactly one host).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import SMOKE_HELP, machine_note, median  # noqa: E402


def populate(cloud, n: int, hosts: int) -> tuple[object, list[str]]:
    from controller.models import Instance
    from tests.functional.vpc_support import ok

    for i in range(hosts):
        cloud.add_host(f"host-{i}", underlay_ip=f"192.0.2.{10 + i}")
    user = cloud.account("bench")
    vpc = ok(user.post("/v1/vpcs", json={"cidr_block": "10.0.0.0/16"}), 201)["vpc_id"]
    sub = ok(user.post("/v1/subnets", json={"vpc_id": vpc, "cidr_block": "10.0.0.0/16"}), 201)["subnet_id"]
    first = cloud.run(user, subnet_id=sub).json()["instances"][0]
    db = cloud.app.state.kumo.db
    ids = []
    with db.session() as s:
        t = s.get(Instance, first["instance_id"])
        base = {k: getattr(t, k) for k in Instance.model_fields}
        rows = []
        for i in range(n - 1):
            row = dict(base, instance_id="i-%017x" % (0x100000 + i), client_token=None,
                       private_ip=f"10.0.{1 + i // 250}.{i % 250 + 4}", host_id=f"host-{i % hosts}",
                       mac="52:54:01:%02x:%02x:%02x" % (i >> 16 & 255, i >> 8 & 255, i & 255))
            rows.append(Instance(**row))
            ids.append(row["instance_id"])
        s.add_all(rows)
    return user, [first["instance_id"]] + ids


def measure(n: int, hosts: int, reps: int) -> dict[str, list[float]]:
    from controller.services import host_networks
    from tests.functional.fake_agent import Cloud
    from tests.functional.vpc_support import ok

    tmp = Path(tempfile.mkdtemp(prefix="kumo-bench-netdocs-"))
    cloud = Cloud(tmp)
    try:
        cloud.image()
        user, ids = populate(cloud, n, hosts)
        db, rec = cloud.app.state.kumo.db, cloud.reconciler
        cloud.tick()
        cloud.heartbeat()
        cloud.tick()
        out: dict[str, list[float]] = {"full rebuild (baseline)": [], "inputs fingerprint": [],
                                       "idle tick": [], "tick after a change": []}
        for r in range(reps):
            t = time.perf_counter()
            with db.session() as s:
                host_networks.refresh(s)
            out["full rebuild (baseline)"].append(time.perf_counter() - t)
            t = time.perf_counter()
            with db.session() as s:
                host_networks.inputs_fingerprint(s)
            out["inputs fingerprint"].append(time.perf_counter() - t)
            built = rec.network_rebuilds
            t = time.perf_counter()
            stats = cloud.tick()
            out["idle tick"].append(time.perf_counter() - t)
            assert stats["networks"] == 0 and rec.network_rebuilds == built, stats
            eip = ok(user.post("/v1/elastic-ips"), 201)
            ok(user.post(f"/v1/elastic-ips/{eip['allocation_id']}/associate", json={"instance_id": ids[r]}))
            t = time.perf_counter()
            stats = cloud.tick()
            out["tick after a change"].append(time.perf_counter() - t)
            assert stats["networks"] == 1 and rec.network_rebuilds == built + 1, stats
        return out
    finally:
        cloud.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, nargs="+", default=[2000, 10000])
    ap.add_argument("--hosts", type=int, default=10)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP + " (50 instances, 3 hosts)")
    args = ap.parse_args()
    if args.smoke:
        args.instances, args.hosts, args.reps = [50], 3, 1
    warnings.simplefilter("ignore")
    print(machine_note())
    for n in args.instances:
        res = measure(n, args.hosts, args.reps)
        base = median(res["full rebuild (baseline)"])
        print(f"{n} instances in one VPC on {args.hosts} hosts (median of {args.reps}):")
        for name, xs in res.items():
            m = median(xs)
            note = {"full rebuild (baseline)": "what every tick cost before",
                    "tick after a change": "rebuild + push to the one host"}.get(
                        name, f"{base / m:.1f}x less than the baseline")
            print(f"  {name:26} {m * 1000:8.1f} ms   ({note})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
