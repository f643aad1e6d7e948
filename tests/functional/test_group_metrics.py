"""Auto Scaling group metrics (controller/services/group_metrics.py): the group controller's
pass records each group's capacity once per sample period, and GET /v1/metrics/statistics
answers them in namespace AWS/AutoScaling by AutoScalingGroupName, to the group's account (and
admins) only; a group metric needs the group dimension, and instance metrics are not in it."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import select

from controller.ids import utcnow
from controller.models import MetricDatum
from controller.services import autoscaling_controller, group_metrics
from tests.functional.fake_agent import Cloud
from tests.functional.test_controller_postgres import pg_url, postgres  # noqa: F401 (fixtures)
from tests.functional.vpc_support import err, make_subnet, make_vpc, ok


@pytest.fixture
def five_seconds(monkeypatch):
    monkeypatch.setattr(group_metrics, "PERIOD_S", 5)


@pytest.fixture(params=["sqlite", "postgresql"])
def cloud(request, tmp_path):
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    c = Cloud(tmp_path, database_url=url, autoscaling_interval_s=0)
    c.image()
    c.add_host("h1")
    yield c
    c.close()


def _stats(client, metric: str, start, end, dims=("AutoScalingGroupName=g1",), **kw):
    return client.get("/v1/metrics/statistics", params={
        "namespace": kw.get("namespace", "AWS/AutoScaling"), "metric_name": metric,
        "dimension": list(dims), "start_time": start.isoformat(), "end_time": end.isoformat(),
        "period": 60, "statistics": ["Maximum", "SampleCount"]})


def test_group_capacity_is_recorded_and_answered(cloud, five_seconds, monkeypatch):
    user = cloud.account("alice")
    vpc = make_vpc(user)
    sn = make_subnet(user, vpc["vpc_id"], "10.0.1.0/24")["subnet_id"]
    ok(user.post("/v1/launch-templates", json={"launch_template_name": "web",
       "launch_template_data": {"image": "kumo-tiny", "instance_type": "t3.nano"}}), 201)
    ok(user.post("/v1/autoscaling-groups", json={
        "auto_scaling_group_name": "g1", "launch_template": {"launch_template_name": "web"},
        "min_size": 0, "max_size": 3, "desired_capacity": 2, "subnet_ids": [sn]}), 201)
    # A minute-aligned clock (30 s in): every sample below falls in one 60 s period.
    t0 = utcnow().replace(second=30, microsecond=0) - timedelta(minutes=2)
    autoscaling_controller.tick(cloud.db, cloud.settings, t0)   # launches; none in service
    for _ in range(3):
        cloud.tick()
        cloud.heartbeat()
    # Same sample period: the pass does not record twice.
    autoscaling_controller.tick(cloud.db, cloud.settings, t0 + timedelta(seconds=1))
    autoscaling_controller.tick(cloud.db, cloud.settings, t0 + timedelta(seconds=10))
    with cloud.db.session(notify=False) as s:
        rows = list(s.exec(select(MetricDatum).where(
            MetricDatum.metric_name == "GroupDesiredCapacity")))
    assert len(rows) == 2

    start, end = t0 - timedelta(seconds=30), t0 + timedelta(seconds=30)
    [p] = ok(_stats(user, "GroupDesiredCapacity", start, end))["datapoints"]
    assert (p["Maximum"], p["SampleCount"], p["unit"]) == (2, 2, "None")
    [p] = ok(_stats(user, "GroupInServiceInstances", start, end))["datapoints"]
    assert (p["Maximum"], p["SampleCount"]) == (2, 2)  # InService by the second sample
    [p] = ok(_stats(user, "GroupMaxSize", start, end))["datapoints"]
    assert p["Maximum"] == 3
    # Admins see every account's groups; another account sees nothing.
    assert len(ok(_stats(cloud.admin, "GroupDesiredCapacity", start, end))["datapoints"]) == 1
    bob = cloud.account("bob")
    assert ok(_stats(bob, "GroupDesiredCapacity", start, end))["datapoints"] == []

    # Refused: no or another dimension, an instance metric here, a group metric elsewhere.
    err(_stats(user, "GroupDesiredCapacity", start, end, dims=()), 400,
        "InvalidParameterCombination")
    err(_stats(user, "GroupDesiredCapacity", start, end, dims=("InstanceId=i-1",)), 400,
        "InvalidParameterCombination")
    err(_stats(user, "CPUUtilization", start, end), 400, "InvalidParameterValue")
    err(_stats(user, "GroupDesiredCapacity", start, end, namespace="Kumo/EC2"), 400,
        "InvalidParameterValue")
    # The group's instance metrics by the same dimension are unaffected (no group rows).
    assert ok(_stats(user, "CPUUtilization", start, end, namespace="Kumo/EC2"))["datapoints"] == []

    # The default period is EC2's minute; 0 turns recording off.
    monkeypatch.setattr(group_metrics, "PERIOD_S", 60)
    assert group_metrics.record(cloud.db, t0 + timedelta(seconds=120)) == 6
    assert group_metrics.record(cloud.db, t0 + timedelta(seconds=145)) == 0
    assert group_metrics.record(cloud.db, t0 + timedelta(seconds=150)) == 6
    monkeypatch.setattr(group_metrics, "PERIOD_S", 0)
    assert group_metrics.record(cloud.db, t0 + timedelta(seconds=300)) == 0
