"""Version 1 of the agent's wire contract: what the controller sends and what the agent reports.

The agent owns this schema. The controller imports it (and nothing else of agent/) through its
agent client. Every field is documented because it is a public promise: additive changes get a
named entry in EXTENSIONS, breaking changes go to a new module (v2).

HTTP surface of an agent (all JSON, bearer token = the deployment's agent token):
  GET    /v1/host                       -> HostInfo
  GET    /v1/instances                  -> list[InstanceObserved]
  PUT    /v1/instances/{instance_id}    <- InstanceSpec  -> InstanceObserved
         idempotent; a spec whose generation is lower than the accepted one answers 409
         (code StaleGeneration) and changes nothing.
  GET    /v1/instances/{instance_id}    -> InstanceObserved (404 code InstanceNotFound)
  DELETE /v1/instances/{instance_id}    -> 204, also when it is already gone
  GET    /v1/instances/{instance_id}/console?tail_bytes=N -> ConsoleOutput
Extension "vpc-network" (the host's whole VPC dataplane as one document):
  PUT    /v1/network                    <- NetworkSpec -> NetworkObserved
         idempotent; a lower generation answers 409 StaleGeneration, the same generation with
         different content 409 IdempotentParameterMismatch; changes nothing in either case.
  GET    /v1/network                    -> NetworkObserved
Extension "image-capture" (a standalone copy of an instance's root disk, for a new image):
  POST   /v1/instances/{instance_id}/image  <- CaptureRequest -> CaptureObserved
         starts flattening the root disk (overlay + base) into one qcow2 in the background;
         idempotent per image_id (a re-POST answers the capture as it is). 404 InstanceNotFound
         (no spec or no root disk), 409 InstanceRunning (the domain runs and the request does
         not allow it).
  GET    /v1/instances/{instance_id}/image/{image_id}       -> CaptureObserved (404 CaptureNotFound)
  GET    /v1/instances/{instance_id}/image/{image_id}/file  -> the qcow2 bytes (header
         X-Kumo-Sha256), once the capture is "available"; 409 CaptureNotReady before.
  DELETE /v1/instances/{instance_id}/image/{image_id}       -> 204, also when already gone
The agent pushes HeartbeatRequest to the controller's POST /v1/agent/heartbeat.
"""
from __future__ import annotations

import base64
import re
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Annotated, Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, StringConstraints, field_validator,
                      model_serializer, model_validator)

from agent.contract.metadata_v1 import InstanceMetadata
from agent.validators import IFNAME_RE, MAC_RE

CONTRACT_VERSION = "v1"
#: Named additive extensions this agent implements.
#:   vpc-network: PUT/GET /v1/network, HostInfo.underlay_ip, HeartbeatRequest.network.
#:   security-groups: NetworkSpec.security_groups and PortWire.security_group_ids (the host's
#:   stateful firewall, part of the same document so ports and their rules change together).
#:   network-subsystems: NetworkObserved.subsystems (each part of the host's network, by name,
#:   with its own status; the controller ships with its agents, so it parses the field).
#:   volumes: InstanceSpec.volumes (network disks the agent attaches to the domain, live when it
#:   runs, always in its definition) and InstanceObserved.volumes (what is attached now).
#:   image-capture: POST/GET/DELETE /v1/instances/{id}/image[/{image_id}[/file]]
#:   (CaptureRequest, CaptureObserved): the root disk flattened into a standalone qcow2.
#:   volumes-rbd: VolumeSource.protocol "rbd" (a Ceph RBD image, "pool/image", via a monitor).
#:   volumes-rbd-cephx: VolumeSource.auth_user and auth_key (the host's own Ceph user and key,
#:   kept as a libvirt secret; the disk authenticates as that user). Send them only to agents
#:   that list it: an older agent refuses the unknown fields.
#:   instance-metadata: InstanceSpec.metadata (agent/contract/metadata_v1.py): the document the
#:   host's metadata service (169.254.169.254) serves the instance, and its signed identity.
#:   nocloud-optional: InstanceSpec.nocloud_seed False (no NoCloud seed ISO: the guest reads
#:   169.254.169.254 only, as on EC2).
#:   nat-processed: NetworkObserved.nat_processed in heartbeats (cumulative bytes each NAT gateway
#:   of this host forwarded, for per-GiB billing). Sent only after the controller's
#:   HeartbeatResponse.nat_processed said it reads them, which it says only to agents that
#:   advertise this extension: an old controller or an old agent never sees the new fields.
EXTENSIONS: tuple[str, ...] = ("vpc-network", "security-groups", "network-subsystems", "volumes",
                               "image-capture", "volumes-rbd", "instance-metadata",
                               "nocloud-optional", "nat-processed", "volumes-rbd-cephx")

