"""Controller backup and restore (issue 14, "Operations"; docs/deploy.md "Backup and restore").

A backup is one tar file made on the controller host while it runs:
- `manifest.json`: format, time, the database's kind and Alembic revision, the sha256 of every
  member, and the image store's metadata (each image file's name, size and sha256);
- the database: `kumo.db` (SQLite, copied with SQLite's online backup API: a consistent snapshot
  while the controller writes) or `kumo.pgdump` (PostgreSQL, `pg_dump --format=custom`, which is
  a consistent snapshot by itself);
- the controller's secrets from its state directory: the admin key, the cloud CA (without it no
  host's certificate would be trusted after a restore) and the metadata identity key;
- the image files themselves only with `include_images` (they can be large and are often on
  shared storage; the manifest lets a restore say which are missing).
Volumes and snapshots live on the storage node, which keeps them: the database holds their
metadata and is the part that must come back.

`restore` puts a backup onto a fresh controller (before its first start, or stopped): it refuses
a database that already has Kumo's tables unless `force`, checks every member's sha256 first,
then loads the database (SQLite file, or `pg_restore --clean`), writes the secrets (0600) and
reports image files it cannot find. The controller then starts as usual: it migrates a backup
of an older release, and the agents, which kept their guests, reconcile to it (an instance the
backup does not know is an orphan and goes; a newer spec generation on a host is superseded;
every host's network document is pushed again, so security group rules and ports made after
the backup leave the hosts: _renegotiate_networks).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from controller.settings import Settings

FORMAT = 1
#: Secrets in the state directory a restored controller must have (the files that exist).
STATE_FILES = ("admin.key", "cloud-ca.key", "cloud-ca.crt", "metadata-identity.key",
               "metadata-identity.crt")
IMAGES_DIR = "images"


class BackupError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class RestoreReport:
    database: str
    revision: str | None
    files: list[str] = field(default_factory=list)
    images_restored: list[str] = field(default_factory=list)
    images_missing: list[str] = field(default_factory=list)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _kind(url: str) -> str:
    return make_url(url).get_backend_name()  # "sqlite" | "postgresql"


def _libpq_url(url: str) -> str:
    """The SQLAlchemy URL as libpq takes it (pg_dump, pg_restore): without the +driver."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _pg_tool(name: str) -> str:
    """pg_dump/pg_restore: on PATH (postgresql-client), else Debian's newest server bindir."""
    found = shutil.which(name)
    if found:
        return found
    base = Path("/usr/lib/postgresql")
    versions = sorted((p for p in base.iterdir() if p.name.isdigit()),
                      key=lambda p: int(p.name), reverse=True) if base.is_dir() else []
    for v in versions:
        if os.access(v / "bin" / name, os.X_OK):
            return str(v / "bin" / name)
    raise BackupError("ToolMissing", f"{name} not found (apt-get install postgresql-client)")


def _revision(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()


def _run(argv: list[str], env: dict | None = None) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=3600)
    if r.returncode != 0:
        raise BackupError("DatabaseToolFailed",
                          f"{Path(argv[0]).name} exited {r.returncode}: {r.stderr.strip()[-500:]}")


