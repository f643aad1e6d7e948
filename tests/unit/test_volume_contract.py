"""The VolumeBackend contract (tests/unit/volume_contract.py) on FakeVolumeBackend, plus the
shared id and size validators. The NBD storage node runs the same checks in
tests/lab/test_nbd_backend_lab.py."""
from __future__ import annotations

from contextlib import contextmanager

import pytest

from agent.drivers.fake_volumes import FakeVolumeBackend
from agent.drivers.volumes import (MiB, InvalidSnapshotId, InvalidVolumeId, InvalidVolumeSize,
                                   valid_size, valid_snapshot_id, valid_volume_id)
from tests.unit import volume_contract as contract

V1 = "vol-0000000000000a001"
V2 = "vol-0000000000000a002"
V3 = "vol-0000000000000a003"
S1 = "snap-0000000000000a001"
S2 = "snap-0000000000000a002"


@pytest.fixture
def fake():
    return FakeVolumeBackend(max_size=1 << 30)


def test_bad_input(fake):
    contract.check_bad_input(fake, V1)


def test_missing(fake):
    contract.check_missing(fake, V1)


def test_create_and_grow(fake):
    contract.check_create_and_grow(fake, V1)


def test_export_lifecycle(fake):
    src = contract.check_export_lifecycle(fake, V1, V2)
    assert (src.hosts[0].name, src.hosts[0].port) == ("192.0.2.10", 10809)


def test_ensure_after_crash(fake):
    contract.check_ensure_after_crash(fake, V1, V2, fake.crash)


def _connected(fake: FakeVolumeBackend):
    """contract.Connected on the fake: a client of one export name; its connection works while
    that name is served and the client was not cut off."""
    @contextmanager
    def connected(src):
        vid = src.name.split(".")[0]
        fake.connect(vid)
        cut_before = fake.cut.get(vid, 0)

        def works():
            return (fake.exports().get(vid) == src and fake.clients.get(vid, 0) > 0
                    and fake.cut.get(vid, 0) <= cut_before)
        try:
            yield works
        finally:
            fake.disconnect(vid)
    return connected


def test_unexport_while_connected(fake):
    contract.check_unexport_while_connected(fake, V1, _connected(fake))


def test_grow_while_connected(fake):
    contract.check_grow_while_connected(fake, V1, _connected(fake))
    assert fake.clients.get(V1, 0) == 0 and fake.cut.get(V1, 0) == 0


def test_force_unexport_while_connected(fake):
    contract.check_force_unexport_while_connected(fake, V1, _connected(fake))
    assert fake.clients.get(V1, 0) == 0 and fake.cut.get(V1, 0) == 0


def test_force_unexport_fences_also_while_the_daemon_is_down(fake):
    fake.create(V1, MiB)
    fake.export(V1)
    fake.connect(V1)
    fake.crash()  # a client of V1 will reconnect once V1 is served again under its name
    fake.unexport(V1, force=True)
    assert fake.export(V1).name == V1 + ".1"


def test_ensure_drops_wanted_volumes_without_data(fake):
    fake.create(V1, MiB)
    fake.export(V1)
    fake.sizes.clear()  # the data vanished behind the backend's back
    fake.ensure()
    assert fake.exports() == {} and fake.wanted == set()


class FakeIO:
    """contract.VolumeIO on the fake: its client handles and its chunk accounting."""

    def __init__(self, fake: FakeVolumeBackend):
        self.fake = fake

    def write(self, volume_id, offset, length, pattern):
        self.fake.write(volume_id, offset, bytes([pattern]) * length)

    def holds(self, volume_id, offset, length, pattern):
        return self.fake.read(volume_id, offset, length) == bytes([pattern]) * length

    def allocated(self):
        return self.fake.allocated_bytes()


def test_snapshot_bad_input(fake):
    contract.check_snapshot_bad_input(fake, V1, S1)


def test_snapshot_data(fake):
    contract.check_snapshot_data(fake, FakeIO(fake), [V1, V2, V3], [S1, S2])


def test_snapshots_outlive_their_volume(fake):
    contract.check_snapshots_outlive_their_volume(fake, FakeIO(fake), V1, V2, S1, S2)


def test_snapshot_shares_data(fake):
    contract.check_snapshot_shares_data(fake, FakeIO(fake), V1, S1)


def test_snapshot_while_writing(fake):
    contract.check_snapshot_while_writing(fake, FakeIO(fake), V1, V2, S1)


def test_snapshot_stored_bytes(fake):
    contract.check_snapshot_stored_bytes(fake, FakeIO(fake), V1, V2, S1, S2)
    fake.create(V1, MiB)
    fake.export(V1)
    fake.write(V1, 0, b"x" * (64 << 10))  # the fake stores exactly the chunks written
    assert fake.snapshot(V1, S1).stored_bytes == 64 << 10


def test_fake_io_needs_an_export(fake):
    fake.create(V1, MiB)
    with pytest.raises(Exception):
        fake.write(V1, 0, b"x")
    fake.export(V1)
    fake.write(V1, 10, b"xy")
    assert fake.read(V1, 8, 6) == b"\0\0xy\0\0"


@pytest.mark.parametrize("good", ["snap-0123456789abcdef0", "snap-fffffffffffffffff"])
def test_valid_snapshot_id(good):
    assert valid_snapshot_id(good) == good


@pytest.mark.parametrize("bad", contract.BAD_SNAPSHOT_IDS)
def test_invalid_snapshot_id(bad):
    with pytest.raises(InvalidSnapshotId) as e:
        valid_snapshot_id(bad)
    assert e.value.code == "InvalidSnapshotID.Malformed" and not e.value.retryable


@pytest.mark.parametrize("good", ["vol-0123456789abcdef0", "vol-fffffffffffffffff"])
def test_valid_volume_id(good):
    assert valid_volume_id(good) == good


@pytest.mark.parametrize("bad", contract.BAD_IDS)
def test_invalid_volume_id(bad):
    with pytest.raises(InvalidVolumeId) as e:
        valid_volume_id(bad)
    assert e.value.code == "InvalidVolumeID.Malformed" and not e.value.retryable


@pytest.mark.parametrize("bad", contract.BAD_SIZES + [2 * MiB + 512, (1 << 30) + MiB])
def test_invalid_size(bad):
    with pytest.raises(InvalidVolumeSize) as e:
        valid_size(bad, max_size=1 << 30)
    assert e.value.code == "InvalidVolumeSize"


def test_valid_sizes():
    assert valid_size(MiB) == MiB
    assert valid_size(1 << 30, max_size=1 << 30) == 1 << 30
