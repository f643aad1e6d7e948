"""Usage intervals for resources that were already billable when metering began (issue 13).

Metering (services/metering.py) opens an interval at the state change that makes a resource
billable. A resource that changed state before this release had no metering at all, so an
instance running across the upgrade, its root disk, a volume, a snapshot, an address or a NAT
gateway would never be charged until its next state change. At start-up `backfill` opens, from
now, the interval each billable resource should have and has not: what the metering hooks would
have opened, for the states in which they keep one open. It is idempotent (a resource with an
open interval of that usage type is left alone), so it runs at every start and repairs nothing
else: time before the upgrade is not charged (there is no record of it to charge from).
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import text
from sqlmodel import Session, select

from controller.models import ElasticIp, Instance, NatGateway, Snapshot, Volume
from controller.models.billing import UsageInterval
from controller.services import metering

#: States in which each hook keeps the interval open (see the hooks' callers).
_VOLUME_BILLED = ("creating", "available", "in-use")


#: PostgreSQL transaction lock key: controllers starting together backfill one after the other
#: (the second then finds every interval open), never both opening the same interval.
_LOCK_KEY = 0x6B756D6F_6D6574  # "kumomet"


def backfill(s: Session, now: datetime) -> int:
    """Open the missing intervals from `now`; how many were opened."""
    if s.get_bind().dialect.name == "postgresql":
        s.exec(text("SELECT pg_advisory_xact_lock(:k)").bindparams(k=_LOCK_KEY))
    open_now = set(s.exec(select(UsageInterval.resource_id, UsageInterval.usage_type).where(
        UsageInterval.ended_at == None)).all())  # noqa: E711
    opened = 0

    def want(resource_id: str, usage_type: str, **kw) -> None:
        nonlocal opened
        if (resource_id, usage_type) not in open_now:
            metering.open_interval(s, resource_id=resource_id, usage_type=usage_type, at=now,
                                   **kw)
            opened += 1

    for inst in s.exec(select(Instance).where(Instance.state != "terminated")):
        if inst.state == "running":
            want(inst.instance_id, metering.INSTANCE_HOURS, account_id=inst.account_id,
                 kind="instance", dimension=inst.instance_type)
        want(inst.instance_id, metering.VOLUME, account_id=inst.account_id, kind="root-volume",
             quantity=inst.root_disk_gib)
    for vol in s.exec(select(Volume).where(Volume.state.in_(_VOLUME_BILLED))):
        want(vol.volume_id, metering.VOLUME, account_id=vol.account_id, kind="volume",
             quantity=vol.size_gib)
    for snap in s.exec(select(Snapshot).where(Snapshot.state == "completed")):
        want(snap.snapshot_id, metering.SNAPSHOT, account_id=snap.account_id, kind="snapshot",
             quantity=snap.volume_size_gib)
    for eip in s.exec(select(ElasticIp)):  # a released address has no row
        want(eip.allocation_id, metering.PUBLIC_IP, account_id=eip.account_id,
             kind="public-ip")
    for nat in s.exec(select(NatGateway).where(NatGateway.state != "deleted")):
        want(nat.nat_gateway_id, metering.NAT, account_id=nat.account_id, kind="nat-gateway")
    return opened
