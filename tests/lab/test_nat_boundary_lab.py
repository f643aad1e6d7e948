"""The boundary of private subnets holds while the NAT table and the firewall are reloaded.

Real namespaces and packets, no guests: the VPC mini-lab of test_vpc_dataplane.py (its `env`
fixture: fabric, "internet" namespace, two hosts, guest namespaces behind veth "taps", the real
Dataplane) plus the real firewall applier in host h1's namespace. The internet namespace is given
a route to the VPC's private addresses through h1 (and h1 one into its router namespace), so the
router's NAT forward filter is all that stands between the internet and a private subnet.

Streams of UDP datagrams run for WINDOW seconds, each from one socket, every datagram counted on
the far side (test_firewall_dataplane.py's Server):
- forbidden by the NAT forward filter: internet -> 10.0.2.10 (a3, behind the NAT gateway),
  internet -> 10.0.1.11 (a6, public subnet without a public IP), a6 -> internet (a private source
  leaving); forbidden by the firewall: internet -> a1's public IP on a port its group does not open;
- allowed (the controls that run during the whole window): internet -> a1's public IP on an open
  port (dnat), a3 -> internet through the NAT gateway (snat).
Meanwhile the NAT table of h1's router is reloaded through Dataplane.ensure (its content changes
every time: a subnet joins and leaves the NAT gateway) and the firewall through
FirewallApplier.setup (a rule comes and goes), each at least MIN_RELOADS times. Nothing forbidden
may arrive: zero datagrams while thousands are sent. Before the window, a positive control shows
that each forbidden stream does arrive when the rule that stops it is missing (NAT forward chain
flushed by hand; firewall not loaded yet), so a zero is the filter's doing, not a broken path.
Everything lives in the env's kvn-<random>-... namespaces, removed at the end.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from ipaddress import IPv4Address

import pytest

from agent.firewall.apply import FirewallApplier
from agent.firewall.load import LibNft, Nft, available as libnft_available
from agent.firewall.model import HostFirewall, PortFirewall, SecurityGroup
from agent.firewall.samples import rule
from agent.network import names
from lab.testing import end_process
from tests.lab.test_firewall_dataplane import Server
from tests.lab.test_vpc_dataplane import (  # noqa: F401  (env: the module's fixture)
    GUESTS, HOSTS, INET_SERVER, S1, S2, S3, Env, env, host_network, nsx, run,
)

pytestmark = [pytest.mark.lab, pytest.mark.slow]

VNI = 0x101
P_IN, P_LEAK, P_OK, P_BAD, P_OUT = 7101, 7102, 7103, 7104, 7105
PUBLIC_A1 = "203.0.113.10"
WINDOW = 12.0  # seconds the streams run
RELOADS_FOR = 9.0  # seconds of reloads, inside the window
RATE = 800  # datagrams per second per stream
MIN_RELOADS = 30
G_A1, G_OPEN = "sg-00000000000000a01", "sg-00000000000000a02"

# A paced UDP sender: SECS RATE HOST:PORT... -> {"HOST:PORT": sent}; one socket per target.
SENDER = r"""
import json, socket, sys, time
secs, rate = float(sys.argv[1]), float(sys.argv[2])
targets = [(t.rsplit(":", 1)[0], int(t.rsplit(":", 1)[1])) for t in sys.argv[3:]]
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in targets]
sent = [0] * len(targets)
t0 = time.monotonic(); n = 0
while time.monotonic() - t0 < secs:
    due = int((time.monotonic() - t0) * rate)
    while n < due:
        for i, (s, t) in enumerate(zip(socks, targets)):
            try:
                s.sendto(b"k" * 32, t); sent[i] += 1
            except OSError:
                pass
        n += 1
    time.sleep(0.002)
