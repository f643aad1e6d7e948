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
- Each (re)connected listener first proves that notifications reach it: it sends a probe
  (`pg_notify` with a `probe:` payload) from a second, short-lived connection and waits up to
  `probe_timeout_s` to hear it. A pooler that does not keep one server session per client
  (PgBouncer's pool_mode=transaction or statement) runs LISTEN on a server connection that goes
  back to the pool right after, so nothing is ever heard. Kumo then says so once, as a warning
  (LISTEN_BROKEN below), leaves that connection (UNLISTEN, close) and falls back to the periodic
  tick; it probes again every `recheck_s`, and logs when the feed works again. Probes are never
  taken for changes (no wake-up) by any controller.

Nothing here on SQLite: one controller per database, whose on_change listener is enough.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
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


#: Payload prefix of the listener's self-test notifications (never a change).
PROBE_PREFIX = "probe:"
#: Logged (WARNING) when a probe is not heard: operators grep for it.
LISTEN_BROKEN = ("change feed: LISTEN %s receives no notifications (its probe was not heard "
                 "within %.1f s): through PgBouncer that is pool_mode=transaction or statement, "
                 "which do not keep LISTEN's server session; use pool_mode=session for the "
                 "controllers' database (docs/operations.md). Falling back to the periodic "
                 "tick: writes through other controllers reach the leader's reconciler within "
                 "KUMO_RECONCILE_INTERVAL_S; probing again every %.0f s")


async def _send_probe(url: str, payload: str) -> None:
    """NOTIFY from another connection, as another controller's commit would."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(
            conninfo(url), autocommit=True, application_name=APPLICATION_NAME + "-probe",
            connect_timeout=10) as conn:
        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))


async def _heard_probe(conn, payload: str, timeout_s: float, wake: Callable[[], None],
                       own_id: str) -> bool:
    """Wait up to timeout_s for `payload` on `conn`; other controllers' changes heard meanwhile
    still wake the reconciler."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (left := deadline - loop.time()) > 0:
        async for note in conn.notifies(timeout=left):
            if note.payload == payload:
                return True
            if not note.payload.startswith(PROBE_PREFIX) and note.payload != own_id:
                wake()
    return False


async def listen(url: str, wake: Callable[[], None], own_id: str, *,
                 backoff_s: float = 0.5, max_backoff_s: float = 10.0,
                 idle_probe_s: float = 15.0, probe_timeout_s: float = 5.0,
                 recheck_s: float = 300.0) -> None:
    """LISTEN on `url` until cancelled, calling wake() on each notification whose payload is
    not `own_id`, and once after each (re)connect. Never returns; cancel it to stop.
    Where notifications cannot arrive (a transaction-pooling PgBouncer) it warns once, wakes
    the reconciler and checks again every `recheck_s` (the periodic tick does the rest)."""
    import psycopg

    delay = backoff_s
    broken = False  # the last probe was not heard (warned)
    while True:
        conn = None
        pause = None  # after a probe that was not heard: recheck_s instead of the backoff
        try:
            conn = await psycopg.AsyncConnection.connect(
                conninfo(url), autocommit=True, application_name=APPLICATION_NAME,
                connect_timeout=10)
            await conn.execute(f"LISTEN {CHANNEL}")
            probe = f"{PROBE_PREFIX}{own_id}:{secrets.token_hex(6)}"
            await _send_probe(url, probe)
            delay = backoff_s
            wake()  # whatever was committed while nobody listened
            if not await _heard_probe(conn, probe, probe_timeout_s, wake, own_id):
                if not broken:
                    log.warning(LISTEN_BROKEN, _where(url), probe_timeout_s, recheck_s)
                broken = True
                # Best effort: a pooled server connection would keep the LISTEN otherwise.
                await conn.execute(f"UNLISTEN {CHANNEL}")
                pause = recheck_s
            else:
                if broken:
                    log.warning("change feed: notifications reach the listener again (%s): "
                                "writes through other controllers wake the leader at once",
                                _where(url))
                    broken = False
                while True:
                    got = False
                    async for note in conn.notifies(timeout=idle_probe_s):
                        got = True
                        if note.payload != own_id and \
                                not note.payload.startswith(PROBE_PREFIX):
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
        if pause is not None:
            await asyncio.sleep(pause)
        else:
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_backoff_s)


def _where(url: str) -> str:
    """host/port/database of `url` for a log line (never the password)."""
    from sqlalchemy.engine import make_url
    u = make_url(url)
    host = u.query.get("host") or u.host or "localhost"
    port = u.query.get("port") or u.port or ""
    return f"on {host}{':' if port else ''}{port}/{u.database}"
