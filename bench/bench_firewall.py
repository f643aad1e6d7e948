"""Benchmark of the security-group firewall (agent/firewall): control plane and dataplane.

Runs only in network namespaces it creates (agent/firewall/netlab: a host namespace with a bridge,
veth pairs into "guest" namespaces; no guests) and deletes them at the end. Every load is bounded
in count and time. Needs root.

1. Control plane, one group with 1,000 rules on 100 ports (libnftables in process; the same through
   the `nft` CLI as a baseline): full atomic apply, one rule added/removed, membership change.
2. Dataplane, client -> server through the bridge: new TCP connections/s, TCP throughput, one-way
   UDP packets/s (every datagram is ct state "new", so each one walks the rules), with Kumo's
   set-based ruleset at 10 and 10,000 rules, and the same rules as an iptables-style linear chain
   (one nft rule per rule, evaluated in order) as the same-run baseline.

    .venv/bin/python bench/bench_firewall.py [--rounds 3] [--seconds 1.5] [--quick] [--ranged]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.firewall.apply import FirewallApplier, Nft  # noqa: E402
from agent.firewall.libnft import LibNft  # noqa: E402
from agent.firewall.model import HostFirewall, PortFirewall, SecurityGroup  # noqa: E402
from agent.firewall.netlab import FirewallBed, run  # noqa: E402
from agent.firewall.render import empty_document  # noqa: E402
from agent.firewall.samples import G1, many_rules, rule  # noqa: E402

PY = sys.executable
LOAD = r'''
import socket, struct, sys, threading, time
cmd = sys.argv[1]
if cmd == "serve":  # accept+close on 5001, sink on 5002, UDP count on 5004; prints UDP count on stdin EOF
    def acc():
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", 5001)); s.listen(1024)
        while True:
            c, _ = s.accept(); c.close()
    def sink():
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", 5002)); s.listen(16)
        while True:
            c, _ = s.accept()
            def rd(c=c):
                while c.recv(1 << 20): pass
            threading.Thread(target=rd, daemon=True).start()
    count = [0]
    def udp():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 5004))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        while True:
            s.recv(2048); count[0] += 1
    for f in (acc, sink, udp): threading.Thread(target=f, daemon=True).start()
    print("ready", flush=True)
    for line in sys.stdin:
        print(count[0], flush=True)
elif cmd == "conn":  # conn HOST SECONDS MAX -> connections/s (RST close: no TIME_WAIT pile-up)
    host, secs, mx = sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    n = fail = 0; t0 = time.perf_counter(); end = t0 + secs
    while n < mx and time.perf_counter() < end:
        s = socket.socket(); s.settimeout(1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        try: s.connect((host, 5001)); n += 1
        except OSError: fail += 1
        s.close()
    print(n / (time.perf_counter() - t0), fail)
elif cmd == "tput":  # tput HOST SECONDS MAXBYTES -> Mbit/s
    host, secs, mx = sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    s = socket.create_connection((host, 5002), timeout=5); buf = b"\0" * (1 << 18); sent = 0
    t0 = time.perf_counter(); end = t0 + secs
    while sent < mx and time.perf_counter() < end:
        s.sendall(buf); sent += len(buf)
    s.close(); print(sent * 8 / 1e6 / (time.perf_counter() - t0))
elif cmd == "udp":  # udp HOST SECONDS MAX -> sent packets, seconds
    host, secs, mx = sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); n = 0; msg = b"x" * 64
    t0 = time.perf_counter(); end = t0 + secs
    while n < mx and time.perf_counter() < end:
        try: s.sendto(msg, (host, 5004)); n += 1
        except OSError: pass
    print(n, time.perf_counter() - t0)
'''


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def ms(results: list) -> str:
    v = [r.seconds * 1000 for r in results]
    c = [r.cpu_seconds * 1000 for r in results]
    return (f"wall median {statistics.median(v):7.2f} ms  p90 {pct(v, 0.9):7.2f}  best {min(v):7.2f} | "
            f"CPU (this process) median {statistics.median(c):7.2f} ms  (n={len(v)})")


# --- 1. control plane ------------------------------------------------------------------------
def control_plane(bed: FirewallBed, reps: int) -> None:
    fw = many_rules(1000, 100)
    print(f"control plane: 1 group, {len(fw.groups[G1].rules)} rules, {len(fw.ports)} ports")
    for label, nft in (("kumo (libnftables in process)", LibNft(bed.host)),
                       ("baseline: same via nft CLI subprocess", Nft(bed.host))):
        ap = FirewallApplier(nft)
        full = [ap.setup(fw) for _ in range(reps)]
        add, rem, mem = [], [], []
        g = fw.groups[G1]
        for i in range(reps * 5):
            r = rule(900000 + i, "ingress", "tcp", f"192.168.{i % 256}.0/24", from_port=443, to_port=443)
            a = ap.change_rules(G1, add=(r,))
            d = ap.change_rules(G1, remove=(r.rule_id,))
            assert a.mode == d.mode == "incremental", (a, d)
            add.append(a)
            rem.append(d)
            m1 = ap.update_group(ap.current.groups[G1].__class__(G1, g.zone, ap.current.groups[G1].rules,
                                                                 g.members | {IPv4Address(f"10.9.200.{i % 250}")}))
            m2 = ap.update_group(ap.current.groups[G1].__class__(G1, g.zone, ap.current.groups[G1].rules,
                                                                 g.members))
            assert m1.mode == m2.mode == "incremental", (m1, m2)
            mem += [m1, m2]
        assert ap.verify().ok
        t0 = time.perf_counter()
        ap.verify()
        ver = time.perf_counter() - t0
        ap.clear()
        if isinstance(nft, LibNft):
            nft.close()
        print(f"  {label}")
        print(f"    full apply (atomic)       {ms(full)}   target < 100 ms")
        print(f"    one rule added            {ms(add)}   target < 10 ms")
        print(f"    one rule removed          {ms(rem)}   target < 10 ms")
        print(f"    membership change         {ms(mem)}   target < 10 ms")
        print(f"    verify (read back)        wall {ver * 1000:7.2f} ms")


# --- 2. dataplane ----------------------------------------------------------------------------
RANGED = False  # --ranged: filler rules are /30 x 2-port ranges (interval set) instead of exact


def sg_firewall(bed: FirewallBed, n_rules: int) -> HostFirewall:
    client, server = bed.guests
    n = max(0, n_rules - 3)
    if RANGED:
        filler = tuple(rule(i + 1, "ingress", "tcp", f"172.{16 + i // 16384}.{(i // 64) % 256}.{(i % 64) * 4}/30",
                            from_port=10000 + 2 * (i % 20000), to_port=10001 + 2 * (i % 20000)) for i in range(n))
    else:
        filler = many_rules(n, 0).groups[G1].rules[:n]
    rules = filler + (rule(800001, "ingress", "tcp", f"{client.ipv4}/32", from_port=5001, to_port=5002),
                      rule(800002, "ingress", "udp", f"{client.ipv4}/32", from_port=5004, to_port=5004),
                      rule(800003, "egress", "all", "0.0.0.0/0"))
    ports = tuple(PortFirewall(g.tap, bed.bridge, g.mac, g.ipv4, 9, (G1,)) for g in bed.guests)
    return HostFirewall(ports, {G1: SecurityGroup(G1, 9, rules, frozenset())})


def linear_document(fw: HostFirewall, server: IPv4Address) -> dict:
    """iptables-style: one rule per security-group rule, evaluated in order (the baseline)."""
    def m(left, right, op="=="):
        return {"match": {"op": op, "left": left, "right": right}}

    def p(proto, field):
        return {"payload": {"protocol": proto, "field": field}}

    cmds = list(empty_document()["nftables"])
    cmds.append({"add": {"table": {"family": "inet", "name": "kumo"}}})
    cmds.append({"add": {"chain": {"family": "inet", "table": "kumo", "name": "forward", "type": "filter",
                                   "hook": "forward", "prio": 0, "policy": "accept"}}})

    def add(expr):
        cmds.append({"add": {"rule": {"family": "inet", "table": "kumo", "chain": "forward", "expr": expr}}})

    add([m({"ct": {"key": "state"}}, ["established", "related"], "in"), {"accept": None}])
    add([m({"ct": {"key": "state"}}, "invalid", "in"), {"drop": None}])
    add([m(p("ip", "daddr"), str(server), "!="), {"accept": None}])
    for r in fw.groups[G1].rules:
        if r.direction != "ingress" or r.cidr is None:
            continue
        net = {"prefix": {"addr": str(r.cidr.network_address), "len": r.cidr.prefixlen}}
        add([m(p("ip", "saddr"), net), m(p(r.protocol, "dport"), {"range": list(r.port_range)}), {"accept": None}])
    add([{"drop": None}])
    return {"nftables": cmds}


class Load:
    def __init__(self, bed: FirewallBed):
        self.client, self.server = bed.guests
        self.srv = subprocess.Popen(["ip", "netns", "exec", self.server.ns, PY, "-c", LOAD, "serve"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.srv.stdout.readline().strip() == "ready"

    def udp_count(self) -> int:
        self.srv.stdin.write("\n")
        self.srv.stdin.flush()
        return int(self.srv.stdout.readline())

    def client_run(self, *args: str) -> list[str]:
        return run("ip", "netns", "exec", self.client.ns, PY, "-c", LOAD, *args, timeout=120).stdout.split()

    def measure(self, secs: float) -> dict[str, float]:
        host = str(self.server.ipv4)
        conn, fails = self.client_run("conn", host, str(secs), "50000")
        tput = self.client_run("tput", host, str(secs), str(8 << 30))[0]
        before = self.udp_count()
        sent, took = self.client_run("udp", host, str(secs), "2000000")
        time.sleep(0.2)
        got = self.udp_count() - before
        return {"conn/s": float(conn), "conn_fail": float(fails), "Mbit/s": float(tput),
                "udp rx pkt/s": got / float(took), "udp sent": float(sent)}

    def close(self) -> None:
        self.srv.stdin.close()
        self.srv.terminate()
        self.srv.wait(timeout=10)


def dataplane(bed: FirewallBed, rounds: int, secs: float, sizes: tuple[int, int]) -> None:
    nft = LibNft(bed.host)
    ap = FirewallApplier(nft)
    server = bed.guests[1].ipv4
    configs = []
    for n in sizes:
        fw = sg_firewall(bed, n)
        configs.append((f"kumo sets, {n:>6} rules", lambda fw=fw: ap.setup(fw)))
    for n in sizes:
        doc = linear_document(sg_firewall(bed, n), server)
        configs.append((f"baseline linear, {n:>6} rules", lambda doc=doc: nft.load(doc)))
    load = Load(bed)
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in configs}
    try:
        for r in range(rounds):
            # interleaved, so drift in machine load hits every config alike, and rotated, so no
            # config always follows the teardown of the big rulesets (freed by the kernel later)
            for name, apply in configs[r % len(configs):] + configs[:r % len(configs)]:
                apply()
                time.sleep(1.0)
                results[name].append(load.measure(secs))
    finally:
        load.close()
        nft.load(empty_document())
        nft.close()
    print(f"dataplane: client -> server via bridge + br_netfilter, {rounds} interleaved rounds x {secs}s per "
          f"metric; filler rules {'ranged (/30, 2 ports)' if RANGED else 'exact (/32, 1 port)'}; best of the "
          "rounds (median in brackets)")
    med, best = {}, {}
    for name, rows in results.items():
        med[name] = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        best[name] = {k: max(r[k] for r in rows) for k in rows[0]}
        v, b = med[name], best[name]
        print(f"  {name:30} new conn/s {b['conn/s']:6.0f} [{v['conn/s']:6.0f}] (failed {v['conn_fail']:.0f})  "
              f"TCP Mbit/s {b['Mbit/s']:6.0f} [{v['Mbit/s']:6.0f}]  UDP rx pkt/s {b['udp rx pkt/s']:6.0f} "
              f"[{v['udp rx pkt/s']:6.0f}]")
    small, big = (f"kumo sets, {n:>6} rules" for n in sizes)
    lsmall, lbig = (f"baseline linear, {n:>6} rules" for n in sizes)
    # paired comparison: within each round the configurations ran back to back, so the ratio of
    # two of them in the same round cancels most of the drift in machine load between rounds
    def paired(a: str, b: str, k: str) -> float:
        return statistics.median(rb[k] / ra[k] for ra, rb in zip(results[a], results[b])) * 100 - 100

    for k in ("conn/s", "Mbit/s", "udp rx pkt/s"):
        d, dl = paired(small, big, k), paired(lsmall, lbig, k)
        verdict = "PASS" if abs(d) <= 5 else "FAIL"
        print(f"  {k:13} kumo {sizes[1]} vs {sizes[0]} rules: {d:+6.1f}% ({verdict}: within 5%); "
              f"linear {sizes[1]} vs {sizes[0]}: {dl:+6.1f}%; kumo/linear at {sizes[1]}: "
              f"{paired(lbig, big, k) / 100 + 1:.2f}x   (median of per-round ratios)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--reps", type=int, default=10, help="control-plane repetitions")
    ap.add_argument("--quick", action="store_true", help="1 round, 0.5 s, 1,000 rules (smoke test)")
    ap.add_argument("--ranged", action="store_true",
                    help="dataplane filler rules are /30 CIDRs with 2-port ranges (the interval set) "
                         "instead of one address + one port (the hash set)")
    args = ap.parse_args()
    global RANGED
    RANGED = args.ranged
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    sizes = (10, 10_000)
    if args.quick:
        args.rounds, args.seconds, args.reps, sizes = 1, 0.5, 3, (10, 1000)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
          f"{run('nft', '--version').stdout.strip()}, kernel {os.uname().release}")
    with FirewallBed(bridge="br-bench") as bed:
        bed.add_guest(1, "10.9.0.1")
        bed.add_guest(2, "10.9.0.2")
        control_plane(bed, args.reps)
        dataplane(bed, args.rounds, args.seconds, sizes)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
