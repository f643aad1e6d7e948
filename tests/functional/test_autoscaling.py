"""Launch templates and Auto Scaling groups on fake agents, on SQLite and PostgreSQL, with the
group controller's clock driven by hand (controller/services/autoscaling_controller.py
tick(now=...)).

What is checked: templates (versions, $Default/$Latest, overrides, validation as `instances
run`, deletes); a group launches its desired capacity spread over its subnets and hosts,
InService once running, tags propagated; scale out/in by hand following the termination policy
and scale-in protection; replacement of an instance terminated outside the group (at once) and
of one impaired, whose domain died or whose host went down (after the grace period); a
controller restarted mid-launch neither duplicates nor loses the launch; failed launches
(InsufficientInstanceCapacity) are Failed activities retried with backoff, never past max;
refused input changes nothing; delete with and without force; the CLI.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlmodel import select

from controller.ids import utcnow
from controller.models import AutoScalingGroup, Host, Instance, ScalingActivity
from controller.services import autoscaling_controller, instances as instance_service
from tests.functional.fake_agent import Cloud
from tests.functional.test_controller_postgres import pg_url, postgres  # noqa: F401 (fixtures)
from tests.functional.vpc_support import err, make_subnet, make_vpc, ok

T0 = datetime(2026, 12, 7, 9, 0, tzinfo=timezone.utc)


@pytest.fixture(params=["sqlite", "postgresql"])
def cloud(request, tmp_path):
    # PostgreSQL too: JSON columns, the pass's queries and the client-token replay.
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    c = Cloud(tmp_path, database_url=url, autoscaling_interval_s=0,
              autoscaling_backoff_base_s=10, autoscaling_backoff_max_s=60)
    c.image()
    yield c
    c.close()


class Clock:
    def __init__(self):
        self.now = T0

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def step(cloud, clock, seconds: float = 1) -> dict:
    """Advance the clock, run one group pass, let the agents act on it."""
    stats = autoscaling_controller.tick(cloud.db, cloud.settings, clock.advance(seconds))
    for _ in range(3):  # converge, with the agents that can answer
        cloud.tick()
        cloud.heartbeat(*[a for a in cloud.agents.values() if not a.unreachable])
    return stats


def template(user, name="web", **data) -> dict:
    data = {"image": "kumo-tiny", "instance_type": "t3.nano", **data}
    return ok(user.post("/v1/launch-templates", json={"launch_template_name": name,
                                                      "launch_template_data": data}), 201)


def cli_with_group(cloud):
    """A host, a new account's CLI, a template "web" and a group "g1" (min 1, max 3) made
    through it. -> (kumo, run) as vpc_support.cli_for_new_account gives them."""
    from tests.functional.vpc_support import cli_for_new_account
    cloud.add_host("h1")
    kumo, run = cli_for_new_account(cloud)
    run("launch-templates", "create", "web", "--image", "kumo-tiny", "--type", "t3.nano")
    sn = run("subnets", "list")["items"][0]["subnet_id"]
    run("autoscaling-groups", "create", "g1", "--template", "web", "--subnet", sn,
        "--min", "1", "--max", "3")
    return kumo, run


def setup_group(cloud, user, *, subnets=2, **group) -> tuple[dict, list[str]]:
    vpc = make_vpc(user)
    sns = [make_subnet(user, vpc["vpc_id"], f"10.0.{i}.0/24")["subnet_id"]
           for i in range(subnets)]
    template(user)
    body = {"auto_scaling_group_name": "g1", "launch_template": {"launch_template_name": "web"},
            "min_size": 1, "max_size": 3, "desired_capacity": 2, "subnet_ids": sns,
            "health_check_grace_period": 60, **group}
    return ok(user.post("/v1/autoscaling-groups", json=body), 201), sns


def group(user, name="g1") -> dict:
    return ok(user.get(f"/v1/autoscaling-groups/{name}"))


def activities(user, name="g1") -> list[dict]:
    return ok(user.get(f"/v1/autoscaling-groups/{name}/activities",
                       params={"max_results": 1000}))["items"]


def live_instances(cloud) -> list[Instance]:
    with cloud.db.session(notify=False) as s:
        return list(s.exec(select(Instance).where(Instance.state.not_in(
            ("shutting-down", "terminated")))))


def in_service(user) -> list[dict]:
    return [i for i in group(user)["instances"] if i["lifecycle_state"] == "InService"]


# -- launch templates ----------------------------------------------------------------------------
def test_launch_template_versions(cloud):
    user = cloud.account("alice")
    lt = template(user, user_data="aGk=", tags={"app": "web"})
    assert (lt["default_version_number"], lt["latest_version_number"]) == (1, 1)
    tid = lt["launch_template_id"]
    v2 = ok(user.post(f"/v1/launch-templates/{tid}/versions", json={
        "source_version": "$Latest", "version_description": "bigger",
        "launch_template_data": {"root_disk_gib": 2}}), 201)
    assert v2["version_number"] == 2 and not v2["default_version"]
    data = v2["launch_template_data"]
    assert (data["root_disk_gib"], data["user_data"], data["tags"]) == (2, "aGk=", {"app": "web"})
    # Without a source the data is whole (and checked whole).
    err(user.post("/v1/launch-templates/web/versions", json={"launch_template_data": {
        "root_disk_gib": 2}}), 400, "InvalidParameterValue")
    assert ok(user.patch("/v1/launch-templates/web", json={"default_version": "$Latest"})
              )["default_version_number"] == 2
    page = ok(user.get(f"/v1/launch-templates/{tid}/versions", params={"versions": "1,$Default"}))
    assert [v["version_number"] for v in page["items"]] == [1, 2]
    assert [v["default_version"] for v in page["items"]] == [False, True]
    err(user.delete(f"/v1/launch-templates/{tid}/versions/2"), 409,
        "InvalidLaunchTemplateVersion.DefaultVersion")
    assert user.delete(f"/v1/launch-templates/{tid}/versions/1").status_code == 204
    err(user.patch("/v1/launch-templates/web", json={"default_version": "1"}), 404,
        "InvalidLaunchTemplateId.VersionNotFound")
    # Names are unique per account, not across accounts.
    err(user.post("/v1/launch-templates", json={"launch_template_name": "web",
                                                "launch_template_data": {
                                                    "image": "kumo-tiny",
                                                    "instance_type": "t3.nano"}}),
        409, "InvalidLaunchTemplateName.AlreadyExistsException")
    bob = cloud.account("bob")
    template(bob)
    err(bob.get(f"/v1/launch-templates/{tid}"), 404, "InvalidLaunchTemplateId.NotFound")
    assert [t["launch_template_name"] for t in ok(user.get(
        "/v1/launch-templates", params={"launch-template-name": "web"}))["items"]] == ["web"]
    assert user.delete("/v1/launch-templates/web").status_code == 204
    err(user.get("/v1/launch-templates/web"), 404,
        "InvalidLaunchTemplateName.NotFoundException")


@pytest.mark.parametrize("bad", [{"image": "nope"}, {"instance_type": "zz.huge"},
                                 {"key_name": "nokey"}, {"security_group_ids": ["sg-0"]},
                                 {"subnet_id": "subnet-0"}, {"user_data": "%%%"},
                                 {"tags": {"kumo:x": "y"}}])
def test_template_validated_as_a_launch(cloud, bad):
    """The same status and code `instances run` answers; nothing is created."""
    cloud.add_host("h1")
    user = cloud.account("alice")
    want = cloud.run(user, **bad)
    assert want.status_code >= 400
    data = {"image": "kumo-tiny", "instance_type": "t3.nano", **bad}
    r = user.post("/v1/launch-templates", json={"launch_template_name": "web",
                                                "launch_template_data": data})
    assert (r.status_code, r.json()["error"]["code"]) == (want.status_code,
                                                          want.json()["error"]["code"])
    assert ok(user.get("/v1/launch-templates"))["items"] == []


# -- groups --------------------------------------------------------------------------------------
def test_group_launches_desired_capacity_spread_and_in_service(cloud):
    cloud.add_host("h1"), cloud.add_host("h2")
    user = cloud.account("alice")
    clock = Clock()
    g, sns = setup_group(cloud, user, tags={"team": "blue"})
    assert g["desired_capacity"] == 2 and g["instances"] == []
    stats = step(cloud, clock)
    assert stats["launched"] == 2
    members = group(user)["instances"]
    assert sorted(m["subnet_id"] for m in members) == sorted(sns)  # one per subnet
    assert {m["launch_template_version"] for m in members} == {1}
    step(cloud, clock)
    assert len(in_service(user)) == 2
    insts = live_instances(cloud)
    assert len(insts) == 2 and {i.host_id for i in insts} == {"h1", "h2"}
    for i in insts:
        assert i.state == "running"
        assert i.tags == {"team": "blue", "aws:autoscaling:groupName": "g1"}
    acts = activities(user)
    assert [a["status_code"] for a in acts] == ["Successful"] * 2
    assert all(a["description"].startswith("Launching a new EC2 instance: i-") for a in acts)
    # Nothing more to do: a pass changes nothing.
    assert step(cloud, clock) == {"launched": 0, "terminated": 0, "failed": 0, "errors": 0}
    # The group's name is a metrics dimension.
    r = user.get("/v1/metrics/statistics", params={
        "namespace": "Kumo/EC2", "metric_name": "CPUUtilization",
        "dimension": "AutoScalingGroupName=g1", "start_time": "2026-12-07T08:00:00Z",
        "end_time": "2026-12-07T09:00:00Z", "period": 60, "statistics": "Average"})
    assert r.status_code == 200, r.text


def test_set_desired_scale_out_and_in_with_policy_and_protection(cloud):
    cloud.add_host("h1")
    user = cloud.account("alice")
    clock = Clock()
    setup_group(cloud, user, desired_capacity=1, max_size=4)
    step(cloud, clock)
    first = group(user)["instances"][0]["instance_id"]
    ok(user.post("/v1/autoscaling-groups/g1/desired-capacity", json={"desired_capacity": 3}))
    step(cloud, clock, 10)
    step(cloud, clock)
    members = group(user)["instances"]
    assert len(members) == 3 and len(in_service(user)) == 3
    by_subnet: dict[str, list[str]] = {}
    for m in members:
        by_subnet.setdefault(m["subnet_id"], []).append(m["instance_id"])
    crowded = next(ids for ids in by_subnet.values() if len(ids) == 2)
    assert first in crowded
    # Default policy: the crowded subnet first, then the oldest instance there: `first`.
    ok(user.post("/v1/autoscaling-groups/g1/desired-capacity", json={"desired_capacity": 2}))
    step(cloud, clock)
    step(cloud, clock)
    ids = {m["instance_id"] for m in group(user)["instances"]}
    assert first not in ids and len(ids) == 2
    assert all(m["lifecycle_state"] == "InService" for m in group(user)["instances"])
    term = [a for a in activities(user) if a["description"].startswith("Terminating")]
    assert [a["instance_id"] for a in term] == [first] and term[0]["status_code"] == "Successful"
    # Protected from scale in: the other one goes, even though the protected one is older.
    older, newer = sorted(group(user)["instances"], key=lambda m: m["launch_time"])
    ok(user.post("/v1/autoscaling-groups/g1/instance-protection", json={
        "instance_ids": [older["instance_id"]], "protected_from_scale_in": True}))
    ok(user.patch("/v1/autoscaling-groups/g1", json={"termination_policies": ["NewestInstance"],
                                                     "min_size": 0}))
    ok(user.post("/v1/autoscaling-groups/g1/desired-capacity", json={"desired_capacity": 0}))
    step(cloud, clock)
    step(cloud, clock)
    left = group(user)["instances"]
    assert [m["instance_id"] for m in left] == [older["instance_id"]]
    assert left[0]["protected_from_scale_in"]
    err(user.post("/v1/autoscaling-groups/g1/desired-capacity", json={"desired_capacity": 5}),
        400, "ValidationError")
    assert group(user)["desired_capacity"] == 0


def test_replacement_of_terminated_and_impaired_instances(cloud):
    h1 = cloud.add_host("h1")
    user = cloud.account("alice")
    clock = Clock()
    setup_group(cloud, user, desired_capacity=2, health_check_grace_period=60)
    step(cloud, clock)
    step(cloud, clock)
    a, b = (m["instance_id"] for m in group(user)["instances"])
    # Terminated outside the group: replaced at the next pass, grace period or not.
    ok(user.post(f"/v1/instances/{a}/terminate"))
    cloud.converge()
    step(cloud, clock)
    step(cloud, clock)
    ids = [m["instance_id"] for m in group(user)["instances"]]
    assert a not in ids and b in ids and len(ids) == 2
    assert len(in_service(user)) == 2
    health = [x for x in activities(user) if "health check" in x["cause"]]
    assert [x["instance_id"] for x in health] == [a]
    # Impaired within the grace period: kept; after it: terminated and replaced.
    c = next(i for i in ids if i != b)
    h1.observed[c]["power"] = "crashed"  # the agent reports the domain crashed: impaired
    cloud.converge()
    assert cloud.instance(user, c)["instance_status"] == "impaired"
    step(cloud, clock, 1)
    assert c in [m["instance_id"] for m in group(user)["instances"]]
    step(cloud, clock, 60)
    step(cloud, clock)
    members = group(user)["instances"]
    assert c not in [m["instance_id"] for m in members] and len(members) == 2
    with cloud.db.session(notify=False) as s:
        assert s.get(Instance, c).state == "terminated"
    assert len(live_instances(cloud)) == 2


@pytest.mark.parametrize("when", ["before-run", "after-run"])
def test_restart_mid_launch_neither_duplicates_nor_loses(cloud, tmp_path, monkeypatch, when):
    """The controller dies with a launch activity written: before its launch reached the
    database, or right after (the instance exists but is no member yet)."""
    cloud.add_host("h1")
    user = cloud.account("alice")
    clock = Clock()
    setup_group(cloud, user, desired_capacity=2, max_size=2)
    real_run = instance_service.run

    def crash(*args, **kw):
        if when == "after-run":
            real_run(*args, **kw)
        raise RuntimeError("controller killed")
    monkeypatch.setattr(instance_service, "run", crash)
    stats = autoscaling_controller.tick(cloud.db, cloud.settings, clock.advance(1))
    assert stats["errors"] == 1
    assert len(live_instances(cloud)) == (1 if when == "after-run" else 0)
    with cloud.db.session(notify=False) as s:
        assert [a.status_code for a in s.exec(select(ScalingActivity))] == ["InProgress"]
    monkeypatch.setattr(instance_service, "run", real_run)
    # A new controller on the same database.
    agents, key = cloud.agents, user.headers["authorization"].split()[1]
    cloud.close()
    cloud.close = lambda: None  # closed here, before the restart, not by the fixture
    cloud2 = Cloud(tmp_path, database_url=cloud.settings.database_url, autoscaling_interval_s=0)
    cloud2.agents.update(agents)
    try:
        step(cloud2, clock)
        step(cloud2, clock)
        members = group(cloud2.client(key))["instances"]
        insts = live_instances(cloud2)
        assert len(members) == 2 and len(insts) == 2
        assert {m["instance_id"] for m in members} == {i.instance_id for i in insts}
        with cloud2.db.session(notify=False) as s:
            acts = list(s.exec(select(ScalingActivity)))
        assert sorted(a.status_code for a in acts) == ["Successful", "Successful"]
    finally:
        cloud2.close()


def test_failed_launches_back_off_and_never_pass_max(cloud):
    cloud.add_host("h1", memory_mib=256)  # room for one t3.nano
    user = cloud.account("alice")
    clock = Clock()
    setup_group(cloud, user, desired_capacity=3, max_size=3, min_size=0)
    stats = step(cloud, clock)
    assert (stats["launched"], stats["failed"]) == (1, 1)
    failed = [a for a in activities(user) if a["status_code"] == "Failed"]
    assert len(failed) == 1
    assert failed[0]["status_message"].startswith("InsufficientInstanceCapacity")
    # Backing off: no attempt within 10 s, then one (failing) attempt, then 20 s.
    attempts = []
    for _ in range(40):
        stats = step(cloud, clock, 1)
        attempts.append(stats["failed"])
        assert len(live_instances(cloud)) <= 3
    assert sum(attempts) == 2, attempts  # at +10 and +30 (backoff 10, 20, then 40)
    with cloud.db.session(notify=False) as s:
        assert s.exec(select(AutoScalingGroup)).one().launch_failures == 3
    cloud.add_host("h2")
    step(cloud, clock, 60)
    step(cloud, clock)
    assert len(in_service(user)) == 3 and len(live_instances(cloud)) == 3
    with cloud.db.session(notify=False) as s:
        assert s.exec(select(AutoScalingGroup)).one().launch_failures == 0


def test_bad_group_input_changes_nothing(cloud):
    cloud.add_host("h1")
    user = cloud.account("alice")
    g, sns = setup_group(cloud, user)
    other_vpc = make_vpc(user, "10.1.0.0/16")
    other_sn = make_subnet(user, other_vpc["vpc_id"], "10.1.0.0/24")["subnet_id"]
    bob = cloud.account("bob")
    bob_sn = make_subnet(bob, make_vpc(bob)["vpc_id"], "10.0.0.0/24")["subnet_id"]
    base = {"auto_scaling_group_name": "g2", "launch_template": {"launch_template_name": "web"},
            "min_size": 1, "max_size": 3, "subnet_ids": sns}
    before = ok(user.get("/v1/autoscaling-groups"))
    for change in ({"min_size": 4}, {"desired_capacity": 5}, {"desired_capacity": 0},
                   {"launch_template": {"launch_template_name": "nope"}},
                   {"launch_template": {"launch_template_name": "web", "version": "7"}},
                   {"launch_template": {"launch_template_id": "lt-0123456789abcdef0"}},
                   {"subnet_ids": [sns[0], other_sn]}, {"subnet_ids": [bob_sn]},
                   {"termination_policies": ["Random"]}):
        err(user.post("/v1/autoscaling-groups", json={**base, **change}), 400,
            "ValidationError")
    err(user.post("/v1/autoscaling-groups", json={**base, "auto_scaling_group_name": "g1"}),
        409, "AlreadyExists")
    for change in ({"max_size": 0}, {"desired_capacity": 9}, {"min_size": 3, "max_size": 2},
                   {"launch_template": {"launch_template_name": "web", "version": "$Nope"}}):
        err(user.patch("/v1/autoscaling-groups/g1", json=change), 400, "ValidationError")
    err(user.get("/v1/autoscaling-groups/nope"), 404, "ValidationError")
    err(bob.get("/v1/autoscaling-groups/g1"), 404, "ValidationError")
    assert ok(user.get("/v1/autoscaling-groups")) == before
    assert live_instances(cloud) == []


def test_delete_refused_with_instances_unless_forced(cloud):
    cloud.add_host("h1")
    user = cloud.account("alice")
    clock = Clock()
    setup_group(cloud, user)
    step(cloud, clock)
    err(user.delete("/v1/autoscaling-groups/g1"), 409, "ResourceInUse")
    assert user.delete("/v1/autoscaling-groups/g1", params={"force": "true"}).status_code == 204
    assert group(user)["status"] == "Delete in progress"
    step(cloud, clock)
    step(cloud, clock)
    err(user.get("/v1/autoscaling-groups/g1"), 404, "ValidationError")
    assert live_instances(cloud) == []
    # An empty group goes at once.
    ok(user.post("/v1/autoscaling-groups", json={
        "auto_scaling_group_name": "g3", "launch_template": {"launch_template_name": "web"},
        "min_size": 0, "max_size": 1, "subnet_ids": [group_subnet(cloud)]}), 201)
    assert user.delete("/v1/autoscaling-groups/g3").status_code == 204
    err(user.get("/v1/autoscaling-groups/g3"), 404, "ValidationError")


def group_subnet(cloud) -> str:
    from controller.models import Subnet
    with cloud.db.session(notify=False) as s:
        return next(sn.subnet_id for sn in s.exec(select(Subnet)) if not sn.default_for_az)


def test_cli(cloud):
    """`kumo launch-templates` and `kumo autoscaling-groups` drive the same API."""
    from tests.functional.vpc_support import cli_for_new_account
    cloud.add_host("h1")
    kumo, run = cli_for_new_account(cloud)
    lt = run("launch-templates", "create", "web", "--image", "kumo-tiny", "--type", "t3.nano",
             "--tag", "app=web")
    assert lt["latest_version_number"] == 1
    v2 = run("launch-templates", "create-version", "web", "--source-version", "1",
             "--root-size", "2")
    assert v2["launch_template_data"]["tags"] == {"app": "web"}
    assert run("launch-templates", "set-default", "web", "2")["default_version_number"] == 2
    versions = run("launch-templates", "versions", "web")["items"]
    assert [v["version_number"] for v in versions] == [1, 2]
    sn = run("subnets", "list")["items"][0]["subnet_id"]
    g = run("autoscaling-groups", "create", "g1", "--template", "web", "--subnet", sn,
            "--min", "0", "--max", "2", "--desired", "1", "--tag", "team=x")
    assert (g["desired_capacity"], g["subnet_ids"]) == (1, [sn])
    autoscaling_controller.tick(cloud.db, cloud.settings, T0)
    assert len(run("autoscaling-groups", "show", "g1")["instances"]) == 1
    assert run("autoscaling-groups", "set-desired", "g1", "2")["desired_capacity"] == 2
    r = kumo("autoscaling-groups", "set-desired", "g1", "3")
    assert r.exit_code != 0 and "ValidationError" in r.output
    assert [a["status_code"] for a in run("autoscaling-groups", "activities", "g1")["items"]] == [
        "Successful"]
    assert kumo("autoscaling-groups", "delete", "g1").exit_code != 0
    assert kumo("autoscaling-groups", "delete", "g1", "--force").exit_code == 0
    assert run("autoscaling-groups", "list")["items"][0]["status"] == "Delete in progress"


@pytest.mark.parametrize("failure", ["domain-died", "host-down"])
def test_replacement_after_grace_when_domain_dies_or_host_goes_down(cloud, failure):
    agents = {"h1": cloud.add_host("h1"), "h2": cloud.add_host("h2")}
    user = cloud.account("alice")
    clock = Clock()
    setup_group(cloud, user, min_size=1, desired_capacity=1, health_check_grace_period=30)
    step(cloud, clock)
    step(cloud, clock)
    [old] = in_service(user)
    iid = old["instance_id"]
    host = cloud.instance(user, iid)["host_id"]
    agent = agents[host]
    if failure == "domain-died":
        agent.guest_poweroff(iid)  # the QEMU process went away: libvirt reports shut off
        cloud.converge()
        assert cloud.instance(user, iid)["state"] == "stopped"
    else:
        agent.unreachable = True
        cloud.set_row(Host, host, last_heartbeat=utcnow() - timedelta(minutes=5))
        cloud.tick()
        assert cloud.instance(user, iid)["system_status"] == "host-down"
    step(cloud, clock, 1)  # inside the grace period: kept
    assert [m["instance_id"] for m in in_service(user)] == [iid]
    step(cloud, clock, 30)
    step(cloud, clock)
    [new] = in_service(user)
    assert new["instance_id"] != iid
    if failure == "host-down":
        assert cloud.instance(user, new["instance_id"])["host_id"] != host
    health = [a for a in activities(user) if "health check" in a["cause"]]
    assert [a["instance_id"] for a in health] == [iid]
    assert cloud.instance(user, iid)["state"] in ("shutting-down", "terminated")
    assert len(live_instances(cloud)) == 1
