"""A stopped instance whose data is on a volume starts on the other lab host and finds its data
there (issue 10; controller/services/instance_moves.py), with a real kumo-tiny guest, the lab's
storage node and libvirt on both hosts.

The run: a guest on host A writes a file with a known checksum on an attached volume, and a
marker on its root disk; it is stopped; an admin disables A (the bounded, reversible way to make
a host unusable for placement); the start runs it on host B, where the guest reads the same
checksum from the volume while the root-disk marker is gone (the root disk was re-created from
the image there); A is enabled again and libvirt on A no longer has the domain, nor the agent its
files. The host is re-enabled and everything made is removed whatever happens.
"""
from __future__ import annotations

import time

import libvirt
import pytest

from tests.lab.cloud import agent_instance_dir, domains_named
from tests.lab.net_support import admin_api, call
from tests.lab.volume_support import (attach, by_id_device, delete, detach, guest, new_volume,
                                      volume_user_fixture, wait_volume)

pytestmark = [pytest.mark.lab, pytest.mark.slow]

cloud = volume_user_fixture()


class Admin:
    """The lab's admin API, remembering the hosts it disabled so they are enabled again."""

    def __init__(self, lab):
        self.api = admin_api(lab)
        self.disabled: set[str] = set()

    def set_host(self, host_id: str, enabled: bool) -> dict:
        doc = call(self.api, "POST", f"/v1/hosts/{host_id}/{'enable' if enabled else 'disable'}")
        assert doc["enabled"] is enabled, doc
        (self.disabled.discard if enabled else self.disabled.add)(host_id)
        return doc


@pytest.fixture
def admin(lab):
    a = Admin(lab)
    yield a
    for host_id in sorted(a.disabled):  # whatever happened, the host takes instances again
        a.set_host(host_id, True)
    a.api.close()


def _gone_from(lab, host_id: str, iid: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while host_id in domains_named(lab, iid) or agent_instance_dir(lab, host_id, iid).exists():
        assert time.monotonic() < deadline, f"{iid} still on {host_id} after {timeout} s"
        time.sleep(0.5)


def test_stopped_instance_starts_on_the_other_host_with_its_volume_data(cloud, admin, lab):
    t0 = time.monotonic()
    key = cloud.key_pair("instance-move")
    launched = cloud.run(1, key_name="instance-move", tags={"suite": "instance-move"})
    iid = launched[0]["instance_id"]
    inst = cloud.wait(iid, "running", "ok", timeout=240)
    old_host = inst["host_id"]
    vid = new_volume(cloud, tags={"suite": "instance-move"})
    attach(cloud, vid, inst, "/dev/sdf")
    dev = by_id_device(cloud, inst, key, vid)
    out = guest(cloud, inst, key,
                f"mke2fs -q {dev} > /dev/null && mkdir -p /mnt/v && mount {dev} /mnt/v && "
                "dd if=/dev/urandom of=/mnt/v/data bs=64k count=32 2>/dev/null && "
                "sha256sum /mnt/v/data && umount /mnt/v && "
                "echo old-root > /root/old-root-marker && sync")
    digest = out.split()[0]

    cloud.action(iid, "stop")
    cloud.wait(iid, "stopped", timeout=120)
    assert domains_named(lab, iid) == {old_host: libvirt.VIR_DOMAIN_SHUTOFF}

    admin.set_host(old_host, False)
    started = cloud.action(iid, "start")
    new_host = started["host_id"]
    assert new_host != old_host, started
    inst = cloud.wait(iid, "running", "ok", timeout=240)
    assert inst["host_id"] == new_host
    # The old host reports its stale copy and deletes it (domain and root disk) even while it
    # is disabled; libvirt on the new host runs the only domain.
    _gone_from(lab, old_host, iid)
    assert domains_named(lab, iid) == {new_host: libvirt.VIR_DOMAIN_RUNNING}
    wait_volume(cloud, vid, "in-use", "attached")

    dev = by_id_device(cloud, inst, key, vid)
    out = guest(cloud, inst, key, f"mkdir -p /mnt/v && mount {dev} /mnt/v && "
                                  "sha256sum /mnt/v/data && umount /mnt/v && "
                                  "ls /root/old-root-marker 2>&1 || true")
    lines = out.strip().splitlines()
    assert lines[0].split()[0] == digest, out
    assert "No such file" in lines[-1], out  # a new root disk, made from the image here

    events = cloud.call("GET", "/v1/events", params={"resource_id": iid})["items"]
    assert any(e["reason"] and e["reason"].startswith(f"moved from host {old_host} to host "
                                                      f"{new_host}: its root disk is re-created")
               for e in events), events

    admin.set_host(old_host, True)
    time.sleep(3)  # a few heartbeats of the re-enabled host: it does not bring the domain back
    assert domains_named(lab, iid) == {new_host: libvirt.VIR_DOMAIN_RUNNING}
    assert not agent_instance_dir(lab, old_host, iid).exists()

    detach(cloud, vid)
    delete(cloud, vid)
    cloud.action(iid, "terminate")
    cloud.wait(iid, "terminated", timeout=120)
    _gone_from(lab, new_host, iid)
    print(f"instance move lab run: {time.monotonic() - t0:.1f} s")
