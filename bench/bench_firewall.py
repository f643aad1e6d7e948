"""Benchmark of the security-group firewall (agent/firewall): control plane and dataplane.

Runs only in network namespaces it creates (agent/firewall/netlab: a host namespace with a bridge,
veth pairs into "guest" namespaces; no guests) and deletes them at the end. Every load is bounded
in count and time. Needs root.

1. Control plane, one group with 1,000 rules on 100 ports (libnftables in process; the same through
   the `nft` CLI as a baseline): full atomic apply, one rule added/removed, membership change.
2. Dataplane: new TCP connections/s, TCP throughput and one-way UDP packets/s (every datagram is
   ct state "new", so each one walks the rules) from a client through the bridge to server A, whose
   group has 10 rules, and server B, whose group has 10,000, in the same firewall at the same time.
   The client alternates A and B connection by connection (burst by burst), so the machine's drift
   cancels out of the B/A ratio, which is what the rule count costs. A control run (B also 10
   rules) shows the method's own noise; the same rules as an iptables-style linear chain per port
   (one nft rule per rule, evaluated in order) are the same-run baseline Kumo must beat.

    .venv/bin/python bench/bench_firewall.py [--rounds 3] [--seconds 1.5] [--smoke] [--ranged] [--dataplane-only]

--smoke (alias --quick): 1 round of 0.3 s per metric, 1,000 rules for B, 3 control-plane
repetitions. No verdict sets the exit status (in any mode): it fails only when a check fails (an
incremental change that was not incremental, a verify that does not match, a load that breaks).
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

from bench.common import SMOKE_HELP  # noqa: E402
from agent.firewall.apply import FirewallApplier, Nft  # noqa: E402
from agent.firewall.libnft import LibNft  # noqa: E402
from agent.firewall.model import HostFirewall, PortFirewall, SecurityGroup  # noqa: E402
from agent.firewall.netlab import FirewallBed, run  # noqa: E402
from agent.firewall.render import empty_document, render  # noqa: E402
from agent.firewall.samples import G1, G2, G3, many_rules, rule  # noqa: E402

PY = sys.executable
# The load runs as one Python process per namespace. The client ALTERNATES between two servers, A
# (behind the small rule set) and B (behind the big one), connection by connection and burst by
# burst, timing each target separately: drift in machine load (the 2-CPU VM's scheduling noise is
# 5-15 % between back-to-back runs, more than the effect being measured) hits A and B alike, so
# their ratio isolates what the rule count costs a packet.
LOAD = r"""
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
    raise SystemExit
hosts, secs, mx = sys.argv[2].split(","), float(sys.argv[3]), int(sys.argv[4])
spent = [0.0] * len(hosts); done = [0] * len(hosts); fail = 0
clock = time.perf_counter; end = clock() + secs
if cmd == "conn":  # one connection to each host in turn (RST close: no TIME_WAIT pile-up)
    linger = struct.pack("ii", 1, 0)
    while clock() < end and sum(done) < mx:
        for i, h in enumerate(hosts):
            s = socket.socket(); s.settimeout(1); s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            t0 = clock()
            try: s.connect((h, 5001)); done[i] += 1
            except OSError: fail += 1
            s.close(); spent[i] += clock() - t0
elif cmd == "tput":  # one established connection per host, 1 MiB to each in turn
    socks = [socket.create_connection((h, 5002), timeout=5) for h in hosts]; buf = b"\0" * (1 << 20)
    while clock() < end and sum(done) < mx:
        for i, s in enumerate(socks):
            t0 = clock(); s.sendall(buf); spent[i] += clock() - t0; done[i] += len(buf)
    for s in socks: s.close()
elif cmd == "udp":  # bursts of 256 datagrams to each host in turn (every one is ct state new)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); msg = b"x" * 64
    while clock() < end and sum(done) < mx:
        for i, h in enumerate(hosts):
            t0 = clock()
            for _ in range(256):
                try: s.sendto(msg, (h, 5004)); done[i] += 1
                except OSError: fail += 1
            spent[i] += clock() - t0
