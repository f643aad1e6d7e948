"""`--wait` polling for `kumo instances run/start/stop`, driven by a fake clock (no real sleeps)."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from controller.cli.api import Api, CliError
from controller.cli.main import app
from controller.cli.wait import RUNNING, STOPPED, wait_for
from test_cli_support import FakeKumo, instance

runner = CliRunner()
ENV = {"KUMO_API_KEY": "secret"}


class FakeClock:
    def __init__(self):
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def invoke(fake: FakeKumo, clock: FakeClock, *args: str):
    st = fake.state(clock=clock, sleep=clock.sleep)
    return runner.invoke(app, list(args), obj=st, env=ENV)


RUN = ["instances", "run", "--image", "kumo-tiny", "--type", "t3.micro", "--wait",
       "--poll-interval", "3", "-o", "json"]


def test_run_wait_polls_until_running_and_status_ok():
    fake, clock = FakeKumo(), FakeClock()
    fake.instance_script["i-00000000000000001"] = [
        {"state": "pending"}, {"state": "running", "instance_status": "initializing"},
        {"state": "running", "instance_status": "ok", "private_ip": "10.0.0.2"}]
    r = invoke(fake, clock, *RUN)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["instances"][0]["state"] == "running"
    assert out["instances"][0]["instance_status"] == "ok"
    assert out["instances"][0]["private_ip"] == "10.0.0.2"
    assert clock.sleeps == [3.0, 3.0]  # three polls, two sleeps between them
    assert fake.paths().count("GET /v1/instances/i-00000000000000001") == 3


def test_run_wait_fails_with_the_state_reason_and_still_prints_ids():
    fake, clock = FakeKumo(), FakeClock()
    fake.instance_script["i-00000000000000001"] = [
        {"state": "pending"},
        {"state": "terminated", "state_reason": {"code": "Server.InsufficientInstanceCapacity",
                                                 "message": "no host could boot it"}}]
    r = invoke(fake, clock, *RUN)
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines()[-1] == (
        "error: InstanceFailed: instance i-00000000000000001 is terminated "
        "(Server.InsufficientInstanceCapacity: no host could boot it)")
    assert json.loads(r.stdout)["instances"][0]["instance_id"] == "i-00000000000000001"


def test_run_wait_fails_when_status_impaired():
    fake, clock = FakeKumo(), FakeClock()
    fake.instance_script["i-00000000000000001"] = [
        {"state": "running", "instance_status": "impaired",
         "state_reason": {"code": "ReadyTimeout", "message": "no KUMO-READY in 300s"}}]
    r = invoke(fake, clock, *RUN)
    assert r.exit_code == 1 and "impaired (ReadyTimeout: no KUMO-READY in 300s)" in r.stderr


def test_run_wait_times_out():
    fake, clock = FakeKumo(), FakeClock()
    r = invoke(fake, clock, *RUN, "--timeout", "10")
    assert r.exit_code == 1
    assert "error: WaitTimeout: not running, status ok after 10s" in r.stderr
    assert sum(clock.sleeps) in (9.0, 12.0) and len(clock.sleeps) in (3, 4)
    assert clock.now - 1000.0 >= 10.0 - 3.0


def test_stop_wait_until_stopped():
    fake, clock = FakeKumo(), FakeClock()
    fake.instances["i-1"] = instance("i-1", state="running")
    fake.instance_script["i-1"] = [{"state": "stopping"}, {"state": "stopped"}]
    r = invoke(fake, clock, "instances", "stop", "i-1", "--wait", "--poll-interval", "1",
               "-o", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["state"] == "stopped" and clock.sleeps == [1.0]


def test_start_wait_until_running_ok():
    fake, clock = FakeKumo(), FakeClock()
    fake.instances["i-1"] = instance("i-1", state="stopped")
    fake.instance_script["i-1"] = [{"state": "pending"},
                                   {"state": "running", "instance_status": "ok"}]
    r = invoke(fake, clock, "instances", "start", "i-1", "--wait", "-o", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["instance_status"] == "ok"


def test_wait_for_many_stops_polling_finished_instances():
    fake, clock = FakeKumo(), FakeClock()
    fake.instances["a"] = instance("a")
    fake.instances["b"] = instance("b")
    fake.instance_script["a"] = [{"state": "running", "instance_status": "ok"}]
    fake.instance_script["b"] = [{"state": "pending"}, {"state": "pending"},
                                 {"state": "running", "instance_status": "ok"}]
    api = Api(fake.factory("x", "secret"))
    final = wait_for(api, ["a", "b"], RUNNING, timeout=60, interval=5, clock=clock,
                     sleep=clock.sleep, show_progress=False)
    assert {k: v["state"] for k, v in final.items()} == {"a": "running", "b": "running"}
    assert fake.paths().count("GET /v1/instances/a") == 1
    assert fake.paths().count("GET /v1/instances/b") == 3


def test_wait_for_stopped_fails_if_terminated():
    fake, clock = FakeKumo(), FakeClock()
    fake.instances["a"] = instance("a", state="terminated")
    with pytest.raises(CliError) as ei:
        wait_for(Api(fake.factory("x", "secret")), ["a"], STOPPED, timeout=60, interval=1,
                 clock=clock, sleep=clock.sleep, show_progress=False)
    assert ei.value.code == "InstanceFailed" and clock.sleeps == []


def test_terminate_wait_until_terminated():
    fake, clock = FakeKumo(), FakeClock()
    for iid in ("i-1", "i-2"):
        fake.instances[iid] = instance(iid, state="running")
        fake.instance_script[iid] = [{"state": "shutting-down"}, {"state": "terminated"}]
    r = invoke(fake, clock, "instances", "terminate", "i-1", "i-2", "--wait", "-o", "json")
    assert r.exit_code == 0, r.output
    assert [i["state"] for i in json.loads(r.stdout)["items"]] == ["terminated", "terminated"]
    assert clock.sleeps == [2.0]
