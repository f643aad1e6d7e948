"""usage_quantity and nat_counter: NAT gateways' data processed, billed per GiB (issue 13;
additive: no existing table changes)

usage_quantity holds amounts used (a NAT gateway's bytes, one row per hourly bucket cut at
price changes); nat_counter the last value each host reported per gateway (the base of the next
delta). Both counts are 64-bit. The per-GiB rate (nat-gateway-gib) is added to the price list at
start-up by controller/services/prices.py `seed`, effective since the epoch.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-06 13:45:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel

import controller.db

revision = '0022'
down_revision = '0021'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('usage_quantity',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('resource_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('usage_type', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('dimension', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('quantity', sa.BigInteger(), nullable=False),
    sa.Column('recorded_at', controller.db.UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('resource_id', 'usage_type', 'recorded_at', name='uq_usage_quantity_bucket')
    )
    with op.batch_alter_table('usage_quantity', schema=None) as batch_op:
        batch_op.create_index('ix_usage_quantity_account', ['account_id', 'recorded_at'], unique=False)
        batch_op.create_index('ix_usage_quantity_recorded', ['recorded_at'], unique=False)

    op.create_table('nat_counter',
    sa.Column('nat_gateway_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('host_id', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
    sa.Column('bytes', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', controller.db.UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('nat_gateway_id', 'host_id')
    )


def downgrade() -> None:
    op.drop_table('nat_counter')
    with op.batch_alter_table('usage_quantity', schema=None) as batch_op:
        batch_op.drop_index('ix_usage_quantity_recorded')
        batch_op.drop_index('ix_usage_quantity_account')
    op.drop_table('usage_quantity')
