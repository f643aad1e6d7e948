"""The wire side of NetworkService: NetworkSpec (contract v1, extension vpc-network) -> the
dataplane model (agent.network.model.HostNetwork), the refusal accept() answers, and how a pass's
errors are summarised in NetworkObserved.error."""
from __future__ import annotations

import hashlib
from ipaddress import IPv4Address
from typing import Optional

from pydantic import ValidationError

from agent.contract.v1 import ErrorInfo, NetworkSpec
from agent.libvirt.names import tap_name
from agent.network.model import (HostNetwork, NatGatewayNet, PortNet, RemotePort, SubnetNet,
                                 VpcNet)
from agent.network.records import Master


class NetworkSpecRejected(Exception):
    """accept() refused a spec; answered as HTTP `status` with a stable `code`."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def nic_index(device: str) -> int:
    """Position of NIC `device` (ethN -> N) in the instance's domain."""
    return int(device[3:])


def model_port_id(port_id: str, device: str) -> str:
    """The dataplane model's port id of NIC `device` of instance `port_id`. The model wants one
    id per port (VPC-unique) while the wire names a NIC by (instance id, device): eth0 keeps the
    instance id, ethN (N > 0) gets a stable derived id, so one instance may have several NICs in
    one VPC."""
    if device == "eth0":
        return port_id
    return "eni-" + hashlib.sha256(f"{port_id}/{device}".encode()).hexdigest()[:17]


def host_network(spec: NetworkSpec, underlay_ip: IPv4Address, underlay_dev: str) -> HostNetwork:
    """The dataplane model of `spec` on this host. Raises NetworkSpecRejected (400
    InvalidParameterValue) for what the wire schema allows but the dataplane cannot carry."""
    try:
        vpcs = []
        for v in spec.vpcs:
            ports = tuple(PortNet(port_id=model_port_id(p.port_id, p.device),
                                  tap=tap_name(p.port_id, nic_index(p.device)),
                                  mac=p.mac, ip=p.ip, subnet_id=p.subnet_id,
                                  public_ip=p.public_ip) for p in v.ports)
            ng = v.nat_gateway
            vpcs.append(VpcNet(
                vpc_id=v.vpc_id, vni=v.vni, cidr=v.cidr,
                subnets=tuple(SubnetNet(**s.model_dump()) for s in v.subnets),
                ports=ports,
                remote_ports=tuple(RemotePort(**r.model_dump()) for r in v.remote_ports),
                internet=v.internet,
                nat_gateway=NatGatewayNet(**ng.model_dump()) if ng is not None else None))
        return HostNetwork(underlay_ip=underlay_ip, underlay_dev=underlay_dev, vpcs=tuple(vpcs))
    except ValidationError as e:
        parts = [f"{'.'.join(str(x) for x in err.get('loc', ()))}: {err.get('msg')}"
                 for err in e.errors()[:5]]
        raise NetworkSpecRejected(400, "InvalidParameterValue",
                                  "network spec: " + "; ".join(parts)) from None


def combine_errors(errors: list[Optional[ErrorInfo]]) -> Optional[ErrorInfo]:
    """The one error NetworkObserved shows: the first of dataplane, firewall, DHCP, except that
    WaitingForTaps (instances not started: not a fault) comes last; the others are named."""
    errs = sorted((e for e in errors if e is not None), key=lambda e: e.code == "WaitingForTaps")
    if not errs:
        return None
    first = errs[0]
    if len(errs) == 1:
        return first
    also = ", ".join(e.code for e in errs[1:])
    return first.model_copy(update={"message": f"{first.message} (also: {also})"})


def failure_info(host: HostNetwork, failed: list) -> ErrorInfo:
    taps = {p.tap for v in host.vpcs for p in v.ports}
    waiting = sorted({rec.dev for rec, _ in failed if isinstance(rec, Master) and rec.dev in taps})
    if len(waiting) == len(failed):
        # Only taps that do not exist (yet): instances not started; not a dataplane fault.
        return ErrorInfo(code="WaitingForTaps",
                         message=f"{len(waiting)} guest taps not present: {', '.join(waiting[:8])}")
    rec, detail = failed[0]
    return ErrorInfo(code="DataplaneApplyFailed",
                     message=f"{len(failed)} dataplane changes failed, first: {rec}: {detail}")
