"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-26 22:13:03.172786
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import controller.db


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('account',
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('is_admin', sa.Boolean(), nullable=False),
    sa.Column('api_key_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('created_at', controller.db.UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('account_id')
    )
    with op.batch_alter_table('account', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_account_api_key_hash'), ['api_key_hash'], unique=True)
        batch_op.create_index(batch_op.f('ix_account_name'), ['name'], unique=True)

    op.create_table('event',
    sa.Column('event_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('time', controller.db.UtcDateTime(), nullable=False),
    sa.Column('resource_type', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('resource_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('from_state', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('to_state', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=True),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('seq'),
    sa.UniqueConstraint('event_id')
    )
    with op.batch_alter_table('event', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_event_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_event_resource_id'), ['resource_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_event_resource_type'), ['resource_type'], unique=False)
        batch_op.create_index(batch_op.f('ix_event_time'), ['time'], unique=False)

    op.create_table('host',
    sa.Column('host_id', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('hypervisor', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('architecture', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('vcpus', sa.Integer(), nullable=False),
    sa.Column('memory_mib', sa.Integer(), nullable=False),
    sa.Column('disk_bytes', sa.BigInteger(), nullable=False),
    sa.Column('versions', sa.JSON(), nullable=False),
    sa.Column('last_heartbeat', controller.db.UtcDateTime(), nullable=True),
    sa.Column('agent_url', sqlmodel.sql.sqltypes.AutoString(length=4096), nullable=False),
    sa.Column('contract', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('net_index', sa.Integer(), nullable=False),
    sa.Column('created_at', controller.db.UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('host_id'),
    sa.UniqueConstraint('net_index')
    )
    op.create_table('instance_type',
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('vcpus', sa.Integer(), nullable=False),
    sa.Column('memory_mib', sa.Integer(), nullable=False),
    sa.Column('hourly_price', sa.Float(), nullable=False),
    sa.Column('retired', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('client_token',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('token', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('request_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('reservation_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('created_at', controller.db.UtcDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['account.account_id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('account_id', 'token', name='uq_client_token')
    )
    op.create_table('image',
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('public', sa.Boolean(), nullable=False),
    sa.Column('architecture', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('format', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('ready_marker', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('min_ram_mib', sa.Integer(), nullable=False),
    sa.Column('description', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
    sa.Column('image_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('owner_account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('path', sqlmodel.sql.sqltypes.AutoString(length=4096), nullable=False),
    sa.Column('virtual_size', sa.BigInteger(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('created_at', controller.db.UtcDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['owner_account_id'], ['account.account_id'], ),
    sa.PrimaryKeyConstraint('image_id')
    )
    with op.batch_alter_table('image', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_image_name'), ['name'], unique=False)
        batch_op.create_index(batch_op.f('ix_image_owner_account_id'), ['owner_account_id'], unique=False)

    op.create_table('instance',
    sa.Column('instance_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('reservation_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('image_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('instance_type', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('vcpus', sa.Integer(), nullable=False),
    sa.Column('memory_mib', sa.Integer(), nullable=False),
    sa.Column('root_disk_gib', sa.Integer(), nullable=False),
    sa.Column('key_name', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('tags', sa.JSON(), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('instance_status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('system_status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('host_id', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=True),
    sa.Column('launch_time', controller.db.UtcDateTime(), nullable=True),
    sa.Column('private_ip', sqlmodel.sql.sqltypes.AutoString(length=45), nullable=True),
    sa.Column('mac', sqlmodel.sql.sqltypes.AutoString(length=17), nullable=True),
    sa.Column('hostname', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=True),
    sa.Column('client_token', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('created_at', controller.db.UtcDateTime(), nullable=False),
    sa.Column('updated_at', controller.db.UtcDateTime(), nullable=False),
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('state_reason_code', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('state_reason_message', sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=True),
    sa.Column('user_data_b64', sqlmodel.sql.sqltypes.AutoString(length=32768), nullable=False),
    sa.Column('ssh_public_key', sqlmodel.sql.sqltypes.AutoString(length=16384), nullable=True),
    sa.Column('generation', sa.Integer(), nullable=False),
    sa.Column('acked_generation', sa.Integer(), nullable=False),
    sa.Column('power', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('reboot_nonce', sa.Integer(), nullable=False),
    sa.Column('last_pushed_at', controller.db.UtcDateTime(), nullable=True),
    sa.Column('state_deadline', controller.db.UtcDateTime(), nullable=True),
    sa.Column('status_deadline', controller.db.UtcDateTime(), nullable=True),
    sa.Column('observed_power', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
    sa.Column('observed_booted', sa.Boolean(), nullable=False),
    sa.Column('observed_boot_count', sa.Integer(), nullable=False),
    sa.Column('reboot_boot_count', sa.Integer(), nullable=False),
    sa.Column('observed_error', sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=True),
    sa.Column('terminated_at', controller.db.UtcDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['account.account_id'], ),
    sa.PrimaryKeyConstraint('instance_id')
    )
    with op.batch_alter_table('instance', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_instance_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_instance_host_id'), ['host_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_instance_reservation_id'), ['reservation_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_instance_state'), ['state'], unique=False)

    op.create_table('key_pair',
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('key_pair_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('fingerprint', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('key_type', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('public_key', sqlmodel.sql.sqltypes.AutoString(length=16384), nullable=False),
    sa.Column('created_at', controller.db.UtcDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['account.account_id'], ),
    sa.PrimaryKeyConstraint('key_pair_id'),
    sa.UniqueConstraint('account_id', 'name', name='uq_key_pair_account_name')
    )
    with op.batch_alter_table('key_pair', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_key_pair_account_id'), ['account_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('key_pair', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_key_pair_account_id'))

    op.drop_table('key_pair')
    with op.batch_alter_table('instance', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_instance_state'))
        batch_op.drop_index(batch_op.f('ix_instance_reservation_id'))
        batch_op.drop_index(batch_op.f('ix_instance_host_id'))
        batch_op.drop_index(batch_op.f('ix_instance_account_id'))

    op.drop_table('instance')
    with op.batch_alter_table('image', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_image_owner_account_id'))
        batch_op.drop_index(batch_op.f('ix_image_name'))

    op.drop_table('image')
    op.drop_table('client_token')
    op.drop_table('instance_type')
    op.drop_table('host')
    with op.batch_alter_table('event', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_event_time'))
        batch_op.drop_index(batch_op.f('ix_event_resource_type'))
        batch_op.drop_index(batch_op.f('ix_event_resource_id'))
        batch_op.drop_index(batch_op.f('ix_event_account_id'))

    op.drop_table('event')
    with op.batch_alter_table('account', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_account_name'))
        batch_op.drop_index(batch_op.f('ix_account_api_key_hash'))

    op.drop_table('account')
