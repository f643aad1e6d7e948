"""CreateImage from instances, launch permissions and deregistration, on the controller with fake
agents (tests/functional/fake_agent.py) that also speak the image-capture extension through the
agent's real capture code (agent/capture.py, with the fake drivers' copy), and through the real
agent app (agent/app.py routes) on fake drivers."""
from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from agent.capture import CaptureError, Captures, fake_convert
from agent.contract.v1 import CaptureRequest
from controller.services import image_capture, images
from tests.functional.agent_harness import make_spec, running_agent, wait_for
from tests.functional.fake_agent import Cloud, FakeAgent, _err, _json

_CAPTURE = re.compile(r"^/v1/instances/(i-[0-9a-f]{17})/image(?:/(ami-[0-9a-f]{17})(/file)?)?$")


class CapturingAgent(FakeAgent):
    """A FakeAgent whose instances have a (placeholder) root disk and that captures them with
    agent/capture.py as the real agent does. `captures_allowed_running` records requests."""

    def __init__(self, host_id: str, root: Path, **kw):
        super().__init__(host_id, **kw)
        self.root = root
        self.captures = Captures(root, lambda iid: root / "instances" / iid / "root.qcow2",
                                 convert=fake_convert)
        self.capture_requests: list[CaptureRequest] = []
        self.info = self.info.model_copy(update={"extensions": ["image-capture"]})

    def _put(self, spec):
        d = self.root / "instances" / spec.instance_id
        d.mkdir(parents=True, exist_ok=True)
        (d / "root.qcow2").write_text("overlay\n")
        return super()._put(spec)

    def handle(self, request: httpx.Request) -> httpx.Response:
        m = _CAPTURE.match(request.url.path)
        if m is None or self.unreachable:
            return super().handle(request)
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return _err(401, "AuthFailure", "bad agent token")
        self.requests.append((request.method, request.url.path))
        iid, image_id, file = m.groups()
        try:
            if image_id is None and request.method == "POST":
                if iid not in self.specs:
                    return _err(404, "InstanceNotFound", iid)
                req = CaptureRequest.model_validate_json(request.content)
                self.capture_requests.append(req)
                power = self.observed[iid]["power"]
                obs = self.captures.start(iid, req.image_id,
                                          running=power not in ("shutoff", "absent", "crashed"),
                                          allow_running=req.allow_running)
                return _json(200, obs.model_dump(mode="json"))
            if image_id and file and request.method == "GET":
                path, sha = self.captures.file(iid, image_id)
                return httpx.Response(200, content=path.read_bytes(),
                                      headers={"x-kumo-sha256": sha})
            if image_id and request.method == "GET":
                return _json(200, self.captures.get(iid, image_id).model_dump(mode="json"))
            if image_id and request.method == "DELETE":
                self.captures.delete(iid, image_id)
                return httpx.Response(204)
        except CaptureError as e:
            return _err(e.status, e.code, e.message, e.retryable)
        return _err(405, "MethodNotAllowed", request.method)


@pytest.fixture
def cloud(tmp_path):
    c = Cloud(tmp_path)
    c.image()
    c.agent = CapturingAgent("host-1", tmp_path / "agent")
    c.agents[c.agent.url] = c.agent
    c.heartbeat(c.agent)
    yield c
    c.close()


def _advance(cloud) -> int:
    k = cloud.app.state.kumo
    return image_capture.advance(k.db, k.settings, k.pool)


def _drive(cloud, client, image_id: str, want: str = "available", timeout: float = 20.0) -> dict:
    """Run the capture worker and the reconciler until the image reaches `want` and the capture
    is done."""
    deadline = time.monotonic() + timeout
    while True:
        left = _advance(cloud)
        cloud.converge(1)
        img = client.get(f"/v1/images/{image_id}").json()
        if img.get("state") == want and left == 0:
            return img
        assert time.monotonic() < deadline, f"image {image_id}: {img}, {left} captures left"
        time.sleep(0.05)


def _launch(cloud, client, **kw) -> str:
    r = cloud.run(client, **kw)
    assert r.status_code == 201, r.text
    iid = r.json()["instances"][0]["instance_id"]
    cloud.converge()
    assert cloud.instance(client, iid)["state"] == "running"
    return iid


def _states(cloud, client, iid) -> list[str]:
    ev = client.get("/v1/events", params={"resource_id": iid, "resource_type": "instance"})
    return [e["to_state"] for e in ev.json()["items"]]


