"""The volume backend contract: what a storage service must do for Kumo's volumes (issue 10).

A volume is a block device that lives on a storage service, not on the instance's host: hosts
reach it over the network with a protocol QEMU speaks natively (libvirt `<disk type='network'>`),
so a volume can be attached on any host. This module holds the one Protocol every backend keeps
(the NBD storage node in agent/storage_node/, an in-memory fake in agent/drivers/fake_volumes.py;
Ceph RBD later), its value types, its errors (stable codes, EC2 names where EC2 has one) and the
validation of volume ids and sizes, done here so that bad input fails the same way on every
backend before it reaches a path, an argv or QMP JSON.

Snapshots (capability "snapshots"): a point-in-time, crash-consistent copy of a volume's data,
kept on the same service, that outlives its volume (as EC2's); a new volume can be made from one.
Snapshot ids are validated here like volume ids (valid_snapshot_id).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional, Protocol

from agent.drivers.base import DriverError, NetworkSource

#: EC2 style: "vol-" + 17 lowercase hex. The id is also the file stem, the export name and (with
#: a prefix) the daemon's node name, so nothing else is ever accepted.
VOLUME_ID_RE = re.compile(r"vol-[0-9a-f]{17}")
#: EC2 style: "snap-" + 17 lowercase hex. It names the snapshot inside the backend's files (and
#: QMP arguments), so nothing else is ever accepted.
SNAPSHOT_ID_RE = re.compile(r"snap-[0-9a-f]{17}")
MiB = 1 << 20
GiB = 1 << 30
#: Sizes are whole MiB (EC2 uses GiB; MiB keeps tests small); the default ceiling is 16 TiB.
SIZE_GRANULE = MiB
DEFAULT_MAX_SIZE = 16 << 40


class InvalidVolumeId(DriverError):
    code = "InvalidVolumeID.Malformed"
    retryable = False


class InvalidVolumeSize(DriverError):
    """Not a whole number of MiB, out of range, or smaller than the volume already is."""

    code = "InvalidVolumeSize"
    retryable = False


class VolumeNotFound(DriverError):
    code = "InvalidVolume.NotFound"
    retryable = False


class VolumeAlreadyExists(DriverError):
    """create() of an id that exists with another size (the same size is a no-op)."""

    code = "IdempotentParameterMismatch"
    retryable = False


class VolumeInUse(DriverError):
    """delete() of an exported volume; unexport() (not forced) or grow() while a client is
    connected."""

    code = "VolumeInUse"
    retryable = False


class InvalidSnapshotId(DriverError):
    code = "InvalidSnapshotID.Malformed"
    retryable = False


class SnapshotNotFound(DriverError):
    code = "InvalidSnapshot.NotFound"
    retryable = False


class SnapshotAlreadyExists(DriverError):
    """snapshot() of an id that already names a snapshot of another volume."""

    code = "IdempotentParameterMismatch"
    retryable = False


def valid_snapshot_id(value: object) -> str:
    """`value` if it is a snapshot id (snap- + 17 lowercase hex), else InvalidSnapshotId."""
    if not isinstance(value, str) or not SNAPSHOT_ID_RE.fullmatch(value):
        raise InvalidSnapshotId(f"snapshot id {value!r} is not snap- followed by 17 lowercase hex")
    return value


def export_name(volume_id: str, fence: int = 0) -> str:
    """The NBD export name of a volume whose clients were cut off `fence` times (see
    VolumeBackend's rules): the volume id, then id + "." + fence."""
    valid_volume_id(volume_id)
    if not isinstance(fence, int) or isinstance(fence, bool) or fence < 0:
        raise ValueError(f"fence {fence!r} is not a whole number >= 0")
    return volume_id if fence == 0 else f"{volume_id}.{fence}"


def valid_volume_id(value: object) -> str:
    """`value` if it is a volume id (vol- + 17 lowercase hex), else InvalidVolumeId."""
    if not isinstance(value, str) or not VOLUME_ID_RE.fullmatch(value):
        raise InvalidVolumeId(f"volume id {value!r} is not vol- followed by 17 lowercase hex")
    return value


def valid_size(value: object, max_size: int = DEFAULT_MAX_SIZE) -> int:
    """`value` if it is a volume size in bytes (a positive whole number of MiB, at most
    max_size), else InvalidVolumeSize. bool is refused although it is an int."""
    if (not isinstance(value, int) or isinstance(value, bool) or value <= 0
            or value % SIZE_GRANULE or value > max_size):
        raise InvalidVolumeSize(f"volume size {value!r} is not a whole number of MiB in "
                                f"1 MiB..{max_size} bytes")
    return value


@dataclass(frozen=True)
class VolumeInfo:
    """One volume as the backend sees it now."""

    volume_id: str
    size_bytes: int
    #: True when the volume is in the wanted export set (see VolumeBackend).
    exported: bool


@dataclass(frozen=True)
class SnapshotInfo:
    """One snapshot: the volume it was taken of (which may since have been deleted) and that
    volume's size at that moment (a volume made from it is at least that big).

    `stored_bytes`: what the snapshot really stores, for billing (issue 13): measured by
    snapshot() when it answers (taken now or already there); snapshots() listings may leave it
    None (the NBD and RBD nodes do: measuring every snapshot each time costs one tool run each). NBD: the
    bytes a copy of the snapshot needs (`qemu-img measure -l`: its allocated clusters plus
    qcow2 metadata); RBD: `rbd du`'s used size of the snapshot (fast-diff: what it added over
    the image's previous snapshot); the fake: its distinct written chunks. A measurement, not
    part of the snapshot's identity: left out of equality."""

    snapshot_id: str
    volume_id: str
    size_bytes: int
    stored_bytes: Optional[int] = field(default=None, compare=False)


class VolumeBackend(Protocol):
    """Volumes on a storage service, served to hosts over the network.

    Rules, the same for every backend (tests/unit/volume_contract.py checks them):
    - Every volume id and size is validated first (valid_volume_id, valid_size): a malformed one
      is InvalidVolumeID.Malformed / InvalidVolumeSize and nothing changes.
    - create(id, size) makes an empty (zero-reading) volume. Creating one that exists with the
      same size is a no-op; with another size it is IdempotentParameterMismatch.
    - grow(id, size) makes the volume `size` bytes, exported or not, and an exported one stays
      exported. The same size is a no-op; smaller is InvalidVolumeSize and the volume is
      untouched. A missing volume is InvalidVolume.NotFound. While an NBD client is connected it
      is VolumeInUse: qemu 7.2's NBD export takes the resize permission from its node and QEMU's
      NBD client cannot learn a new size without reconnecting. A hard re-export would make it
      reconnect, but a client without reconnect-delay (all that libvirt 9.0 can define) fails
      guest I/O meanwhile: see controller/services/volumes.check_growable for the evidence.
    - export(id) serves the volume, writable, and returns the NetworkSource a host's
      DomainDisk attaches (NBD: export name = the volume id, one TCP host; after a forced
      unexport, see below, export_name(id, n)). Exporting an exported volume is a no-op
      returning the same source. A missing volume is InvalidVolume.NotFound.
      The export is part of the backend's persisted desired state: it survives restarts of the
      serving process and of the agent (ensure() puts it back).
    - unexport(id) stops serving it; one not exported (or not existing) is a no-op. A client
      still connected makes it VolumeInUse: detach the disk from its guest first.
    - unexport(id, force=True) (a force detach) first cuts every connected client off (NBD: the
      server closes their connections), then stops serving it, like unexport(id); it is never
      VolumeInUse for a client. Once it returns no client can read or write the volume through
      this backend (the export is gone, the old connections are closed), so it may be exported
      to another host without two writers ("never read-write from two"). A cut-off guest sees
      I/O errors on that disk; its host still has to unplug it. Not exported is a no-op.
      The cut must hold when the volume is exported again: QEMU's NBD client reconnects by
      itself on its next I/O request (qemu 7.2 does so even with reconnect-delay=0), so every
      later export of the volume is served under a new name, export_name(id, n) with n the
      number of forced unexports of the volume while it was exported (persisted like the export
      set, so also when the serving process was down; reset when the volume is deleted): a
      cut-off client asks for the old name and finds none.
    - delete(id) removes the volume and its data. A volume already gone is success. An exported
      volume is refused with VolumeInUse (unexport first): a delete never pulls a disk from
      under a running guest.
    - volumes() lists every volume, sorted by id; exports() maps each exported volume id to its
      source, as served now (after ensure(): exactly the exported set).
    - ensure() reconciles what is served with the persisted desired state: the serving process
      runs, every volume that should be exported is, nothing else is. Idempotent.

    Snapshots (capability "snapshots"):
    - Snapshot ids are validated first (valid_snapshot_id): a malformed one is
      InvalidSnapshotID.Malformed and nothing changes.
    - snapshot(volume_id, snapshot_id) takes a crash-consistent snapshot of the volume, exported
      (a client may be writing) or not: every write completed (flushed) before the call is in it,
      and each write in flight is either wholly in it or not at all, as after a power cut. Later
      writes to the volume never change it. It shares the unchanged data with the volume
      (copy-on-write: taking one costs metadata, not a copy). Its size is the volume's at that
      moment. The same id of the same volume again returns the existing snapshot; an id that
      names a snapshot of another volume is IdempotentParameterMismatch. A missing volume is
      InvalidVolume.NotFound.
    - snapshots() lists every snapshot, sorted by id, including those of deleted volumes.
    - delete_snapshot(snapshot_id) removes it; one already gone is success. Deleting a volume
      keeps its snapshots usable (the backend keeps what they need until the last one is gone).
    - create(volume_id, size, from_snapshot=snapshot_id) makes a volume whose content is the
      snapshot's, `size` bytes (at least the snapshot's size, else InvalidVolumeSize; what lies
      beyond reads as zeros). A missing snapshot is InvalidSnapshot.NotFound. When the volume
      exists already, from_snapshot is only validated: the create is a no-op for the same size,
      as without it.
    """

    #: e.g. {"nbd", "grow_exported", "persistent_exports", "snapshots"}
    capabilities: frozenset[str]

    def create(self, volume_id: str, size_bytes: int, from_snapshot: str | None = None) -> None:
        """Create an empty volume of `size_bytes`, or one with a snapshot's content (see the
        rules)."""

    def grow(self, volume_id: str, size_bytes: int) -> None:
        """Grow the volume to `size_bytes`; never shrinks (see the rules)."""

    def delete(self, volume_id: str) -> None:
        """Delete the volume; gone is success, exported is VolumeInUse."""

    def export(self, volume_id: str, host: Optional[str] = None) -> NetworkSource:
        """Serve the volume and return where hosts find it; idempotent. `host`: the host the
        attachment is for; a backend that serves per host (NBD over per-host TLS) serves it
        to that host only, others ignore it."""

    def unexport(self, volume_id: str, *, force: bool = False) -> None:
        """Stop serving the volume; not exported is a no-op. force: cut connected clients off
        first instead of VolumeInUse (see the rules)."""

    def volumes(self) -> list[VolumeInfo]:
        """Every volume, sorted by id."""

    def volume(self, volume_id: str) -> VolumeInfo | None:
        """One volume, or None when it does not exist: what volumes() would list for it, read
        without looking at the others (the node's per-volume requests call it)."""

    def exports(self) -> dict[str, NetworkSource]:
        """Volume id -> source of every volume served now."""

    def ensure(self) -> None:
        """Make what is served match the persisted desired state."""

    def snapshot(self, volume_id: str, snapshot_id: str) -> SnapshotInfo:
        """Take a crash-consistent snapshot of the volume; idempotent (see the rules). The
        answer carries stored_bytes, measured now (SnapshotInfo)."""

    def delete_snapshot(self, snapshot_id: str) -> None:
        """Delete the snapshot; gone is success."""

    def snapshots(self) -> list[SnapshotInfo]:
        """Every snapshot, sorted by id."""
