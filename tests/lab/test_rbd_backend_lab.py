"""RbdBackend (agent/storage_node/rbd_backend.py) against a real single-node Ceph cluster
(tests/lab/ceph_support.py: mon, mgr and one bluestore-on-a-file OSD inside a namespace this
module creates, loopback only). It runs the shared VolumeBackend checks that hold for every
backend (tests/unit/volume_contract.py: bad input, missing volumes, create/grow) and the RBD
forms of the NBD-shaped ones (export lifecycle, unexport while a client is connected, forced
unexport), with QEMU's own rbd client (qemu-io) as the connected client; then a data path with
a live grow. Snapshots: the shared snapshot checks (capability "snapshots") with qemu-io doing
the I/O and `rbd du` (RBD's own per-object accounting) as the storage used, then what is RBD's
own: a snapshot taken while one client holds the image open (its exclusive lock), clones that
outlive the snapshot and the volume they came from (librbd's trash), a held image left without
snapshots swept by ensure(). Skips with a clear reason when the ceph packages are not
installed. Afterwards no process, namespace or directory is left (checked by ceph_cluster).

The cluster runs with cephx (every daemon and client authenticates; the checks above run as
client.admin). Per-host cephx (docs/security.md "Storage access"): a node with its own user
(rbd_cephx.node_caps) grants each export to one host's user only; another host's key is refused
(EPERM) reading or writing it for a whole window, also with `rbd export`; a move, an unexport
and a clone's parent change what each key opens; the node's user cannot read other users' keys.
Then a real guest on "host A" (a private libvirtd, kumo-tiny) has the volume as a disk through
the agent's own path (contract source -> disk with <auth> -> libvirt secret), reads what the
node wrote and writes what the node reads back; after the detach and unexport host A's key
opens it no more.
"""
from __future__ import annotations

import json

import pytest

from agent.drivers.base import NetworkHost
from agent.drivers.volumes import MiB, VolumeInfo
from agent.drivers.volumes import SnapshotInfo
from agent.storage_node.rbd_backend import RbdBackend
from tests.lab.ceph_support import MON_V1_PORT, ceph_cluster, skip_reason
from tests.lab.rbd_cephx_support import (cephx_backend_for,  # noqa: F401 (libvirtd: a fixture)
                                         check_cephx_hosts, check_guest_on_host_a,
                                         guest_skip_reason, libvirtd)
from tests.lab.storage_support import qemu_io_session
from tests.unit import volume_contract as contract
from tests.unit.volume_contract import _code

pytestmark = [pytest.mark.lab]

V1 = "vol-0000000000000cb01"
V2 = "vol-0000000000000cb02"
V3 = "vol-0000000000000cb03"
S1 = "snap-0000000000000cb01"
S2 = "snap-0000000000000cb02"


@pytest.fixture(scope="module")
def cluster():
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with ceph_cluster(auth="cephx") as c:
        yield c


@pytest.fixture
def backend(cluster, tmp_path):
    b = RbdBackend(tmp_path / "rbd", cluster.pool, [NetworkHost("127.0.0.1", MON_V1_PORT)],
                   conf=cluster.conf, netns=cluster.ns, max_size=1 << 30)
    yield b
    for v in b.volumes():  # whatever a failed check left
        b.unexport(v.volume_id, force=True)
        b.delete(v.volume_id)
    for s in b.snapshots():
        b.delete_snapshot(s.snapshot_id)


def _connected(cluster):
    """A contract.Connected for RBD: an interactive qemu-io holding the image open."""
    def connected(src):
        # A blocklisted client may end: that is the refusal the force-unexport check expects.
        return qemu_io_session(["ip", "netns", "exec", cluster.ns, "qemu-io", "-f", "raw",
                                f"rbd:{src.name}:conf={cluster.conf}"],
                               ended_is_refusal=True, failure_words=("failed", "error"))
    return connected


def _watched(cluster, vid: str) -> bool:
    r = cluster.run("rbd", "--conf", str(cluster.conf), "status", "--format", "json",
                    f"{cluster.pool}/{vid}")
    return bool(json.loads(r.stdout)["watchers"])


