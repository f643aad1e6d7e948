"""The change feed (controller/change_feed.py) behind PgBouncer (Debian's pgbouncer), in front
of the throw-away PostgreSQL of tests/functional/pg.py. Each test starts its own pgbouncer:
config, unix socket (no TCP listener at all), log and PID file in a private directory, the
process started and ended by its PID.
- pool_mode=session: the feed works through the pooler: two controllers' apps on the pooled
  URL, a launch through the non-leader reaches the leader's agent within 2 s while the leader's
  periodic tick is 30 s (as tests/functional/test_change_feed.py does on PostgreSQL directly);
  the listener's self-test is heard, so nothing is logged.
- pool_mode=transaction: LISTEN cannot work (its server connection goes back to the pool).
  The listener's probe is not heard: it logs the LISTEN_BROKEN warning once, wakes the
  reconciler once and falls back to the periodic tick; another controller's notification
  through the same pooler then wakes nothing for a whole window. The same listener code on a
  session pool hears the same notification (the positive control).
Skipped without PostgreSQL or pgbouncer.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from controller import change_feed
from tests.functional.pg import SERVER_USER, postgres  # noqa: F401 (fixture)
from tests.functional.test_change_feed import _leads, _listeners, _pair, _placed_after_launch

pytestmark = pytest.mark.slow

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
#: Only names the unix socket (.s.PGSQL.6432 in the private directory): no TCP listener.
PORT = 6432


class PgBouncer:
    """One pgbouncer process in front of `server` (a tests/functional/pg.py PostgresServer).
    Runs as the PostgreSQL server's OS user (pgbouncer refuses root; that user can open the
    server's 0700 socket directory), everything in a private 0700 directory."""

    def __init__(self, server, pool_mode: str):
        self.server, self.pool_mode = server, pool_mode
        self.dir = Path(tempfile.mkdtemp(prefix="kumo-pgb-"))  # short: socket path limit
        self.proc: subprocess.Popen | None = None

    def start(self) -> "PgBouncer":
        user = SERVER_USER if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        (self.dir / "userlist.txt").write_text('"postgres" ""\n')
        (self.dir / "pgbouncer.ini").write_text(f"""\
[databases]
* = host={self.server.sockdir} user=postgres

[pgbouncer]
listen_addr =
listen_port = {PORT}
unix_socket_dir = {self.dir}
unix_socket_mode = 0700
auth_type = trust
auth_file = {self.dir}/userlist.txt
pool_mode = {self.pool_mode}
default_pool_size = 40
max_client_conn = 200
logfile = {self.dir}/pgbouncer.log
; No ignore_startup_parameters: Kumo's engines send no `options` (PgBouncer 1.18 refuses it);
; tests/functional/test_lease_pgbouncer.py checks that a client sending one is refused here.
pidfile =
""")
        if os.geteuid() == 0:
            pw = pwd.getpwnam(user)
            for p in [self.dir, *self.dir.iterdir()]:
                os.chown(p, pw.pw_uid, pw.pw_gid)
        os.chmod(self.dir, 0o700)
        argv = [PGBOUNCER, "-q", str(self.dir / "pgbouncer.ini")]
        if os.geteuid() == 0:
            argv[1:1] = ["-u", user]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 15
        while not (self.dir / f".s.PGSQL.{PORT}").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = self.log()
                self.stop()
                raise RuntimeError(f"pgbouncer did not start: {log}")
            time.sleep(0.05)
        return self

    def log(self) -> str:
        p = self.dir / "pgbouncer.log"
        return p.read_text(errors="replace")[-3000:] if p.exists() else ""

    def url(self, pg_url: str) -> str:
        """`pg_url` (a database of the server) through this pooler."""
        dbname = pg_url.split("@/", 1)[1].split("?", 1)[0]
        return f"postgresql+psycopg://postgres@/{dbname}?host={self.dir}&port={PORT}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # pgbouncer: SIGINT = safe shutdown
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # our own child, by its PID
                self.proc.wait(timeout=10)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def bouncer(server, pool_mode: str):
    if not os.access(PGBOUNCER, os.X_OK):
        pytest.skip("pgbouncer is not installed (Debian package `pgbouncer`)")
    b = PgBouncer(server, pool_mode).start()
    try:
        yield b
    finally:
        b.stop()


def _broken_warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == change_feed.__name__
            and r.msg is change_feed.LISTEN_BROKEN]


def test_session_pooling_carries_the_feed(postgres, tmp_path, caplog):  # noqa: F811
    url = postgres.create_database(prefix="pgb_session")
    caplog.set_level(logging.WARNING, logger=change_feed.__name__)
    with bouncer(postgres, "session") as pgb, _pair(tmp_path, pgb.url(url)) as (a, b):
        assert _listeners(url) == 1  # the leader's, seen on the server behind the pooler
        took = _placed_after_launch(a, b, timeout=5)
        assert took is not None and took < 2.0, (took, pgb.log())
        assert _leads(a) and _broken_warnings(caplog) == []
        print(f"through pgbouncer (session): non-leader 201 -> leader's PUT "
              f"{took * 1000:.0f} ms (reconcile interval 30 s)")


async def _listen_then_notify(url: str, window_s: float) -> tuple[int, int, bool]:
    """Run the listener on `url` until its self-test is decided (a warning, or 1 s quiet after
    its connect wake-up), then send another controller's notification through `url`: the
    wake-ups before it, the wake-ups within `window_s` after it, whether the task still runs."""
    wakes = 0

    def wake() -> None:
        nonlocal wakes
        wakes += 1

    task = asyncio.create_task(change_feed.listen(
        url, wake, "ctl-leader", probe_timeout_s=2.0, recheck_s=600.0))
    try:
        deadline = time.monotonic() + 15
        while wakes == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(2.5)  # past the probe's timeout: the self-test is decided
        before = wakes
        async with await psycopg.AsyncConnection.connect(
                change_feed.conninfo(url), autocommit=True) as other:
            await other.execute("SELECT pg_notify(%s, %s)", (change_feed.CHANNEL, "ctl-other"))
        await asyncio.sleep(window_s)
        return before, wakes - before, not task.done()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_transaction_pooling_is_detected_and_falls_back_to_the_tick(
        postgres, tmp_path, caplog):  # noqa: F811
    url = postgres.create_database(prefix="pgb_tx")
    caplog.set_level(logging.INFO, logger=change_feed.__name__)
    # Positive control: the same listener on a session pool hears the other's notification.
    with bouncer(postgres, "session") as pgb:
        before, after, running = asyncio.run(_listen_then_notify(pgb.url(url), 1.5))
    assert (before, running) == (1, True) and after == 1, (before, after)
    assert _broken_warnings(caplog) == []
    with bouncer(postgres, "transaction") as pgb:
        before, after, running = asyncio.run(_listen_then_notify(pgb.url(url), 3.0))
        assert running, pgb.log()
    # It said so, once, naming the pooler's socket and the fix, and woke the reconciler once
    # (the fallback's catch-up); the other controller's notification woke nothing.
    [warned] = _broken_warnings(caplog)
    text = warned.getMessage()
    assert warned.levelno == logging.WARNING
    assert "pool_mode=session" in text and str(PORT) in text and "periodic tick" in text
    assert (before, after) == (1, 0), (before, after)
