"""Pure parts of the metrics pipeline: counter deltas and samples, the agent's bounded buffer
and batching, the rollup arithmetic, and CloudWatch-style parameter validation."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from agent.contract.metrics_v1 import MetricSample
from agent.drivers.stats import DiskCounters, DomainStats, NicCounters, counter_deltas
from agent.metrics import Sampler, SampleBuffer, to_sample
from agent.settings import AgentSettings
from controller.errors import InvalidParameter
from controller.services.metric_rollup import rollup_rows
from controller.services.metrics import Bucket, parse_query
from controller.settings import Settings

IID = "i-0123456789abcdef0"


def stats(t, cpu_ns, *, run=1, rx=0, tx=0, rd=0, wr=0, disks=("vda",), name=IID, vcpus=2):
    return DomainStats(name, True, run, cpu_ns, vcpus,
                       (NicCounters("tap0", rx_bytes=rx, rx_packets=rx // 100, tx_bytes=tx,
                                    tx_packets=tx // 100),),
                       tuple(DiskCounters(d, read_bytes=rd, read_requests=rd // 512,
                                          write_bytes=wr, write_requests=wr // 512)
                             for d in disks), t, 1_000_000 + t)


def test_sample_of_two_samples_of_one_run():
    s = to_sample(stats(10.0, 0), stats(15.0, 5 * 10**9, rx=1000, tx=500, rd=1024, wr=2048))
    assert s.interval == 5.0 and s.timestamp == 1_000_015.0
    v = s.values
    assert v["CPUUtilization"] == 50.0  # 5 s of CPU over 5 s x 2 vCPUs
    assert (v["NetworkIn"], v["NetworkOut"], v["NetworkPacketsIn"], v["NetworkPacketsOut"]) == \
        (1000, 500, 10, 5)
    assert (v["DiskReadBytes"], v["DiskWriteBytes"], v["DiskReadOps"], v["DiskWriteOps"]) == \
        (1024, 2048, 2, 4)


def test_no_sample_across_a_restart_or_for_foreign_domains():
    assert to_sample(stats(10.0, 9 * 10**9), stats(15.0, 10**9, run=2)) is None
    assert to_sample(stats(10.0, 0, name="other"), stats(15.0, 1, name="other")) is None
    assert to_sample(stats(10.0, 0), stats(10.0, 0)) is None  # no time elapsed


def test_hotplugged_disk_counts_from_zero():
    d = counter_deltas(stats(0.0, 0, rd=100), stats(1.0, 0, rd=300, disks=("vda", "vdb")))
    assert d.disk_read_bytes == 200 + 300


def sample(i: int) -> MetricSample:
    return MetricSample(instance_id=IID, timestamp=float(i), interval=5.0,
                        values={"CPUUtilization": float(i)})


def test_buffer_drops_oldest_first_and_counts():
    b = SampleBuffer(3)
    for i in range(5):
        b.add(sample(i))
    assert len(b) == 3 and b.dropped == 2
    batch = b.peek(2)
    assert [s.timestamp for s in batch] == [2.0, 3.0]
    b.add(sample(5))  # overflow while the batch is in flight: drops sample 2
    b.remove(batch)   # only what is still at the head goes
    assert [s.timestamp for s in b.peek(10)] == [4.0, 5.0] and b.dropped == 3


def test_sampler_keeps_samples_while_the_controller_is_away_and_batches_bounded():
    up = {"ok": False}
    bodies = []

    def handle(request: httpx.Request) -> httpx.Response:
        if not up["ok"]:
            return httpx.Response(503, json={})
        body = json.loads(request.content)
        bodies.append(body)
        return httpx.Response(200, json={"accepted": len(body["samples"]), "rejected": 0})

    settings = AgentSettings(host_id="h1", controller_url="http://c.test", token="t",
                             metrics_buffer_samples=5, metrics_batch_samples=2)
    sampler = Sampler(settings, hypervisor=None, client_factory=lambda: httpx.Client(
        base_url="http://c.test", transport=httpx.MockTransport(handle)))
    for i in range(7):
        sampler.buffer.add(sample(i))
    with pytest.raises(httpx.HTTPStatusError):
        sampler.flush()
    assert len(sampler.buffer) == 5  # nothing lost by a failed POST
    up["ok"] = True
    assert sampler.flush() == 5
    assert [len(b["samples"]) for b in bodies] == [2, 2, 1]
    assert all(b["dropped_total"] == 2 for b in bodies)
    assert bodies[0]["samples"][0]["timestamp"] == 2.0 and len(sampler.buffer) == 0


def test_rollup_arithmetic_per_minute():
    rows = [(IID, "acc", "CPUUtilization", 60_000 + 5_000, 10.0),
            (IID, "acc", "CPUUtilization", 60_000 + 55_000, 30.0),
            (IID, "acc", "CPUUtilization", 120_000, 7.0),
            (IID, "acc", "NetworkIn", 60_001, 100.0)]
    out = rollup_rows(rows)
    assert out[(IID, "CPUUtilization", 60_000)] == ["acc", 2, 40.0, 10.0, 30.0]
    assert out[(IID, "CPUUtilization", 120_000)] == ["acc", 1, 7.0, 7.0, 7.0]
    assert out[(IID, "NetworkIn", 60_000)] == ["acc", 1, 100.0, 100.0, 100.0]
    b = Bucket()
    b.merge(2, 40.0, 10.0, 30.0)
    b.merge(1, 7.0, 7.0, 7.0)
    assert (b.statistic("Average"), b.statistic("Minimum"), b.statistic("Maximum"),
            b.statistic("Sum"), b.statistic("SampleCount")) == (47.0 / 3, 7.0, 30.0, 47.0, 3.0)


NOW = datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)
NOW_MS = int(NOW.timestamp() * 1000)


def q(**kw):
    base = dict(namespace="Kumo/EC2", metric_name="CPUUtilization",
                dimensions=[f"InstanceId={IID}"], start_time=NOW - timedelta(minutes=10),
                end_time=NOW, period=60, statistics=["Average,Maximum"])
    base.update(kw)
    return parse_query(Settings(), now_ms=NOW_MS, **base)


def code_of(**kw) -> str:
    with pytest.raises(InvalidParameter) as e:
        q(**kw)
    assert e.value.status == 400
    return e.value.code


def test_valid_queries():
    r = q()
    assert r.statistics == ("Average", "Maximum") and not r.from_rollups
    assert r.dimension == ("InstanceId", IID)
    assert q(period=5).period_s == 5  # raw range: multiples of the sample period
    old = q(start_time=NOW - timedelta(days=2, seconds=17), period=3600)
    assert old.from_rollups and old.start_ms % 60_000 == 0  # rounded down to the minute
    assert q(dimensions=None).dimension is None  # every visible instance


@pytest.mark.parametrize("kw,code", [
    (dict(namespace=None), "MissingParameter"),
    (dict(metric_name=""), "MissingParameter"),
    (dict(period=None), "MissingParameter"),
    (dict(statistics=None), "MissingParameter"),
    (dict(namespace="AWS/S3"), "InvalidParameterValue"),
    (dict(metric_name="Nope"), "InvalidParameterValue"),
    (dict(statistics=["p99"]), "InvalidParameterValue"),
    (dict(dimensions=["InstanceId"]), "InvalidParameterValue"),
    (dict(dimensions=["Bucket=x"]), "InvalidParameterValue"),
    (dict(dimensions=[f"InstanceId={IID}", f"InstanceId={IID}"]), "InvalidParameterCombination"),
    (dict(period=0), "InvalidParameterValue"),
    (dict(period=7), "InvalidParameterValue"),
    (dict(start_time=NOW, end_time=NOW), "InvalidParameterValue"),
    (dict(start_time=NOW - timedelta(days=1), period=30), "InvalidParameterCombination"),
    (dict(start_time=NOW - timedelta(hours=3, minutes=-1), period=5),
     "InvalidParameterCombination"),  # 2159 datapoints > 1440
])
def test_invalid_queries(kw, code):
    assert code_of(**kw) == code