INSTANCE_ID_RE = re.compile(r"^i-[0-9a-f]{17}$")
InstanceId = Annotated[str, StringConstraints(pattern=r"^i-[0-9a-f]{17}$")]
GroupId = Annotated[str, StringConstraints(pattern=r"^sg-[0-9a-f]{17}$")]
RuleId = Annotated[str, StringConstraints(pattern=r"^sgr-[0-9a-f]{17}$")]
ResourceId = Annotated[str, StringConstraints(pattern=r"^[a-z]{1,8}-[0-9a-f]{8,17}$")]
ImageId = Annotated[str, StringConstraints(pattern=r"^ami-[0-9a-f]{17}$")]
MacAddress = Annotated[str, StringConstraints(pattern=MAC_RE.pattern)]
IfName = Annotated[str, StringConstraints(pattern=IFNAME_RE.pattern)]
# RFC 1123 host label: letters, digits, hyphen; no XML/shell/YAML metacharacters possible.
Hostname = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
VOLUME_ID_RE = re.compile(r"^vol-[0-9a-f]{17}$")
VolumeId = Annotated[str, StringConstraints(pattern=VOLUME_ID_RE.pattern)]
#: A volume's virtio target: vdb..vdz (vda is always the root disk).
VolumeDevice = Annotated[str, StringConstraints(pattern=r"^vd[b-z]$")]
#: What virtio-blk shows the guest as the disk's serial (at most 20 characters).
DiskSerial = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,20}$")]
#: An NBD export name: letters, digits, dot, underscore, hyphen (e.g. the volume id).
NBD_EXPORT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
ExportName = Annotated[str, StringConstraints(pattern=f"^{NBD_EXPORT_RE.pattern}$")]
#: An RBD image as "pool/image" (agent/drivers/base.NetworkSource checks the same).
RBD_IMAGE_RE = re.compile(r"[A-Za-z0-9._-]{1,127}/[A-Za-z0-9._-]{1,127}")
#: A Ceph user's id (client.<id>): what libvirt's <auth username> and QEMU's id= take.
CEPH_USER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: A cephx key as Ceph prints it: base64 of 28 bytes (type, created, length, 16-byte secret).
CEPH_KEY_RE = re.compile(r"^[A-Za-z0-9+/]{38}==$")


def valid_ceph_key(key: str) -> bool:
    """True for a cephx key: 28 bytes of base64 whose type is AES (1) and whose secret is 16
    bytes (what `ceph auth get-key` prints and libvirt's ceph secret holds decoded)."""
    if not CEPH_KEY_RE.fullmatch(key):
        return False
    raw = base64.b64decode(key, validate=True)
    return len(raw) == 28 and raw[0:2] == b"\x01\x00" and raw[10:12] == b"\x10\x00"


# One DNS name of RFC 1123 labels (a storage node's host name).
_DNS_NAME_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                          r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageRef(_Wire):
    """The machine image an instance boots from."""

    image_id: ImageId
    #: Where the agent fetches the image when it is not cached yet: an http(s) URL on the
    #: controller (GET, agent token) or a file:// URL on storage the host shares.
    url: str
    #: sha256 of the image file; the cache verifies it before first use.
    sha256: Sha256
    #: Always "qcow2" in v1; the agent never guesses a format.
    format: Literal["qcow2"] = "qcow2"
    #: Virtual size of the image's disk in bytes (the root disk is never smaller).
    virtual_size: int = Field(gt=0)
    #: Text the guest prints on its serial console when it has finished booting
    #: (instance status goes initializing -> ok when the agent sees it). None: never signals.
    ready_marker: str | None = None
    #: "x86_64" in v1.
    architecture: str = "x86_64"


