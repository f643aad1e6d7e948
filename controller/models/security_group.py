"""Security group tables and their wire shapes: groups (one per name per VPC), their rules, and
the instance <-> group association the launch integration will fill.

Rules live in controller/services/security_groups.py (and the pure checks in
controller/services/sg_rules.py); these are plain rows. What matters under concurrency is
enforced by the database too: a group name is unique per VPC, and a rule's canonical key
(direction, protocol, ports or ICMP type/code, peer) is unique per group, so two concurrent
identical authorizations cannot both land (EC2's InvalidPermission.Duplicate).
"""
from __future__ import annotations

from datetime import datetime
from typing import Optional, Union

from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr
from pydantic import Field as PField
from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from controller.db import UtcDateTime


# -- request bodies -------------------------------------------------------------------------
class SecurityGroupCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Checked by sg_rules.check_name (stable codes, no control characters), not here.
    group_name: str = PField(min_length=1, max_length=255)
    description: str = PField(default="", max_length=255)
    vpc_id: Optional[str] = PField(default=None, min_length=1, max_length=32)


class RuleRequest(BaseModel):
    """One permission as a client writes it. Loosely typed on purpose: sg_rules.parse_rule
    validates it and answers EC2's codes (InvalidPermission.Malformed, ...)."""
    model_config = ConfigDict(extra="forbid")
    # Strict: JSON true or 22.5 is refused, never coerced to a protocol number or a port.
    protocol: Union[StrictStr, StrictInt]
    from_port: Optional[StrictInt] = None
    to_port: Optional[StrictInt] = None
    icmp_type: Optional[StrictInt] = None
    icmp_code: Optional[StrictInt] = None
    cidr_ipv4: Optional[str] = PField(default=None, max_length=64)
    peer_group_id: Optional[str] = PField(default=None, max_length=64)
    description: Optional[str] = PField(default=None, max_length=255)


class AuthorizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rules: list[RuleRequest] = PField(min_length=1, max_length=100)


class RevokeRequest(BaseModel):
    """Exactly one of the two: rule ids, or rules written as when they were authorized."""
    model_config = ConfigDict(extra="forbid")
    rule_ids: Optional[list[str]] = PField(default=None, min_length=1, max_length=100)
    rules: Optional[list[RuleRequest]] = PField(default=None, min_length=1, max_length=100)


# -- public shapes ----------------------------------------------------------------------------
class SecurityGroupRulePublic(BaseModel):
    rule_id: str
    group_id: str
    direction: str  # "ingress" or "egress"
    protocol: str  # "tcp", "udp", "icmp" or "all"
    from_port: Optional[int]
    to_port: Optional[int]
    icmp_type: Optional[int]
    icmp_code: Optional[int]
    cidr_ipv4: Optional[str]
    peer_group_id: Optional[str]
    description: str


class SecurityGroupPublic(BaseModel):
    group_id: str
    group_name: str
    description: str
    vpc_id: str
    account_id: str
    is_default: bool
    ingress_rules: list[SecurityGroupRulePublic]
    egress_rules: list[SecurityGroupRulePublic]
    created_at: datetime


class RuleChange(BaseModel):
    """The answer of authorize and revoke: the group and the rules that were added or removed."""
    group_id: str
    direction: str
    rules: list[SecurityGroupRulePublic]


# -- tables -----------------------------------------------------------------------------------
class SecurityGroup(SQLModel, table=True):
    __tablename__ = "security_group"
    __table_args__ = (UniqueConstraint("vpc_id", "group_name", name="uq_security_group_vpc_name"),)
    group_id: str = Field(primary_key=True, max_length=32)
    account_id: str = Field(foreign_key="account.account_id", index=True, max_length=32)
    vpc_id: str = Field(foreign_key="vpc.vpc_id", index=True, max_length=32)
    group_name: str = Field(max_length=255)
    description: str = Field(default="", max_length=255)
    is_default: bool = False
    created_at: datetime = Field(sa_type=UtcDateTime)


class SecurityGroupRule(SQLModel, table=True):
    __tablename__ = "security_group_rule"
    __table_args__ = (UniqueConstraint("group_id", "rule_key", name="uq_security_group_rule_key"),)
    rule_id: str = Field(primary_key=True, max_length=32)
    group_id: str = Field(foreign_key="security_group.group_id", index=True, max_length=32)
    direction: str = Field(max_length=8)
    protocol: str = Field(max_length=8)
    from_port: Optional[int] = None
    to_port: Optional[int] = None
    icmp_type: Optional[int] = None
    icmp_code: Optional[int] = None
    cidr_ipv4: Optional[str] = Field(default=None, max_length=18)
    peer_group_id: Optional[str] = Field(default=None, foreign_key="security_group.group_id",
                                         index=True, max_length=32)
    description: str = Field(default="", max_length=255)
    # Canonical form of everything but the description (sg_rules.RuleSpec.key).
    rule_key: str = Field(max_length=128)
    created_at: datetime = Field(sa_type=UtcDateTime)


class InstanceSecurityGroup(SQLModel, table=True):
    """An instance's membership of a group. Not a foreign key to the instance: instances are
    purged after termination; a row whose instance is gone or terminated is stale and ignored."""
    __tablename__ = "instance_security_group"
    instance_id: str = Field(primary_key=True, max_length=32)
    group_id: str = Field(primary_key=True, foreign_key="security_group.group_id", index=True,
                          max_length=32)
