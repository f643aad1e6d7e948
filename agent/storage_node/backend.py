"""NbdBackend: the VolumeBackend (agent/drivers/volumes.py) of the storage node. Volumes are
qcow2 files (files.py) served over NBD by one qemu-storage-daemon (daemon.py); which volumes
should be exported is persisted (wanted.py) and ensure() reconciles the daemon with it, so a
daemon restart, an agent restart or a daemon another agent left running all converge.

Every operation validates its input first and holds one lock (the daemon's QMP monitor takes
one command at a time and the rules compare-then-act). Errors from qemu-img, QMP and the
supervisor become DriverErrors with stable codes here, at the driver boundary.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path
from typing import Iterator, Optional

from agent.drivers.base import DriverError, NetworkHost, NetworkSource
from agent.drivers.volumes import (DEFAULT_MAX_SIZE, InvalidVolumeSize, VolumeAlreadyExists,
                                   VolumeInfo, VolumeInUse, VolumeNotFound, valid_size,
                                   valid_volume_id)
from agent.qemu_img import QemuImgError
from agent.storage_node.daemon import StorageDaemon
from agent.storage_node.files import VolumeFiles
from agent.storage_node.qmp import QmpClient, QmpError
from agent.storage_node.wanted import WantedExports
from agent.supervisor import SupervisorError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except QemuImgError as e:
        raise DriverError(f"{what}: {e}", code=e.code, retryable=e.retryable) from e
    except QmpError as e:
        raise DriverError(f"{what}: {e}", code="StorageDaemonCommandFailed"
                          if e.code == "QmpCommandFailed" else "StorageDaemonUnavailable",
                          retryable=True) from e
    except SupervisorError as e:
        raise DriverError(f"{what}: {e}", code="StorageDaemon" + e.code, retryable=True) from e


class NbdBackend:
    """Volumes under `state_dir/volumes`, served on NBD host:port from inside `netns`."""

    capabilities = frozenset({"nbd", "grow_exported", "persistent_exports"})

    def __init__(self, state_dir: Path, host: str, port: int, *, netns: Optional[str] = None,
                 max_size: int = DEFAULT_MAX_SIZE, daemon: Optional[StorageDaemon] = None):
        self.state_dir = Path(state_dir)
        self.max_size = max_size
        self.daemon = daemon or StorageDaemon(self.state_dir, host, port, netns=netns)
        self.host = NetworkHost(host, port)
        self.files = VolumeFiles(self.state_dir / "volumes")
        self.wanted = WantedExports(self.state_dir / "exports.json")
        self._lock = threading.RLock()

    def source(self, volume_id: str) -> NetworkSource:
        return NetworkSource("nbd", valid_volume_id(volume_id), (self.host,))

    def _existing(self, volume_id: str) -> str:
        if not self.files.exists(valid_volume_id(volume_id)):
            raise VolumeNotFound(f"volume {volume_id} does not exist")
        return volume_id

    def _live_qmp(self) -> contextlib.AbstractContextManager[Optional[QmpClient]]:
        """QMP to the daemon when it runs; None when it does not (nothing is open then)."""
        if self.daemon.pid() is None:
            return contextlib.nullcontext(None)
        return self.daemon.qmp()

    # -- the Protocol -----------------------------------------------------------------------
    def create(self, volume_id: str, size_bytes: int) -> None:
        valid_volume_id(volume_id)
        valid_size(size_bytes, self.max_size)
        with self._lock, _translated(f"create {volume_id}"):
            if self.files.exists(volume_id):
                have = self.files.size(volume_id)
                if have != size_bytes:
                    raise VolumeAlreadyExists(f"volume {volume_id} exists with {have} bytes")
                return
            self.files.create(volume_id, size_bytes)

    def grow(self, volume_id: str, size_bytes: int) -> None:
        valid_size(size_bytes, self.max_size)
        with self._lock, _translated(f"grow {volume_id}"):
            have = self.files.size(self._existing(volume_id))
            if size_bytes < have:
                raise InvalidVolumeSize(f"volume {volume_id} has {have} bytes: it never "
                                        f"shrinks to {size_bytes}")
            if size_bytes == have:
                return
            with self._live_qmp() as q:
                if q is not None and volume_id in self.daemon.open_nodes(q):
                    self._grow_open(q, volume_id, size_bytes)
                    return
            self.files.resize(volume_id, size_bytes)

    def _grow_open(self, q: QmpClient, volume_id: str, size_bytes: int) -> None:
        """An NBD export takes the resize permission from its node (qemu 7.2), so the export
        steps aside while the node grows: refused (VolumeInUse) while a client is connected."""
        exported = volume_id in self.daemon.served(q)
        if exported:
            self._del_export(q, volume_id)
        try:
            self.daemon.resize(q, volume_id, size_bytes)
        finally:
            if exported:
                self.daemon.add_export(q, volume_id)

    def _del_export(self, q: QmpClient, volume_id: str) -> None:
        try:
            self.daemon.del_export(q, volume_id)
        except QmpError as e:
            if e.code == "QmpCommandFailed" and "in use" in e.desc:
                raise VolumeInUse(f"volume {volume_id} still has an NBD client connected: "
                                  "detach it first") from e
            raise

    def delete(self, volume_id: str) -> None:
        valid_volume_id(volume_id)
        with self._lock, _translated(f"delete {volume_id}"):
            if volume_id in self.wanted.load():
                raise VolumeInUse(f"volume {volume_id} is exported: unexport it first")
            with self._live_qmp() as q:
                if q is not None:  # a node left open by an interrupted export
                    if volume_id in self.daemon.served(q):
                        self.daemon.del_export(q, volume_id)
                    self.daemon.close_volume(q, volume_id)
            self.files.delete(volume_id)

    def export(self, volume_id: str) -> NetworkSource:
        with self._lock, _translated(f"export {volume_id}"):
            self._existing(volume_id)
            self.wanted.add(volume_id)  # first: a crash from here on is repaired by ensure()
            self._reconcile()
            return self.source(volume_id)

    def unexport(self, volume_id: str) -> None:
        valid_volume_id(volume_id)
        with self._lock, _translated(f"unexport {volume_id}"):
            with self._live_qmp() as q:
                if q is not None:
                    if volume_id in self.daemon.served(q):
                        self._del_export(q, volume_id)
                    self.daemon.close_volume(q, volume_id)
            self.wanted.discard(volume_id)

    def volumes(self) -> list[VolumeInfo]:
        with self._lock, _translated("list volumes"):
            wanted = self.wanted.load()
            return [VolumeInfo(v, self.files.size(v), v in wanted) for v in self.files.ids()]

    def exports(self) -> dict[str, NetworkSource]:
        with self._lock, _translated("list exports"):
            with self._live_qmp() as q:
                served = self.daemon.served(q) if q is not None else set()
            return {v: self.source(v) for v in sorted(served)}

    def ensure(self) -> None:
        with self._lock, _translated("reconcile exports"):
            self._reconcile()

    # -- beyond the Protocol ----------------------------------------------------------------
    def stop(self) -> bool:
        """Stop the daemon (exports stay wanted: the next ensure() serves them again)."""
        with self._lock:
            return self.daemon.stop()

    def _reconcile(self) -> None:
        self.files.drop_partial()
        wanted = self.wanted.load()
        gone = {v for v in wanted if not self.files.exists(v)}
        if gone:
            log.warning("volumes %s are wanted exported but have no file: dropped", sorted(gone))
            wanted -= gone
            self.wanted.save(wanted)
        how = self.daemon.ensure_running()
        if how != "running":
            log.info("storage daemon %s", how)
        with self.daemon.qmp() as q:
            served = self.daemon.served(q)
            for vid in sorted(served - wanted):
                try:
                    self.daemon.del_export(q, vid)
                except QmpError as e:  # a client still holds it: next pass
                    log.warning("cannot remove unwanted export %s yet: %s", vid, e)
            opened = self.daemon.open_nodes(q)
            for vid in sorted(set(opened) - wanted - self.daemon.served(q)):
                self.daemon.close_volume(q, vid)
            for vid in sorted(wanted - served):
                if vid not in opened:
                    self.daemon.open_volume(q, vid, self.files.path(vid))
                self.daemon.add_export(q, vid)
