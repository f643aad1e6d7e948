"""Hosts: registered by agent heartbeats, with their capacity, liveness and VPC dataplane
bookkeeping."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger
from sqlmodel import Field, SQLModel

from controller.db import UtcDateTime


class HostBase(SQLModel):
    host_id: str = Field(primary_key=True, max_length=63)
    state: str = Field(default="up", max_length=8)
    enabled: bool = True
    hypervisor: str = Field(max_length=16)
    architecture: str = Field(max_length=16)
    vcpus: int
    memory_mib: int
    disk_bytes: int = Field(sa_type=BigInteger)
    versions: dict = Field(default_factory=dict, sa_type=JSON)
    #: The agent contract's extensions the host's agent implements (from its heartbeats): the
    #: controller sends a host only the optional spec fields it understands.
    extensions: list = Field(default_factory=list, sa_type=JSON)
    last_heartbeat: datetime | None = Field(default=None, sa_type=UtcDateTime)


class HostPublic(HostBase):
    vcpus_used: int = 0
    memory_mib_used: int = 0
    disk_bytes_used: int = 0
    #: "ok", "degraded" or "down", and why (controller/services/host_health.py).
    health: str = "ok"
    health_reasons: list[str] = []
    #: Seconds since its last heartbeat (None: never heard from).
    heartbeat_age_s: float | None = None


class Host(HostBase, table=True):
    agent_url: str = Field(max_length=4096)
    contract: str = Field(default="v1", max_length=8)
    created_at: datetime = Field(sa_type=UtcDateTime)
    # The VPC dataplane: the host's VXLAN underlay address (from its heartbeat), the generation
    # and digest of the last network document built for it, and the generation it accepted.
    underlay_ip: str | None = Field(default=None, max_length=15)
    network_generation: int = 0
    network_digest: str | None = Field(default=None, max_length=64)
    network_acked: int = 0
