"""SSH key pairs (per account, unique by name)."""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from controller.db import UtcDateTime
from controller.models.common import ResourceName


class KeyPairBase(SQLModel):
    name: ResourceName = Field(max_length=128)


class KeyPairCreate(KeyPairBase):
    public_key: str | None = Field(default=None, max_length=16384)


class KeyPairPublic(KeyPairBase):
    key_pair_id: str
    fingerprint: str
    key_type: str
    public_key: str
    created_at: datetime


class KeyPairCreated(KeyPairPublic):
    private_key: str | None = None


class KeyPairDeleted(BaseModel):
    name: str
    key_pair_id: str | None  # null when there was nothing to delete (idempotent)
    deleted: bool


class KeyPair(KeyPairBase, table=True):
    __tablename__ = "key_pair"
    __table_args__ = (UniqueConstraint("account_id", "name", name="uq_key_pair_account_name"),)
    key_pair_id: str = Field(primary_key=True, max_length=32)
    account_id: str = Field(foreign_key="account.account_id", index=True, max_length=32)
    fingerprint: str = Field(max_length=128)
    key_type: str = Field(max_length=16)
    public_key: str = Field(max_length=16384)
    created_at: datetime = Field(sa_type=UtcDateTime)