class NicSpec(_Wire):
    """One network interface of an instance."""

    #: Device name inside the spec (eth0, eth1...), stable across reboots.
    device: Annotated[str, StringConstraints(pattern=r"^eth[0-9]{1,2}$")] = "eth0"
    mac: MacAddress
    #: Name of the host bridge the tap joins (created by the agent's network driver).
    bridge: IfName
    #: Address and prefix the guest configures (network-config v2, static).
    address: IPv4Interface
    gateway: IPv4Address | None = None
    nameservers: list[IPv4Address] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _drop_null_router(cls, data: Any) -> Any:
        """`router` (the flat network's address on the bridge) is gone; it was always null. Specs
        from older controllers and specs older agents persisted still carry `"router": null`:
        accepted and dropped. A non-null one has no bridge to go on any more: refused."""
        if isinstance(data, dict) and "router" in data:
            if data["router"] is not None:
                raise ValueError("router is not supported: VPC bridges hold no address")
            data = {k: v for k, v in data.items() if k != "router"}
        return data


class VolumeSource(_Wire):
    """Where a volume is served (extension volumes): one NBD export on a storage node, or
    (extension "volumes-rbd") one RBD image of a Ceph cluster, reached through a monitor.

    RBD with cephx (extension "volumes-rbd-cephx", docs/security.md "Storage access"): the
    storage node keeps one Ceph user per host whose caps list exactly the images exported to
    that host, and the source carries that user and its key. The agent keeps the key as a
    private libvirt secret (agent/libvirt/ceph_secret.py) and the disk names the user. The key
    travels only in the spec of the host it belongs to, over the agent's mutual TLS; it is
    never logged (left out of repr). Without them the cluster must allow clients without
    cephx (auth none)."""

    #: "nbd" (the default, what every v1 agent understands) or "rbd" (extension volumes-rbd).
    protocol: Literal["nbd", "rbd"] = "nbd"
    #: NBD: the storage node. RBD: one Ceph monitor. An IPv4 address or a DNS host name (no
    #: ports, no brackets, no spaces).
    host: str
    #: NBD: TCP port of the NBD server (10809 is NBD's registered port). RBD: the monitor's
    #: msgr v1 port (6789; 3300 would be msgr v2), always sent explicitly by RBD nodes.
    port: int = Field(default=10809, ge=1, le=65535)
    #: NBD: the export's name on that server (the storage node exports each volume under its
    #: id). RBD: "pool/image" (each part letters, digits, dot, underscore, hyphen; no namespace,
    #: no snapshot suffix).
    export: str = Field(max_length=255)
    #: Extension "volumes-rbd-cephx", RBD only: the Ceph user (its id, without "client.") the
    #: host's QEMU authenticates as, e.g. "kumo-host-h1": the one whose caps list this host's
    #: images. None (left out): no cephx.
    auth_user: Annotated[str, StringConstraints(pattern=CEPH_USER_RE.pattern)] | None = None
    #: Extension "volumes-rbd-cephx": that user's cephx key as Ceph prints it (base64 of the
    #: 28-byte key blob, e.g. "AQ...=="). Given with auth_user, and only then.
    auth_key: Annotated[str, StringConstraints(pattern=CEPH_KEY_RE.pattern)] | None = Field(
        default=None, repr=False)

    @field_validator("host")
    @classmethod
    def _valid_host(cls, v: str) -> str:
        if re.fullmatch(r"[0-9.]+", v):
            IPv4Address(v)  # all digits and dots: it must be a real IPv4 address
            return v
        if not _DNS_NAME_RE.match(v):
            raise ValueError(f"{v!r} is neither an IPv4 address nor a DNS host name")
        return v

    @model_validator(mode="after")
    def _valid_export(self) -> "VolumeSource":
        # The same rules as agent/drivers/base.NetworkSource applies to the domain's disk, so a
        # source accepted here never fails later while the domain is built.
        pattern = RBD_IMAGE_RE if self.protocol == "rbd" else NBD_EXPORT_RE
        if not pattern.fullmatch(self.export):
            what = "pool/image" if self.protocol == "rbd" else "an NBD export name"
            raise ValueError(f"export {self.export!r} is not {what}")
        if (self.auth_user is None) != (self.auth_key is None):
            raise ValueError("auth_user and auth_key come together")
        if self.auth_user is not None and self.protocol != "rbd":
            raise ValueError("auth_user/auth_key are for RBD sources only")
        if self.auth_key is not None and not valid_ceph_key(self.auth_key):
            raise ValueError("auth_key is not a cephx key")
        return self

    @model_serializer(mode="wrap")
    def _omit_unset_auth(self, handler: Any) -> dict[str, Any]:
        """auth_user/auth_key are left out when None, so a source without cephx is exactly the
        one agents without "volumes-rbd-cephx" (extra fields forbidden) accept."""
        data = handler(self)
        for k in ("auth_user", "auth_key"):
            if data.get(k) is None:
                data.pop(k, None)
        return data


