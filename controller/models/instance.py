"""Instances: the user's desired VM plus the controller's bookkeeping of what agents observed.

`generation` counts desired-spec changes; `acked_generation` is the last one the host's agent
accepted. The reconciler pushes whenever they differ.
"""
from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict
from pydantic import Field as PField
from sqlalchemy import JSON, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from controller.db import UtcDateTime
from controller.models.block_device import (MAX_MAPPINGS, BlockDeviceMapping,
                                            InstanceBlockDevice)
from controller.models.common import ResourceName, TypeName


class InstanceMetadataOptions(BaseModel):
    """EC2's InstanceMetadataOptions (snake_case): how the metadata service (169.254.169.254)
    answers the instance. At run and in templates unset fields take Kumo's defaults
    (controller/services/instance_metadata.py: DEFAULTS); in ModifyInstanceMetadataOptions
    unset fields are kept."""

    model_config = ConfigDict(extra="forbid")

    #: "required": IMDSv2 only (a GET without a session token answers 401); "optional": v1 too.
    http_tokens: Literal["optional", "required"] | None = None
    #: "disabled": the service does not answer the instance at all.
    http_endpoint: Literal["enabled", "disabled"] | None = None
    #: The IP TTL of token replies (1..64).
    http_put_response_hop_limit: int | None = PField(default=None, ge=1, le=64)
    #: "enabled": the instance's tags are served under meta-data/tags/instance/.
    instance_metadata_tags: Literal["enabled", "disabled"] | None = None


class RunInstancesRequest(BaseModel):
    image: str = PField(min_length=1, max_length=128)
    instance_type: str = PField(min_length=1, max_length=40)
    min_count: int = PField(default=1, ge=1, le=1000)
    max_count: int = PField(default=1, ge=1, le=1000)
    key_name: str | None = PField(default=None, max_length=128)
    user_data: str | None = PField(default=None, max_length=65536)
    root_disk_gib: int | None = PField(default=None, ge=1, le=16384)
    tags: dict[str, str] = PField(default_factory=dict)
    client_token: str | None = PField(default=None, min_length=1, max_length=64,
                                     pattern=r"^[A-Za-z0-9_.:=+@-]+$")
    #: The subnet to launch into; None: the account's default subnet.
    subnet_id: str | None = PField(default=None, min_length=1, max_length=32)
    #: A specific private address in the subnet (only with max_count 1).
    private_ip: str | None = PField(default=None, min_length=7, max_length=15)
    #: Auto-assign a public IP: None follows the subnet's map_public_ip_on_launch.
    associate_public_ip: bool | None = None
    #: 1-5 security groups of the subnet's VPC; none: the VPC's default group.
    security_group_ids: list[str] = PField(default_factory=list, max_length=16)
    #: The root disk's size and volumes to create and attach at launch, one set per instance
    #: (controller/models/block_device.py); they override the image's for the same device.
    block_device_mappings: list[BlockDeviceMapping] = PField(default_factory=list,
                                                             max_length=MAX_MAPPINGS)
    #: The metadata service's options for the new instances; None: the defaults.
    metadata_options: InstanceMetadataOptions | None = None
    #: True: a NoCloud seed ISO (cdrom) besides the metadata service; False: none, the guest
    #: reads 169.254.169.254 only (as on EC2); None: the image's choice (its nocloud_seed).
    nocloud_seed: bool | None = None


class ModifyInstanceRequest(BaseModel):
    """What to change; at least one field. The type changes on a stopped instance only (it
    applies at the next start); the root disk grows whether the instance runs or not (the guest
    sees the larger disk at once and grows its root filesystem at its next boot). Shrinking
    the root disk is refused."""

    instance_type: TypeName | None = None
    #: The new root disk size in GiB: at least the current one (the same size changes nothing).
    root_disk_gib: int | None = PField(default=None, ge=1, le=16384)


class InstanceGroupsRequest(BaseModel):
    #: The instance's new set of security groups (1-5, of its VPC): replaces the old set.
    security_group_ids: list[str] = PField(min_length=1, max_length=16)


class StateReason(BaseModel):
    code: str
    message: str


