"""The controllers' own bookkeeping: the leader lease row (one per lease name; the reconciler
and the other background loops run only in its holder) and the registry of controller processes
(each one refreshes its own row; `GET /v1/admin/status` lists them). Rules live in
controller/lease.py, controller/leadership.py and controller/services/controller_status.py."""
from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from controller.db import UtcDateTime

#: The lease the background loops run under.
LEADER_LEASE = "controller-leader"


class ControllerLease(SQLModel, table=True):
    __tablename__ = "controller_lease"

    name: str = Field(primary_key=True, max_length=64)
    #: The controller process id (ControllerProcess.controller_id) holding it; "" = never held.
    holder: str = Field(default="", max_length=64)
    #: The fencing counter: +1 at every takeover, never for a renewal. A holder renews only
    #: while (holder, epoch) is still what it took.
    epoch: int = 0
    acquired_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    renewed_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    #: After this instant anyone may take the lease (with epoch + 1).
    expires_at: datetime = Field(sa_type=UtcDateTime)


class ControllerProcess(SQLModel, table=True):
    __tablename__ = "controller_process"

    controller_id: str = Field(primary_key=True, max_length=64)
    hostname: str = Field(max_length=255)
    pid: int
    api_url: str | None = Field(default=None, max_length=1024)
    version: str = Field(max_length=64)
    started_at: datetime = Field(sa_type=UtcDateTime)
    last_seen: datetime = Field(sa_type=UtcDateTime)
    #: When this process last completed a reconciler pass (only a leader makes them).
    last_reconcile_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class ControllerPublic(SQLModel):
    controller_id: str
    hostname: str
    pid: int
    api_url: str | None
    version: str
    started_at: datetime
    last_seen: datetime
    #: Seen within the last few lease renewals.
    alive: bool
    #: Holds the leader lease now.
    leader: bool
    last_reconcile_at: datetime | None


class LeaderPublic(SQLModel):
    #: The lease's holder while it is held (None: nobody leads right now, e.g. mid-takeover).
    controller_id: str | None
    #: The fencing counter: takeovers so far.
    epoch: int
    #: When the current holder took the lease, renewed it last, and when it ends unless renewed.
    since: datetime | None
    renewed_at: datetime | None
    expires_at: datetime | None


class ReconcileLagPublic(SQLModel):
    #: The leader's last completed reconciler pass, and its age in seconds.
    last_pass_at: datetime | None
    last_pass_age_s: float | None
    #: Live instances whose desired spec their agent has not acknowledged yet, and the age of
    #: the oldest such change (seconds since the instance last changed).
    unacknowledged_instances: int
    oldest_unacknowledged_age_s: float | None
    #: Hosts whose network document is not acknowledged yet.
    unacknowledged_networks: int


class AdminStatusPublic(SQLModel):
    time: datetime
    #: The controller process that answered this request.
    answered_by: str
    leader: LeaderPublic
    controllers: list[ControllerPublic]
    reconcile: ReconcileLagPublic
