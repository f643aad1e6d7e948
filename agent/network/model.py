"""Typed desired network state of one host, as the controller will describe it to an agent.

Pure data with strict validation (ipaddress types, id formats, containment and uniqueness rules):
a HostNetwork that validates can always be rendered into kernel objects. Invalid input raises
pydantic's ValidationError; the caller maps it to InvalidParameterValue.
"""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Annotated, Literal, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from agent import validators
from agent.network.names import MAX_VNI, MIN_VNI

ResourceId = Annotated[str, AfterValidator(validators.resource_id)]
IfName = Annotated[str, AfterValidator(validators.ifname)]
Mac = Annotated[str, AfterValidator(validators.guest_mac)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


class SubnetNet(_Frozen):
    """One subnet: its router address answers on every host carrying the VPC.

    route: where the subnet's route table sends 0.0.0.0/0: "local" (nowhere: private), "igw"
    (the VPC's internet gateway: instances with a public IP reach outside) or "nat" (the VPC's NAT
    gateway)."""

    subnet_id: ResourceId
    cidr: IPv4Network
    router_ip: IPv4Address
    route: Literal["local", "igw", "nat"] = "local"

    @model_validator(mode="after")
    def _check(self) -> "SubnetNet":
        if not 16 <= self.cidr.prefixlen <= 28:
            raise ValueError(f"subnet {self.cidr} must be /16 to /28")
        if self.router_ip not in self.cidr or self.router_ip in (
            self.cidr.network_address, self.cidr.broadcast_address):
            raise ValueError(f"router {self.router_ip} is not a host address of {self.cidr}")
        return self


class PortNet(_Frozen):
    """A guest NIC on this host: its tap joins the VPC bridge; public_ip is 1:1 NAT here."""

    port_id: ResourceId
    tap: IfName
    mac: Mac
    ip: IPv4Address
    subnet_id: ResourceId
    public_ip: Optional[IPv4Address] = None


class RemotePort(_Frozen):
    """A guest NIC of the same VPC on another host: static forwarding entries point at it."""

    mac: Mac
    ip: IPv4Address
    host_underlay_ip: IPv4Address


class NatGatewayNet(_Frozen):
    """The VPC's NAT gateway: it lives on host_underlay_ip, owns private_ip in subnet_id and
    masquerades the traffic of subnets routed to it behind public_ip."""

    nat_gateway_id: ResourceId
    subnet_id: ResourceId
    private_ip: IPv4Address
    public_ip: IPv4Address
    host_underlay_ip: IPv4Address


class VpcNet(_Frozen):
    vpc_id: ResourceId
    vni: int = Field(ge=MIN_VNI, le=MAX_VNI)
    cidr: IPv4Network
    subnets: tuple[SubnetNet, ...] = ()
    ports: tuple[PortNet, ...] = ()
    remote_ports: tuple[RemotePort, ...] = ()
    #: An internet gateway is attached (subnets with route "igw" use it).
    internet: bool = False
    nat_gateway: Optional[NatGatewayNet] = None

    @model_validator(mode="after")
    def _check(self) -> "VpcNet":
        if not 16 <= self.cidr.prefixlen <= 28:
            raise ValueError(f"VPC {self.vpc_id}: CIDR {self.cidr} must be /16 to /28")
        subnets = {}
        for s in self.subnets:
            if s.subnet_id in subnets:
                raise ValueError(f"duplicate subnet {s.subnet_id}")
            if not s.cidr.subnet_of(self.cidr):
                raise ValueError(f"subnet {s.cidr} is outside VPC {self.cidr}")
            for other in subnets.values():
                if s.cidr.overlaps(other.cidr):
                    raise ValueError(f"subnets {s.cidr} and {other.cidr} overlap")
            subnets[s.subnet_id] = s
        seen_ip: dict[IPv4Address, str] = {s.router_ip: "router" for s in self.subnets}
        seen_mac: set[str] = set()
        seen_port: set[str] = set()
        for p in self.ports:
            sub = subnets.get(p.subnet_id)
            if sub is None:
                raise ValueError(f"port {p.port_id}: unknown subnet {p.subnet_id}")
            if p.ip not in sub.cidr or p.ip in (sub.cidr.network_address, sub.cidr.broadcast_address):
                raise ValueError(f"port {p.port_id}: {p.ip} is not a host address of {sub.cidr}")
            if p.port_id in seen_port:
                raise ValueError(f"duplicate port {p.port_id}")
            seen_port.add(p.port_id)
        for who, ip, mac in [(p.port_id, p.ip, p.mac) for p in self.ports] + [
                (f"remote {r.ip}", r.ip, r.mac) for r in self.remote_ports]:
            if ip in seen_ip:
                raise ValueError(f"{who}: address {ip} already used by {seen_ip[ip]}")
            if not any(ip in s.cidr for s in self.subnets):
                raise ValueError(f"{who}: {ip} is in no subnet of the VPC")
            if mac in seen_mac:
                raise ValueError(f"{who}: MAC {mac} already used in the VPC")
            seen_ip[ip] = who
            seen_mac.add(mac)
        if self.nat_gateway is not None:
            ng = self.nat_gateway
            sub = subnets.get(ng.subnet_id)
            if sub is None or ng.private_ip not in sub.cidr:
                raise ValueError(f"NAT gateway {ng.nat_gateway_id}: {ng.private_ip} not in its subnet")
            if ng.private_ip in seen_ip:
                raise ValueError(f"NAT gateway address {ng.private_ip} already used")
            if sub.route == "nat":
                raise ValueError("the NAT gateway's own subnet cannot route to it")
        return self

    def subnet(self, subnet_id: str) -> SubnetNet:
        return next(s for s in self.subnets if s.subnet_id == subnet_id)

    def effective_route(self, subnet: SubnetNet) -> str:
        """"local" when the subnet's default route points at a missing gateway (a blackhole)."""
        if subnet.route == "igw" and self.internet:
            return "igw"
        if subnet.route == "nat" and self.nat_gateway is not None:
            return "nat"
        return "local"


class HostNetwork(_Frozen):
    """Everything of the VPC dataplane one host must carry."""

    underlay_ip: IPv4Address
    underlay_dev: IfName
    vpcs: tuple[VpcNet, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> "HostNetwork":
        vnis: set[int] = set()
        ids: set[str] = set()
        taps: set[str] = set()
        public: set[IPv4Address] = set()
        for v in self.vpcs:
            if v.vni in vnis or v.vpc_id in ids:
                raise ValueError(f"duplicate VPC {v.vpc_id} / VNI {v.vni}")
            vnis.add(v.vni)
            ids.add(v.vpc_id)
            pubs = [p.public_ip for p in v.ports if p.public_ip is not None]
            ng = v.nat_gateway
            if ng is not None and ng.host_underlay_ip == self.underlay_ip:
                pubs.append(ng.public_ip)
            for p in v.ports:
                if p.tap in taps or p.tap.startswith("k") and p.tap[1:3] in {f"{c}-" for c in "bxqrtugn"}:
                    raise ValueError(f"tap {p.tap} reused or in Kumo's reserved names")
                taps.add(p.tap)
            for ip in pubs:
                if ip in public:
                    raise ValueError(f"public IP {ip} mapped twice on this host")
                public.add(ip)
            for r in v.remote_ports:
                if r.host_underlay_ip == self.underlay_ip:
                    raise ValueError(f"remote port {r.ip} points at this host")
        return self
