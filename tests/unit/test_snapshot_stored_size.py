"""What a snapshot stores (issue 13, billing): the parsers of `qemu-img measure` and `rbd du`
output (agent/storage_node/files.py parse_measure, rbd_backend.py parse_du), the rounding to
billed GiB (controller/services/metering.py snapshot_gib), the wire field (omitted when not
measured) and its extension; and, for real, `qemu-img measure -l` of a qcow2 internal snapshot
of a 1 GiB volume with 8 MiB written, taken through QMP while a qemu-storage-daemon (no NBD
server, no network: a unix QMP socket in a temp dir) holds the file open and locked."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from decimal import Decimal
from types import SimpleNamespace

import pytest

from agent import qemu_img
from agent.contract.storage_v1 import SnapshotObserved
from agent.drivers.fake_volumes import FakeVolumeBackend
from agent.drivers.volumes import SnapshotInfo
from agent.storage_node.app import extensions_of
from agent.storage_node.daemon import StorageDaemon
from agent.storage_node.files import VolumeFiles, parse_measure, snapshot_name
from agent.storage_node.qmp import QmpClient, QmpError
from agent.storage_node.rbd_backend import RbdError, parse_du
from controller.services.metering import snapshot_gib

MiB, GIB = 1 << 20, 1 << 30
VID = "vol-0000000000000e001"
SID = "snap-0000000000000e001"
SID2 = "snap-0000000000000e002"


# -- parsing ----------------------------------------------------------------------------------
def test_parse_measure():
    assert parse_measure('{"bitmaps": 0, "required": 8781824, "fully-allocated": 1074135040}') \
        == 8781824
    assert parse_measure('{"required": 0, "fully-allocated": 0}') == 0
    for bad in ("", "not json", "[]", '{"fully-allocated": 5}', '{"required": -1}',
                '{"required": "8781824"}', '{"required": true}', '{"required": 1.5}'):
        with pytest.raises(qemu_img.QemuImgError):
            parse_measure(bad)


DU = json.dumps({"images": [
    {"name": "vol-0000000000000e001", "snapshot": "snap-0000000000000e001", "snapshot_id": 4,
     "id": "1234abcd", "size": GIB, "provisioned_size": GIB, "used_size": 12 * MiB},
    {"name": "vol-0000000000000e001", "id": "1234abcd", "size": GIB,
     "provisioned_size": GIB, "used_size": 4 * MiB}],
    "total_provisioned_size": GIB, "total_used_size": 16 * MiB})


def test_parse_du():
    assert parse_du(DU, VID, SID) == 12 * MiB
    held = "held.vol-0000000000000e001.1234abcd"  # a deleted volume's image keeps its snapshots
    assert parse_du(DU.replace(VID, held), held, SID) == 12 * MiB
    for text, image, snap in ((DU, VID, SID2), (DU, "vol-0000000000000e002", SID),
                              ("", VID, SID), ("{}", VID, SID), ('{"images": 3}', VID, SID),
                              (DU.replace(str(12 * MiB), '"x"'), VID, SID)):
        with pytest.raises(RbdError) as e:
            parse_du(text, image, snap)
        assert e.value.code == "StorageBackendError" and e.value.retryable


# -- billing and the wire ---------------------------------------------------------------------
@pytest.mark.parametrize("stored, gib", [
    (None, 100),  # completed before stored sizes were measured: the volume's size
    (0, 0), (1, 1), (8 * MiB, 1), (GIB, 1), (GIB + 1, 2), (3 * GIB + GIB // 5, 4),
    (100 * GIB, 100), (1 << 62, 1 << 32)])
def test_snapshot_gib_rounds_stored_bytes_up(stored, gib):
    assert snapshot_gib(SimpleNamespace(stored_bytes=stored, volume_size_gib=100)) == gib
    if stored:
        assert Decimal(gib - 1) < Decimal(stored) / GIB <= Decimal(gib)


def test_wire_field_is_left_out_when_not_measured():
    plain = SnapshotObserved(snapshot_id=SID, volume_id=VID, size_bytes=GIB)
    assert "stored_bytes" not in plain.model_dump(mode="json")
    assert SnapshotObserved.model_validate(plain.model_dump(mode="json")) == plain
    measured = plain.model_copy(update={"stored_bytes": 5 * MiB})
    assert measured.model_dump(mode="json")["stored_bytes"] == 5 * MiB
    with pytest.raises(ValueError):
        SnapshotObserved(snapshot_id=SID, volume_id=VID, size_bytes=GIB, stored_bytes=-1)


def test_extension_only_with_snapshots():
    fake = FakeVolumeBackend()
    assert "snapshot-stored-bytes" in extensions_of(fake)
    fake.capabilities = frozenset({"nbd"})
    assert not {"snapshots", "snapshot-stored-bytes"} & set(extensions_of(fake))


def test_fake_reports_the_bytes_written():
    b = FakeVolumeBackend(max_size=GIB)
    b.create(VID, GIB)
    b.export(VID)
    assert b.snapshot(VID, SID).stored_bytes == 0  # nothing written: nothing stored
    b.write(VID, 0, b"x" * (3 * MiB))
    b.write(VID, 512 * MiB, b"y")  # one more 64 KiB chunk
    info = b.snapshot(VID, SID2)
    assert info.stored_bytes == 3 * MiB + (64 << 10)
    assert info == SnapshotInfo(SID2, VID, GIB)  # a measurement, not part of the identity


# -- qemu-img measure of a real qcow2 internal snapshot ---------------------------------------
needs_qemu = pytest.mark.skipif(not all(shutil.which(t) for t in (
    "qemu-img", "qemu-io", "qemu-storage-daemon")), reason="qemu-img/qemu-io/qsd not installed")


def _write(path, offset: int, length: int, pattern: int) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c",
                    f"write -P {pattern:#x} {offset} {length}", str(path)],
                   check=True, capture_output=True, timeout=60)


@needs_qemu
def test_measure_a_snapshot_of_a_closed_volume(tmp_path):
    files = VolumeFiles(tmp_path / "volumes")
    files.create(VID, GIB)
    path = files.path(VID)
    empty = snapshot_name(SID2, GIB)
    files.snapshot_create(path, empty)
    _write(path, 0, 8 * MiB, 0xAB)
    name = snapshot_name(SID, GIB)
    files.snapshot_create(path, name)
    _write(path, 8 * MiB, 32 * MiB, 0xCD)  # after the snapshot: not its data
    stored = files.snapshot_stored_bytes(path, name)
    assert 8 * MiB <= stored <= 16 * MiB, stored
    assert files.snapshot_stored_bytes(path, empty) < MiB  # qcow2 metadata only
    with pytest.raises(qemu_img.QemuImgError):
        files.snapshot_stored_bytes(path, snapshot_name("snap-0000000000000e0ff", GIB))


@needs_qemu
def test_measure_while_the_daemon_holds_the_volume_open(tmp_path):
    """The NbdBackend's path for an exported volume: the snapshot is taken through QMP (the
    daemon has the file open, write-locked) and measured from under it (file.locking=off)."""
    files = VolumeFiles(tmp_path / "volumes")
    files.create(VID, GIB)
    path = files.path(VID)
    _write(path, 64 * MiB, 8 * MiB, 0xAB)
    sock = tmp_path / "qmp.sock"
    qsd = subprocess.Popen(["qemu-storage-daemon", "--chardev",
                            f"socket,id=qmp0,path={sock},server=on,wait=off",
                            "--monitor", "chardev=qmp0"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        q = QmpClient(str(sock), 10.0)
        deadline = time.monotonic() + 10
        while True:
            try:
                q.connect()
                break
            except QmpError:
                assert time.monotonic() < deadline, "qemu-storage-daemon did not come up"
                time.sleep(0.05)
        try:
            StorageDaemon.open_volume(q, VID, path)
            # Locked: a plain qemu-img (no -U) is refused, so the measure below really reads
            # from under a holder.
            r = subprocess.run(["qemu-img", "info", "-f", "qcow2", str(path)],
                               capture_output=True, text=True, timeout=30)
            assert r.returncode != 0 and "lock" in r.stderr, r.stderr
            name = snapshot_name(SID, GIB)
            StorageDaemon.snapshot_internal(q, VID, name)
            t = time.monotonic()
            stored = files.snapshot_stored_bytes(path, name)
            took = time.monotonic() - t
            assert 8 * MiB <= stored <= 16 * MiB, stored
            assert took < 5, took
            StorageDaemon.delete_snapshot_internal(q, VID, name)
            StorageDaemon.close_volume(q, VID)
        finally:
            q.close()
    finally:
        qsd.terminate()
        qsd.wait(timeout=10)
