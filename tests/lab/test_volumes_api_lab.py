"""Volumes end to end through the controller's API, with real guests on both lab hosts and the
lab's storage node: what a user does (create, attach, detach, grow, delete, delete on
termination), checked from inside the guests (SSH: the disk, its /dev/disk/by-id link, a
filesystem and a checksum) and on the storage node (its volumes and exports, over its own API),
never only from what the controller says.

One module, two kumo-tiny guests (one per host) for every test here: each test leaves the
volumes it made detached or deleted, so the next starts from the same two guests.

Every test runs twice (the module-scoped `backend` fixture): on the lab's storage node as `lab up`
starts it (NBD, a qemu-storage-daemon), then on the same node restarted on Ceph RBD, with a
single-node cluster in the storage node's namespace on its fabric address (the hosts' QEMUs dial
the monitor and the OSD directly; tests/lab/ceph_support.py), and back to NBD afterwards. The
controller's storage URL never changes; the guests are the same for both runs. Tests of one
backend's internals run on that one only, each saying why (its counterpart runs on the other).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

import pytest

from lab import naming as nm
from lab import services
from agent.storage_node.rbd_cephx import node_caps
from lab.storage_restart import restart_storage
from tests.lab import ceph_support
from tests.lab.guests import qemu_pid_of, ssh
from tests.lab.volume_support import (DIRECT_READ, SYNCED_WRITE, GiB, attach, by_id_device,
                                      clear_volumes, delete, detach, gone_in_guest, guest,
                                      new_volume, node_volumes, serial, storage_node, wait_deleted,
                                      volume_user_fixture, wait_node_export, wait_volume)

pytestmark = [pytest.mark.lab, pytest.mark.slow]

cloud = volume_user_fixture()


@dataclass
class Backend:
    name: str  # "nbd" | "rbd"
    cluster: ceph_support.Cluster | None = None  # rbd: the lab's Ceph cluster
    keyring: object = None  # rbd: the storage node's own cephx keyring (rbd_cephx.node_caps)

    def rbd_env(self, lab) -> dict[str, str]:
        """The node on this cluster with cephx: its own user, a Ceph user per host."""
        return services.storage_rbd_env(lab.state_dir, self.cluster.conf, self.cluster.pool,
                                        ceph_support.MON_V1_PORT, client_id=NODE_USER,
                                        keyring=self.keyring)


#: Hosts' Ceph users: client.<prefix><host id> (the node's default rbd_host_user_prefix).
HOST_USER_PREFIX = "kumo-host-"


def osd_caps_name(backend: "Backend", host_id: str, vid: str) -> bool:
    """Whether the host's Ceph user's OSD caps grant the volume's image (its rbd_id.<name>),
    as the monitor has them now (a host never exported to has no user yet: False)."""
    try:
        out = backend.cluster.ceph("auth", "get", f"client.{HOST_USER_PREFIX}{host_id}",
                                   "--format", "json")
    except subprocess.CalledProcessError as e:
        if e.returncode == 2:  # ENOENT: no such user
            return False
        raise
    caps = json.loads(out)[0]["caps"].get("osd", "")
    return f"object_prefix rbd_id.{vid}" in caps


#: The storage node's own Ceph user (its caps: rbd_cephx.node_caps), as a deployment makes it.
NODE_USER = "kumo-storage"


@pytest.fixture(scope="module", params=["nbd", "rbd"], autouse=True)
def backend(request, lab, cloud):
    """The storage node's backend for this run of the module. "rbd": no volume exists (a
    backend switch never moves volumes), a Ceph cluster starts in the storage node's namespace
    on its fabric address, the node is restarted on it (same socket), and afterwards it is
    switched back to NBD before the cluster stops (ceph_support checks nothing is left)."""
    if request.param == "nbd":
        yield Backend("nbd")
        return
    reason = ceph_support.skip_reason()
    if reason:
        pytest.skip(reason)
    clear_volumes(cloud)
    assert node_volumes(lab) == {}, "volumes left on the NBD node: no switch to RBD"
    t0 = time.monotonic()
    with ceph_support.ceph_cluster(pool="kumo", ns=nm.storage_netns(lab.prefix),
                                   addr=str(nm.STORAGE_ADDR.ip), auth="cephx") as c:
        b = Backend("rbd", c, c.add_user(NODE_USER, node_caps(c.pool, HOST_USER_PREFIX)))
        try:
            restart_storage(lab, b.rbd_env(lab))
            with storage_node(lab) as sn:
                info = sn.get("/v1/storage").json()
            assert info["protocol"] == "rbd" and "snapshots" in info["extensions"], info
            print(f"ceph up {c.timings}, node on RBD after {time.monotonic() - t0:.1f} s")
            yield b
        finally:
            clear_volumes(cloud)
            restart_storage(lab)  # back to NBD, before the cluster goes


@pytest.fixture(scope="module")
def key(cloud):
    return cloud.key_pair("volume-tests")


@pytest.fixture(scope="module")
def pair(cloud, key):
    """Two running kumo-tiny guests, one on each lab host (the spread weigher's choice)."""
    launched = cloud.run(2, key_name="volume-tests", tags={"suite": "volumes"})
    insts = [cloud.wait(i["instance_id"], "running", "ok", timeout=240) for i in launched]
    assert len({i["host_id"] for i in insts}) == 2, [i["host_id"] for i in insts]
    return sorted(insts, key=lambda i: i["host_id"])


def test_volume_moves_between_hosts_with_its_data(cloud, key, pair, lab, backend):
    a, b = pair
    vol = cloud.call("POST", "/v1/volumes", json={"size_gib": 1, "tags": {"suite": "volumes"}})
    vid = vol["volume_id"]
    assert vol["state"] == "creating"
    wait_volume(cloud, vid, "available")
    assert node_volumes(lab)[vid]["size_bytes"] == GiB

    attach(cloud, vid, a, "/dev/sdf")
    wait_node_export(lab, vid, True)
    src = node_volumes(lab)[vid]["source"]
    assert src["protocol"] == backend.name, src
    if backend.name == "rbd":  # the image in the pool, through the monitor on the fabric
        assert (src["export"], src["host"], src["port"]) == (
            f"kumo/{vid}", str(nm.STORAGE_ADDR.ip), ceph_support.MON_V1_PORT), src
        # cephx: exported for a's host only, as its own Ceph user (whose key its QEMU holds)
        assert src["auth_user"] == HOST_USER_PREFIX + a["host_id"], src
        assert osd_caps_name(backend, a["host_id"], vid)
        assert not osd_caps_name(backend, b["host_id"], vid)
    # The guest's kernel names virtio disks in the order it finds them (vdb here, whatever the
    # target): /dev/disk/by-id is how it finds the volume, as on EC2's NVMe instances.
    dev = by_id_device(cloud, a, key, vid)
    out = guest(cloud, a, key,
                f"mke2fs -q {dev} > /dev/null && mkdir -p /mnt/v && mount {dev} /mnt/v && "
                "dd if=/dev/urandom of=/mnt/v/data bs=64k count=32 2>/dev/null && "
                "sha256sum /mnt/v/data && umount /mnt/v && sync")
    digest = out.split()[0]

    detach(cloud, vid)
    gone_in_guest(cloud, a, key, vid)
    wait_node_export(lab, vid, False)  # the node stops serving it right after

    attach(cloud, vid, b, "/dev/sdg")
    dev = by_id_device(cloud, b, key, vid)
    out = guest(cloud, b, key, f"mkdir -p /mnt/v && mount {dev} /mnt/v && "
                               "sha256sum /mnt/v/data && umount /mnt/v")
    assert out.split()[0] == digest
    if backend.name == "rbd":  # the image left a's user's caps and joined b's
        assert node_volumes(lab)[vid]["source"]["auth_user"] == HOST_USER_PREFIX + b["host_id"]
        assert osd_caps_name(backend, b["host_id"], vid)
        assert not osd_caps_name(backend, a["host_id"], vid)

    detach(cloud, vid)
    delete(cloud, vid)
    assert vid not in node_volumes(lab)


def test_in_use_volume_refuses_second_attach_and_delete(cloud, key, pair):
    a, b = pair
    vid = new_volume(cloud)
    attach(cloud, vid, a, "/dev/sdh")
    r = cloud.api.post(f"/v1/volumes/{vid}/attach",
                       json={"instance_id": b["instance_id"], "device": "/dev/sdh"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "VolumeInUse", r.text
    r = cloud.api.delete(f"/v1/volumes/{vid}")
    assert r.status_code == 409 and r.json()["error"]["code"] == "VolumeInUse", r.text
    # the guest on b never saw it; a still has it
    out = guest(cloud, b, key, f"ls /dev/disk/by-id/ 2>/dev/null | grep -c {serial(vid)} || true")
    assert out.strip() == "0"
    by_id_device(cloud, a, key, vid)
    detach(cloud, vid)
    delete(cloud, vid)


def test_grow_shows_the_new_size_in_the_guest(cloud, key, pair, lab):
    a, _ = pair
    vid = new_volume(cloud)
    cloud.call("PATCH", f"/v1/volumes/{vid}", json={"size_gib": 2})
    deadline = time.monotonic() + 60
    while cloud.call("GET", f"/v1/volumes/{vid}")["modification_state"] != "completed":
        assert time.monotonic() < deadline, "grow not completed"
        time.sleep(0.5)
    assert node_volumes(lab)[vid]["size_bytes"] == 2 * GiB
    attach(cloud, vid, a, "/dev/sdi")
    dev = by_id_device(cloud, a, key, vid)
    out = guest(cloud, a, key, f"cat /sys/block/{dev.rsplit('/', 1)[1]}/size")
    assert int(out) * 512 == 2 * GiB
    detach(cloud, vid)
    delete(cloud, vid)


def _uptime(cloud, inst, key) -> float:
    return float(guest(cloud, inst, key, "cut -d' ' -f1 /proc/uptime").strip())


def test_an_attached_volume_grows_live_in_the_guest(cloud, key, pair, lab):
    """Grow a volume the running guest is reading all along: the guest sees the new size
    without a reboot, can use the new space, its data is intact, and none of its reads failed
    while the storage node re-made the export (the disk's error policy pauses the guest
    instead, and the agent resumes it)."""
    a, _ = pair
    vid = new_volume(cloud)
    attach(cloud, vid, a, "/dev/sdm")
    dev = by_id_device(cloud, a, key, vid)
    blocks = f"/sys/block/{dev.rsplit('/', 1)[1]}/size"
    digest = guest(cloud, a, key, SYNCED_WRITE.format(dev)).split()[0]
    assert int(guest(cloud, a, key, f"cat {blocks}")) * 512 == GiB
    errors_before = guest(cloud, a, key, "dmesg | grep -c 'I/O error' || true").strip()
    up = _uptime(cloud, a, key)
    # Reads every 0.2 s for ~20 s around the grow (one SSH session in a thread): each read's
    # sum is printed, each error goes to /tmp/errs.
    reader: dict = {}
    loop = ("rm -f /tmp/errs; i=0; while [ $i -lt 60 ]; do"
            f" dd if={dev} bs=64k count=16 iflag=direct 2>>/tmp/errs | sha256sum;"
            " i=$((i+1)); sleep 0.2; done; echo done")
    t = threading.Thread(target=lambda: reader.update(r=ssh(
        cloud.router_netns(a), key, a["private_ip"], loop, timeout=150)))
    t.start()
    time.sleep(3)
    cloud.call("PATCH", f"/v1/volumes/{vid}", json={"size_gib": 2})
    out = guest(cloud, a, key,
                f"i=0; while [ $i -lt 90 ] && [ $(cat {blocks}) -ne {2 * GiB // 512} ]; do"
                f" sleep 1; i=$((i+1)); done; cat {blocks}", timeout=150)
    assert int(out) * 512 == 2 * GiB, out
    assert cloud.call("GET", f"/v1/volumes/{vid}")["modification_state"] == "completed"
    assert node_volumes(lab)[vid]["size_bytes"] == 2 * GiB
    # The reads finished; every one returned the synced data, none failed.
    t.join(timeout=160)
    r = reader["r"]
    assert r.returncode == 0, r.stdout + r.stderr
    sums = r.stdout.split()
    assert sums[-1] == "done", sums[-3:]
    reads = [s for s in sums[:-1] if s != "-"]
    assert len(reads) == 60 and set(reads) == {digest}, set(reads)
    # dd's stderr holds its record counts only: 60 reads, 16 blocks each, no error line.
    errs = guest(cloud, a, key, "cat /tmp/errs").splitlines()
    assert errs.count("16+0 records in") == 60 and all("records" in e for e in errs), errs
    assert guest(cloud, a, key, "dmesg | grep -c 'I/O error' || true").strip() == errors_before
    # The new space past the old end takes data; the guest never rebooted.
    seek = GiB // (64 * 1024)
    new = guest(cloud, a, key,
                f"dd if=/dev/urandom of=/tmp/blk2 bs=64k count=16 2>/dev/null && "
                f"dd if=/tmp/blk2 of={dev} bs=64k seek={seek} oflag=direct conv=fsync "
                f"2>/dev/null && sha256sum < /tmp/blk2").split()[0]
    back = guest(cloud, a, key, f"dd if={dev} bs=64k skip={seek} count=16 iflag=direct "
                                "2>/dev/null | sha256sum").split()[0]
    assert back == new
    assert _uptime(cloud, a, key) > up
    detach(cloud, vid)
    delete(cloud, vid)


def wait_snapshot(cloud, sid: str, state: str, timeout: float = 90) -> dict:
    deadline, seen = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        seen = cloud.call("GET", f"/v1/snapshots/{sid}")
        if seen["state"] == state:
            return seen
        time.sleep(0.5)
    raise AssertionError(f"{sid} not {state} within {timeout} s: {seen}")


def test_snapshot_keeps_the_old_data_while_the_volume_changes(cloud, key, pair, lab, backend):
    """A snapshot of an attached volume (crash-consistent: after a synced write), then the
    volume changes; a volume created from the snapshot, attached on the other host, holds the
    old data; the original holds the new."""
    a, b = pair
    vid = new_volume(cloud)
    attach(cloud, vid, a, "/dev/sdl")
    dev = by_id_device(cloud, a, key, vid)
    write = SYNCED_WRITE.format(dev)
    old = guest(cloud, a, key, write).split()[0]
    sid = cloud.call("POST", "/v1/snapshots", json={"volume_id": vid})["snapshot_id"]
    snap = wait_snapshot(cloud, sid, "completed")
    assert snap["volume_id"] == vid
    # Billed by what it stores (issue 13): the guest wrote 1 MiB to the 1 GiB volume. NBD
    # measures the data plus qcow2 metadata (~1.4 MiB), RBD its 4 MiB objects written.
    mib = GiB >> 10
    assert snap["volume_size_gib"] == 1 and mib <= snap["stored_bytes"] <= 8 * mib, snap
    new = guest(cloud, a, key, write).split()[0]
    assert new != old
    copy = cloud.call("POST", "/v1/volumes", json={"snapshot_id": sid})
    assert copy["size_gib"] == 1 and copy["snapshot_id"] == sid
    wait_volume(cloud, copy["volume_id"], "available")
    attach(cloud, copy["volume_id"], b, "/dev/sdl")
    cdev = by_id_device(cloud, b, key, copy["volume_id"])
    assert guest(cloud, b, key, DIRECT_READ.format(cdev)).split()[0] == old
    assert guest(cloud, a, key, DIRECT_READ.format(dev)).split()[0] == new
    for v in (vid, copy["volume_id"]):
        cloud.call("POST", f"/v1/volumes/{v}/detach", json={})
    for v in (vid, copy["volume_id"]):
        wait_volume(cloud, v, "available")
        delete(cloud, v)
    # the snapshot outlives its volume, and goes when deleted
    assert cloud.call("GET", f"/v1/snapshots/{sid}")["state"] == "completed"
    cloud.call("DELETE", f"/v1/snapshots/{sid}")
    deadline = time.monotonic() + 60
    while cloud.api.get(f"/v1/snapshots/{sid}").status_code != 404:
        assert time.monotonic() < deadline, "snapshot not deleted"
        time.sleep(0.5)
    with storage_node(lab) as c:
        assert sid not in {s["snapshot_id"] for s in c.get("/v1/snapshots").json()}


def _daemon_pid(lab) -> int:
    """The lab storage node's qemu-storage-daemon (its pid file under the node's state dir)."""
    for p in (lab.state_dir / "storage").rglob("*.pid"):
        try:
            pid = int(p.read_text().split()[0])
        except (ValueError, IndexError):
            continue
        if "qemu-storage-daemon" in open(f"/proc/{pid}/cmdline", "rb").read().decode(
                errors="replace"):
            return pid
    raise AssertionError("no qemu-storage-daemon pid file under the storage node's state dir")


def test_synced_data_survives_storage_daemon_restart(cloud, key, pair, lab, backend):
    """fsync'ed blocks are on the storage node: kill -9 its daemon while the volume is attached;
    the node's reconcile loop serves it again, and the guest reads its data back (a request
    during the outage may fail; none of the synced data is lost)."""
    if backend.name == "rbd":
        pytest.skip("no qemu-storage-daemon on RBD: test_synced_data_survives_osd_and_node_"
                    "restart is its counterpart")
    a, _ = pair
    vid = new_volume(cloud)
    attach(cloud, vid, a, "/dev/sdj")
    dev = by_id_device(cloud, a, key, vid)
    digest = guest(cloud, a, key, SYNCED_WRITE.format(dev)).split()[0]
    old = _daemon_pid(lab)
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        try:
            new = _daemon_pid(lab)
            if new != old and vid in _exports(lab):
                break
        except (AssertionError, FileNotFoundError, ProcessLookupError):
            pass
        assert time.monotonic() < deadline, "the storage daemon did not come back with the export"
        time.sleep(0.5)
    # reads resume once QEMU's NBD client has reconnected (a first one may fail while it does)
    out = guest(cloud, a, key,
                f"i=0; while [ $i -lt 30 ]; do echo 3 > /proc/sys/vm/drop_caches;"
                f" s=$(dd if={dev} bs=64k count=16 iflag=direct 2>/dev/null | sha256sum);"
                f" [ \"${{s%% *}}\" = {digest} ] && echo same && exit 0; i=$((i+1)); sleep 1;"
                " done; echo differs", timeout=120)
    assert out.strip().endswith("same"), out
    detach(cloud, vid)
    delete(cloud, vid)


def test_synced_data_survives_osd_and_node_restart(cloud, key, pair, lab, backend):
    """RBD's counterpart of the daemon restart: kill -9 the cluster's only OSD while the guest
    has the volume attached, and start it again; then restart the storage node's control
    process too. The guest reads back its synced data (librbd waits for the OSD instead of
    failing I/O) and writes again; the node answers for the volume as before."""
    if backend.name != "rbd":
        pytest.skip("the OSD exists on RBD only: test_synced_data_survives_storage_daemon_"
                    "restart is the NBD counterpart")
    a, _ = pair
    vid = new_volume(cloud)
    attach(cloud, vid, a, "/dev/sdj")
    dev = by_id_device(cloud, a, key, vid)
    digest = guest(cloud, a, key, SYNCED_WRITE.format(dev)).split()[0]
    took = backend.cluster.restart("osd")
    print(f"OSD booted again, HEALTH_OK after {took} s")
    restart_storage(lab, backend.rbd_env(lab))
    assert vid in _exports(lab)  # the wanted-attached set outlived the node's process
    out = guest(cloud, a, key, "echo 3 > /proc/sys/vm/drop_caches; " + DIRECT_READ.format(dev),
                timeout=120)
    assert out.split()[0] == digest, out
    again = guest(cloud, a, key, SYNCED_WRITE.format(dev)).split()[0]
    assert guest(cloud, a, key, DIRECT_READ.format(dev)).split()[0] == again
    detach(cloud, vid)
    delete(cloud, vid)


def test_fsynced_data_survives_kill9_of_the_guest_qemu(cloud, key, pair):
    """cache=none and an fsync that returned: the data is on the storage node, so a hard kill
    of the guest's QEMU loses none of it; the instance starts again with the volume attached."""
    _, b = pair
    vid = new_volume(cloud)
    attach(cloud, vid, b, "/dev/sdk")
    dev = by_id_device(cloud, b, key, vid)
    digest = guest(cloud, b, key, SYNCED_WRITE.format(dev)).split()[0]
    os.kill(qemu_pid_of(b["instance_id"]), signal.SIGKILL)
    # A domain that dies under the guest is a crash: the instance reads impaired until its
    # owner acts (stop, then start), as a failed EC2 instance status check does.
    cloud.wait(b["instance_id"], "running", "impaired", timeout=120)
    cloud.action(b["instance_id"], "stop")
    cloud.wait(b["instance_id"], "stopped", timeout=120)
    assert cloud.call("GET", f"/v1/volumes/{vid}")["attachments"][0]["state"] == "attached"
    cloud.action(b["instance_id"], "start")
    cloud.wait(b["instance_id"], "running", "ok", timeout=240)
    dev = by_id_device(cloud, b, key, vid)
    out = guest(cloud, b, key, DIRECT_READ.format(dev))
    assert out.split()[0] == digest
    detach(cloud, vid)
    delete(cloud, vid)


def _exports(lab) -> set[str]:
    return {v for v, info in node_volumes(lab).items() if info["exported"]}


def test_delete_on_termination(cloud, key, lab):
    """Terminating an instance deletes the volumes attached with delete_on_termination and
    frees the others; no export and no volume file of the deleted one is left on the node."""
    inst = cloud.run(1, key_name="volume-tests")[0]
    inst = cloud.wait(inst["instance_id"], "running", timeout=240)
    keep = cloud.call("POST", "/v1/volumes", json={"size_gib": 1})["volume_id"]
    drop = cloud.call("POST", "/v1/volumes", json={"size_gib": 1})["volume_id"]
    for vid, dev, dot in ((keep, "/dev/sdf", False), (drop, "/dev/sdg", True)):
        wait_volume(cloud, vid, "available")
        cloud.call("POST", f"/v1/volumes/{vid}/attach",
                   json={"instance_id": inst["instance_id"], "device": dev,
                         "delete_on_termination": dot})
    for vid in (keep, drop):
        wait_volume(cloud, vid, "in-use", "attached", timeout=120)
    cloud.action(inst["instance_id"], "terminate")
    cloud.wait(inst["instance_id"], "terminated", timeout=120)
    wait_volume(cloud, keep, "available")
    wait_deleted(cloud, drop)
    on_node = node_volumes(lab)
    assert drop not in on_node
    wait_node_export(lab, keep, False)
    files = [p.name for p in (lab.state_dir / "storage").rglob(f"{drop}*")]
    assert files == [], files
    delete(cloud, keep)
    assert keep not in node_volumes(lab)


def test_storage_node_left_clean(cloud, lab, pair):
    """After the module's volumes are deleted: nothing exported, no volume file (ran last)."""
    deadline = time.monotonic() + 30
    while True:
        live = cloud.call("GET", "/v1/volumes", params={"max_results": 1000})["items"]
        if not live:
            break
        assert time.monotonic() < deadline, live
        time.sleep(1)
    assert node_volumes(lab) == {}
    out = subprocess.run(["find", str(lab.state_dir / "storage"), "-name", "vol-*"],
                         capture_output=True, text=True).stdout.split()
    assert out == [], json.dumps(out)
