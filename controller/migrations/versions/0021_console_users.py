"""console_user and console_session: the web console's users and sessions (issue 15;
docs/console.md)

Users per account with argon2id password hashes; server-side sessions keyed by the sha256 of
the cookie's token, with their CSRF token and idle/absolute expiry.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-06 13:30:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel

import controller.db

revision = '0021'
down_revision = '0020'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'console_user',
        sa.Column('username', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column('user_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column('password_hash', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column('created_at', controller.db.UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('user_id'),
    )
    op.create_index(op.f('ix_console_user_username'), 'console_user', ['username'], unique=True)
    op.create_index(op.f('ix_console_user_account_id'), 'console_user', ['account_id'],
                    unique=False)
    op.create_table(
        'console_session',
        sa.Column('token_sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column('user_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
        sa.Column('csrf_token', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('created_at', controller.db.UtcDateTime(), nullable=False),
        sa.Column('last_seen_at', controller.db.UtcDateTime(), nullable=False),
        sa.Column('expires_at', controller.db.UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('token_sha256'),
    )
    op.create_index(op.f('ix_console_session_account_id'), 'console_session', ['account_id'],
                    unique=False)
    op.create_index(op.f('ix_console_session_user_id'), 'console_session', ['user_id'],
                    unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_console_session_user_id'), table_name='console_session')
    op.drop_index(op.f('ix_console_session_account_id'), table_name='console_session')
    op.drop_table('console_session')
    op.drop_index(op.f('ix_console_user_account_id'), table_name='console_user')
    op.drop_index(op.f('ix_console_user_username'), table_name='console_user')
    op.drop_table('console_user')
