"""An in-memory VolumeBackend (agent/drivers/volumes.py) for fast tests: the same rules as the
NBD storage node (tests/unit/volume_contract.py runs on both), no files and no processes.

It keeps what the real backend keeps apart apart: the persisted desired export set (`wanted`)
and what the serving process serves now (`served`), so a test can `crash()` the "daemon" and
see ensure() put the exports back. `connect()` / `disconnect()` stand for an NBD client (a
guest's QEMU) holding an export open.
"""
from __future__ import annotations

import threading

from agent.drivers.base import NetworkHost, NetworkSource
from agent.drivers.volumes import (DEFAULT_MAX_SIZE, InvalidVolumeSize, VolumeAlreadyExists,
                                   VolumeInfo, VolumeInUse, VolumeNotFound, valid_size,
                                   valid_volume_id)


class FakeVolumeBackend:
    """VolumeBackend in memory, "serving" NBD exports on host:port."""

    capabilities = frozenset({"nbd", "grow_exported", "persistent_exports"})

    def __init__(self, host: str = "192.0.2.10", port: int = 10809,
                 max_size: int = DEFAULT_MAX_SIZE):
        NetworkHost(host, port)  # validates
        self.host, self.port, self.max_size = host, port, max_size
        self.sizes: dict[str, int] = {}
        self.wanted: set[str] = set()  # persisted desired export set
        self.served: set[str] = set()  # what the fake daemon serves now
        self.clients: dict[str, int] = {}
        self._lock = threading.Lock()

    def _source(self, volume_id: str) -> NetworkSource:
        return NetworkSource("nbd", volume_id, (NetworkHost(self.host, self.port),))

    def _existing(self, volume_id: str) -> str:
        valid_volume_id(volume_id)
        if volume_id not in self.sizes:
            raise VolumeNotFound(f"volume {volume_id} does not exist")
        return volume_id

    # -- the Protocol -----------------------------------------------------------------------
    def create(self, volume_id: str, size_bytes: int) -> None:
        valid_volume_id(volume_id)
        valid_size(size_bytes, self.max_size)
        with self._lock:
            have = self.sizes.get(volume_id)
            if have is not None and have != size_bytes:
                raise VolumeAlreadyExists(f"volume {volume_id} exists with {have} bytes")
            self.sizes[volume_id] = size_bytes

    def grow(self, volume_id: str, size_bytes: int) -> None:
        valid_size(size_bytes, self.max_size)
        with self._lock:
            have = self.sizes[self._existing(volume_id)]
            if size_bytes < have:
                raise InvalidVolumeSize(f"volume {volume_id} has {have} bytes: it never "
                                        f"shrinks to {size_bytes}")
            if size_bytes != have and self.clients.get(volume_id):
                raise VolumeInUse(f"volume {volume_id} has an NBD client connected")
            self.sizes[volume_id] = size_bytes

    def delete(self, volume_id: str) -> None:
        valid_volume_id(volume_id)
        with self._lock:
            if volume_id in self.wanted:
                raise VolumeInUse(f"volume {volume_id} is exported: unexport it first")
            self.sizes.pop(volume_id, None)

    def export(self, volume_id: str) -> NetworkSource:
        with self._lock:
            self._existing(volume_id)
            self.wanted.add(volume_id)
            self.served.add(volume_id)
            return self._source(volume_id)

    def unexport(self, volume_id: str) -> None:
        valid_volume_id(volume_id)
        with self._lock:
            if volume_id in self.served and self.clients.get(volume_id):
                raise VolumeInUse(f"volume {volume_id} still has a client connected")
            self.wanted.discard(volume_id)
            self.served.discard(volume_id)

    def volumes(self) -> list[VolumeInfo]:
        with self._lock:
            return [VolumeInfo(v, s, v in self.wanted) for v, s in sorted(self.sizes.items())]

    def exports(self) -> dict[str, NetworkSource]:
        with self._lock:
            return {v: self._source(v) for v in sorted(self.served)}

    def ensure(self) -> None:
        with self._lock:
            self.wanted &= set(self.sizes)  # a wanted volume whose data is gone is dropped
            self.served = set(self.wanted)

    # -- test handles -----------------------------------------------------------------------
    def crash(self) -> None:
        """The serving process died: nothing is served, clients are cut off."""
        with self._lock:
            self.served.clear()
            self.clients.clear()

    def connect(self, volume_id: str) -> None:
        with self._lock:
            if volume_id not in self.served:
                raise VolumeNotFound(f"volume {volume_id} is not exported")
            self.clients[volume_id] = self.clients.get(volume_id, 0) + 1

    def disconnect(self, volume_id: str) -> None:
        with self._lock:
            self.clients[volume_id] = max(0, self.clients.get(volume_id, 0) - 1)
