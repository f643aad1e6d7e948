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
The agent pushes HeartbeatRequest to the controller's POST /v1/agent/heartbeat.
"""
from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Interface
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

CONTRACT_VERSION = "v1"
#: Named additive extensions this agent implements (none yet beyond the base).
EXTENSIONS: tuple[str, ...] = ()

INSTANCE_ID_RE = re.compile(r"^i-[0-9a-f]{17}$")
InstanceId = Annotated[str, StringConstraints(pattern=r"^i-[0-9a-f]{17}$")]
ImageId = Annotated[str, StringConstraints(pattern=r"^ami-[0-9a-f]{17}$")]
MacAddress = Annotated[str, StringConstraints(pattern=r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")]
# RFC 1123 host label: letters, digits, hyphen; no XML/shell/YAML metacharacters possible.
Hostname = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


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
    bridge: Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9_.-]{1,15}$")]
    #: Address and prefix the guest configures (network-config v2, static).
    address: IPv4Interface
    gateway: IPv4Address | None = None
    nameservers: list[IPv4Address] = Field(default_factory=list)
    #: Address and prefix the host side holds on the bridge (the subnet router), if any.
    router: IPv4Interface | None = None


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


PowerState = Literal["running", "shutoff", "paused", "crashed", "absent", "building", "error"]


class ErrorInfo(_Wire):
    """Why the agent could not make an instance match its spec."""

    code: str  # stable machine-readable code, e.g. ImageChecksumMismatch
    message: str
    retryable: bool = True


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


class HeartbeatRequest(_Wire):
    host: HostInfo
    instances: list[InstanceObserved]
    #: Seconds since the epoch on the agent when this was sent.
    sent_at: float


class HeartbeatResponse(_Wire):
    #: Seconds until the controller expects the next heartbeat.
    interval: float = 2.0


class ConsoleOutput(_Wire):
    instance_id: InstanceId
    #: The serial console's text (the tail, when tail_bytes was asked), decoded as UTF-8 with
    #: replacement characters.
    output: str


class ApiError(_Wire):
    code: str
    message: str
    retryable: bool = False
