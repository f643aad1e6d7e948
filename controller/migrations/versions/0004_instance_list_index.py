"""instance (account_id, created_at, instance_id) index: describe pages by keyset in SQL

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 23:20:00
"""
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_instance_account_created', 'instance',
                    ['account_id', 'created_at', 'instance_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_instance_account_created', table_name='instance')
