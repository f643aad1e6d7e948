"""Volumes (EBS-style block volumes on the storage service) and their attachments to instances.

Rules live in controller/services/volumes.py (what users may ask) and the reconciler (making the
storage node and the hosts match); these are plain rows and wire shapes.

Bookkeeping, the same habit as instances: `generation` counts changes of what the storage node
should have (size, exported); `acked_generation` is the last one it confirmed. The reconciler
pushes a VolumeSpec whenever they differ, and deletes the volume on the node while its state is
"deleting".

Volume states (EC2's): creating -> available <-> in-use; available -> deleting -> deleted;
error when the storage node refused it permanently.
Attachment states: attaching -> attached -> detaching -> (row deleted). The primary key is the
volume id: a volume is attached to at most one instance, enforced by the database.
"""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from pydantic import Field as PField
from sqlalchemy import JSON, BigInteger, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from controller.db import UtcDateTime

#: EC2-style device names users give (/dev/sdf, /dev/xvdf, /dev/vdf); the letter is kept and the
#: guest sees the volume as virtio disk vd<letter> (b..z; a is the root disk).
DEVICE_NAME_PATTERN = r"^/dev/(sd|xvd|vd)[b-z]$"


# -- request bodies -------------------------------------------------------------------------
class VolumeCreate(BaseModel):
    #: GiB, 1..settings.max_volume_gib. Optional with snapshot_id (then the snapshot's size).
    size_gib: int | None = PField(default=None, ge=1, le=1 << 20)
    snapshot_id: str | None = PField(default=None, min_length=1, max_length=32)
    tags: dict[str, str] = PField(default_factory=dict)
    client_token: str | None = PField(default=None, min_length=1, max_length=64,
                                     pattern=r"^[A-Za-z0-9_.:=+@-]+$")


class VolumeModify(BaseModel):
    #: The new size in GiB: volumes only grow.
    size_gib: int = PField(ge=1, le=1 << 20)


class VolumeAttach(BaseModel):
    instance_id: str = PField(min_length=1, max_length=32)
    device: str = PField(min_length=8, max_length=10)
    delete_on_termination: bool = False


class VolumeDetach(BaseModel):
    #: Detach even when the guest does not let go: the storage node stops serving the volume
    #: to that host (the guest sees I/O errors), and the volume is free again.
    force: bool = False
    #: When given, the volume must be attached to this instance.
    instance_id: str | None = PField(default=None, min_length=1, max_length=32)


# -- wire shapes ----------------------------------------------------------------------------
class AttachmentPublic(BaseModel):
    volume_id: str
    instance_id: str
    device: str
    state: str
    delete_on_termination: bool
    attach_time: datetime


class VolumePublic(BaseModel):
    volume_id: str
    size_gib: int
    state: str
    snapshot_id: str | None = None
    availability_zone: str
    volume_type: str = "standard"
    encrypted: bool = False
    create_time: datetime
    tags: dict[str, str] = {}
    attachments: list[AttachmentPublic] = []
    #: The last grow: "modifying" until the storage node has it, then "completed".
    modification_state: str | None = None


# -- tables ---------------------------------------------------------------------------------
class Volume(SQLModel, table=True):
    __tablename__ = "volume"
    __table_args__ = (Index("ix_volume_account_created", "account_id", "created_at",
                            "volume_id"),)
    volume_id: str = Field(primary_key=True, max_length=32)
    account_id: str = Field(foreign_key="account.account_id", index=True, max_length=32)
    size_gib: int
    state: str = Field(default="creating", max_length=16, index=True)
    snapshot_id: str | None = Field(default=None, max_length=32)
    availability_zone: str = Field(max_length=64)
    tags: dict = Field(default_factory=dict, sa_type=JSON)
    client_token: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(sa_type=UtcDateTime)
    updated_at: datetime = Field(sa_type=UtcDateTime)
    deleted_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    modification_state: str | None = Field(default=None, max_length=16)
    # Desired state on the storage node, and what it confirmed.
    generation: int = 1
    acked_generation: int = 0
    #: The storage node's answer: size it has, and where hosts find the export (while exported).
    observed_size_bytes: int | None = Field(default=None, sa_type=BigInteger)
    source_host: str | None = Field(default=None, max_length=253)
    source_port: int | None = None
    source_export: str | None = Field(default=None, max_length=255)
    #: The source's protocol, "nbd" or "rbd" (then export is "pool/image" and host:port a Ceph
    #: monitor). None means "nbd": rows from before the column existed.
    source_protocol: str | None = Field(default=None, max_length=8)
    #: RBD with cephx (storage extension of the node's answer; hosts' extension
    #: volumes-rbd-cephx): the Ceph user of the host the volume is exported to and its key, as
    #: the node answered. Sent only in that host's spec; never in an API response or a log.
    source_auth_user: str | None = Field(default=None, max_length=64)
    source_auth_key: str | None = Field(default=None, max_length=64)
    observed_error: str | None = Field(default=None, max_length=1024)


class VolumeAttachmentRow(SQLModel, table=True):
    """One volume attached to one instance (the volume id is the key: at most one at a time)."""

    __tablename__ = "volume_attachment"
    __table_args__ = (UniqueConstraint("instance_id", "device",
                                       name="uq_volume_attachment_device"),)
    volume_id: str = Field(primary_key=True, foreign_key="volume.volume_id", max_length=32)
    instance_id: str = Field(foreign_key="instance.instance_id", index=True, max_length=32)
    #: As the user named it (/dev/sdf); the guest's virtio target is vd + its last letter.
    device: str = Field(max_length=16)
    state: str = Field(default="attaching", max_length=16)
    delete_on_termination: bool = False
    force_detach: bool = False
    attach_time: datetime = Field(sa_type=UtcDateTime)
