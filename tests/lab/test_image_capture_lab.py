"""CreateImage with real guests: a kumo-tiny instance gets a marker file (written over SSH), an
image is made from it (the instance is stopped for the copy and started again), an instance
launched from the new image has the marker; deregistering the image keeps its file while that
instance lives and deletes it after.
The controller's reconciler tick moves the capture along and sweeps the files.
"""
from __future__ import annotations

import time

import pytest

from lab.services import controller_dir
from tests.lab.cloud import user_fixture

pytestmark = [pytest.mark.lab, pytest.mark.slow]


cloud = user_fixture()


def _wait_image(cloud, image_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        img = cloud.call("GET", f"/v1/images/{image_id}")
        if img["state"] != "pending":
            return img
        assert time.monotonic() < deadline, f"image {image_id} still pending"
        time.sleep(1)


def test_image_from_instance_keeps_the_marker(cloud):
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
    img = _wait_image(cloud, img["image_id"])
    assert img["state"] == "available", img
    assert img["public"] is False and img["ready_marker"]
    stored = controller_dir(cloud.lab.state_dir) / "images" / f"{img['image_id']}.qcow2"
    assert stored.is_file()

    # The source was stopped for the copy and comes back.
    deadline = time.monotonic() + 180
    while cloud.instance(iid)["state"] != "running":
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
    assert stored.is_file()
    cloud.action(new["instance_id"], "terminate")
    cloud.wait(new["instance_id"], "terminated", timeout=120)
    deadline = time.monotonic() + 30  # the reconciler's next ticks sweep it
    while stored.exists():
        assert time.monotonic() < deadline, f"{stored} kept after its last user terminated"
        time.sleep(0.5)
