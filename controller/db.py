"""Database engine and sessions for one controller app (no module-level engine).

SQLite gets WAL mode, a busy timeout, foreign keys and `BEGIN IMMEDIATE` transactions: taking the
write lock up front means two writers queue on the busy timeout instead of deadlocking on a lock
upgrade. PostgreSQL gets the same one-transaction-at-a-time rule from a transaction-scoped
advisory lock taken at BEGIN (READ COMMITTED, 30 s lock timeout like SQLite's busy timeout).
Also owns UtcDateTime, the column type that stores naive UTC and returns aware UTC.
"""
from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.types import DateTime, TypeDecorator
from sqlmodel import Session, create_engine


class UtcDateTime(TypeDecorator):
    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("sqlite:///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               pool_size=20, max_overflow=40)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):
            # Python's sqlite3 must not issue its own BEGIN; we emit BEGIN IMMEDIATE below.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # READ COMMITTED whatever the server's default: each statement then sees what committed
    # before it, which the lock below (and FOR UPDATE on hosts) relies on.
    engine = create_engine(url, pool_pre_ping=True, isolation_level="READ COMMITTED")
    if engine.dialect.name == "postgresql":
        @event.listens_for(engine, "begin")
        def _pg_begin(conn):
            # The PostgreSQL twin of SQLite's BEGIN IMMEDIATE: one transaction at a time, across
            # every controller process on this database. Services read a row, decide, and write
            # it back (stop/start/reboot, heartbeats, the reconciler); without this, concurrent
            # requests overwrite each other's updates (e.g. lost generation bumps).
            # 1802857839 = 0x6B756D6F ("kumo"), a fixed key for this application's lock.
            conn.exec_driver_sql("SET LOCAL lock_timeout = '30s'")
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(1802857839)")

    return engine


class Database:
    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on error."""
        with Session(self.engine, expire_on_commit=False) as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()
