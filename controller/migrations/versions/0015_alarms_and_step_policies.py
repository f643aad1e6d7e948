"""alarms and step policies: metric alarms with their history, and step / simple scaling
policies of Auto Scaling groups (additive: no existing table changes)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 06:06:34.820269
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import controller.db


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('alarm_history',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('alarm_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('alarm_name', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('ts', controller.db.UtcDateTime(), nullable=False),
    sa.Column('item_type', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('summary', sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('alarm_history', schema=None) as batch_op:
        batch_op.create_index('ix_alarm_history_alarm_ts', ['alarm_id', 'ts'], unique=False)

    op.create_table('metric_alarm',
    sa.Column('alarm_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('description', sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=True),
    sa.Column('namespace', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('metric_name', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('dimension_name', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('dimension_value', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('statistic', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('period', sa.Integer(), nullable=False),
    sa.Column('evaluation_periods', sa.Integer(), nullable=False),
    sa.Column('datapoints_to_alarm', sa.Integer(), nullable=False),
    sa.Column('threshold', sa.Float(), nullable=False),
    sa.Column('comparison_operator', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('treat_missing_data', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('actions_enabled', sa.Boolean(), nullable=False),
    sa.Column('alarm_actions', sa.JSON(), nullable=False),
    sa.Column('ok_actions', sa.JSON(), nullable=False),
    sa.Column('insufficient_data_actions', sa.JSON(), nullable=False),
    sa.Column('state_value', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('state_reason', sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=False),
    sa.Column('state_updated_at', controller.db.UtcDateTime(), nullable=False),
    sa.Column('evaluated_until_ms', sa.BigInteger(), nullable=True),
    sa.Column('created_at', controller.db.UtcDateTime(), nullable=False),
    sa.Column('updated_at', controller.db.UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('alarm_id'),
    sa.UniqueConstraint('account_id', 'name', name='uq_metric_alarm_name')
    )
    with op.batch_alter_table('metric_alarm', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_metric_alarm_account_id'), ['account_id'], unique=False)

    op.create_table('step_scaling_policy',
    sa.Column('policy_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('group_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('policy_type', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('adjustment_type', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('min_adjustment_magnitude', sa.Integer(), nullable=True),
    sa.Column('scaling_adjustment', sa.Integer(), nullable=True),
    sa.Column('cooldown', sa.Integer(), nullable=True),
    sa.Column('step_adjustments', sa.JSON(), nullable=False),
    sa.Column('metric_aggregation_type', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
    sa.Column('estimated_instance_warmup', sa.Integer(), nullable=True),
    sa.Column('last_run_at', controller.db.UtcDateTime(), nullable=True),
    sa.Column('created_at', controller.db.UtcDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['group_id'], ['autoscaling_group.group_id'], ),
    sa.PrimaryKeyConstraint('policy_id'),
    sa.UniqueConstraint('group_id', 'name', name='uq_step_scaling_policy_name')
    )
    with op.batch_alter_table('step_scaling_policy', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_step_scaling_policy_group_id'), ['group_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('step_scaling_policy', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_step_scaling_policy_group_id'))

    op.drop_table('step_scaling_policy')
    with op.batch_alter_table('metric_alarm', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_metric_alarm_account_id'))

    op.drop_table('metric_alarm')
    with op.batch_alter_table('alarm_history', schema=None) as batch_op:
        batch_op.drop_index('ix_alarm_history_alarm_ts')

    op.drop_table('alarm_history')
