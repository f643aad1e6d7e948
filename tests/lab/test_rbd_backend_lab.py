"""RbdBackend (agent/storage_node/rbd_backend.py) against a real single-node Ceph cluster
(tests/lab/ceph_support.py: mon, mgr and one bluestore-on-a-file OSD inside a namespace this
module creates, loopback only). It runs the shared VolumeBackend checks that hold for every
backend (tests/unit/volume_contract.py: bad input, missing volumes, create/grow) and the RBD
forms of the NBD-shaped ones (export lifecycle, unexport while a client is connected, forced
unexport), with QEMU's own rbd client (qemu-io) as the connected client; then a data path with
a live grow. Skips with a clear reason when the ceph packages are not installed. Afterwards no
process, namespace or directory is left (checked by ceph_cluster).
"""
from __future__ import annotations

import json

import pytest

from agent.drivers.base import NetworkHost
from agent.drivers.volumes import MiB, VolumeInfo
from agent.storage_node.rbd_backend import RbdBackend
from tests.lab.ceph_support import MON_V1_PORT, ceph_cluster, skip_reason
from tests.lab.storage_support import qemu_io_session
from tests.unit import volume_contract as contract
from tests.unit.volume_contract import _code

pytestmark = [pytest.mark.lab]

V1 = "vol-0000000000000cb01"
V2 = "vol-0000000000000cb02"


@pytest.fixture(scope="module")
def cluster():
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with ceph_cluster() as c:
        yield c


@pytest.fixture
def backend(cluster, tmp_path):
    b = RbdBackend(tmp_path / "rbd", cluster.pool, [NetworkHost("127.0.0.1", MON_V1_PORT)],
                   conf=cluster.conf, netns=cluster.ns, max_size=1 << 30)
    yield b
    for v in b.volumes():  # whatever a failed check left
        b.unexport(v.volume_id, force=True)
        b.delete(v.volume_id)


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
    # Snapshots are not implemented: asking for one fails cleanly and changes nothing.
    assert "snapshots" not in b.capabilities
    assert _code(lambda: b.create(V2, 64 * MiB, from_snapshot="snap-0000000000000cb01")) == \
        "UnsupportedOperation"
    assert b.volumes() == []
