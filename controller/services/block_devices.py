"""Block device mappings at launch (EC2's RunInstances BlockDeviceMapping, issue 10): the rules,
for any front end. services/instances.py _launch calls validate() before anything is written and
apply() for each instance it creates, all in the launch's transaction, so a refused launch leaves
no instance and no volume behind.

- The root device (/dev/sda1, /dev/xvda; volumes.ROOT_DEVICES) may only set volume_size_gib: the
  root disk's size, the same as root_disk_gib (both given and different: 400
  InvalidParameterValue). A snapshot, delete_on_termination false or no_device on it: 400
  InvalidBlockDeviceMapping.
- Every other mapping is, for each launched instance, a new volume (state creating) and its
  attachment (attaching, with delete_on_termination), exactly as services/volumes.py create and
  attach would make them, with the same rules and codes: device names (check_device), sizes
  (check_size), snapshots (the caller's, completed: 404 InvalidSnapshot.NotFound, 409
  IncorrectState), the storage service (503 StorageUnavailable), volumes per instance (400
  AttachmentLimitExceeded) and the account's GiB (400 VolumeLimitExceeded, for every instance
  placed: check_quota). Two mappings of the same guest disk (/dev/sdf and /dev/xvdf): 400
  InvalidBlockDeviceMapping.
- The image's mappings (captured images: {device, size_gib, snapshot_id, delete_on_termination})
  apply as well; a request's mapping of the same device replaces the image's, and no_device drops
  it. Their snapshots are the image owner's: whoever may launch the image may use them. Entries
  without a snapshot_id (images captured before snapshots were taken) are history only.

The reconciler then creates each volume on the storage node (from its snapshot), exports it, and
pushes the instance's first spec only once every volume has an export (specs.volumes_pending), so
the instance boots with its volumes.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlmodel import Session

from controller.errors import InvalidParameter
from controller.events import record
from controller.ids import new_id, utcnow
from controller.models import Image, Instance, Volume, VolumeAttachmentRow
from controller.models.block_device import BlockDeviceMapping
from controller.services import metering, volumes
from controller.services.accounts import Caller
from controller.settings import Settings

#: The largest root disk (RunInstancesRequest.root_disk_gib's bound).
MAX_ROOT_GIB = 16384
ROOT = "root"


def _invalid(message: str) -> InvalidParameter:
    return InvalidParameter(message, code="InvalidBlockDeviceMapping")


@dataclass(frozen=True)
class VolumePlan:
    """One volume each launched instance gets."""

    device: str
    size_gib: int
    snapshot_id: str | None
    delete_on_termination: bool


@dataclass(frozen=True)
class Plan:
    #: The root disk's size the mappings ask for (None: not asked).
    root_gib: int | None = None
    volumes: tuple[VolumePlan, ...] = ()
    availability_zone: str = ""

    @property
    def gib_per_instance(self) -> int:
        return sum(v.size_gib for v in self.volumes)


def device_key(device: str) -> str:
    """ROOT for the root device's names, else the guest's virtio target (vdf for /dev/sdf and
    /dev/xvdf); 400 InvalidParameterValue for anything else."""
    if device in volumes.ROOT_DEVICES:
        return ROOT
    return volumes.check_device(device)


@dataclass(frozen=True)
class _Wanted:
    device: str
    size_gib: int | None
    snapshot_id: str | None
    delete_on_termination: bool
    #: Whose snapshot it must be (an image's mappings: the image owner's).
    owner: Caller | None = None


def _image_mappings(image: Image | None) -> list[_Wanted]:
    if image is None:
        return []
    owner = Caller(account_id=image.owner_account_id, name="image-owner", is_admin=False)
    out = []
    for m in image.block_device_mappings or []:
        if not isinstance(m, dict) or not m.get("snapshot_id") or not m.get("device"):
            continue  # recorded only (captured before images kept snapshots)
        out.append(_Wanted(device=m["device"], size_gib=m.get("size_gib"),
                           snapshot_id=m["snapshot_id"],
                           delete_on_termination=bool(m.get("delete_on_termination", True)),
                           owner=owner))
    return out


def validate(s: Session, settings: Settings, caller, mappings: Sequence[BlockDeviceMapping], *,
             image: Image | None = None, root_disk_gib: int | None = None) -> Plan:
    """Check the request's mappings (and the image's) and say what each instance gets; raises
    the KumoError of the first broken rule, having written nothing."""
    requested: dict[str, BlockDeviceMapping] = {}
    for m in mappings:
        key = device_key(m.device_name)
        if key in requested:
            raise _invalid(f"{m.device_name} and {requested[key].device_name} are the same "
                           "device" if key != ROOT else "more than one root device mapping")
        requested[key] = m
    root_gib = None
    root = requested.pop(ROOT, None)
    if root is not None:
        if root.no_device or root.ebs.snapshot_id is not None \
                or not root.ebs.delete_on_termination:
            raise _invalid(f"{root.device_name} is the root device: only its volume_size_gib "
                           "may be set")
        root_gib = root.ebs.volume_size_gib
        if root_gib is not None and root_gib > MAX_ROOT_GIB:
            raise _invalid(f"root disk {root_gib} GiB: at most {MAX_ROOT_GIB} GiB")
        if root_gib is not None and root_disk_gib is not None and root_gib != root_disk_gib:
            raise InvalidParameter(f"root_disk_gib {root_disk_gib} and the root device mapping's "
                                   f"{root_gib} GiB differ", code="InvalidParameterValue")
    wanted = [w for w in _image_mappings(image) if _key_or_none(w.device) not in requested]
    wanted += [_Wanted(device=m.device_name, size_gib=m.ebs.volume_size_gib,
                       snapshot_id=m.ebs.snapshot_id,
                       delete_on_termination=m.ebs.delete_on_termination)
               for m in requested.values() if not m.no_device]
    if len(wanted) > settings.volumes_per_instance:
        raise volumes.AttachmentLimitExceeded(
            f"{len(wanted)} volumes per instance; the limit is {settings.volumes_per_instance}")
    plans = [_plan_volume(s, settings, caller, w) for w in wanted]
    if plans and settings.storage_url is None:
        raise volumes.StorageUnavailable("no storage service is configured; volumes cannot be "
                                         "created")
    plans.sort(key=lambda p: volumes.virtio_target(p.device))
    return Plan(root_gib=root_gib, volumes=tuple(plans),
                availability_zone=settings.availability_zone)


def _key_or_none(device: str) -> str | None:
    try:
        return device_key(device)
    except InvalidParameter:
        return None


def _plan_volume(s: Session, settings: Settings, caller, w: _Wanted) -> VolumePlan:
    """volumes.create's rules for one mapping."""
    if w.size_gib is None and w.snapshot_id is None:
        raise InvalidParameter(f"{w.device}: volume_size_gib is required (or a snapshot_id)",
                               code="MissingParameter")
    if w.size_gib is not None:
        volumes.check_size(w.size_gib, settings)
    size_gib = w.size_gib
    if w.snapshot_id is not None:
        # volumes._snapshot is private: the very rule volumes.create applies (visible to the
        # caller, not deleted: else 404; completed: else 409 IncorrectState), reused rather
        # than written twice.
        snap = volumes._snapshot(s, w.owner or caller, w.snapshot_id)
        if size_gib is None:
            size_gib = snap.volume_size_gib
        elif size_gib < snap.volume_size_gib:
            raise InvalidParameter(f"{w.device}: size {size_gib} GiB is smaller than snapshot "
                                   f"{snap.snapshot_id} ({snap.volume_size_gib} GiB)")
        volumes.check_size(size_gib, settings)
    return VolumePlan(device=w.device, size_gib=size_gib, snapshot_id=w.snapshot_id,
                      delete_on_termination=w.delete_on_termination)


