"""Metering: the usage intervals written next to the state changes that make a resource billable
or not, inside the same transaction (so an interval exists exactly when its change committed).

Nothing here ticks: a controller that was down for an hour finds the same rows when it comes
back, so it neither loses nor invents usage. The services call the hooks below where they
change state:
- instances (services/lifecycle.py `transition`): `instance-hours` of the type it runs as from
  `running` until it leaves running (a type change while stopped bills the new type from the
  next start, because the type is read when the interval opens); its root disk
  (`volume-gib-month`, kind root-volume) from launch until terminated, re-opened when it grows,
  and not at all when it never reached running (a failed launch, or terminated while pending);
- volumes: from creation until deleting (or a failed creation), re-opened when they grow;
- snapshots: from completed until deleting, by what they store (`snapshot-gib-month`, GiB from
  the storage node's stored_bytes, rounded up; see snapshot_gib);
- public IPv4 addresses, elastic and auto-assigned: from allocation until released;
- NAT gateways: from creation until deleted. Their data processed (per GiB) is an amount, not
  a stretch: services/nat_metering.py meters it from the agents' counters.
"""
from __future__ import annotations

from datetime import datetime
from decimal import ROUND_CEILING, Decimal

from sqlmodel import Session, select

from controller.ids import utcnow
from controller.models.billing import UsageInterval

INSTANCE_HOURS = "instance-hours"
VOLUME = "volume-gib-month"
SNAPSHOT = "snapshot-gib-month"
PUBLIC_IP = "public-ipv4-hours"
NAT = "nat-gateway-hours"


def open_interval(s: Session, *, account_id: str, resource_id: str, kind: str, usage_type: str,
                  at: datetime, quantity: int = 1, dimension: str = "") -> None:
    """Open a stretch; an open one of the same resource and usage type ends at `at` first (a
    resize, or a repeated report), so a resource never has two open stretches of one type."""
    close_interval(s, resource_id, usage_type, at)
    s.add(UsageInterval(account_id=account_id, resource_id=resource_id, kind=kind,
                        usage_type=usage_type, dimension=dimension, quantity=quantity,
                        started_at=at))


def close_interval(s: Session, resource_id: str, usage_type: str, at: datetime) -> None:
    """End the open stretch, if any (none: a resource from before metering, or already ended)."""
    for row in s.exec(select(UsageInterval).where(UsageInterval.resource_id == resource_id,
                                                  UsageInterval.usage_type == usage_type,
                                                  UsageInterval.ended_at == None)):  # noqa: E711
        row.ended_at = max(at, row.started_at)
        s.add(row)


def void_interval(s: Session, resource_id: str, usage_type: str) -> None:
    """End the open stretch at its own start: nothing of it is charged."""
    for row in s.exec(select(UsageInterval).where(UsageInterval.resource_id == resource_id,
                                                  UsageInterval.usage_type == usage_type,
                                                  UsageInterval.ended_at == None)):  # noqa: E711
        row.ended_at = row.started_at
        s.add(row)


def instance_transition(s: Session, inst, frm: str | None, to: str, at: datetime) -> None:
    if to == "running" and frm != "running":
        open_interval(s, account_id=inst.account_id, resource_id=inst.instance_id,
                      kind="instance", usage_type=INSTANCE_HOURS, at=at,
                      dimension=inst.instance_type)
    elif frm == "running" and to != "running":
        close_interval(s, inst.instance_id, INSTANCE_HOURS, at)
    if frm is None and to == "pending":
        root_disk(s, inst, at)
    elif frm == "pending" and to == "shutting-down" and inst.launch_time is None:
        # It never ran (the launch failed, or it was terminated while pending): as on EC2,
        # nothing is charged for it. The disk's stretch ends where it began.
        void_interval(s, inst.instance_id, VOLUME)
    elif to == "terminated" and frm != "terminated":
        close_interval(s, inst.instance_id, VOLUME, at)


def root_disk(s: Session, inst, at: datetime | None = None) -> None:
    """The root disk's size from `at` (launch, or a grow)."""
    if inst.state == "terminated":
        return
    open_interval(s, account_id=inst.account_id, resource_id=inst.instance_id,
                  kind="root-volume", usage_type=VOLUME, at=at or utcnow(),
                  quantity=inst.root_disk_gib)


def volume_sized(s: Session, vol, at: datetime | None = None) -> None:
    """A volume created (creating), or grown: billed at `vol.size_gib` from `at`."""
    open_interval(s, account_id=vol.account_id, resource_id=vol.volume_id, kind="volume",
                  usage_type=VOLUME, at=at or utcnow(), quantity=vol.size_gib)


def volume_ended(s: Session, vol, at: datetime | None = None) -> None:
    close_interval(s, vol.volume_id, VOLUME, at or utcnow())


GIB = Decimal(1 << 30)


def snapshot_gib(snap) -> int:
    """The GiB a snapshot is billed for: what it stores (stored_bytes, as the storage node
    measured it when the snapshot completed) / 2**30, rounded UP to a whole GiB, because
    usage_interval.quantity is an integer column (a snapshot storing 8 MiB bills 1 GiB, one
    storing 3.2 GiB bills 4; one storing nothing bills 0). A snapshot without a measure
    (completed before stored sizes existed, or by a node without the extension
    "snapshot-stored-bytes") keeps being billed by its volume's size, volume_size_gib."""
    if snap.stored_bytes is None:
        return snap.volume_size_gib
    return int((Decimal(snap.stored_bytes) / GIB).to_integral_value(rounding=ROUND_CEILING))


def snapshot_completed(s: Session, snap, at: datetime | None = None) -> None:
    open_interval(s, account_id=snap.account_id, resource_id=snap.snapshot_id, kind="snapshot",
                  usage_type=SNAPSHOT, at=at or utcnow(), quantity=snapshot_gib(snap))


def snapshot_ended(s: Session, snap, at: datetime | None = None) -> None:
    close_interval(s, snap.snapshot_id, SNAPSHOT, at or utcnow())


def address_allocated(s: Session, eip, at: datetime | None = None) -> None:
    open_interval(s, account_id=eip.account_id, resource_id=eip.allocation_id,
                  kind="public-ip", usage_type=PUBLIC_IP, at=at or utcnow())


def address_released(s: Session, eip, at: datetime | None = None) -> None:
    close_interval(s, eip.allocation_id, PUBLIC_IP, at or utcnow())


def nat_created(s: Session, nat, at: datetime | None = None) -> None:
    open_interval(s, account_id=nat.account_id, resource_id=nat.nat_gateway_id,
                  kind="nat-gateway", usage_type=NAT, at=at or utcnow())


def nat_deleted(s: Session, nat, at: datetime | None = None) -> None:
    close_interval(s, nat.nat_gateway_id, NAT, at or utcnow())
