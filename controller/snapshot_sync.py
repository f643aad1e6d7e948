"""Snapshot sync: the reconciler's part that makes the storage node's snapshots match the
snapshot rows (issue 10). `sync_snapshots(db, settings, storage)` is one pass, called by the
reconciler's tick (before the volume sync, so a snapshot asked for before its volume's delete is
taken before the volume goes).

Per snapshot, each failure isolated (one never stops the others):
- pending: PUT SnapshotSpec on the node (idempotent) -> completed, progress 100%, the volume's
  size as the node took it and the bytes it stores (billed by them: services/metering.py).
  A permanent refusal (the volume is gone from the node, ...) -> error
  with observed_error; a retryable one (node unreachable, ...) is recorded in observed_error and
  retried on the next tick.
- deleting: DELETE on the node (already gone is success) -> deleted, deleted_at. A permanent
  refusal -> error (the user may delete it again); a retryable one is retried.
- deleted rows older than settings.terminated_retention_s are purged.

A row changed meanwhile (a user deleted a pending snapshot while the node took it) is not
overwritten: the answer is recorded only if the row is still in the state the call was made for;
the next pass carries the new state to the node. Storage calls run outside database
transactions; the bookkeeping commits with notify=False.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import delete
from sqlmodel import Session, select

from agent.contract.storage_v1 import SnapshotSpec
from controller.db import Database
from controller.events import record
from controller.ids import utcnow
from controller.models.snapshot import Snapshot
from controller.services import metering
from controller.settings import Settings
from controller.storage import StorageClient, StorageError
from controller.storage_snapshots import delete_snapshot, put_snapshot

log = logging.getLogger(__name__)

GIB = 1 << 30


def sync_snapshots(db: Database, settings: Settings, storage: StorageClient | None) -> int:
    """One pass over pending and deleting snapshots; the number of errors (0: all done)."""
    if storage is None:
        return 0
    errors = _purge(db, settings)
    try:
        with db.session(notify=False) as s:
            work = [(snap.snapshot_id, snap.volume_id, snap.state)
                    for snap in s.exec(select(Snapshot)
                                       .where(Snapshot.state.in_(("pending", "deleting")))
                                       .order_by(Snapshot.created_at, Snapshot.snapshot_id))]
    except Exception:
        log.exception("planning snapshot work failed")
        return errors + 1
    for snapshot_id, volume_id, state in work:
        try:
            if state == "pending":
                ok = _take(db, storage, snapshot_id, volume_id)
            else:
                ok = _delete(db, storage, snapshot_id)
        except Exception:
            log.exception("snapshot %s: %s failed", snapshot_id, state)
            ok = False
        errors += 0 if ok else 1
    return errors


def _purge(db: Database, settings: Settings) -> int:
    cutoff = utcnow() - timedelta(seconds=settings.terminated_retention_s)
    try:
        with db.session(notify=False) as s:
            s.exec(delete(Snapshot).where(Snapshot.state == "deleted",
                                          Snapshot.deleted_at < cutoff))
        return 0
    except Exception:
        log.exception("snapshot purge failed")
        return 1


def _take(db: Database, storage: StorageClient, snapshot_id: str, volume_id: str) -> bool:
    def completed(s, snap: Snapshot, observed) -> None:
        snap.state, snap.progress = "completed", "100%"
        snap.volume_size_gib = max(1, -(-observed.size_bytes // GIB))
        snap.stored_bytes = observed.stored_bytes  # billed by it (None: by the volume's size)
        snap.observed_error = None
        snap.updated_at = utcnow()
        s.add(snap)
        metering.snapshot_completed(s, snap, snap.updated_at)  # billed from now, as stored
        record(s, "snapshot", snapshot_id, snap.account_id, "pending", "completed",
               f"taken of {volume_id} on the storage node")

    # A snapshot deleted meanwhile is left alone: the next pass deletes it on the node.
    return _call(db, snapshot_id, "pending", completed,
                 lambda: put_snapshot(storage, SnapshotSpec(snapshot_id=snapshot_id,
                                                            volume_id=volume_id)))


def _delete(db: Database, storage: StorageClient, snapshot_id: str) -> bool:
    def deleted(s, snap: Snapshot, _answer) -> None:
        now = utcnow()
        snap.state, snap.deleted_at, snap.updated_at = "deleted", now, now
        snap.observed_error = None
        s.add(snap)
        record(s, "snapshot", snapshot_id, snap.account_id, "deleting", "deleted",
               "deleted on the storage node")

    return _call(db, snapshot_id, "deleting", deleted,
                 lambda: delete_snapshot(storage, snapshot_id))


def _call(db: Database, snapshot_id: str, state: str,
          done: Callable[[Session, Snapshot, Any], None], call: Callable[[], Any]) -> bool:
    """Make the storage node `call` for a snapshot in `state` (outside any transaction); its
    answer goes to `done(session, row, answer)`, a refusal to _failed, each only if the row is
    still in `state`. False: the node refused."""
    try:
        answer = call()
    except StorageError as exc:
        _failed(db, snapshot_id, state, exc)
        return False
    with db.session(notify=False) as s:
        snap = _still(s, snapshot_id, state)
        if snap is not None:
            done(s, snap, answer)
    return True


def _still(s: Session, snapshot_id: str, state: str) -> Snapshot | None:
    """The row if it is still in `state` (None: changed or gone meanwhile)."""
    snap = s.get(Snapshot, snapshot_id)
    return snap if snap is not None and snap.state == state else None


def _failed(db: Database, snapshot_id: str, state: str, exc: StorageError) -> None:
    """Record the node's refusal: permanent -> error; retryable -> kept for the next pass."""
    log.warning("snapshot %s (%s): %s", snapshot_id, state, exc)
    with db.session(notify=False) as s:
        snap = _still(s, snapshot_id, state)
        if snap is None:
            return
        snap.observed_error = f"{exc.code}: {exc.message}"[:1024]
        snap.updated_at = utcnow()
        if not exc.retryable:
            snap.state = "error"
            record(s, "snapshot", snapshot_id, snap.account_id, state, "error",
                   snap.observed_error)
        s.add(snap)
