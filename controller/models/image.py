"""Machine images (AMIs): a checked qcow2 file on the controller host plus its metadata; images
captured from instances (ImageCapture: the capture's progress) and launch permissions (the
accounts an owner shared a private image with)."""
from __future__ import annotations

from datetime import datetime
from pydantic import BaseModel
from pydantic import Field as PField
from sqlalchemy import JSON, BigInteger
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
    #: Instances of this image get a NoCloud seed ISO unless their launch says otherwise; False:
    #: the image finds its data at 169.254.169.254 (cloud-init's EC2 datasource), as on EC2.
    nocloud_seed: bool = True


class ImageRegister(ImageBase):
    path: str = Field(max_length=4096)


class ImagePublic(ImageBase):
    image_id: str
    owner_account_id: str
    virtual_size: int
    size: int
    sha256: str
    #: available, pending (being captured from an instance), failed, deregistered
    state: str
    created_at: datetime
    #: The instance a captured image was made from (None: registered or imported).
    source_instance_id: str | None = None
    #: Volumes the source instance had attached when captured, one snapshot each:
    #: [{"device", "size_gib", "snapshot_id", "delete_on_termination"}]; a launch from the image
    #: creates each volume from its snapshot (controller/services/block_devices.py). Entries
    #: without a snapshot_id (captured before images kept snapshots) are recorded only.
    block_device_mappings: list[dict] = []
    #: Why a capture failed (state "failed").
    state_reason: str | None = None


class Image(ImageBase, table=True):
    image_id: str = Field(primary_key=True, max_length=32)
    owner_account_id: str = Field(foreign_key="account.account_id", index=True, max_length=32)
    path: str = Field(max_length=4096)
    virtual_size: int = Field(sa_type=BigInteger)
    size: int = Field(sa_type=BigInteger)
    sha256: str = Field(max_length=64)
    state: str = Field(default="available", max_length=16)
    created_at: datetime = Field(sa_type=UtcDateTime)
    source_instance_id: str | None = Field(default=None, max_length=32)
    block_device_mappings: list = Field(default_factory=list, sa_type=JSON)
    state_reason: str | None = Field(default=None, max_length=255)
    #: When the file on the controller host was removed (a deregistered image nothing uses).
    file_deleted_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class CreateImageRequest(BaseModel):
    """POST /v1/instances/{id}/image: a new private image from the instance's root disk."""

    name: ImageName
    description: str | None = PField(default=None, max_length=255)
    #: False (default): a running instance is stopped for the copy and started again after it.
    #: True: copied while it runs; the image is crash-consistent at best.
    no_reboot: bool = False


class ImageCapture(SQLModel, table=True):
    """A capture in progress (or finished): what services/image_capture.advance works on."""

    __tablename__ = "image_capture"
    image_id: str = Field(primary_key=True, foreign_key="image.image_id", max_length=32)
    instance_id: str = Field(max_length=32, index=True)
    no_reboot: bool = False
    #: start -> stopping -> capture -> copying -> snapshots -> cleanup -> done
    phase: str = Field(default="start", max_length=16, index=True)
    #: The capture stopped the instance: start it again in cleanup.
    restart: bool = False
    created_at: datetime = Field(sa_type=UtcDateTime)
    updated_at: datetime = Field(sa_type=UtcDateTime)


class ImageLaunchPermission(SQLModel, table=True):
    """An account (besides the owner) that may see and launch a private image."""

    __tablename__ = "image_launch_permission"
    image_id: str = Field(primary_key=True, foreign_key="image.image_id", max_length=32)
    account_id: str = Field(primary_key=True, foreign_key="account.account_id", max_length=32,
                            index=True)


class LaunchPermissionPublic(BaseModel):
    image_id: str
    #: Everyone may launch it.
    public: bool
    #: Accounts the owner shared it with, sorted.
    account_ids: list[str]


class LaunchPermissionModify(BaseModel):
    """PUT /v1/images/{id}/launch-permission: changes applied together (adds before removes)."""

    add: list[str] = PField(default_factory=list, max_length=100)
    remove: list[str] = PField(default_factory=list, max_length=100)
    #: True: make public (admins only); False: private; None: unchanged.
    public: bool | None = None
