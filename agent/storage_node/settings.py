"""Settings of one storage node, read from the environment (prefix KUMO_STORAGE_).

Owns only configuration: names, defaults and validation. Nothing here touches the machine.
"""
from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agent.drivers.volumes import DEFAULT_MAX_SIZE


class StorageSettings(BaseSettings):
    """Everything `python -m agent.storage_node` needs; every field maps to KUMO_STORAGE_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="KUMO_STORAGE_", extra="ignore")

    #: The node's name in the deployment (StorageInfo.node_id).
    node_id: str = Field(default="sn1", pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    #: Volumes (volumes/*.qcow2), the export set (exports.json) and the daemon's QMP socket,
    #: pid file and log live here.
    state_dir: Path = Path("/var/lib/kumo/storage")
    #: Where the HTTP API listens: `unix:/path.sock` or `host:port`.
    listen: str = "127.0.0.1:8789"
    #: Shared bearer token (the deployment's agent token). Empty: every request is refused.
    token: str = Field(default="", repr=False)
    #: The address the NBD server listens on, which is also the address hosts are told to dial
    #: (VolumeSource.host): so it has no default, a wildcard would be no use to a host.
    nbd_host: IPv4Address
    nbd_port: int = Field(default=10809, ge=1, le=65535)
    #: Seconds between two reconciliations of the served exports with the wanted ones.
    ensure_interval: float = Field(default=5.0, gt=0)
    #: Largest volume accepted, in bytes.
    max_size: int = Field(default=DEFAULT_MAX_SIZE, gt=0)

    @field_validator("nbd_host")
    @classmethod
    def _dialable(cls, v: IPv4Address) -> IPv4Address:
        if v.is_unspecified or v.is_multicast:
            raise ValueError(f"{v} is not an address hosts can dial")
        return v

    @field_validator("state_dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        if not v.is_absolute():
            raise ValueError("state_dir must be absolute")
        return v

    def listen_socket(self) -> str | None:
        """The unix socket path when listening on one, else None."""
        return self.listen[len("unix:"):] if self.listen.startswith("unix:") else None

    def listen_host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"listen must be unix:/path or host:port: {self.listen!r}")
        return host.strip("[]"), int(port)
