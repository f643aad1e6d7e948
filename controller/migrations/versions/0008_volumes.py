"""volumes: EBS-style volumes and their attachments to instances (additive: no existing table
changes)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 23:45:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import controller.db


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('volume',
    sa.Column('volume_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('size_gib', sa.Integer(), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('snapshot_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('availability_zone', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('tags', sa.JSON(), nullable=False),
    sa.Column('client_token', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('created_at', controller.db.UtcDateTime(), nullable=False),
    sa.Column('updated_at', controller.db.UtcDateTime(), nullable=False),
    sa.Column('deleted_at', controller.db.UtcDateTime(), nullable=True),
    sa.Column('modification_state', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
    sa.Column('generation', sa.Integer(), nullable=False),
    sa.Column('acked_generation', sa.Integer(), nullable=False),
    sa.Column('observed_size_bytes', sa.BigInteger(), nullable=True),
    sa.Column('source_host', sqlmodel.sql.sqltypes.AutoString(length=253), nullable=True),
    sa.Column('source_port', sa.Integer(), nullable=True),
    sa.Column('source_export', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('observed_error', sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['account.account_id'], ),
    sa.PrimaryKeyConstraint('volume_id')
    )
    with op.batch_alter_table('volume', schema=None) as batch_op:
        batch_op.create_index('ix_volume_account_created', ['account_id', 'created_at', 'volume_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_volume_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_volume_state'), ['state'], unique=False)

    op.create_table('volume_attachment',
    sa.Column('volume_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('instance_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('device', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('delete_on_termination', sa.Boolean(), nullable=False),
    sa.Column('force_detach', sa.Boolean(), nullable=False),
    sa.Column('attach_time', controller.db.UtcDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['instance_id'], ['instance.instance_id'], ),
    sa.ForeignKeyConstraint(['volume_id'], ['volume.volume_id'], ),
    sa.PrimaryKeyConstraint('volume_id'),
    sa.UniqueConstraint('instance_id', 'device', name='uq_volume_attachment_device')
    )
    with op.batch_alter_table('volume_attachment', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_volume_attachment_instance_id'), ['instance_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('volume_attachment', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_volume_attachment_instance_id'))

    op.drop_table('volume_attachment')
    with op.batch_alter_table('volume', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_volume_state'))
        batch_op.drop_index(batch_op.f('ix_volume_account_id'))
        batch_op.drop_index('ix_volume_account_created')

    op.drop_table('volume')