def check_quota(s: Session, settings: Settings, account_id: str, plan: Plan, count: int) -> None:
    """The account's volume GiB limit holds with `count` instances' volumes added (400
    VolumeLimitExceeded, as volumes.create)."""
    extra = plan.gib_per_instance * count
    if not extra:
        return
    used = volumes.provisioned_gib(s, account_id)
    if used + extra > settings.account_volume_gib_limit:
        raise volumes.VolumeLimitExceeded(
            f"the account has {used} GiB of volumes; {extra} GiB more for {count} instance(s) "
            f"exceeds its limit of {settings.account_volume_gib_limit} GiB")


def apply(s: Session, plan: Plan, inst: Instance) -> list[Volume]:
    """The instance's volumes (creating) and attachments (attaching) in the caller's
    transaction; the instance row must be in the session already."""
    now = utcnow()
    made = []
    for p in plan.volumes:
        vol = Volume(volume_id=new_id("vol"), account_id=inst.account_id, size_gib=p.size_gib,
                     state="creating", snapshot_id=p.snapshot_id,
                     availability_zone=plan.availability_zone, tags={}, created_at=now,
                     updated_at=now, generation=1, acked_generation=0)
        s.add(vol)
        metering.volume_sized(s, vol, now)
        made.append(vol)
        source = f" from {p.snapshot_id}" if p.snapshot_id else ""
        record(s, "volume", vol.volume_id, inst.account_id, None, "creating",
               f"created {p.size_gib} GiB{source} at the launch of {inst.instance_id}")
    s.flush()  # volumes and the instance before the attachments that refer to them
    for p, vol in zip(plan.volumes, made):
        s.add(VolumeAttachmentRow(volume_id=vol.volume_id, instance_id=inst.instance_id,
                                  device=p.device, state="attaching",
                                  delete_on_termination=p.delete_on_termination,
                                  force_detach=False, attach_time=now))
        record(s, "volume-attachment", vol.volume_id, inst.account_id, None, "attaching",
               f"{inst.instance_id} as {p.device} ({volumes.virtio_target(p.device)}) at launch")
    return made


def describe_rows(rows: Iterable[VolumeAttachmentRow]) -> list[dict]:
    """InstanceBlockDevice fields of attachment rows, in guest-disk order."""
    return [{"device_name": a.device, "volume_id": a.volume_id, "status": a.state,
             "delete_on_termination": a.delete_on_termination, "attach_time": a.attach_time}
            for a in sorted(rows, key=lambda a: (volumes.virtio_target(a.device), a.device))]
