"""The leader lease (controller/lease.py) and the app's engine (controller/db.py) through
PgBouncer 1.18 in pool_mode=transaction, the mode that breaks the most: a startup `options`
parameter is refused, session settings stay on whatever server connection ran them, and psycopg's
server-side prepared statements (made after a statement's 5th run) are unknown to the next
transaction's server connection.

- Positive control: a client sending the `options` the lease engine used to send is refused.
- Two contenders take, renew (many more times than psycopg's prepare threshold, also while the
  pooler swaps server connections under a client: without prepare_threshold=None this fails
  with "prepared statement "_pg3_0" does not exist"), lose, take over and release the lease
  through the pooler; every lease transaction has the 2 s statement/lock timeouts, and they do
  not leak into other clients' transactions.
- The timeouts hold through the pooler: a renewal blocked by a row lock fails in about 2 s
  instead of waiting (so a leader stuck on the database notices within its TTL).
- The app's engine (advisory lock per transaction) runs the same statement many times.
Uses tests/functional/pg.py's server and test_change_feed_pgbouncer's pooler (unix sockets
only, started and stopped by PID). Skipped without PostgreSQL or pgbouncer.
"""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from controller import db_migrate
from controller.db import Database
from controller.lease import STATEMENT_TIMEOUT_MS, Lease, lease_engine
from tests.functional.pg import postgres  # noqa: F401 (fixture)
from tests.functional.test_change_feed_pgbouncer import PORT, bouncer

pytestmark = pytest.mark.slow


class Clock:
    def __init__(self):
        self.now = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now


def _timeouts(conn) -> tuple[str, str]:
    return (conn.execute(text("SHOW statement_timeout")).scalar_one(),
            conn.execute(text("SHOW lock_timeout")).scalar_one())


def test_lease_through_transaction_pooling(postgres, tmp_path):  # noqa: F811
    url = postgres.create_database(prefix="pgb_lease")
    db = Database(url)  # migrations on the server directly, as an operator's first start may
    db_migrate.upgrade(db)
    db.dispose()
    with bouncer(postgres, "transaction") as pgb:
        pooled = pgb.url(url)
        dbname = url.split("@/", 1)[1].split("?", 1)[0]
        # The positive control: what the lease engine used to send is refused by this pooler.
        with pytest.raises(psycopg.OperationalError, match="options"):
            psycopg.connect(host=str(pgb.dir), port=PORT, user="postgres", dbname=dbname,
                            options="-c statement_timeout=2000").close()
        engine = lease_engine(pooled)
        clock = Clock()
        a = Lease(engine, "ctl-a", 5.0, clock=clock)
        b = Lease(engine, "ctl-b", 5.0, clock=clock)
        try:
            with engine.connect() as conn:  # every lease transaction gets both timeouts
                assert _timeouts(conn) == (f"{STATEMENT_TIMEOUT_MS // 1000}s",) * 2
            with postgres.connect(dbname) as direct:  # ... and no other client's does
                assert direct.execute("SHOW statement_timeout").fetchone()[0] == "0"
            epoch = a.try_acquire()
            assert epoch == 1 and b.try_acquire() is None
            for _ in range(20):  # far past psycopg's prepare threshold (5)
                clock.now += timedelta(seconds=1)
                assert a.renew(epoch)
                assert b.try_acquire() is None
                assert a.read().holder == "ctl-a"
            clock.now += timedelta(seconds=6)  # a stopped renewing: b takes over
            assert b.try_acquire() == 2
            assert not a.renew(epoch)  # fenced: the stale epoch cannot come back
            assert b.release(2)
            assert a.try_acquire() == 3  # released: free at once, no expiry to wait for
            # The timeouts through the pooler: another client holds the lease row (both are
            # 2 s; whichever PostgreSQL checks first cancels the renewal).
            with postgres.connect(dbname) as blocker:
                blocker.execute("SELECT * FROM controller_lease FOR UPDATE")
                t = time.monotonic()
                with pytest.raises(OperationalError, match="(statement|lock) timeout"):
                    a.renew(3)
                took = time.monotonic() - t
                blocker.rollback()
            assert 1.5 < took < 5, took
            assert a.renew(3)  # the pool is usable again afterwards
            # Server connections swap under a client: one client's transaction holds server
            # connection S1 while a's renewals run (and, were they prepared, prepare) on S2;
            # when S1 is free again PgBouncer hands it to a's client first (LIFO).
            with engine.connect() as other:
                other.execute(text("SELECT 1"))
                for _ in range(8):
                    assert a.renew(3)
                other.commit()
            for _ in range(8):
                assert a.renew(3)
        finally:
            engine.dispose()
        # The app's engine: its advisory lock and the same statement, run many times.
        app_db = Database(pooled)
        try:
            for _ in range(20):
                with app_db.session() as s:
                    assert s.execute(text("SELECT count(*) FROM controller_lease")).scalar_one() == 1
        finally:
            app_db.dispose()
        assert "prepared statement" not in pgb.log()
