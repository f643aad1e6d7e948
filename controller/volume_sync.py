"""Volume sync: the reconciler's part that makes the storage node match the volumes in the
database (issue 10). The reconciler calls `VolumeSync.run()` at the start of each tick's
instance work, so an export recorded here is in the instance specs planned right after.

Per volume, each failure isolated and backed off (the instance work's habits):
- creating / available / in-use whose `generation` the node has not acknowledged, or whose
  export differs from what it should be: PUT the full VolumeSpec (size_gib in bytes; exported
  while an attachment row exists, except a force-detaching one: a plain detach keeps serving the
  host until the row is gone, a force detach unexports at once with `disconnect`, so the node
  cuts the host off even while its guest still holds the disk). The answer records the node's
  size and export (the source hosts attach), acknowledges the generation, moves creating ->
  available (in-use if attached) and a grow's modification_state modifying -> completed once the
  node's size reaches it. A changed export of an attached volume, or a bigger size (grown while
  attached: the host grows the guest's disk), bumps its instance's spec. A
  permanent refusal of a creating volume -> error; other failures are recorded in
  observed_error and retried.
- A force-detaching volume whose unexport the node confirmed: its attachment row goes and it is
  available (the node closed the host's connection and serves it no more: the host can no
  longer reach it, whatever the guest does, so the volume may be attached elsewhere without two
  writers). The guest is left with a dead disk (I/O errors) that its agent keeps trying to
  unplug (DeviceDetachTimeout, retried); its definition loses the disk at the latest once the
  instance is stopped. Likewise an in-use
  volume without attachment (its instance was terminated) becomes available once unexported.
- The host an export is for (VolumeSpec.host, extension "export-host"; docs/security.md
  "Storage access"): the attached instance's host. A node with per-host TLS serves the export to
  that host's certificate only, so when the instance moves to another host the export must move
  too: the host last acknowledged per volume is kept here (in memory: after a restart every
  attached volume is pushed once more, an idempotent PUT), and a different one is pushed. The
  node answers the new host's source (its own port), which bumps the instance's spec.
- deleting: DELETE on the node -> deleted (a host still connected: VolumeInUse, retried).
- deleted rows older than terminated_retention_s are purged.
- At most every ORPHAN_SCAN_S: volumes the node keeps that the database does not (or has as
  deleted) are deleted on the node. The node is listed before the database is read, and only the
  reconciler creates volumes on the node after their row committed, so a volume created
  meanwhile is never taken for an orphan.

Storage calls run outside database transactions; the bookkeeping commits with notify=False.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, delete, not_, or_
from sqlmodel import select

from agent.contract.storage_v1 import VolumeObserved, VolumeSpec
from controller.db import Database
from controller.events import record
from controller.ids import utcnow
from controller.models import Instance, Volume, VolumeAttachmentRow

_UNKNOWN = object()
from controller.services import metering
from controller.services.capacity import GIB
from controller.services.volume_attachments import finish_detach
from controller.settings import Settings
from controller.storage import StorageClient, StorageError

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
#: How often the node's volume list is compared with the database (orphans).
ORPHAN_SCAN_S = 30.0
#: Volume states whose spec is pushed to the node.
PUSHED = ("creating", "available", "in-use")


@dataclass(frozen=True)
class VolumeWork:
    kind: str  # "put" | "delete"
    volume_id: str
    generation: int = 0
    spec: VolumeSpec | None = None


def wants_export(att: VolumeAttachmentRow | None) -> bool:
    """Whether the node should serve the volume: an attachment exists and is not being forced
    off (a plain detach keeps it served until the host let go and the row is gone)."""
    return att is not None and not forcing_off(att)


def source_key(vol: Volume) -> tuple:
    """What identifies where and as whom the host opens the volume: a change of it (an export
    moved, or with cephx re-exported to another host's Ceph user at the same monitor) changes
    the instance's spec."""
    return (vol.source_protocol or "nbd", vol.source_host, vol.source_port, vol.source_export,
            vol.source_auth_user, vol.source_auth_key)


def forcing_off(att: VolumeAttachmentRow | None) -> bool:
    """Whether the host must be cut off: the attachment is being force-detached."""
    return att is not None and att.state == "detaching" and att.force_detach


def desired_spec(vol: Volume, att: VolumeAttachmentRow | None,
                 host: str | None = None) -> VolumeSpec:
    """`host`: the attached instance's host (sent only with an export)."""
    # The snapshot matters only while the node creates the volume: sent later, a snapshot
    # deleted since would make the node refuse a volume that already exists.
    exported = wants_export(att)
    return VolumeSpec(volume_id=vol.volume_id, size_bytes=vol.size_gib * GIB,
                      exported=exported, disconnect=not exported and forcing_off(att),
                      from_snapshot=vol.snapshot_id if vol.state == "creating" else None,
                      host=host if exported else None)


def needs_push(vol: Volume, att: VolumeAttachmentRow | None) -> bool:
    return vol.state in PUSHED and (vol.generation != vol.acked_generation
                                    or wants_export(att) != (vol.source_export is not None))


class VolumeSync:
    def __init__(self, db: Database, settings: Settings, storage: StorageClient | None,
                 executor: Executor):
        self.db, self.settings, self.storage, self.executor = db, settings, storage, executor
        self._backoff: dict[tuple, tuple[int, float]] = {}
        self._lock = threading.Lock()
        self._last_scan: float | None = None
        self.orphan_scan_s = ORPHAN_SCAN_S
        #: Volume id -> the host its export was last acknowledged for (None: no host sent).
        self._export_host: dict[str, str | None] = {}

    # -- one pass ---------------------------------------------------------------------------
    def run(self) -> dict:
        """One pass (under the reconciler's tick lock); counters: volumes done, errors."""
        stats = {"volumes": 0, "errors": 0}
        if self.storage is None:
            return stats
        stats["errors"] += self._purge()
        try:
            planned = self._plan()
        except Exception:
            log.exception("planning volume work failed")
            stats["errors"] += 1
            planned = []
        with self._lock:
            wanted = {self._key(w) for w in planned}
            self._backoff = {k: v for k, v in self._backoff.items() if k in wanted}
        work = [w for w in planned if self._due(w)]
        for ok in self.executor.map(self._do, work):
            stats["volumes" if ok else "errors"] += 1
        now = time.monotonic()
        if self._last_scan is None or now - self._last_scan >= self.orphan_scan_s:
            self._last_scan = now
            done, errors = self.delete_orphans()
            stats["volumes"] += done
            stats["errors"] += errors
        return stats

    def _purge(self) -> int:
        cutoff = utcnow() - timedelta(seconds=self.settings.terminated_retention_s)
        try:
            with self.db.session(notify=False) as s:
                s.exec(delete(Volume).where(Volume.state == "deleted",
                                            Volume.deleted_at < cutoff))
            return 0
        except Exception:
            log.exception("volume purge failed")
            return 1

    def _plan(self) -> list[VolumeWork]:
        att = VolumeAttachmentRow
        want = and_(att.volume_id.is_not(None),
                    or_(att.state != "detaching", att.force_detach == False))  # noqa: E712
        # Every exported one too: whether its host changed is checked below, in Python.
        q = (select(Volume, att, Instance.host_id)
             .join(att, att.volume_id == Volume.volume_id, isouter=True)
             .join(Instance, Instance.instance_id == att.instance_id, isouter=True)
             .where(or_(Volume.state == "deleting",
                        and_(Volume.state.in_(PUSHED),
                             or_(Volume.generation != Volume.acked_generation, want,
                                 and_(not_(want), Volume.source_export.is_not(None)))))))
        work = []
        with self.db.session(notify=False) as s:
            for vol, row, host in s.exec(q):
                if vol.state == "deleting":
                    work.append(VolumeWork("delete", vol.volume_id))
                    continue
                moved = False
                if wants_export(row) and vol.source_export is not None:
                    with self._lock:
                        moved = self._export_host.get(vol.volume_id, _UNKNOWN) != host
                if not (moved or needs_push(vol, row)):
                    continue
                if vol.generation == vol.acked_generation:
                    # The export should change although nothing bumped it (a force detach, an
                    # attachment row gone): a new generation for the node to acknowledge.
                    vol.generation += 1
                    s.add(vol)
                work.append(VolumeWork("put", vol.volume_id, vol.generation,
                                       desired_spec(vol, row, host)))
        return work

    @staticmethod
    def _key(w: VolumeWork) -> tuple:
        return (w.volume_id, w.kind, w.generation)

    def _due(self, w: VolumeWork) -> bool:
        with self._lock:
            entry = self._backoff.get(self._key(w))
        return entry is None or time.monotonic() >= entry[1]

    def _failed(self, w: VolumeWork) -> None:
        with self._lock:
            for k in [k for k in self._backoff if k[0] == w.volume_id and k != self._key(w)]:
                del self._backoff[k]
            failures = self._backoff.get(self._key(w), (0, 0.0))[0] + 1
            delay = min(MAX_BACKOFF_S, 0.5 * 2 ** (failures - 1))
            self._backoff[self._key(w)] = (failures, time.monotonic() + delay)

    def _do(self, w: VolumeWork) -> bool:
        try:
            if w.kind == "put":
                obs = self.storage.put_volume(w.spec)
                with self._lock:
                    if obs.exported:
                        self._export_host[w.volume_id] = w.spec.host
                    else:
                        self._export_host.pop(w.volume_id, None)
                self._applied(w, obs)
            else:
                self.storage.delete_volume(w.volume_id)
                self._deleted(w.volume_id)
            with self._lock:
                self._backoff.pop(self._key(w), None)
            return True
        except StorageError as exc:
            log.warning("volume %s %s failed: %s", w.kind, w.volume_id, exc)
            self._note_error(w, exc)
        except Exception:
            log.exception("volume %s %s failed", w.kind, w.volume_id)
        self._failed(w)
        return False

    # -- folding answers --------------------------------------------------------------------
    def _applied(self, w: VolumeWork, obs: VolumeObserved) -> None:
        with self.db.session(notify=False) as s:
            vol = s.get(Volume, w.volume_id)
            if vol is None or vol.state not in PUSHED:
                return
            att = s.get(VolumeAttachmentRow, w.volume_id)
            now = utcnow()
            old_source = source_key(vol)
            old_size = vol.observed_size_bytes
            src = obs.source if obs.exported else None
            vol.source_host = src.host if src else None
            vol.source_port = src.port if src else None
            vol.source_export = src.export if src else None
            vol.source_protocol = src.protocol if src else None
            vol.source_auth_user = src.auth_user if src else None
            vol.source_auth_key = src.auth_key if src else None
            vol.observed_size_bytes = obs.size_bytes
            vol.acked_generation = max(vol.acked_generation, w.generation)
            vol.observed_error = None
            vol.updated_at = now
            s.add(vol)
            if vol.state == "creating":
                to = "in-use" if att is not None else "available"
                record(s, "volume", vol.volume_id, vol.account_id, "creating", to,
                       "storage node created it")
                vol.state = to
            if (vol.modification_state == "modifying"
                    and obs.size_bytes >= vol.size_gib * GIB):
                vol.modification_state = "completed"
                record(s, "volume-modification", vol.volume_id, vol.account_id, "modifying",
                       "completed", f"{obs.size_bytes} bytes on the storage node")
            if att is None:
                if vol.state == "in-use" and src is None and not w.spec.exported:
                    record(s, "volume", vol.volume_id, vol.account_id, "in-use", "available",
                           "storage node stopped serving it")
                    vol.state = "available"
                return
            if src is None and not w.spec.exported and forcing_off(att):
                finish_detach(s, att, vol, "forced: the storage node cut the host off")
                return
            new_source = source_key(vol)
            moved = old_source[3] is not None and new_source != old_source
            # Grown while attached: the host makes the guest see the new size (spec size_bytes).
            grown = old_size is not None and obs.size_bytes > old_size
            if (src is not None and (moved or grown)
                    and att.state in ("attaching", "attached")):
                # The host must reach it elsewhere, or see it bigger: the instance's spec changes.
                inst = s.get(Instance, att.instance_id)
                if inst is not None and inst.state != "terminated":
                    inst.generation = max(inst.generation, inst.acked_generation) + 1
                    s.add(inst)

    def _deleted(self, volume_id: str) -> None:
        with self.db.session(notify=False) as s:
            vol = s.get(Volume, volume_id)
            if vol is None or vol.state != "deleting":
                return
            now = utcnow()
            record(s, "volume", volume_id, vol.account_id, "deleting", "deleted",
                   "storage node deleted it")
            vol.state, vol.deleted_at, vol.updated_at = "deleted", now, now
            vol.source_host = vol.source_port = vol.source_export = None
            vol.source_protocol = None
            vol.source_auth_user = vol.source_auth_key = None
            vol.observed_error = None
            s.add(vol)

    def _note_error(self, w: VolumeWork, exc: StorageError) -> None:
        try:
            with self.db.session(notify=False) as s:
                vol = s.get(Volume, w.volume_id)
                if vol is None or vol.state == "deleted":
                    return
                vol.observed_error = f"{exc.code}: {exc.message}"[:1024]
                if w.kind == "put" and vol.state == "creating" and not exc.retryable:
                    record(s, "volume", vol.volume_id, vol.account_id, "creating", "error",
                           vol.observed_error)
                    vol.state = "error"
                    vol.updated_at = utcnow()
                    metering.volume_ended(s, vol, vol.updated_at)  # it never existed
                s.add(vol)
        except Exception:
            log.exception("could not record storage error for %s", w.volume_id)

    # -- orphans ----------------------------------------------------------------------------
    def delete_orphans(self) -> tuple[int, int]:
        """Delete the node's volumes the database does not have (or has as deleted); returns
        (deleted, errors)."""
        if self.storage is None:
            return 0, 0
        try:
            on_node = [v.volume_id for v in self.storage.list_volumes()]  # before the database
        except StorageError as exc:
            log.warning("listing the storage node's volumes failed: %s", exc)
            return 0, 1
        if not on_node:
            return 0, 0
        with self.db.session(notify=False) as s:
            known = dict(s.exec(select(Volume.volume_id, Volume.state)
                                .where(Volume.volume_id.in_(on_node))).all())
        orphans = [v for v in on_node if known.get(v, "deleted") == "deleted"]
        done = errors = 0
        for vid in orphans:
            try:
                self.storage.delete_volume(vid)
                log.info("deleted orphan volume %s on the storage node", vid)
                done += 1
            except StorageError as exc:
                log.warning("deleting orphan volume %s failed: %s", vid, exc)
                errors += 1
        return done, errors
