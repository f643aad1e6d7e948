"""Benchmark: time from a VPC API call to the change being effective on the wire, on the lab with
real kumo-tiny guests (the world of tests/lab/test_vpc_lab.py, account A only: a1 on h1 and a4 on
h2 in a public subnet, a3 on h1 in a private subnet behind a NAT gateway).

- elastic IP associate (a1 <-> a4, allow_reassociation, so the address changes host every time)
  -> the internet namespace's HTTP GET on the elastic IP answers with the new instance's id.
  A prober (a new connection every 50 ms, each in its own thread, 0.5 s connect timeout) runs
  before the call; the time is the start of the first attempt answered by the new instance.
- route 0.0.0.0/0 -> NAT gateway added to the private subnet's table -> a3's traffic reaches the
  listener on 198.51.100.1 (from the NAT gateway's public IP; the listener's accept time). A
  bounded loop in a3 starts an overlapping wget every 100 ms before the call (one attempt at a
  time would measure TCP's 1 s SYN retransmission: while the route is missing the router's ICMP
  unreachables are rate-limited, so an attempt can sit in SYN_SENT). Before each add the route
  is deleted and a3 seen blocked.

Per change it also records, from the agents' GET /v1/network, when the agent of the affected
host(s) reported the new generation applied (`applied_at`, same machine clock): the split
between controller + agent programming and what follows (GARP, ARP, the probe's own period).

Same-run baselines:
- the bare kernel work of each change as a shell script would do it (`ip route/neigh/rule` and
  `nft -j -f` one command at a time) in scratch namespaces kvn-bench-<random>-*, removed after;
- the probes' own floor: the same prober / guest loop against a path that already works.
Dataplane programming time on one host with 200 ports (Dataplane.ensure, no-op pass, one-port
change, public IP move vs. `ip` commands one by one) is bench/bench_dataplane.py.

Root only. Everything is sent inside lab namespaces.
    .venv/bin/python bench/bench_vpc_changes.py [--changes 20] [--lab-state DIR] [--smoke]
--lab-state: use a running lab (its state dir, 2 hosts, as `python -m lab up` or the test suite's
session fixture made it) instead of bringing up (and tearing down) a fresh one.
--smoke: 2 changes of each kind (the smallest run that still has a probe-loop period).
"""
from __future__ import annotations

import argparse
import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (SMOKE_HELP, bench_lab, machine_note, median, percentile,  # noqa: E402
                          require_root)


class AgentWatch(threading.Thread):
    """Polls the agents' GET /v1/network every 20 ms; records, per host, the agent's applied_at
    of the first generation above the one seen at start."""

    def __init__(self, lab, hosts: list[str]):
        super().__init__(daemon=True)
        from tests.lab.net_support import agent_network
        self.lab, self.hosts, self.get = lab, hosts, agent_network
        self.start_gen = {h: self.get(lab, h)["generation"] for h in hosts}
        self.applied: dict[str, float] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set() and len(self.applied) < len(self.hosts):
            for h in self.hosts:
                if h in self.applied:
                    continue
                try:
                    obs = self.get(self.lab, h)
                except Exception:  # noqa: BLE001 - a busy agent: try again
                    continue
                if obs["applied_generation"] > self.start_gen[h] and obs.get("applied_at"):
                    self.applied[h] = obs["applied_at"]
            time.sleep(0.02)

    def finish(self, timeout: float = 10) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while len(self.applied) < len(self.hosts) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.halt.set()
        self.join(5)
        return dict(self.applied)


def eip_changes(w, n: int) -> list[dict]:
    from tests.lab.test_vpc_lab import inet_probe, probe_results
    out = []
    for i in range(n):
        vm = w.vms["a4"] if i % 2 == 0 else w.vms["a1"]
        neigh = inet_neigh(w.lab, w.ids["eip_ip"])
        watch = AgentWatch(w.lab, ["h1", "h2"])
        prober = inet_probe(w.lab, w.ids["eip_ip"], duration=60, interval=0.05,
                            stop=f"match:{vm.id}", background=True, connect_timeout=0.5)
        time.sleep(0.3)
        watch.start()
        t0 = time.time()
        vm.user.call("POST", f"/v1/elastic-ips/{w.ids['eip']}/associate",
                     json={"instance_id": vm.id, "allow_reassociation": True})
        t_api = time.time()
        res = probe_results(prober)
        applied = watch.finish()
        ok = res[-1]["body"] == vm.id
        out.append({"to": vm.name, "ok": ok, "api": t_api - t0,
                    "effective": res[-1]["t"] - t0 if ok else float("nan"),
                    "agent_new_host": applied.get(vm.host, float("nan")) - t0,
                    "agent_all": max(applied.values(), default=float("nan")) - t0})
        print(f"  eip #{i + 1:2d} -> {vm.name} ({vm.host}): internet's neighbour entry before: "
              f"{neigh}; effective {out[-1]['effective']:.3f} s,"
              f" agent applied {out[-1]['agent_new_host']:.3f} s", flush=True)
    return out


