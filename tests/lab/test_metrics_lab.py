"""Metrics with a real guest: the lab's agents sample their libvirt domains every 5 s (the
default metrics_interval) and push to the controller; a kumo-tiny instance runs a CPU burner
over SSH for about 20 s (it stops by itself), and the statistics API must show its
CPUUtilization Maximum well above its idle level during the burn and back down after. Network
counters must have moved too (the SSH session went through the guest's NIC). A metric alarm
put on the instance before the burn (Maximum CPU > 50, or idle + 20 if lower; 10 s periods,
2 of 2) must reach ALARM during the burn and OK after it, with both transitions in its history.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from tests.lab.cloud import user_fixture
from tests.lab.guests import cpu_burner

pytestmark = [pytest.mark.lab, pytest.mark.slow]

cloud = user_fixture()

BURN_S = 20
# The idle and after windows: three 5 s samples (the agent's default metrics_interval).
WINDOW_S = 15
BURNER = cpu_burner(BURN_S)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat()


def _stats(cloud, iid: str, start: float, end: float, metric: str = "CPUUtilization",
           statistics: str = "Maximum,Average,SampleCount") -> list[dict]:
    return cloud.call("GET", "/v1/metrics/statistics", params={
        "namespace": "Kumo/EC2", "metric_name": metric, "dimension": f"InstanceId={iid}",
        "start_time": _iso(start), "end_time": _iso(end),
        # One datapoint for the whole window (a multiple of the 5 s raw sample period).
        "period": max(5, int((end - start) // 5 * 5 + 5)), "statistics": statistics,
    })["datapoints"]


def _window(cloud, iid: str, start: float, end: float, samples: int, timeout: float = 60,
            **kw) -> dict:
    """The window's single datapoint once it holds `samples` samples (the agent batches every
    5 s; a sample is stamped at the end of its interval)."""
    deadline = time.monotonic() + timeout
    while True:
        points = _stats(cloud, iid, start, end, **kw)
        if points and points[0]["SampleCount"] >= samples:
            return points[0]
        assert time.monotonic() < deadline, f"no {samples} samples in {start}..{end}: {points}"
        time.sleep(1)


def _alarm_went_and_cleared(cloud, name: str, burn_start: float, burn_end: float) -> None:
    """The alarm is OK again (waiting up to 30 s more), and its history went to ALARM during
    the burn (or within one period and the evaluation delay after it) and then back to OK."""
    deadline = time.monotonic() + 30
    while cloud.call("GET", f"/v1/alarms/{name}")["state_value"] != "OK":
        assert time.monotonic() < deadline, cloud.call("GET", f"/v1/alarms/{name}/history")
        time.sleep(1)
    hist = cloud.call("GET", f"/v1/alarms/{name}/history",
                      params={"history_item_type": "StateUpdate"})[::-1]  # oldest first
    moves = [(h["history_data"]["new_state"],
              datetime.fromisoformat(h["timestamp"].replace("Z", "+00:00")).timestamp())
             for h in hist]
    print(f"alarm transitions {moves}")
    # (The SSH login before the idle window may alarm too when the idle threshold is low: its
    # transitions are before the burn and do not count.)
    during = [at for state, at in moves if state == "ALARM" and
              burn_start <= at <= burn_end + 20]
    assert during, (moves, burn_start, burn_end)
    assert moves[-1][0] == "OK" and moves[-1][1] > during[-1], moves
    cloud.call("DELETE", f"/v1/alarms/{name}")


def test_cpu_burn_shows_in_cpu_utilization(cloud):
    key = cloud.key_pair("metrics-lab")
    [inst] = cloud.run(1, key_name="metrics-lab")
    iid = inst["instance_id"]
    inst = cloud.wait(iid, "running", "ok", timeout=180)
    assert cloud.ssh(inst, key, "true").returncode == 0  # SSH is up before the idle window

    time.sleep(5)  # the login's own CPU out of the idle window
    idle_start = time.time()
    time.sleep(WINDOW_S)
    idle = _window(cloud, iid, idle_start, time.time(), samples=3)

    cloud.call("PUT", "/v1/alarms/metrics-lab-cpu", json={
        "metric_name": "CPUUtilization", "namespace": "Kumo/EC2",
        "dimensions": [{"name": "InstanceId", "value": iid}], "statistic": "Maximum",
        "period": 10, "evaluation_periods": 2, "datapoints_to_alarm": 2,
        # 50 %, unless this machine's busy TCG vCPU reads lower today (seen: ~42 %, idle ~4 %).
        "threshold": min(50.0, idle["Maximum"] + 20.0),
        "comparison_operator": "GreaterThanThreshold"})
    burn_start = time.time()
    r = cloud.ssh(inst, key, BURNER, timeout=BURN_S + 40)
    burn_end = time.time()
    assert r.returncode == 0 and "burned" in r.stdout, r.stderr
    # Skip the first and last 5 s: samples there mix idle and busy time.
    burn = _window(cloud, iid, burn_start + 5, burn_end - 5, samples=1)

    # The burner is over: one sample period later no sample mixes busy time in any more (as
    # the 5 s skipped at the burn window's edges).
    time.sleep(5)
    after_start = time.time()
    time.sleep(WINDOW_S)
    after = _window(cloud, iid, after_start, time.time(), samples=3)

    print(f"idle {idle}\nburn {burn}\nafter {after}")
    # A busy TCG vCPU reads 60-100 % here depending on what else the 2-core machine runs;
    # idle kumo-tiny reads under 5 %.
    assert burn["Maximum"] >= idle["Maximum"] + 25.0, (idle, burn)
    assert after["Maximum"] <= burn["Maximum"] - 25.0, (burn, after)
    assert 0.0 <= idle["Average"] <= 100.0

    _alarm_went_and_cleared(cloud, "metrics-lab-cpu", burn_start, burn_end)

    net = _stats(cloud, iid, burn_start - 60, time.time(), metric="NetworkIn",
                 statistics="Sum")
    assert net and net[0]["Sum"] > 0, net  # SSH traffic reached the guest
