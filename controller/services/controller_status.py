"""`GET /v1/admin/status`: the controller processes, which one leads, and the reconcile lag.

Reads only: the registry (controller/controller_registry.py), the leader lease
(controller/lease.py) and the instances and hosts whose desired state agents have not
acknowledged yet.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import func
from sqlmodel import select

from controller.db import Database
from controller.ids import utcnow
from controller.models import ControllerLease, ControllerProcess, Host, Instance
from controller.models.controller_lease import (LEADER_LEASE, AdminStatusPublic, ControllerPublic,
                                                LeaderPublic, ReconcileLagPublic)
from controller.settings import Settings


def _age(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else round(max((now - then).total_seconds(), 0.0), 3)


def status(db: Database, settings: Settings, answered_by: str,
           now: datetime | None = None) -> AdminStatusPublic:
    now = now or utcnow()
    # A registry row is fresh for three renewals (and at least one lease TTL).
    fresh_s = max(3 * settings.leader_renew_interval_s, settings.leader_lease_ttl_s)
    with db.session(notify=False) as s:
        lease = s.get(ControllerLease, LEADER_LEASE)
        held = lease is not None and bool(lease.holder) and lease.expires_at > now
        holder = lease.holder if held else None
        procs = list(s.exec(select(ControllerProcess).order_by(ControllerProcess.started_at,
                                                               ControllerProcess.controller_id)))
        pending = (Instance.state != "terminated", Instance.host_id.is_not(None),
                   Instance.generation != Instance.acked_generation)
        unacked, oldest = s.exec(select(func.count(), func.min(Instance.updated_at))
                                 .where(*pending)).one()
        networks = s.exec(select(func.count()).select_from(Host).where(
            Host.network_generation != Host.network_acked)).one()
    if isinstance(oldest, str):  # func.min bypasses the column type on SQLite
        oldest = datetime.fromisoformat(oldest)
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=now.tzinfo)
    controllers = [ControllerPublic(
        controller_id=p.controller_id, hostname=p.hostname, pid=p.pid, api_url=p.api_url,
        version=p.version, started_at=p.started_at, last_seen=p.last_seen,
        alive=(now - p.last_seen).total_seconds() <= fresh_s, leader=p.controller_id == holder,
        last_reconcile_at=p.last_reconcile_at) for p in procs]
    leader_row = next((c for c in controllers if c.leader), None)
    last_pass = leader_row.last_reconcile_at if leader_row else None
    return AdminStatusPublic(
        time=now, answered_by=answered_by,
        leader=LeaderPublic(controller_id=holder, epoch=lease.epoch if lease else 0,
                            since=lease.acquired_at if held else None,
                            renewed_at=lease.renewed_at if held else None,
                            expires_at=lease.expires_at if held else None),
        controllers=controllers,
        reconcile=ReconcileLagPublic(
            last_pass_at=last_pass, last_pass_age_s=_age(now, last_pass),
            unacknowledged_instances=unacked, oldest_unacknowledged_age_s=_age(now, oldest),
            unacknowledged_networks=networks))