class VolumeAttachment(_Wire):
    """One volume the instance's domain carries (extension volumes)."""

    volume_id: VolumeId
    #: The virtio target the guest sees it on, vdb..vdz; unique within the spec.
    device: VolumeDevice
    source: VolumeSource
    #: The disk's serial in the guest (/dev/disk/by-id/virtio-<serial>). None: derived from the
    #: volume id, "vol" + its 17 hex digits (the id itself is 21 characters, one too many).
    serial: DiskSerial | None = None
    #: The volume's size as the storage node serves it. A running guest whose disk is smaller
    #: gets it grown live (the volume grew while attached). None: whatever the export has.
    size_bytes: int | None = Field(default=None, ge=1)

    @property
    def disk_serial(self) -> str:
        """The serial the agent gives the disk: `serial`, or the one derived from the id."""
        return self.serial if self.serial is not None else "vol" + self.volume_id[4:]


class InstanceSpec(_Wire):
    """The full desired state of one instance on this host. PUT replaces it whole."""

    instance_id: InstanceId
    #: Monotonic per instance; the agent refuses lower ones and ignores equal re-sends.
    generation: int = Field(ge=1)
    #: What the controller wants: a domain that runs, or one that exists but is shut off.
    power: Literal["running", "stopped"]
    vcpus: int = Field(ge=1, le=64)
    memory_mib: int = Field(ge=64, le=1048576)
    #: Size of the root disk in bytes (>= image.virtual_size); the overlay is grown to it.
    root_disk_bytes: int = Field(gt=0)
    image: ImageRef
    hostname: Hostname
    #: Raw user-data, base64 encoded (up to 16 KiB decoded), passed to the guest unchanged.
    user_data_b64: str = ""
    ssh_authorized_keys: list[str] = Field(default_factory=list, max_length=16)
    nics: list[NicSpec] = Field(default_factory=list, max_length=8)
    #: Bumped by the controller to ask for one reboot; the agent reboots when this exceeds the
    #: last nonce it applied.
    reboot_nonce: int = Field(default=0, ge=0)
    #: "never": a domain that stops by itself is reported, not restarted. "always": restarted.
    restart_policy: Literal["never", "always"] = "never"
    #: Volumes attached to the instance (extension volumes; at most 16): in the domain's
    #: definition always, and hot-plugged into the running guest, or unplugged from it when they
    #: leave the list. Devices, volume ids and sources are unique within a spec.
    volumes: list[VolumeAttachment] = Field(default_factory=list, max_length=16)
    #: What the metadata service serves this instance (extension instance-metadata); None:
    #: the instance gets no metadata (the service does not answer it).
    metadata: InstanceMetadata | None = None
    #: A NoCloud seed ISO (cdrom) with the instance's meta-data, user-data and network-config
    #: (the default), or none (extension nocloud-optional): the guest then reads
    #: 169.254.169.254 only, as on EC2.
    nocloud_seed: bool = True

    @model_serializer(mode="wrap")
    def _omit_unset_extensions(self, handler: Any) -> dict[str, Any]:
        """Extension fields at their defaults are left out, so such a spec is exactly what an
        agent without those extensions (extra fields forbidden) accepts."""
        data = handler(self)
        if data.get("metadata") is None:
            data.pop("metadata", None)
        if data.get("nocloud_seed") is True:
            data.pop("nocloud_seed", None)
        return data

    @model_validator(mode="after")
    def _unique_volumes(self) -> InstanceSpec:
        for what, key in (("device", lambda v: v.device), ("volume_id", lambda v: v.volume_id),
                          ("source", lambda v: (v.source.host, v.source.port, v.source.export)),
                          ("serial", lambda v: v.disk_serial)):
            seen = [key(v) for v in self.volumes]
            if len(set(seen)) != len(seen):
                raise ValueError(f"volumes: the same {what} is used twice")
        return self


