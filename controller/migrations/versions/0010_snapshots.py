"""snapshots: EBS-style snapshots of volumes (additive: no existing table changes)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 00:30:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import controller.db


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('snapshot',
    sa.Column('snapshot_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('volume_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('volume_size_gib', sa.Integer(), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('progress', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('description', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('tags', sa.JSON(), nullable=False),
    sa.Column('start_time', controller.db.UtcDateTime(), nullable=False),
    sa.Column('created_at', controller.db.UtcDateTime(), nullable=False),
    sa.Column('updated_at', controller.db.UtcDateTime(), nullable=False),
    sa.Column('deleted_at', controller.db.UtcDateTime(), nullable=True),
    sa.Column('observed_error', sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['account.account_id'], ),
    sa.PrimaryKeyConstraint('snapshot_id')
    )
    with op.batch_alter_table('snapshot', schema=None) as batch_op:
        batch_op.create_index('ix_snapshot_account_created', ['account_id', 'created_at', 'snapshot_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_snapshot_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_snapshot_state'), ['state'], unique=False)
        batch_op.create_index(batch_op.f('ix_snapshot_volume_id'), ['volume_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('snapshot', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_snapshot_volume_id'))
        batch_op.drop_index(batch_op.f('ix_snapshot_state'))
        batch_op.drop_index(batch_op.f('ix_snapshot_account_id'))
        batch_op.drop_index('ix_snapshot_account_created')

    op.drop_table('snapshot')
