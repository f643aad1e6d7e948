"""The root disk grows on a real kumo-tiny guest, through the controller API: the running guest
sees the larger vda at once (no reboot), and after a reboot its initramfs has grown the root
partition and ext4 to the new end of the disk. One guest, cleaned up at the end.
"""
from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.lab.cloud import agent_instance_dir, user_fixture

pytestmark = [pytest.mark.lab, pytest.mark.slow]

GIB = 1 << 30
RESIZED = "resized root filesystem"


cloud = user_fixture(terminate=False)


def _console(cloud, iid: str) -> str:
    return cloud.call("GET", f"/v1/instances/{iid}/console")["output"]


def _ssh(cloud, inst, key, command: str) -> str:
    r = cloud.ssh(inst, key, command)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def _root_kib(cloud, inst, key) -> int:
    """Size of the guest's root filesystem in KiB (busybox df -k /)."""
    line = _ssh(cloud, inst, key, "df -k / | tail -n 1").split()
    return int(line[1])


def _until(what: str, fn, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def test_running_guest_sees_the_grown_root_disk_and_grows_its_filesystem_on_reboot(cloud):
    key = cloud.key_pair("root-grow")
    [launched] = cloud.run(1, key_name="root-grow", root_disk_gib=1, tags={"suite": "root-grow"})
    iid = launched["instance_id"]
    try:
        inst = cloud.wait(iid, "running", "ok", timeout=180)
        assert _ssh(cloud, inst, key, "cat /sys/block/vda/size") == str(GIB // 512)
        fs_before = _root_kib(cloud, inst, key)
        assert fs_before < GIB // 1024
        ready = f"KUMO-READY instance-id={iid}"
        boots = _console(cloud, iid).count(ready)
        resized = _console(cloud, iid).count(RESIZED)

        # Grow the running instance: the guest sees the new vda size without a reboot.
        r = cloud.api.patch(f"/v1/instances/{iid}", json={"root_disk_gib": 2})
        assert r.status_code == 200, r.text
        assert r.json()["root_disk_gib"] == 2 and r.json()["state"] == "running"
        t0 = time.monotonic()
        _until("the guest to see a 2 GiB vda", lambda: _ssh(
            cloud, inst, key, "cat /sys/block/vda/size") == str(2 * GIB // 512), 90)
        print(f"guest saw the grown disk {time.monotonic() - t0:.1f} s after the PATCH")
        assert _console(cloud, iid).count(ready) == boots  # no reboot happened
        assert _root_kib(cloud, inst, key) == fs_before  # the filesystem grows at next boot
        root = agent_instance_dir(cloud.lab, inst["host_id"], iid) / "root.qcow2"
        info = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(root)],
                              capture_output=True, text=True, check=True)
        assert json.loads(info.stdout)["virtual-size"] == 2 * GIB

        # Shrinking is refused and changes nothing.
        r = cloud.api.patch(f"/v1/instances/{iid}", json={"root_disk_gib": 1})
        assert r.status_code == 400 and r.json()["error"]["code"] == "InvalidParameterValue"
        assert cloud.instance(iid)["root_disk_gib"] == 2

        # Reboot: kumo-tiny's initramfs grows the partition and the ext4 to the disk's end.
        cloud.action(iid, "reboot")
        _until("a second boot", lambda: _console(cloud, iid).count(ready) > boots, 120)
        inst = cloud.wait(iid, "running", "ok", timeout=120)
        assert _console(cloud, iid).count(RESIZED) > resized
        fs_after = _root_kib(cloud, inst, key)
        assert fs_after > fs_before + 900 * 1024, (fs_before, fs_after)
        assert fs_after < 2 * GIB // 1024
        assert _ssh(cloud, inst, key, "cat /sys/block/vda/size") == str(2 * GIB // 512)
    finally:
        cloud.action(iid, "terminate")
        cloud.wait(iid, "terminated", timeout=120)
        _until("the domain's files to go",
               lambda: not agent_instance_dir(cloud.lab, launched["host_id"], iid).exists(), 30)
