"""instance.reboot_pending: a shutoff seen while a reboot is under way is not a guest shutdown

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 22:35:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('instance', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reboot_pending', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('instance', schema=None) as batch_op:
        batch_op.drop_column('reboot_pending')
