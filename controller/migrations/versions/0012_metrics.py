"""metrics: raw per-instance metric samples and their 1-minute rollups (additive: no existing
table changes)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 03:01:51.777693
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('metric_datum',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('instance_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('metric_name', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('ts', sa.BigInteger(), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.Column('rolled', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('metric_datum', schema=None) as batch_op:
        batch_op.create_index('ix_metric_datum_account', ['account_id', 'metric_name', 'ts'], unique=False)
        batch_op.create_index('ix_metric_datum_query', ['instance_id', 'metric_name', 'ts'], unique=False)
        batch_op.create_index('ix_metric_datum_rolled_ts', ['rolled', 'ts'], unique=False)

    op.create_table('metric_rollup',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('instance_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('metric_name', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('minute', sa.BigInteger(), nullable=False),
    sa.Column('sample_count', sa.Integer(), nullable=False),
    sa.Column('sum', sa.Float(), nullable=False),
    sa.Column('minimum', sa.Float(), nullable=False),
    sa.Column('maximum', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('instance_id', 'metric_name', 'minute', name='uq_metric_rollup_key')
    )
    with op.batch_alter_table('metric_rollup', schema=None) as batch_op:
        batch_op.create_index('ix_metric_rollup_account', ['account_id', 'metric_name', 'minute'], unique=False)
        batch_op.create_index('ix_metric_rollup_minute', ['minute'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('metric_rollup', schema=None) as batch_op:
        batch_op.drop_index('ix_metric_rollup_minute')
        batch_op.drop_index('ix_metric_rollup_account')

    op.drop_table('metric_rollup')
    with op.batch_alter_table('metric_datum', schema=None) as batch_op:
        batch_op.drop_index('ix_metric_datum_rolled_ts')
        batch_op.drop_index('ix_metric_datum_query')
        batch_op.drop_index('ix_metric_datum_account')

    op.drop_table('metric_datum')