def test_shared_contract_checks(backend):
    contract.check_bad_input(backend, V1)
    contract.check_missing(backend, V1)
    contract.check_create_and_grow(backend, V1)
    assert backend.volumes() == [] and backend.exports() == {}


def test_export_lifecycle_rbd_form(backend, cluster, tmp_path):
    b = backend
    b.create(V1, 64 * MiB)
    b.create(V2, 64 * MiB)
    src = b.export(V1)
    assert (src.protocol, src.name) == ("rbd", f"{cluster.pool}/{V1}")
    assert src.hosts == (NetworkHost("127.0.0.1", MON_V1_PORT),)
    assert b.export(V1) == src and b.exports() == {V1: src}
    assert {v.volume_id: v.exported for v in b.volumes()} == {V1: True, V2: False}
    assert _code(lambda: b.delete(V1)) == "VolumeInUse"
    b.grow(V1, 128 * MiB)
    assert VolumeInfo(V1, 128 * MiB, True) in b.volumes()
    # An agent restart: the wanted set is persisted; ensure() is idempotent.
    again = RbdBackend(b.state_dir, cluster.pool, b.mon_hosts, conf=cluster.conf,
                       netns=cluster.ns, max_size=1 << 30)
    again.ensure()
    again.ensure()
    assert again.exports() == {V1: src}
    b.unexport(V1)
    b.unexport(V1)
    assert b.exports() == {}
    b.delete(V1)
    b.delete(V2)
    assert b.volumes() == []


def test_unexport_while_connected_and_live_grow(backend, cluster):
    b = backend
    b.create(V1, 64 * MiB)
    src = b.export(V1)
    with _connected(cluster)(src) as works:
        assert works()
        assert _watched(cluster, V1)
        assert _code(lambda: b.unexport(V1)) == "VolumeInUse"
        assert V1 in b.exports()
        b.grow(V1, 128 * MiB)  # "grow_exported": live, while the client has it open
        assert VolumeInfo(V1, 128 * MiB, True) in b.volumes()
        # QEMU's rbd driver keeps the size it opened with (no has_variable_length) until the
        # host resizes the disk (libvirt blockresize -> block_resize -> rbd_resize to the size
        # the image has already): that is the host's resize_disk after the grow.
        said = works.last_words("length\ntruncate 128M\nlength\nwrite -P 0x33 100M 1M\n")
        assert "> 64 MiB\n" in said and "> 128 MiB\n" in said, said
        assert "wrote 1048576/1048576 bytes at offset 104857600" in said, said
    b.unexport(V1)
    b.delete(V1)


def test_force_unexport_cuts_the_client_off(backend, cluster):
    b = backend
    b.create(V1, 64 * MiB)
    src = b.export(V1)
    with _connected(cluster)(src) as works:
        assert works()
        b.unexport(V1, force=True)
        assert b.exports() == {} and VolumeInfo(V1, 64 * MiB, False) in b.volumes()
        assert not works()
        b.unexport(V1, force=True)  # not exported: a no-op
        again = b.export(V1)
        assert not works(), "a blocklisted client got the volume back"
        with _connected(cluster)(again) as works2:  # a new client (another host) works
            assert works2()
        b.unexport(V1)
    b.delete(V1)
    assert b.volumes() == [] and b.exports() == {}


def test_data_path_and_qemu_img(backend, cluster):
    b = backend
    b.create(V1, 64 * MiB)
    src = b.export(V1)
    url = f"rbd:{src.name}:conf={cluster.conf}"
    w = cluster.run("qemu-io", "-f", "raw", "-c", "write -P 0xab 0 1M", url, check=False)
    assert w.returncode == 0 and "wrote 1048576/1048576" in w.stdout, w.stdout + w.stderr
    b.grow(V1, 128 * MiB)
    info = json.loads(cluster.run("qemu-img", "info", "--output=json", url).stdout)
    assert info["virtual-size"] == 128 * MiB
    r = cluster.run("qemu-io", "-f", "raw", "-c", "read -P 0xab 0 1M", url, check=False)
    assert r.returncode == 0 and "verification failed" not in r.stdout, r.stdout + r.stderr
    b.unexport(V1)
    b.delete(V1)
    assert b.volumes() == []


