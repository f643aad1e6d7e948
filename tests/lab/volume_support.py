"""What the lab tests of volumes share: the `cloud` fixture of a module that makes volumes (it
removes whatever volumes a failed test left), the storage node's own view of its volumes, waits
on a volume's state, and SSH helpers that find a volume in the guest by its /dev/disk/by-id link
and read or write it past the guest's page cache."""
from __future__ import annotations

import os
import time

import pytest

from tests.lab.cloud import CloudUser

GiB = 1 << 30


def volume_user_fixture():
    """A module's `cloud` fixture (`cloud = volume_user_fixture()`): the demo account's
    CloudUser with SSH let in; afterwards every volume it left is force-detached and deleted,
    and every instance terminated."""
    @pytest.fixture(scope="module")
    def cloud(lab, tmp_path_factory):
        if os.environ.get("KUMO_LAB_SERVICES") == "none":
            pytest.skip("the session lab runs without controller and agents")
        user = CloudUser(lab, tmp_path_factory.mktemp("keys"))
        user.allow_admin_access()
        yield user
        clear_volumes(user)
        user.terminate_all()
        clear_volumes(user)
        user.close()
    return cloud


def clear_volumes(user, timeout: float = 120) -> None:
    """Whatever volumes a (failed) test left: force-detached, deleted, waited for until gone."""
    for vol in user.call("GET", "/v1/volumes", params={"max_results": 1000})["items"]:
        for att in vol["attachments"]:
            user.api.post(f"/v1/volumes/{vol['volume_id']}/detach", json={"force": True})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = user.call("GET", "/v1/volumes", params={"max_results": 1000})["items"]
        for v in left:
            if v["state"] == "available":
                user.api.delete(f"/v1/volumes/{v['volume_id']}")
        if not left:
            return
        time.sleep(1)




def storage_node(lab):
    """A client of the lab's storage node API (agent/contract/storage_v1.py) as the controller:
    its certificate over mutual TLS (the lab's default) or the shared token (opt-out)."""
    from tests.lab.storage_support import lab_storage_client

    return lab_storage_client(lab)


def node_volumes(lab) -> dict[str, dict]:
    with storage_node(lab) as c:
        r = c.get("/v1/volumes")
        assert r.status_code == 200, r.text
        return {v["volume_id"]: v for v in r.json()}


def wait_node_export(lab, vid: str, exported: bool, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while node_volumes(lab)[vid]["exported"] is not exported:
        assert time.monotonic() < deadline, f"{vid}: exported is not {exported} on the node"
        time.sleep(0.3)


def wait_volume(cloud, vid: str, state: str, attachment: str | None = None,
                timeout: float = 90) -> dict:
    deadline, seen = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        seen = cloud.call("GET", f"/v1/volumes/{vid}")
        atts = seen["attachments"]
        if seen["state"] == state and (attachment is None or
                                       (atts and atts[0]["state"] == attachment)):
            return seen
        time.sleep(0.5)
    raise AssertionError(f"{vid} not {state}/{attachment} within {timeout} s: {seen}")


def wait_deleted(cloud, vid: str, timeout: float = 90) -> None:
    """A deleted volume leaves describe (404) once the storage node deleted it."""
    deadline = time.monotonic() + timeout
    while True:
        r = cloud.api.get(f"/v1/volumes/{vid}")
        if r.status_code == 404:
            assert r.json()["error"]["code"] == "InvalidVolume.NotFound", r.text
            return
        assert time.monotonic() < deadline, f"{vid} not deleted within {timeout} s: {r.text}"
        time.sleep(0.5)


def serial(vid: str) -> str:
    return "vol" + vid[4:]


def guest(cloud, inst, key, script: str, timeout: float = 60) -> str:
    r = cloud.ssh(inst, key, script, timeout=timeout)
    assert r.returncode == 0, f"{script!r} on {inst['instance_id']}: {r.stdout} {r.stderr}"
    return r.stdout


def by_id_device(cloud, inst, key, vid: str, timeout: float = 60) -> str:
    """The device the guest's /dev/disk/by-id/virtio-<serial> link names, waited for."""
    out = guest(cloud, inst, key,
                f"i=0; while [ $i -lt {timeout} ] && [ ! -e /dev/disk/by-id/virtio-{serial(vid)} ];"
                f" do sleep 1; i=$((i+1)); done; readlink -f /dev/disk/by-id/virtio-{serial(vid)}",
                timeout=timeout + 30)
    dev = out.strip()
    assert dev.startswith("/dev/vd"), out
    return dev


def gone_in_guest(cloud, inst, key, vid: str, timeout: float = 60) -> None:
    guest(cloud, inst, key,
          f"i=0; while [ -e /dev/disk/by-id/virtio-{serial(vid)} ]; do i=$((i+1));"
          f" [ $i -gt {timeout} ] && exit 1; sleep 1; done", timeout=timeout + 30)


def new_volume(cloud, **body) -> str:
    """A new volume (1 GiB unless body says otherwise), waited for until available."""
    vid = cloud.call("POST", "/v1/volumes", json={"size_gib": 1, **body})["volume_id"]
    wait_volume(cloud, vid, "available")
    return vid


def attach(cloud, vid: str, inst, device: str) -> None:
    """Attach and wait until the attachment is attached."""
    cloud.call("POST", f"/v1/volumes/{vid}/attach",
               json={"instance_id": inst["instance_id"], "device": device})
    wait_volume(cloud, vid, "in-use", "attached")


def detach(cloud, vid: str) -> None:
    """Detach and wait until the volume is available again."""
    cloud.call("POST", f"/v1/volumes/{vid}/detach", json={})
    wait_volume(cloud, vid, "available")


def delete(cloud, vid: str) -> None:
    """Delete and wait until describe answers 404."""
    cloud.call("DELETE", f"/v1/volumes/{vid}")
    wait_deleted(cloud, vid)


#: Writes 1 MiB of random blocks to the device {} with fsync; prints their sha256.
SYNCED_WRITE = ("dd if=/dev/urandom of=/tmp/blk bs=64k count=16 2>/dev/null && "
                "dd if=/tmp/blk of={} bs=64k conv=fsync 2>/dev/null && sha256sum < /tmp/blk")
#: Reads those 1 MiB back from the device {}, past the guest's page cache; prints their sha256.
DIRECT_READ = "dd if={} bs=64k count=16 iflag=direct 2>/dev/null | sha256sum"
