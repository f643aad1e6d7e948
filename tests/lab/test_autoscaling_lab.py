"""An Auto Scaling group with real guests (issue 11): a launch template of kumo-tiny, a group of
min 1, max 3, desired 2 in the demo account's default subnet. Two instances become InService on
running guests; desired 1 terminates one; the QEMU process of the remaining one is killed (that
PID only): the instance shuts off, and after the grace period the group terminates it and a
replacement becomes InService; no domain is left for a terminated instance. A forced delete
terminates everything and the group goes. Bounded: each wait has its own timeout.
"""
from __future__ import annotations

import os
import signal
import time
import uuid

import pytest

from tests.lab.cloud import agent_instance_dir, domains_named, lab_hosts, user_fixture
from lab.testing import until
from tests.lab.guests import qemu_pid_of

pytestmark = [pytest.mark.lab, pytest.mark.slow]

cloud = user_fixture()
GRACE_S = 10


def _group(cloud, name: str) -> dict:
    return cloud.call("GET", f"/v1/autoscaling-groups/{name}")


def _in_service(cloud, name: str, count: int, timeout: float = 150) -> list[dict]:
    """Exactly `count` members, all InService on running instances."""
    def probe():
        members = _group(cloud, name)["instances"]
        ok = (len(members) == count and all(m["lifecycle_state"] == "InService"
                                            for m in members)
              and all(cloud.instance(m["instance_id"])["state"] == "running" for m in members))
        return members if ok else None
    return until(probe, timeout, f"{count} InService", every=1)


def _gone(cloud, iid: str, timeout: float = 60) -> None:
    """Terminated, and nothing of it left on any host: no domain, no agent files."""
    until(lambda: cloud.instance(iid)["state"] == "terminated", timeout, f"{iid} terminated",
          every=1)
    until(lambda: not domains_named(cloud.lab, iid), 30, f"{iid} domain removed", every=1)
    until(lambda: not any(agent_instance_dir(cloud.lab, h, iid).exists()
                          for h in lab_hosts(cloud.lab)), 30, f"{iid} agent files removed",
          every=1)


def test_group_scales_replaces_and_deletes(cloud):
    suffix = uuid.uuid4().hex[:8]
    name, tname = f"lab-asg-{suffix}", f"lab-lt-{suffix}"
    subnet = next(s for s in cloud.call("GET", "/v1/subnets", params={"max_results": 1000})
                  ["items"] if s.get("default_for_az"))
    cloud.call("POST", "/v1/launch-templates", expect=201, json={
        "launch_template_name": tname,
        "launch_template_data": {"image": "kumo-tiny", "instance_type": "t3.nano"}})
    cloud.call("POST", "/v1/autoscaling-groups", expect=201, json={
        "auto_scaling_group_name": name, "launch_template": {"launch_template_name": tname},
        "min_size": 1, "max_size": 3, "desired_capacity": 2,
        "subnet_ids": [subnet["subnet_id"]], "health_check_grace_period": GRACE_S})
    started = time.monotonic()
    try:
        members = _in_service(cloud, name, 2)
        print(f"2 InService after {time.monotonic() - started:.0f} s")
        cloud.call("POST", f"/v1/autoscaling-groups/{name}/desired-capacity",
                   json={"desired_capacity": 1})
        [kept] = _in_service(cloud, name, 1, timeout=60)
        [dropped] = [m["instance_id"] for m in members if m["instance_id"] != kept["instance_id"]]
        _gone(cloud, dropped)

        iid = kept["instance_id"]
        pid = qemu_pid_of(iid)
        os.kill(pid, signal.SIGKILL)  # only this guest's QEMU
        killed = time.monotonic()
        [replacement] = until(lambda: [
            m for m in _in_service(cloud, name, 1, timeout=150)
            if m["instance_id"] != iid] or None, 160, "a replacement InService", every=1)
        print(f"replacement InService {time.monotonic() - killed:.0f} s after the kill")
        _gone(cloud, iid)
        acts = cloud.call("GET", f"/v1/autoscaling-groups/{name}/activities",
                          params={"max_results": 1000})["items"]
        health = [a for a in acts if "health check" in a["cause"]]
        assert [a["instance_id"] for a in health] == [iid], acts
        assert all(a["status_code"] == "Successful" for a in acts), acts
        assert _group(cloud, name)["desired_capacity"] == 1
    finally:
        cloud.call("DELETE", f"/v1/autoscaling-groups/{name}", params={"force": "true"})
        until(lambda: cloud.api.get(f"/v1/autoscaling-groups/{name}").status_code == 404, 90,
              "group deleted", every=1)
        cloud.call("DELETE", f"/v1/launch-templates/{tname}", expect=None)
    for iid_ in (dropped, iid, replacement["instance_id"]):
        _gone(cloud, iid_)
    print(f"lab test body took {time.monotonic() - started:.0f} s")