class RbdIO:
    """tests/unit/volume_contract.VolumeIO with qemu-io over rbd: (one client per call: it
    opens the image, takes its exclusive lock, writes, flushes on close) and `rbd du` of the
    pool (what RBD counts as used: the objects of every image, held ones included, and of
    every snapshot, from the object maps)."""

    def __init__(self, cluster):
        self.c = cluster

    def write(self, volume_id, offset, length, pattern):
        w = self.c.run("qemu-io", "-f", "raw", "-c", f"write -P {pattern} {offset} {length}",
                       self.c.rbd_url(volume_id), check=False)
        assert w.returncode == 0 and f"wrote {length}/{length}" in w.stdout, w.stdout + w.stderr

    def holds(self, volume_id, offset, length, pattern):
        r = self.c.run("qemu-io", "-f", "raw", "-c", f"read -P {pattern} {offset} {length}",
                       self.c.rbd_url(volume_id), check=False)
        assert "read" in r.stdout or "verification failed" in r.stdout, r.stdout + r.stderr
        return r.returncode == 0 and "verification failed" not in r.stdout

    def allocated(self):
        du = self.c.run("rbd", "--conf", str(self.c.conf), "du", "--format", "json",
                        "--pool", self.c.pool, check=False)
        assert du.returncode == 0, du.stderr
        return json.loads(du.stdout)["total_used_size"]


def _pool_listing(cluster) -> tuple[list[str], list[str]]:
    """(every image name in the pool, every image in its trash)."""
    rbd = ("rbd", "--conf", str(cluster.conf))
    ls = json.loads(cluster.run(*rbd, "ls", "--format", "json", cluster.pool).stdout or "[]")
    trash = json.loads(cluster.run(*rbd, "trash", "ls", "--all", "--format", "json",
                                   cluster.pool).stdout or "[]")
    return sorted(ls), sorted(t["name"] for t in trash)


def test_snapshot_contract_on_rbd(backend, cluster):
    b, io = backend, RbdIO(cluster)
    contract.check_snapshot_bad_input(b, V1, S1)
    contract.check_snapshot_data(b, io, [V1, V2, V3], [S1, S2])
    contract.check_snapshots_outlive_their_volume(b, io, V1, V2, S1, S2)
    contract.check_snapshot_shares_data(b, io, V1, S1)
    before, after = contract.check_snapshot_while_writing(b, io, V1, V2, S1)
    assert 3 <= before and after < 40, (before, after)  # taken while the client was writing
    assert b.volumes() == [] and b.snapshots() == [] and b.exports() == {}
    assert _pool_listing(cluster) == ([], [])  # nothing held, nothing in the trash


def test_snapshot_stored_bytes_on_rbd(backend, cluster):
    """`rbd du` of a snapshot: 8 MiB written to a 1 GiB image (two 4 MiB objects) store 8 MiB."""
    contract.check_snapshot_stored_bytes(backend, RbdIO(cluster), V1, V2, S1, S2)
    assert backend.volumes() == [] and backend.snapshots() == []


