"""vpc networking: VPCs, subnets, IPAM allocations, internet gateways, route tables, elastic IPs,
NAT gateways (additive: no existing table changes)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 22:53:57.363731
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import controller.db


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('default_vpc_marker',
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('vpc_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('created_at', controller.db.UtcDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['account.account_id'], ),
    sa.PrimaryKeyConstraint('account_id')
    )
    op.create_table('elastic_ip',
    sa.Column('allocation_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('public_ip', sqlmodel.sql.sqltypes.AutoString(length=15), nullable=False),
    sa.Column('association_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('instance_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('private_ip', sqlmodel.sql.sqltypes.AutoString(length=15), nullable=True),
    sa.Column('nat_gateway_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('created_at', controller.db.UtcDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['account.account_id'], ),
    sa.PrimaryKeyConstraint('allocation_id'),
    sa.UniqueConstraint('public_ip')
    )
    with op.batch_alter_table('elastic_ip', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_elastic_ip_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_elastic_ip_instance_id'), ['instance_id'], unique=False)

    op.create_table('nat_gateway',
    sa.Column('nat_gateway_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('vpc_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('subnet_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('allocation_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('public_ip', sqlmodel.sql.sqltypes.AutoString(length=15), nullable=True),
    sa.Column('private_ip', sqlmodel.sql.sqltypes.AutoString(length=15), nullable=True),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('state_message', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=True),
    sa.Column('created_at', controller.db.UtcDateTime(), nullable=False),
    sa.Column('deleted_at', controller.db.UtcDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['account.account_id'], ),
    sa.PrimaryKeyConstraint('nat_gateway_id')
    )
    with op.batch_alter_table('nat_gateway', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_nat_gateway_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_nat_gateway_subnet_id'), ['subnet_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_nat_gateway_vpc_id'), ['vpc_id'], unique=False)

    op.create_table('vpc',
    sa.Column('vpc_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('cidr_block', sqlmodel.sql.sqltypes.AutoString(length=18), nullable=False),
    sa.Column('is_default', sa.Boolean(), nullable=False),
    sa.Column('vni', sa.Integer(), nullable=False),
    sa.Column('created_at', controller.db.UtcDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['account.account_id'], ),
    sa.PrimaryKeyConstraint('vpc_id'),
    sa.UniqueConstraint('vni')
    )
    with op.batch_alter_table('vpc', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_vpc_account_id'), ['account_id'], unique=False)

    op.create_table('internet_gateway',
    sa.Column('internet_gateway_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('vpc_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('created_at', controller.db.UtcDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['account.account_id'], ),
    sa.ForeignKeyConstraint(['vpc_id'], ['vpc.vpc_id'], ),
    sa.PrimaryKeyConstraint('internet_gateway_id'),
    sa.UniqueConstraint('vpc_id')
    )
    with op.batch_alter_table('internet_gateway', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_internet_gateway_account_id'), ['account_id'], unique=False)

    op.create_table('route_table',
    sa.Column('route_table_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('vpc_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('main', sa.Boolean(), nullable=False),
    sa.Column('created_at', controller.db.UtcDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['account.account_id'], ),
    sa.ForeignKeyConstraint(['vpc_id'], ['vpc.vpc_id'], ),
    sa.PrimaryKeyConstraint('route_table_id')
    )
    with op.batch_alter_table('route_table', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_route_table_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_route_table_vpc_id'), ['vpc_id'], unique=False)

    op.create_table('subnet',
    sa.Column('subnet_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('vpc_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('cidr_block', sqlmodel.sql.sqltypes.AutoString(length=18), nullable=False),
    sa.Column('default_for_az', sa.Boolean(), nullable=False),
    sa.Column('map_public_ip_on_launch', sa.Boolean(), nullable=False),
    sa.Column('created_at', controller.db.UtcDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['account.account_id'], ),
    sa.ForeignKeyConstraint(['vpc_id'], ['vpc.vpc_id'], ),
    sa.PrimaryKeyConstraint('subnet_id')
    )
    with op.batch_alter_table('subnet', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_subnet_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_subnet_vpc_id'), ['vpc_id'], unique=False)

    op.create_table('ip_allocation',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('subnet_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('address', sqlmodel.sql.sqltypes.AutoString(length=15), nullable=False),
    sa.Column('owner_type', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('owner_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('created_at', controller.db.UtcDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['subnet_id'], ['subnet.subnet_id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('subnet_id', 'address', name='uq_ip_allocation_subnet_address')
    )
    with op.batch_alter_table('ip_allocation', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ip_allocation_owner_id'), ['owner_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_ip_allocation_subnet_id'), ['subnet_id'], unique=False)

    op.create_table('route',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('route_table_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('destination_cidr_block', sqlmodel.sql.sqltypes.AutoString(length=18), nullable=False),
    sa.Column('target', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.ForeignKeyConstraint(['route_table_id'], ['route_table.route_table_id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('route_table_id', 'destination_cidr_block', name='uq_route_table_destination')
    )
    with op.batch_alter_table('route', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_route_route_table_id'), ['route_table_id'], unique=False)

    op.create_table('route_table_association',
    sa.Column('association_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('route_table_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('subnet_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.ForeignKeyConstraint(['route_table_id'], ['route_table.route_table_id'], ),
    sa.ForeignKeyConstraint(['subnet_id'], ['subnet.subnet_id'], ),
    sa.PrimaryKeyConstraint('association_id'),
    sa.UniqueConstraint('subnet_id')
    )
    with op.batch_alter_table('route_table_association', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_route_table_association_route_table_id'), ['route_table_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('route_table_association', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_route_table_association_route_table_id'))

    op.drop_table('route_table_association')
    with op.batch_alter_table('route', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_route_route_table_id'))

    op.drop_table('route')
    with op.batch_alter_table('ip_allocation', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ip_allocation_subnet_id'))
        batch_op.drop_index(batch_op.f('ix_ip_allocation_owner_id'))

    op.drop_table('ip_allocation')
    with op.batch_alter_table('subnet', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_subnet_vpc_id'))
        batch_op.drop_index(batch_op.f('ix_subnet_account_id'))

    op.drop_table('subnet')
    with op.batch_alter_table('route_table', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_route_table_vpc_id'))
        batch_op.drop_index(batch_op.f('ix_route_table_account_id'))

    op.drop_table('route_table')
    with op.batch_alter_table('internet_gateway', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_internet_gateway_account_id'))

    op.drop_table('internet_gateway')
    with op.batch_alter_table('vpc', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_vpc_account_id'))

    op.drop_table('vpc')
    with op.batch_alter_table('nat_gateway', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_nat_gateway_vpc_id'))
        batch_op.drop_index(batch_op.f('ix_nat_gateway_subnet_id'))
        batch_op.drop_index(batch_op.f('ix_nat_gateway_account_id'))

    op.drop_table('nat_gateway')
    with op.batch_alter_table('elastic_ip', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_elastic_ip_instance_id'))
        batch_op.drop_index(batch_op.f('ix_elastic_ip_account_id'))

    op.drop_table('elastic_ip')
    op.drop_table('default_vpc_marker')
