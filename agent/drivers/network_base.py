"""The agent's network driver contract: host bridges that instance taps join.

Small on purpose: the reconciler only needs a bridge per NIC to exist, be up and (for a subnet
router) hold the router address. One real implementation (agent/network_bridge.py, pyroute2,
in the agent's own network namespace) and one fake (agent/drivers/fake.py).
"""
from __future__ import annotations

from ipaddress import IPv4Interface
from typing import Protocol


class Network(Protocol):
    """Host-side networking an instance's NICs need."""

    capabilities: frozenset[str]

    def bridge_ready(self, name: str, router: IPv4Interface | None) -> bool:
        """True when bridge `name` exists, is up and holds `router` (if given)."""

    def ensure_bridge(self, name: str, router: IPv4Interface | None) -> None:
        """Create bridge `name` if missing, set it up, add `router` if missing. Idempotent."""