PowerState = Literal["running", "shutoff", "paused", "crashed", "absent", "building", "error"]


class ErrorInfo(_Wire):
    """Why the agent could not make an instance match its spec."""

    code: str  # stable machine-readable code, e.g. ImageChecksumMismatch
    message: str
    retryable: bool = True


class AttachedVolume(_Wire):
    """A volume disk the domain has now (extension volumes)."""

    #: Its virtio target (vdb..vdz).
    device: str
    #: The volume on it, when the agent can tell (from the spec or the disk's serial).
    volume_id: VolumeId | None = None


class InstanceObserved(_Wire):
    """What the host really has for one instance (libvirt is the authority for power)."""

    instance_id: InstanceId
    #: Generation of the last spec the agent accepted (0: none).
    generation: int = 0
    power: PowerState
    #: True once the ready marker appeared on the console since the last (re)boot.
    booted: bool = False
    #: How many times the domain was started by the agent (boot, start, reboot).
    boot_count: int = 0
    #: Seconds since the epoch of the current boot, if running.
    boot_started_at: float | None = None
    booted_at: float | None = None
    vcpus: int | None = None
    memory_mib: int | None = None
    error: ErrorInfo | None = None
    #: Volume disks attached now, sorted by device: the running guest's, else the definition's
    #: (extension volumes; empty from agents that predate it).
    volumes: list[AttachedVolume] = Field(default_factory=list)


def vpc_bridge(vni: int) -> str:
    """The host bridge of VPC `vni` that instance NICs of that VPC join (extension vpc-network):
    `kb-` and the VNI as 6 hex digits. NicSpec.bridge names it; the agent's dataplane creates it."""
    if not 1 <= vni <= (1 << 24) - 1:
        raise ValueError(f"VNI {vni} out of range")
    return f"kb-{vni:06x}"


class SubnetWire(_Wire):
    """One subnet of a VPC. Its router address answers on every host that carries the VPC."""

    subnet_id: ResourceId
    cidr: IPv4Network
    #: The subnet's router (.1); guests use it as their gateway.
    router_ip: IPv4Address
    #: Where the subnet's route table sends 0.0.0.0/0: "local" (nowhere outside: private),
    #: "igw" (the VPC's internet gateway; instances with a public IP reach outside) or "nat"
    #: (the VPC's NAT gateway).
    route: Literal["local", "igw", "nat"] = "local"


class PortWire(_Wire):
    """A guest NIC on this host. The agent derives the tap's name from port_id and device (the
    same name the instance's domain uses), so the controller never names kernel objects."""

    #: The instance id that owns the NIC.
    port_id: InstanceId
    device: Annotated[str, StringConstraints(pattern=r"^eth[0-9]{1,2}$")] = "eth0"
    mac: MacAddress
    ip: IPv4Address
    subnet_id: ResourceId
    #: Public address mapped 1:1 (DNAT in, SNAT out) to `ip` on this host, if any.
    public_ip: IPv4Address | None = None
    #: 1-5 security groups (extension security-groups); each is in NetworkSpec.security_groups.
    #: Empty: the port is isolated (no frame in or out, ARP and DHCP included); the controller
    #: always sends at least the VPC's default group.
    security_group_ids: list[GroupId] = Field(default_factory=list, max_length=5)


