"""An in-memory VolumeBackend (agent/drivers/volumes.py) for fast tests: the same rules as the
NBD storage node (tests/unit/volume_contract.py runs on both), no files and no processes.

It keeps what the real backend keeps apart apart: the persisted desired export set (`wanted`)
and what the serving process serves now (`served`), so a test can `crash()` the "daemon" and
see ensure() put the exports back. `connect()` / `disconnect()` stand for an NBD client (a
guest's QEMU) holding an export open; `write()` / `read()` for a client's I/O on an export.
A forced unexport cuts the connected clients off: they are counted in `cut` until
each one's disconnect() (its host unplugging the dead disk), which then changes nothing else, so
a new client of the same volume (attached elsewhere) is not miscounted. The volume's next
export then has a new name (`fences`), as the contract says. Growing a volume with clients
connected cuts them off too (the NBD backend re-makes the export, under the same name): a cut
client's reconnect() takes it up again, as QEMU's NBD client does on its next request.

Data is kept in BLOCK-sized immutable chunks per volume (absent = zeros). A snapshot is a shallow
copy of the volume's chunk map: it shares every chunk with the volume, and a later write
replaces the volume's chunk instead of changing it (copy-on-write, honestly: allocated_bytes()
counts each distinct chunk once).
"""
from __future__ import annotations

import threading
from typing import Optional

from agent.drivers.base import NetworkHost, NetworkSource
from agent.drivers.volumes import (DEFAULT_MAX_SIZE, InvalidVolumeSize, SnapshotAlreadyExists,
                                   SnapshotInfo, SnapshotNotFound, VolumeAlreadyExists,
                                   VolumeInfo, VolumeInUse, VolumeNotFound, export_name,
                                   valid_size, valid_snapshot_id, valid_volume_id)

BLOCK = 64 << 10


