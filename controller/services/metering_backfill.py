"""Usage intervals for resources that were already billable when metering began (issue 13).

Metering (services/metering.py) opens an interval at the state change that makes a resource
billable. A resource that changed state before this release had no metering at all, so an
instance running across the upgrade, its root disk, a volume, a snapshot, an address or a NAT
gateway would never be charged until its next state change. At start-up `backfill` opens, from
now, the interval each billable resource should have and has not: what the metering hooks would
have opened, for the states in which they keep one open. It is idempotent (a resource with an
open interval of that usage type is left alone), so it runs at every start and repairs nothing
else: time before the upgrade is not charged (there is no record of it to charge from).

Each kind is one query that returns only the resources lacking their open interval (NOT EXISTS
on the (resource_id, usage_type, ended_at) index), with only the columns the interval needs: a
start with every interval in place reads no resource rows into Python (10,000 running
instances: bench/bench_billing.py).
"""
from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from sqlalchemy import exists, text
from sqlmodel import Session, select

from controller.models import ElasticIp, Instance, NatGateway, Snapshot, Volume
from controller.models.billing import UsageInterval
from controller.services import metering

#: States in which each hook keeps the interval open (see the hooks' callers).
_VOLUME_BILLED = ("creating", "available", "in-use")


#: PostgreSQL transaction lock key: controllers starting together backfill one after the other
#: (the second then finds every interval open), never both opening the same interval.
_LOCK_KEY = 0x6B756D6F_6D6574  # "kumomet"


class _SnapSize(NamedTuple):
    """The two columns metering.snapshot_gib reads."""
    volume_size_gib: int
    stored_bytes: int | None


def _missing(s: Session, resource_id, usage_type: str, *columns, where=()):
    """(resource id, *columns) of the rows matching `where` without an open interval of
    `usage_type`."""
    iv = UsageInterval
    has_open = select(iv.id).where(iv.resource_id == resource_id, iv.usage_type == usage_type,
                                   iv.ended_at == None)  # noqa: E711
    return s.exec(select(resource_id, *columns).where(*where, ~exists(has_open))).all()


def backfill(s: Session, now: datetime) -> int:
    """Open the missing intervals from `now`; how many were opened."""
    if s.get_bind().dialect.name == "postgresql":
        s.exec(text("SELECT pg_advisory_xact_lock(:k)").bindparams(k=_LOCK_KEY))
    opened = 0

    def want(resource_id: str, usage_type: str, **kw) -> None:
        nonlocal opened
        metering.open_interval(s, resource_id=resource_id, usage_type=usage_type, at=now, **kw)
        opened += 1

    i, v, sn, e, n = Instance, Volume, Snapshot, ElasticIp, NatGateway
    # Each list is read whole before any interval is added (no query sees a half-done pass).
    todo = [
        (metering.INSTANCE_HOURS, lambda r: dict(account_id=r[1], kind="instance",
                                                 dimension=r[2]),
         _missing(s, i.instance_id, metering.INSTANCE_HOURS, i.account_id, i.instance_type,
                  where=(i.state == "running",))),
        (metering.VOLUME, lambda r: dict(account_id=r[1], kind="root-volume", quantity=r[2]),
         _missing(s, i.instance_id, metering.VOLUME, i.account_id, i.root_disk_gib,
                  where=(i.state != "terminated",))),
        (metering.VOLUME, lambda r: dict(account_id=r[1], kind="volume", quantity=r[2]),
         _missing(s, v.volume_id, metering.VOLUME, v.account_id, v.size_gib,
                  where=(v.state.in_(_VOLUME_BILLED),))),
        # Billed by what it stores when the node measured it (metering.snapshot_gib).
        (metering.SNAPSHOT, lambda r: dict(account_id=r[1], kind="snapshot",
                                           quantity=metering.snapshot_gib(r[2])),
         [(sid, acct, _SnapSize(vol_gib, stored)) for sid, acct, vol_gib, stored in _missing(
             s, sn.snapshot_id, metering.SNAPSHOT, sn.account_id, sn.volume_size_gib,
             sn.stored_bytes, where=(sn.state == "completed",))]),
        # a released address has no row
        (metering.PUBLIC_IP, lambda r: dict(account_id=r[1], kind="public-ip"),
         _missing(s, e.allocation_id, metering.PUBLIC_IP, e.account_id)),
        (metering.NAT, lambda r: dict(account_id=r[1], kind="nat-gateway"),
         _missing(s, n.nat_gateway_id, metering.NAT, n.account_id,
                  where=(n.state != "deleted",))),
    ]
    for usage_type, fields, rows in todo:
        for r in rows:
            want(r[0], usage_type, **fields(r))
    return opened
