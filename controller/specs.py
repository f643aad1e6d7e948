"""Builds the agent's InstanceSpec (agent.contract.v1) from an instance's desired state.

Volumes (extension volumes): the spec lists the instance's attachments that are attaching or
attached, each with the export the storage node reported for its volume. Detaching ones are
left out: their leaving the list is what makes the agent unplug them. An instance whose
attaching (or attached) volume has no export yet is not ready to push (`volumes_pending`): a spec
sent without the volume would be acknowledged without it.
"""
from __future__ import annotations

from ipaddress import IPv4Network

from agent.contract.metadata_v1 import InstanceMetadata
from agent.contract.v1 import (ImageRef, InstanceSpec, NicSpec, VolumeAttachment, VolumeSource,
                               vpc_bridge)
from controller.models import Host, Image, Instance, Subnet, Volume, VolumeAttachmentRow, Vpc
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


#: Attachment states whose volume the instance's domain carries.
IN_SPEC = ("attaching", "attached")


def virtio_target(device: str) -> str:
    """The guest's virtio target of a user's device name: /dev/sdf, /dev/xvdf, /dev/vdf -> vdf."""
    return "vd" + device[-1]


def volume_source(vol: Volume, cephx: bool = True) -> VolumeSource | None:
    """Where hosts attach the volume, as the storage node last reported it (None: not exported).
    A row without a protocol predates RBD: NBD, on NBD's port unless one was recorded.
    `cephx`: whether the host understands extension volumes-rbd-cephx; an older agent refuses
    the unknown fields, so it gets the source without the Ceph user and key (and cannot open a
    cephx volume: upgrade agents before turning cephx on, docs/ceph-rbd.md)."""
    if not vol.source_host or not vol.source_export:
        return None
    protocol = vol.source_protocol or "nbd"
    auth = ({"auth_user": vol.source_auth_user, "auth_key": vol.source_auth_key}
            if cephx and protocol == "rbd" and vol.source_auth_user and vol.source_auth_key
            else {})
    return VolumeSource(protocol=protocol, host=vol.source_host,
                        port=vol.source_port or (6789 if protocol == "rbd" else 10809),
                        export=vol.source_export, **auth)


def volumes_pending(rows: list[tuple[VolumeAttachmentRow, Volume]]) -> list[str]:
    """Ids of volumes the spec must carry whose export does not exist yet (the instance's spec
    waits for them)."""
    return sorted(a.volume_id for a, v in rows if a.state in IN_SPEC and volume_source(v) is None)


def spec_volumes(rows: list[tuple[VolumeAttachmentRow, Volume]],
                 cephx: bool = False) -> list[VolumeAttachment]:
    """The spec's volumes: attaching and attached ones with an export, sorted by device.
    `cephx`: the host lists extension volumes-rbd-cephx (see volume_source)."""
    out = []
    for a, v in rows:
        src = volume_source(v, cephx)
        if a.state in IN_SPEC and src is not None:
            out.append(VolumeAttachment(volume_id=a.volume_id, device=virtio_target(a.device),
                                        source=src, size_bytes=v.observed_size_bytes or None))
    return sorted(out, key=lambda x: x.device)


def build(inst: Instance, image: Image, host: Host, agent_facing_url: str,
          nic: NicSpec | None = None,
          volumes: list[VolumeAttachment] | None = None,
          metadata: InstanceMetadata | None = None) -> InstanceSpec:
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
        nics=nics, reboot_nonce=inst.reboot_nonce, restart_policy="never",
        volumes=list(volumes or []), metadata=metadata,
        # Without a seed the guest depends on the metadata service: only where the host serves
        # it and understands the field.
        nocloud_seed=(inst.nocloud_seed or metadata is None
                      or "nocloud-optional" not in (host.extensions or [])))
