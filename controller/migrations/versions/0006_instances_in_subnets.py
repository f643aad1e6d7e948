"""instances in VPC subnets: instance.vpc_id/subnet_id, the hosts' VPC dataplane bookkeeping
(underlay address, network document generation and digest, acknowledged generation), the NAT
gateway's host, and auto-assigned public IPs (elastic_ip.auto_assigned)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 01:30:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('instance', schema=None) as batch_op:
        batch_op.add_column(sa.Column('vpc_id', sqlmodel.sql.sqltypes.AutoString(length=32),
                                      nullable=True))
        batch_op.add_column(sa.Column('subnet_id', sqlmodel.sql.sqltypes.AutoString(length=32),
                                      nullable=True))
        batch_op.create_index(batch_op.f('ix_instance_vpc_id'), ['vpc_id'], unique=False)
    with op.batch_alter_table('host', schema=None) as batch_op:
        batch_op.add_column(sa.Column('underlay_ip', sqlmodel.sql.sqltypes.AutoString(length=15),
                                      nullable=True))
        batch_op.add_column(sa.Column('network_generation', sa.Integer(), nullable=False,
                                      server_default='0'))
        batch_op.add_column(sa.Column('network_digest', sqlmodel.sql.sqltypes.AutoString(length=64),
                                      nullable=True))
        batch_op.add_column(sa.Column('network_acked', sa.Integer(), nullable=False,
                                      server_default='0'))
    with op.batch_alter_table('nat_gateway', schema=None) as batch_op:
        batch_op.add_column(sa.Column('host_id', sqlmodel.sql.sqltypes.AutoString(length=63),
                                      nullable=True))
    with op.batch_alter_table('elastic_ip', schema=None) as batch_op:
        batch_op.add_column(sa.Column('auto_assigned', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('elastic_ip', schema=None) as batch_op:
        batch_op.drop_column('auto_assigned')
    with op.batch_alter_table('nat_gateway', schema=None) as batch_op:
        batch_op.drop_column('host_id')
    with op.batch_alter_table('host', schema=None) as batch_op:
        for col in ('network_acked', 'network_digest', 'network_generation', 'underlay_ip'):
            batch_op.drop_column(col)
    with op.batch_alter_table('instance', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_instance_vpc_id'))
        batch_op.drop_column('subnet_id')
        batch_op.drop_column('vpc_id')
