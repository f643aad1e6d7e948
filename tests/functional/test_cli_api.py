"""The `kumo` CLI against the real controller app (in process, through TestClient; the agent is
tests/functional/fake_agent.py's FakeAgent): the commands the CLI unit tests run against a
hand-written fake API (tests/unit/test_cli_support.py) succeed here too, and every status the
real API answered is the one the fake answers (the fake once answered 200 to POST /v1/instances,
which the API answers 201)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from controller.cli.context import CliState
from controller.cli.main import app as cli_app
from tests.functional.fake_agent import Cloud

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_cli_support import FakeKumo, api_status  # noqa: E402


@pytest.fixture
def cloud(tmp_path):
    c = Cloud(tmp_path)
    c.add_host("h1")
    c.image()
    yield c
    c.close()


class Recorder:
    """A CliState client factory giving TestClients of the real app; records every answer."""

    def __init__(self, cloud: Cloud):
        self.cloud = cloud
        self.answers: list[tuple[str, str, int]] = []

    def factory(self, url: str, api_key: str | None):
        client = self.cloud.client(api_key)
        client.event_hooks["response"] = [lambda r: self.answers.append(
            (r.request.method, r.request.url.path, r.status_code))]
        return client

    def kumo(self, *args: str) -> dict | list | None:
        state = CliState(client_factory=self.factory, clock=lambda: 0.0, sleep=lambda s: None)
        r = CliRunner().invoke(cli_app, ["-o", "json", *args], obj=state,
                               env={"KUMO_URL": "http://controller.test:8787",
                                    "KUMO_API_KEY": self.cloud.admin_key})
        assert r.exit_code == 0, (args, r.output)
        return json.loads(r.stdout) if r.stdout.strip() else None


def test_cli_commands_against_the_real_api(cloud, tmp_path):
    rec = Recorder(cloud)
    out = rec.kumo("instances", "run", "--image", "kumo-tiny", "--type", "t3.nano",
                   "--count", "2", "--tag", "Name=web")
    assert len(out["instances"]) == 2 and out["reservation_id"].startswith("r-")
    assert ("POST", "/v1/instances", 201) in rec.answers
    iid = out["instances"][0]["instance_id"]
    cloud.converge()
    assert rec.kumo("instances", "describe", iid)["state"] == "running"
    assert rec.kumo("instances", "stop", iid)["state"] == "stopping"
    key = rec.kumo("keys", "create", "mykey", "--out", str(tmp_path / "mykey"))
    assert key["name"] == "mykey" and "PRIVATE KEY" in (tmp_path / "mykey").read_text()
    assert rec.kumo("accounts", "create", "bob")["api_key"]
    vpc = rec.kumo("vpcs", "create", "--cidr", "10.9.0.0/16")
    sg = rec.kumo("security-groups", "create", "--name", "web", "--vpc-id", vpc["vpc_id"])
    rec.kumo("security-groups", "authorize", sg["group_id"], "--protocol", "tcp", "--port", "22",
             "--cidr", "10.0.0.0/8")
    rec.kumo("security-groups", "delete", sg["group_id"])
    # What the fake API of the CLI unit tests answers is what the API answered.
    assert len({m for m, _, _ in rec.answers}) >= 3
    for method, path, status in rec.answers:
        assert status < 400, (method, path, status)
        assert api_status(method, path) == status, (method, path, status)


def test_run_answers_what_the_cli_unit_tests_fake_answers(cloud):
    """The same `kumo instances run` sent to the real app and to FakeKumo: the same status."""
    rec = Recorder(cloud)
    rec.kumo("instances", "run", "--image", "kumo-tiny", "--type", "t3.nano")
    real = [a for a in rec.answers if a[:2] == ("POST", "/v1/instances")]
    fake = FakeKumo(types={"t3.nano": {"name": "t3.nano", "vcpus": 1, "memory_mib": 512,
                                       "hourly_price": 0.01, "retired": False}})
    seen: list[int] = []
    state = fake.state()
    state.client_factory = lambda url, key: _recording(fake.factory(url, key), seen)
    r = CliRunner().invoke(cli_app, ["-o", "json", "instances", "run", "--image", "kumo-tiny",
                                     "--type", "t3.nano"], obj=state,
                           env={"KUMO_API_KEY": "secret", "KUMO_URL": "http://controller:8787"})
    assert r.exit_code == 0, r.output
    assert real and seen == [real[0][2]] == [201]


def _recording(client, seen: list[int]):
    client.event_hooks["response"] = [lambda r: seen.append(r.status_code)]
    return client
