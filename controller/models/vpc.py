"""VPC networking tables and their wire shapes: VPCs, subnets, IPAM allocations, internet
gateways, route tables (routes, subnet associations), elastic IPs and NAT gateways.

Rules live in controller/services/{vpcs,subnets,ipam,gateways,route_tables,elastic_ips}.py; these
are plain rows. Uniqueness that matters under concurrency is enforced by the database:
(subnet_id, address) for IPAM, public_ip for elastic IPs, vni per VPC, one explicit route-table
association per subnet, one default VPC per account.
"""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from pydantic import Field as PField
from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from controller.db import UtcDateTime

CIDR_FIELD = PField(min_length=9, max_length=18)


# -- request bodies -------------------------------------------------------------------------
class VpcCreate(BaseModel):
    cidr_block: str = CIDR_FIELD


class SubnetCreate(BaseModel):
    vpc_id: str = PField(min_length=1, max_length=32)
    cidr_block: str = CIDR_FIELD
    map_public_ip_on_launch: bool = False


class SubnetModify(BaseModel):
    map_public_ip_on_launch: bool


class IgwAttach(BaseModel):
    vpc_id: str = PField(min_length=1, max_length=32)


class RouteTableCreate(BaseModel):
    vpc_id: str = PField(min_length=1, max_length=32)


class RouteCreate(BaseModel):
    destination_cidr_block: str = CIDR_FIELD
    gateway_id: str | None = PField(default=None, max_length=32)
    nat_gateway_id: str | None = PField(default=None, max_length=32)


class RouteTableAssociate(BaseModel):
    subnet_id: str = PField(min_length=1, max_length=32)


class AddressAssociate(BaseModel):
    instance_id: str = PField(min_length=1, max_length=32)
    private_ip: str | None = PField(default=None, max_length=15)
    allow_reassociation: bool = False


class NatGatewayCreate(BaseModel):
    subnet_id: str = PField(min_length=1, max_length=32)
    allocation_id: str = PField(min_length=1, max_length=32)


# -- public shapes ----------------------------------------------------------------------------
class VpcPublic(BaseModel):
    vpc_id: str
    account_id: str
    cidr_block: str
    state: str
    is_default: bool
    main_route_table_id: str | None
    internet_gateway_id: str | None
    created_at: datetime


class SubnetPublic(BaseModel):
    subnet_id: str
    vpc_id: str
    account_id: str
    cidr_block: str
    state: str
    default_for_az: bool
    map_public_ip_on_launch: bool
    available_ip_address_count: int
    route_table_id: str
    public: bool
    created_at: datetime


class InternetGatewayPublic(BaseModel):
    internet_gateway_id: str
    account_id: str
    vpc_id: str | None
    state: str  # "available" (detached) or "attached"
    created_at: datetime


class RoutePublic(BaseModel):
    destination_cidr_block: str
    target: str  # "local", an igw- or a nat- id
    state: str  # "active" or "blackhole" (target detached or deleted)


class RouteTableAssociationPublic(BaseModel):
    association_id: str
    subnet_id: str


class RouteTableAssociated(BaseModel):
    association_id: str
    route_table_id: str
    subnet_id: str


class RouteTableDisassociated(RouteTableAssociated):
    disassociated: bool


class RouteTablePublic(BaseModel):
    route_table_id: str
    vpc_id: str
    account_id: str
    main: bool
    routes: list[RoutePublic]
    associations: list[RouteTableAssociationPublic]
    created_at: datetime


class ElasticIpPublic(BaseModel):
    allocation_id: str
    account_id: str
    public_ip: str
    association_id: str | None
    instance_id: str | None
    private_ip: str | None
    nat_gateway_id: str | None
    created_at: datetime


class NatGatewayPublic(BaseModel):
    nat_gateway_id: str
    account_id: str
    vpc_id: str
    subnet_id: str
    allocation_id: str | None
    public_ip: str | None
    private_ip: str | None
    state: str
    state_message: str | None
    created_at: datetime
    deleted_at: datetime | None


# -- tables -----------------------------------------------------------------------------------
class Vpc(SQLModel, table=True):
    __tablename__ = "vpc"
    vpc_id: str = Field(primary_key=True, max_length=32)
    account_id: str = Field(foreign_key="account.account_id", index=True, max_length=32)
    cidr_block: str = Field(max_length=18)
    is_default: bool = False
    # The VXLAN network identifier the dataplane will use; unique among VPCs.
    vni: int = Field(unique=True)
    created_at: datetime = Field(sa_type=UtcDateTime)


class DefaultVpcMarker(SQLModel, table=True):
    """One row per account once its default VPC was created: the primary key makes lazy creation
    race-free, and a deleted default VPC is not silently re-created."""
    __tablename__ = "default_vpc_marker"
    account_id: str = Field(primary_key=True, foreign_key="account.account_id", max_length=32)
    vpc_id: str = Field(max_length=32)
    created_at: datetime = Field(sa_type=UtcDateTime)


