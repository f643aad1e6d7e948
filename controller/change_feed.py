"""The change feed between controllers on one PostgreSQL database (issue 14).

Every controller serves the API, but only the leader runs the reconciler (controller/
leadership.py). A write through the leader's own API wakes its reconciler at once
(Database.on_change); a write through another controller used to wait for the leader's next
periodic tick. This module closes that gap:

- Sending (controller/db.py, `Database.notify_on_commit`): in each transaction that wrote
  something and notifies (not the notify=False sessions: heartbeats, the reconciler's own
  bookkeeping), `SELECT pg_notify('kumo_changes', <controller id>)` runs just before COMMIT.
  PostgreSQL delivers a notification exactly when its transaction commits and never for one
  that rolls back, and folds identical ones within a transaction into one.
- Listening (`listen`, here): while a controller leads, one task in the leadership's loops
  holds one dedicated psycopg connection with `LISTEN kumo_changes` and calls `wake()` on each
  notification from another controller (its own writes already woke it locally). wake() only
  sets the reconciler's event, so a burst of notifications coalesces into one more tick.
  The task is cancelled with the other loops when leadership ends or the app stops, and its
  connection is closed then.
- A broken connection (server restart, network) is reopened with backoff, and the reconciler
  is woken once after each (re)connect: a notification may have been sent while nobody
  listened. A quiet connection is probed every `idle_probe_s` so a silently dead one is noticed.
  The periodic tick (reconcile_interval_s) stays the safety net for anything missed.

Nothing here on SQLite: one controller per database, whose on_change listener is enough.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

log = logging.getLogger(__name__)

CHANNEL = "kumo_changes"
#: Shown in pg_stat_activity.application_name (operators and tests find the listener by it).
APPLICATION_NAME = "kumo-change-feed"


def is_postgres(url: str) -> bool:
    return url.startswith("postgresql")


def conninfo(sqlalchemy_url: str) -> str:
    """A libpq connection string from the controller's SQLAlchemy URL
    (postgresql+psycopg://user:pw@host/db?host=/sock -> postgresql://user:pw@host/db?...)."""
    from sqlalchemy.engine import make_url
    url = make_url(sqlalchemy_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


async def listen(url: str, wake: Callable[[], None], own_id: str, *,
                 backoff_s: float = 0.5, max_backoff_s: float = 10.0,
                 idle_probe_s: float = 15.0) -> None:
    """LISTEN on `url` until cancelled, calling wake() on each notification whose payload is
    not `own_id`, and once after each (re)connect. Never returns; cancel it to stop."""
    import psycopg

    delay = backoff_s
    while True:
        conn = None
        try:
            conn = await psycopg.AsyncConnection.connect(
                conninfo(url), autocommit=True, application_name=APPLICATION_NAME,
                connect_timeout=10)
            await conn.execute(f"LISTEN {CHANNEL}")
            delay = backoff_s
            wake()  # whatever was committed while nobody listened
            while True:
                got = False
                async for note in conn.notifies(timeout=idle_probe_s):
                    got = True
                    if note.payload != own_id:
                        wake()
                if not got:
                    await conn.execute("SELECT 1")  # a dead connection raises here
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("change feed connection failed (%s); reconnecting in %.1f s", exc, delay)
        finally:
            if conn is not None:
                try:
                    await asyncio.shield(conn.close())
                except Exception:  # closing a broken connection: nothing more to do
                    pass  # (a cancel arriving here propagates: the task must stop when told)
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_backoff_s)
