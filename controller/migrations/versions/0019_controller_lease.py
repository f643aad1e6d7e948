"""controller_lease and controller_process: the leader lease and the controller registry
(issue 14, "a controller that survives losing a machine")

Several controller processes may share one database; the holder of the `controller-leader`
lease runs the background loops (controller/leadership.py). The row itself is created by the
first controller that looks for it.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06 12:00:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel

revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'controller_lease',
        sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('holder', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('epoch', sa.Integer(), nullable=False),
        sa.Column('acquired_at', sa.DateTime(), nullable=True),
        sa.Column('renewed_at', sa.DateTime(), nullable=True),
        sa.Column('expires_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('name'),
    )
    op.create_table(
        'controller_process',
        sa.Column('controller_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('hostname', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column('pid', sa.Integer(), nullable=False),
        sa.Column('api_url', sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=True),
        sa.Column('version', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('started_at', sa.DateTime(), nullable=False),
        sa.Column('last_seen', sa.DateTime(), nullable=False),
        sa.Column('last_reconcile_at', sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint('controller_id'),
    )


def downgrade() -> None:
    op.drop_table('controller_process')
    op.drop_table('controller_lease')
