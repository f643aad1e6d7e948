"""The per-instance metadata document: everything the metadata service may tell one instance.

This module owns the *input* of the metadata service. The wiring builds one InstanceDocument per
instance on the host (from the spec the controller pushed, so metadata keeps answering while the
controller is away); tree.py renders it as EC2's path tree, server.py enforces its MetadataOptions.

Why the validation is strict: EC2 listings are newline-separated text and cloud-init splits them
on newlines, on a trailing '/' (a sub-directory) and on '=' (public-keys `0=name`). A value that
becomes a listing *entry* (tag keys, key names, MACs, ids) must therefore never contain a newline,
'/', '=' or other control characters, or a user could forge entries in another part of the tree.
Leaf *values* are served raw and may contain anything that is valid for them (tag values,
user-data bytes). Identifiers that end up in the JSON identity document are serialised with json,
never formatted by hand.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone
from ipaddress import IPv4Address, IPv4Network
from typing import Annotated, Literal

from pydantic import (BaseModel, ConfigDict, Field, StringConstraints, field_validator,
                      model_validator)

from agent.validators import MAC_RE

#: One safe listing entry or one-line leaf: printable ASCII without spaces, '/' or '='.
_ENTRY = r"^[A-Za-z0-9][A-Za-z0-9_.:@+,-]{0,254}$"
Entry = Annotated[str, StringConstraints(pattern=_ENTRY)]
ResourceId = Annotated[str, StringConstraints(pattern=r"^[a-z]{1,8}-[0-9a-f]{8,17}$")]
InstanceId = Annotated[str, StringConstraints(pattern=r"^i-[0-9a-f]{8,17}$")]
#: EC2's 12-digit account ids, or Kumo's own ("acct-" and 17 hex digits).
AccountId = Annotated[str, StringConstraints(pattern=r"^([0-9]{12}|acct-[0-9a-f]{17})$")]
#: A DNS name (hostname, local-hostname, public-hostname): labels of letters, digits and '-'.
Hostname = Annotated[str, StringConstraints(
    max_length=253,
    pattern=r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
            r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")]
#: A block device name as EC2 serves it ("xvda", "/dev/xvda", "sdb").
DeviceName = Annotated[str, StringConstraints(pattern=r"^(/dev/)?[a-z][a-z0-9]{1,15}$")]
#: A security group *name* (EC2 allows spaces and more; a name is a listing line, so one line).
#: A block-device-mapping/ entry name.
MappingName = Annotated[str, StringConstraints(
    pattern=r"^(ami|root|swap|ebs[0-9]{1,3}|ephemeral[0-9]{1,2})$")]
GroupName = Annotated[str, StringConstraints(
    pattern=r"^[A-Za-z0-9 ._:/()#,@\[\]+=&;{}!$*-]{1,255}$")]
#: Tag keys allowed in instance metadata: EC2 refuses to expose keys with '/' or spaces there,
#: because the key becomes a path segment and a listing entry. '=' is refused too: cloud-init
#: reads a listing entry "0=x" as a public key reference.
TagKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+\-._:@]{1,128}$")]
#: A tag value is a leaf served as is: any text up to EC2's 256 characters.
TagValue = Annotated[str, StringConstraints(max_length=256)]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MetadataOptions(_Frozen):
    """EC2's instance metadata options (ModifyInstanceMetadataOptions), enforced by server.py."""

    #: "required": every GET needs a valid IMDSv2 token; "optional": a GET without a token is
    #: served, but one carrying an invalid token still gets 401 (as EC2).
    http_tokens: Literal["optional", "required"] = "required"
    #: "disabled": the service does not answer this instance at all (connection closed).
    http_endpoint: Literal["enabled", "disabled"] = "enabled"
    #: The IP TTL of token replies: 1 means a container behind NAT in the guest cannot get one.
    http_put_response_hop_limit: int = Field(default=1, ge=1, le=64)
    #: "enabled": meta-data/tags/instance/ lists the instance's tags.
    instance_metadata_tags: Literal["enabled", "disabled"] = "disabled"


class PublicKey(_Frozen):
    """One key pair: served as `public-keys/` entry `<index>=<name>` and `<index>/openssh-key`."""

    #: The key pair's name (a listing entry after '=': one safe line).
    name: Entry
    #: The OpenSSH public key line ("ssh-ed25519 AAAA... comment"): one line, no control characters.
    openssh_key: Annotated[str, StringConstraints(min_length=1, max_length=16384)]

    @field_validator("openssh_key")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if _CONTROL.search(value):
            raise ValueError("openssh_key must be one line without control characters")
        return value