class Subnet(SQLModel, table=True):
    __tablename__ = "subnet"
    subnet_id: str = Field(primary_key=True, max_length=32)
    account_id: str = Field(foreign_key="account.account_id", index=True, max_length=32)
    vpc_id: str = Field(foreign_key="vpc.vpc_id", index=True, max_length=32)
    cidr_block: str = Field(max_length=18)
    default_for_az: bool = False
    map_public_ip_on_launch: bool = False
    created_at: datetime = Field(sa_type=UtcDateTime)


class IpAllocation(SQLModel, table=True):
    """One private address handed out in a subnet, and what holds it."""
    __tablename__ = "ip_allocation"
    __table_args__ = (UniqueConstraint("subnet_id", "address", name="uq_ip_allocation_subnet_address"),)
    id: int | None = Field(default=None, primary_key=True)
    subnet_id: str = Field(foreign_key="subnet.subnet_id", index=True, max_length=32)
    address: str = Field(max_length=15)
    owner_type: str = Field(max_length=16)  # "instance", "nat-gateway", ...
    owner_id: str = Field(max_length=32, index=True)
    created_at: datetime = Field(sa_type=UtcDateTime)


class InternetGateway(SQLModel, table=True):
    __tablename__ = "internet_gateway"
    internet_gateway_id: str = Field(primary_key=True, max_length=32)
    account_id: str = Field(foreign_key="account.account_id", index=True, max_length=32)
    # One gateway per VPC: unique (NULLs, i.e. detached gateways, do not collide).
    vpc_id: str | None = Field(default=None, foreign_key="vpc.vpc_id", unique=True, max_length=32)
    created_at: datetime = Field(sa_type=UtcDateTime)


class RouteTable(SQLModel, table=True):
    __tablename__ = "route_table"
    route_table_id: str = Field(primary_key=True, max_length=32)
    account_id: str = Field(foreign_key="account.account_id", index=True, max_length=32)
    vpc_id: str = Field(foreign_key="vpc.vpc_id", index=True, max_length=32)
    main: bool = False
    created_at: datetime = Field(sa_type=UtcDateTime)


class Route(SQLModel, table=True):
    __tablename__ = "route"
    __table_args__ = (UniqueConstraint("route_table_id", "destination_cidr_block",
                                       name="uq_route_table_destination"),)
    id: int | None = Field(default=None, primary_key=True)
    route_table_id: str = Field(foreign_key="route_table.route_table_id", index=True, max_length=32)
    destination_cidr_block: str = Field(max_length=18)
    target: str = Field(max_length=32)  # "local", "igw-..." or "nat-..."


class RouteTableAssociation(SQLModel, table=True):
    __tablename__ = "route_table_association"
    association_id: str = Field(primary_key=True, max_length=32)
    route_table_id: str = Field(foreign_key="route_table.route_table_id", index=True, max_length=32)
    subnet_id: str = Field(foreign_key="subnet.subnet_id", unique=True, max_length=32)


class ElasticIp(SQLModel, table=True):
    __tablename__ = "elastic_ip"
    allocation_id: str = Field(primary_key=True, max_length=32)
    account_id: str = Field(foreign_key="account.account_id", index=True, max_length=32)
    public_ip: str = Field(unique=True, max_length=15)
    association_id: str | None = Field(default=None, max_length=32)
    # Not a foreign key: instances are purged after termination; a stale association is
    # dropped by the elastic IP service when it sees one.
    instance_id: str | None = Field(default=None, index=True, max_length=32)
    private_ip: str | None = Field(default=None, max_length=15)
    nat_gateway_id: str | None = Field(default=None, max_length=32)
    # A public IP given to an instance at launch (not an elastic IP the user allocated): hidden
    # from describe-addresses, released with the instance or when an elastic IP replaces it.
    auto_assigned: bool = False
    created_at: datetime = Field(sa_type=UtcDateTime)


class NatGateway(SQLModel, table=True):
    __tablename__ = "nat_gateway"
    nat_gateway_id: str = Field(primary_key=True, max_length=32)
    account_id: str = Field(foreign_key="account.account_id", index=True, max_length=32)
    vpc_id: str = Field(max_length=32, index=True)
    subnet_id: str = Field(max_length=32, index=True)
    allocation_id: str | None = Field(default=None, max_length=32)
    public_ip: str | None = Field(default=None, max_length=15)
    private_ip: str | None = Field(default=None, max_length=15)
    state: str = Field(max_length=16)
    state_message: str | None = Field(default=None, max_length=256)
    # The host whose dataplane carries the gateway (chosen at creation among live hosts).
    host_id: str | None = Field(default=None, max_length=63)
    created_at: datetime = Field(sa_type=UtcDateTime)
    deleted_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
