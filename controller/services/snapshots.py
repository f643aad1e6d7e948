"""Snapshots: the rules of what users may ask (create, describe, delete, tag), for any front end
(the REST routers in controller/api/snapshots.py, later the EC2 Query API).

This service only writes desired state: a snapshot row. controller/snapshot_sync.py makes the
storage node match (pending -> completed once the node took it; deleting -> deleted once it is
gone there). The node's snapshots are copy-on-write and crash-consistent: a snapshot of an
attached volume (in-use) is what a power cut would have left on the disk, and the volume keeps
changing without changing the snapshot. A volume is made from a snapshot by
services/volumes.create (snapshot_id).

EC2 semantics: another account's volume or snapshot answers its NotFound code (404), exactly
like a missing one (admins see every account's); deleted snapshots are gone for users.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sqlmodel import Session, select

from controller.db import Database
from controller.errors import Conflict, IncorrectState
from controller.events import record
from controller.ids import new_id, utcnow
from controller.models.image import Image
from controller.models.snapshot import Snapshot, SnapshotCreate, SnapshotPublic
from controller.models.volume import Volume
from controller.services import filters as list_filters
from controller.services import metering, pagination
from controller.services import volumes as volume_service
from controller.services.pagination import Page, PageRequest
from controller.services.scoping import owned, scoped
from controller.settings import Settings

NOT_FOUND = "InvalidSnapshot.NotFound"
IN_USE = "InvalidSnapshot.InUse"
#: Snapshot states that are gone for users.
GONE = ("deleted",)
#: Volume states a snapshot may be taken in (EC2's: attached or not).
SNAPSHOTTABLE_VOLUME_STATES = ("available", "in-use")
#: States a delete accepts (deleting: already being deleted, answered as is).
DELETABLE = ("pending", "completed", "error")
#: Lists page in this order; index (account_id, created_at, snapshot_id) serves it.
ORDER = pagination.Order(Snapshot.created_at, Snapshot.snapshot_id)


# -- reading --------------------------------------------------------------------------------------
def to_public(snap: Snapshot) -> SnapshotPublic:
    return SnapshotPublic(
        snapshot_id=snap.snapshot_id, volume_id=snap.volume_id,
        volume_size_gib=snap.volume_size_gib, state=snap.state, progress=snap.progress,
        description=snap.description or "", owner_id=snap.account_id,
        start_time=snap.start_time, tags=dict(snap.tags or {}),
        state_message=snap.observed_error if snap.state == "error" else None,
        stored_bytes=snap.stored_bytes)


def get(s: Session, caller, snapshot_id: str) -> Snapshot:
    """The snapshot, if the caller may see it and it is not deleted; else 404."""
    return owned(s, caller, Snapshot, snapshot_id, NOT_FOUND, "snapshot", gone=GONE)


def get_public(db: Database, caller, snapshot_id: str) -> SnapshotPublic:
    with db.session() as s:
        return to_public(get(s, caller, snapshot_id))


@dataclass(frozen=True)
class SnapshotFilters:
    """What a list of snapshots is filtered on (EC2's describe-snapshots filters); each runs in
    SQL, all of them must hold; within one, any of its values. Empty means no filter."""

    snapshot_ids: tuple[str, ...] = ()
    volume_ids: tuple[str, ...] = ()
    states: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)

    #: EC2 filter name -> REST query parameter (either spelling is accepted).
    NAMES = {"snapshot-id": "snapshot_id", "volume-id": "volume_id", "status": "status"}

    @classmethod
    def from_filters(cls, filters: Mapping[str, Iterable[str]]) -> "SnapshotFilters":
        """From EC2 filter names (or the REST parameter names) to their values; tag:<key> with
        one value each. Unknown names are InvalidParameterValue (EC2 refuses them too)."""
        by_rest, tags = list_filters.parse(cls.NAMES, filters)
        return cls(snapshot_ids=tuple(by_rest.get("snapshot_id", ())),
                   volume_ids=tuple(by_rest.get("volume_id", ())),
                   states=tuple(by_rest.get("status", ())), tags=tags)

    @classmethod
    def from_query(cls, params: Iterable[tuple[str, str]]) -> "SnapshotFilters":
        """From REST query parameters (repeatable, each a comma separated list): snapshot_id,
        volume_id, status, tag:<key>=<value>; the paging parameters and anything else are not
        filters."""
        return cls.from_filters(list_filters.group_query(cls.NAMES, params))


def _filtered(caller, filters: SnapshotFilters):
    q = scoped(select(Snapshot), Snapshot, caller).where(Snapshot.state.not_in(GONE))
    q = list_filters.where_in(q, (Snapshot.snapshot_id, filters.snapshot_ids),
                              (Snapshot.volume_id, filters.volume_ids),
                              (Snapshot.state, filters.states))
    return list_filters.where_tags(q, Snapshot, filters.tags)


def list_page(db: Database, caller, page: PageRequest,
              filters: SnapshotFilters = SnapshotFilters()) -> Page[SnapshotPublic]:
    """One keyset page of the snapshots the caller sees (services/pagination.py)."""
    with db.session() as s:
        return pagination.list_page(s, _filtered(caller, filters), ORDER, page,
                                    lambda rows: [to_public(r) for r in rows])


# -- create ---------------------------------------------------------------------------------------
def create(db: Database, settings: Settings, caller, req: SnapshotCreate) -> Snapshot:
    """A new snapshot (pending) of one of the caller's volumes, available or in-use (attached:
    crash-consistent); snapshot_sync takes it on the storage node. Nothing is created when a
    check fails."""
    volume_service.check_tags(req.tags)
    with db.session() as s:
        volume = volume_service.get(s, caller, req.volume_id)  # 404 InvalidVolume.NotFound
        if volume.state not in SNAPSHOTTABLE_VOLUME_STATES:
            raise IncorrectState(f"{volume.volume_id} is {volume.state}; snapshots are taken "
                                 "of available or in-use volumes", code="IncorrectState")
        if settings.storage_url is None:
            raise volume_service.StorageUnavailable(
                "no storage service is configured; snapshots cannot be taken")
        now = utcnow()
        snap = Snapshot(snapshot_id=new_id("snap"), account_id=volume.account_id,
                        volume_id=volume.volume_id, volume_size_gib=volume.size_gib,
                        state="pending", progress="0%", description=req.description,
                        tags=dict(req.tags), start_time=now, created_at=now, updated_at=now)
        s.add(snap)
        record(s, "snapshot", snap.snapshot_id, snap.account_id, None, "pending",
               f"snapshot of {volume.volume_id} ({volume.size_gib} GiB, {volume.state})")
        return snap


# -- delete ---------------------------------------------------------------------------------------
def delete(db: Database, caller, snapshot_id: str) -> Snapshot:
    """pending, completed or error -> deleting (snapshot_sync deletes it on the node); a
    snapshot already deleting is answered as it is. Refused (409 InvalidSnapshot.InUse) while a
    volume is being created from it."""
    with db.session() as s:
        snap = get(s, caller, snapshot_id)
        if snap.state == "deleting":
            return snap
        if snap.state not in DELETABLE:
            raise IncorrectState(f"{snapshot_id} is {snap.state}", code="IncorrectState")
        user = s.exec(select(Volume.volume_id).where(Volume.snapshot_id == snapshot_id,
                                                     Volume.state == "creating")).first()
        if user is not None:
            raise Conflict(f"{snapshot_id} is in use: volume {user} is being created from it",
                           code=IN_USE)
        image = _image_using(s, snap)
        if image is not None:  # EC2 too: deregister the image first
            raise Conflict(f"{snapshot_id} is in use by image {image}", code=IN_USE)
        frm = snap.state
        snap.state = "deleting"
        snap.updated_at = utcnow()
        metering.snapshot_ended(s, snap, snap.updated_at)
        s.add(snap)
        record(s, "snapshot", snapshot_id, snap.account_id, frm, "deleting", "user delete")
        return snap


def _image_using(s, snap: Snapshot) -> str | None:
    """A registered image of the snapshot's account whose block device mappings restore from it
    (launches from it would fail without the snapshot). Mappings live in a JSON column, so the
    account's images are scanned; accounts hold few images."""
    for image_id, mappings in s.exec(select(Image.image_id, Image.block_device_mappings).where(
            Image.owner_account_id == snap.account_id, Image.state != "deregistered")):
        if any(m.get("snapshot_id") == snap.snapshot_id for m in mappings or []):
            return image_id
    return None


# -- tags -----------------------------------------------------------------------------------------
def set_tags(db: Database, caller, snapshot_id: str, tags: Mapping[str, str]) -> Snapshot:
    """Replace the snapshot's tags (all of them)."""
    volume_service.check_tags(tags)
    with db.session() as s:
        snap = get(s, caller, snapshot_id)
        snap.tags = dict(tags)
        snap.updated_at = utcnow()
        s.add(snap)
        return snap
