"""volume source protocol: Volume.source_protocol ("nbd" | "rbd"; NULL = nbd, the rows from
before), and room in source_export for RBD's "pool/image" (up to 255 characters)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 03:00:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('volume', schema=None) as batch_op:
        batch_op.add_column(sa.Column('source_protocol', sqlmodel.sql.sqltypes.AutoString(length=8),
                                      nullable=True))
        batch_op.alter_column('source_export',
                              existing_type=sqlmodel.sql.sqltypes.AutoString(length=128),
                              type_=sqlmodel.sql.sqltypes.AutoString(length=255),
                              existing_nullable=True)


def downgrade() -> None:
    # An RBD source means nothing to the older schema's readers: those volumes read as not
    # exported, and the storage node's next answer records them again.
    op.execute("UPDATE volume SET source_host = NULL, source_port = NULL, source_export = NULL "
               "WHERE source_protocol = 'rbd'")
    with op.batch_alter_table('volume', schema=None) as batch_op:
        batch_op.alter_column('source_export',
                              existing_type=sqlmodel.sql.sqltypes.AutoString(length=255),
                              type_=sqlmodel.sql.sqltypes.AutoString(length=128),
                              existing_nullable=True)
        batch_op.drop_column('source_protocol')