print(json.dumps({"%s:%d" % t: c for t, c in zip(targets, sent)}), flush=True)
"""


def send(ns: str, secs: float, rate: int, *targets: tuple[str, int]) -> subprocess.Popen:
    argv = [str(IPv4Address(h)) + f":{int(p)}" for h, p in targets]  # checked addresses only
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SENDER, str(secs), str(rate),
                             *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def sent_by(proc: subprocess.Popen, timeout: float) -> dict[str, int]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return json.loads(out)


def firewall(extra_rule: bool) -> HostFirewall:
    """h1's ports of VPC A: a1 opens only UDP P_OK (and P_OUT's replies are not needed: UDP one way);
    a3 and a6 are open both ways, so only the NAT table guards them. `extra_rule` changes a1's
    sets, so every reload is a real change."""
    a1_rules = [rule(1, "ingress", "udp", "0.0.0.0/0", from_port=P_OK, to_port=P_OK),
                rule(2, "egress", "all", "0.0.0.0/0")]
    if extra_rule:
        a1_rules.append(rule(3, "ingress", "tcp", "0.0.0.0/0", from_port=2222, to_port=2222))
    a1, a3, a6 = GUESTS["a1"], GUESTS["a3"], GUESTS["a6"]
    bridge = names.bridge(VNI)
    ports = (PortFirewall(a1.tap, bridge, a1.mac, IPv4Address(a1.ip), VNI, (G_A1,)),
             PortFirewall(a3.tap, bridge, a3.mac, IPv4Address(a3.ip), VNI, (G_OPEN,)),
             PortFirewall(a6.tap, bridge, a6.mac, IPv4Address(a6.ip), VNI, (G_OPEN,)))
    return HostFirewall(ports, {
        G_A1: SecurityGroup(G_A1, VNI, tuple(a1_rules), frozenset({IPv4Address(a1.ip)})),
        G_OPEN: SecurityGroup(G_OPEN, VNI, (rule(10, "ingress", "all", "0.0.0.0/0"),
                                            rule(11, "egress", "all", "0.0.0.0/0")),
                              frozenset({IPv4Address(a3.ip), IPv4Address(a6.ip)}))})


def counts(server: Server, port: int) -> int:
    return server.counts().get(port, 0)


def test_nothing_crosses_the_nat_boundary_while_nat_and_firewall_reload(env: Env, tmp_path) -> None:
    inet, h1 = env.lab.ns("inet"), env.lab.ns("h1")
    rns = names.router_netns(h1, VNI)
    a1, a3, a6 = (GUESTS[n].ns for n in ("a1", "a3", "a6"))
    dp = env.dp["h1"]
    world_a = env.world
    world_b = replace(world_a, routes=(("igw", S1), ("nat", S2), ("nat", S3)))  # h1's NAT table differs
    if run("ip", "netns", "exec", h1, "cat", "/proc/sys/net/bridge/bridge-nf-call-iptables",
           check=False).stdout.strip() != "1":
        run("ip", "netns", "exec", h1, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")

    # The "internet" aims at the VPC's private addresses through h1 (test-only routes: the
    # dataplane never routes them there, so only the router's NAT filter is left to stop them).
    kt = names.link_name("t", VNI)
    run("ip", "-n", inet, "route", "add", "10.0.0.0/16", "via", HOSTS["h1"])
    run("ip", "-n", h1, "route", "add", "10.0.0.0/16", "via", names.TRANSIT_ROUTER_IP, "dev", kt, "onlink")
    servers: list[Server] = []
    senders: list[subprocess.Popen] = []
    backend = LibNft(h1) if libnft_available() else Nft(h1)
    applier = FirewallApplier(backend)
    try:
        s_a3 = Server(a3, tmp_path / "a3", "", str(P_IN), secs=90)
        s_a6 = Server(a6, tmp_path / "a6", "", str(P_IN), secs=90)
        s_a1 = Server(a1, tmp_path / "a1", "", f"{P_OK},{P_BAD}", secs=90)
        s_inet = Server(inet, tmp_path / "inet", "", f"{P_LEAK},{P_OUT}", secs=90)
        servers = [s_a3, s_a6, s_a1, s_inet]

        # Positive control: every forbidden stream arrives when the rule that stops it is absent.
        nsx(rns, "nft", "flush", "chain", "ip", names.NFT_TABLE, "forward")
        senders = [send(inet, 1.0, 100, (GUESTS["a3"].ip, P_IN), (GUESTS["a6"].ip, P_IN), (PUBLIC_A1, P_BAD)),
                   send(a6, 1.0, 100, (INET_SERVER, P_LEAK))]
        for p in senders:
            sent_by(p, 30)
        senders = []
        time.sleep(0.3)
        control = {"a3": counts(s_a3, P_IN), "a6": counts(s_a6, P_IN), "a1 bad": counts(s_a1, P_BAD),
                   "leak": counts(s_inet, P_LEAK)}
        assert all(control.values()), f"control: a stream never arrived without its filter: {control}"
        # Restore the NAT table through the dataplane: it believes world A's table is loaded (nft
        # tables are write-only state), so it goes through B and back, one reload each.
        res = dp.ensure(host_network(world_b, "h1"))
        assert res.ok, res.failed
        res = dp.ensure(host_network(world_a, "h1"))
        assert res.ok and "NftTable" in {type(r).__name__ for r in res.plan.add}, res.failed
        applier.setup(firewall(False))
        base = dict(control)

        # The window: streams at the boundary while both tables reload again and again.
        senders = [send(inet, WINDOW, RATE, (GUESTS["a3"].ip, P_IN), (GUESTS["a6"].ip, P_IN),
                        (PUBLIC_A1, P_BAD), (PUBLIC_A1, P_OK)),
                   send(a6, WINDOW, RATE, (INET_SERVER, P_LEAK)),
                   send(a3, WINDOW, RATE, (INET_SERVER, P_OUT))]
        time.sleep(1.0)
        ok_before = counts(s_a1, P_OK)
        assert ok_before > 0 and counts(s_inet, P_OUT) > 0, "control: allowed streams do not pass"
        nat_reloads = fw_reloads = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < RELOADS_FOR:
            world = world_b if nat_reloads % 2 == 0 else world_a
            res = dp.ensure(host_network(world, "h1"))
            assert res.ok, res.failed
            assert "NftTable" in {type(r).__name__ for r in res.plan.add}, res.plan.summary()
            nat_reloads += 1
            applier.setup(firewall(fw_reloads % 2 == 0))
            fw_reloads += 1
        assert dp.ensure(host_network(world_a, "h1")).ok
        reload_secs = time.monotonic() - t0
        sent = {}
        for p in senders:
            sent.update(sent_by(p, WINDOW + 30))
        senders = []
        time.sleep(0.5)
        got = {"a3": counts(s_a3, P_IN) - base["a3"], "a6": counts(s_a6, P_IN) - base["a6"],
               "a1 bad": counts(s_a1, P_BAD) - base["a1 bad"], "leak": counts(s_inet, P_LEAK) - base["leak"],
               "a1 ok": counts(s_a1, P_OK), "nat out": counts(s_inet, P_OUT)}
        print(f"{nat_reloads} NAT and {fw_reloads} firewall reloads in {reload_secs:.1f} s; "
              f"sent {sent}; received {got}")
        assert nat_reloads >= MIN_RELOADS and fw_reloads >= MIN_RELOADS, (nat_reloads, fw_reloads)
        forbidden = {"a3": f"{GUESTS['a3'].ip}:{P_IN}", "a6": f"{GUESTS['a6'].ip}:{P_IN}",
                     "a1 bad": f"{PUBLIC_A1}:{P_BAD}", "leak": f"{INET_SERVER}:{P_LEAK}"}
        for key, target in forbidden.items():
            assert sent[target] >= RATE * WINDOW * 0.8, f"{key}: only {sent[target]} sent"
            assert got[key] == 0, f"{key}: {got[key]} of {sent[target]} forbidden datagrams crossed"
        # The allowed streams kept flowing through every reload.
        for key, target in (("a1 ok", f"{PUBLIC_A1}:{P_OK}"), ("nat out", f"{INET_SERVER}:{P_OUT}")):
            assert got[key] >= 0.95 * sent[target], f"{key}: {got[key]} of {sent[target]} arrived"
    finally:
        for p in senders:
            end_process(p)
        for s in servers:
            s.stop()
        try:
            applier.clear()
        finally:
            if isinstance(backend, LibNft):
                backend.close()
        run("ip", "-n", h1, "route", "del", "10.0.0.0/16", check=False)
        run("ip", "-n", inet, "route", "del", "10.0.0.0/16", check=False)
