"""Database engine and sessions for one controller app (no module-level engine).

SQLite gets WAL mode, a busy timeout, foreign keys and `BEGIN IMMEDIATE` transactions: taking the
write lock up front means two writers queue on the busy timeout instead of deadlocking on a lock
upgrade. PostgreSQL gets the same one-transaction-at-a-time rule from a transaction-scoped
advisory lock taken at BEGIN (READ COMMITTED, 30 s lock timeout like SQLite's busy timeout).

Change listeners (`Database.on_change`, the reconciler's wake-up) are called after every commit
of a session that wrote something, whoever made the change: an API request or a service the
controller runs on its own. A session that only read, or rolled back, calls none.
Also owns UtcDateTime, the column type that stores naive UTC and returns aware UTC, and
delete_all(), the one way services delete every row a query selects.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from sqlalchemy import event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import sessionmaker
from sqlalchemy.types import DateTime, TypeDecorator
from sqlmodel import Session, create_engine

log = logging.getLogger(__name__)
# Session.info keys: whether the session's commit calls the change listeners, and whether the
# transaction wrote anything.
_NOTIFY, _WROTE = "kumo.notify", "kumo.wrote"


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


def pooler_safe_connect_args(url: str) -> dict:
    """Connection arguments that keep a PostgreSQL engine working behind PgBouncer in any pool
    mode (docs/operations.md "PgBouncer"): psycopg's automatic server-side prepared statements
    off (`prepare_threshold=None`). psycopg prepares a statement on a connection after its 5th
    execution there; behind transaction pooling the next transaction may run on another server
    connection, which does not know it ("prepared statement "_pg3_0" does not exist"), and
    PgBouncer before 1.21 (Debian 12 has 1.18) cannot track them. Off always, not behind a
    setting: a forgotten setting would fail only under load, and Kumo's statements are short
    and run one transaction at a time (the advisory lock below), so re-planning them costs
    little. Nothing for other drivers (SQLite, psycopg2 have no such parameter)."""
    if make_url(url).get_dialect().driver == "psycopg":
        return {"prepare_threshold": None}
    return {}


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
    engine = create_engine(url, pool_pre_ping=True, isolation_level="READ COMMITTED",
                           connect_args=pooler_safe_connect_args(url))
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
        self._listeners: list[Callable[[], None]] = []
        self._sessions = sessionmaker(self.engine, class_=Session, expire_on_commit=False)
        self._events: list[tuple[str, Callable]] = []
        self._listen("before_flush", _note_flush)
        self._listen("do_orm_execute", _note_statement)
        self._listen("after_commit", self._committed)

    def _listen(self, name: str, fn: Callable) -> None:
        event.listen(self._sessions, name, fn)
        self._events.append((name, fn))

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener()` after each commit that wrote something (in the committing thread,
        so it must be quick and thread-safe)."""
        self._listeners.append(listener)

    @contextmanager
    def session(self, *, notify: bool = True) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on error.

        notify=False keeps the commit from calling the change listeners: for writes that record
        what agents observed (heartbeats) and the reconciler's own bookkeeping, whose
        consequences its periodic tick picks up (and a loop woken by its own writes would
        never rest)."""
        with self._sessions() as s:
            s.info[_NOTIFY] = notify
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                # Not in an after_rollback hook: that also fires when a savepoint rolls back,
                # and the writes of the enclosing transaction still commit.
                s.info.pop(_WROTE, None)
                raise

    def _committed(self, session: Session) -> None:
        if session.in_nested_transaction():
            return  # a savepoint was released: nothing is committed until the outer commit
        if not (session.info.pop(_WROTE, False) and session.info.get(_NOTIFY)):
            return
        for listener in self._listeners:
            try:
                listener()
            except Exception:  # the change is committed: a listener must not undo the answer
                log.exception("change listener failed")

    def notify_on_commit(self, channel: str, payload: str) -> None:
        """PostgreSQL only: in each transaction whose commit calls the change listeners (it
        wrote and is not notify=False), `pg_notify(channel, payload)` just before COMMIT, so
        other controllers hear of it exactly when it commits and never for a rollback
        (controller/change_feed.py)."""
        if self.engine.dialect.name != "postgresql":
            return

        def _notify(session: Session) -> None:
            if session.in_nested_transaction() or not session.info.get(_NOTIFY):
                return
            session.flush()  # before_commit runs before the commit's own flush: note its writes
            if session.info.get(_WROTE):
                session.execute(text("SELECT pg_notify(:c, :p)"), {"c": channel, "p": payload})

        self._listen("before_commit", _notify)

    def before_commit(self, hook: Callable[[Session], None]) -> None:
        """Call `hook(session)` before each commit; an exception from it rolls the transaction
        back (the leader fence of background loops, controller/leadership.py)."""
        self._listen("before_commit", hook)

    def dispose(self) -> None:
        # SQLAlchemy keeps session events in a class-level registry whose entries hold their
        # listeners strongly, and our listeners hold this Database (and through on_change the
        # reconciler, the agent pool, the app...): without removing them nothing a Database
        # reaches is ever freed (the test suite grew by ~9 MiB per app, to 5 GB).
        for name, fn in self._events:
            event.remove(self._sessions, name, fn)
        self._events.clear()
        self.engine.dispose()


def _note_flush(session: Session, _context, _instances) -> None:
    # "dirty" is optimistic (any attribute set counts): is_modified compares the values.
    if session.new or session.deleted or any(session.is_modified(o) for o in session.dirty):
        session.info[_WROTE] = True


def _note_statement(state) -> None:
    # Bulk INSERT/UPDATE/DELETE statements (the reconciler's purge) bypass the flush.
    if state.is_insert or state.is_update or state.is_delete:
        state.session.info[_WROTE] = True


def delete_all(session: Session, query) -> int:
    """Delete every row `query` selects, one ORM delete each (so the session's flush sees them,
    as the change listeners need); the number deleted."""
    rows = list(session.exec(query))
    for row in rows:
        session.delete(row)
    return len(rows)
