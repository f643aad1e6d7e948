"""Kernel names libvirt gives an instance's devices, as pure functions (no libvirt import), so
the network side (agent/network/service.py) derives exactly the tap name the domain uses."""
from __future__ import annotations

import hashlib


def tap_name(instance_id: str, index: int = 0) -> str:
    """Stable host-side tap name for NIC `index` of an instance: 'tap' + 11 hex chars (14 <= 15).

    `index` is the NIC's position in the domain (InstanceSpec.nics order), which is N for a NIC
    whose device is ethN when the spec lists eth0, eth1, ... in order."""
    digest = hashlib.sha256(f"{instance_id}/{index}".encode()).hexdigest()
    return "tap" + digest[:11]
