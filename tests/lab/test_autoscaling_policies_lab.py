"""Target tracking, a step policy on an alarm and a scheduled action with real guests (issue 11): a
group of kumo-tiny (1 vCPU), min 1, max 3, with a policy of 50% average CPU (warmup and cooldown
20 s, scale-in period 20 s so the test stays bounded). A CPU burner in the guest over SSH (it
stops by itself) makes the group scale out to 2 instances that become InService; after the
burner stops the group scales back to 1, with no flapping in between (the policy's changes are
exactly 1 -> 2 -> 1). Then, the policy deleted, a step policy on a metric alarm of the group's
CPU scales it out on a second load step (the alarm's action). Then a one-time scheduled action
(a start time 3 s ahead, no recurrence) sets desired 2, once, and is deleted.
Bounded: each wait has its own timeout; the group is force-deleted in the end.
"""
from __future__ import annotations

import re
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from lab.testing import until
from tests.lab.cloud import user_fixture
from tests.lab.guests import cpu_burner
from tests.lab.test_autoscaling_lab import _group, _in_service

pytestmark = [pytest.mark.lab, pytest.mark.slow]

cloud = user_fixture()
BURN_S = 30
BURNER = cpu_burner(BURN_S)


def _changes(cloud, name: str) -> list[str]:
    acts = cloud.call("GET", f"/v1/autoscaling-groups/{name}/activities",
                      params={"max_results": 1000})["items"]
    return [a["cause"] for a in acts if a["description"].startswith("Changing the desired")]


def test_target_tracking_and_schedule(cloud):
    suffix = uuid.uuid4().hex[:8]
    name, tname, kname = f"lab-tt-{suffix}", f"lab-tt-lt-{suffix}", f"lab-tt-{suffix}"
    key = cloud.key_pair(kname)
    subnet = next(s for s in cloud.call("GET", "/v1/subnets", params={"max_results": 1000})
                  ["items"] if s.get("default_for_az"))
    cloud.call("POST", "/v1/launch-templates", expect=201, json={
        "launch_template_name": tname, "launch_template_data": {
            "image": "kumo-tiny", "instance_type": "t3.nano", "key_name": kname}})
    cloud.call("POST", "/v1/autoscaling-groups", expect=201, json={
        "auto_scaling_group_name": name, "launch_template": {"launch_template_name": tname},
        "min_size": 1, "max_size": 3, "desired_capacity": 1, "subnet_ids": [subnet["subnet_id"]],
        "health_check_grace_period": 120, "default_cooldown": 20,
        "default_instance_warmup": 20})
    cloud.call("PUT", f"/v1/autoscaling-groups/{name}/policies/cpu50", json={
        "target_tracking_configuration": {"predefined_metric_specification": {
            "predefined_metric_type": "ASGAverageCPUUtilization"}, "target_value": 50},
        "scale_in_period": 20})
    started = time.monotonic()
    try:
        [first] = _in_service(cloud, name, 1, timeout=180)
        inst = cloud.wait(first["instance_id"], "running", "ok", timeout=180)
        assert cloud.ssh(inst, key, "true").returncode == 0
        burn = {}
        t = threading.Thread(target=lambda: burn.setdefault(
            "r", cloud.ssh(inst, key, BURNER, timeout=BURN_S + 40)))
        burn_start = time.monotonic()
        t.start()
        until(lambda: _group(cloud, name)["desired_capacity"] >= 2, 45, "scale out to 2", every=1)
        print(f"scale-out decision {time.monotonic() - burn_start:.0f} s after the load step")
        _in_service(cloud, name, 2, timeout=150)
        print(f"2 InService {time.monotonic() - burn_start:.0f} s after the load step")
        t.join(BURN_S + 60)
        assert burn["r"].returncode == 0 and "burned" in burn["r"].stdout, burn["r"].stderr
        _in_service(cloud, name, 1, timeout=120)
        print(f"back to 1 InService {time.monotonic() - burn_start:.0f} s after the load step")
        changes = _changes(cloud, name)
        # No flapping: desired rises (a booting instance past its warmup may still burn CPU
        # and add one more), then falls, and never rises again once it fell.
        steps = [tuple(int(x) for x in re.search(r"from (\d+) to (\d+)", c).groups())
                 for c in changes]
        assert steps[0] == (1, 2) and "above target" in changes[0], changes
        ups = [s for s in steps if s[1] > s[0]]
        downs = [s for s in steps if s[1] < s[0]]
        assert steps == ups + downs and downs and downs[-1][1] == 1, changes
        assert all("above target" in c for c in changes[:len(ups)]), changes
        assert all("below target" in c for c in changes[len(ups):]), changes

        cloud.call("DELETE", f"/v1/autoscaling-groups/{name}/policies/cpu50", expect=204)
        _step_policy_on_an_alarm(cloud, name, key)

        # A one-time action (no recurrence) 3 s ahead: no wait for a cron minute (recurrences
        # are covered with a driven clock in tests/functional/test_autoscaling_policies.py).
        start = datetime.now(timezone.utc) + timedelta(seconds=3)
        a = cloud.call("PUT", f"/v1/autoscaling-groups/{name}/scheduled-actions/two", json={
            "desired_capacity": 2, "start_time": start.isoformat()})
        assert a["recurrence"] is None and a["next_occurrence"] is not None
        put_at = time.monotonic()
        until(lambda: _group(cloud, name)["desired_capacity"] == 2, 30, "scheduled action fired",
              every=1)
        print(f"scheduled action fired {time.monotonic() - put_at:.0f} s after it was put")
        [cause] = [c for c in _changes(cloud, name) if "scheduled action two" in c]
        assert "desired capacity 2 (was 1)" in cause, cause
        # Run once, then deleted (as EC2 deletes one-time actions).
        assert cloud.call("GET", f"/v1/autoscaling-groups/{name}/scheduled-actions") == []
    finally:
        cloud.call("DELETE", f"/v1/autoscaling-groups/{name}", params={"force": "true"})
        until(lambda: cloud.api.get(f"/v1/autoscaling-groups/{name}").status_code == 404, 120,
              "group deleted", every=1)
        cloud.call("DELETE", f"/v1/launch-templates/{tname}", expect=None)
    print(f"lab test body took {time.monotonic() - started:.0f} s")


