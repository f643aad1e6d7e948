"""A throw-away PostgreSQL server for tests: `initdb` into a private temporary directory, a
postmaster listening ONLY on a unix socket in another private temporary directory (no TCP at
all), one fresh database per test, and a stop that always runs (pg_ctl stop, then the
postmaster's PID from postmaster.pid as a last resort).

PostgreSQL refuses to run as root, so when the tests run as root the server runs as the
`postgres` OS user (which owns both directories). Clients connect over the socket as the
PostgreSQL superuser `postgres` with `trust` auth; only root and `postgres` can reach the socket
(its directory is 0700).
"""
from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

SERVER_USER = "postgres"
_BINDIRS = Path("/usr/lib/postgresql")


def find_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/<v>/bin with initdb, pg_ctl and postgres (or
    $KUMO_TEST_PG_BINDIR)."""
    candidates = []
    if os.environ.get("KUMO_TEST_PG_BINDIR"):
        candidates.append(Path(os.environ["KUMO_TEST_PG_BINDIR"]))
    if _BINDIRS.is_dir():
        versions = sorted((p for p in _BINDIRS.iterdir() if re.fullmatch(r"\d+", p.name)),
                          key=lambda p: int(p.name), reverse=True)
        candidates += [v / "bin" for v in versions]
    for d in candidates:
        if all(os.access(d / b, os.X_OK) for b in ("initdb", "pg_ctl", "postgres")):
            return d
    return None


def why_unavailable() -> str | None:
    """None when a server can be started here, else the reason (for pytest.skip)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip extra `postgres`: psycopg[binary])"
    if find_bindir() is None:
        return "PostgreSQL server binaries not found (Debian package `postgresql`)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"running as root but there is no {SERVER_USER!r} OS user to run the server"
    return None


class PostgresServer:
    """One postmaster on a unix socket. Use as a context manager, or start()/stop()."""

    def __init__(self, bindir: Path | None = None):
        self.bindir = bindir or find_bindir()
        if self.bindir is None:
            raise RuntimeError("PostgreSQL server binaries not found")
        self.base: Path | None = None
        self.sockdir: Path | None = None
        self._dbs = 0

    # -- paths ----------------------------------------------------------------------------------
    @property
    def datadir(self) -> Path:
        return self.base / "data"

    @property
    def logfile(self) -> Path:
        return self.base / "server.log"

    # -- process control ------------------------------------------------------------------------
    def _as_server_user(self) -> tuple[list[str], int | None, int | None]:
        if os.geteuid() != 0:
            return [], None, None
        pw = pwd.getpwnam(SERVER_USER)
        return ["runuser", "-u", SERVER_USER, "--"], pw.pw_uid, pw.pw_gid

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        prefix, _, _ = self._as_server_user()
        # runuser keeps the environment; PGDATA etc. are never consulted since -D is explicit.
        return subprocess.run(prefix + list(args), capture_output=True, text=True,
                              timeout=timeout, check=False, cwd=self.base)

    def start(self) -> "PostgresServer":
        _, uid, gid = self._as_server_user()
        # Short paths: a unix socket path must fit in ~107 bytes.
        self.base = Path(tempfile.mkdtemp(prefix="kumo-pg-"))
        self.sockdir = Path(tempfile.mkdtemp(prefix="kumo-pgs-"))
        for d in (self.base, self.sockdir):
            os.chmod(d, 0o700)
            if uid is not None:
                os.chown(d, uid, gid)
        try:
            r = self._run(str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", "postgres",
                          "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync")
            if r.returncode != 0:
                raise RuntimeError(f"initdb failed: {r.stdout}{r.stderr}")
            # Settings go into the config file (not a shell-quoted -o string). No TCP listener
            # at all: listen_addresses is empty; the socket lives in our private directory.
            # Durability is irrelevant for a throw-away test server.
            conf = {"listen_addresses": "''", "unix_socket_directories": f"'{self.sockdir}'",
                    "unix_socket_permissions": "0700", "fsync": "off",
                    "synchronous_commit": "off", "full_page_writes": "off",
                    "max_connections": "200", "shared_buffers": "32MB"}
            with open(self.datadir / "postgresql.auto.conf", "a") as f:
                f.writelines(f"{k} = {v}\n" for k, v in conf.items())
            r = self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir),
                          "-l", str(self.logfile), "-w", "-t", "60", "start", timeout=90)
            if r.returncode != 0:
                log = self.logfile.read_text() if self.logfile.exists() else ""
                raise RuntimeError(f"pg_ctl start failed: {r.stdout}{r.stderr}\n{log}")
        except BaseException:
            self.stop()
            raise
        return self

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError, TypeError):
            return None

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its directories. Safe to call twice."""
        if self.base is None:
            return
        pid = self.postmaster_pid()
        if pid is not None:
            r = self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast",
                          "-w", "-t", "30", "stop", timeout=60)
            if r.returncode != 0 or _alive(pid):
                _kill(pid)
        shutil.rmtree(self.base, ignore_errors=True)
        shutil.rmtree(self.sockdir, ignore_errors=True)
        self.base = self.sockdir = None

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- databases --------------------------------------------------------------------------------
    def url(self, dbname: str) -> str:
        """SQLAlchemy URL (psycopg 3 over the unix socket)."""
        return f"postgresql+psycopg://postgres@/{dbname}?host={self.sockdir}"

    def connect(self, dbname: str = "postgres", **kw):
        import psycopg
        return psycopg.connect(host=str(self.sockdir), user="postgres", dbname=dbname, **kw)

    def create_database(self, prefix: str = "kumo", icu_locale: str | None = None) -> str:
        """A new empty database; returns its SQLAlchemy URL. `icu_locale` (e.g. "en-US") gives
        it a linguistic collation instead of the server's byte order ("C")."""
        from psycopg import sql
        self._dbs += 1
        name = f"{prefix}_{self._dbs}"
        stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if icu_locale:
            stmt += sql.SQL(" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE {}").format(
                sql.Literal(icu_locale))
        with self.connect(autocommit=True) as conn:
            conn.execute(stmt)
        return self.url(name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill(pid: int) -> None:
    """Last resort: the postmaster by its PID (SIGQUIT = immediate shutdown, then SIGKILL)."""
    for sig, wait in ((signal.SIGQUIT, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.05)


@pytest.fixture(scope="module")
def postgres():
    """A throw-away server for one test module, skipped where none can run. Import it into the
    module (`from tests.functional.pg import postgres  # noqa: F401 (fixture)`)."""
    reason = why_unavailable()
    if reason:
        pytest.skip(f"PostgreSQL tests need a server and a driver: {reason}")
    with PostgresServer() as server:
        yield server
