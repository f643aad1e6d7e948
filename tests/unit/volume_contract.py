"""The VolumeBackend contract (agent/drivers/volumes.py) as checks any backend must pass: run
against FakeVolumeBackend in tests/unit/test_volume_contract.py and against the NBD storage
node (a real qemu-storage-daemon in a private namespace) in tests/lab/test_nbd_backend_lab.py.
A rule the fake keeps and the real backend does not (or the other way round) fails one of them.

Each check takes the backend and the volume ids it may use; each leaves those volumes deleted.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol

import pytest

from agent.drivers.base import NetworkSource
from agent.drivers.volumes import MiB, SnapshotInfo, VolumeInfo

BAD_IDS = ["", "vol-", "vol-0123", "vol-0123456789ABCDEF0", "vol-0123456789abcdef0/..",
           "../vol-0123456789abcdef0", "i-0123456789abcdef0", "vol-0123456789abcdef0\n", None, 7]
BAD_SIZES = [0, -MiB, MiB + 1, 1.5 * MiB, "64M", None, True]


def _code(call: Callable[[], object]) -> str:
    with pytest.raises(Exception) as e:
        call()
    return getattr(e.value, "code", type(e.value).__name__)


def check_bad_input(b, vid: str) -> None:
    """Malformed ids and sizes fail with stable codes, on every method, and change nothing."""
    before = b.volumes()
    for bad in BAD_IDS:
        for call in (lambda: b.create(bad, 64 * MiB), lambda: b.grow(bad, 64 * MiB),
                     lambda: b.delete(bad), lambda: b.export(bad), lambda: b.unexport(bad)):
            assert _code(call) == "InvalidVolumeID.Malformed", bad
    for bad in BAD_SIZES:
        assert _code(lambda: b.create(vid, bad)) == "InvalidVolumeSize", bad
    assert _code(lambda: b.create(vid, b.max_size + MiB)) == "InvalidVolumeSize"
    assert b.volumes() == before


def check_missing(b, vid: str) -> None:
    """A volume that does not exist: grow and export fail, delete and unexport succeed."""
    assert _code(lambda: b.grow(vid, 64 * MiB)) == "InvalidVolume.NotFound"
    assert _code(lambda: b.export(vid)) == "InvalidVolume.NotFound"
    b.unexport(vid)
    b.delete(vid)
    assert vid not in [v.volume_id for v in b.volumes()]
    assert b.volume(vid) is None
    assert vid not in b.exports()


def check_create_and_grow(b, vid: str) -> None:
    """create is idempotent for the same size; grow grows, never shrinks."""
    b.create(vid, 64 * MiB)
    b.create(vid, 64 * MiB)  # the same: no-op
    assert VolumeInfo(vid, 64 * MiB, False) in b.volumes()
    assert _code(lambda: b.create(vid, 128 * MiB)) == "IdempotentParameterMismatch"
    b.grow(vid, 64 * MiB)  # the same size: no-op
    b.grow(vid, 96 * MiB)
    assert _code(lambda: b.grow(vid, 32 * MiB)) == "InvalidVolumeSize"
    assert _code(lambda: b.grow(vid, 0)) == "InvalidVolumeSize"
    assert VolumeInfo(vid, 96 * MiB, False) in b.volumes()
    assert b.volume(vid) == VolumeInfo(vid, 96 * MiB, False)  # the one-volume read agrees
    b.delete(vid)
    b.delete(vid)  # already gone: success
    assert vid not in [v.volume_id for v in b.volumes()]


def check_export_lifecycle(b, vid: str, other: str) -> NetworkSource:
    """export is idempotent and returns an NBD source named after the volume; an exported volume
    cannot be deleted, grows while exported, and unexport is idempotent."""
    b.create(vid, 64 * MiB)
    b.create(other, 64 * MiB)
    src = b.export(vid)
    assert src.protocol == "nbd" and src.name == vid and len(src.hosts) == 1
    assert b.export(vid) == src  # twice: the same
    assert b.exports() == {vid: src}
    assert {v.volume_id: v.exported for v in b.volumes()} == {vid: True, other: False}
    err = _code(lambda: b.delete(vid))
    assert err == "VolumeInUse"
    assert vid in b.exports()
    b.grow(vid, 128 * MiB)
    assert VolumeInfo(vid, 128 * MiB, True) in b.volumes()
    assert b.volume(vid) == VolumeInfo(vid, 128 * MiB, True)
    assert vid in b.exports()
    b.unexport(vid)
    b.unexport(vid)  # not exported: no-op
    assert b.exports() == {}
    b.delete(vid)
    b.delete(other)
    assert [v.volume_id for v in b.volumes() if v.volume_id in (vid, other)] == []
    return src


def check_ensure_after_crash(b, vid: str, other: str, crash: Callable[[], None]) -> None:
    """After the serving process dies, ensure() serves again exactly the exported volumes."""
    b.create(vid, 64 * MiB)
    b.create(other, 64 * MiB)
    src = b.export(vid)
    crash()
    b.ensure()
    assert b.exports() == {vid: src}
    b.ensure()  # idempotent
    assert b.exports() == {vid: src}
    b.unexport(vid)
    b.delete(vid)
    b.delete(other)


#: connected(source) holds an NBD client of that export open for the `with` block and yields a
#: probe: does I/O through that very connection (a write) still work?
Connected = Callable[[NetworkSource], AbstractContextManager[Callable[[], bool]]]


def check_unexport_while_connected(b, vid: str, connected: Connected) -> None:
    """A connected client makes unexport VolumeInUse (the export stays); after it leaves,
    unexport succeeds."""
    b.create(vid, 64 * MiB)
    src = b.export(vid)
    with connected(src):
        assert _code(lambda: b.unexport(vid)) == "VolumeInUse"
        assert vid in b.exports()
        assert VolumeInfo(vid, 64 * MiB, True) in b.volumes()
    b.unexport(vid)
    assert b.exports() == {}
    b.delete(vid)


def check_grow_while_connected(b, vid: str, connected: Connected) -> None:
    """Growing a volume a client is connected to re-makes its export at the new size under the
    same name (no fence: the same host goes on): the client is cut off and must connect again,
    which it may (how a host's QEMU learns the new size)."""
    b.create(vid, 64 * MiB)
    src = b.export(vid)
    with connected(src) as works:
        assert works()
        b.grow(vid, 128 * MiB)
        assert b.exports() == {vid: src}
        assert VolumeInfo(vid, 128 * MiB, True) in b.volumes()
        assert not works(), "the client kept its connection across the re-made export"
        with connected(src) as again:
            assert again()
    b.unexport(vid)
    b.delete(vid)


def check_force_unexport_while_connected(b, vid: str, connected: Connected) -> None:
    """A forced unexport cuts a connected client off and stops serving, never VolumeInUse; the
    cut holds when the volume is exported again (under a new name: the old client cannot come
    back), where a new client works and is cut off the same way; delete starts names afresh."""
    b.create(vid, 64 * MiB)
    src = b.export(vid)
    assert src.name == vid
    with connected(src) as works:
        assert works()
        b.unexport(vid, force=True)
        assert b.exports() == {} and VolumeInfo(vid, 64 * MiB, False) in b.volumes()
        assert not works()
        b.unexport(vid, force=True)  # not exported: a no-op
        b.unexport(vid)
        again = b.export(vid)  # attached elsewhere
        assert again.name != src.name and again.hosts == src.hosts
        assert b.exports() == {vid: again}
        assert not works(), "a cut-off client got the volume back when it was exported again"
        with connected(again) as works2:
            assert works2()
            assert _code(lambda: b.unexport(vid)) == "VolumeInUse"
            assert works2()
            b.unexport(vid, force=True)
            assert not works2() and not works()
            third = b.export(vid)
            assert len({src.name, again.name, third.name}) == 3
            assert not works2() and not works()
            b.unexport(vid)  # nobody is connected to this export: a plain unexport
    b.delete(vid)
    b.create(vid, 64 * MiB)  # a new volume under the id: its first name is the id again
    assert b.export(vid).name == vid
    b.unexport(vid)
    b.delete(vid)
    assert b.exports() == {} and vid not in [v.volume_id for v in b.volumes()]


# -- snapshots (capability "snapshots") ---------------------------------------------------------
BAD_SNAPSHOT_IDS = ["", "snap-", "snap-0123", "snap-0123456789ABCDEF0", "snap-0123456789abcdef0/..",
                    "../snap-0123456789abcdef0", "vol-0123456789abcdef0",
                    "snap-0123456789abcdef0\n", "snap-0123456789abcdef0:1", None, 7]


class VolumeIO(Protocol):
    """A client's I/O on exported volumes, and the backend's storage use, for the data checks.
    Every call is complete (written and flushed) when it returns."""

    def write(self, volume_id: str, offset: int, length: int, pattern: int) -> None:
        """Write `length` bytes of `pattern` at `offset`."""

    def holds(self, volume_id: str, offset: int, length: int, pattern: int) -> bool:
        """Whether those bytes all read as `pattern`."""

    def allocated(self) -> int:
        """Bytes of storage the backend uses for all volumes and snapshots now."""


def _unexported(b, *vids: str) -> None:
    for v in vids:
        b.unexport(v)


def check_snapshot_bad_input(b, vid: str, sid: str) -> None:
    """Malformed snapshot ids fail with InvalidSnapshotID.Malformed on every method, a missing
    volume or snapshot with NotFound, and nothing changes."""
    assert "snapshots" in b.capabilities
    before = (b.volumes(), b.snapshots())
    for bad in BAD_SNAPSHOT_IDS:
        calls = [lambda: b.snapshot(vid, bad), lambda: b.delete_snapshot(bad)]
        if bad is not None:  # from_snapshot=None means "an empty volume"
            calls.append(lambda: b.create(vid, 64 * MiB, from_snapshot=bad))
        for call in calls:
            assert _code(call) == "InvalidSnapshotID.Malformed", bad
    for bad in BAD_IDS:
        assert _code(lambda: b.snapshot(bad, sid)) == "InvalidVolumeID.Malformed", bad
        assert _code(lambda: b.create(bad, 64 * MiB, from_snapshot=sid)) == \
            "InvalidVolumeID.Malformed", bad
    assert _code(lambda: b.snapshot(vid, sid)) == "InvalidVolume.NotFound"
    assert _code(lambda: b.create(vid, 64 * MiB, from_snapshot=sid)) == "InvalidSnapshot.NotFound"
    b.delete_snapshot(sid)  # gone: success
    assert (b.volumes(), b.snapshots()) == before


def check_snapshot_data(b, io: VolumeIO, vols: list[str], snaps: list[str]) -> None:
    """A snapshot keeps the data of its moment while the volume changes; a volume made from it
    reads that data, at the size asked (>= the snapshot's); exported (taken and deleted through
    the serving process) and not exported alike; idempotent; ids are never reused across
    volumes."""
    vid, v2, v3 = vols[:3]
    s1, s2 = snaps[:2]
    b.create(vid, 64 * MiB)
    b.export(vid)
    io.write(vid, 0, MiB, 0xAA)
    info = b.snapshot(vid, s1)  # exported
    assert info == SnapshotInfo(s1, vid, 64 * MiB)
    assert b.snapshot(vid, s1) == info  # again: the same
    assert b.snapshots() == [info]
    io.write(vid, 0, MiB, 0xBB)
    assert io.holds(vid, 0, MiB, 0xBB)

    b.create(v2, 128 * MiB, from_snapshot=s1)  # from a volume open and exported
    assert VolumeInfo(v2, 128 * MiB, False) in b.volumes()
    b.export(v2)
    assert io.holds(v2, 0, MiB, 0xAA)
    assert io.holds(v2, 64 * MiB, MiB, 0)  # beyond the snapshot's size: zeros
    assert io.holds(vid, 0, MiB, 0xBB)  # the original keeps its new data
    b.create(v2, 128 * MiB, from_snapshot=s1)  # exists with that size: a no-op
    assert _code(lambda: b.create(v2, 64 * MiB, from_snapshot=s1)) == \
        "IdempotentParameterMismatch"

    b.unexport(vid)
    b.grow(vid, 96 * MiB)
    info2 = b.snapshot(vid, s2)  # not exported
    assert info2 == SnapshotInfo(s2, vid, 96 * MiB)
    assert b.snapshot(vid, s2) == info2
    assert b.snapshots() == [info, info2]
    for sid in (s1, s2):
        assert _code(lambda: b.snapshot(v2, sid)) == "IdempotentParameterMismatch"
    assert _code(lambda: b.create(v3, 64 * MiB, from_snapshot=s2)) == "InvalidVolumeSize"
    assert v3 not in [v.volume_id for v in b.volumes()]
    b.create(v3, 96 * MiB, from_snapshot=s2)  # from a volume not open
    b.export(vid)
    b.export(v3)
    assert io.holds(v3, 0, MiB, 0xBB)
    io.write(vid, 0, MiB, 0xCC)  # neither the snapshots nor the copies change
    assert io.holds(v3, 0, MiB, 0xBB) and io.holds(v2, 0, MiB, 0xAA)
    assert b.snapshots() == [info, info2]

    b.delete_snapshot(s1)  # its volume exported: through the serving process
    b.delete_snapshot(s1)
    assert b.snapshots() == [info2]
    assert io.holds(vid, 0, MiB, 0xCC)
    _unexported(b, vid, v2, v3)
    b.delete_snapshot(s2)  # its volume not exported
    assert b.snapshots() == []
    for v in (vid, v2, v3):
        b.delete(v)
    assert [v.volume_id for v in b.volumes() if v.volume_id in (vid, v2, v3)] == []


def check_snapshots_outlive_their_volume(b, io: VolumeIO, vid: str, v2: str,
                                         s1: str, s2: str) -> None:
    """Deleting a volume keeps its snapshots listed and usable; a new volume with the same id is
    a new, empty one; deleting the last snapshot frees what was kept for them."""
    b.create(vid, 64 * MiB)
    b.export(vid)
    io.write(vid, 0, 4 * MiB, 0xAA)
    b.unexport(vid)
    i1, i2 = b.snapshot(vid, s1), b.snapshot(vid, s2)
    b.delete(vid)
    assert vid not in [v.volume_id for v in b.volumes()]
    assert b.snapshots() == [i1, i2]
    assert b.snapshot(vid, s1) == i1  # a retried snapshot call still finds it
    b.create(vid, 64 * MiB)  # the same id again: a new volume, not the old data
    b.export(vid)
    assert io.holds(vid, 0, MiB, 0)
    b.unexport(vid)
    b.delete(vid)
    b.create(v2, 64 * MiB, from_snapshot=s1)
    b.export(v2)
    assert io.holds(v2, 0, 4 * MiB, 0xAA)
    b.unexport(v2)
    b.delete(v2)
    b.delete_snapshot(s1)
    assert b.snapshots() == [i2]
    b.create(v2, 64 * MiB, from_snapshot=s2)  # the last one still usable
    b.export(v2)
    assert io.holds(v2, 0, 4 * MiB, 0xAA)
    b.unexport(v2)
    b.delete(v2)
    kept = io.allocated()
    b.delete_snapshot(s2)
    assert b.snapshots() == []
    assert kept - io.allocated() >= 4 * MiB, "the deleted volume's data was not freed"
    assert [v.volume_id for v in b.volumes() if v.volume_id in (vid, v2)] == []


def check_snapshot_shares_data(b, io: VolumeIO, vid: str, sid: str) -> None:
    """A snapshot costs metadata, not a copy: after N MiB written, taking it grows the storage
    used by far less than N MiB; overwriting the data afterwards (copy-on-write) costs new
    space, and the snapshot still has the old data."""
    n = 16 * MiB
    b.create(vid, 64 * MiB)
    b.export(vid)
    io.write(vid, 0, n, 0xAA)
    before = io.allocated()
    assert before >= n
    b.snapshot(vid, sid)
    after = io.allocated()
    assert after - before < MiB, (before, after)
    io.write(vid, 0, n, 0xBB)
    assert io.allocated() - after >= n // 2, "an overwrite shared with a snapshot took no space"
    b.unexport(vid)
    b.delete_snapshot(sid)
    b.delete(vid)


def check_snapshot_while_writing(b, io: VolumeIO, vid: str, v2: str, sid: str,
                                 chunks: int = 40, chunk: int = 256 << 10) -> tuple[int, int]:
    """Crash consistency: a client writes chunk after chunk (each flushed) while the snapshot is
    taken. Every chunk completed before the call is in the snapshot, none started after it
    returned is, and a chunk in flight is wholly in or wholly out. Returns (chunks completed
    before the call, first chunk started after it returned), so a runner with a slow client can
    check that the snapshot really was taken mid-stream."""
    b.create(vid, 64 * MiB)
    b.export(vid)
    completed: list[int] = []
    errors: list[BaseException] = []

    def pattern(i: int) -> int:
        return 1 + i % 250

    def writer() -> None:
        try:
            for i in range(chunks):
                io.write(vid, i * chunk, chunk, pattern(i))
                completed.append(i)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    t = threading.Thread(target=writer, name="snapshot-writer")
    t.start()
    try:
        deadline = time.monotonic() + 30
        while len(completed) < 3 and t.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        done_before = len(completed)
        b.snapshot(vid, sid)
        started_after = len(completed) + 1
    finally:
        t.join(120)
    assert not t.is_alive() and not errors, errors
    assert len(completed) == chunks
    b.create(v2, 64 * MiB, from_snapshot=sid)
    b.export(v2)
    for i in range(chunks):
        new, old = io.holds(v2, i * chunk, chunk, pattern(i)), io.holds(v2, i * chunk, chunk, 0)
        if i < done_before:
            assert new, f"chunk {i} was flushed before the snapshot but is not in it"
        elif i >= started_after:
            assert old, f"chunk {i} was written after the snapshot but is in it"
        else:
            assert new or old, f"chunk {i} is torn in the snapshot"
        assert io.holds(vid, i * chunk, chunk, pattern(i))  # the volume has every write
    _unexported(b, vid, v2)
    b.delete_snapshot(sid)
    b.delete(vid)
    b.delete(v2)
    return done_before, started_after


def check_snapshot_stored_bytes(b, io: VolumeIO, vid: str, v2: str, s1: str, s2: str) -> None:
    """snapshot() answers what the snapshot stores (billing, issue 13): of a 1 GiB volume with
    8 MiB written, between 8 and 16 MiB (the data, plus the backend's metadata or allocation
    granularity), not 1 GiB; taken exported (through the serving process) and not, and measured
    again when asked again. Listings may leave it unmeasured."""
    gib = 1 << 30
    b.create(vid, gib)
    b.export(vid)
    io.write(vid, 0, 8 * MiB, 0xAA)
    taken = b.snapshot(vid, s1)  # exported
    assert taken.size_bytes == gib
    assert 8 * MiB <= taken.stored_bytes <= 16 * MiB, taken
    b.create(v2, gib)
    b.export(v2)
    io.write(v2, 512 * MiB, 8 * MiB, 0xBB)
    b.unexport(v2)
    closed = b.snapshot(v2, s2)  # not exported
    assert 8 * MiB <= closed.stored_bytes <= 16 * MiB, closed
    again = b.snapshot(vid, s1)  # again: the same snapshot, measured again
    assert again == taken and 8 * MiB <= again.stored_bytes <= 16 * MiB, again
    assert all(s.stored_bytes is None or 8 * MiB <= s.stored_bytes <= 16 * MiB
               for s in b.snapshots())
    _unexported(b, vid, v2)
    for sid in (s1, s2):
        b.delete_snapshot(sid)
    b.delete(vid)
    b.delete(v2)
