"""`kumo volumes ...` against the real controller app (in process, through TestClient): every
command, its REST call and status, table output, errors as `error: <code>: <message>` with exit
1, and --wait polling until the state the reconciler would set (simulated by the fake sleep,
which moves the volume on in the database)."""
from __future__ import annotations

import json

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from controller.cli.context import CliState
from controller.cli.main import app as cli_app
from controller.models import Instance, Volume, VolumeAttachmentRow
from tests.functional.fake_agent import Cloud


@pytest.fixture
def cloud(tmp_path):
    c = Cloud(tmp_path, storage_url="unix:/nonexistent")
    c.add_host("h1")
    c.image()
    yield c
    c.close()


class Kumo:
    """Runs the real CLI against the app; records every answer; `on_sleep` plays the
    reconciler while --wait polls."""

    def __init__(self, cloud: Cloud):
        self.cloud = cloud
        self.answers: list[tuple[str, str, int]] = []
        self.on_sleep = lambda: None
        self.sleeps = 0

    def _factory(self, url: str, api_key: str | None):
        client = self.cloud.client(api_key)
        client.event_hooks["response"] = [lambda r: self.answers.append(
            (r.request.method, r.request.url.path, r.status_code))]
        return client

    def _sleep(self, _s: float) -> None:
        self.sleeps += 1
        self.on_sleep()

    def invoke(self, *args: str, output: str = "json"):
        st = CliState(client_factory=self._factory, clock=lambda: float(self.sleeps),
                      sleep=self._sleep)
        return CliRunner().invoke(cli_app, ["-o", output, *args], obj=st,
                                  env={"KUMO_URL": "http://controller.test:8787",
                                       "KUMO_API_KEY": self.cloud.admin_key})

    def __call__(self, *args: str):
        r = self.invoke(*args)
        assert r.exit_code == 0, (args, r.output)
        return json.loads(r.stdout) if r.stdout.strip() else None


def _instance(cloud) -> str:
    r = cloud.run(cloud.admin)
    assert r.status_code == 201, r.text
    iid = r.json()["instances"][0]["instance_id"]
    cloud.set_row(Instance, iid, state="running")
    return iid


def test_volume_commands(cloud):
    kumo = Kumo(cloud)
    iid = _instance(cloud)
    vol = kumo("volumes", "create", "--size", "4", "--tag", "Name=data", "--client-token", "t1")
    vid = vol["volume_id"]
    assert vol["state"] == "creating" and vol["tags"] == {"Name": "data"}
    assert ("POST", "/v1/volumes", 201) in kumo.answers
    assert kumo("volumes", "create", "--size", "4", "--tag", "Name=data",
                "--client-token", "t1")["volume_id"] == vid
    assert [v["volume_id"] for v in kumo("volumes", "list")["items"]] == [vid]
    assert kumo("volumes", "list", "--status", "available")["items"] == []
    assert kumo("volumes", "list", "--tag", "Name=data")["items"][0]["volume_id"] == vid
    assert kumo("volumes", "show", vid)["size_gib"] == 4
    assert kumo("volumes", "describe", vid)["size_gib"] == 4
    cloud.set_row(Volume, vid, state="available")
    grown = kumo("volumes", "modify", vid, "--size", "8")
    assert grown["size_gib"] == 8 and grown["modification_state"] == "modifying"
    assert ("PATCH", f"/v1/volumes/{vid}", 200) in kumo.answers
    att = kumo("volumes", "attach", vid, "--instance", iid, "--device", "/dev/sdf",
               "--delete-on-termination")
    assert att == {**att, "instance_id": iid, "device": "/dev/sdf", "state": "attaching",
                   "delete_on_termination": True}
    assert kumo("volumes", "list", "--instance", iid)["items"][0]["volume_id"] == vid
    det = kumo("volumes", "detach", vid, "--force")
    assert det["state"] == "detaching"
    with cloud.db.session(notify=False) as s:
        assert s.get(VolumeAttachmentRow, vid).force_detach is True
    tagged = kumo("volumes", "set-tags", vid, "--tag", "a=1", "--tag", "b=")
    assert tagged["tags"] == {"a": "1", "b": ""}
    # Detached (the reconciler's part), then deleted.
    with cloud.db.session() as s:
        s.delete(s.get(VolumeAttachmentRow, vid))
    cloud.set_row(Volume, vid, state="available")
    assert kumo("volumes", "delete", vid)["state"] == "deleting"
    assert ("DELETE", f"/v1/volumes/{vid}", 200) in kumo.answers


