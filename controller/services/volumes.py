"""Volumes: the rules of what users may ask (create, describe, delete, attach, detach, grow, tag),
for any front end (the REST routers in controller/api/volumes.py, later the EC2 Query API).

This service only writes desired state: a volume row (state, size, `generation`) and attachment
rows, plus the instance's spec generation (lifecycle.bump) when an attachment changes. The
reconciler is woken by every commit and makes the storage node and the hosts match: it creates,
grows and deletes volumes on the storage node (creating -> available, deleting -> deleted), and
finishes attachments (attaching -> attached; detaching -> the row removed, the volume available).

EC2 semantics: another account's volume or instance answers its NotFound code (404), exactly like
a missing one; a volume is attached to at most one instance; device names are EC2's (/dev/sdf,
/dev/xvdf, /dev/vdf) and the guest sees virtio disk vd<letter> (`virtio_target`), so /dev/sdf and
/dev/xvdf on one instance are the same device. Volumes only grow. Deleted volumes are gone for
users (404 InvalidVolume.NotFound) and stop counting against the account's GiB limit.

Concurrent writers are serialised by the database layer (SQLite's BEGIN IMMEDIATE, PostgreSQL's
advisory lock, controller/db.py), so each check-then-write below is one decision; the unique
constraints (one attachment per volume, one per (instance, device)) are the backstop.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from controller.db import Database
from controller.errors import Conflict, IncorrectState, InvalidParameter, KumoError, NotFound
from controller.events import record
from controller.ids import new_id, utcnow
from controller.models import Instance
from controller.models.common import TAG_KEY_RE, TAG_VALUE_RE
from controller.models.snapshot import Snapshot
from controller.models.volume import (DEVICE_NAME_PATTERN, AttachmentPublic, Volume,
                                      VolumeAttach, VolumeAttachmentRow, VolumeCreate,
                                      VolumeDetach, VolumePublic)
from controller.services import filters as list_filters
from controller.services import lifecycle, metering, pagination
from controller.services.pagination import Page, PageRequest
from controller.services.scoping import owned, scoped
from controller.settings import Settings

NOT_FOUND = "InvalidVolume.NotFound"
INSTANCE_NOT_FOUND = "InvalidInstanceID.NotFound"
SNAPSHOT_NOT_FOUND = "InvalidSnapshot.NotFound"
MAX_TAGS = 50
#: Device names of the root disk (the guest's vda): never a volume's.
ROOT_DEVICES = frozenset({"/dev/sda", "/dev/sda1", "/dev/vda", "/dev/xvda"})
#: Instance states a volume may be attached in (EC2's).
ATTACHABLE_INSTANCE_STATES = ("running", "stopped")
#: Volume states that are gone for users.
GONE = ("deleted",)
#: The live grow of an attached volume: the storage node re-makes the export at the new size
#: and the host's agent makes the guest see it (see check_growable()).
LIVE_GROW_SUPPORTED = True
#: Lists page in this order; index (account_id, created_at, volume_id) serves it.
ORDER = pagination.Order(Volume.created_at, Volume.volume_id)
_DEVICE_RE = re.compile(DEVICE_NAME_PATTERN)


# -- errors (stable EC2 codes) --------------------------------------------------------------------
class VolumeLimitExceeded(KumoError):
    code, status = "VolumeLimitExceeded", 400


class AttachmentLimitExceeded(KumoError):
    code, status = "AttachmentLimitExceeded", 400


class UnsupportedOperation(KumoError):
    code, status = "UnsupportedOperation", 400


class StorageUnavailable(KumoError):
    code, status, retryable = "StorageUnavailable", 503, True


def _volume_in_use(message: str) -> Conflict:
    return Conflict(message, code="VolumeInUse")


def _incorrect_state(message: str) -> IncorrectState:
    return IncorrectState(message, code="IncorrectState")


# -- pure helpers -----------------------------------------------------------------------------
def virtio_target(device: str) -> str:
    """The guest's virtio disk for an EC2 device name: /dev/sdf, /dev/xvdf, /dev/vdf -> "vdf".
    ValueError for anything DEVICE_NAME_PATTERN refuses (the root disk's names included)."""
    if not isinstance(device, str) or not _DEVICE_RE.fullmatch(device):
        raise ValueError(f"invalid device name {device!r}")
    return "vd" + device[-1]


def check_device(device: str) -> str:
    """The virtio target of a device a user names, or InvalidParameterValue (400)."""
    if device in ROOT_DEVICES:
        raise InvalidParameter(f"{device} is reserved for the root device")
    try:
        return virtio_target(device)
    except ValueError:
        raise InvalidParameter(f"invalid device name {device!r}: expected /dev/sd[b-z], "
                               "/dev/xvd[b-z] or /dev/vd[b-z]") from None


def check_tags(tags: Mapping[str, str]) -> None:
    """The same rules as instances' tags (services/instances.py)."""
    if len(tags) > MAX_TAGS:
        raise InvalidParameter(f"at most {MAX_TAGS} tags", code="InvalidTag")
    for k, v in tags.items():
        # fullmatch: the patterns end in $, which also matches before a trailing newline.
        if (not TAG_KEY_RE.fullmatch(k) or k.lower().startswith("kumo:")
                or not TAG_VALUE_RE.fullmatch(v)):
            raise InvalidParameter(
                f"invalid tag {k!r}: keys 1-128 and values 0-256 of letters, digits, spaces "
                "and _ . : / = + - @ (the kumo: prefix is reserved)", code="InvalidTag")


def check_size(size_gib: int, settings: Settings) -> None:
    if not 1 <= size_gib <= settings.max_volume_gib:
        raise InvalidParameter(f"size {size_gib} GiB: volumes are 1 to "
                               f"{settings.max_volume_gib} GiB")


def check_growable(volume: Volume) -> None:
    """Whether the volume may grow in its state; an attached one grows live (the one switch is
    LIVE_GROW_SUPPORTED, for a stack that could not).

    How an attached NBD volume grows (qemu 7.2, libvirt 9.0; evidence of 2026-12-06 with a
    scratch qemu-storage-daemon and `qemu-system-x86_64 -machine none` clients over a unix-socket
    NBD server, guest I/O simulated with HMP `qemu-io`):
    - The storage node: an NBD export takes the resize permission from its node ("Permission
      conflict on node ...: permissions 'resize' ... unshared"), and a safe `block-export-del`
      is refused while a client is connected. So it removes the export hard (the host is cut
      off), grows the node with `block_resize` and adds the export again under the same name
      (agent/storage_node/backend.py _grow_open).
    - The host: QEMU's NBD client learns the size only when it connects; `block_resize` to a
      bigger size says "Cannot grow NBD nodes" until then. libvirt 9.0 cannot give an NBD disk
      a reconnect-delay (no <reconnect> in an NBD <source>), so with QEMU's default of 0 the
      first two requests after the cut fail and the third reconnects: 20 of 20 trials, 3 reads,
      then block_resize to the new size succeeded and the data read back. The agent spends those
      requests itself (a monitor `qemu-io` read, agent/libvirt/nbd_reconnect.py) and then calls
      virDomainBlockResize: the guest gets a capacity change and sees the new size at once.
    - A guest request that meets the cut connection first would fail: volume disks have error
      policy "stop", so QEMU pauses the guest and keeps the request; the agent reconnects the
      disks and resumes it (ResumedAfterIOError), and the request succeeds."""
    if volume.state == "in-use" and not LIVE_GROW_SUPPORTED:
        raise UnsupportedOperation(
            f"{volume.volume_id} is attached: growing an attached volume needs live resize "
            "support in the storage backend; detach the volume to grow it")


def _bump(volume: Volume) -> None:
    """What the storage node must have changed: the reconciler pushes the new generation."""
    volume.generation = max(volume.generation, volume.acked_generation) + 1


# -- reading --------------------------------------------------------------------------------------
def attachments_of(s: Session, volume_ids: Iterable[str]) -> dict[str, list[VolumeAttachmentRow]]:
    ids = list(volume_ids)
    out: dict[str, list[VolumeAttachmentRow]] = {i: [] for i in ids}
    if ids:
        for row in s.exec(select(VolumeAttachmentRow)
                          .where(VolumeAttachmentRow.volume_id.in_(ids))):
            out[row.volume_id].append(row)
    return out


def attachment_public(row: VolumeAttachmentRow) -> AttachmentPublic:
    return AttachmentPublic.model_validate(row, from_attributes=True)


def to_public(volume: Volume, attachments: Iterable[VolumeAttachmentRow] = ()) -> VolumePublic:
    return VolumePublic(
        volume_id=volume.volume_id, size_gib=volume.size_gib, state=volume.state,
        snapshot_id=volume.snapshot_id, availability_zone=volume.availability_zone,
        create_time=volume.created_at, tags=dict(volume.tags or {}),
        attachments=[attachment_public(a) for a in attachments],
        modification_state=volume.modification_state)


def describe(s: Session, rows: list[Volume]) -> list[VolumePublic]:
    """Public shapes of `rows`, their attachments loaded in one query."""
    atts = attachments_of(s, (v.volume_id for v in rows))
    return [to_public(v, atts[v.volume_id]) for v in rows]


def get(s: Session, caller, volume_id: str) -> Volume:
    """The volume, if the caller may see it and it is not deleted; else 404."""
    return owned(s, caller, Volume, volume_id, NOT_FOUND, "volume", gone=GONE)


def get_public(db: Database, caller, volume_id: str) -> VolumePublic:
    with db.session() as s:
        return describe(s, [get(s, caller, volume_id)])[0]


@dataclass(frozen=True)
class VolumeFilters:
    """What a list of volumes is filtered on (EC2's describe-volumes filters); each runs in SQL,
    all of them must hold; within one, any of its values. Empty means no filter."""

    volume_ids: tuple[str, ...] = ()
    states: tuple[str, ...] = ()
    attachment_instance_ids: tuple[str, ...] = ()
    attachment_states: tuple[str, ...] = ()
    sizes: tuple[int, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)

    #: EC2 filter name -> REST query parameter (either spelling is accepted).
    NAMES = {"volume-id": "volume_id", "status": "status",
             "attachment.instance-id": "attachment_instance_id",
             "attachment.status": "attachment_status", "size": "size"}

    @classmethod
    def from_filters(cls, filters: Mapping[str, Iterable[str]]) -> "VolumeFilters":
        """From EC2 filter names (or the REST parameter names) to their values; tag:<key> with
        one value each. Unknown names are InvalidParameterValue (EC2 refuses them too)."""
        by_rest, tags = list_filters.parse(cls.NAMES, filters)
        try:
            sizes = tuple(int(v) for v in by_rest.get("size", ()))
        except ValueError:
            raise InvalidParameter("the size filter takes whole GiB") from None
        return cls(volume_ids=tuple(by_rest.get("volume_id", ())),
                   states=tuple(by_rest.get("status", ())),
                   attachment_instance_ids=tuple(by_rest.get("attachment_instance_id", ())),
                   attachment_states=tuple(by_rest.get("attachment_status", ())),
                   sizes=sizes, tags=tags)

    @classmethod
    def from_query(cls, params: Iterable[tuple[str, str]]) -> "VolumeFilters":
        """From REST query parameters (repeatable, each a comma separated list): volume_id,
        status, attachment_instance_id, attachment_status, size, tag:<key>=<value>; the paging
        parameters and anything else are not filters."""
        return cls.from_filters(list_filters.group_query(cls.NAMES, params))


def _filtered(caller, filters: VolumeFilters):
    q = scoped(select(Volume), Volume, caller).where(Volume.state.not_in(GONE))
    q = list_filters.where_in(q, (Volume.volume_id, filters.volume_ids),
                              (Volume.state, filters.states), (Volume.size_gib, filters.sizes))
    if filters.attachment_instance_ids or filters.attachment_states:
        att = list_filters.where_in(
            select(VolumeAttachmentRow.volume_id),
            (VolumeAttachmentRow.instance_id, filters.attachment_instance_ids),
            (VolumeAttachmentRow.state, filters.attachment_states))
        q = q.where(Volume.volume_id.in_(att))
    return list_filters.where_tags(q, Volume, filters.tags)


def list_page(db: Database, caller, page: PageRequest,
              filters: VolumeFilters = VolumeFilters()) -> Page[VolumePublic]:
    """One keyset page of the volumes the caller sees (services/pagination.py)."""
    with db.session() as s:
        return pagination.list_page(s, _filtered(caller, filters), ORDER, page,
                                    lambda rows: describe(s, rows))


# -- create ---------------------------------------------------------------------------------------
def provisioned_gib(s: Session, account_id: str) -> int:
    """The account's provisioned GiB: every volume not deleted (error ones too, as in EC2)."""
    total = s.exec(select(func.coalesce(func.sum(Volume.size_gib), 0))
                   .where(Volume.account_id == account_id, Volume.state.not_in(GONE))).one()
    return int(total)


def _check_account_limit(s: Session, settings: Settings, account_id: str, extra_gib: int) -> None:
    used = provisioned_gib(s, account_id)
    if used + extra_gib > settings.account_volume_gib_limit:
        raise VolumeLimitExceeded(
            f"the account has {used} GiB of volumes; {extra_gib} GiB more exceeds its limit of "
            f"{settings.account_volume_gib_limit} GiB")


def _replay(s: Session, account_id: str, req: VolumeCreate) -> Volume | None:
    """The volume an earlier create with this client token made (not deleted), or None."""
    prev = s.exec(select(Volume).where(Volume.account_id == account_id,
                                       Volume.client_token == req.client_token,
                                       Volume.state.not_in(GONE))
                  .order_by(Volume.created_at)).first()
    if prev is None:
        return None
    # The request is what created it: its size, snapshot and tags (a later modify or tag change
    # makes a replay of the old request a mismatch, as a changed resource is another answer).
    if (prev.size_gib, prev.snapshot_id, dict(prev.tags or {})) != (
            req.size_gib, req.snapshot_id, dict(req.tags)):
        raise InvalidParameter("client_token was used with different parameters",
                               code="IdempotentParameterMismatch")
    return prev


def _snapshot(s: Session, caller, snapshot_id: str) -> Snapshot:
    """The snapshot a new volume is made from: one the caller may see (its own; an admin any),
    not deleted (else 404 InvalidSnapshot.NotFound), and completed (else 409 IncorrectState)."""
    snap = owned(s, caller, Snapshot, snapshot_id, SNAPSHOT_NOT_FOUND, "snapshot",
                 gone=("deleted",))
    if snap.state != "completed":
        raise _incorrect_state(f"{snapshot_id} is {snap.state}; volumes are made from completed "
                               "snapshots")
    return snap


def create(db: Database, settings: Settings, caller, req: VolumeCreate) -> Volume:
    """A new volume (state creating, generation 1) in the caller's account; nothing is created
    when a check fails. A repeated client_token with the same parameters answers the same
    volume. With snapshot_id the volume gets that snapshot's content (the reconciler passes it to
    the storage node as VolumeSpec.from_snapshot): its size defaults to the snapshot's volume
    size and may not be smaller."""
    check_tags(req.tags)
    if req.size_gib is None and req.snapshot_id is None:
        raise InvalidParameter("size_gib is required (or a snapshot_id)", code="MissingParameter")
    if req.size_gib is not None:
        check_size(req.size_gib, settings)
    with db.session() as s:
        size_gib = req.size_gib
        if req.snapshot_id is not None:
            snap = _snapshot(s, caller, req.snapshot_id)
            if size_gib is None:
                size_gib = snap.volume_size_gib
            elif size_gib < snap.volume_size_gib:
                raise InvalidParameter(f"size {size_gib} GiB is smaller than snapshot "
                                       f"{snap.snapshot_id} ({snap.volume_size_gib} GiB)")
            check_size(size_gib, settings)
        if settings.storage_url is None:
            raise StorageUnavailable("no storage service is configured; volumes cannot be created")
        if req.client_token:
            prev = _replay(s, caller.account_id, req.model_copy(update={"size_gib": size_gib}))
            if prev is not None:
                return prev
        _check_account_limit(s, settings, caller.account_id, size_gib)
        now = utcnow()
        volume = Volume(volume_id=new_id("vol"), account_id=caller.account_id,
                        size_gib=size_gib, state="creating", snapshot_id=req.snapshot_id,
                        availability_zone=settings.availability_zone, tags=dict(req.tags),
                        client_token=req.client_token, created_at=now, updated_at=now,
                        generation=1, acked_generation=0)
        s.add(volume)
        metering.volume_sized(s, volume, now)  # provisioned GiB are billed from creation
        source = f" from {req.snapshot_id}" if req.snapshot_id else ""
        record(s, "volume", volume.volume_id, caller.account_id, None, "creating",
               f"created {size_gib} GiB{source}")
        return volume


# -- delete ---------------------------------------------------------------------------------------
def delete(db: Database, caller, volume_id: str) -> Volume:
    """available (or error) -> deleting; the reconciler deletes it on the storage node."""
    with db.session() as s:
        volume = get(s, caller, volume_id)
        attached = s.get(VolumeAttachmentRow, volume_id)
        if volume.state == "in-use" or attached is not None:
            where = f" to {attached.instance_id}" if attached is not None else ""
            raise _volume_in_use(f"{volume_id} is attached{where}; detach it first")
        if volume.state not in ("available", "error"):
            raise _incorrect_state(f"{volume_id} is {volume.state}")
        frm = volume.state
        volume.state = "deleting"
        metering.volume_ended(s, volume)
        volume.updated_at = utcnow()
        s.add(volume)
        record(s, "volume", volume_id, volume.account_id, frm, "deleting", "user delete")
        return volume


# -- attach / detach ------------------------------------------------------------------------------
def _instance(s: Session, volume: Volume, instance_id: str) -> Instance:
    """The instance, in the volume's account (the caller's; an admin acts in the volume's)."""
    inst = s.get(Instance, instance_id) if instance_id else None
    if inst is None or inst.account_id != volume.account_id:
        raise NotFound(f"instance {instance_id!r} not found", code=INSTANCE_NOT_FOUND)
    return inst


def attach(db: Database, settings: Settings, caller, volume_id: str,
           body: VolumeAttach) -> VolumeAttachmentRow:
    """Attach an available volume to a running or stopped instance of the same account: the
    attachment (attaching), the volume in-use with a new generation (the storage node exports
    it), and the instance's spec bumped (its host attaches the disk)."""
    target = check_device(body.device)
    try:
        with db.session() as s:
            volume = get(s, caller, volume_id)
            inst = _instance(s, volume, body.instance_id)
            if inst.state not in ATTACHABLE_INSTANCE_STATES:
                raise IncorrectState(f"instance {inst.instance_id} is {inst.state}; volumes "
                                     "attach to running or stopped instances")
            current = s.get(VolumeAttachmentRow, volume_id)
            if current is not None or volume.state == "in-use":
                where = f" to {current.instance_id}" if current is not None else ""
                raise _volume_in_use(f"{volume_id} is already attached{where}")
            if volume.state != "available":
                raise _incorrect_state(f"{volume_id} is {volume.state}")
            others = list(s.exec(select(VolumeAttachmentRow)
                                 .where(VolumeAttachmentRow.instance_id == inst.instance_id)))
            for other in others:
                if virtio_target(other.device) == target:
                    raise InvalidParameter(
                        f"device {body.device} is in use on {inst.instance_id} "
                        f"({other.volume_id} as {other.device})")
            if len(others) >= settings.volumes_per_instance:
                raise AttachmentLimitExceeded(
                    f"{inst.instance_id} has {len(others)} volumes attached; the limit is "
                    f"{settings.volumes_per_instance}")
            now = utcnow()
            row = VolumeAttachmentRow(volume_id=volume_id, instance_id=inst.instance_id,
                                      device=body.device, state="attaching",
                                      delete_on_termination=body.delete_on_termination,
                                      force_detach=False, attach_time=now)
            s.add(row)
            volume.state = "in-use"
            volume.updated_at = now
            _bump(volume)
            s.add(volume)
            inst.updated_at = now
            lifecycle.bump(inst)
            s.add(inst)
            s.flush()  # the unique constraints decide here, inside the transaction
            record(s, "volume", volume_id, volume.account_id, "available", "in-use",
                   f"attaching to {inst.instance_id} as {body.device} ({target})")
            return row
    except IntegrityError:
        # Only reachable if the serialisation of writers ever fails: the same answers.
        raise InvalidParameter(f"device {body.device} or volume {volume_id} is already "
                               "in use") from None


def detach(db: Database, caller, volume_id: str, body: VolumeDetach) -> VolumeAttachmentRow:
    """Mark the volume's attachment detaching (force kept once asked for) and bump the
    instance's spec; the reconciler removes the row and frees the volume. Idempotent."""
    with db.session() as s:
        volume = get(s, caller, volume_id)
        row = s.get(VolumeAttachmentRow, volume_id)
        if row is None:
            raise _incorrect_state(f"{volume_id} is not attached")
        if body.instance_id is not None and body.instance_id != row.instance_id:
            raise InvalidParameter(f"{volume_id} is not attached to {body.instance_id}",
                                   code="InvalidAttachment.NotFound")
        inst = s.get(Instance, row.instance_id)
        if row.state == "detaching":
            if body.force and not row.force_detach:
                row.force_detach = True
                s.add(row)
                if inst is not None:
                    lifecycle.bump(inst)
                    inst.updated_at = utcnow()
                    s.add(inst)
                record(s, "volume", volume_id, volume.account_id, volume.state, volume.state,
                       f"detaching from {row.instance_id}: forced")
            return row
        row.state = "detaching"
        row.force_detach = body.force
        s.add(row)
        if inst is not None:
            lifecycle.bump(inst)
            inst.updated_at = utcnow()
            s.add(inst)
        volume.updated_at = utcnow()
        s.add(volume)
        record(s, "volume", volume_id, volume.account_id, volume.state, volume.state,
               f"detaching from {row.instance_id}" + (" (forced)" if body.force else ""))
        return row


# -- modify / tags --------------------------------------------------------------------------------
def modify(db: Database, settings: Settings, caller, volume_id: str, size_gib: int) -> Volume:
    """Grow a volume (volumes only grow); the same size is a no-op."""
    with db.session() as s:
        volume = get(s, caller, volume_id)
        if volume.state not in ("available", "in-use"):
            raise _incorrect_state(f"{volume_id} is {volume.state}")
        if size_gib < volume.size_gib:
            raise InvalidParameter(f"{volume_id} is {volume.size_gib} GiB: volumes only grow")
        if size_gib == volume.size_gib:
            return volume
        check_size(size_gib, settings)
        _check_account_limit(s, settings, volume.account_id, size_gib - volume.size_gib)
        check_growable(volume)
        old = volume.size_gib
        volume.size_gib = size_gib
        metering.volume_sized(s, volume)  # the new size is billed from now
        volume.modification_state = "modifying"
        volume.updated_at = utcnow()
        _bump(volume)
        s.add(volume)
        record(s, "volume", volume_id, volume.account_id, volume.state, volume.state,
               f"size {old} -> {size_gib} GiB")
        return volume


def set_tags(db: Database, caller, volume_id: str, tags: Mapping[str, str]) -> Volume:
    """Replace the volume's tags (all of them)."""
    check_tags(tags)
    with db.session() as s:
        volume = get(s, caller, volume_id)
        volume.tags = dict(tags)
        volume.updated_at = utcnow()
        s.add(volume)
        return volume
