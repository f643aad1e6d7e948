"""instance.metadata_options: the metadata service's options of each instance (issue 12)

NULL (every instance launched before this revision) means Kumo's defaults
(controller/services/instance_metadata.py DEFAULTS).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 06:30:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('instance', schema=None) as batch_op:
        batch_op.add_column(sa.Column('metadata_options', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('instance', schema=None) as batch_op:
        batch_op.drop_column('metadata_options')
