"""Target tracking policies and scheduled actions of Auto Scaling groups, on fake agents with
fed metrics (raw CPU samples written as the agents' batches would leave them) and the group
controller's clock driven by hand (autoscaling_controller.tick(now=...)).

What is checked: a load step scales out within one evaluation by ceil(n * cpu / target),
clamped to max; instances still warming up stay out of the average; noisy load around the
target changes nothing; a fall in load scales in only after the sustained period and the
cooldown, never below min; scheduled actions "3 on weekdays, 1 at weekends" in Europe/Berlin
over a week across the DST change; an occurrence fires once however many passes (and
controller restarts: the passes keep no memory, the database does) see it, a missed one fires
within the grace and is skipped after it; refused input changes nothing.
"""
from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import insert

from controller.models.metric import MetricDatum
from controller.services import autoscaling_controller
from tests.functional.fake_agent import Cloud
from tests.functional.test_autoscaling import activities, cli_with_group, group, setup_group
from tests.functional.test_controller_postgres import pg_url, postgres  # noqa: F401 (fixtures)
from tests.functional.vpc_support import err, ok

# After real time (actions start from the time they are put): a Monday before Berlin's DST
# change of Sunday 28 March 2027.
T0 = datetime(2027, 3, 22, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(params=["sqlite", "postgresql"])
def cloud(request, tmp_path):
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    c = Cloud(tmp_path, database_url=url, autoscaling_interval_s=0,
              autoscaling_scale_in_period_s=30, autoscaling_metric_window_s=15,
              autoscaling_schedule_grace_s=300)
    c.image()
    yield c
    c.close()


class Clock:
    def __init__(self, t=T0):
        self.now = t


def step(cloud, clock, seconds: float = 5, agents: bool = True) -> None:
    clock.now += timedelta(seconds=seconds)
    autoscaling_controller.tick(cloud.db, cloud.settings, clock.now)
    if agents:
        for _ in range(3):
            cloud.tick()
            cloud.heartbeat(*cloud.agents.values())


def feed(cloud, clock, cpu: dict[str, float]) -> None:
    """One 5 s sample per instance, ending at the clock's now (what an agent batch stores)."""
    ts = int(clock.now.timestamp() * 1000)
    with cloud.db.session(notify=False) as s:
        s.execute(insert(MetricDatum), [
            {"instance_id": iid, "account_id": "x", "metric_name": "CPUUtilization", "ts": ts,
             "value": float(v), "rolled": False} for iid, v in cpu.items()])


def members(user) -> list[str]:
    return [i["instance_id"] for i in group(user)["instances"]
            if i["lifecycle_state"] in ("Pending", "InService")]


def changes(user) -> list[dict]:
    return [a for a in activities(user) if a["description"].startswith("Changing the desired")]


def test_target_tracking_out_warmup_noise_in(cloud):
    cloud.add_host("h1")
    user = cloud.account("alice")
    clock = Clock()
    setup_group(cloud, user, min_size=1, max_size=3, desired_capacity=1,
                default_instance_warmup=30, default_cooldown=60)
    p = ok(user.put("/v1/autoscaling-groups/g1/policies/cpu50", json={
        "policy_type": "TargetTrackingScaling", "target_tracking_configuration": {
            "predefined_metric_specification": {
                "predefined_metric_type": "ASGAverageCPUUtilization"},
            "target_value": 50}}))
    assert p["policy_arn"].endswith("policyName/cpu50")
    assert [x["policy_name"] for x in ok(user.get("/v1/autoscaling-groups/g1/policies"))] == [
        "cpu50"]
    assert ok(user.get("/v1/autoscaling-groups/g1/policies/cpu50"))["policy_name"] == "cpu50"
    err(user.get("/v1/autoscaling-groups/g1/policies/nope"), 404, "ValidationError")
    for _ in range(3):
        step(cloud, clock)
    first = members(user)
    assert len(first) == 1
    clock.now += timedelta(seconds=60)  # past the first instance's warmup
    for _ in range(3):
        feed(cloud, clock, {first[0]: 20})
        step(cloud, clock)
    assert group(user)["desired_capacity"] == 1  # below target but at min
    # Load step: decided within the 15 s window (here 10 s: two samples), by the formula.
    passes = 0
    while group(user)["desired_capacity"] == 1 and passes < 3:
        feed(cloud, clock, {first[0]: 90})
        step(cloud, clock)
        passes += 1
    assert group(user)["desired_capacity"] == 2 and passes <= 2  # ceil(1 * 90 / 50)
    [c] = changes(user)
    assert "above target 50%" in c["cause"] and "from 1 to 2" in c["cause"]
    # The new instance warms up: its (high) CPU stays out; the ask stays ceil(1 * 100 / 50) = 2
    # (counted in, two at 100% would ask for 4 -> 3).
    second = [i for i in members(user) if i != first[0]]
    for _ in range(4):
        feed(cloud, clock, {first[0]: 100, second[0]: 100})
        step(cloud, clock)
    assert group(user)["desired_capacity"] == 2
    # Warm now: both count, clamped to max 3.
    clock.now += timedelta(seconds=30)
    feed(cloud, clock, {first[0]: 100, second[0]: 100})
    step(cloud, clock)
    assert group(user)["desired_capacity"] == 3
    ids = members(user)
    assert len(ids) == 3
    clock.now += timedelta(seconds=60)  # all warm, out of the cooldown
    # Noise around the target: nothing moves for 5 minutes.
    rnd = random.Random(7)
    for _ in range(60):
        feed(cloud, clock, {i: rnd.uniform(44, 56) for i in ids})
        step(cloud, clock, agents=False)
    assert group(user)["desired_capacity"] == 3 and len(changes(user)) == 2
    # Load falls: not at once, only after the sustained period (30 s), then to the formula.
    seen = []
    for _ in range(12):
        feed(cloud, clock, {i: 5 for i in ids})
        step(cloud, clock, agents=False)
        seen.append(group(user)["desired_capacity"])
    assert seen[:5] == [3] * 5 and seen[-1] == 1, seen
    assert sorted(set(seen)) == [1, 3]  # ceil(3 * 5 / 50) = 1, never below min
    assert len(changes(user)) == 3 and "below target 50%" in changes(user)[-1]["cause"]
    # Scale in is conservative: a later low, at min, changes nothing more.
    for _ in range(10):
        feed(cloud, clock, {i: 1 for i in ids})
        step(cloud, clock, agents=False)
    assert group(user)["desired_capacity"] == 1 and len(changes(user)) == 3
    assert user.delete("/v1/autoscaling-groups/g1/policies/cpu50").status_code == 204
    assert ok(user.get("/v1/autoscaling-groups/g1/policies")) == []


def test_bad_input_changes_nothing(cloud):
    cloud.add_host("h1")
    user = cloud.account("alice")
    bob = cloud.account("bob")
    setup_group(cloud, user, min_size=1, max_size=3, desired_capacity=1)
    good = {"target_tracking_configuration": {"predefined_metric_specification": {
        "predefined_metric_type": "ASGAverageCPUUtilization"}, "target_value": 50}}
    err(user.put("/v1/autoscaling-groups/nope/policies/p", json=good), 404, "ValidationError")
    err(bob.put("/v1/autoscaling-groups/g1/policies/p", json=good), 404, "ValidationError")
    for tv in (0, 101, -5):
        bad = {"target_tracking_configuration": {**good["target_tracking_configuration"],
                                                 "target_value": tv}}
        err(user.put("/v1/autoscaling-groups/g1/policies/p", json=bad), 400, "ValidationError")
    bad = {"target_tracking_configuration": {"predefined_metric_specification": {
        "predefined_metric_type": "ASGAverageNetworkIn"}, "target_value": 50}}
    err(user.put("/v1/autoscaling-groups/g1/policies/p", json=bad), 400, "ValidationError")
    err(user.put("/v1/autoscaling-groups/g1/policies/p", json={**good, "policy_type": "Step"}),
        400, "ValidationError")
    assert ok(user.get("/v1/autoscaling-groups/g1/policies")) == []
    sched = {"recurrence": "0 0 * * 1-5", "time_zone": "Europe/Berlin", "desired_capacity": 2}
    url = "/v1/autoscaling-groups/g1/scheduled-actions/a"
    err(bob.put(url, json=sched), 404, "ValidationError")
    err(user.put("/v1/autoscaling-groups/nope/scheduled-actions/a", json=sched), 404,
        "ValidationError")
    for bad in ({"recurrence": "0 0 * *"}, {"recurrence": "99 0 * * *"},
                {"time_zone": "Mars/Olympus"},
                {"start_time": "2027-01-02T00:00:00Z", "end_time": "2027-01-01T00:00:00Z"},
                {"min_size": 3, "max_size": 2, "desired_capacity": None},
                {"desired_capacity": None}):
        err(user.put(url, json={**sched, **bad}), 400, "ValidationError")
    # One-time actions (no recurrence): a start time is needed, in the future, and no end.
    once = {"desired_capacity": 2, "start_time": "2099-01-01T00:00:00Z"}
    for bad in ({"start_time": None}, {"start_time": "2020-01-01T00:00:00Z"},
                {"end_time": "2099-01-02T00:00:00Z"}):
        err(user.put(url, json={**once, **bad}), 400, "ValidationError")
    assert ok(user.get("/v1/autoscaling-groups/g1/scheduled-actions")) == []
    err(user.delete(url), 404, "ValidationError")
    err(user.delete("/v1/autoscaling-groups/g1/policies/p"), 404, "ValidationError")
    # A group with a policy and an action still deletes (they go with it).
    ok(user.put("/v1/autoscaling-groups/g1/policies/p", json=good))
    ok(user.put(url, json=sched))
    assert user.delete("/v1/autoscaling-groups/g1").status_code == 204


def test_weekdays_and_weekends_across_dst_and_restarts(cloud):
    cloud.add_host("h1", vcpus=64, memory_mib=262144)
    user = cloud.account("alice")
    setup_group(cloud, user, min_size=1, max_size=5, desired_capacity=1)
    url = "/v1/autoscaling-groups/g1/scheduled-actions/"
    wd = ok(user.put(url + "weekdays", json={"recurrence": "0 0 * * 1-5",
                                             "time_zone": "Europe/Berlin",
                                             "desired_capacity": 3}))
    ok(user.put(url + "weekends", json={"recurrence": "0 0 * * 6,0",
                                        "time_zone": "Europe/Berlin", "desired_capacity": 1}))
    assert wd["next_occurrence"] is not None
    clock = Clock()
    seen = []
    for _ in range(8 * 24 * 2):  # a pass every 30 min for 8 days (Mon noon -> next Tue noon)
        step(cloud, clock, 1800, agents=False)
        # A restart between passes: the next pass starts from the database alone, and a
        # second pass at the same instant fires nothing again.
        autoscaling_controller.tick(cloud.db, cloud.settings, clock.now)
        seen.append((clock.now, group(user)["desired_capacity"]))
    fired = [a for a in activities(user) if "scheduled action" in a["cause"]]
    # Tue..Fri midnights -> weekdays (desired 3; it changes only on Tue), Sat, Sun -> 1,
    # Mon, Tue -> 3: 8 occurrences, each once.
    assert len(fired) == 8
    names = [a["cause"].split("scheduled action ")[1].split(" ")[0] for a in fired]
    assert names == ["weekdays"] * 4 + ["weekends"] * 2 + ["weekdays"] * 2
    hours = [datetime.fromisoformat(a["cause"][3:23].replace("Z", "+00:00")).hour
             for a in fired]
    assert hours == [23] * 6 + [22] * 2  # Berlin midnight: CET before the change, CEST after
    by_time = dict(seen)
    assert by_time[datetime(2027, 3, 23, 12, tzinfo=timezone.utc)] == 3  # Tuesday
    assert by_time[datetime(2027, 3, 27, 12, tzinfo=timezone.utc)] == 1  # Saturday
    assert by_time[datetime(2027, 3, 29, 12, tzinfo=timezone.utc)] == 3  # Monday after DST


def test_missed_occurrences_grace_and_skip(cloud):
    cloud.add_host("h1", vcpus=64, memory_mib=262144)
    user = cloud.account("alice")
    setup_group(cloud, user, min_size=0, max_size=5, desired_capacity=0)
    ok(user.put("/v1/autoscaling-groups/g1/scheduled-actions/hourly", json={
        "recurrence": "0 * * * *", "desired_capacity": 2,
        "start_time": "2027-03-22T13:00:00Z", "end_time": "2027-03-22T16:30:00Z"}))
    clock = Clock()  # 12:00
    step(cloud, clock, 1800, agents=False)  # 12:30: before start
    assert group(user)["desired_capacity"] == 0
    # Down from 12:30 to 13:04: the 13:00 occurrence is 4 min late, within the grace: fires.
    step(cloud, clock, 34 * 60, agents=False)
    assert group(user)["desired_capacity"] == 2
    ok(user.post("/v1/autoscaling-groups/g1/desired-capacity", json={"desired_capacity": 1}))
    # Down until 15:30: the 15:00 occurrence is 30 min late: skipped, desired stays 1.
    step(cloud, clock, (2 * 60 + 26) * 60, agents=False)
    assert group(user)["desired_capacity"] == 1
    assert any(a["status_code"] == "Cancelled" and "missed" in a["cause"]
               for a in activities(user))
    step(cloud, clock, 31 * 60, agents=False)  # 16:01: fires
    assert group(user)["desired_capacity"] == 2
    ok(user.post("/v1/autoscaling-groups/g1/desired-capacity", json={"desired_capacity": 1}))
    step(cloud, clock, 60 * 60, agents=False)  # 17:01: after end_time
    assert group(user)["desired_capacity"] == 1
    [a] = ok(user.get("/v1/autoscaling-groups/g1/scheduled-actions"))
    # (next_occurrence follows the real clock: the fake one is ahead; here: start_time's.)
    assert a["next_occurrence"].startswith("2027-03-22T13:00")
    assert a["last_occurrence"].startswith("2027-03-22T16:00")
    assert user.delete("/v1/autoscaling-groups/g1/scheduled-actions/hourly").status_code == 204


def test_one_time_action_fires_once_and_is_deleted(cloud):
    """EC2's StartTime without Recurrence: nothing before the start, fires at the first pass
    after it (once, however many passes), then the action is gone; a late one beyond the grace
    is skipped (a Cancelled activity) and gone too."""
    cloud.add_host("h1", vcpus=64, memory_mib=262144)
    user = cloud.account("alice")
    setup_group(cloud, user, min_size=0, max_size=5, desired_capacity=0)
    url = "/v1/autoscaling-groups/g1/scheduled-actions/"
    a = ok(user.put(url + "once", json={"desired_capacity": 2,
                                        "start_time": "2027-03-22T12:10:00Z"}))
    assert a["recurrence"] is None and a["next_occurrence"].startswith("2027-03-22T12:10")
    ok(user.put(url + "late", json={"desired_capacity": 4, "time_zone": "Europe/Berlin",
                                    "start_time": "2027-03-22T12:20:00Z"}))
    clock = Clock()  # 12:00
    step(cloud, clock, 300, agents=False)  # 12:05: before the start
    assert group(user)["desired_capacity"] == 0
    assert len(ok(user.get(url[:-1]))) == 2
    step(cloud, clock, 360, agents=False)  # 12:11: fires
    autoscaling_controller.tick(cloud.db, cloud.settings, clock.now)  # again: nothing more
    assert group(user)["desired_capacity"] == 2
    fired = [x for x in activities(user) if "scheduled action once" in x["cause"]]
    assert len(fired) == 1 and fired[0]["cause"].startswith("At 2027-03-22T12:10:00Z")
    assert [x["scheduled_action_name"] for x in ok(user.get(url[:-1]))] == ["late"]
    # Down from 12:11 to 12:30: "late" (12:20) is 10 min late, beyond the 300 s grace.
    step(cloud, clock, 19 * 60, agents=False)
    assert group(user)["desired_capacity"] == 2
    assert any(x["status_code"] == "Cancelled" and "late" in x["description"]
               for x in activities(user))
    assert ok(user.get(url[:-1])) == []
    step(cloud, clock, 3600, agents=False)
    assert group(user)["desired_capacity"] == 2


def test_cli(cloud):
    """`kumo autoscaling-groups put-policy|policies|...|scheduled-actions` drive the same API."""
    kumo, run = cli_with_group(cloud)
    p = run("autoscaling-groups", "put-policy", "g1", "cpu", "--target", "50",
            "--scale-in-period", "20")
    assert (p["target_tracking_configuration"]["target_value"], p["scale_in_period"]) == (50, 20)
    assert [x["policy_name"] for x in run("autoscaling-groups", "policies", "g1")["items"]] == [
        "cpu"]
    r = kumo("autoscaling-groups", "put-policy", "g1", "bad", "--target", "150")
    assert r.exit_code != 0 and "ValidationError" in r.output
    a = run("autoscaling-groups", "put-scheduled-action", "g1", "wd", "--recurrence",
            "0 0 * * 1-5", "--time-zone", "Europe/Berlin", "--desired", "3")
    assert a["desired_capacity"] == 3 and a["next_occurrence"]
    r = kumo("autoscaling-groups", "put-scheduled-action", "g1", "x", "--recurrence", "0 0 *",
             "--desired", "1")
    assert r.exit_code != 0 and "ValidationError" in r.output
    once = run("autoscaling-groups", "put-scheduled-action", "g1", "once", "--start-time",
               "2099-01-01T00:00:00Z", "--desired", "2")
    assert (once["recurrence"], once["next_occurrence"][:10]) == (None, "2099-01-01")
    r = kumo("autoscaling-groups", "put-scheduled-action", "g1", "y", "--desired", "1")
    assert r.exit_code != 0 and "ValidationError" in r.output  # neither recurrence nor start
    assert kumo("autoscaling-groups", "delete-scheduled-action", "g1", "once").exit_code == 0
    assert len(run("autoscaling-groups", "scheduled-actions", "g1")["items"]) == 1
    assert kumo("autoscaling-groups", "delete-scheduled-action", "g1", "wd").exit_code == 0
    assert kumo("autoscaling-groups", "delete-policy", "g1", "cpu").exit_code == 0
    assert run("autoscaling-groups", "policies", "g1")["items"] == []