def test_errors_exit_1_with_the_code(cloud):
    kumo = Kumo(cloud)
    r = kumo.invoke("volumes", "show", "vol-00000000000000000")
    assert r.exit_code == 1
    assert "error: InvalidVolume.NotFound:" in r.stderr
    vid = kumo("volumes", "create", "--size", "1")["volume_id"]
    r = kumo.invoke("volumes", "delete", vid)
    assert r.exit_code == 1 and "error: IncorrectState:" in r.stderr
    r = kumo.invoke("volumes", "attach", vid, "--instance", "i-00000000000000000",
                    "--device", "/dev/sda")
    assert r.exit_code == 1 and "reserved for the root device" in r.stderr
    r = kumo.invoke("volumes", "create", "--size", "0")
    assert r.exit_code == 2  # a usage error: --size is at least 1
    r = kumo.invoke("volumes", "show", "../x")
    assert r.exit_code == 2


def test_table_output(cloud):
    kumo = Kumo(cloud)
    vid = kumo("volumes", "create", "--size", "3", "--tag", "Name=logs")["volume_id"]
    r = kumo.invoke("volumes", "list", output="table")
    assert r.exit_code == 0, r.output
    assert vid in r.stdout and "logs" in r.stdout and "creating" in r.stdout
    r = kumo.invoke("volumes", "show", vid, output="table")
    assert r.exit_code == 0 and vid in r.stdout


def _storage_node_creates(cloud) -> None:
    """What the reconciler does once the storage node created them: creating -> available."""
    with cloud.db.session() as s:
        for v in s.exec(select(Volume).where(Volume.state == "creating")):
            v.state, v.acked_generation = "available", v.generation
            s.add(v)


def test_wait_for_available_attached_and_detached(cloud):
    kumo = Kumo(cloud)
    iid = _instance(cloud)
    kumo.on_sleep = lambda: _storage_node_creates(cloud)
    vol = kumo("volumes", "create", "--size", "2", "--wait")
    vid = vol["volume_id"]
    assert vol["state"] == "available" and kumo.sleeps == 1
    kumo.on_sleep = lambda: cloud.set_row(VolumeAttachmentRow, vid, state="attached")
    attached = kumo("volumes", "attach", vid, "--instance", iid, "--device", "/dev/sdg",
                    "--wait")
    assert attached["state"] == "in-use" and attached["attachments"][0]["state"] == "attached"
    assert kumo.sleeps == 2

    def detached():
        with cloud.db.session() as s:
            s.delete(s.get(VolumeAttachmentRow, vid))
        cloud.set_row(Volume, vid, state="available")
    kumo.on_sleep = detached
    free = kumo("volumes", "detach", vid, "--wait")
    assert free["state"] == "available" and free["attachments"] == []
    kumo.on_sleep = lambda: cloud.set_row(Volume, vid, modification_state="completed")
    grown = kumo("volumes", "modify", vid, "--size", "3", "--wait")
    assert grown["size_gib"] == 3 and grown["modification_state"] == "completed"


def test_wait_fails_fast_on_error_and_times_out(cloud):
    kumo = Kumo(cloud)
    vid = kumo("volumes", "create", "--size", "1")["volume_id"]
    cloud.set_row(Volume, vid, state="available")
    kumo.on_sleep = lambda: cloud.set_row(Volume, vid, state="error")
    r = kumo.invoke("volumes", "modify", vid, "--size", "2", "--wait")
    assert r.exit_code == 1 and "error: VolumeFailed:" in r.stderr
    kumo.on_sleep = lambda: None
    r = kumo.invoke("volumes", "create", "--size", "1", "--wait", "--timeout", "3")
    assert r.exit_code == 1 and "error: WaitTimeout:" in r.stderr
