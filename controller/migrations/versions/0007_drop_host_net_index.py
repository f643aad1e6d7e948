"""host.net_index dropped: it was the host's slice of the flat network's address pool, which
instances in VPC subnets replaced (no code has read it since)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 10:00:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # PostgreSQL drops the column's unique constraint with it; on SQLite the batch copy of the
    # table is made without the column and so without the constraint.
    with op.batch_alter_table('host', schema=None) as batch_op:
        batch_op.drop_column('net_index')


def downgrade() -> None:
    # The slices are gone: number the hosts again, 1.. in registration order (0001's rule gave
    # each new host the lowest free number, which this reproduces for hosts never removed).
    with op.batch_alter_table('host', schema=None) as batch_op:
        batch_op.add_column(sa.Column('net_index', sa.Integer(), nullable=True))
    conn = op.get_bind()
    hosts = conn.execute(sa.text("SELECT host_id FROM host ORDER BY created_at, host_id"))
    for k, (host_id,) in enumerate(list(hosts), start=1):
        conn.execute(sa.text("UPDATE host SET net_index = :k WHERE host_id = :h"),
                     {"k": k, "h": host_id})
    with op.batch_alter_table('host', schema=None) as batch_op:
        batch_op.alter_column('net_index', existing_type=sa.Integer(), nullable=False)
        batch_op.create_unique_constraint('uq_host_net_index', ['net_index'])
