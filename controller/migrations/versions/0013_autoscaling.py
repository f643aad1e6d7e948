"""autoscaling: launch templates with their versions, Auto Scaling groups, their member instances
and their activity history (additive: no existing table changes)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 03:28:30.237097
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import controller.db


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('scaling_activity',
    sa.Column('activity_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('group_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('status_code', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('description', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('cause', sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=False),
    sa.Column('status_message', sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=True),
    sa.Column('instance_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('request', sa.JSON(), nullable=False),
    sa.Column('launch_template_version', sa.Integer(), nullable=True),
    sa.Column('start_time', controller.db.UtcDateTime(), nullable=False),
    sa.Column('end_time', controller.db.UtcDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('activity_id')
    )
    with op.batch_alter_table('scaling_activity', schema=None) as batch_op:
        batch_op.create_index('ix_scaling_activity_group_start', ['group_id', 'start_time', 'activity_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_scaling_activity_status_code'), ['status_code'], unique=False)

    op.create_table('autoscaling_group',
    sa.Column('group_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('launch_template_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('launch_template_version', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('min_size', sa.Integer(), nullable=False),
    sa.Column('max_size', sa.Integer(), nullable=False),
    sa.Column('desired_capacity', sa.Integer(), nullable=False),
    sa.Column('vpc_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('subnet_ids', sa.JSON(), nullable=False),
    sa.Column('health_check_grace_period', sa.Integer(), nullable=False),
    sa.Column('default_cooldown', sa.Integer(), nullable=False),
    sa.Column('default_instance_warmup', sa.Integer(), nullable=True),
    sa.Column('termination_policies', sa.JSON(), nullable=False),
    sa.Column('tags', sa.JSON(), nullable=False),
    sa.Column('new_instances_protected_from_scale_in', sa.Boolean(), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('launch_failures', sa.Integer(), nullable=False),
    sa.Column('launch_retry_at', controller.db.UtcDateTime(), nullable=True),
    sa.Column('last_scaling_at', controller.db.UtcDateTime(), nullable=True),
    sa.Column('created_at', controller.db.UtcDateTime(), nullable=False),
    sa.Column('updated_at', controller.db.UtcDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['account.account_id'], ),
    sa.PrimaryKeyConstraint('group_id'),
    sa.UniqueConstraint('account_id', 'name', name='uq_autoscaling_group_name')
    )
    with op.batch_alter_table('autoscaling_group', schema=None) as batch_op:
        batch_op.create_index('ix_autoscaling_group_account_created', ['account_id', 'created_at', 'group_id'], unique=False)

    op.create_table('launch_template',
    sa.Column('launch_template_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('default_version', sa.Integer(), nullable=False),
    sa.Column('latest_version', sa.Integer(), nullable=False),
    sa.Column('created_at', controller.db.UtcDateTime(), nullable=False),
    sa.Column('updated_at', controller.db.UtcDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['account.account_id'], ),
    sa.PrimaryKeyConstraint('launch_template_id'),
    sa.UniqueConstraint('account_id', 'name', name='uq_launch_template_name')
    )
    with op.batch_alter_table('launch_template', schema=None) as batch_op:
        batch_op.create_index('ix_launch_template_account_created', ['account_id', 'created_at', 'launch_template_id'], unique=False)

    op.create_table('autoscaling_instance',
    sa.Column('instance_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('group_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('lifecycle_state', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('health_status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('protected_from_scale_in', sa.Boolean(), nullable=False),
    sa.Column('subnet_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('launch_template_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('launch_template_version', sa.Integer(), nullable=False),
    sa.Column('launched_at', controller.db.UtcDateTime(), nullable=False),
    sa.Column('in_service_at', controller.db.UtcDateTime(), nullable=True),
    sa.Column('launch_activity_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('terminate_activity_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.ForeignKeyConstraint(['group_id'], ['autoscaling_group.group_id'], ),
    sa.PrimaryKeyConstraint('instance_id')
    )
    with op.batch_alter_table('autoscaling_instance', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_autoscaling_instance_group_id'), ['group_id'], unique=False)

    op.create_table('launch_template_version',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('launch_template_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('version_number', sa.Integer(), nullable=False),
    sa.Column('description', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.Column('created_at', controller.db.UtcDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['launch_template_id'], ['launch_template.launch_template_id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('launch_template_id', 'version_number', name='uq_launch_template_version')
    )


def downgrade() -> None:
    op.drop_table('launch_template_version')
    with op.batch_alter_table('autoscaling_instance', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_autoscaling_instance_group_id'))

    op.drop_table('autoscaling_instance')
    with op.batch_alter_table('launch_template', schema=None) as batch_op:
        batch_op.drop_index('ix_launch_template_account_created')

    op.drop_table('launch_template')
    with op.batch_alter_table('autoscaling_group', schema=None) as batch_op:
        batch_op.drop_index('ix_autoscaling_group_account_created')

    op.drop_table('autoscaling_group')
    with op.batch_alter_table('scaling_activity', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_scaling_activity_status_code'))
        batch_op.drop_index('ix_scaling_activity_group_start')

    op.drop_table('scaling_activity')
