"""Instances end to end on the lab with real guests: the controller schedules, the agents boot
kumo-tiny under libvirt, and the tests check from outside (SSH into the guest, libvirt on each
host, the agent's files) that what the API says is what the hosts have.
"""
from __future__ import annotations

import time

import libvirt
import pytest

from tests.lab.cloud import agent_instance_dir, domains_named, kill9, user_fixture

pytestmark = [pytest.mark.lab, pytest.mark.slow]

USER_DATA = b"""#!/bin/sh
echo "kept by $(hostname)" > /root/kept.txt
"""


cloud = user_fixture()


@pytest.fixture(scope="module")
def key(cloud):
    return cloud.key_pair("lab-tests")


@pytest.fixture(scope="module")
def three(cloud, key):
    """Three instances over the two hosts, all running with status ok."""
    launched = cloud.run(3, key_name="lab-tests", user_data=USER_DATA, tags={"suite": "lab"})
    return [cloud.wait(i["instance_id"], "running", "ok", timeout=180) for i in launched]


def test_three_instances_spread_over_two_hosts_reach_running_and_ok(cloud, key, three):
    assert {i["host_id"] for i in three} == {"h1", "h2"}
    for inst in three:
        assert domains_named(cloud.lab, inst["instance_id"]) == {
            inst["host_id"]: libvirt.VIR_DOMAIN_RUNNING}
        r = cloud.ssh(inst, key, "cat /root/kept.txt")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("kept by ")
    console = cloud.call("GET", f"/v1/instances/{three[0]['instance_id']}/console")["output"]
    assert f"KUMO-READY instance-id={three[0]['instance_id']}" in console


def test_user_data_file_survives_reboot_and_stop_start(cloud, key, three):
    inst = three[0]
    iid = inst["instance_id"]
    boots_before = _boot_markers(cloud, iid)
    cloud.action(iid, "reboot")
    deadline = time.monotonic() + 120
    while _boot_markers(cloud, iid) <= boots_before:
        assert time.monotonic() < deadline, "the guest did not boot again after reboot"
        time.sleep(1)
    inst = cloud.wait(iid, "running", "ok")
    assert cloud.ssh(inst, key, "cat /root/kept.txt").stdout.startswith("kept by ")

    cloud.action(iid, "stop")
    cloud.wait(iid, "stopped", timeout=120)
    assert domains_named(cloud.lab, iid) == {inst["host_id"]: libvirt.VIR_DOMAIN_SHUTOFF}
    cloud.action(iid, "start")
    inst = cloud.wait(iid, "running", "ok", timeout=120)
    assert cloud.ssh(inst, key, "cat /root/kept.txt").stdout.startswith("kept by ")


def test_type_change_shows_inside_the_guest(cloud, key, three):
    iid = three[1]["instance_id"]
    cloud.action(iid, "stop")
    cloud.wait(iid, "stopped", timeout=120)
    cloud.call("PATCH", f"/v1/instances/{iid}", json={"instance_type": "t3.small"})
    cloud.action(iid, "start")
    # Two vCPUs under TCG on a 2-core runner boot several times slower than one: the same
    # bound as a first launch (a failure prints the console, to tell a hung guest apart).
    inst = cloud.wait(iid, "running", "ok", timeout=180)
    assert (inst["vcpus"], inst["memory_mib"]) == (2, 1024)
    r = cloud.ssh(inst, key, "grep -c ^processor /proc/cpuinfo; grep MemTotal /proc/meminfo")
    assert r.returncode == 0, r.stderr
    cpus, mem = r.stdout.splitlines()
    assert int(cpus) == 2
    mem_kib = int(mem.split()[1])
    assert 900 * 1024 < mem_kib <= 1024 * 1024  # MemTotal is RAM minus what the kernel keeps


def test_terminate_removes_domain_disk_and_seed(cloud, three):
    inst = three[2]
    iid, host = inst["instance_id"], inst["host_id"]
    assert (agent_instance_dir(cloud.lab, host, iid) / "root.qcow2").exists()
    cloud.action(iid, "terminate")
    cloud.action(iid, "terminate")  # idempotent
    cloud.wait(iid, "terminated", timeout=120)
    deadline = time.monotonic() + 30
    while agent_instance_dir(cloud.lab, host, iid).exists() or domains_named(cloud.lab, iid):
        assert time.monotonic() < deadline, "domain or files left behind after terminate"
        time.sleep(0.5)


@pytest.mark.parametrize("victim", ["agent", "controller"])
def test_kill9_mid_launch_loses_nothing(cloud, key, victim):
    before = {i["instance_id"] for i in
              cloud.call("GET", "/v1/instances", params={"max_results": 1000})["items"]}
    launched = cloud.run(2, key_name="lab-tests", client_token=f"kill9-{victim}-{time.time()}")
    ids = [i["instance_id"] for i in launched]
    time.sleep(1.0)  # mid-launch: specs pushed, domains being created
    if victim == "agent":
        for inst in (cloud.instance(i) for i in ids):
            if inst.get("host_id"):
                kill9(cloud.lab, f"agent-{inst['host_id']}")
                break
    else:
        kill9(cloud.lab, "controller")
    time.sleep(1.0)
    cloud.lab.up(hosts=2)  # restarts what died, touches nothing else
    for iid in ids:
        inst = cloud.wait(iid, "running", "ok", timeout=180)
        assert len(domains_named(cloud.lab, iid)) == 1, f"{iid} duplicated or missing"
        assert agent_instance_dir(cloud.lab, inst["host_id"], iid).exists()
    after = {i["instance_id"] for i in
             cloud.call("GET", "/v1/instances", params={"max_results": 1000})["items"]}
    assert after - before == set(ids), "an instance was lost or duplicated"
    for iid in ids:
        cloud.action(iid, "terminate")
    for iid in ids:
        cloud.wait(iid, "terminated", timeout=120)


def _boot_markers(cloud, iid: str) -> int:
    out = cloud.call("GET", f"/v1/instances/{iid}/console")["output"]
    return out.count(f"KUMO-READY instance-id={iid}")