class RemotePortWire(_Wire):
    """A guest NIC of the same VPC on another host: static VXLAN forwarding points at it."""

    mac: MacAddress
    ip: IPv4Address
    host_underlay_ip: IPv4Address


class NatGatewayWire(_Wire):
    """The VPC's NAT gateway: it lives on the host whose underlay address is host_underlay_ip,
    owns private_ip in subnet_id and masquerades subnets routed to it behind public_ip."""

    nat_gateway_id: ResourceId
    subnet_id: ResourceId
    private_ip: IPv4Address
    public_ip: IPv4Address
    host_underlay_ip: IPv4Address


class VpcWire(_Wire):
    """Everything of one VPC this host must carry."""

    vpc_id: ResourceId
    #: VXLAN network identifier of the VPC, unique in the deployment (1 .. 2^24-1).
    vni: int = Field(ge=1, le=(1 << 24) - 1)
    cidr: IPv4Network
    subnets: list[SubnetWire] = Field(default_factory=list)
    ports: list[PortWire] = Field(default_factory=list)
    remote_ports: list[RemotePortWire] = Field(default_factory=list)
    #: An internet gateway is attached (subnets routed "igw" use it).
    internet: bool = False
    nat_gateway: NatGatewayWire | None = None


class RuleWire(_Wire):
    """One security group rule; the agent validates it again (agent.firewall.model.Rule)."""

    rule_id: RuleId
    direction: Literal["ingress", "egress"]
    protocol: Literal["tcp", "udp", "icmp", "all"]
    #: tcp/udp: the port range.
    from_port: int | None = Field(default=None, ge=0, le=65535)
    to_port: int | None = Field(default=None, ge=0, le=65535)
    #: icmp: type and code, -1 (or None) for any.
    icmp_type: int | None = Field(default=None, ge=-1, le=255)
    icmp_code: int | None = Field(default=None, ge=-1, le=255)
    #: The peer: exactly one of an IPv4 CIDR and a security group of the same VPC.
    cidr: IPv4Network | None = None
    peer_group: GroupId | None = None


class SecurityGroupWire(_Wire):
    """A group as one host needs it: its rules and the private addresses of all its members
    (on every host: a peer-group rule matches them)."""

    group_id: GroupId
    #: The VPC's VNI: also the conntrack zone, so VPCs with the same CIDRs never share flows.
    zone: int = Field(ge=1, le=65535)
    rules: list[RuleWire] = Field(default_factory=list)
    members: list[IPv4Address] = Field(default_factory=list)


class NetworkSpec(_Wire):
    """The whole desired VPC dataplane of one host (extension vpc-network). PUT replaces it."""

    #: Monotonic per host; the agent refuses lower ones and ignores equal re-sends.
    generation: int = Field(ge=1)
    vpcs: list[VpcWire] = Field(default_factory=list)
    #: Every group this host's ports use or name as peers (extension security-groups).
    security_groups: list[SecurityGroupWire] = Field(default_factory=list)


class SubsystemStatus(_Wire):
    """One named part of the host's network service (firewall, dataplane, dhcp, ...) as of its
    last pass."""

    #: Stable name of the subsystem, e.g. "firewall", "dataplane", "dhcp".
    name: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,31}$")]
    #: False when its last pass (or, for the firewall, its last check) failed.
    ok: bool = True
    #: Why it failed (code, message, retryable); None when ok.
    error: ErrorInfo | None = None
    #: Generation of the last NetworkSpec this subsystem applied in full (0: none yet).
    applied_generation: int = 0


class NatProcessed(_Wire):
    """Bytes a NAT gateway of this host forwarded (extension nat-processed): both directions,
    counted by a named nftables counter in its VPC's router namespace since that counter was
    created. Cumulative: a value smaller than the last one reported means a new counter (the
    router namespace or its table was made again), counted from zero."""

    nat_gateway_id: ResourceId
    #: Bytes forwarded (outbound from the subnets behind it, and their replies) since creation.
    bytes: int = Field(ge=0)


