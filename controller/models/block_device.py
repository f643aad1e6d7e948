"""Block device mappings (EC2's BlockDeviceMapping): what a launch asks for beyond the image's
root disk, and what an instance's describe shows of its volumes.

A launch's mappings (RunInstancesRequest.block_device_mappings) name devices:
- the root device (/dev/sda1 or /dev/xvda; /dev/sda and /dev/vda are accepted too): only
  `ebs.volume_size_gib` may be set, the root disk's size (the same rules as root_disk_gib);
- any other device (/dev/sd[b-z], /dev/xvd[b-z], /dev/vd[b-z]; the guest sees vd<letter>): a new
  volume per launched instance, empty (`volume_size_gib`) or made from a completed snapshot of
  the caller's (`snapshot_id`; its size by default, never smaller), attached at launch and
  deleted when the instance terminates unless `delete_on_termination` is false.
An image's mappings (Image.block_device_mappings, recorded by CreateImage) apply too; a launch's
mapping for the same device replaces the image's, and `no_device` drops it.

The rules are controller/services/block_devices.py's; these are wire shapes only.
"""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from pydantic import Field as PField

#: At most this many mappings in one launch (the root device's included).
MAX_MAPPINGS = 24


class EbsBlockDevice(BaseModel):
    #: GiB. The root device: the root disk's size. A volume: 1..settings.max_volume_gib,
    #: optional with snapshot_id (then the snapshot's size; never smaller than it).
    volume_size_gib: int | None = PField(default=None, ge=1, le=1 << 20)
    #: Make the volume from this snapshot (the caller's, completed). Not for the root device.
    snapshot_id: str | None = PField(default=None, min_length=1, max_length=32)
    #: Delete the volume when the instance terminates (the root device always is).
    delete_on_termination: bool = True


class BlockDeviceMapping(BaseModel):
    #: EC2 device name: /dev/sda1 or /dev/xvda (the root device), else /dev/sd[b-z],
    #: /dev/xvd[b-z] or /dev/vd[b-z] (the guest sees vd<letter>).
    device_name: str = PField(min_length=8, max_length=10)
    ebs: EbsBlockDevice = PField(default_factory=EbsBlockDevice)
    #: Drop the image's mapping of this device (ebs is then ignored).
    no_device: bool = False


class InstanceBlockDevice(BaseModel):
    """One volume attached to an instance, as its describe shows it."""

    device_name: str
    volume_id: str
    #: The attachment's state: attaching | attached | detaching
    status: str
    delete_on_termination: bool
    attach_time: datetime
