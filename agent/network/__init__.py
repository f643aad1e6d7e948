"""The agent's VPC dataplane: typed desired state for one host (model), deterministic names
(names), the pure translation into kernel objects (desired), the pure diff against what the kernel
has (diff), the NAT/filter nft table of each VPC router namespace (nat), the one netlink interface
(netlink, pyroute2) and the idempotent applier (apply.Dataplane: plan/ensure/teardown).

Nothing else in Kumo imports this package yet; the agent's reconcile step will call
`Dataplane(netns=...).ensure(HostNetwork)`.
"""
from agent.network.apply import Dataplane, DataplaneError
from agent.network.model import (
    HostNetwork,
    NatGatewayNet,
    PortNet,
    RemotePort,
    SubnetNet,
    VpcNet,
)

__all__ = [
    "Dataplane",
    "DataplaneError",
    "HostNetwork",
    "NatGatewayNet",
    "PortNet",
    "RemotePort",
    "SubnetNet",
    "VpcNet",
]