class NetworkInterface(_Frozen):
    """One ENI, served under `network/interfaces/macs/<mac>/`."""

    #: Lower-case colon-separated MAC; the directory name under macs/.
    mac: str
    #: 0 for the primary interface (whose MAC is meta-data/mac).
    device_number: int = Field(ge=0, le=31)
    #: The interface id ("eni-...").
    interface_id: ResourceId
    #: Private addresses; the first is the primary.
    local_ipv4s: list[IPv4Address] = Field(min_length=1)
    #: Public addresses (elastic or auto-assigned), same order as the private ones they map to.
    public_ipv4s: list[IPv4Address] = Field(default_factory=list)
    #: The account that owns the interface.
    owner_id: AccountId
    subnet_id: ResourceId
    subnet_ipv4_cidr_block: IPv4Network
    vpc_id: ResourceId
    #: The VPC's CIDR blocks, primary first (vpc-ipv4-cidr-block serves the first).
    vpc_ipv4_cidr_blocks: list[IPv4Network] = Field(min_length=1)
    #: Security groups of the interface: ids and names, in the same order.
    security_group_ids: list[ResourceId] = Field(default_factory=list)
    security_group_names: list[GroupName] = Field(default_factory=list)

    @field_validator("mac", mode="before")
    @classmethod
    def _mac(cls, value: object) -> str:
        if not isinstance(value, str) or not MAC_RE.fullmatch(value.lower()):
            raise ValueError(f"bad MAC {value!r}")
        return value.lower()


class InstanceDocument(_Frozen):
    """Everything the metadata service serves for one instance, and how (metadata_options)."""

    instance_id: InstanceId
    ami_id: ResourceId
    instance_type: Entry
    #: The account that owns the instance (identity document accountId, owner-id).
    owner_id: AccountId
    reservation_id: ResourceId
    #: meta-data/hostname (EC2: the private DNS name) and meta-data/local-hostname.
    hostname: Hostname
    local_hostname: Hostname
    #: The primary private address (meta-data/local-ipv4, identity document privateIp).
    local_ipv4: IPv4Address
    #: Served only when set (EC2 omits the entries for instances without one).
    public_ipv4: IPv4Address | None = None
    public_hostname: Hostname | None = None
    availability_zone: Entry
    region: Entry
    #: The identity document's "architecture".
    architecture: Literal["x86_64", "arm64", "i386"] = "x86_64"
    #: When the instance was launched (identity document "pendingTime", UTC).
    pending_time: datetime
    #: Interfaces; exactly one must have device_number 0 (the primary).
    interfaces: list[NetworkInterface] = Field(min_length=1)
    #: block-device-mapping/: "ami", "root", "ebs1", ... -> device name.
    block_device_mapping: dict[MappingName, DeviceName] = Field(default_factory=dict)
    #: Public keys, served as public-keys/0, 1, ... in this order.
    public_keys: list[PublicKey] = Field(default_factory=list)
    #: The instance's tags; served under meta-data/tags/instance/ only when
    #: metadata_options.instance_metadata_tags is "enabled".
    tags: dict[TagKey, TagValue] = Field(default_factory=dict)
    #: user-data as the user gave it (any bytes, up to EC2's 16 KiB); None: `user-data` is 404.
    user_data: bytes | None = Field(default=None, max_length=16384)
    metadata_options: MetadataOptions = Field(default_factory=MetadataOptions)

    @field_validator("pending_time")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)

    @model_validator(mode="after")
    def _consistent(self) -> "InstanceDocument":
        numbers = [i.device_number for i in self.interfaces]
        if sorted(set(numbers)) != sorted(numbers) or 0 not in numbers:
            raise ValueError("interfaces need unique device numbers and one with device_number 0")
        macs = [i.mac for i in self.interfaces]
        if len(set(macs)) != len(macs):
            raise ValueError("interfaces need unique MACs")
        for i in self.interfaces:
            if len(i.security_group_ids) != len(i.security_group_names):
                raise ValueError("security_group_ids and security_group_names differ in length")
        return self

    @property
    def primary_interface(self) -> NetworkInterface:
        """The interface with device number 0 (meta-data/mac, security-groups)."""
        return next(i for i in self.interfaces if i.device_number == 0)
