"""The agent's NetworkService driving the real VPC dataplane (agent.network.Dataplane) in a
private mini-lab: a fabric namespace, a host namespace with an uplink into it, and a "guest"
namespace whose veth peer stands in for the instance's tap (named as libvirt would name it).
Checks the kernel with `ip -j`, real packets (guest -> its subnet router), re-application from
the persisted spec after a restart (with drift repaired), and that an empty spec removes
everything, router namespaces included. Every namespace is kan-<random>-...; all are removed at
the end; nothing touches the root namespace (Dataplane(netns=...) works through netlink sockets
opened in the host namespace).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time

import pytest

from agent.libvirt.names import tap_name
from agent.network.host import resolve_underlay
from agent.network.service import NetworkService
from agent.contract.v1 import NetworkSpec
from agent.settings import AgentSettings

pytestmark = [pytest.mark.lab, pytest.mark.slow]

I1 = "i-0000000000000a001"
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


def spec(generation: int, with_vpc: bool = True) -> NetworkSpec:
    vpcs = [{
        "vpc_id": VPC, "vni": VNI, "cidr": "10.0.0.0/16",
        "subnets": [{"subnet_id": SUB, "cidr": "10.0.1.0/24", "router_ip": ROUTER_IP}],
        "ports": [{"port_id": I1, "mac": GUEST_MAC, "ip": GUEST_IP, "subnet_id": SUB}],
        "remote_ports": [{"mac": "52:54:00:0a:00:02", "ip": "10.0.1.20",
                          "host_underlay_ip": "172.31.0.12"}],
    }] if with_vpc else []
    return NetworkSpec.model_validate({"generation": generation, "vpcs": vpcs})


@pytest.fixture
def minilab():
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nft") is None:
        pytest.skip("needs root, iproute2 and nftables")
    prefix = f"kan-{secrets.token_hex(3)}"
    fab, host, guest = f"{prefix}-fab", f"{prefix}-h", f"{prefix}-g"
    try:
        for ns in (fab, host, guest):
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
        tap = tap_name(I1, 0)
        run("ip", "-n", host, "link", "add", tap, "type", "veth", "peer", "name", "eth0",
            "netns", guest)
        run("ip", "-n", host, "link", "set", tap, "up")
        run("ip", "-n", guest, "link", "set", "eth0", "address", GUEST_MAC, "up")
        run("ip", "-n", guest, "link", "set", "lo", "up")
        run("ip", "-n", guest, "addr", "add", f"{GUEST_IP}/24", "dev", "eth0")
        yield {"prefix": prefix, "host": host, "guest": guest, "tap": tap}
    finally:
        for ns in netns_list():
            if ns.startswith(prefix + "-"):
                run("ip", "netns", "del", ns, check=False)
        assert not [ns for ns in netns_list() if ns.startswith(prefix + "-")]


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


def test_network_service_on_the_real_dataplane(tmp_path, minilab):
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
    finally:
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

        # An empty spec removes everything Kumo owns here; the guest's tap stays (libvirt's).
        svc.accept(spec(2, with_vpc=False))
        assert wait_for(lambda: svc.observed().applied_generation == 2), svc.observed()
        ls = links(host)
        assert not [n for n in ls if n.startswith(("kb-", "kx-", "kq-", "kt-", "kg-"))]
        assert tap in ls and ls[tap].get("master") is None
        assert rns not in netns_list()
    finally:
        svc.stop()
