"""host_join_token and host_certificate: per-host identity for controller <-> agent mutual TLS
(issue 14, "Controller <-> agent security"; docs/security.md)

One-time join tokens (only the sha256 of the secret is stored) and every certificate the cloud
CA issued to a host, with its revocation (checked on every agent request).

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06 14:00:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel

import controller.db

revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'host_join_token',
        sa.Column('token_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column('host_id', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column('secret_sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('created_at', controller.db.UtcDateTime(), nullable=False),
        sa.Column('expires_at', controller.db.UtcDateTime(), nullable=False),
        sa.Column('used_at', controller.db.UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint('token_id'),
    )
    op.create_index(op.f('ix_host_join_token_host_id'), 'host_join_token', ['host_id'],
                    unique=False)
    op.create_table(
        'host_certificate',
        sa.Column('serial', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column('host_id', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column('key_sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
        sa.Column('issued_at', controller.db.UtcDateTime(), nullable=False),
        sa.Column('not_after', controller.db.UtcDateTime(), nullable=False),
        sa.Column('revoked_at', controller.db.UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint('serial'),
    )
    op.create_index(op.f('ix_host_certificate_host_id'), 'host_certificate', ['host_id'],
                    unique=False)
    op.create_index(op.f('ix_host_certificate_key_sha256'), 'host_certificate', ['key_sha256'],
                    unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_host_certificate_key_sha256'), table_name='host_certificate')
    op.drop_index(op.f('ix_host_certificate_host_id'), table_name='host_certificate')
    op.drop_table('host_certificate')
    op.drop_index(op.f('ix_host_join_token_host_id'), table_name='host_join_token')
    op.drop_table('host_join_token')
