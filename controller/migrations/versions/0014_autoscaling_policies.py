"""autoscaling policies: target tracking scaling policies and scheduled actions of Auto Scaling
groups (additive: no existing table changes)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 03:53:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import controller.db


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('scaling_policy',
    sa.Column('policy_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('group_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('policy_type', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('metric_type', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('target_value', sa.Float(), nullable=False),
    sa.Column('disable_scale_in', sa.Boolean(), nullable=False),
    sa.Column('estimated_instance_warmup', sa.Integer(), nullable=True),
    sa.Column('scale_in_period', sa.Integer(), nullable=True),
    sa.Column('below_since', controller.db.UtcDateTime(), nullable=True),
    sa.Column('created_at', controller.db.UtcDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['group_id'], ['autoscaling_group.group_id'], ),
    sa.PrimaryKeyConstraint('policy_id'),
    sa.UniqueConstraint('group_id', 'name', name='uq_scaling_policy_name')
    )
    with op.batch_alter_table('scaling_policy', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_scaling_policy_group_id'), ['group_id'], unique=False)

    op.create_table('scheduled_action',
    sa.Column('action_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('group_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('recurrence', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('time_zone', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('start_time', controller.db.UtcDateTime(), nullable=True),
    sa.Column('end_time', controller.db.UtcDateTime(), nullable=True),
    sa.Column('min_size', sa.Integer(), nullable=True),
    sa.Column('max_size', sa.Integer(), nullable=True),
    sa.Column('desired_capacity', sa.Integer(), nullable=True),
    sa.Column('last_occurrence', controller.db.UtcDateTime(), nullable=True),
    sa.Column('created_at', controller.db.UtcDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['group_id'], ['autoscaling_group.group_id'], ),
    sa.PrimaryKeyConstraint('action_id'),
    sa.UniqueConstraint('group_id', 'name', name='uq_scheduled_action_name')
    )
    with op.batch_alter_table('scheduled_action', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_scheduled_action_group_id'), ['group_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('scheduled_action', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_scheduled_action_group_id'))

    op.drop_table('scheduled_action')
    with op.batch_alter_table('scaling_policy', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_scaling_policy_group_id'))

    op.drop_table('scaling_policy')