class NetworkObserved(_Wire):
    """How far the host's dataplane is from the accepted NetworkSpec."""

    #: Generation of the last NetworkSpec accepted (0: none).
    generation: int = 0
    #: Generation whose every record is in the kernel (0: none yet). Equal to `generation`
    #: when the dataplane is fully programmed.
    applied_generation: int = 0
    #: Records that failed in the last pass (retried; e.g. a tap libvirt has not created yet).
    failed: int = 0
    #: Seconds since the epoch when the last pass finished.
    applied_at: float | None = None
    #: The first failure of the last pass (the dataplane's before the firewall's before the
    #: others'; WaitingForTaps last), naming the other failed codes in its message.
    error: ErrorInfo | None = None
    #: Each subsystem's own status, in the order a pass runs them. Additive: empty from agents
    #: that predate it; a controller that does not need it ignores it.
    subsystems: list[SubsystemStatus] = Field(default_factory=list)
    #: Each local NAT gateway's byte counter (extension nat-processed); None: not reported (left
    #: out of the JSON then, so controllers that predate it accept the document).
    nat_processed: list[NatProcessed] | None = None

    @model_serializer(mode="wrap")
    def _omit_unreported(self, handler: Any):  # no return type: the schema stays the model's
        data = handler(self)
        if data.get("nat_processed") is None:
            data.pop("nat_processed", None)
        return data


class HostInfo(_Wire):
    """Identity and capacity of a host, sent with every heartbeat."""

    host_id: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
    #: URL where the controller reaches this agent: http://host:port or unix:/path/to.sock
    agent_url: str
    hypervisor: Literal["kvm", "qemu"]
    architecture: str
    vcpus: int
    memory_mib: int
    disk_bytes: int
    contract: str = CONTRACT_VERSION
    extensions: list[str] = Field(default_factory=list)
    versions: dict[str, str] = Field(default_factory=dict)
    #: Address of this host on the VXLAN underlay (extension vpc-network); None: no VPC dataplane.
    underlay_ip: IPv4Address | None = None


class HeartbeatRequest(_Wire):
    host: HostInfo
    instances: list[InstanceObserved]
    #: The VPC dataplane's state (extension vpc-network); None when the agent has none.
    network: NetworkObserved | None = None
    #: Seconds since the epoch on the agent when this was sent.
    sent_at: float


class HeartbeatResponse(_Wire):
    #: Seconds until the controller expects the next heartbeat.
    interval: float = 2.0
    #: The controller reads NetworkObserved.nat_processed (extension nat-processed): set only
    #: for agents that advertise it, and left out of the JSON when False, so older agents
    #: (extra fields forbidden) accept the answer.
    nat_processed: bool = False

    @model_serializer(mode="wrap")
    def _omit_defaults(self, handler: Any):  # no return type: the schema stays the model's
        data = handler(self)
        if data.get("nat_processed") is False:
            data.pop("nat_processed", None)
        return data


class ConsoleOutput(_Wire):
    instance_id: InstanceId
    #: The serial console's text (the tail, when tail_bytes was asked), decoded as UTF-8 with
    #: replacement characters.
    output: str


class CaptureRequest(_Wire):
    """Capture an instance's root disk as a new image (extension image-capture)."""

    #: The id the controller gives the new image; names the capture on this host.
    image_id: ImageId
    #: False (the default): the agent refuses (409 InstanceRunning) while the domain runs, so the
    #: copy is of a cleanly shut-off disk. True: the disk is read while the guest may write to it
    #: (qemu-img --force-share): the copy is crash-consistent at best, like pulling the plug.
    allow_running: bool = False


class CaptureObserved(_Wire):
    """How far one capture is (extension image-capture)."""

    instance_id: InstanceId
    image_id: ImageId
    #: "pending": being copied; "available": the file is complete and its facts below are set;
    #: "failed": see error (the partial file is gone; a new POST starts over).
    state: Literal["pending", "available", "failed"]
    #: Bytes of the finished qcow2 file.
    size: int | None = None
    #: Virtual size of its disk in bytes (the instance's root disk size).
    virtual_size: int | None = None
    #: sha256 of the finished file (what GET .../file sends).
    sha256: Sha256 | None = None
    error: ErrorInfo | None = None


class ApiError(_Wire):
    code: str
    message: str
    retryable: bool = False