class FakeVolumeBackend:
    """VolumeBackend in memory, "serving" NBD exports on host:port."""

    capabilities = frozenset({"nbd", "grow_exported", "persistent_exports", "snapshots"})

    def __init__(self, host: str = "192.0.2.10", port: int = 10809,
                 max_size: int = DEFAULT_MAX_SIZE):
        NetworkHost(host, port)  # validates
        self.host, self.port, self.max_size = host, port, max_size
        self.sizes: dict[str, int] = {}
        self.wanted: set[str] = set()  # persisted desired export set
        self.served: set[str] = set()  # what the fake daemon serves now
        self.clients: dict[str, int] = {}  # volume id -> clients connected now
        self.cut: dict[str, int] = {}  # volume id -> clients cut off that did not disconnect
        self.fences: dict[str, int] = {}  # volume id -> forced unexports (its export name)
        self.data: dict[str, dict[int, bytes]] = {}  # volume id -> block index -> BLOCK bytes
        #: snapshot id -> (its info, its chunk map)
        self.snaps: dict[str, tuple[SnapshotInfo, dict[int, bytes]]] = {}
        self._lock = threading.Lock()

    def _source(self, volume_id: str) -> NetworkSource:
        return NetworkSource("nbd", export_name(volume_id, self.fences.get(volume_id, 0)),
                             (NetworkHost(self.host, self.port),))

    def _existing(self, volume_id: str) -> str:
        valid_volume_id(volume_id)
        if volume_id not in self.sizes:
            raise VolumeNotFound(f"volume {volume_id} does not exist")
        return volume_id

    # -- the Protocol -----------------------------------------------------------------------
    def create(self, volume_id: str, size_bytes: int, from_snapshot: str | None = None) -> None:
        valid_volume_id(volume_id)
        valid_size(size_bytes, self.max_size)
        if from_snapshot is not None:
            valid_snapshot_id(from_snapshot)
        with self._lock:
            have = self.sizes.get(volume_id)
            if have is not None:
                if have != size_bytes:
                    raise VolumeAlreadyExists(f"volume {volume_id} exists with {have} bytes")
                return
            blocks: dict[int, bytes] = {}
            if from_snapshot is not None:
                if from_snapshot not in self.snaps:
                    raise SnapshotNotFound(f"snapshot {from_snapshot} does not exist")
                info, snap_blocks = self.snaps[from_snapshot]
                if size_bytes < info.size_bytes:
                    raise InvalidVolumeSize(f"snapshot {from_snapshot} has {info.size_bytes} "
                                            f"bytes: a volume from it needs at least that")
                blocks = dict(snap_blocks)
            self.sizes[volume_id] = size_bytes
            self.data[volume_id] = blocks

    def grow(self, volume_id: str, size_bytes: int) -> None:
        valid_size(size_bytes, self.max_size)
        with self._lock:
            have = self.sizes[self._existing(volume_id)]
            if size_bytes < have:
                raise InvalidVolumeSize(f"volume {volume_id} has {have} bytes: it never "
                                        f"shrinks to {size_bytes}")
            if size_bytes != have:
                self._cut_off(volume_id)  # an export re-made at the new size, same name
            self.sizes[volume_id] = size_bytes

    def delete(self, volume_id: str) -> None:
        valid_volume_id(volume_id)
        with self._lock:
            if volume_id in self.wanted:
                raise VolumeInUse(f"volume {volume_id} is exported: unexport it first")
            self.sizes.pop(volume_id, None)
            self.fences.pop(volume_id, None)
            self.data.pop(volume_id, None)  # its snapshots keep their own chunk maps

    def export(self, volume_id: str, host: Optional[str] = None) -> NetworkSource:
        with self._lock:
            self._existing(volume_id)
            self.wanted.add(volume_id)
            self.served.add(volume_id)
            return self._source(volume_id)

    def unexport(self, volume_id: str, *, force: bool = False) -> None:
        valid_volume_id(volume_id)
        with self._lock:
            if volume_id in self.served and self.clients.get(volume_id) and not force:
                raise VolumeInUse(f"volume {volume_id} still has a client connected")
            if force and (volume_id in self.served or volume_id in self.wanted):
                self.fences[volume_id] = self.fences.get(volume_id, 0) + 1
                self._cut_off(volume_id)
            self.wanted.discard(volume_id)
            self.served.discard(volume_id)

    def volumes(self) -> list[VolumeInfo]:
        with self._lock:
            return [VolumeInfo(v, s, v in self.wanted) for v, s in sorted(self.sizes.items())]

    def volume(self, volume_id: str) -> VolumeInfo | None:
        with self._lock:
            size = self.sizes.get(volume_id)
            return None if size is None else VolumeInfo(volume_id, size, volume_id in self.wanted)

    def exports(self) -> dict[str, NetworkSource]:
        with self._lock:
            return {v: self._source(v) for v in sorted(self.served)}

    def ensure(self) -> None:
        with self._lock:
            self.wanted &= set(self.sizes)  # a wanted volume whose data is gone is dropped
            self.served = set(self.wanted)

    def snapshot(self, volume_id: str, snapshot_id: str) -> SnapshotInfo:
        valid_volume_id(volume_id)
        valid_snapshot_id(snapshot_id)
        with self._lock:
            if snapshot_id in self.snaps:
                info = self.snaps[snapshot_id][0]
                if info.volume_id != volume_id:
                    raise SnapshotAlreadyExists(f"snapshot {snapshot_id} is one of volume "
                                                f"{info.volume_id}")
                return info
            self._existing(volume_id)
            chunks = dict(self.data.get(volume_id, {}))
            # Stored: the chunks written to the volume so far (a chunk is BLOCK bytes; never
            # written is zeros and stores nothing), as the real nodes measure allocated data.
            info = SnapshotInfo(snapshot_id, volume_id, self.sizes[volume_id],
                                stored_bytes=BLOCK * len(chunks))
            self.snaps[snapshot_id] = (info, chunks)
            return info

    def delete_snapshot(self, snapshot_id: str) -> None:
        valid_snapshot_id(snapshot_id)
        with self._lock:
            self.snaps.pop(snapshot_id, None)

    def snapshots(self) -> list[SnapshotInfo]:
        with self._lock:
            return [info for _, (info, _) in sorted(self.snaps.items())]

    # -- test handles -----------------------------------------------------------------------
    def write(self, volume_id: str, offset: int, data: bytes) -> None:
        """A client writes `data` at `offset` of an exported volume (and flushes)."""
        with self._lock:
            if volume_id not in self.served:
                raise VolumeNotFound(f"volume {volume_id} is not exported")
            if offset < 0 or offset + len(data) > self.sizes[volume_id]:
                raise ValueError("write beyond the end of the volume")
            blocks = self.data.setdefault(volume_id, {})
            pos = 0
            while pos < len(data):
                idx, within = divmod(offset + pos, BLOCK)
                n = min(BLOCK - within, len(data) - pos)
                old = blocks.get(idx, bytes(BLOCK))
                # A new chunk: the old one (maybe shared with a snapshot) is never changed.
                blocks[idx] = old[:within] + data[pos:pos + n] + old[within + n:]
                pos += n

    def read(self, volume_id: str, offset: int, length: int) -> bytes:
        """A client reads `length` bytes at `offset` of an exported volume."""
        with self._lock:
            if volume_id not in self.served:
                raise VolumeNotFound(f"volume {volume_id} is not exported")
            if offset < 0 or offset + length > self.sizes[volume_id]:
                raise ValueError("read beyond the end of the volume")
            blocks = self.data.get(volume_id, {})
            out = bytearray()
            while len(out) < length:
                idx, within = divmod(offset + len(out), BLOCK)
                n = min(BLOCK - within, length - len(out))
                out += blocks.get(idx, bytes(BLOCK))[within:within + n]
            return bytes(out)

    def allocated_bytes(self) -> int:
        """Storage used by volumes and snapshots together: each distinct chunk once."""
        with self._lock:
            maps = list(self.data.values()) + [m for _, m in self.snaps.values()]
            return BLOCK * len({id(c) for m in maps for c in m.values()})

    def crash(self) -> None:
        """The serving process died: nothing is served, clients are cut off."""
        with self._lock:
            self.served.clear()
            self.clients.clear()

    def _cut_off(self, volume_id: str) -> None:
        n = self.clients.pop(volume_id, 0)
        if n:
            self.cut[volume_id] = self.cut.get(volume_id, 0) + n

    def connect(self, volume_id: str) -> None:
        with self._lock:
            if volume_id not in self.served:
                raise VolumeNotFound(f"volume {volume_id} is not exported")
            self.clients[volume_id] = self.clients.get(volume_id, 0) + 1

    def reconnect(self, volume_id: str) -> None:
        """A client that was cut off connects again to the same export (its new size)."""
        with self._lock:
            if volume_id not in self.served:
                raise VolumeNotFound(f"volume {volume_id} is not exported")
            if self.cut.get(volume_id):
                self.cut[volume_id] -= 1
                self.clients[volume_id] = self.clients.get(volume_id, 0) + 1

    def disconnect(self, volume_id: str) -> None:
        """A client lets go; one that was cut off already had (nothing else changes)."""
        with self._lock:
            if self.cut.get(volume_id):
                self.cut[volume_id] -= 1
                return
            self.clients[volume_id] = max(0, self.clients.get(volume_id, 0) - 1)
