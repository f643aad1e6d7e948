"""VpcNetwork: the agent's Network driver (agent/drivers/network_base.py) when the VPC
dataplane is on. The reconcile step "network-ready" asks it for each NIC's bridge:

- VPC bridges (`kb-<vni>`, agent.network.names) belong to the NetworkService's dataplane: ready
  means the bridge exists and is up in the host's namespace. ensure_bridge() never creates one
  itself (the bridge comes with the VPC's NetworkSpec): it kicks the service, waits briefly, and
  otherwise raises a retryable NetworkNotReady so the reconcile loop tries again later. A VPC
  bridge holds no address (the subnet routers live in the VPC's router namespace).
- Any other bridge name is no bridge of Kumo's: never ready, and ensure_bridge() refuses it
  (NetworkNotReady, not retryable).
"""
from __future__ import annotations

import re
from typing import Any

from agent.drivers.base import DriverError

VPC_BRIDGE_RE = re.compile(r"^kb-[0-9a-f]{6}$")
#: Seconds ensure_bridge waits for the dataplane to create a VPC bridge.
BRIDGE_WAIT = 2.0


def is_vpc_bridge(name: str) -> bool:
    return bool(VPC_BRIDGE_RE.match(name))


class VpcNetwork:
    """Network driver: VPC bridges from the NetworkService; no other bridges."""

    capabilities = frozenset({"bridge", "vpc"})

    def __init__(self, service: Any, wait: float = BRIDGE_WAIT):
        self.service = service
        self.wait = wait

    def bridge_ready(self, name: str) -> bool:
        if is_vpc_bridge(name):
            return self.service.bridge_ready(name)
        return False

    def ensure_bridge(self, name: str) -> None:
        if is_vpc_bridge(name):
            if not self.service.wait_bridge(name, self.wait):
                raise DriverError(f"VPC bridge {name} is not up yet (its VPC is not in this "
                                  "host's network spec, or the dataplane is still applying it)",
                                  code="NetworkNotReady", retryable=True)
            return
        raise DriverError(f"no driver for bridge {name}", code="NetworkNotReady",
                          retryable=False)