def test_rbd_snapshots_open_client_clones_and_trash(backend, cluster):
    b, io = backend, RbdIO(cluster)
    b.create(V1, 64 * MiB)
    src = b.export(V1)
    # One client holds the image (and its exclusive lock) all along; its write is acknowledged
    # (qemu-io without -n: QEMU leaves librbd's cache on, which may still hold it): the
    # snapshot, sent to that client, must flush it first.
    with _connected(cluster)(src) as works:
        assert works()  # 0x5a at 0, 512 bytes
        info = b.snapshot(V1, S1)
        assert info == SnapshotInfo(S1, V1, 64 * MiB)
        said = works.last_words("write -P 0x66 0 512\n")
        assert "wrote 512/512" in said, said
    b.create(V2, 128 * MiB, from_snapshot=S1)
    assert io.holds(V2, 0, 512, 0x5a) and io.holds(V1, 0, 512, 0x66)
    assert io.holds(V2, 64 * MiB, MiB, 0)
    clone = json.loads(cluster.run("rbd", "--conf", str(cluster.conf), "info", "--format",
                                   "json", f"{cluster.pool}/{V2}").stdout)
    assert clone["parent"]["snapshot"] == S1 and clone["parent"]["overlap"] == 64 * MiB, clone

    # An agent restart: everything is read back from the pool.
    again = RbdBackend(b.state_dir, cluster.pool, b.mon_hosts, conf=cluster.conf,
                       netns=cluster.ns, max_size=1 << 30)
    assert again.snapshots() == [info]
    b.unexport(V1)
    b.delete(V1)  # has a snapshot: held under another name
    held = [n for n in _pool_listing(cluster)[0] if n.startswith(f"held.{V1}.")]
    assert len(held) == 1 and b.snapshots() == [info], _pool_listing(cluster)
    b.delete_snapshot(S1)  # a clone reads it: librbd trashes it, the held image goes to trash
    assert b.snapshots() == [] and _pool_listing(cluster) == ([V2], held)
    assert io.holds(V2, 0, 512, 0x5a)  # the clone still reads through its parent
    b.delete(V2)  # the last clone: librbd removes the trashed parent with it
    assert _pool_listing(cluster) == ([], [])

    # A held image left without snapshots (a crash between snap rm and rm) goes at ensure().
    b.create(V1, 64 * MiB)
    b.snapshot(V1, S2)
    b.delete(V1)
    held = _pool_listing(cluster)[0]
    cluster.run("rbd", "--conf", str(cluster.conf), "snap", "rm", "--no-progress",
                f"{cluster.pool}/{held[0]}@{S2}")
    assert b.snapshots() == [] and b.volumes() == [] and _pool_listing(cluster)[0] == held
    b.ensure()
    assert _pool_listing(cluster) == ([], [])

    # A create that died between clone and rename left new.<id>: the next try replaces it.
    b.create(V1, 64 * MiB)
    b.snapshot(V1, S1)
    cluster.run("rbd", "--conf", str(cluster.conf), "clone", "--rbd-default-clone-format",
                "2", f"{cluster.pool}/{V1}@{S1}", f"{cluster.pool}/new.{V2}")
    b.create(V2, 96 * MiB, from_snapshot=S1)
    assert VolumeInfo(V2, 96 * MiB, False) in b.volumes()
    assert _pool_listing(cluster) == ([V1, V2], [])
    b.delete(V2)
    b.delete_snapshot(S1)
    b.delete(V1)
    assert _pool_listing(cluster) == ([], [])


# -- per-host cephx (tests/lab/rbd_cephx_support.py) -------------------------------------------
def test_cephx_each_host_opens_only_its_own_images(cluster, tmp_path):
    b = cephx_backend_for(cluster, tmp_path)
    try:
        check_cephx_hosts(b, cluster, V1, V2, V3, S1)
    finally:
        for v in b.volumes():
            b.unexport(v.volume_id, force=True)
            b.delete(v.volume_id)
        for s in b.snapshots():
            b.delete_snapshot(s.snapshot_id)
    assert _pool_listing(cluster) == ([], [])


def test_cephx_real_guest_on_host_a(libvirtd, tmp_path):
    """A cluster of its own in the private libvirtd's namespace, so that QEMU reaches it."""
    import subprocess
    reason = guest_skip_reason()
    if reason:
        pytest.skip(reason)
    subprocess.run(["ip", "-n", libvirtd.ns, "link", "set", "lo", "up"], check=True)
    with ceph_cluster(ns=libvirtd.ns, auth="cephx") as c:
        b = cephx_backend_for(c, tmp_path)
        check_guest_on_host_a(b, c, libvirtd, tmp_path, V1)
