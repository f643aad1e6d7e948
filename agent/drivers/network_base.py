"""The agent's network driver contract: the bridges that instance taps join.

Small on purpose: the reconcile step "network-ready" only needs each NIC's bridge to exist and be
up before the domain starts. One real implementation (agent/network/driver.py: VPC bridges come
with the host's NetworkSpec, applied by the NetworkService) and one fake (agent/drivers/fake.py,
for agents without a network service).
"""
from __future__ import annotations

from typing import Protocol


class Network(Protocol):
    """Host-side networking an instance's NICs need."""

    capabilities: frozenset[str]

    def bridge_ready(self, name: str) -> bool:
        """True when bridge `name` exists and is up."""

    def ensure_bridge(self, name: str) -> None:
        """Make bridge `name` ready, or raise a DriverError saying why not (yet). Idempotent."""