def inet_neigh(lab, ip: str) -> str:
    """State of the internet namespace's ARP entry for ip (why a first packet may wait)."""
    from lab.naming import inet_netns
    from lab.testing import ip_json
    got = ip_json(inet_netns(lab.prefix), "neigh", "show", "to", ip)
    return ",".join("/".join(e.get("state", ["?"])) for e in got) or "none"


def route_changes(w, n: int) -> list[dict]:
    from tests.lab.net_support import INET_SERVER, http_cmd
    from tests.lab.test_vpc_lab import _guest_loop_until_ok, _wait_listener, set_nat_route
    a3, port = w.vms["a3"], w.listener.port
    out = []
    for i in range(n):
        set_nat_route(w, present=False)
        w.sh_until(a3, f"{http_cmd(INET_SERVER, port, secs=2)} || echo BLOCKED",
                   lambda o: "BLOCKED" in o)
        _guest_loop_until_ok(w, a3, http_cmd(INET_SERVER, port, secs=2))
        neigh = inet_neigh(w.lab, w.ids["nat_ip"])
        watch = AgentWatch(w.lab, ["h1", "h2"])
        watch.start()
        t0 = set_nat_route(w, present=True)
        t_api = time.time()
        took = _wait_listener(w, w.ids["nat_ip"], t0) - t0
        applied = watch.finish()
        out.append({"ok": True, "api": t_api - t0, "effective": took, "inet_neigh": neigh,
                    "agent_a3_host": applied.get(a3.host, float("nan")) - t0,
                    "agent_all": max(applied.values(), default=float("nan")) - t0})
        print(f"  route #{i + 1:2d}: effective {took:.3f} s, agent applied "
              f"{out[-1]['agent_all']:.3f} s; before: internet's neighbour entry for the NAT "
              f"gateway's IP {neigh}", flush=True)
    return out


def floors(w, n: int) -> dict[str, list[float]]:
    """The probes' own latency on paths that already work (nothing changes)."""
    from tests.lab.net_support import INET_SERVER, http_cmd
    from tests.lab.test_vpc_lab import inet_probe, probe_results
    eip = []
    holder = w.vms["a1"] if w.vms["a1"].refresh().d["public_ip"] == w.ids["eip_ip"] else w.vms["a4"]
    for _ in range(n):
        prober = inet_probe(w.lab, w.ids["eip_ip"], duration=1.0, interval=0.05,
                            background=True, connect_timeout=0.5)
        time.sleep(0.3)  # as in eip_changes: t0 after the prober started
        t0 = time.time()
        res = probe_results(prober)
        ok = [r["t"] for r in res if r["body"] == holder.id and r["t"] >= t0]
        eip.append(min(ok) - t0 if ok else float("nan"))
    # The guest loop's period on a working path: how finely a3's first success is timed (a
    # few periods even in a smoke run: one lost attempt must not leave none).
    t0 = time.time()
    loop = (f"i=0; while [ $i -lt {max(int(n), 5)} ]; do "
            f"{http_cmd(INET_SERVER, w.listener.port, secs=2)} >/dev/null 2>&1; sleep 0.1; "
            f"i=$((i+1)); done")
    w.sh(w.vms["a3"], loop, timeout=120)
    arrivals = [t for t, peer in w.listener.entries(t0) if peer == w.ids["nat_ip"]]
    nat = [b - a for a, b in zip(arrivals, arrivals[1:])]
    return {"eip": eip, "nat_loop_period": nat}


# --- bare-command baseline in scratch namespaces ---------------------------------------------------
def _sh(*argv: str) -> None:
    subprocess.run(list(argv), check=True, capture_output=True)


