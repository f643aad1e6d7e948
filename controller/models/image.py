"""Machine images (AMIs): a checked qcow2 file on the controller host plus its metadata."""
from __future__ import annotations

from datetime import datetime
from sqlalchemy import BigInteger
from sqlmodel import Field, SQLModel

from controller.db import UtcDateTime
from controller.models.common import Architecture, ImageFormat, ImageName, ReadyMarker


class ImageBase(SQLModel):
    name: ImageName = Field(index=True, max_length=128)
    public: bool = False
    architecture: Architecture = Field(default="x86_64", max_length=16)
    format: ImageFormat = Field(default="qcow2", max_length=16)
    ready_marker: ReadyMarker | None = Field(default=None, max_length=128)
    min_ram_mib: int = Field(default=0, ge=0, le=1048576)
    description: str | None = Field(default=None, max_length=255)


class ImageRegister(ImageBase):
    path: str = Field(max_length=4096)


class ImagePublic(ImageBase):
    image_id: str
    owner_account_id: str
    virtual_size: int
    size: int
    sha256: str
    state: str
    created_at: datetime


class Image(ImageBase, table=True):
    image_id: str = Field(primary_key=True, max_length=32)
    owner_account_id: str = Field(foreign_key="account.account_id", index=True, max_length=32)
    path: str = Field(max_length=4096)
    virtual_size: int = Field(sa_type=BigInteger)
    size: int = Field(sa_type=BigInteger)
    sha256: str = Field(max_length=64)
    state: str = Field(default="available", max_length=16)
    created_at: datetime = Field(sa_type=UtcDateTime)
