"""A NAT gateway's last bytes (issue 13's per-GiB gap) on a real dataplane: bytes forwarded by
the gateway and never read by a heartbeat, then the gateway deleted (its VPC stays) or its
VPC's router namespace torn down, reach the agent's final counters (Dataplane.on_nat_final,
the hook the NetworkService persists in agent/network/nat_finals.py) with at least the payload:
read with nft after the load that stopped feeding the counter, or after sealing the namespace.
The mini-lab of test_vpc_dataplane (namespaces and busybox guests, no VMs)."""
from __future__ import annotations

import subprocess
import sys

from agent.network import HostNetwork
from tests.lab import test_vpc_dataplane as dpl
from tests.lab.test_vpc_dataplane import (INET_SERVER, NATGW, SEND, SINK, VPC_A, Env, _nat_counter,
                                          _ns, eventually, host_network, nsx, tcp)

env = dpl.env  # the mini-lab fixture (module scope: one lab for this module)

SINK_PORT = 7003


def _send(env: Env, name: str, size: int) -> None:
    got = nsx(_ns(env, name), sys.executable, "-c", SEND, INET_SERVER, str(SINK_PORT), str(size))
    assert got.stdout.strip() == str(size), got


def _without(hn: HostNetwork, drop_vpc: bool) -> HostNetwork:
    if drop_vpc:
        return hn.model_copy(update={"vpcs": [v for v in hn.vpcs if v.vpc_id != VPC_A]})
    return hn.model_copy(update={"vpcs": [v.model_copy(update={"nat_gateway": None})
                                          if v.vpc_id == VPC_A else v for v in hn.vpcs]})


def test_bytes_before_deletion_reach_the_final_counter(env: Env) -> None:
    sink = subprocess.Popen(["ip", "netns", "exec", env.lab.ns("inet"), sys.executable, "-c", SINK,
                             str(SINK_PORT)], stdout=subprocess.PIPE, text=True)
    env.lab.listeners.append(sink)  # stopped (by PID) with the mini-lab
    assert sink.stdout.readline().strip() == "ready"
    dp, world, size = env.dp["h1"], env.world, 2 << 20
    finals: list[dict] = []
    dp.on_nat_final = finals.append
    try:
        # 1. The gateway is deleted right after the bytes (no read between); its VPC stays.
        before = _nat_counter(env, "h1")
        _send(env, "a3", size)
        assert dp.ensure(_without(host_network(world, "h1"), drop_vpc=False)).ok
        assert len(finals) == 1 and set(finals[0]) == {NATGW}, finals
        assert finals[0][NATGW] >= before + size, (before, finals)
        assert _nat_counter(env, "h1") is None  # read, then deleted
        print(f"final counter after deletion: {finals[0][NATGW] - before} bytes "
              f"for {size} bytes of payload")
        # 2. Back (a new counter from zero), bytes, then the VPC's router namespace goes.
        env.apply(world)
        assert eventually(lambda: tcp(_ns(env, "a3"), INET_SERVER)) == "inet 203.0.113.200"
        _send(env, "a3", size)
        assert dp.ensure(_without(host_network(world, "h1"), drop_vpc=True)).ok
        assert len(finals) == 2 and finals[1][NATGW] >= size, finals
        print(f"final counter at namespace teardown: {finals[1][NATGW]} bytes "
              f"for {size} bytes of payload")
    finally:
        dp.on_nat_final = None
        env.apply(world)
    assert eventually(lambda: tcp(_ns(env, "a3"), INET_SERVER)) == "inet 203.0.113.200"
