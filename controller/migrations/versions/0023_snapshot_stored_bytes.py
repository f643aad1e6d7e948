"""snapshot stored bytes: Snapshot.stored_bytes, what the storage node measured a snapshot to
store when it completed (issue 13: snapshots are billed by their stored size, not their
volume's). Additive: a nullable 64-bit column; rows from before keep NULL, and are billed by
volume_size_gib as they were (controller/services/metering.py).

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-06 17:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0023'
down_revision = '0022'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('snapshot', schema=None) as batch_op:
        batch_op.add_column(sa.Column('stored_bytes', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('snapshot', schema=None) as batch_op:
        batch_op.drop_column('stored_bytes')
