"""Builds the agent's InstanceSpec (agent.contract.v1) from an instance's desired state."""
from __future__ import annotations

from ipaddress import IPv4Network

from agent.contract.v1 import ImageRef, InstanceSpec, NicSpec, vpc_bridge
from controller.models import Host, Image, Instance, Subnet, Vpc
from controller.services.capacity import GIB


def image_url(agent_facing_url: str, image_id: str) -> str:
    """An http(s) URL when agents reach the controller over TCP; over a unix socket a bare
    path, which agents fetch through their own controller URL (a URL cannot name a socket)."""
    path = f"/v1/images/{image_id}/file"
    if agent_facing_url.startswith(("http://", "https://")):
        return agent_facing_url.rstrip("/") + path
    return path


def vpc_nic(inst: Instance, vpc: Vpc, subnet: Subnet) -> NicSpec:
    """The instance's one NIC: on its VPC's bridge, addressed in its subnet, the subnet's router
    (.1, answered on every host by the dataplane) as gateway."""
    net = IPv4Network(subnet.cidr_block)
    return NicSpec(device="eth0", mac=inst.mac, bridge=vpc_bridge(vpc.vni),
                   address=f"{inst.private_ip}/{net.prefixlen}",
                   gateway=str(net.network_address + 1), nameservers=[])


def build(inst: Instance, image: Image, host: Host, agent_facing_url: str,
          nic: NicSpec | None = None) -> InstanceSpec:
    nics = [nic] if nic is not None else []
    return InstanceSpec(
        instance_id=inst.instance_id, generation=inst.generation,
        power="running" if inst.power == "running" else "stopped",
        vcpus=inst.vcpus, memory_mib=inst.memory_mib,
        root_disk_bytes=max(inst.root_disk_gib * GIB, image.virtual_size),
        image=ImageRef(image_id=image.image_id, url=image_url(agent_facing_url, image.image_id),
                       sha256=image.sha256, format="qcow2", virtual_size=image.virtual_size,
                       ready_marker=image.ready_marker, architecture=image.architecture),
        hostname=inst.hostname or inst.instance_id, user_data_b64=inst.user_data_b64 or "",
        ssh_authorized_keys=[inst.ssh_public_key] if inst.ssh_public_key else [],
        nics=nics, reboot_nonce=inst.reboot_nonce, restart_policy="never")
