"""volume source auth: Volume.source_auth_user and source_auth_key, the Ceph user and cephx key
of the host an RBD volume is exported to, as the storage node answered (issue 14: per-host
cephx; hosts' extension volumes-rbd-cephx). Additive: nullable columns; rows from before keep
NULL (no cephx), and the next answer of a cephx node fills them.

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-06 23:50:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0024'
down_revision = '0023'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('volume', schema=None) as batch_op:
        batch_op.add_column(sa.Column('source_auth_user',
                                      sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
        batch_op.add_column(sa.Column('source_auth_key',
                                      sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('volume', schema=None) as batch_op:
        batch_op.drop_column('source_auth_key')
        batch_op.drop_column('source_auth_user')
