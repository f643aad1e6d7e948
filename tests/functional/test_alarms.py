"""Metric alarms and the step and simple scaling policies they trigger, on fake agents with
metrics fed through the real ingest path (services/metrics.ingest, as POST /v1/agent/metrics
does) and the alarm pass driven by a fake clock (alarm_controller.tick(now=...)).

What is checked: an alarm goes INSUFFICIENT_DATA -> ALARM -> OK with its history; a step
policy scales out by the step the metric falls in, and a further breach while the new capacity
warms adds nothing; a simple policy respects its cooldown; the pass keeps no memory (a second
pass at the same time, or one after a restart, neither repeats nor loses a change); refused
input (another account's policy ARN included) changes nothing; describe shows the alarms of
each policy.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from agent.contract.metrics_v1 import MetricSample, MetricsBatch
from controller.services import alarm_controller, autoscaling_controller, metrics
from tests.functional.fake_agent import Cloud
from tests.functional.test_autoscaling import activities, cli_with_group, group, setup_group
from tests.functional.test_controller_postgres import pg_url, postgres  # noqa: F401 (fixtures)
from tests.functional.vpc_support import err, ok

T0 = datetime(2027, 3, 22, 12, 0, tzinfo=timezone.utc)  # a multiple of every period used


def _cloud(tmp_path, url=None):
    c = Cloud(tmp_path, database_url=url, autoscaling_interval_s=0, alarm_interval_s=0,
              alarm_evaluation_delay_s=5)
    c.image()
    return c


@pytest.fixture
def cloud(tmp_path):
    c = _cloud(tmp_path)
    yield c
    c.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db_cloud(request, tmp_path):
    """The main flow on both databases (PostgreSQL: skipped where none can be started)."""
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    c = _cloud(tmp_path, url)
    yield c
    c.close()


class Clock:
    def __init__(self, t=T0):
        self.now = t


def members(user) -> list[str]:
    return [i["instance_id"] for i in group(user)["instances"]
            if i["lifecycle_state"] in ("Pending", "InService")]


def changes(user) -> list[dict]:
    return [a for a in activities(user) if a["description"].startswith("Changing the desired")]


def converge(cloud, clock) -> None:
    """Group passes and agent ticks at the current time until the group has its instances."""
    for _ in range(3):
        autoscaling_controller.tick(cloud.db, cloud.settings, clock.now)
        for _ in range(3):
            cloud.tick()
            cloud.heartbeat(*cloud.agents.values())


def run(cloud, clock, user, cpu: float | None, seconds: int = 5, ids=None) -> None:
    """Advance the clock; ingest one sample per instance (unless cpu is None) stamped now;
    run one alarm pass."""
    clock.now += timedelta(seconds=seconds)
    if cpu is not None:
        ts = clock.now.timestamp()
        batch = MetricsBatch(host_id="h1", sent_at=ts, samples=[
            MetricSample(instance_id=i, timestamp=ts, interval=5, values={"CPUUtilization": cpu})
            for i in (ids or members(user))])
        ack = metrics.ingest(cloud.db, cloud.settings, batch, metrics.IngestCounters(),
                             now_ms=int(ts * 1000))
        assert ack.rejected == 0
    alarm_controller.tick(cloud.db, cloud.settings, clock.now)


def alarm_body(**over) -> dict:
    return {"metric_name": "CPUUtilization", "namespace": "AWS/EC2",
            "dimensions": [{"name": "AutoScalingGroupName", "value": "g1"}],
            "statistic": "Average", "period": 10, "evaluation_periods": 2,
            "datapoints_to_alarm": 2, "threshold": 50,
            "comparison_operator": "GreaterThanThreshold", **over}


STEP = {"policy_type": "StepScaling", "adjustment_type": "ChangeInCapacity",
        "step_adjustments": [
            {"metric_interval_lower_bound": 0, "metric_interval_upper_bound": 20,
             "scaling_adjustment": 1},
            {"metric_interval_lower_bound": 20, "scaling_adjustment": 2}],
        "estimated_instance_warmup": 60}


def test_alarm_states_history_and_step_scale_out(any_db_cloud):
    cloud = any_db_cloud
    cloud.add_host("h1", vcpus=64, memory_mib=262144)
    user = cloud.account("alice")
    clock = Clock()
    setup_group(cloud, user, min_size=1, max_size=5, desired_capacity=1, default_cooldown=30)
    converge(cloud, clock)
    [first] = members(user)
    clock.now += timedelta(seconds=60)  # past the first instance's warmup
    pol = ok(user.put("/v1/autoscaling-groups/g1/policies/out", json=STEP))
    assert pol["policy_type"] == "StepScaling" and pol["alarms"] == []
    a = ok(user.put("/v1/alarms/high-cpu", json=alarm_body(alarm_actions=[pol["policy_arn"]])))
    assert a["state_value"] == "INSUFFICIENT_DATA" and a["datapoints_to_alarm"] == 2
    # Describe shows the alarm on the policy (EC2's Alarms).
    [p] = ok(user.get("/v1/autoscaling-groups/g1/policies"))
    assert p["alarms"] == [{"alarm_name": "high-cpu", "alarm_arn": a["alarm_arn"]}]
    # No data: stays INSUFFICIENT_DATA, evaluated (with no transition).
    for _ in range(4):
        run(cloud, clock, user, None)
    assert ok(user.get("/v1/alarms/high-cpu"))["state_value"] == "INSUFFICIENT_DATA"
    # Load: 80% average; ALARM after two full periods above 50 (10 s periods, 5 s delay).
    seen = []
    for _ in range(8):
        run(cloud, clock, user, 80, ids=[first])
        seen.append(ok(user.get("/v1/alarms/high-cpu"))["state_value"])
        if seen[-1] == "ALARM":
            break
    assert seen[-1] == "ALARM" and len(seen) <= 6, seen
    # 80 - 50 = 30: the second step, +2.
    assert group(user)["desired_capacity"] == 3
    [c] = changes(user)
    assert "high-cpu" in c["cause"] and "policy out" in c["cause"] and "from 1 to 3" in c["cause"]
    # Still in ALARM while the two new instances warm: invoked again each period, adds nothing.
    converge(cloud, clock)
    for _ in range(6):
        run(cloud, clock, user, 80, ids=[first])
    assert ok(user.get("/v1/alarms/high-cpu"))["state_value"] == "ALARM"
    assert group(user)["desired_capacity"] == 3 and len(changes(user)) == 1
    actions = ok(user.get("/v1/alarms/high-cpu/history",
                          params={"history_item_type": "Action"}))
    assert len(actions) >= 3 and "changed the desired capacity from 1 to 3" in \
        actions[-1]["history_summary"]
    # Load falls: OK after two periods at or below 50.
    for _ in range(8):
        run(cloud, clock, user, 10)
        if ok(user.get("/v1/alarms/high-cpu"))["state_value"] == "OK":
            break
    a = ok(user.get("/v1/alarms/high-cpu"))
    assert a["state_value"] == "OK" and "were not greater than" in a["state_reason"]
    states = [(h["history_data"]["old_state"], h["history_data"]["new_state"]) for h in
              ok(user.get("/v1/alarms/high-cpu/history",
                          params={"history_item_type": "StateUpdate"}))]
    assert states == [("ALARM", "OK"), ("INSUFFICIENT_DATA", "ALARM")]  # newest first
    hist = ok(user.get("/v1/alarms/high-cpu/history"))
    assert hist[-1]["history_item_type"] == "ConfigurationUpdate"
    assert all(hist[i]["timestamp"] >= hist[i + 1]["timestamp"] for i in range(len(hist) - 1))
    listed = ok(user.get("/v1/alarms", params={"state_value": "OK"}))
    assert [x["alarm_name"] for x in listed["items"]] == ["high-cpu"]
    assert ok(user.get("/v1/alarms", params={"state_value": "ALARM"}))["items"] == []
    assert ok(user.get("/v1/alarms", params={"name_prefix": "low"}))["items"] == []
    # Keyset pages, by name, like every list.
    for n in ("low-a", "low-b"):
        ok(user.put(f"/v1/alarms/{n}", json=alarm_body()))
    first = ok(user.get("/v1/alarms", params={"max_results": 2}))
    assert [x["alarm_name"] for x in first["items"]] == ["high-cpu", "low-a"]
    rest = ok(user.get("/v1/alarms", params={"max_results": 2,
                                              "next_token": first["next_token"]}))
    assert [x["alarm_name"] for x in rest["items"]] == ["low-b"] and rest["next_token"] is None
    for n in ("low-a", "low-b"):
        assert user.delete(f"/v1/alarms/{n}").status_code == 204
    assert user.delete("/v1/alarms/high-cpu").status_code == 204
    err(user.get("/v1/alarms/high-cpu/history"), 404, "ResourceNotFound")


def test_simple_policy_cooldown_and_restart_safety(cloud):
    cloud.add_host("h1", vcpus=64, memory_mib=262144)
    user = cloud.account("alice")
    clock = Clock()
    setup_group(cloud, user, min_size=1, max_size=4, desired_capacity=1, default_cooldown=300)
    converge(cloud, clock)
    [first] = members(user)
    pol = ok(user.put("/v1/autoscaling-groups/g1/policies/add1", json={
        "policy_type": "SimpleScaling", "adjustment_type": "ChangeInCapacity",
        "scaling_adjustment": 1, "cooldown": 60}))
    ok(user.put("/v1/alarms/busy", json=alarm_body(
        dimensions=[{"name": "InstanceId", "value": first}], statistic="Maximum",
        evaluation_periods=1, datapoints_to_alarm=1, alarm_actions=[pol["policy_arn"]])))
    while group(user)["desired_capacity"] == 1:
        run(cloud, clock, user, 90, ids=[first])
        assert clock.now < T0 + timedelta(seconds=30)
    changed_at = clock.now
    # The pass keeps no memory: another at the same time (a restarted controller) repeats
    # nothing.
    assert alarm_controller.tick(cloud.db, cloud.settings, clock.now)["evaluated"] == 0
    # Still in ALARM inside the cooldown: invoked each period, nothing changes.
    while clock.now < changed_at + timedelta(seconds=55):
        run(cloud, clock, user, 90, ids=[first])
    assert group(user)["desired_capacity"] == 2 and len(changes(user)) == 1
    assert any("cooldown" in h["history_summary"] for h in ok(user.get(
        "/v1/alarms/busy/history", params={"history_item_type": "Action"})))
    # The controller is down past the cooldown and several periods: on return one evaluation
    # (the latest period), one change: not lost, not repeated per missed period.
    clock.now += timedelta(seconds=50)
    for t in range(0, 50, 5):  # the agent kept sampling meanwhile
        ts = (clock.now - timedelta(seconds=t)).timestamp()
        metrics.ingest(cloud.db, cloud.settings, MetricsBatch(host_id="h1", sent_at=ts, samples=[
            MetricSample(instance_id=first, timestamp=ts, interval=5,
                         values={"CPUUtilization": 95})]), metrics.IngestCounters(),
            now_ms=int(clock.now.timestamp() * 1000))
    assert alarm_controller.tick(cloud.db, cloud.settings, clock.now)["evaluated"] == 1
    assert alarm_controller.tick(cloud.db, cloud.settings, clock.now)["evaluated"] == 0
    assert group(user)["desired_capacity"] == 3 and len(changes(user)) == 2
    # SetAlarmState (testing): to OK, actions of OK (none), the next evaluation sets ALARM.
    ok(user.post("/v1/alarms/busy/state", json={"state_value": "OK", "state_reason": "test"}))
    assert ok(user.get("/v1/alarms/busy"))["state_value"] == "OK"
    run(cloud, clock, user, 90, ids=[first], seconds=10)
    assert ok(user.get("/v1/alarms/busy"))["state_value"] == "ALARM"


def test_bad_input_changes_nothing(cloud):
    cloud.add_host("h1")
    user = cloud.account("alice")
    bob = cloud.account("bob")
    setup_group(cloud, user, min_size=1, max_size=3, desired_capacity=1)
    setup_group(cloud, bob, min_size=0, max_size=3, desired_capacity=0)
    mine = ok(user.put("/v1/autoscaling-groups/g1/policies/out", json=STEP))["policy_arn"]
    theirs = ok(bob.put("/v1/autoscaling-groups/g1/policies/out", json=STEP))["policy_arn"]
    tt = ok(user.put("/v1/autoscaling-groups/g1/policies/tt", json={
        "target_tracking_configuration": {"predefined_metric_specification": {
            "predefined_metric_type": "ASGAverageCPUUtilization"}, "target_value": 50}}))
    for over, code in (({"alarm_actions": [theirs]}, "InvalidParameterValue"),
                       ({"ok_actions": [tt["policy_arn"]]}, "InvalidParameterValue"),
                       ({"alarm_actions": ["arn:nope"]}, "InvalidParameterValue"),
                       ({"period": 7}, "InvalidParameterValue"),
                       ({"period": 0}, "InvalidParameterValue"),
                       ({"period": 10 ** 6}, "InvalidParameterValue"),
                       ({"statistic": "p99"}, "InvalidParameterValue"),
                       ({"comparison_operator": "Equal"}, "InvalidParameterValue"),
                       ({"treat_missing_data": "zero"}, "InvalidParameterValue"),
                       ({"metric_name": "Nope"}, "InvalidParameterValue"),
                       ({"namespace": "AWS/S3"}, "InvalidParameterValue"),
                       ({"dimensions": [{"name": "ImageId", "value": "x"}]},
                        "InvalidParameterValue"),
                       ({"datapoints_to_alarm": 3}, "InvalidParameterCombination"),
                       ({"period": 3600, "evaluation_periods": 10},
                        "InvalidParameterCombination")):
        err(user.put("/v1/alarms/a1", json=alarm_body(**over)), 400, code)
    r = user.put("/v1/alarms/a1", json=alarm_body(evaluation_periods=0))
    assert r.status_code == 400
    err(user.put("/v1/alarms/bad name!", json=alarm_body()), 400, "InvalidParameterValue")
    assert ok(user.get("/v1/alarms"))["items"] == []
    err(user.get("/v1/alarms/a1"), 404, "ResourceNotFound")
    err(user.delete("/v1/alarms/a1"), 404, "ResourceNotFound")
    err(user.get("/v1/alarms", params={"state_value": "RED"}), 400, "InvalidParameterValue")
    # An alarm is per account: bob cannot see or touch alice's.
    ok(user.put("/v1/alarms/a1", json=alarm_body(alarm_actions=[mine])))
    err(bob.get("/v1/alarms/a1"), 404, "ResourceNotFound")
    err(bob.post("/v1/alarms/a1/state", json={"state_value": "ALARM", "state_reason": "x"}),
        404, "ResourceNotFound")
    err(user.post("/v1/alarms/a1/state", json={"state_value": "RED", "state_reason": "x"}),
        400, "InvalidParameterValue")
    # Step / simple policy validation: ValidationError, nothing changed.
    before = ok(user.get("/v1/autoscaling-groups/g1/policies"))
    s = STEP["step_adjustments"]
    for bad in ({**STEP, "step_adjustments": []},
                {**STEP, "step_adjustments": [s[0], {**s[1], "metric_interval_lower_bound": 30}]},
                {**STEP, "step_adjustments": [s[0], {**s[1], "metric_interval_lower_bound": 10}]},
                {**STEP, "step_adjustments": [{"scaling_adjustment": 1,
                                               "metric_interval_upper_bound": 0},
                                              {"scaling_adjustment": 2,
                                               "metric_interval_upper_bound": 10}]},
                {**STEP, "step_adjustments": [{**s[0], "metric_interval_upper_bound": 0}]},
                {**STEP, "adjustment_type": "Bogus"},
                {**STEP, "min_adjustment_magnitude": 2},
                {**STEP, "cooldown": 30},
                {**STEP, "metric_aggregation_type": "Sum"},
                {"policy_type": "SimpleScaling", "adjustment_type": "ChangeInCapacity"},
                {"policy_type": "SimpleScaling", "adjustment_type": "ExactCapacity",
                 "scaling_adjustment": -1},
                {"policy_type": "SimpleScaling", "adjustment_type": "ChangeInCapacity",
                 "scaling_adjustment": 1, "step_adjustments": s}):
        err(user.put("/v1/autoscaling-groups/g1/policies/out", json=bad), 400,
            "ValidationError")
    err(bob.put("/v1/autoscaling-groups/nope/policies/x", json=STEP), 404, "ValidationError")
    after = ok(user.get("/v1/autoscaling-groups/g1/policies"))
    assert after == before and {p["policy_type"] for p in after} == {
        "StepScaling", "TargetTrackingScaling"}
    assert [p["alarms"] for p in after if p["policy_name"] == "out"] == [
        [{"alarm_name": "a1", "alarm_arn": ok(user.get("/v1/alarms/a1"))["alarm_arn"]}]]
    # Percent with a minimum magnitude is accepted; a delete of the policy leaves the alarm,
    # whose action then records a failure instead of changing anything.
    ok(user.put("/v1/autoscaling-groups/g1/policies/pct", json={
        "policy_type": "SimpleScaling", "adjustment_type": "PercentChangeInCapacity",
        "scaling_adjustment": 10, "min_adjustment_magnitude": 2}))
    assert user.delete("/v1/autoscaling-groups/g1/policies/out").status_code == 204
    ok(user.post("/v1/alarms/a1/state", json={"state_value": "ALARM", "state_reason": "test"}))
    assert "does not exist" in ok(user.get("/v1/alarms/a1/history", params={
        "history_item_type": "Action"}))[0]["history_summary"]
    assert group(user)["desired_capacity"] == 1
    # A group with step policies still deletes.
    assert user.delete("/v1/autoscaling-groups/g1").status_code == 204


def test_cli(cloud):
    """`kumo alarms ...` and `kumo autoscaling-groups put-step-policy|put-simple-policy`."""
    kumo, run = cli_with_group(cloud)
    p = run("autoscaling-groups", "put-step-policy", "g1", "out", "--step", "0:20:1",
            "--step", "20::2", "--warmup", "30")
    assert [s["scaling_adjustment"] for s in p["step_adjustments"]] == [1, 2]
    q = run("autoscaling-groups", "put-simple-policy", "g1", "in", "--adjustment", "-1",
            "--cooldown", "60")
    assert (q["policy_type"], q["scaling_adjustment"], q["cooldown"]) == ("SimpleScaling", -1, 60)
    r = kumo("autoscaling-groups", "put-step-policy", "g1", "bad", "--step", "0:10:1",
             "--step", "20::2")
    assert r.exit_code != 0 and "ValidationError" in r.output
    a = run("alarms", "put", "hi", "--auto-scaling-group", "g1", "--threshold", "50",
            "--comparison-operator", "GreaterThanThreshold", "--period", "10",
            "--evaluation-periods", "2", "--alarm-action", p["policy_arn"])
    assert a["state_value"] == "INSUFFICIENT_DATA"
    r = kumo("alarms", "put", "x", "--auto-scaling-group", "g1", "--threshold", "50",
             "--comparison-operator", "GreaterThanThreshold", "--period", "7",
             "--evaluation-periods", "2")
    assert r.exit_code != 0 and "InvalidParameterValue" in r.output
    assert [x["alarm_name"] for x in run("alarms", "list")["items"]] == ["hi"]
    assert run("alarms", "list", "--state", "ALARM")["items"] == []
    assert run("alarms", "show", "hi")["alarm_actions"] == [p["policy_arn"]]
    run("alarms", "set-state", "hi", "--state", "ALARM", "--reason", "test")
    kinds = [h["history_item_type"] for h in run("alarms", "history", "hi")["items"]]
    assert kinds[-1] == "ConfigurationUpdate" and "StateUpdate" in kinds and "Action" in kinds
    policies = {x["policy_name"]: x for x in run("autoscaling-groups", "policies", "g1")["items"]}
    assert [x["alarm_name"] for x in policies["out"]["alarms"]] == ["hi"]
    assert kumo("alarms", "delete", "hi").exit_code == 0
    assert run("alarms", "list")["items"] == []
