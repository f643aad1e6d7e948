"""Migration 0011 (Volume.source_protocol): rows from before it keep their NBD source (NULL
protocol reads as nbd), RBD's longer "pool/image" exports fit, and the downgrade forgets RBD
sources rather than leave them to readers that would take them for NBD exports."""
from __future__ import annotations

from sqlalchemy import inspect, text

from controller.db import Database
from tests.unit.migration_support import migrate_to as _to

VID = "vol-0123456789abcdef0"


def test_0011_adds_a_nullable_protocol_and_keeps_old_rows(tmp_path):
    db = Database(f"sqlite:///{tmp_path}/m.db")
    _to(db, "0010")
    with db.engine.begin() as c:
        c.execute(text("INSERT INTO account (account_id, name, is_admin, api_key_hash, created_at) "
                       "VALUES ('acct-1', 'a', 0, 'x', '2026-12-06 00:00:00')"))
        c.execute(text(
            "INSERT INTO volume (volume_id, account_id, size_gib, state, "
            "availability_zone, tags, created_at, updated_at, generation, "
            "acked_generation, source_host, source_port, source_export) VALUES "
            f"('{VID}', 'acct-1', 1, 'in-use', 'kumo-1a', '{{}}', "
            "'2026-12-06 00:00:00', '2026-12-06 00:00:00', 1, 1, '100.64.0.250', 10809, "
            f"'{VID}')"))
    _to(db, "head")
    cols = {c["name"]: c for c in inspect(db.engine).get_columns("volume")}
    assert cols["source_protocol"]["nullable"]
    with db.engine.begin() as c:
        assert c.execute(text("SELECT source_protocol, source_export FROM volume")).one() == (
            None, VID)
        c.execute(text(f"UPDATE volume SET source_protocol = 'rbd', source_port = 6789, "
                       f"source_export = '{'p' * 127}/{VID}'"))
    _to(db, "0010", down=True)
    assert "source_protocol" not in {c["name"] for c in inspect(db.engine).get_columns("volume")}
    with db.engine.begin() as c:
        assert c.execute(text("SELECT source_host, source_export FROM volume")).one() == (
            None, None)
    db.dispose()