def test_create_image_from_running_instance_reboots_it_and_launches(cloud):
    alice = cloud.account("alice")
    iid = _launch(cloud, alice)
    r = alice.post(f"/v1/instances/{iid}/image", json={"name": "my-ami",
                                                       "description": "web server"})
    assert r.status_code == 201, r.text
    img = r.json()
    assert img["state"] == "pending" and img["public"] is False
    assert img["source_instance_id"] == iid and img["ready_marker"] == "KUMO-READY"
    owner = img["owner_account_id"]
    assert any(i["image_id"] == img["image_id"] for i in alice.get("/v1/images").json()["items"])

    done = _drive(cloud, alice, img["image_id"])
    assert done["size"] > 0 and done["virtual_size"] == 64 << 20 and len(done["sha256"]) == 64
    assert done["owner_account_id"] == owner
    # Stopped for the copy, started again after it.
    assert _states(cloud, alice, iid) == ["pending", "running", "stopping", "stopped", "pending",
                                          "running"]
    assert [r.allow_running for r in cloud.agent.capture_requests] == [False]
    # The agent's copy is gone; the controller's file is in its image store.
    assert not list((cloud.agent.root / "captures").rglob("*.qcow2"))
    path = cloud.settings.state_dir / "images" / f"{img['image_id']}.qcow2"
    assert path.is_file()
    # Usable at once.
    new = _launch(cloud, alice, image=img["image_id"])
    assert cloud.agent.specs[new].image.image_id == img["image_id"]
    assert cloud.agent.specs[new].image.sha256 == done["sha256"]
    file = cloud.agent_client.get(f"/v1/images/{img['image_id']}/file")
    assert file.status_code == 200 and file.headers["x-kumo-sha256"] == done["sha256"]


def test_no_reboot_keeps_the_instance_running(cloud):
    alice = cloud.account("alice")
    iid = _launch(cloud, alice)
    r = alice.post(f"/v1/instances/{iid}/image", json={"name": "hot", "no_reboot": True})
    assert r.status_code == 201, r.text
    _drive(cloud, alice, r.json()["image_id"])
    assert _states(cloud, alice, iid) == ["pending", "running"]
    assert [r.allow_running for r in cloud.agent.capture_requests] == [True]


def test_create_image_from_stopped_instance_leaves_it_stopped(cloud):
    alice = cloud.account("alice")
    iid = _launch(cloud, alice)
    assert alice.post(f"/v1/instances/{iid}/stop").status_code == 200
    cloud.converge()
    r = alice.post(f"/v1/instances/{iid}/image", json={"name": "cold"})
    assert r.status_code == 201, r.text
    _drive(cloud, alice, r.json()["image_id"])
    assert cloud.instance(alice, iid)["state"] == "stopped"
    # A second capture of the same instance while one runs is refused; after it, fine.
    r2 = alice.post(f"/v1/instances/{iid}/image", json={"name": "cold2"})
    assert r2.status_code == 201


