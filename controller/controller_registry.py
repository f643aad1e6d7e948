"""The registry of controller processes: each process keeps its own `controller_process` row
(id, hostname, pid, API URL, version, started_at, last_seen, last completed reconciler pass)
fresh, from the leadership loop (controller/leadership.py), on the lease's engine.

Rows of processes not seen for `forget_after_s` are deleted by whoever beats next, so a killed
controller stays visible (`kumo admin status` shows it as not alive) for a while, then goes.
"""
from __future__ import annotations

import logging
import os
import socket
from datetime import datetime, timedelta
from importlib import metadata

from sqlalchemy import delete, insert, update
from sqlalchemy.engine import Engine

from controller.lease import Clock, naive_utc
from controller.ids import utcnow
from controller.models.controller_lease import ControllerProcess

log = logging.getLogger(__name__)
_T = ControllerProcess.__table__


def kumo_version() -> str:
    try:
        return metadata.version("kumo")
    except metadata.PackageNotFoundError:
        return "unknown"


class Registry:
    """This process's row in the registry."""

    def __init__(self, engine: Engine, controller_id: str, api_url: str | None, *,
                 forget_after_s: float = 3600.0, clock: Clock = utcnow):
        self.engine, self.controller_id, self.api_url, self.clock = (engine, controller_id,
                                                                     api_url, clock)
        self.forget_after = timedelta(seconds=forget_after_s)
        self.started_at = clock()
        self._registered = False

    def beat(self, last_reconcile_at: datetime | None = None) -> None:
        """Insert our row the first time, refresh last_seen (and the last pass) after."""
        now = self.clock()
        values = {"last_seen": naive_utc(now)}
        if last_reconcile_at is not None:
            values["last_reconcile_at"] = naive_utc(last_reconcile_at)
        with self.engine.begin() as conn:
            if self._registered:
                found = conn.execute(update(_T).where(_T.c.controller_id == self.controller_id)
                                     .values(**values)).rowcount
                if found:
                    self._purge(conn, now)
                    return
            # First beat, or our row was forgotten (we were silent too long): (re)insert it.
            conn.execute(insert(_T).values(
                controller_id=self.controller_id, hostname=socket.gethostname(),
                pid=os.getpid(), api_url=self.api_url, version=kumo_version(),
                started_at=naive_utc(self.started_at), **values))
            self._purge(conn, now)
        self._registered = True

    def _purge(self, conn, now: datetime) -> None:
        conn.execute(delete(_T).where(_T.c.last_seen < naive_utc(now - self.forget_after),
                                      _T.c.controller_id != self.controller_id))

    def leave(self) -> None:
        """Remove our row (a clean shutdown)."""
        with self.engine.begin() as conn:
            conn.execute(delete(_T).where(_T.c.controller_id == self.controller_id))
