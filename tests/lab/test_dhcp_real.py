"""agent.network.dhcp with real dnsmasq and a real DHCP client (busybox udhcpc), without VMs.

A switch namespace holds a bridge; two "router" namespaces stand for the same VPC's distributed
router on two hosts (kr-000abc with the same MAC and the same router addresses 10.9.0.1/24 and
10.9.1.1/24, each running its own DhcpServers); guest namespaces hold veth peers with fixed MACs.
Every namespace is named kdh-<random>-..., every process is ours and ended by pid, and the end of
the module asserts that no namespace and no dnsmasq is left. Nothing touches the root namespace.
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from ipaddress import IPv4Address
from typing import Iterator

import pytest

from agent.network import names
from agent.network.dhcp import DhcpError, DhcpPort, DhcpServers, DhcpSubnet, parse_leases

pytestmark = [pytest.mark.lab, pytest.mark.slow]

VNI = 0xABC
KR = names.link_name("r", VNI)  # kr-000abc
ROUTER_MAC = names.router_mac("vpc-0123456789abcdef0")
SUBNETS = [DhcpSubnet("10.9.0.0/24", "10.9.0.1"), DhcpSubnet("10.9.1.0/24", "10.9.1.1")]
GUESTS = {  # name -> MAC
    "g1": "02:00:00:00:01:01", "g2": "02:00:00:00:01:02", "g3": "02:00:00:00:01:03",
    "g4": "02:00:00:00:01:04",
}
UDHCPC_SCRIPT = """#!/bin/sh
echo "KDH $1 ip=$ip router=$router subnet=$subnet serverid=$serverid hostname=$hostname"
"""


def run(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True, timeout=timeout)


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("/usr/sbin/dnsmasq", "/usr/bin/busybox"):
        if not os.access(tool, os.X_OK):
            return f"{tool} missing (dnsmasq-base, busybox-static)"
    if shutil.which("ip") is None:
        return "ip missing"
    return None


class Env:
    def __init__(self) -> None:
        self.prefix = "kdh-" + secrets.token_hex(3)
        self.made: list[str] = []
        self.tmp = tempfile.mkdtemp(prefix="kdh-")
        os.chmod(self.tmp, 0o755)  # dnsmasq re-reads its hosts file as user dnsmasq
        self.script = os.path.join(self.tmp, "udhcpc.sh")
        with open(self.script, "w") as f:
            f.write(UDHCPC_SCRIPT)
        os.chmod(self.script, 0o755)
        self.servers: dict[str, DhcpServers] = {}
        self.pids_seen: set[int] = set()

    def ns(self, short: str) -> str:
        return f"{self.prefix}-{short}"

    def nsx(self, short: str, *argv: str, check: bool = True, timeout: float = 30):
        return run("ip", "netns", "exec", self.ns(short), *argv, check=check, timeout=timeout)

    def add_ns(self, short: str) -> None:
        run("ip", "netns", "add", self.ns(short))
        self.made.append(self.ns(short))
        run("ip", "-n", self.ns(short), "link", "set", "lo", "up")

    def plug(self, short: str, ifname: str, mac: str, port: str) -> None:
        """A veth from namespace `short` (ifname, mac) to the switch's bridge (port)."""
        sw = self.ns("sw")
        run("ip", "-n", sw, "link", "add", port, "type", "veth", "peer", "name", ifname,
            "netns", self.ns(short))
        run("ip", "-n", self.ns(short), "link", "set", ifname, "address", mac)
        run("ip", "-n", sw, "link", "set", port, "master", "br0")
        run("ip", "-n", sw, "link", "set", port, "up")
        run("ip", "-n", self.ns(short), "link", "set", ifname, "up")

    def build(self) -> None:
        self.add_ns("sw")
        run("ip", "-n", self.ns("sw"), "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.ns("sw"), "link", "set", "br0", "up")
        for r in ("r1", "r2"):
            self.add_ns(r)
            self.plug(r, KR, ROUTER_MAC, f"p{r}")
            # Two routers share one MAC, as on two hosts: no learning on their ports (flood).
            run("ip", "-n", self.ns("sw"), "link", "set", f"p{r}", "type", "bridge_slave",
                "learning", "off")
            for s in SUBNETS:
                run("ip", "-n", self.ns(r), "addr", "add", f"{s.router_ip}/{s.cidr.prefixlen}",
                    "dev", KR)
            state = os.path.join(self.tmp, r)
            self.servers[r] = DhcpServers(state, self.prefix, log_dhcp=True)
        for g, mac in GUESTS.items():
            self.add_ns(g)
            self.plug(g, "eth0", mac, f"p{g}")

    def ensure(self, r: str, ports: list[DhcpPort], subnets=SUBNETS) -> str:
        action = self.servers[r].ensure(VNI, self.ns(r), KR, subnets, ports)
        pid = self.servers[r].pid(VNI)
        assert pid is not None
        self.pids_seen.add(pid)
        return action

    def dhcp(self, g: str, tries: int = 3) -> tuple[int, list[str], float]:
        """Run udhcpc once in guest g: (returncode, KDH lines, seconds)."""
        t0 = time.monotonic()
        try:
            r = self.nsx(g, "busybox", "udhcpc", "-f", "-i", "eth0", "-n", "-q", "-t", str(tries),
                         "-T", "1", "-A", "1", "-s", self.script, check=False, timeout=20)
            rc, out = r.returncode, r.stdout
            self.last_stderr = r.stderr or ""
        except subprocess.TimeoutExpired as e:  # e.g. a NAK loop: the client never gives up
            rc, out = -1, (e.stdout or b"").decode(errors="replace")
            self.last_stderr = ""
        lines = [ln[4:] for ln in out.splitlines() if ln.startswith("KDH ")]
        return rc, lines, time.monotonic() - t0

    def log(self, r: str) -> str:
        with open(self.servers[r].paths(VNI).log) as f:
            return f.read()

    def teardown(self) -> None:
        for srv in self.servers.values():
            srv.stop_all()
        for ns in reversed(self.made):
            run("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)


def bound(lines: list[str]) -> dict[str, str]:
    got = [ln for ln in lines if ln.startswith("bound ")]
    assert len(got) == 1, lines
    return dict(kv.split("=", 1) for kv in got[0].split()[1:])


def pid_exists(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    e = Env()
    try:
        e.build()
        yield e
    finally:
        e.teardown()
    # Everything we made is gone: namespaces and processes.
    listed = run("ip", "netns", "list").stdout
    assert e.prefix not in listed
    assert e.pids_seen and not [p for p in e.pids_seen if pid_exists(p)]
    assert not os.path.exists(e.tmp)


P1 = DhcpPort("02:00:00:00:01:01", "10.9.0.11", "guest-one")
P2 = DhcpPort("02:00:00:00:01:02", "10.9.1.12")
P4 = DhcpPort("02:00:00:00:01:04", "10.9.0.14")


def test_known_guests_get_their_fixed_address_and_router(env: Env) -> None:
    assert env.ensure("r1", [P1, P2]) == "started"
    assert env.ensure("r2", [P4]) == "started"  # the "other host" serves only its own guest
    # The dataplane's permanent neighbour for a local port must survive the exchange.
    run("ip", "-n", env.ns("r1"), "neigh", "replace", "10.9.0.11", "lladdr", P1.mac, "nud",
        "permanent", "dev", KR)

    rc, lines, _ = env.dhcp("g1")
    assert rc == 0, lines
    lease = bound(lines)
    assert lease["ip"] == "10.9.0.11" and lease["router"] == "10.9.0.1"
    assert lease["subnet"] == "255.255.255.0" and lease["serverid"] == "10.9.0.1"
    assert lease["hostname"] == "guest-one"
    assert not [ln for ln in lines if ln.startswith("nak")], lines

    rc, lines, _ = env.dhcp("g2")  # second subnet on the same interface
    assert rc == 0, lines
    lease = bound(lines)
    assert (lease["ip"], lease["router"], lease["subnet"]) == ("10.9.1.12", "10.9.1.1", "255.255.255.0")

    rc, lines, _ = env.dhcp("g4")  # served by r2, ignored by r1
    assert rc == 0, lines
    assert bound(lines)["ip"] == "10.9.0.14"
    assert not [ln for ln in lines if ln.startswith("nak")], lines

    # Each server saw the other's guests (flooded broadcasts) and stayed silent: no NAK, no offer.
    log1, log2 = env.log("r1"), env.log("r2")
    assert "DHCPACK(kr-000abc) 10.9.0.11 02:00:00:00:01:01" in log1
    assert "DHCPACK(kr-000abc) 10.9.0.14 02:00:00:00:01:04" in log2
    assert "DHCPNAK" not in log1 and "DHCPNAK" not in log2
    assert "DHCPOFFER(kr-000abc) 10.9.0.11" not in log2
    assert "DHCPOFFER(kr-000abc) 10.9.0.14" not in log1
    assert "02:00:00:00:01:01" in log2  # it did see g1's packets
    neigh = run("ip", "-n", env.ns("r1"), "neigh", "show", "10.9.0.11", "dev", KR).stdout
    assert "PERMANENT" in neigh, neigh
    leases = parse_leases(open(env.servers["r1"].paths(VNI).leases).read())
    assert (P1.mac, IPv4Address("10.9.0.11")) in leases


def test_unknown_mac_gets_no_offer_for_the_whole_window(env: Env) -> None:
    rc, lines, seconds = env.dhcp("g3", tries=3)
    assert rc != 0
    assert not [ln for ln in lines if ln.startswith(("bound", "renew"))], lines
    # It kept asking for the whole window: every one of its discovers went unanswered.
    assert env.last_stderr.count("broadcasting discover") == 3, env.last_stderr
    assert "DHCPOFFER" not in "\n".join(
        ln for ln in (env.log("r1") + env.log("r2")).splitlines() if "02:00:00:00:01:03" in ln)


def test_port_address_change_is_a_reload(env: Env) -> None:
    pid = env.servers["r1"].pid(VNI)
    moved = DhcpPort(P1.mac, "10.9.0.21")
    assert env.ensure("r1", [moved, P2]) == "reloaded"
    assert env.servers["r1"].pid(VNI) == pid
    assert env.ensure("r1", [moved, P2]) == "unchanged"
    rc, lines, _ = env.dhcp("g1")
    assert rc == 0, lines
    assert bound(lines)["ip"] == "10.9.0.21"


def test_address_moving_to_another_mac_restarts_with_pruned_leases(env: Env) -> None:
    # 10.9.0.21 is leased to g1 now: dnsmasq would refuse it to g3 after a mere SIGHUP.
    pid = env.servers["r1"].pid(VNI)
    taker = DhcpPort(GUESTS["g3"], "10.9.0.21")
    assert env.ensure("r1", [taker, P2]) == "restarted"
    assert env.servers["r1"].pid(VNI) != pid and not pid_exists(pid)
    rc, lines, _ = env.dhcp("g3")
    assert rc == 0, lines
    assert bound(lines)["ip"] == "10.9.0.21"
    rc, lines, _ = env.dhcp("g1", tries=2)  # g1's port is gone from this host: silence
    assert rc != 0 and not [ln for ln in lines if ln.startswith("bound")]


def test_subnet_change_restarts(env: Env) -> None:
    pid = env.servers["r1"].pid(VNI)
    assert env.ensure("r1", [P2], subnets=SUBNETS[1:]) == "restarted"
    assert not pid_exists(pid)
    rc, lines, _ = env.dhcp("g2")
    assert rc == 0 and bound(lines)["ip"] == "10.9.1.12"


def test_a_new_agent_adopts_the_running_server(env: Env) -> None:
    first = env.servers["r1"]
    pid = first.pid(VNI)
    again = DhcpServers(first.dir, env.prefix, log_dhcp=True)
    assert again.owned() == [VNI] and again.pid(VNI) == pid
    assert again.ensure(VNI, env.ns("r1"), KR, SUBNETS[1:], [P2]) == "unchanged"
    assert again.ensure(VNI, env.ns("r1"), KR, SUBNETS[1:], [P2, DhcpPort(P1.mac, "10.9.1.31")]) == "reloaded"
    assert again.pid(VNI) == pid
    rc, lines, _ = env.dhcp("g2")
    assert rc == 0 and bound(lines)["ip"] == "10.9.1.12"
    # A pid file pointing at some other process is not trusted.
    assert again.stop(VNI) is True
    first.owned()  # the first instance reaps its former child
    assert not pid_exists(pid)
    assert again.owned() == [] and first.owned() == []
    with open(first.paths(VNI).pid, "w") as f:
        f.write(f"{os.getpid()}\n")
    assert again.owned() == [] and again.pid(VNI) is None
    assert again.ensure(VNI, env.ns("r1"), KR, SUBNETS, [P2]) == "started"
    env.servers["r1"] = again
    env.pids_seen.add(again.pid(VNI))


def test_missing_namespace_is_a_clear_start_failure(env: Env) -> None:
    srv = env.servers["r2"]
    with pytest.raises(DhcpError) as e:
        srv.ensure(0xABD, env.ns("nope"), "kr-000abd", SUBNETS, [P4])
    assert e.value.code == "DhcpStartFailed" and env.ns("nope") in str(e.value)
    assert srv.owned() == [VNI] and srv.pid(0xABD) is None
    srv.remove(0xABD)


def test_stop_and_remove(env: Env) -> None:
    srv = env.servers["r2"]
    pid = srv.pid(VNI)
    assert srv.owned() == [VNI]
    assert srv.stop(VNI) is True
    assert not pid_exists(pid)  # reaped: not even a zombie
    assert srv.owned() == [] and srv.stop(VNI) is False
    assert os.path.exists(srv.paths(VNI).conf)
    srv.remove(VNI)
    assert not [f for f in os.listdir(srv.dir) if f.startswith(f"{VNI:06x}")]