class InstanceBase(SQLModel):
    instance_id: str = Field(primary_key=True, max_length=32)
    reservation_id: str = Field(max_length=32, index=True)
    image_id: str = Field(max_length=32)
    instance_type: str = Field(max_length=40)
    vcpus: int
    memory_mib: int
    root_disk_gib: int
    key_name: ResourceName | None = Field(default=None, max_length=128)
    tags: dict = Field(default_factory=dict, sa_type=JSON)
    state: str = Field(default="pending", max_length=16, index=True)
    instance_status: str = Field(default="initializing", max_length=16)
    system_status: str = Field(default="ok", max_length=16)
    #: Whether the guest gets a NoCloud seed ISO (RunInstancesRequest.nocloud_seed).
    nocloud_seed: bool = True
    host_id: str | None = Field(default=None, max_length=63, index=True)
    launch_time: datetime | None = Field(default=None, sa_type=UtcDateTime)
    vpc_id: str | None = Field(default=None, max_length=32, index=True)
    subnet_id: str | None = Field(default=None, max_length=32)
    private_ip: str | None = Field(default=None, max_length=45)
    mac: str | None = Field(default=None, max_length=17)
    hostname: str | None = Field(default=None, max_length=63)
    client_token: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(sa_type=UtcDateTime)
    updated_at: datetime = Field(sa_type=UtcDateTime)


class InstancePublic(InstanceBase):
    state_reason: StateReason | None = None
    #: The instance's public address (auto-assigned or elastic), if any.
    public_ip: str | None = None
    security_group_ids: list[str] = []
    #: The instance's volumes (its attachments), in device order; the root disk is not one.
    block_device_mappings: list[InstanceBlockDevice] = []
    #: The metadata service's options in effect (every field set).
    metadata_options: InstanceMetadataOptions | None = None


class InstanceMetadataOptionsResponse(BaseModel):
    """Answer of ModifyInstanceMetadataOptions."""

    instance_id: str
    #: "pending" until the instance's host has the new options, then "applied".
    state: Literal["pending", "applied"]
    metadata_options: InstanceMetadataOptions


class RunInstancesResponse(BaseModel):
    reservation_id: str
    instances: list[InstancePublic]


class ConsoleOutput(BaseModel):
    instance_id: str
    output: str  # the tail of the serial console the agent keeps ("" when there is none)
    timestamp: str  # ISO 8601 UTC, "Z"


class InstanceStatusPublic(BaseModel):
    instance_id: str
    state: str
    instance_status: str
    system_status: str
    details: dict


class Instance(InstanceBase, table=True):
    # Describe pages walk an account in (created_at, instance_id) order from a keyset token.
    __table_args__ = (Index("ix_instance_account_created", "account_id", "created_at",
                            "instance_id"),)
    account_id: str = Field(foreign_key="account.account_id", index=True, max_length=32)
    state_reason_code: str | None = Field(default=None, max_length=64)
    state_reason_message: str | None = Field(default=None, max_length=1024)
    user_data_b64: str = Field(default="", max_length=32768)
    ssh_public_key: str | None = Field(default=None, max_length=16384)
    #: InstanceMetadataOptions as set (every field); None: the defaults (services/
    #: instance_metadata.py).
    metadata_options: dict | None = Field(default=None, sa_type=JSON)
    # Desired spec bookkeeping.
    generation: int = 1
    acked_generation: int = 0
    power: str = Field(default="running", max_length=8)
    reboot_nonce: int = 0
    last_pushed_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    # Deadlines: of the current transitional state, and for the guest's readiness.
    state_deadline: datetime | None = Field(default=None, sa_type=UtcDateTime)
    status_deadline: datetime | None = Field(default=None, sa_type=UtcDateTime)
    # What the agent last reported.
    observed_power: str | None = Field(default=None, max_length=16)
    observed_booted: bool = False
    observed_boot_count: int = 0
    # boot_count at the last reboot request: readiness counts only after a newer boot.
    reboot_boot_count: int = 0
    # A reboot was asked for and the guest has not come back ready yet: a shutoff seen meanwhile
    # is part of the reboot, not the guest powering itself off.
    reboot_pending: bool = False
    observed_error: str | None = Field(default=None, max_length=1024)
    terminated_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class ClientToken(SQLModel, table=True):
    """Idempotency record of one RunInstances call (unique per account and token)."""
    __tablename__ = "client_token"
    __table_args__ = (UniqueConstraint("account_id", "token", name="uq_client_token"),)
    id: int | None = Field(default=None, primary_key=True)
    account_id: str = Field(foreign_key="account.account_id", max_length=32)
    token: str = Field(max_length=64)
    request_hash: str = Field(max_length=64)
    reservation_id: str = Field(max_length=32)
    created_at: datetime = Field(sa_type=UtcDateTime)
