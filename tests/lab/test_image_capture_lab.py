"""CreateImage with real guests: a kumo-tiny instance gets a marker file (written over SSH), an
image is made from it (the instance is stopped for the copy and started again), an instance
launched from the new image has the marker; deregistering the image keeps its file while that
instance lives and deletes it after.

Until the controller's reconciler tick calls image_capture.advance and images.sweep_image_files,
this test runs them itself against the lab controller's database (same machine, SQLite in WAL
mode), with an agent pool on the agents' unix sockets, exactly as the tick would.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from controller.agents import AgentPool
from controller.db import Database
from controller.services import image_capture, images
from controller.settings import Settings
from lab.services import controller_dir, ensure_token
from tests.lab.cloud import CloudUser

pytestmark = [pytest.mark.lab, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cloud(lab, tmp_path_factory):
    user = CloudUser(lab, tmp_path_factory.mktemp("keys"))
    user.allow_admin_access()
    yield user
    for inst in user.call("GET", "/v1/instances", params={"max_results": 1000})["items"]:
        if inst["state"] != "terminated":
            user.action(inst["instance_id"], "terminate")
    user.close()


class Worker:
    """image_capture.advance + images.sweep_image_files, as the reconciler's tick runs them;
    a no-op when the lab controller's own reconciler already does."""

    def __init__(self, lab):
        self.active = "image_capture" not in (ROOT / "controller" / "reconciler.py").read_text()
        self.settings = Settings(state_dir=controller_dir(lab.state_dir),
                                 agent_token=ensure_token(lab.state_dir))
        self.db = Database(self.settings.resolved_database_url())
        self.pool = AgentPool(self.settings.agent_token, 30.0)

    def tick(self) -> None:
        if self.active:
            image_capture.advance(self.db, self.settings, self.pool)
            images.sweep_image_files(self.db, self.settings)

    def close(self) -> None:
        self.pool.close()
        self.db.dispose()


@pytest.fixture
def worker(lab):
    w = Worker(lab)
    yield w
    w.close()


def _wait_image(cloud, worker, image_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        worker.tick()
        img = cloud.call("GET", f"/v1/images/{image_id}")
        if img["state"] != "pending":
            return img
        assert time.monotonic() < deadline, f"image {image_id} still pending"
        time.sleep(1)


def test_image_from_instance_keeps_the_marker(cloud, worker):
    key = cloud.key_pair("capture-lab")
    [inst] = cloud.run(1, key_name="capture-lab")
    iid = inst["instance_id"]
    inst = cloud.wait(iid, "running", "ok", timeout=180)
    marker = f"made-by-{iid}"
    r = cloud.ssh(inst, key, f"echo {marker} > /root/marker.txt && sync && cat /root/marker.txt")
    assert r.returncode == 0 and r.stdout.strip() == marker, r.stderr

    img = cloud.call("POST", f"/v1/instances/{iid}/image", expect=201,
                     json={"name": f"captured-{iid}", "description": "lab capture"})
    assert img["state"] == "pending" and img["source_instance_id"] == iid
    img = _wait_image(cloud, worker, img["image_id"])
    assert img["state"] == "available", img
    assert img["public"] is False and img["ready_marker"]
    stored = controller_dir(cloud.lab.state_dir) / "images" / f"{img['image_id']}.qcow2"
    assert stored.is_file()

    # The source was stopped for the copy and comes back.
    deadline = time.monotonic() + 180
    while cloud.instance(iid)["state"] != "running":
        worker.tick()
        assert time.monotonic() < deadline, "the source instance was not started again"
        time.sleep(1)
    events = cloud.call("GET", "/v1/events", params={"resource_id": iid,
                                                     "resource_type": "instance"})["items"]
    assert "stopped" in [e["to_state"] for e in events]

    [new] = cloud.run(1, image=img["image_id"], key_name="capture-lab")
    new = cloud.wait(new["instance_id"], "running", "ok", timeout=180)
    r = cloud.ssh(new, key, "cat /root/marker.txt")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == marker

    # Deregister: the file stays while `new` uses it, and goes after it is terminated.
    assert cloud.call("DELETE", f"/v1/images/{img['image_id']}")["state"] == "deregistered"
    worker.tick()
    assert stored.is_file()
    cloud.action(new["instance_id"], "terminate")
    cloud.wait(new["instance_id"], "terminated", timeout=120)
    if worker.active:
        worker.tick()
        assert not stored.exists()
