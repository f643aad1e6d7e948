"""The controller tells the storage node which host each export is for (VolumeSpec.host,
extension "export-host"; docs/security.md "Storage access"), and tells it again when the
attached instance's host changes (a move), exactly once: the real storage node app over
FakeVolumeBackend, whose export() calls are recorded."""
from __future__ import annotations

import pytest

from controller.models import Instance
from tests.functional.volume_cloud import volume_cloud


@pytest.fixture
def cloud(tmp_path):
    yield from volume_cloud(tmp_path)


def test_the_export_follows_the_instance_host(cloud):
    hosts: list[str | None] = []
    real_export = cloud.backend.export

    def export(volume_id, host=None):
        hosts.append(host)
        return real_export(volume_id, host)

    cloud.backend.export = export
    cloud.add_volume_host("host-1")
    user = cloud.account("alice")
    r = cloud.run(user)
    assert r.status_code == 201, r.text
    iid = r.json()["instances"][0]["instance_id"]
    cloud.tick()
    r = user.post("/v1/volumes", json={"size_gib": 1})
    vid = r.json()["volume_id"]
    cloud.tick()
    r = user.post(f"/v1/volumes/{vid}/attach", json={"instance_id": iid, "device": "/dev/sdf"})
    assert r.status_code == 200, r.text
    cloud.tick()
    assert cloud.attachment(vid).state == "attached"
    assert hosts and set(hosts) == {"host-1"}
    n = len(hosts)
    cloud.tick()
    assert len(hosts) == n  # steady: nothing pushed again
    cloud.set_row(Instance, iid, host_id="host-2")  # what a move does to the row
    cloud.tick()
    assert hosts[n:] == ["host-2"]
    cloud.tick()
    assert hosts[n:] == ["host-2"]