def test_refused_create_image_changes_nothing(cloud):
    alice, bob = cloud.account("alice"), cloud.account("bob")
    iid = _launch(cloud, alice)
    before = cloud.admin.get("/v1/images").json()["items"]
    r = bob.post(f"/v1/instances/{iid}/image", json={"name": "steal"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "InvalidInstanceID.NotFound"
    r = alice.post(f"/v1/instances/{iid}/image", json={"name": "bad name!"})
    assert r.status_code == 400
    first = alice.post(f"/v1/instances/{iid}/image", json={"name": "one"})
    assert first.status_code == 201
    r = alice.post(f"/v1/instances/{iid}/image", json={"name": "two"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "IncorrectInstanceState"
    _drive(cloud, alice, first.json()["image_id"])
    assert alice.post(f"/v1/instances/{iid}/terminate").status_code == 200
    cloud.converge()
    assert cloud.instance(alice, iid)["state"] == "terminated"
    mid = cloud.admin.get("/v1/images").json()["items"]
    r = alice.post(f"/v1/instances/{iid}/image", json={"name": "late"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "IncorrectInstanceState"
    assert cloud.admin.get("/v1/images").json()["items"] == mid
    assert len(mid) == len(before) + 1


def test_capture_fails_when_instance_terminates_and_agent_copy_fails(cloud):
    alice = cloud.account("alice")
    iid = _launch(cloud, alice)
    r = alice.post(f"/v1/instances/{iid}/image", json={"name": "doomed"})
    image_id = r.json()["image_id"]
    assert alice.post(f"/v1/instances/{iid}/terminate").status_code == 200
    img = _drive(cloud, alice, image_id, want="failed")
    assert "terminated" in img["state_reason"]
    with pytest.raises(AssertionError):  # a failed image cannot be launched
        _launch(cloud, alice, image=image_id)

    iid2 = _launch(cloud, alice)

    def broken(src, dst, force_share):
        raise OSError("disk on fire")
    cloud.agent.captures.convert = broken
    r = alice.post(f"/v1/instances/{iid2}/image", json={"name": "broken"})
    img = _drive(cloud, alice, r.json()["image_id"], want="failed")
    assert "disk on fire" in img["state_reason"]
    cloud.converge()
    assert cloud.instance(alice, iid2)["state"] == "running"  # started again all the same


def test_launch_permissions(cloud):
    alice, bob, carol = cloud.account("alice"), cloud.account("bob"), cloud.account("carol")
    ids = {a["name"]: a["account_id"] for a in cloud.admin.get("/v1/accounts").json()["items"]}
    iid = _launch(cloud, alice)
    r = alice.post(f"/v1/instances/{iid}/image", json={"name": "shared-ami", "no_reboot": True})
    image_id = r.json()["image_id"]
    _drive(cloud, alice, image_id)

    assert bob.get(f"/v1/images/{image_id}").status_code == 404
    assert bob.get(f"/v1/images/{image_id}/launch-permission").status_code == 404
    assert alice.get(f"/v1/images/{image_id}/launch-permission").json() == {
        "image_id": image_id, "public": False, "account_ids": []}
    r = bob.put(f"/v1/images/{image_id}/launch-permission", json={"add": [ids["bob"]]})
    assert r.status_code == 404  # not the owner: as if it did not exist
    r = alice.put(f"/v1/images/{image_id}/launch-permission", json={"add": ["acct-nobody"]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "InvalidAccountID.NotFound"

    r = alice.put(f"/v1/images/{image_id}/launch-permission", json={"add": [ids["bob"]]})
    assert r.status_code == 200 and r.json()["account_ids"] == [ids["bob"]]
    assert bob.get(f"/v1/images/{image_id}").status_code == 200
    assert image_id in [i["image_id"] for i in bob.get("/v1/images").json()["items"]]
    assert carol.get(f"/v1/images/{image_id}").status_code == 404
    _launch(cloud, bob, image=image_id)
    # Only the owner deregisters.
    assert bob.delete(f"/v1/images/{image_id}").status_code == 403

    r = alice.put(f"/v1/images/{image_id}/launch-permission", json={"public": True})
    assert r.status_code == 403 and r.json()["error"]["code"] == "UnauthorizedOperation"
    assert carol.get(f"/v1/images/{image_id}").status_code == 404  # unchanged
    r = cloud.admin.put(f"/v1/images/{image_id}/launch-permission", json={"public": True})
    assert r.status_code == 200 and r.json()["public"] is True
    assert carol.get(f"/v1/images/{image_id}").status_code == 200
    r = alice.put(f"/v1/images/{image_id}/launch-permission",
                  json={"public": False, "remove": [ids["bob"]]})
    assert r.json() == {"image_id": image_id, "public": False, "account_ids": []}
    assert carol.get(f"/v1/images/{image_id}").status_code == 404
    assert bob.get(f"/v1/images/{image_id}").status_code == 404


def test_deregister_deletes_the_file_after_the_last_user(cloud):
    alice = cloud.account("alice")
    iid = _launch(cloud, alice)
    r = alice.post(f"/v1/instances/{iid}/image", json={"name": "short-lived", "no_reboot": True})
    image_id = r.json()["image_id"]
    _drive(cloud, alice, image_id)
    path = cloud.settings.state_dir / "images" / f"{image_id}.qcow2"
    user = _launch(cloud, alice, image=image_id)
    r = alice.delete(f"/v1/images/{image_id}")
    assert r.status_code == 200 and r.json()["state"] == "deregistered"
    assert path.is_file()  # the running instance may still need it
    assert alice.get(f"/v1/images/{image_id}").status_code == 404
    assert cloud.run(alice, image=image_id).status_code == 404
    # Agents may still fetch it while it is in use.
    assert cloud.agent_client.get(f"/v1/images/{image_id}/file").status_code == 200
    k = cloud.app.state.kumo
    assert images.sweep_image_files(k.db, k.settings) == 0 and path.is_file()
    assert alice.post(f"/v1/instances/{user}/terminate").status_code == 200
    cloud.converge()
    assert cloud.instance(alice, user)["state"] == "terminated"
    # The reconciler's tick sweeps (converge ran ticks): the file went with its last user.
    images.sweep_image_files(k.db, k.settings)
    assert not path.exists()
    # An image nothing uses loses its file at once.
    r = alice.post(f"/v1/instances/{iid}/image", json={"name": "unused", "no_reboot": True})
    other = r.json()["image_id"]
    _drive(cloud, alice, other)
    other_path = cloud.settings.state_dir / "images" / f"{other}.qcow2"
    assert other_path.is_file()
    assert alice.delete(f"/v1/images/{other}").status_code == 200
    assert not other_path.exists()


def test_deregistering_a_pending_capture_abandons_it(cloud):
    alice = cloud.account("alice")
    iid = _launch(cloud, alice)
    r = alice.post(f"/v1/instances/{iid}/image", json={"name": "abandoned"})
    image_id = r.json()["image_id"]
    _advance(cloud)  # stops the instance
    assert alice.delete(f"/v1/images/{image_id}").status_code == 200
    for _ in range(10):
        _advance(cloud)
        cloud.converge(1)
    assert cloud.instance(alice, iid)["state"] == "running"
    assert not (cloud.settings.state_dir / "images" / f"{image_id}.qcow2").exists()
    assert alice.post(f"/v1/instances/{iid}/image", json={"name": "again"}).status_code == 201


def test_real_agent_app_capture_routes(tmp_path):
    """The agent's own routes (agent/app.py) on fake drivers: refuse a running domain without
    allow_running, copy a stopped one, serve the file, delete it."""
    with running_agent(tmp_path) as agent:
        spec = make_spec(1)
        assert agent.put("/v1/instances/i-00000000000000001", json=spec).status_code == 200
        iid, ami = spec["instance_id"], "ami-0000000000000000a"
        wait_for(lambda: agent.get(f"/v1/instances/{iid}").json()["power"] == "running")
        assert "image-capture" in agent.get("/v1/host").json()["extensions"]
        r = agent.post(f"/v1/instances/{iid}/image", json={"image_id": ami})
        assert r.status_code == 409 and r.json()["error"]["code"] == "InstanceRunning", r.text
        r = agent.post("/v1/instances/i-0000000000000000f/image", json={"image_id": ami})
        assert r.status_code == 404
        assert agent.get(f"/v1/instances/{iid}/image/{ami}").status_code == 404
        spec2 = dict(spec, generation=2, power="stopped")
        assert agent.put(f"/v1/instances/{iid}", json=spec2).status_code == 200
        wait_for(lambda: agent.get(f"/v1/instances/{iid}").json()["power"] == "shutoff")
        r = agent.post(f"/v1/instances/{iid}/image", json={"image_id": ami})
        assert r.status_code == 200 and r.json()["state"] in ("pending", "available")
        obs = wait_for(lambda: (o := agent.get(f"/v1/instances/{iid}/image/{ami}").json())
                       ["state"] == "available" and o)
        f = agent.get(f"/v1/instances/{iid}/image/{ami}/file")
        assert f.status_code == 200 and f.headers["x-kumo-sha256"] == obs["sha256"]
        assert len(f.content) == obs["size"] and f.content[:4] == b"QFI\xfb"
        assert agent.delete(f"/v1/instances/{iid}/image/{ami}").status_code == 204
        assert agent.delete(f"/v1/instances/{iid}/image/{ami}").status_code == 204
        assert agent.get(f"/v1/instances/{iid}/image/{ami}/file").status_code == 404
        # A running domain with allow_running: crash-consistent copy allowed.
        spec3 = dict(spec, generation=3, power="running")
        assert agent.put(f"/v1/instances/{iid}", json=spec3).status_code == 200
        wait_for(lambda: agent.get(f"/v1/instances/{iid}").json()["power"] == "running")
        r = agent.post(f"/v1/instances/{iid}/image", json={"image_id": ami,
                                                           "allow_running": True})
        assert r.status_code == 200
        wait_for(lambda: agent.get(f"/v1/instances/{iid}/image/{ami}").json()["state"]
                 == "available")
