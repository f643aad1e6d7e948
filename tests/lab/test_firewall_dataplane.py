"""The firewall dataplane with real packets, no guests: namespaces + bridge + veth (agent/firewall/netlab).

Every negative check must fail for its whole probe window (repeated attempts, all must fail). The
tables are loaded only in the test bed's host namespace; the root namespace is never touched.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.firewall.apply import FirewallApplier, Nft, bridge_netfilter_enabled
from agent.firewall.libnft import LibNft, available as libnft_available
from agent.firewall.model import HostFirewall, PortFirewall, SecurityGroup
from agent.firewall.netlab import FirewallBed, run
from agent.firewall.samples import G1, G2, rule

pytestmark = [pytest.mark.lab, pytest.mark.slow]

PY = sys.executable
WINDOW = 3.0  # seconds a negative check keeps trying

# Guest-side helper, run with `ip netns exec NS python -c PROBE <cmd> ...` (our own code, no user input).
PROBE = r'''
import socket, struct, sys, threading, time
cmd = sys.argv[1]
if cmd == "serve":  # serve OUTFILE tcp_ports udp_ports seconds: TCP echo + UDP counters
    out, tports, uports, secs = sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
    counts = {}
    def tcp(port):
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port)); s.listen(64)
        while True:
            c, _ = s.accept()
            def echo(c=c):
                while True:
                    d = c.recv(4096)
                    if not d: break
                    c.sendall(d)
            threading.Thread(target=echo, daemon=True).start()
    def udp(port):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port)); counts[port] = 0
        while True:
            s.recv(2048); counts[port] += 1
    for p in filter(None, tports.split(",")): threading.Thread(target=tcp, args=(int(p),), daemon=True).start()
    for p in filter(None, uports.split(",")): threading.Thread(target=udp, args=(int(p),), daemon=True).start()
    end = time.time() + secs
    while time.time() < end:
        open(out + ".tmp", "w").write(repr(counts)); __import__("os").replace(out + ".tmp", out)
        time.sleep(0.1)
elif cmd == "tcp":  # tcp HOST PORT WINDOW -> number of successful connects (one every 0.2 s)
    host, port, window = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    ok = tries = 0; end = time.time() + window
    while True:
        tries += 1
        try:
            socket.create_connection((host, port), timeout=0.3).close(); ok += 1
        except OSError:
            pass
        if time.time() >= end: break
        time.sleep(0.2)
    print(ok, tries)
elif cmd == "udp":  # udp HOST PORT COUNT SECONDS [SRC]: send bounded datagrams
    host, port, count, secs = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if len(sys.argv) > 6: s.bind((sys.argv[6], 0))
    end = time.time() + secs; n = 0
    while n < count and time.time() < end:
        try: s.sendto(b"x" * 64, (host, port)); n += 1
        except OSError: time.sleep(0.001)
        if n % 50 == 0: time.sleep(0.001)
    print(n)
elif cmd == "arpspoof":  # arpspoof IFACE SRC_MAC CLAIMED_IP DST_MAC DST_IP: unsolicited ARP replies
    iface, smac, cip, dmac, dip = sys.argv[2:7]
    mac = lambda m: bytes.fromhex(m.replace(":", ""))
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind((iface, 0))
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 2, mac(smac), socket.inet_aton(cip), mac(dmac),
                      socket.inet_aton(dip))
    for _ in range(5):
        s.send(mac(dmac) + mac(smac) + b"\x08\x06" + arp); time.sleep(0.05)
'''


def ns_py(ns: str, *args: str, timeout: float = 30) -> str:
    return run("ip", "netns", "exec", ns, PY, "-c", PROBE, *args, timeout=timeout).stdout.strip()


def tcp_ok(ns: str, host, port: int, window: float = WINDOW) -> tuple[int, int]:
    ok, tries = ns_py(ns, "tcp", str(host), str(port), str(window)).split()
    return int(ok), int(tries)


def ping_ok(ns: str, host, count: int = 3) -> int:
    out = run("ip", "netns", "exec", ns, "busybox", "ping", "-c", str(count), "-W", "1", str(host),
              check=False).stdout
    for line in out.splitlines():
        if "packets received" in line:
            return int(line.split(",")[1].split()[0])
    return 0


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "nft", "busybox"):
        if not shutil.which(tool):
            return f"needs {tool}"
    return None


class Server:
    """The serve probe in a guest namespace; ``counts()`` reads its UDP counters."""

    def __init__(self, ns: str, out: Path, tcp: str, udp: str, secs: float = 120):
        self.out = out
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, PY, "-c", PROBE, "serve", str(out), tcp, udp,
                                      str(secs)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while not out.exists() and time.time() < deadline:
            time.sleep(0.05)

    def counts(self) -> dict:
        return eval(self.out.read_text()) if self.out.exists() else {}  # our own repr() of a dict of ints

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def bed():
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with FirewallBed() as tb:
        tb.add_guest(1, "10.0.0.11")
        tb.add_guest(2, "10.0.0.12")
        tb.add_guest(3, "10.0.0.13")
        yield tb
    out = run("ip", "netns", "list").stdout
    assert tb.prefix not in out, "test bed namespaces left behind"


def firewall(tb: FirewallBed, g1_rules=None, g3_groups=(G2,)) -> HostFirewall:
    """guests 1 and 2 in G1 (SSH from anywhere, UDP 5000 from anywhere, ICMP from G1, all out);
    guest 3 in G2 (all out, nothing in)."""
    if g1_rules is None:
        g1_rules = (rule(1, "ingress", "tcp", "0.0.0.0/0", from_port=22, to_port=22),
                    rule(2, "ingress", "udp", "0.0.0.0/0", from_port=5000, to_port=5000),
                    rule(3, "ingress", "icmp", G1),
                    rule(4, "egress", "all", "0.0.0.0/0"))
    g1, g2, g3 = tb.guests
    ports = (PortFirewall(g1.tap, tb.bridge, g1.mac, g1.ipv4, 7, (G1,)),
             PortFirewall(g2.tap, tb.bridge, g2.mac, g2.ipv4, 7, (G1,)),
             PortFirewall(g3.tap, tb.bridge, g3.mac, g3.ipv4, 7, tuple(g3_groups)))
    return HostFirewall(ports, {
        G1: SecurityGroup(G1, 7, tuple(g1_rules), frozenset({g1.ipv4, g2.ipv4})),
        G2: SecurityGroup(G2, 7, (rule(10, "egress", "all", "0.0.0.0/0"),), frozenset({g3.ipv4}))})


@pytest.fixture
def applier(bed):
    nft = LibNft(bed.host) if libnft_available() else Nft(bed.host)
    ap = FirewallApplier(nft)
    yield ap
    try:
        ap.clear()
    finally:
        if isinstance(nft, LibNft):
            nft.close()


def test_root_namespace_untouched_and_tables_only_in_host_ns(bed, applier):
    assert bridge_netfilter_enabled(bed.host)
    applier.setup(firewall(bed))
    assert "kumo" in run("ip", "netns", "exec", bed.host, "nft", "list", "tables").stdout
    assert "kumo" not in run("nft", "list", "tables").stdout
    assert applier.verify().ok


def test_allowed_port_connects_denied_port_gets_nothing(bed, applier, tmp_path):
    g1, g2, g3 = bed.guests
    srv = Server(g2.ns, tmp_path / "srv", "22,2222", "")
    try:
        assert tcp_ok(g1.ns, g2.ipv4, 2222, 1)[0] > 0, "control: without firewall the port is open"
        applier.setup(firewall(bed))
        ok, tries = tcp_ok(g1.ns, g2.ipv4, 22, 1)
        assert ok == tries
        ok, tries = tcp_ok(g1.ns, g2.ipv4, 2222, WINDOW)
        assert tries >= 5 and ok == 0, f"denied port answered {ok}/{tries}"
        # conntrack zone 7 (the VPC's) is used for the allowed flow
        ct = run("ip", "netns", "exec", bed.host, "cat", "/proc/net/nf_conntrack").stdout
        assert any("dport=22" in line and "zone=7" in line for line in ct.splitlines()), ct
    finally:
        srv.stop()


def test_icmp_group_peer_members_only(bed, applier):
    g1, g2, g3 = bed.guests
    applier.setup(firewall(bed))
    assert ping_ok(g1.ns, g2.ipv4, 2) == 2
    assert ping_ok(g3.ns, g2.ipv4, 3) == 0
    # add guest 3 to G1's member set (incremental): now it may ping guest 2
    fw = applier.current
    res = applier.update_group(dataclasses.replace(fw.groups[G1], members=fw.groups[G1].members | {g3.ipv4}))
    assert res.mode == "incremental"
    assert ping_ok(g3.ns, g2.ipv4, 2) == 2
    res = applier.update_group(fw.groups[G1])
    assert res.mode == "incremental"
    assert ping_ok(g3.ns, g2.ipv4, 3) == 0


def test_spoofed_ip_and_mac_get_nothing_delivered(bed, applier, tmp_path):
    g1, g2, g3 = bed.guests
    applier.setup(firewall(bed))
    srv = Server(g2.ns, tmp_path / "srv", "", "5000")
    try:
        ns_py(g1.ns, "udp", str(g2.ipv4), "5000", "50", "2")
        time.sleep(0.3)
        assert srv.counts()[5000] == 50, "control: legitimate datagrams arrive"
        # spoofed source IP (a second address on the guest's NIC)
        run("ip", "-n", g1.ns, "addr", "add", "10.0.0.99/16", "dev", "eth0")
        ns_py(g1.ns, "udp", str(g2.ipv4), "5000", "200", str(WINDOW), "10.0.0.99")
        # spoofed MAC, with a static neighbour so no ARP is needed
        run("ip", "-n", g1.ns, "neigh", "replace", str(g2.ipv4), "lladdr", g2.mac, "dev", "eth0")
        run("ip", "-n", g1.ns, "link", "set", "eth0", "address", "02:66:66:66:66:66")
        ns_py(g1.ns, "udp", str(g2.ipv4), "5000", "200", str(WINDOW))
        time.sleep(0.3)
        assert srv.counts()[5000] == 50, "spoofed datagrams were delivered"
    finally:
        srv.stop()


def test_arp_for_a_neighbours_ip_poisons_nothing(bed, applier):
    g1, g2, g3 = bed.guests

    def poisoned() -> bool:
        run("ip", "-n", g3.ns, "neigh", "replace", str(g2.ipv4), "lladdr", g2.mac, "dev", "eth0", "nud", "stale")
        time.sleep(1.2)  # past the neighbour lock time, so a reply may override
        ns_py(g1.ns, "arpspoof", "eth0", g1.mac, str(g2.ipv4), g3.mac, str(g3.ipv4))
        time.sleep(0.2)
        return g1.mac in run("ip", "-n", g3.ns, "neigh", "show", str(g2.ipv4)).stdout

    assert poisoned(), "control: without the firewall the spoofed ARP reply poisons the cache"
    applier.setup(firewall(bed))
    assert not poisoned()


def test_established_connection_survives_rule_removal(bed, applier, tmp_path):
    g1, g2, g3 = bed.guests
    applier.setup(firewall(bed))
    srv = Server(g2.ns, tmp_path / "srv", "22", "")
    client = subprocess.Popen(
        ["ip", "netns", "exec", g1.ns, PY, "-c",
         "import socket,sys,time\n"
         f"s=socket.create_connection(('{g2.ipv4}',22),timeout=2)\n"
         "for i in range(30):\n"
         "    s.sendall(b'ping'); assert s.recv(16)==b'ping'\n"
         "    print(i, flush=True); time.sleep(0.1)\n"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline().strip() == "0"  # connected and echoed before the change
        res = applier.change_rules(G1, remove=("sgr-%017x" % 1,))
        assert res.mode == "incremental"
        out, err = client.communicate(timeout=20)
        assert client.returncode == 0, err
        assert out.split()[-1] == "29"
        ok, tries = tcp_ok(g1.ns, g2.ipv4, 22, WINDOW)
        assert tries >= 5 and ok == 0, "new connections must be refused after the rule is gone"
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
        srv.stop()


def test_flush_by_hand_is_detected_and_restored(bed, applier, tmp_path):
    g1, g2, g3 = bed.guests
    applier.setup(firewall(bed))
    srv = Server(g2.ns, tmp_path / "srv", "2222", "")
    try:
        assert tcp_ok(g1.ns, g2.ipv4, 2222, 1)[0] == 0
        run("ip", "netns", "exec", bed.host, "nft", "flush", "table", "inet", "kumo")
        assert not applier.verify().ok
        assert tcp_ok(g1.ns, g2.ipv4, 2222, 1)[0] > 0, "flushed: the port is open (why ensure() matters)"
        start = time.perf_counter()
        assert not applier.ensure().ok
        assert time.perf_counter() - start < 5  # "restored within seconds"
        assert applier.verify().ok
        ok, tries = tcp_ok(g1.ns, g2.ipv4, 2222, WINDOW)
        assert tries >= 5 and ok == 0
        run("ip", "netns", "exec", bed.host, "nft", "delete", "table", "bridge", "kumo")
        assert not applier.verify().ok
        applier.ensure()
        assert applier.verify().ok
    finally:
        srv.stop()


def test_no_blink_while_rules_change(bed, applier, tmp_path):
    """A flood at a denied UDP port while the ruleset goes A -> {} -> A (full atomic replaces, up to
    200 cycles in 4 s, every other one by a fresh applier as after an agent restart, which starts
    with setup() and never clear()): 0 datagrams delivered; an established TCP connection keeps
    echoing. (Deleting and re-creating the tables instead let 1-3 datagrams through in 5 of 5 runs
    of 200 cycles, 3 of 5 runs of 80, 0 of 5 runs of 15: hence the many cycles.)"""
    g1, g2, g3 = bed.guests
    fw_a = firewall(bed)
    fw_empty = firewall(bed, g1_rules=())
    applier.setup(fw_a)
    srv = Server(g2.ns, tmp_path / "srv", "22", "9999")
    client = subprocess.Popen(
        ["ip", "netns", "exec", g1.ns, PY, "-c",
         "import socket,time\n"
         f"s=socket.create_connection(('{g2.ipv4}',22),timeout=2)\n"
         "n=0\nend=time.time()+6\n"
         "while time.time()<end:\n"
         "    s.sendall(b'x'*100); got=b''\n"
         "    while len(got)<100: got+=s.recv(100)\n"
         "    n+=1; time.sleep(0.005)\n"
         "print(n)\n"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    flood_box: dict = {}
    flood = threading.Thread(target=lambda: flood_box.setdefault(
        "sent", ns_py(g3.ns, "udp", str(g2.ipv4), "9999", "200000", "5")))
    try:
        time.sleep(0.5)
        flood.start()
        cycles = 0
        end = time.time() + 4
        while time.time() < end and cycles < 200:
            applier.setup(fw_empty)
            (applier if cycles % 2 else FirewallApplier(applier.nft)).setup(fw_a)  # restart: fresh state
            cycles += 1
        flood.join(timeout=30)
        out, err = client.communicate(timeout=30)
        time.sleep(0.3)
        assert cycles >= 3
        assert int(flood_box["sent"]) > 1000, "the flood actually ran"
        assert srv.counts().get(9999) == 0, f"denied port received packets during {cycles} rule change cycles"
        assert client.returncode == 0, f"established connection broke: {err}"
        assert int(out.strip()) > 50
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
        srv.stop()


def test_unknown_tap_with_our_prefix_gets_nothing(bed, applier, tmp_path):
    """Guest 3's tap is not in the firewall. Without tap_prefix it is unfiltered (the control);
    with tap_prefix="kt" nothing passes from or to it, even to a port open to 0.0.0.0/0."""
    g1, g2, g3 = bed.guests
    full = firewall(bed)
    ports = tuple(p for p in full.ports if p.tap != g3.tap)
    srv2 = Server(g2.ns, tmp_path / "srv2", "22", "")
    srv3 = Server(g3.ns, tmp_path / "srv3", "22", "")
    try:
        applier.setup(HostFirewall(ports, full.groups))
        assert tcp_ok(g3.ns, g2.ipv4, 22, 1)[0] > 0, "control: an unlisted tap is not filtered"
        applier.setup(HostFirewall(ports, full.groups, tap_prefix="kt"))
        assert tcp_ok(g1.ns, g2.ipv4, 22, 1)[0] > 0
        ok, tries = tcp_ok(g3.ns, g2.ipv4, 22, WINDOW)
        assert tries >= 5 and ok == 0
        ok, tries = tcp_ok(g1.ns, g3.ipv4, 22, WINDOW)
        assert tries >= 5 and ok == 0
        # listing the port again lets it through its groups' rules (a full replace: no other port
        # uses G2 yet, so its chains are new)
        res = applier.update(HostFirewall(full.ports, full.groups, tap_prefix="kt"))
        assert res.mode == "full"
        assert tcp_ok(g1.ns, g3.ipv4, 22, 1)[0] == 0  # G2: nothing inbound
        assert ping_ok(g3.ns, g1.ipv4, 1) == 0  # not a member of G1
        assert tcp_ok(g3.ns, g2.ipv4, 22, 1)[0] > 0  # SSH from anywhere
    finally:
        srv2.stop()
        srv3.stop()


def test_subprocess_backend_and_clear_pairs(bed):
    ap = FirewallApplier(Nft(bed.host))
    ap.setup(firewall(bed))
    assert ap.verify().ok
    ap.clear()
    ap.clear()  # clearing twice is fine
    assert "kumo" not in run("ip", "netns", "exec", bed.host, "nft", "list", "tables").stdout
    assert ap.verify().ok