print(" ".join(f"{d}:{t}" for d, t in zip(done, spent)), fail)
"""


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
SMALL, BIG, CLIENT = G1, G2, G3  # server A's group, server B's group, the client's group


def filler(n: int) -> tuple:
    """``n`` ingress TCP rules that never match the load (other sources, other ports)."""
    if RANGED:
        return tuple(rule(i + 1, "ingress", "tcp", f"172.{16 + i // 16384}.{(i // 64) % 256}.{(i % 64) * 4}/30",
                          from_port=10000 + 2 * (i % 20000), to_port=10001 + 2 * (i % 20000)) for i in range(n))
    return many_rules(n, 0).groups[G1].rules[:n]


def sg_firewall(bed: FirewallBed, rules_a: int, rules_b: int) -> HostFirewall:
    """Client, server A and server B in one VPC; A's group has ``rules_a`` rules, B's ``rules_b``.
    The three rules the load needs come LAST in each group (the linear chain's worst case)."""
    client, a, b = bed.guests

    def group(gid: str, n: int, base: int) -> SecurityGroup:
        need = (rule(base + 1, "ingress", "tcp", f"{client.ipv4}/32", from_port=5001, to_port=5002),
                rule(base + 2, "ingress", "udp", f"{client.ipv4}/32", from_port=5004, to_port=5004),
                rule(base + 3, "egress", "all", "0.0.0.0/0"))
        return SecurityGroup(gid, 9, filler(max(0, n - len(need))) + need, frozenset())

    groups = {SMALL: group(SMALL, rules_a, 800000), BIG: group(BIG, rules_b, 900000),
              CLIENT: SecurityGroup(CLIENT, 9, (rule(990001, "egress", "all", "0.0.0.0/0"),), frozenset())}
    ports = tuple(PortFirewall(g.tap, bed.bridge, g.mac, g.ipv4, 9, (gid,))
                  for g, gid in zip(bed.guests, (CLIENT, SMALL, BIG)))
    return HostFirewall(ports, groups)


def linear_document(fw: HostFirewall, bed: FirewallBed) -> dict:
    """The baseline, iptables-style (as per-port iptables firewalls do it): a jump per destination
    port, then that port's rules one after another, evaluated in order. It keeps Kumo's bridge
    table (anti-spoofing, per frame) so that it differs from Kumo only in how rules are matched."""
    def m(left, right, op="=="):
        return {"match": {"op": op, "left": left, "right": right}}

    def p(proto, field):
        return {"payload": {"protocol": proto, "field": field}}

    def bridge_family(cmd: dict) -> bool:
        body = next(iter(next(iter(cmd.values())).values()))
        return not isinstance(body, dict) or body.get("family") == "bridge"

    cmds = list(empty_document()["nftables"])
    cmds += [c for c in render(fw).document()["nftables"] if "metainfo" not in c and "delete" not in c
             and bridge_family(c)]
    cmds.append({"add": {"table": {"family": "inet", "name": "kumo"}}})
    cmds.append({"add": {"chain": {"family": "inet", "table": "kumo", "name": "forward", "type": "filter",
                                   "hook": "forward", "prio": 0, "policy": "accept"}}})

    def add(chain, expr):
        cmds.append({"add": {"rule": {"family": "inet", "table": "kumo", "chain": chain, "expr": expr}}})

    add("forward", [m({"ct": {"key": "state"}}, ["established", "related"], "in"), {"accept": None}])
    add("forward", [m({"ct": {"key": "state"}}, "invalid", "in"), {"drop": None}])
    for guest, gid in zip(bed.guests[1:], (SMALL, BIG)):
        chain = f"in-{gid}"
        cmds.append({"add": {"chain": {"family": "inet", "table": "kumo", "name": chain}}})
        add("forward", [m(p("ip", "daddr"), str(guest.ipv4)), {"jump": {"target": chain}}])
        for r in fw.groups[gid].rules:
            if r.direction != "ingress" or r.cidr is None:
                continue
            net = {"prefix": {"addr": str(r.cidr.network_address), "len": r.cidr.prefixlen}}
            add(chain, [m(p("ip", "saddr"), net), m(p(r.protocol, "dport"), {"range": list(r.port_range)}),
                        {"accept": None}])
        add(chain, [{"drop": None}])
    return {"nftables": cmds}


class Load:
    """A server in A's and B's namespace; the alternating client in the client's."""

    def __init__(self, bed: FirewallBed):
        self.client, *self.servers = bed.guests
        self.srv = [subprocess.Popen(["ip", "netns", "exec", g.ns, PY, "-c", LOAD, "serve"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                    for g in self.servers]
        for p in self.srv:
            assert p.stdout.readline().strip() == "ready"

    def udp_counts(self) -> list[int]:
        for p in self.srv:
            p.stdin.write("\n")
            p.stdin.flush()
        return [int(p.stdout.readline()) for p in self.srv]

    def client_run(self, what: str, secs: float, mx: int) -> tuple[list[tuple[float, float]], int]:
        """[(units done, seconds spent) for A, for B], failures."""
        hosts = ",".join(str(g.ipv4) for g in self.servers)
        out = run("ip", "netns", "exec", self.client.ns, PY, "-c", LOAD, what, hosts, str(secs), str(mx),
                  timeout=120).stdout.split()
        return [tuple(map(float, x.split(":"))) for x in out[:-1]], int(out[-1])

    def measure(self, secs: float) -> dict[str, list[float]]:
        """Rates for [A, B]: new connections/s, TCP Mbit/s, UDP datagrams received/s."""
        conn, fails = self.client_run("conn", secs, 200_000)
        tput, _ = self.client_run("tput", secs, 16 << 30)
        before = self.udp_counts()
        udp, _ = self.client_run("udp", secs, 4_000_000)
        time.sleep(0.2)
        got = [after - b for after, b in zip(self.udp_counts(), before)]
        return {"conn/s": [n / t for n, t in conn], "Mbit/s": [n * 8 / 1e6 / t for n, t in tput],
                "udp rx pkt/s": [g / t for g, (_, t) in zip(got, udp)], "conn_fail": [fails, fails]}

    def close(self) -> None:
        for p in self.srv:
            p.stdin.close()
            p.terminate()
            p.wait(timeout=10)


METRICS = ("conn/s", "Mbit/s", "udp rx pkt/s")


def dataplane(bed: FirewallBed, rounds: int, secs: float, sizes: tuple[int, int]) -> None:
    small, big = sizes
    nft = LibNft(bed.host)
    ap = FirewallApplier(nft)
    control, effect = sg_firewall(bed, small, small), sg_firewall(bed, small, big)
    configs = [
        (f"kumo sets: A {small}, B {small} (control)", lambda: ap.setup(control)),
        (f"kumo sets: A {small}, B {big}", lambda: ap.setup(effect)),
        (f"linear:    A {small}, B {big}", lambda doc=linear_document(effect, bed): nft.load(doc)),
    ]
    load = Load(bed)
    results: dict[str, list[dict[str, list[float]]]] = {name: [] for name, _ in configs}
    try:
        for r in range(rounds):
            for name, apply in configs[r % len(configs):] + configs[:r % len(configs)]:
                apply()
                time.sleep(1.0)  # let the kernel free the previous ruleset before measuring
                results[name].append(load.measure(secs))
    finally:
        load.close()
        nft.load(empty_document())
        nft.close()
    print(f"dataplane: client -> servers A and B via bridge + br_netfilter, the client alternating A/B per "
          f"connection / 1 MiB / 256 datagrams; {rounds} rounds x {secs}s per metric; filler rules "
          f"{'ranged (/30, 2 ports)' if RANGED else 'exact (/32, 1 port)'}. Rates: median of the rounds "
          "[A | B]; B vs A: median of the per-round ratios B/A")

    def ratio(name: str, k: str) -> float:
        return statistics.median(row[k][1] / row[k][0] for row in results[name]) * 100 - 100

    for name, rows in results.items():
        med = {k: [statistics.median(row[k][i] for row in rows) for i in (0, 1)] for k in METRICS}
        print(f"  {name:36} new conn/s {med['conn/s'][0]:6.0f} | {med['conn/s'][1]:6.0f}  "
              f"TCP Mbit/s {med['Mbit/s'][0]:6.0f} | {med['Mbit/s'][1]:6.0f}  "
              f"UDP rx pkt/s {med['udp rx pkt/s'][0]:7.0f} | {med['udp rx pkt/s'][1]:7.0f}  "
              f"(failed conns {max(row['conn_fail'][0] for row in rows):.0f})")
    (cname, _), (kname, _), (lname, _) = configs
    for k in METRICS:
        d, c, lin = ratio(kname, k), ratio(cname, k), ratio(lname, k)
        verdict = "PASS" if abs(d) <= 5 else "FAIL"
        # Kumo vs the linear chain at `big` rules: B's rate across configs (sequential, not paired)
        x = statistics.median(rk[k][1] / rl[k][1] for rk, rl in zip(results[kname], results[lname]))
        print(f"  {k:13} kumo {big} vs {small} rules: {d:+6.1f}% ({verdict}: within 5%; control "
              f"{small} vs {small}: {c:+5.1f}%); linear {big} vs {small}: {lin:+6.1f}%; kumo/linear at "
              f"{big}: {x:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--reps", type=int, default=10, help="control-plane repetitions")
    ap.add_argument("--smoke", "--quick", action="store_true",
                    help=SMOKE_HELP + " (1 round, 0.3 s, 1,000 rules)")
    ap.add_argument("--ranged", action="store_true",
                    help="dataplane filler rules are /30 CIDRs with 2-port ranges (the interval set) "
                         "instead of one address + one port (the hash set)")
    ap.add_argument("--dataplane-only", action="store_true", help="skip the control-plane part")
    args = ap.parse_args()
    global RANGED
    RANGED = args.ranged
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    sizes = (10, 10_000)
    if args.smoke:
        args.rounds, args.seconds, args.reps, sizes = 1, 0.3, 3, (10, 1000)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
          f"{run('nft', '--version').stdout.strip()}, kernel {os.uname().release}")
    with FirewallBed(bridge="br-bench") as bed:
        for i in (1, 2, 3):  # client, server A, server B
            bed.add_guest(i, f"10.9.0.{i}")
        if not args.dataplane_only:
            control_plane(bed, args.reps)
        dataplane(bed, args.rounds, args.seconds, sizes)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
