"""Settings of one host agent, read from the environment (prefix KUMO_AGENT_).

Owns only configuration: names, defaults and validation. Nothing here touches the host.
"""
from __future__ import annotations

import re
import socket
from ipaddress import IPv4Address
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_HOST_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,40}$")


def _default_host_id() -> str:
    # Hostnames may carry dots or capitals; host ids are DNS-label-like (HostInfo.host_id).
    name = re.sub(r"[^a-z0-9-]", "-", socket.gethostname().split(".")[0].lower()).strip("-")
    return (name or "host")[:63]


class AgentSettings(BaseSettings):
    """Everything `python -m agent` needs; every field maps to KUMO_AGENT_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="KUMO_AGENT_", extra="ignore")

    #: Identity of this host at the controller (HostInfo.host_id).
    host_id: str = Field(default_factory=_default_host_id)
    #: Accepted specs, runtime bookkeeping, images and instance files live here.
    state_dir: Path = Path("/var/lib/kumo/agent")
    #: Where the HTTP API listens: `unix:/path.sock` or `host:port`.
    listen: str = "127.0.0.1:8788"
    #: URL the controller uses to reach us; default derived from `listen`.
    advertise_url: str | None = None
    #: An extra host-local unix socket (absolute path) serving the same API with the same
    #: authentication, for local administration next to a TCP `listen` (the lab: tools in the
    #: machine's root namespace cannot reach a host's fabric address). None: no extra socket.
    local_socket: Path | None = None
    #: Controller base URL (`unix:/path.sock` or http URL); None disables heartbeats.
    controller_url: str | None = None
    #: Shared bearer token (auth "token"): required on every request to the agent and sent to
    #: the controller. Empty means every request is refused (no accidental open agent).
    token: str = Field(default="", repr=False)
    #: How agent and controller authenticate each other (docs/security.md): "mtls" = TLS both
    #: ways with this host's certificate from the cloud CA (<state_dir>/tls/); the API accepts
    #: only the controller's certificate. "token" = the shared token over plain HTTP (a
    #: fallback for tests with fake controllers).
    auth: Literal["mtls", "token"] = "mtls"
    #: One-time join token (`kumo hosts join-token HOST`): exchanged at start for this host's
    #: certificate when it has none (auth "mtls").
    join_token: str = Field(default="", repr=False)
    #: The controller's API URL the join goes to (not its agent-facing listener, which already
    #: requires a certificate). None: controller_url.
    join_url: str | None = None
    #: sha256 (hex) of the cloud CA certificate's DER the join must answer (`kumo hosts
    #: join-token` prints it); None: trust what the join URL answers.
    ca_sha256: str | None = None
    libvirt_uri: str = "qemu:///system"
    hypervisor: Literal["auto", "kvm", "qemu"] = "auto"
    driver: Literal["libvirt", "fake"] = "libvirt"
    #: Network driver: "vpc" = the VPC dataplane (agent/network: per-VPC bridges kb-*, VXLAN,
    #: router namespaces); "fake" = in-memory (and a fake VPC dataplane); "none".
    #: "auto" = "vpc" with the libvirt driver, "fake" with the fake driver.
    network: Literal["auto", "vpc", "fake", "none"] = "auto"
    #: The agent programs networking (dataplane, firewall, DHCP) only inside a named (`ip netns`)
    #: or otherwise private network namespace unless this is set (production hosts, where the
    #: machine's own namespace is the host), so a mis-started lab agent cannot touch the
    #: machine's (agent/netns.py).
    allow_root_netns: bool = False
    #: Name (`ip netns`) of the network namespace that is this host, for the VPC dataplane.
    #: None: the namespace this process runs in (its `ip netns` name when it has one, e.g. an
    #: agent started with `ip netns exec kumo-h1`); the machine's own namespace is refused
    #: unless allow_root_netns is set.
    netns: str | None = None
    #: Device carrying the VXLAN underlay. None: the device of the default route in the host's
    #: namespace ("uplink0" with the fake driver).
    underlay_dev: str | None = None
    #: This host's underlay address (HostInfo.underlay_ip). None: the first IPv4 address of
    #: underlay_dev (with the fake driver: a stable 192.0.2.x derived from host_id).
    underlay_ip: IPv4Address | None = None
    #: The VPC dataplane is re-ensured at least this often (seconds; cheap: the kernel is read
    #: in full only every 30 s), and every second while records fail (e.g. a tap not created yet).
    network_resync_interval: float = Field(default=5.0, gt=0)
    #: Security groups (extension security-groups): the host's `kumo` nft tables, kept equal to the
    #: NetworkSpec (verified about every second). Off: ports are not filtered at all.
    firewall: bool = True
    #: Fixed-lease DHCP (one dnsmasq per VPC router namespace) for guests that ask for it.
    dhcp: bool = True
    #: User dnsmasq drops privileges to; it must be able to traverse <state_dir>/dhcp.
    dhcp_user: str = Field(default="dnsmasq", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    #: The instance metadata service (169.254.169.254:80 in every VPC router namespace,
    #: agent/metadata/service.py), with a real VPC dataplane only.
    metadata: bool = True
    heartbeat_interval: float = Field(default=2.0, gt=0)
    #: Seconds between two samples of every running instance (agent/metrics.py); 0 disables
    #: the sampler. Samples go to the controller's POST /v1/agent/metrics in batches.
    metrics_interval: float = Field(default=5.0, ge=0)
    #: Samples buffered while the controller is away; beyond it the oldest are dropped (counted).
    metrics_buffer_samples: int = Field(default=20000, ge=1)
    #: Samples per POST at most (bounds one request's size; metrics_v1.MAX_BATCH_SAMPLES).
    metrics_batch_samples: int = Field(default=500, ge=1, le=1000)
    #: Seconds an ACPI shutdown may take before the domain is powered off.
    shutdown_timeout: float = Field(default=30.0, ge=0)
    #: Level-triggered resync period of the reconcile loop (it is also kicked on every change).
    resync_interval: float = Field(default=1.0, gt=0)
    #: How often consoles of booting guests are scanned for the ready marker (cheap: only new
    #: bytes are read); this bounds how late "instance status ok" can be after the guest is up.
    readiness_interval: float = Field(default=0.1, gt=0)
    #: Upper bound of the per-instance retry backoff, seconds.
    max_backoff: float = Field(default=60.0, gt=0)
    #: Instances reconciled in parallel (a slow shutdown never blocks the others).
    reconcile_workers: int = Field(default=4, ge=1, le=64)

    @field_validator("host_id")
    @classmethod
    def _host_id(cls, v: str) -> str:
        if not _HOST_ID_RE.match(v):
            raise ValueError("host_id must be lowercase letters, digits and '-' (max 63)")
        return v

    @field_validator("netns", "underlay_dev")
    @classmethod
    def _ifname(cls, v: str | None) -> str | None:
        # Both end up in `ip netns exec NAME` / netlink: no option-like or odd names.
        if v is not None and not _NAME_RE.match(v):
            raise ValueError("must be letters, digits, '_', '.', '-' (not starting with '-')")
        return v

    @field_validator("local_socket")
    @classmethod
    def _local_socket(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_absolute():
            raise ValueError("local_socket must be an absolute path")
        return v

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        if v.startswith("unix:"):
            if not v[len("unix:"):].startswith("/"):
                raise ValueError("unix listen address needs an absolute path: unix:/path.sock")
            return v
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("listen must be unix:/path.sock or host:port")
        return v

    def network_mode(self) -> str:
        """The network driver "auto" stands for."""
        if self.network != "auto":
            return self.network
        return "vpc" if self.driver == "libvirt" else "fake"

    def listen_socket(self) -> str | None:
        """The unix socket path when listening on one, else None."""
        return self.listen[len("unix:"):] if self.listen.startswith("unix:") else None

    def listen_host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)

    def agent_url(self) -> str:
        """The URL reported to the controller (HostInfo.agent_url)."""
        if self.advertise_url:
            return self.advertise_url
        if self.listen_socket():
            return self.listen
        return f"http://{self.listen}"