def create(settings: Settings, out: Path, *, include_images: bool = False) -> dict:
    """Write a backup of the controller `settings` describe to `out`; its manifest."""
    url, state = settings.resolved_database_url(), Path(settings.state_dir)
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="kumo-backup-") as tmp_s:
        tmp = Path(tmp_s)
        members: dict[str, Path] = {}
        if _kind(url) == "sqlite":
            db_file = make_url(url).database
            members["kumo.db"] = tmp / "kumo.db"
            with sqlite3.connect(db_file) as src, sqlite3.connect(members["kumo.db"]) as dst:
                src.backup(dst)
        else:
            members["kumo.pgdump"] = tmp / "kumo.pgdump"
            _run([_pg_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges",
                  "--file", str(members["kumo.pgdump"]), "--dbname", _libpq_url(url)])
        for name in STATE_FILES:
            if (state / name).is_file():
                members[f"state/{name}"] = state / name
        images = []
        for img in sorted((state / IMAGES_DIR).glob("*")) if (state / IMAGES_DIR).is_dir() \
                else []:
            if img.is_file():
                images.append({"file": img.name, "size": img.stat().st_size,
                               "sha256": _sha256(img)})
                if include_images:
                    members[f"images/{img.name}"] = img
        manifest = {
            "format": FORMAT, "created_at": datetime.now(timezone.utc).isoformat(),
            "database": _kind(url), "revision": _revision(url),
            "members": {name: _sha256(path) for name, path in members.items()},
            "images": images, "images_included": include_images,
        }
        partial = out.with_name(out.name + ".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # secrets inside
        with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w") as tar:
            data = json.dumps(manifest, indent=2, sort_keys=True).encode()
            info = tarfile.TarInfo("manifest.json")
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
            for name, path in members.items():
                tar.add(path, arcname=name, recursive=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, out)
    return manifest


def _has_kumo_tables(url: str) -> bool:
    if _kind(url) == "sqlite" and not Path(make_url(url).database or "").is_file():
        return False  # a fresh controller: its file does not exist (and is not made here)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return inspect(conn).has_table("alembic_version")
    finally:
        engine.dispose()


def _renegotiate_networks(url: str) -> None:
    """Make every host's network document due again in the restored database.

    A host may have accepted documents after the backup (a security group rule, a port added):
    its generation is then above the one the backup recorded as acknowledged, and with nothing
    to push the restored controller would leave that newer firewall and dataplane in place.
    Unacknowledged, the document is pushed at the first tick; the agent answers StaleGeneration
    and the reconciler moves past the agent's generation (controller/reconciler.py
    _push_network), so the host ends with the backup's rules. (Instance specs need nothing:
    heartbeats report their generations and a newer one is superseded.)"""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            insp = inspect(conn)
            if insp.has_table("host") and "network_acked" in {
                    c["name"] for c in insp.get_columns("host")}:
                conn.execute(text("UPDATE host SET network_acked = 0"))
    finally:
        engine.dispose()


def restore(settings: Settings, backup: Path, *, force: bool = False) -> RestoreReport:
    """Put `backup` onto the (stopped or never started) controller `settings` describe."""
    url, state = settings.resolved_database_url(), Path(settings.state_dir)
    try:
        tar = tarfile.open(backup, mode="r")
    except (OSError, tarfile.TarError) as e:
        raise BackupError("BackupUnreadable", f"{backup}: {e}") from None
    with tar, tempfile.TemporaryDirectory(prefix="kumo-restore-") as tmp_s:
        tmp = Path(tmp_s)
        try:
            manifest = json.load(tar.extractfile("manifest.json"))
        except (KeyError, ValueError, AttributeError):
            raise BackupError("BackupUnreadable", f"{backup}: no valid manifest.json") from None
        if manifest.get("format") != FORMAT:
            raise BackupError("BackupFormat", f"backup format {manifest.get('format')!r}, "
                                              f"this release reads {FORMAT}")
        if manifest["database"] != _kind(url):
            raise BackupError("DatabaseKindMismatch", f"the backup holds a {manifest['database']}"
                              f" database; this controller uses {_kind(url)}")
        wanted = manifest["members"]
        for member in tar.getmembers():
            if member.name == "manifest.json":
                continue
            if member.name not in wanted or not member.isfile():
                raise BackupError("BackupUnreadable", f"unexpected member {member.name!r}")
            # Extracted by the manifest's name, never by a path from the archive.
            dest = tmp / hashlib.sha256(member.name.encode()).hexdigest()
            with tar.extractfile(member) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst)
            if _sha256(dest) != wanted[member.name]:
                raise BackupError("BackupCorrupt", f"{member.name}: sha256 mismatch")
        missing = [n for n in wanted if not (tmp / hashlib.sha256(n.encode()).hexdigest())
                   .exists()]
        if missing:
            raise BackupError("BackupCorrupt", f"members missing: {', '.join(missing)}")

        def staged(name: str) -> Path:
            return tmp / hashlib.sha256(name.encode()).hexdigest()

        if _has_kumo_tables(url) and not force:
            raise BackupError("DatabaseNotEmpty", "the controller's database already has Kumo's "
                                                  "tables: restore onto a fresh one (or force)")
        state.mkdir(parents=True, exist_ok=True)
        if manifest["database"] == "sqlite":
            db_file = Path(make_url(url).database)
            for suffix in ("-wal", "-shm"):
                Path(str(db_file) + suffix).unlink(missing_ok=True)
            shutil.copyfile(staged("kumo.db"), db_file)
        else:
            _run([_pg_tool("pg_restore"), "--clean", "--if-exists", "--no-owner",
                  "--no-privileges", "--exit-on-error", "--dbname", _libpq_url(url),
                  str(staged("kumo.pgdump"))])
        _renegotiate_networks(url)
        report = RestoreReport(database=manifest["database"], revision=manifest["revision"])
        for name in wanted:
            if name.startswith("state/"):
                dest = state / name.removeprefix("state/")
                fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as f, open(staged(name), "rb") as src:
                    shutil.copyfileobj(src, f)
                os.chmod(dest, 0o600)
                report.files.append(dest.name)
        images_dir = state / IMAGES_DIR
        images_dir.mkdir(exist_ok=True)
        for img in manifest["images"]:
            dest = images_dir / Path(img["file"]).name
            name = f"images/{img['file']}"
            if name in wanted:
                shutil.copyfile(staged(name), dest)
                report.images_restored.append(dest.name)
            elif not dest.is_file() or dest.stat().st_size != img["size"]:
                report.images_missing.append(dest.name)
    # The controller's own TLS certificate is issued again from the restored CA at start.
    (state / "controller-tls.pem").unlink(missing_ok=True)
    return report
