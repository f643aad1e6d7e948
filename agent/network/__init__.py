"""The agent's VPC dataplane: typed desired state for one host (model), deterministic names
(names), the pure translation into kernel objects (desired), the pure diff against what the kernel
has (diff), the NAT/filter nft table of each VPC router namespace (nat), the one netlink interface
(netlink, pyroute2) and the idempotent applier (apply.Dataplane: plan/ensure/teardown).

Wired into the agent: agent/app.py builds the NetworkService (service), which turns each accepted
NetworkSpec (wire) into a HostNetwork and keeps, one named subsystem at a time, the host's
security-group firewall (firewall_sync, on agent/firewall), this dataplane
(`Dataplane(netns=...).ensure(HostNetwork)`) and the VPC DHCP servers (dhcp_sync, dhcp) equal to
it. The reconcile step "network-ready" waits on the VPC bridges through VpcNetwork (driver); where
the dataplane lives (namespace, underlay) is host.py's, and the check that the machine's own
namespace is never programmed is agent/netns.py's.
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
