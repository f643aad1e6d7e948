"""instance.nocloud_seed, image.nocloud_seed, host.extensions (issue 12)

Every existing instance and image keeps its NoCloud seed (true). host.extensions is filled by
the host's next heartbeat; until then (empty) the controller sends its agent only the base
contract's fields.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06 10:00:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('instance', schema=None) as batch_op:
        batch_op.add_column(sa.Column('nocloud_seed', sa.Boolean(), nullable=False,
                                      server_default=sa.true()))
    with op.batch_alter_table('image', schema=None) as batch_op:
        batch_op.add_column(sa.Column('nocloud_seed', sa.Boolean(), nullable=False,
                                      server_default=sa.true()))
    with op.batch_alter_table('host', schema=None) as batch_op:
        batch_op.add_column(sa.Column('extensions', sa.JSON(), nullable=False,
                                      server_default='[]'))


def downgrade() -> None:
    with op.batch_alter_table('host', schema=None) as batch_op:
        batch_op.drop_column('extensions')
    with op.batch_alter_table('image', schema=None) as batch_op:
        batch_op.drop_column('nocloud_seed')
    with op.batch_alter_table('instance', schema=None) as batch_op:
        batch_op.drop_column('nocloud_seed')
