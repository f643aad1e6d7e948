"""Builds the agent's InstanceSpec (agent.contract.v1) from an instance's desired state."""
from __future__ import annotations

from agent.contract.v1 import ImageRef, InstanceSpec, NicSpec
from controller.models import Host, Image, Instance
from controller.services import flat_network
from controller.services.capacity import GIB


def image_url(agent_facing_url: str, image_id: str) -> str:
    """An http(s) URL when agents reach the controller over TCP; over a unix socket a bare
    path, which agents fetch through their own controller URL (a URL cannot name a socket)."""
    path = f"/v1/images/{image_id}/file"
    if agent_facing_url.startswith(("http://", "https://")):
        return agent_facing_url.rstrip("/") + path
    return path


def build(inst: Instance, image: Image, host: Host, agent_facing_url: str) -> InstanceSpec:
    nics = []
    if inst.mac and inst.private_ip:
        nics.append(NicSpec(**flat_network.nic_fields(inst, host)))
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
