"""Snapshots (EBS-style): crash-consistent, copy-on-write point-in-time copies of volumes, kept by
the storage node (extension "snapshots" of agent/contract/storage_v1.py).

Rules live in controller/services/snapshots.py (what users may ask) and controller/snapshot_sync.py
(making the storage node match); these are plain rows and wire shapes.

States: EC2's pending -> completed, error when the storage node refused it permanently; plus our
bookkeeping: deleting (the sync deletes it on the node) -> deleted (gone for users, purged after
settings.terminated_retention_s). A snapshot outlives its volume: volume_id is no foreign key.
"""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from pydantic import Field as PField
from sqlalchemy import JSON, BigInteger, Column, Index
from sqlmodel import Field, SQLModel

from controller.db import UtcDateTime

#: A description: at most 255 characters, none of them a control character.
DESCRIPTION_PATTERN = r"^[^\x00-\x1f\x7f]*$"


# -- request bodies -------------------------------------------------------------------------
class SnapshotCreate(BaseModel):
    volume_id: str = PField(min_length=1, max_length=32)
    description: str = PField(default="", max_length=255, pattern=DESCRIPTION_PATTERN)
    tags: dict[str, str] = PField(default_factory=dict)


class SnapshotTags(BaseModel):
    """The snapshot's new tags: they replace all of its tags."""

    tags: dict[str, str]


# -- wire shapes ----------------------------------------------------------------------------
class SnapshotPublic(BaseModel):
    snapshot_id: str
    volume_id: str
    #: The volume's size when the snapshot was taken: a volume made from it is at least this big.
    volume_size_gib: int
    #: pending | completed | error | deleting
    state: str
    #: "0%" while pending, "100%" once completed.
    progress: str
    description: str = ""
    owner_id: str
    start_time: datetime
    encrypted: bool = False
    tags: dict[str, str] = {}
    #: Why the snapshot is in state error (the storage node's answer).
    state_message: str | None = None
    #: The bytes the snapshot stores on the storage node, as it measured them when the snapshot
    #: completed; it is billed by them (services/metering.py). null while pending, and for
    #: snapshots completed before stored sizes were measured (those are billed by
    #: volume_size_gib).
    stored_bytes: int | None = None


# -- table ----------------------------------------------------------------------------------
class Snapshot(SQLModel, table=True):
    __tablename__ = "snapshot"
    __table_args__ = (Index("ix_snapshot_account_created", "account_id", "created_at",
                            "snapshot_id"),)
    snapshot_id: str = Field(primary_key=True, max_length=32)
    account_id: str = Field(foreign_key="account.account_id", index=True, max_length=32)
    #: Not a foreign key: snapshots outlive their volumes (and purged volume rows).
    volume_id: str = Field(index=True, max_length=32)
    volume_size_gib: int
    state: str = Field(default="pending", max_length=16, index=True)
    progress: str = Field(default="0%", max_length=8)
    description: str = Field(default="", max_length=255)
    tags: dict = Field(default_factory=dict, sa_type=JSON)
    start_time: datetime = Field(sa_type=UtcDateTime)
    created_at: datetime = Field(sa_type=UtcDateTime)
    updated_at: datetime = Field(sa_type=UtcDateTime)
    deleted_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    observed_error: str | None = Field(default=None, max_length=1024)
    #: What the storage node measured the snapshot to store when it completed (migration
    #: 0023); NULL before that, and for rows completed before the measure existed.
    stored_bytes: int | None = Field(default=None,
                                     sa_column=Column(BigInteger, nullable=True))
