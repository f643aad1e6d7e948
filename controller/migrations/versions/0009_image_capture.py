"""image capture: images made from instances (image_capture), launch permissions
(image_launch_permission) and the image columns they need

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 00:10:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import controller.db


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('image', schema=None) as batch_op:
        batch_op.add_column(sa.Column('source_instance_id',
                                      sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True))
        batch_op.add_column(sa.Column('block_device_mappings', sa.JSON(), nullable=False,
                                      server_default='[]'))
        batch_op.add_column(sa.Column('state_reason',
                                      sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True))
        batch_op.add_column(sa.Column('file_deleted_at', controller.db.UtcDateTime(),
                                      nullable=True))
    with op.batch_alter_table('image', schema=None) as batch_op:
        batch_op.alter_column('block_device_mappings', server_default=None)

    op.create_table('image_capture',
    sa.Column('image_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('instance_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('no_reboot', sa.Boolean(), nullable=False),
    sa.Column('phase', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('restart', sa.Boolean(), nullable=False),
    sa.Column('created_at', controller.db.UtcDateTime(), nullable=False),
    sa.Column('updated_at', controller.db.UtcDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['image_id'], ['image.image_id'], ),
    sa.PrimaryKeyConstraint('image_id')
    )
    with op.batch_alter_table('image_capture', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_image_capture_instance_id'), ['instance_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_image_capture_phase'), ['phase'], unique=False)

    op.create_table('image_launch_permission',
    sa.Column('image_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['account.account_id'], ),
    sa.ForeignKeyConstraint(['image_id'], ['image.image_id'], ),
    sa.PrimaryKeyConstraint('image_id', 'account_id')
    )
    with op.batch_alter_table('image_launch_permission', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_image_launch_permission_account_id'), ['account_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('image_launch_permission', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_image_launch_permission_account_id'))
    op.drop_table('image_launch_permission')
    with op.batch_alter_table('image_capture', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_image_capture_phase'))
        batch_op.drop_index(batch_op.f('ix_image_capture_instance_id'))
    op.drop_table('image_capture')
    with op.batch_alter_table('image', schema=None) as batch_op:
        batch_op.drop_column('file_deleted_at')
        batch_op.drop_column('state_reason')
        batch_op.drop_column('block_device_mappings')
        batch_op.drop_column('source_instance_id')
