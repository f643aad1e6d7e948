"""What the single-migration tests share: moving a database to one revision (up or down) with
alembic, on the same configuration the controller uses (controller/db_migrate.py)."""
from __future__ import annotations

from alembic import command

from controller import db_migrate
from controller.db import Database


def migrate_to(db: Database, rev: str, down: bool = False) -> None:
    cfg = db_migrate.alembic_config(db.url)
    with db.engine.connect() as conn:
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, rev)
        conn.commit()