def bare_baseline(n: int) -> dict[str, list[float]]:
    """The kernel work of each change, one command at a time, in kvn-bench-<random>-{h,r}."""
    from agent.network import NatGatewayNet, PortNet, SubnetNet, VpcNet
    from agent.network.nat import render_nat_json
    tag = f"kvn-bench-{secrets.token_hex(3)}"
    h, r = f"{tag}-h", f"{tag}-r"
    pub, priv = "subnet-0000000000000000a", "subnet-0000000000000000b"
    subnets = (SubnetNet(subnet_id=pub, cidr="172.31.1.0/24", router_ip="172.31.1.1", route="igw"),
               SubnetNet(subnet_id=priv, cidr="172.31.2.0/24", router_ip="172.31.2.1",
                         route="nat"))
    ng = NatGatewayNet(nat_gateway_id="nat-0000000000000000a", subnet_id=pub,
                       private_ip="172.31.1.250", public_ip="203.0.113.9",
                       host_underlay_ip="100.64.0.11")

    def vpc(public: bool, nat_route: bool) -> str:
        sn = subnets if nat_route else (subnets[0], subnets[1].model_copy(update={"route": "local"}))
        port = PortNet(port_id="eni-0000000000000000a", tap="tp0", mac="52:54:00:00:00:0a",
                       ip="172.31.1.10", subnet_id=pub, public_ip="203.0.113.5" if public else None)
        v = VpcNet(vpc_id="vpc-0000000000000000a", vni=0xBE, cidr="172.31.0.0/16", subnets=sn,
                   ports=(port,), internet=True, nat_gateway=ng)
        return render_nat_json(v, local_nat_gateway=True)

    work = Path(tempfile.mkdtemp(prefix="kumo-bench-vpc-"))
    files = {k: work / f"{k}.json" for k in ("pub", "nopub", "nat", "nonat")}
    files["pub"].write_text(vpc(True, True))
    files["nopub"].write_text(vpc(False, True))
    files["nat"].write_text(vpc(True, True))
    files["nonat"].write_text(vpc(True, False))
    eip_add, eip_del, rt_add = [], [], []
    try:
        _sh("ip", "netns", "add", h)
        _sh("ip", "netns", "add", r)
        _sh("ip", "-n", h, "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink0p")
        _sh("ip", "-n", h, "link", "set", "uplink0", "up")
        _sh("ip", "-n", h, "link", "add", "kt-0000be", "type", "veth", "peer", "name", "ku-0000be",
            "netns", r)
        _sh("ip", "-n", h, "addr", "add", "169.254.0.1/32", "dev", "kt-0000be")
        _sh("ip", "-n", h, "link", "set", "kt-0000be", "up")
        _sh("ip", "-n", r, "addr", "add", "169.254.0.2/32", "dev", "ku-0000be")
        _sh("ip", "-n", r, "link", "set", "ku-0000be", "up")
        _sh("ip", "-n", h, "route", "add", "169.254.0.2/32", "dev", "kt-0000be")
        _sh("ip", "-n", r, "route", "add", "169.254.0.1/32", "dev", "ku-0000be")
        _sh("ip", "netns", "exec", r, "nft", "-j", "-f", str(files["nopub"]))
        for _ in range(n):
            t = time.perf_counter()  # the new host takes the address
            _sh("ip", "-n", h, "route", "add", "203.0.113.5/32", "via", "169.254.0.2",
                "dev", "kt-0000be")
            _sh("ip", "-n", h, "neigh", "add", "proxy", "203.0.113.5", "dev", "uplink0")
            _sh("ip", "netns", "exec", r, "nft", "-j", "-f", str(files["pub"]))
            eip_add.append(time.perf_counter() - t)
            t = time.perf_counter()  # the old host lets it go
            _sh("ip", "-n", h, "route", "del", "203.0.113.5/32")
            _sh("ip", "-n", h, "neigh", "del", "proxy", "203.0.113.5", "dev", "uplink0")
            _sh("ip", "netns", "exec", r, "nft", "-j", "-f", str(files["nopub"]))
            eip_del.append(time.perf_counter() - t)
        _sh("ip", "netns", "exec", r, "nft", "-j", "-f", str(files["nonat"]))
        for _ in range(n):
            t = time.perf_counter()
            _sh("ip", "-n", r, "route", "add", "throw", "172.31.0.0/16", "table", "101")
            _sh("ip", "-n", r, "route", "add", "default", "via", "169.254.0.1", "dev", "ku-0000be",
                "table", "101")
            _sh("ip", "-n", r, "rule", "add", "from", "172.31.2.0/24", "table", "101", "pref", "1000")
            _sh("ip", "netns", "exec", r, "nft", "-j", "-f", str(files["nat"]))
            rt_add.append(time.perf_counter() - t)
            _sh("ip", "-n", r, "rule", "del", "pref", "1000")
            _sh("ip", "-n", r, "route", "flush", "table", "101")
            _sh("ip", "netns", "exec", r, "nft", "-j", "-f", str(files["nonat"]))
    finally:
        for ns in (h, r):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return {"eip_move (add on new host + remove on old)": [a + d for a, d in zip(eip_add, eip_del)],
            "route add (3 ip + 1 nft)": rt_add}


