"""billing: usage intervals, the price list, closed bills and budgets (issue 13; additive: no
existing table changes)

The price list is filled at start-up (controller/services/prices.py `seed`): every instance
type's hourly_price, and the default storage/address/NAT rates, effective since the epoch.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06 09:50:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel

import controller.db

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('usage_interval',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('resource_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('usage_type', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('dimension', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('quantity', sa.Integer(), nullable=False),
    sa.Column('started_at', controller.db.UtcDateTime(), nullable=False),
    sa.Column('ended_at', controller.db.UtcDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('usage_interval', schema=None) as batch_op:
        batch_op.create_index('ix_usage_interval_account', ['account_id', 'started_at'], unique=False)
        batch_op.create_index('ix_usage_interval_open', ['resource_id', 'usage_type', 'ended_at'], unique=False)
        batch_op.create_index('ix_usage_interval_started', ['started_at'], unique=False)

    op.create_table('price',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('usage_type', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('dimension', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('rate', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('effective_at', controller.db.UtcDateTime(), nullable=False),
    sa.Column('created_at', controller.db.UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('usage_type', 'dimension', 'effective_at', name='uq_price_effective')
    )
    op.create_table('bill',
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('month', sqlmodel.sql.sqltypes.AutoString(length=7), nullable=False),
    sa.Column('total', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('closed_at', controller.db.UtcDateTime(), nullable=False),
    sa.Column('document', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.PrimaryKeyConstraint('account_id', 'month')
    )
    op.create_table('budget',
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('monthly_limit', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('updated_at', controller.db.UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('account_id')
    )


def downgrade() -> None:
    op.drop_table('budget')
    op.drop_table('bill')
    op.drop_table('price')
    with op.batch_alter_table('usage_interval', schema=None) as batch_op:
        batch_op.drop_index('ix_usage_interval_started')
        batch_op.drop_index('ix_usage_interval_open')
        batch_op.drop_index('ix_usage_interval_account')
    op.drop_table('usage_interval')
