"""The VolumeBackend contract (agent/drivers/volumes.py) as checks any backend must pass: run
against FakeVolumeBackend in tests/unit/test_volume_contract.py and against the NBD storage
node (a real qemu-storage-daemon in a private namespace) in tests/lab/test_nbd_backend_lab.py.
A rule the fake keeps and the real backend does not (or the other way round) fails one of them.

Each check takes the backend and the volume ids it may use; each leaves those volumes deleted.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest

from agent.drivers.base import NetworkSource
from agent.drivers.volumes import MiB, VolumeInfo

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


def check_unexport_while_connected(b, vid: str,
                                   connected: Callable[[str], AbstractContextManager]) -> None:
    """A connected client makes unexport VolumeInUse (the export stays); after it leaves,
    unexport succeeds."""
    b.create(vid, 64 * MiB)
    b.export(vid)
    with connected(vid):
        assert _code(lambda: b.unexport(vid)) == "VolumeInUse"
        assert _code(lambda: b.grow(vid, 128 * MiB)) == "VolumeInUse"
        assert vid in b.exports()
        assert VolumeInfo(vid, 64 * MiB, True) in b.volumes()
    b.unexport(vid)
    assert b.exports() == {}
    b.delete(vid)
