"""The metrics pipeline end to end on fake drivers: the agent's sampler over a FakeHypervisor
(fake clocks) -> the controller's ingest -> the statistics API; rollup and retention with a
fake clock; account scoping; refused input changing nothing; /metrics parsed as Prometheus."""
from __future__ import annotations

import time
from contextlib import ExitStack
from datetime import datetime, timezone

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from agent.metrics import Sampler
from controller.models.metric import MetricDatum, MetricRollup
from controller.services.metric_rollup import maintain
from tests.functional import fake_agent
from tests.functional.test_agent_with_controller import RealCloud, wait_for
from tests.functional.test_controller_postgres import pg_url, postgres  # noqa: F401 (fixtures)

# The fake clocks' wall time at t=3600 is 5 s before a whole minute M about two hours ago
# (inside raw retention), so the two minutes of samples fall in minutes M and M+60.
MINUTE_M = int(time.time() // 60 * 60) - 7200
BASE_WALL = MINUTE_M - 5 - 3600.0


class Clock:
    def __init__(self):
        self.t = 0.0

    def mono(self) -> float:
        return self.t

    def wall(self) -> float:
        return BASE_WALL + self.t


class MetricsCloud(RealCloud):
    """RealCloud with settings overrides (the database URL)."""

    def __init__(self, tmp_path, **overrides):
        self.stack = ExitStack()
        fake_agent.Cloud.__init__(self, tmp_path, **overrides)


@pytest.fixture(params=["sqlite", "postgresql"])
def cloud(request, tmp_path):
    # PostgreSQL too: statistics bucket by integer division inside the database.
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    c = MetricsCloud(tmp_path, database_url=url)
    c.image()
    yield c
    c.close()


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def setup_running(cloud, clock):
    agent = cloud.add_host("host-1")
    agent.hv._clock, agent.hv._wall = clock.mono, clock.wall
    alice, bob = cloud.account("alice"), cloud.account("bob")
    iid = cloud.launch(alice)
    cloud.tick()
    wait_for(lambda: agent.observed(iid).power == "running")
    cloud.converge()
    agent.settings.controller_url = "http://controller.test"
    sampler = Sampler(agent.settings, agent.hv, client_factory=lambda: cloud.agent_client)
    return agent, alice, bob, iid, sampler


def stats_of(client, iid, start, end, period=60, stats="Average,Maximum,Minimum,SampleCount",
             metric="CPUUtilization", **extra):
    params = {"namespace": "Kumo/EC2", "metric_name": metric, "dimension": f"InstanceId={iid}",
              "start_time": iso(start), "end_time": iso(end), "period": period,
              "statistics": stats, **extra}
    return client.get("/v1/metrics/statistics", params=params)


def run_samples(agent, sampler, clock, iid, load, seconds, step=5.0):
    agent.hv.set_cpu_load(iid, load)
    for _ in range(int(seconds / step)):
        clock.t += step
        sampler.tick()
    assert sampler.last_error is None, sampler.last_error


def test_sampler_to_statistics_with_rollup_and_retention(cloud, monkeypatch):
    clock = Clock()
    clock.t = 3600.0
    agent, alice, bob, iid, sampler = setup_running(cloud, clock)
    sampler.sample_once()  # the first sample of the run: no interval yet
    t0 = clock.wall()
    run_samples(agent, sampler, clock, iid, 0.25, 60)
    agent.hv.traffic(iid, agent.hv.stats([iid])[0].nics[0].device, rx_bytes=6000, rx_packets=6)
    run_samples(agent, sampler, clock, iid, 0.75, 60)
    t2 = clock.wall()
    assert sampler.sent == 24 and len(sampler.buffer) == 0

    # Raw statistics, one datapoint per minute (the fake guest has 1 vCPU at 25 % then 75 %).
    t0, t2 = t0 + 5, t2 + 5  # = minute M and M+120
    now_ms = int(time.time() * 1000)
    from controller.services import metrics as svc
    # raw statistics: the real clock (the samples are ~2 h old)
    r = stats_of(alice, iid, t0, t2)
    assert r.status_code == 200, r.text
    points = r.json()["datapoints"]
    assert [p["SampleCount"] for p in points] == [12, 12]
    assert points[0]["Average"] == pytest.approx(25.0, abs=0.01)
    assert points[1]["Maximum"] == pytest.approx(75.0, abs=0.01)
    assert points[0]["unit"] == "Percent"
    net = stats_of(alice, iid, t0, t2, period=120, stats="Sum", metric="NetworkIn").json()
    assert net["datapoints"][0]["Sum"] == 6000
    # Another account sees nothing of alice's instance; the admin sees it.
    assert stats_of(bob, iid, t0, t2).json()["datapoints"] == []
    assert len(stats_of(cloud.admin, iid, t0, t2).json()["datapoints"]) == 2
    # No dimension: every instance the caller may see (bob has none).
    r = bob.get("/v1/metrics/statistics", params={
        "namespace": "Kumo/EC2", "metric_name": "CPUUtilization", "start_time": iso(t0),
        "end_time": iso(t2), "period": 120, "statistics": "SampleCount"})
    assert r.json()["datapoints"] == []

    # Rollup, bounded passes (10 rows each), then retention on a fake clock.
    db, settings = cloud.db, cloud.settings
    settings.metrics_pass_rows = 10
    passes = 0
    while maintain(db, settings, now_ms).rolled:
        passes += 1
    assert passes == 22  # 24 samples x 9 metrics = 216 raw rows, 10 a pass
    with db.session() as s:
        assert s.execute(select(func.count()).select_from(MetricRollup)
                         .where(MetricRollup.metric_name == "CPUUtilization")).scalar() == 2
    later = now_ms + (settings.metrics_raw_retention_s + 60) * 1000
    while maintain(db, settings, later).raw_deleted:
        pass
    with db.session() as s:
        assert s.execute(select(func.count()).select_from(MetricDatum)).scalar() == 0
    monkeypatch.setattr(svc, "_now_ms", lambda: later)
    # Answered from the rollups now: the same statistics.
    points = stats_of(alice, iid, t0, t2).json()["datapoints"]
    assert [p["SampleCount"] for p in points] == [12, 12]
    assert points[0]["Average"] == pytest.approx(25.0, abs=0.01)
    assert points[1]["Minimum"] == pytest.approx(75.0, abs=0.01)
    r = stats_of(alice, iid, t0, t2, period=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "InvalidParameterCombination"
    end = later + (settings.metrics_rollup_retention_s + 60) * 1000
    while maintain(db, settings, end).rollups_deleted:
        pass
    with db.session() as s:
        assert s.execute(select(func.count()).select_from(MetricRollup)).scalar() == 0


def test_ingest_refuses_unknown_instances_and_bad_batches(cloud):
    clock = Clock()
    agent, alice, bob, iid, sampler = setup_running(cloud, clock)
    good = {"host_id": "host-1", "dropped_total": 3, "sent_at": 0.0,
            "samples": [{"instance_id": iid, "timestamp": time.time(),
                         "interval": 5.0, "values": {"CPUUtilization": 12.5}},
                        {"instance_id": "i-00000000000000000", "timestamp": 1.0,
                         "interval": 5.0, "values": {"CPUUtilization": 1.0}}]}
    assert cloud.client("wrong").post("/v1/agent/metrics", json=good).status_code == 401
    assert alice.post("/v1/agent/metrics", json=good).status_code == 401  # users are not agents
    for bad in ({**good, "samples": [{**good["samples"][0], "values": {"Nope": 1.0}}]},
                {**good, "samples": [{**good["samples"][0], "values": {"CPUUtilization": -1}}]},
                {**good, "samples": [good["samples"][0]] * 1001},
                {**good, "extra": 1}):
        r = cloud.agent_client.post("/v1/agent/metrics", json=bad)
        assert r.status_code == 400, r.text
    with cloud.db.session() as s:
        assert s.execute(select(func.count()).select_from(MetricDatum)).scalar() == 0
    r = cloud.agent_client.post("/v1/agent/metrics", json=good)
    assert r.status_code == 200 and r.json() == {"accepted": 1, "rejected": 1}
    with cloud.db.session() as s:
        assert s.execute(select(MetricDatum.account_id)).scalars().all() != []

    # Refused statistics requests: 400 with CloudWatch's codes.
    now = time.time()
    for extra, code in ((dict(period=7), "InvalidParameterValue"),
                        (dict(statistics="p99"), "InvalidParameterValue"),
                        (dict(namespace="AWS/S3"), "InvalidParameterValue"),
                        (dict(period=5, start_time=iso(now - 3 * 3600 + 60)),
                         "InvalidParameterCombination"),
                        (dict(period="abc"), "InvalidParameterValue")):
        r = stats_of(alice, iid, now - 600, now, **extra)
        assert r.status_code == 400 and r.json()["error"]["code"] == code, (extra, r.text)
    r = alice.get("/v1/metrics/statistics", params={"namespace": "Kumo/EC2"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "MissingParameter"
    assert cloud.client(None).get("/v1/metrics/statistics").status_code == 401


def test_prometheus_metrics(cloud):
    clock = Clock()
    agent, alice, bob, iid, sampler = setup_running(cloud, clock)
    cloud.add_host("host-2")
    cloud.launch(bob)  # pending: no host took it yet
    batch = {"host_id": "host-1", "dropped_total": 7, "sent_at": 0.0,
             "samples": [{"instance_id": iid, "timestamp": time.time(),
                          "interval": 5.0, "values": {"CPUUtilization": 3.0}}]}
    assert cloud.agent_client.post("/v1/agent/metrics", json=batch).status_code == 200
    assert alice.get("/metrics").status_code == 403
    r = cloud.admin.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    fams = {f.name: f for f in text_string_to_metric_families(r.text)}

    def value(name, **labels):
        return next(s.value for s in fams[name].samples
                    if all(s.labels.get(k) == v for k, v in labels.items())
                    and not s.name.endswith("_created"))

    assert value("kumo_hosts", state="up") == 2 and value("kumo_hosts", state="down") == 0
    assert value("kumo_host_up", host_id="host-1") == 1
    assert value("kumo_instances", state="running") == 1
    assert value("kumo_instances", state="pending") == 1
    assert value("kumo_reconcile_pending_instances") >= 1  # bob's not pushed yet
    assert value("kumo_reconcile_lag_seconds") >= 0
    assert value("kumo_metric_samples_ingested") == 1
    assert value("kumo_agent_metric_samples_dropped", host_id="host-1") == 7


def test_cli_metrics_statistics(cloud):
    from tests.functional.test_cli_volumes import Kumo
    clock = Clock()
    agent, alice, bob, iid, sampler = setup_running(cloud, clock)
    now = time.time()
    batch = {"host_id": "host-1", "dropped_total": 0, "sent_at": now, "samples": [
        {"instance_id": iid, "timestamp": now - 20 + i * 5, "interval": 5.0,
         "values": {"CPUUtilization": v}} for i, v in enumerate((10.0, 30.0))]}
    assert cloud.agent_client.post("/v1/agent/metrics", json=batch).json()["accepted"] == 2
    kumo = Kumo(cloud)
    out = kumo("metrics", "statistics", "--instance", iid, "--start", "-10m", "--period", "600",
               "--statistics", "Average,SampleCount,Maximum")
    assert out["label"] == "CPUUtilization"
    assert [(p["Average"], p["SampleCount"], p["Maximum"]) for p in out["datapoints"]] == \
        [(20.0, 2.0, 30.0)]
    r = kumo.invoke("metrics", "statistics", "--instance", iid, "--start", "-10m", output="table")
    assert r.exit_code == 0 and "AVERAGE" in r.stdout, r.output
    r = kumo.invoke("metrics", "statistics", "--period", "7", "--start", "-10m")
    assert r.exit_code == 1 and "error: InvalidParameterValue" in r.output
    r = kumo.invoke("metrics", "statistics", "--start", "yesterday")
    assert r.exit_code == 1 and "error: InvalidParameterValue" in r.output
