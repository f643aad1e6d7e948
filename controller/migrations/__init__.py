"""Alembic schema migrations of the controller database (run at start by controller.db_migrate)."""