def stats(xs: list[float]) -> str:
    xs = [x for x in xs if x == x]  # drop NaN (a change whose agent timestamp was not seen)
    if not xs:
        return "n/a"
    return (f"median {median(xs):7.3f} s  p95 {percentile(xs, 95):7.3f} s  "
            f"min {min(xs):7.3f}  max {max(xs):7.3f}  (n={len(xs)})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--changes", type=int, default=20)
    ap.add_argument("--lab-state", type=Path, default=None)
    ap.add_argument("--dump", type=Path, default=None, help="write the raw numbers as JSON here")
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP + " (2 changes each)")
    args = ap.parse_args()
    if args.smoke:
        args.changes = 2
    require_root()
    from images.builder import build
    from tests.lab.net_support import INET_SERVER, http_cmd
    from tests.lab.test_vpc_lab import build_world, inet_probe, teardown_world
    print("VPC change benchmark;", machine_note(), flush=True)
    build("kumo-tiny", log=lambda *_: None)
    tmp = Path(tempfile.mkdtemp(prefix="kumo-bench-vpc-"))
    tmp.chmod(0o755)
    raw: dict = {}
    try:
        with bench_lab(args.lab_state, hosts=2) as lab:
            w = None
            try:
                t = time.time()
                w = build_world(lab, tmp, full=False)
                print(f"world up in {time.time() - t:.1f} s: " + ", ".join(
                    f"{n} {vm.id} {vm.ip} {vm.host}" for n, vm in sorted(w.vms.items()))
                    + f"; NAT gateway on its host, elastic IP {w.ids['eip_ip']}", flush=True)
                a1 = w.vms["a1"]
                first = inet_probe(lab, w.ids["eip_ip"], duration=60, stop=f"match:{a1.id}")
                assert first[-1]["body"] == a1.id, f"a1 not answering on its elastic IP: {first[-3:]}"
                w.sh_until(w.vms["a3"], http_cmd(INET_SERVER, w.listener.port), lambda o: o.strip())
                print(f"elastic IP associate, {args.changes} changes:", flush=True)
                raw["eip"] = eip_changes(w, args.changes)
                print(f"route 0.0.0.0/0 -> NAT gateway added, {args.changes} changes:", flush=True)
                raw["route"] = route_changes(w, args.changes)
                raw["floor"] = floors(w, args.changes)
            finally:
                if w is not None:
                    teardown_world(w)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    raw["bare"] = bare_baseline(args.changes)
    if args.dump:
        args.dump.write_text(json.dumps(raw, indent=1))
    e, r = raw["eip"], raw["route"]
    print("\nresults (seconds from the API call):")
    print("elastic IP associate -> HTTP answer from the internet names the new instance")
    print(f"  effective                         {stats([x['effective'] for x in e])}")
    print(f"  agent of the new host applied     {stats([x['agent_new_host'] for x in e])}")
    print(f"  both agents applied               {stats([x['agent_all'] for x in e])}")
    print(f"  API call returned                 {stats([x['api'] for x in e])}")
    print(f"  failed changes: {sum(not x['ok'] for x in e)}")
    print("route 0.0.0.0/0 -> NAT gateway added -> a3's traffic reaches the internet listener")
    print(f"  effective                         {stats([x['effective'] for x in r])}")
    print(f"  agent of a3's host applied        {stats([x['agent_a3_host'] for x in r])}")
    print(f"  every affected agent applied      {stats([x['agent_all'] for x in r])}")
    print(f"  API call returned                 {stats([x['api'] for x in r])}")
    print("baselines (same run):")
    for k, xs in raw["bare"].items():
        print(f"  bare commands: {k:45s} {stats(xs)}")
    print(f"  probe floor, elastic IP prober on an unchanged path   {stats(raw['floor']['eip'])}")
    print(f"  probe floor, a3's guest loop period on a working path {stats(raw['floor']['nat_loop_period'])}")
    print("dataplane programming on a host with 200 ports: bench/bench_dataplane.py")
    # Every elastic IP move must have become effective (a route change that does not raises);
    # the times are printed, never gated, so a smoke run exits like a real one.
    return 0 if all(x["ok"] for x in e) else 1


if __name__ == "__main__":
    sys.exit(main())
