"""The agent's NetworkService driving the real VPC dataplane (agent.network.Dataplane) in a
private mini-lab: a fabric namespace, a host namespace with an uplink into it, and a "guest"
namespace whose veth peer stands in for the instance's tap (named as libvirt would name it).
Checks the kernel with `ip -j`, real packets (guest -> its subnet router), re-application from
the persisted spec after a restart (with drift repaired), and that an empty spec removes
everything, router namespaces and DHCP servers included. A second test puts two guests in one VPC
behind a security group (extension security-groups): denied pings stay denied for whole windows,
a rule added by a new spec opens them within a second, `nft flush ruleset` in the host namespace
is undone within seconds, and a guest gets its fixed address from the VPC router's dnsmasq.
Every namespace is kan-<random>-...; all are removed at the end, and every dnsmasq the service
started is gone; nothing touches the root namespace (Dataplane(netns=...) works through netlink
sockets opened in the host namespace, the firewall through `nsenter --net=/run/netns/<host> nft`).
The state dir is a 0755 directory under /tmp: dnsmasq (user dnsmasq) must traverse it.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager

import pytest

from agent.libvirt.names import tap_name
from agent.network.host import resolve_underlay
from agent.network.service import NetworkService
from agent.contract.v1 import NetworkSpec
from agent.settings import AgentSettings

pytestmark = [pytest.mark.lab, pytest.mark.slow]

I1 = "i-0000000000000a001"
I2 = "i-0000000000000a002"
SG = "sg-0000000000000a001"
GUEST2_MAC = "52:54:00:0a:00:03"
GUEST2_IP = "10.0.1.11"
VPC = "vpc-0000000000000a001"
SUB = "subnet-0000000000000a001"
VNI = 0xA01
UPLINK_IP = "172.31.0.11"
GUEST_MAC = "52:54:00:0a:00:01"
GUEST_IP = "10.0.1.10"
ROUTER_IP = "10.0.1.1"


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True, timeout=30)


def links(ns: str) -> dict[str, dict]:
    return {l["ifname"]: l for l in json.loads(run("ip", "-n", ns, "-j", "link").stdout or "[]")}


def netns_list() -> list[str]:
    return [line.split(" ")[0] for line in run("ip", "netns", "list").stdout.splitlines() if line]


def wait_for(fn, timeout: float = 10.0):
    end = time.monotonic() + timeout
    while True:
        v = fn()
        if v or time.monotonic() > end:
            return v
        time.sleep(0.05)


def rule(n: int, direction: str = "ingress", **kw) -> dict:
    return {"rule_id": f"sgr-{n:017x}", "direction": direction, **kw}


#: EC2's default egress rule plus ssh from anywhere; `icmp_from_group` adds ping from members.
def group(icmp_from_group: bool = False) -> dict:
    rules = [rule(1, protocol="tcp", from_port=22, to_port=22, cidr="0.0.0.0/0"),
             rule(2, "egress", protocol="all", cidr="0.0.0.0/0")]
    if icmp_from_group:
        rules.append(rule(3, protocol="icmp", peer_group=SG))
    return {"group_id": SG, "zone": VNI, "rules": rules, "members": [GUEST_IP, GUEST2_IP]}


def spec(generation: int, with_vpc: bool = True, second_guest: bool = False,
         icmp_from_group: bool = False) -> NetworkSpec:
    ports = [{"port_id": I1, "mac": GUEST_MAC, "ip": GUEST_IP, "subnet_id": SUB,
              "security_group_ids": [SG]}]
    if second_guest:
        ports.append({"port_id": I2, "mac": GUEST2_MAC, "ip": GUEST2_IP, "subnet_id": SUB,
                      "security_group_ids": [SG]})
    vpcs = [{
        "vpc_id": VPC, "vni": VNI, "cidr": "10.0.0.0/16",
        "subnets": [{"subnet_id": SUB, "cidr": "10.0.1.0/24", "router_ip": ROUTER_IP}],
        "ports": ports,
        "remote_ports": [{"mac": "52:54:00:0a:00:02", "ip": "10.0.1.20",
                          "host_underlay_ip": "172.31.0.12"}],
    }] if with_vpc else []
    return NetworkSpec.model_validate({"generation": generation, "vpcs": vpcs,
                                       "security_groups": [group(icmp_from_group)] if with_vpc
                                       else []})


@contextmanager
def make_minilab(guests: list[tuple[str, str, str]]):
    """fabric + host namespaces and one namespace per (instance id, MAC, IP) guest, whose eth0's
    veth peer in the host is named tap_name(instance id, 0)."""
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nft") is None:
        pytest.skip("needs root, iproute2 and nftables")
    prefix = f"kan-{secrets.token_hex(3)}"
    fab, host = f"{prefix}-fab", f"{prefix}-h"
    names = [f"{prefix}-g{i + 1}" for i in range(len(guests))]
    try:
        for ns in (fab, host, *names):
            run("ip", "netns", "add", ns)
        run("ip", "-n", fab, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", fab, "link", "set", "br0", "up")
        run("ip", "-n", fab, "link", "add", "p-h", "type", "veth", "peer", "name", "uplink0",
            "netns", host)
        run("ip", "-n", fab, "link", "set", "p-h", "master", "br0", "up")
        run("ip", "-n", host, "addr", "add", f"{UPLINK_IP}/24", "dev", "uplink0")
        run("ip", "-n", host, "link", "set", "uplink0", "up")
        run("ip", "-n", host, "link", "set", "lo", "up")
        # The underlay device is found through the default route (AgentSettings default).
        run("ip", "-n", host, "route", "add", "default", "via", "172.31.0.1")
        taps = []
        for ns, (iid, mac, ip) in zip(names, guests):
            tap = tap_name(iid, 0)
            run("ip", "-n", host, "link", "add", tap, "type", "veth", "peer", "name", "eth0",
                "netns", ns)
            run("ip", "-n", host, "link", "set", tap, "up")
            run("ip", "-n", ns, "link", "set", "eth0", "address", mac, "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            taps.append(tap)
        yield {"prefix": prefix, "host": host, "guests": names, "taps": taps,
               "guest": names[0], "tap": taps[0]}
    finally:
        for ns in netns_list():
            if ns.startswith(prefix + "-"):
                run("ip", "netns", "del", ns, check=False)
        assert not [ns for ns in netns_list() if ns.startswith(prefix + "-")]


@pytest.fixture
def minilab():
    with make_minilab([(I1, GUEST_MAC, GUEST_IP)]) as lab:
        yield lab


@pytest.fixture
def minilab2():
    with make_minilab([(I1, GUEST_MAC, GUEST_IP), (I2, GUEST2_MAC, GUEST2_IP)]) as lab:
        yield lab


@pytest.fixture
def state_dir():
    """A state dir dnsmasq's user can traverse (pytest's tmp_path is under a 0700 directory);
    at the end every dnsmasq a test recorded in `pids` is gone (killed by pid if it is not)."""
    d = tempfile.mkdtemp(prefix="kumo-anr-", dir="/tmp")
    os.chmod(d, 0o755)
    pids: set[int] = set()
    try:
        yield d, pids
    finally:
        leftover = [pid for pid in pids if alive(pid)]
        for pid in leftover:
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(d, ignore_errors=True)
        assert not leftover, f"dnsmasq processes left running: {leftover}"


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return False


def service_for(tmp_path, host: str) -> NetworkService:
    """The production wiring: settings naming the host namespace (KUMO_AGENT_NETNS)."""
    from agent.app import build_network_service
    settings = AgentSettings(host_id="h1", state_dir=tmp_path, netns=host, driver="libvirt",
                             network_resync_interval=0.5)
    svc = build_network_service(settings)
    assert svc is not None
    return svc


def ping(guest: str, ip: str) -> bool:
    return run("ip", "netns", "exec", guest, "busybox", "ping", "-c", "1", "-W", "1", ip,
               check=False).returncode == 0


def test_network_service_on_the_real_dataplane(state_dir, minilab):
    tmp_path, pids = state_dir
    host, guest, tap = minilab["host"], minilab["guest"], minilab["tap"]
    kb, kx = f"kb-{VNI:06x}", f"kx-{VNI:06x}"
    rns = f"{host}-kvr-{VNI:06x}"
    assert resolve_underlay(host, None, None).dev == "uplink0"

    svc = service_for(tmp_path, host)
    svc.start()
    try:
        assert str(svc.underlay_ip()) == UPLINK_IP
        assert not svc.bridge_ready(kb)
        svc.accept(spec(1))
        assert wait_for(lambda: svc.observed().applied_generation == 1), svc.observed()
        assert svc.observed().failed == 0 and svc.observed().error is None
        ls = links(host)
        assert kb in ls and kx in ls and "UP" in ls[kb]["flags"]
        assert ls[tap].get("master") == kb
        assert rns in netns_list()
        assert svc.bridge_ready(kb)
        assert wait_for(lambda: ping(guest, ROUTER_IP), 5), "guest cannot reach its router"
        first = svc.dhcp.pids()
        pids.update(first.values())
        assert list(first) == [VNI]
    finally:
        pids.update(svc.dhcp.pids().values())
        svc.stop()

    # Restart: the dataplane drifted meanwhile (bridge deleted, tap orphaned); a new service
    # on the same state dir re-applies from the persisted spec, with no controller.
    run("ip", "-n", host, "link", "del", kb)
    assert links(host)[tap].get("master") is None
    svc = service_for(tmp_path, host)
    assert svc.spec() == spec(1)
    svc.start()
    try:
        assert wait_for(lambda: svc.observed().applied_generation == 1)
        ls = links(host)
        assert kb in ls and ls[tap].get("master") == kb
        assert wait_for(lambda: ping(guest, ROUTER_IP), 5)
        assert svc.dhcp.pids() == first  # the running dnsmasq was adopted, not restarted

        # An empty spec removes everything Kumo owns here; the guest's tap stays (libvirt's).
        svc.accept(spec(2, with_vpc=False))
        assert wait_for(lambda: svc.observed().applied_generation == 2), svc.observed()
        ls = links(host)
        assert not [n for n in ls if n.startswith(("kb-", "kx-", "kq-", "kt-", "kg-"))]
        assert tap in ls and ls[tap].get("master") is None
        assert rns not in netns_list()
        assert svc.dhcp.pids() == {} and not [p for p in pids if alive(p)]
    finally:
        pids.update(svc.dhcp.pids().values())
        svc.stop()


def nft_tables(host: str) -> set[tuple[str, str]]:
    out = run("ip", "netns", "exec", host, "nft", "-j", "list", "tables").stdout
    return {(t["table"]["family"], t["table"]["name"])
            for t in json.loads(out or '{"nftables": []}')["nftables"] if "table" in t}


def ping_window(guest: str, ip: str, seconds: int) -> bool:
    """True if any echo reply came back during `seconds` seconds of one ping a second."""
    return run("ip", "netns", "exec", guest, "busybox", "ping", "-w", str(seconds), ip,
               check=False).returncode == 0


def test_security_groups_and_dhcp_on_the_real_dataplane(state_dir, minilab2):
    tmp_path, pids = state_dir
    host = minilab2["host"]
    g1, g2 = minilab2["guests"]
    rns = f"{host}-kvr-{VNI:06x}"
    svc = service_for(tmp_path, host)
    svc.start()
    try:
        svc.accept(spec(1, second_guest=True))
        assert wait_for(lambda: svc.observed().applied_generation == 1), svc.observed()
        pids.update(svc.dhcp.pids().values())
        assert svc.observed().error is None
        assert {("inet", "kumo"), ("bridge", "kumo")} <= nft_tables(host)
        # The network works (egress is open, replies are tracked): guests reach their router.
        assert wait_for(lambda: ping(g1, ROUTER_IP) and ping(g2, ROUTER_IP), 5)
        # Only tcp/22 may come in: no ping between the guests, for whole 3 s windows.
        assert not ping_window(g1, GUEST2_IP, 3)
        assert not ping_window(g2, GUEST_IP, 3)

        # Someone flushes the host's ruleset: the tables come back within seconds, still closed.
        run("ip", "netns", "exec", host, "nft", "flush", "ruleset")
        t0 = time.monotonic()
        assert wait_for(lambda: {("inet", "kumo"), ("bridge", "kumo")} <= nft_tables(host), 3)
        restored = time.monotonic() - t0
        assert restored < 3, restored
        assert not ping_window(g1, GUEST2_IP, 3)

        # A new spec allows icmp from the group itself: ping works within a second. A ping
        # every 0.1 s runs meanwhile; the first reply's sequence number says when it opened.
        pinger = subprocess.Popen(["ip", "netns", "exec", g1, "busybox", "ping", "-i", "0.1",
                                   "-w", "3", GUEST2_IP], stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(0.3)  # a few requests dropped first
            svc.accept(spec(2, second_guest=True, icmp_from_group=True))
            out, _ = pinger.communicate(timeout=10)
        finally:
            if pinger.poll() is None:
                pinger.kill()
                pinger.wait()
        seqs = [int(w[4:]) for line in out.splitlines() for w in line.split()
                if w.startswith("seq=")]
        assert seqs, out
        opened = seqs[0] * 0.1 - 0.3  # first reply's request time, relative to accept()
        assert opened < 1.0, f"ping opened {opened:.2f} s after the PUT: {out}"
        assert min(seqs) >= 2, out  # and not before
        print(f"firewall restored {restored:.2f} s after the flush, ping opened {opened:.2f} s "
              "after the PUT")
        assert ping(g1, GUEST2_IP) and ping(g2, GUEST_IP)
        assert wait_for(lambda: svc.observed().applied_generation == 2)

        # DHCP: the guest gets its fixed address from the VPC router's dnsmasq.
        out = run("ip", "netns", "exec", g1, "busybox", "udhcpc", "-i", "eth0", "-n", "-q",
                  "-t", "5", check=False)
        text = out.stdout + out.stderr
        assert f"lease of {GUEST_IP} obtained" in text, text

        # The end: an empty spec stops the DHCP server and removes the router namespace.
        svc.accept(spec(3, with_vpc=False))
        assert wait_for(lambda: svc.observed().applied_generation == 3), svc.observed()
        assert svc.dhcp.pids() == {} and rns not in netns_list()
        assert not [p for p in pids if alive(p)]
    finally:
        pids.update(svc.dhcp.pids().values())
        svc.stop()