def _step_policy_on_an_alarm(cloud, name: str, key) -> None:
    """A step policy on an alarm of the group's own CPU (dimension AutoScalingGroupName,
    Average > 40 over 2 of 2 10 s periods): the same load step in the group's one instance
    puts the alarm in ALARM, whose action adds one instance that becomes InService. Then the
    alarm and the policy go and the group is set back to 1 by hand."""
    alarm = f"{name}-cpu-high"
    [member] = _in_service(cloud, name, 1, timeout=60)
    inst = cloud.wait(member["instance_id"], "running", "ok", timeout=180)
    assert cloud.ssh(inst, key, "true").returncode == 0
    step = cloud.call("PUT", f"/v1/autoscaling-groups/{name}/policies/step-out", json={
        "policy_type": "StepScaling", "adjustment_type": "ChangeInCapacity",
        "step_adjustments": [{"metric_interval_lower_bound": 0, "scaling_adjustment": 1}],
        "estimated_instance_warmup": 20})
    time.sleep(10)  # the login's own CPU out of the alarm's periods
    cloud.call("PUT", f"/v1/alarms/{alarm}", json={
        "metric_name": "CPUUtilization", "namespace": "Kumo/EC2",
        "dimensions": [{"name": "AutoScalingGroupName", "value": name}],
        "statistic": "Average", "period": 10, "evaluation_periods": 2,
        "datapoints_to_alarm": 2, "threshold": 40,
        "comparison_operator": "GreaterThanThreshold", "alarm_actions": [step["policy_arn"]]})
    burn = {}
    t = threading.Thread(target=lambda: burn.setdefault(
        "r", cloud.ssh(inst, key, BURNER, timeout=BURN_S + 40)))
    burn_start = time.monotonic()
    t.start()
    try:
        until(lambda: _group(cloud, name)["desired_capacity"] >= 2, 60, "step scale out to 2",
              every=1)
        print(f"step policy decision {time.monotonic() - burn_start:.0f} s after the load step")
    finally:
        cloud.call("DELETE", f"/v1/alarms/{alarm}", expect=None)
        cloud.call("DELETE", f"/v1/autoscaling-groups/{name}/policies/step-out", expect=None)
        t.join(BURN_S + 60)
    [cause] = [c for c in _changes(cloud, name) if "policy step-out" in c]
    assert f"alarm {alarm} in state ALARM" in cause and "from 1 to 2" in cause, cause
    _in_service(cloud, name, 2, timeout=150)
    print(f"step policy: 2 InService {time.monotonic() - burn_start:.0f} s after the load step")
    assert burn["r"].returncode == 0 and "burned" in burn["r"].stdout, burn["r"].stderr
    cloud.call("POST", f"/v1/autoscaling-groups/{name}/desired-capacity",
               json={"desired_capacity": 1})
    _in_service(cloud, name, 1, timeout=120)
