"""The leader lease: one row of `controller_lease`, taken and renewed by compare-and-set.

Owns the lease's database operations (take, renew, release, read) and the small engine they run
on. Who does what with the lease (running the loops, stopping them in time) is
controller/leadership.py.

Why a lease row and not a PostgreSQL advisory lock:
- an advisory lock lives as long as one connection: a leader whose connection is cut keeps
  acting until it notices, and nothing in the database says who leads or since when; a row
  carries the holder, a fencing epoch and an expiry that every controller (and
  `kumo admin status`) can read;
- the same code runs on SQLite (tests, the all-in-one lab) and PostgreSQL (production);
- the epoch is a fencing token: +1 at every takeover, so a stale holder's compare-and-set on
  (holder, epoch) fails after a takeover and it can never renew its way back in.

Every operation is one conditional UPDATE (compare-and-set) in its own short transaction, on an
engine of its own: on PostgreSQL it does NOT take the application's global transaction lock
(controller/db.py), so a renewal never waits behind a long API transaction, and its statements
time out (2 s, `SET LOCAL` in each transaction: PgBouncer-safe) well within the lease's TTL.
Two contenders racing for an expired lease both UPDATE ... WHERE epoch = <what they read>: the
row lock orders them, the second's WHERE no longer matches, and exactly one wins.

Time: `expires_at` is written from the holder's wall clock and compared with a contender's
wall clock, so controllers' clocks must agree (NTP) within the holder's safety margin
(leadership.py stops a holder's loops a margin before its lease ends). The clock is a parameter:
tests drive it.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

from sqlalchemy import event, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import create_engine

from controller.db import make_engine, pooler_safe_connect_args
from controller.ids import utcnow
from controller.models.controller_lease import LEADER_LEASE, ControllerLease

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
_NEVER = datetime(1970, 1, 1, tzinfo=timezone.utc)
_T = ControllerLease.__table__
#: statement_timeout and lock_timeout of every lease transaction on PostgreSQL (ms): well
#: within the lease's TTL, so a renewal stuck on the database fails in time.
STATEMENT_TIMEOUT_MS = 2000


def new_controller_id() -> str:
    """A fresh id per process start: a restarted controller is a new contender, never the
    holder it was before (it must take the lease again, with a new epoch)."""
    return f"ctl-{uuid.uuid4().hex[:16]}"


def lease_engine(url: str) -> Engine:
    """A small engine for the lease and the registry, apart from the app's (see the module
    docstring). SQLite keeps the app's engine settings (WAL, busy timeout, BEGIN IMMEDIATE)."""
    if url.startswith("sqlite"):
        return make_engine(url)
    engine = create_engine(url, pool_size=2, max_overflow=2, pool_pre_ping=True,
                           isolation_level="READ COMMITTED",
                           connect_args=pooler_safe_connect_args(url))
    if engine.dialect.name == "postgresql":
        @event.listens_for(engine, "begin")
        def _timeouts(conn):
            # Per transaction (SET LOCAL), not in the `options` startup parameter: PgBouncer
            # refuses that one, and behind transaction pooling a session setting would stay on
            # whichever server connection ran it. Every lease operation is one transaction
            # (reads too: SQLAlchemy begins one on first execute), so each gets both timeouts.
            # set_config(..., true) is SET LOCAL: both in one round trip.
            conn.exec_driver_sql(
                f"SELECT set_config('statement_timeout', '{STATEMENT_TIMEOUT_MS}', true), "
                f"set_config('lock_timeout', '{STATEMENT_TIMEOUT_MS}', true)")
    return engine


@dataclass(frozen=True)
class LeaseState:
    name: str
    holder: str
    epoch: int
    acquired_at: datetime | None
    renewed_at: datetime | None
    expires_at: datetime

    def held_at(self, now: datetime) -> bool:
        return bool(self.holder) and self.expires_at > now


def aware_utc(value: datetime | None) -> datetime | None:
    # The engine here is plain SQLAlchemy Core: naive UTC from the columns, made aware.
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def naive_utc(value: datetime) -> datetime:
    return value.astimezone(timezone.utc).replace(tzinfo=None)


class Lease:
    """One named lease as seen by one contender (`holder`)."""

    def __init__(self, engine: Engine, holder: str, ttl_s: float, *,
                 name: str = LEADER_LEASE, clock: Clock = utcnow):
        self.engine, self.holder, self.name, self.clock = engine, holder, name, clock
        self.ttl = timedelta(seconds=ttl_s)

    def read(self) -> LeaseState | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(_T).where(_T.c.name == self.name)).mappings().first()
        if row is None:
            return None
        return LeaseState(row["name"], row["holder"], row["epoch"], aware_utc(row["acquired_at"]),
                          aware_utc(row["renewed_at"]), aware_utc(row["expires_at"]))

    def _ensure_row(self) -> LeaseState:
        state = self.read()
        if state is not None:
            return state
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(_T).values(name=self.name, holder="", epoch=0,
                                               expires_at=naive_utc(_NEVER)))
        except IntegrityError:
            pass  # another contender created it first
        return self.read()

    def try_acquire(self) -> int | None:
        """Take the lease if it is free or expired: the new epoch, else None (someone else
        holds it). Holding it already is not this method's business: see renew()."""
        state = self._ensure_row()
        now = self.clock()
        if state.held_at(now):
            return None
        epoch = state.epoch + 1
        with self.engine.begin() as conn:
            won = conn.execute(
                update(_T).where(_T.c.name == self.name, _T.c.epoch == state.epoch,
                                 _T.c.holder == state.holder)
                .values(holder=self.holder, epoch=epoch, acquired_at=naive_utc(now),
                        renewed_at=naive_utc(now), expires_at=naive_utc(now + self.ttl))).rowcount
        if won != 1:
            return None  # another contender's compare-and-set came first
        log.info("lease %s taken by %s at epoch %d (previous holder %r)", self.name,
                 self.holder, epoch, state.holder)
        return epoch

    def renew(self, epoch: int) -> bool:
        """Extend our lease by the TTL; False when it is no longer ours at `epoch` (taken over
        after it expired). An expired lease nobody took yet is still ours to renew: nothing
        acted in between, and the epoch says so."""
        now = self.clock()
        with self.engine.begin() as conn:
            return conn.execute(
                update(_T).where(_T.c.name == self.name, _T.c.holder == self.holder,
                                 _T.c.epoch == epoch)
                .values(renewed_at=naive_utc(now), expires_at=naive_utc(now + self.ttl))).rowcount == 1

    def release(self, epoch: int) -> bool:
        """End our lease now (a clean shutdown), so another controller takes over at once."""
        now = self.clock()
        with self.engine.begin() as conn:
            return conn.execute(
                update(_T).where(_T.c.name == self.name, _T.c.holder == self.holder,
                                 _T.c.epoch == epoch)
                .values(expires_at=naive_utc(now))).rowcount == 1
