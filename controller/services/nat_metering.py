"""NAT gateways' data processed (usage type nat-gateway-gib): agents' cumulative byte counters
(NetworkObserved.nat_processed in heartbeats, extension nat-processed) turned into metered
amounts, in the transaction that records the heartbeat.

- Deltas: each (gateway, host) keeps the last value seen (models/billing.py NatCounter). The
  new bytes are value - last; a value smaller than the last one is a new counter (the router
  namespace or its nft table was made again: agent/network/nat.py), counted from zero, and so
  is the first value from a host. Counters are cumulative, so a heartbeat lost, or a controller
  down for an hour, loses nothing: the next report carries it (billed when it arrives).
- Amounts: the bytes go into the gateway's bucket (models/billing.py UsageQuantity) that starts
  at the current UTC hour, or at a later price change of nat-gateway-gib inside it, so the rate
  and the day of a bucket's start hold for all its bytes (services/usage_calc.py).
- A counter of a gateway the controller does not know is ignored; its bytes are nobody's.
- A deleted gateway's last bytes (issue 13): the agent reads a gateway's counter one last time
  when it stops feeding it (gateway deleted or moved away, router namespace torn down) and
  reports that final value in its next heartbeats until they are answered
  (agent/network/nat_finals.py). It is just the counter's last cumulative value, so the same
  delta rule bills it once, however often it is repeated and across a controller restart (the
  last value is in NatCounter). Deleted gateways keep their row (state "deleted"), so it is
  billed to the gateway. Its hourly interval has ended; the bytes belong to its last period, so
  they go into the bucket of the deletion instant (rate and day then), not of the report,
  unless that is in an earlier UTC month than the report (a past month's bill is not changed
  behind its back: the current bucket then).
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, update
from sqlmodel import Session, select

from controller.models.billing import NatCounter, Price, UsageQuantity
from controller.models.vpc import NatGateway

NAT_GIB = "nat-gateway-gib"


def delta(last: int | None, value: int) -> int:
    """Bytes new since `last` (None: never seen). A smaller value means a new counter."""
    if last is None or value < last:
        return value
    return value - last


def bucket_start(s: Session, now: datetime) -> datetime:
    """Start of the bucket `now` falls in: its UTC hour, or the last price change inside it."""
    hour = now.replace(minute=0, second=0, microsecond=0)
    change = s.exec(select(func.max(Price.effective_at)).where(
        Price.usage_type == NAT_GIB, Price.dimension == "", Price.effective_at <= now)).one()
    return max(hour, change) if change is not None else hour


def _bucket_for(s: Session, gw: NatGateway, now: datetime, current: datetime | None) -> datetime:
    """The bucket of `gw`'s new bytes reported at `now` (`current`: the report's bucket, if
    computed): the deletion instant's bucket for a deleted gateway (see the docstring)."""
    ended = gw.deleted_at
    if ended is not None:
        if ended.tzinfo is None:  # SQLite hands datetimes back naive (they are UTC)
            ended = ended.replace(tzinfo=now.tzinfo)
        if ended <= now and (ended.year, ended.month) == (now.year, now.month):
            return bucket_start(s, ended)
    return current or bucket_start(s, now)


def observe(s: Session, host_id: str, reported, now: datetime) -> int:
    """Fold one heartbeat's counters (NatProcessed items) in; returns the bytes metered."""
    total, bucket = 0, None
    for rep in reported:
        gw = s.get(NatGateway, rep.nat_gateway_id)
        if gw is None:
            continue
        row = s.get(NatCounter, (rep.nat_gateway_id, host_id))
        new = delta(row.bytes if row is not None else None, rep.bytes)
        if row is None:
            row = NatCounter(nat_gateway_id=rep.nat_gateway_id, host_id=host_id, bytes=rep.bytes,
                             updated_at=now)
        else:
            row.bytes, row.updated_at = rep.bytes, now
        s.add(row)
        if new > 0:
            if gw.deleted_at is not None:
                _add(s, gw, new, _bucket_for(s, gw, now, bucket))
            else:
                bucket = bucket or bucket_start(s, now)
                _add(s, gw, new, bucket)
            total += new
    return total


def _add(s: Session, gw: NatGateway, nbytes: int, at: datetime) -> None:
    # An UPDATE that adds in the database, not a read-modify-write: two hosts reporting the
    # same gateway (a move) never lose each other's bytes.
    q = UsageQuantity
    res = s.exec(update(q).where(q.resource_id == gw.nat_gateway_id, q.usage_type == NAT_GIB,
                                 q.recorded_at == at).values(quantity=q.quantity + nbytes))
    if res.rowcount == 0:
        s.add(UsageQuantity(account_id=gw.account_id, resource_id=gw.nat_gateway_id,
                            kind="nat-gateway", usage_type=NAT_GIB, quantity=nbytes,
                            recorded_at=at))
