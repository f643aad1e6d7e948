"""security groups: groups, rules, instance memberships (additive: no existing table changes),
and a default group for every VPC that already exists (inbound from itself, all outbound)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 23:24:31.688791
"""
import secrets
from datetime import datetime, timezone

from alembic import op
import sqlalchemy as sa
import sqlmodel
import controller.db


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('security_group',
    sa.Column('group_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('vpc_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('group_name', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('description', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('is_default', sa.Boolean(), nullable=False),
    sa.Column('created_at', controller.db.UtcDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['account.account_id'], ),
    sa.ForeignKeyConstraint(['vpc_id'], ['vpc.vpc_id'], ),
    sa.PrimaryKeyConstraint('group_id'),
    sa.UniqueConstraint('vpc_id', 'group_name', name='uq_security_group_vpc_name')
    )
    with op.batch_alter_table('security_group', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_security_group_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_security_group_vpc_id'), ['vpc_id'], unique=False)

    op.create_table('instance_security_group',
    sa.Column('instance_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('group_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.ForeignKeyConstraint(['group_id'], ['security_group.group_id'], ),
    sa.PrimaryKeyConstraint('instance_id', 'group_id')
    )
    with op.batch_alter_table('instance_security_group', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_instance_security_group_group_id'), ['group_id'], unique=False)

    op.create_table('security_group_rule',
    sa.Column('rule_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('group_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('direction', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('protocol', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('from_port', sa.Integer(), nullable=True),
    sa.Column('to_port', sa.Integer(), nullable=True),
    sa.Column('icmp_type', sa.Integer(), nullable=True),
    sa.Column('icmp_code', sa.Integer(), nullable=True),
    sa.Column('cidr_ipv4', sqlmodel.sql.sqltypes.AutoString(length=18), nullable=True),
    sa.Column('peer_group_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('description', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('rule_key', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('created_at', controller.db.UtcDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['group_id'], ['security_group.group_id'], ),
    sa.ForeignKeyConstraint(['peer_group_id'], ['security_group.group_id'], ),
    sa.PrimaryKeyConstraint('rule_id'),
    sa.UniqueConstraint('group_id', 'rule_key', name='uq_security_group_rule_key')
    )
    with op.batch_alter_table('security_group_rule', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_security_group_rule_group_id'), ['group_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_security_group_rule_peer_group_id'), ['peer_group_id'], unique=False)

    _default_groups_for_existing_vpcs()


def downgrade() -> None:
    with op.batch_alter_table('security_group_rule', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_security_group_rule_peer_group_id'))
        batch_op.drop_index(batch_op.f('ix_security_group_rule_group_id'))

    op.drop_table('security_group_rule')
    with op.batch_alter_table('instance_security_group', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_instance_security_group_group_id'))

    op.drop_table('instance_security_group')
    with op.batch_alter_table('security_group', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_security_group_vpc_id'))
        batch_op.drop_index(batch_op.f('ix_security_group_account_id'))

    op.drop_table('security_group')


def _id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(9)[:17]}"


def _default_groups_for_existing_vpcs() -> None:
    """The same rows services/security_group_rows.create_default() makes for a new VPC."""
    conn = op.get_bind()
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    groups = sa.table("security_group", *(sa.column(c) for c in (
        "group_id", "account_id", "vpc_id", "group_name", "description", "is_default",
        "created_at")))
    rules = sa.table("security_group_rule", *(sa.column(c) for c in (
        "rule_id", "group_id", "direction", "protocol", "cidr_ipv4", "peer_group_id",
        "description", "rule_key", "created_at")))
    for vpc_id, account_id in conn.execute(sa.text("SELECT vpc_id, account_id FROM vpc")).all():
        gid = _id("sg")
        conn.execute(groups.insert().values(
            group_id=gid, account_id=account_id, vpc_id=vpc_id, group_name="default",
            description="default VPC security group", is_default=True, created_at=now))
        conn.execute(rules.insert().values(
            rule_id=_id("sgr"), group_id=gid, direction="ingress", protocol="all", cidr_ipv4=None,
            peer_group_id=gid, description="", rule_key=f"ingress|all|||||sg:{gid}",
            created_at=now))
        conn.execute(rules.insert().values(
            rule_id=_id("sgr"), group_id=gid, direction="egress", protocol="all",
            cidr_ipv4="0.0.0.0/0", peer_group_id=None, description="",
            rule_key="egress|all|||||cidr:0.0.0.0/0", created_at=now))
