"""Migration 0023 (Snapshot.stored_bytes, issue 13): snapshots from before it keep their rows
with stored_bytes NULL, which bills them by their volume's size as before (metering.snapshot_gib);
a measured size fits 64 bits; the downgrade drops the column and keeps the rows."""
from __future__ import annotations

from types import SimpleNamespace

from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from controller import db_migrate
from controller.db import Database
from tests.unit.migration_support import migrate_to as _to
from controller.services.metering import snapshot_gib

SID = "snap-0123456789abcdef0"


def test_0023_adds_a_nullable_stored_bytes_and_keeps_old_snapshots(tmp_path):
    db = Database(f"sqlite:///{tmp_path}/m.db")
    before = ScriptDirectory.from_config(db_migrate.alembic_config(db.url)) \
        .get_revision("0023").down_revision
    _to(db, before)
    with db.engine.begin() as c:
        c.execute(text("INSERT INTO account (account_id, name, is_admin, api_key_hash, created_at) "
                       "VALUES ('acct-1', 'a', 0, 'x', '2026-12-06 00:00:00')"))
        c.execute(text(
            "INSERT INTO snapshot (snapshot_id, account_id, volume_id, volume_size_gib, state, "
            "progress, description, tags, start_time, created_at, updated_at) VALUES "
            f"('{SID}', 'acct-1', 'vol-0123456789abcdef0', 100, 'completed', '100%', '', '{{}}', "
            "'2026-12-06 00:00:00', '2026-12-06 00:00:00', '2026-12-06 00:00:00')"))
    _to(db, "head")
    cols = {c["name"]: c for c in inspect(db.engine).get_columns("snapshot")}
    assert cols["stored_bytes"]["nullable"]
    with db.engine.begin() as c:
        stored, gib = c.execute(text("SELECT stored_bytes, volume_size_gib FROM snapshot")).one()
        assert stored is None
        assert snapshot_gib(SimpleNamespace(stored_bytes=stored, volume_size_gib=gib)) == 100
        c.execute(text(f"UPDATE snapshot SET stored_bytes = {5 << 40}"))  # > 32 bits
        assert c.execute(text("SELECT stored_bytes FROM snapshot")).scalar_one() == 5 << 40
    _to(db, before, down=True)
    assert "stored_bytes" not in {c["name"] for c in inspect(db.engine).get_columns("snapshot")}
    with db.engine.begin() as c:
        assert c.execute(text("SELECT snapshot_id, volume_size_gib FROM snapshot")).one() == (
            SID, 100)
    db.dispose()
