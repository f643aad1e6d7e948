"""Settings of one storage node, read from the environment (prefix KUMO_STORAGE_).

Owns only configuration: names, defaults and validation. Nothing here touches the machine.
KUMO_STORAGE_BACKEND chooses the backend: "nbd" (volumes as qcow2 files served by a
qemu-storage-daemon; needs NBD_HOST) or "rbd" (volumes as images of a Ceph pool; needs
RBD_MON_HOSTS). agent/storage_node/backends.py builds the one chosen.
"""
from __future__ import annotations

import re
from ipaddress import IPv4Address
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agent.contract.v1 import VolumeSource  # the one rule for what hosts accept
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
    #: An extra node-local unix socket (absolute path) serving the same API with the same
    #: authentication, for local administration next to a TCP `listen` (the lab: tools in the
    #: machine's root namespace cannot reach the node's fabric address). None: no extra socket.
    local_socket: Optional[Path] = None
    #: Shared bearer token (the deployment's agent token). Empty: every request is refused.
    #: Not used with api_tls_dir.
    token: str = Field(default="", repr=False)
    #: The API over mutual TLS (docs/security.md "Storage access"): a directory with the cloud
    #: CA's certificate and this node's (ca-cert.pem, server-cert.pem, server-key.pem: the same
    #: files as nbd_tls_dir). Set: only a client presenting the controller's certificate from
    #: that CA is served, and the token is ignored. None: the bearer token over plain HTTP.
    api_tls_dir: Optional[Path] = None
    #: Which backend keeps the volumes: "nbd" or "rbd" (see the module's docstring).
    backend: Literal["nbd", "rbd"] = "nbd"
    #: NBD: the address the NBD server listens on, which is also the address hosts are told to
    #: dial (VolumeSource.host): so it has no default, a wildcard would be no use to a host.
    #: Required with backend "nbd".
    nbd_host: Optional[IPv4Address] = None
    nbd_port: int = Field(default=10809, ge=1, le=65535)
    #: NBD over TLS, per host (docs/security.md "Storage access"): a directory with the cloud
    #: CA's certificate and this node's server certificate and key, as QEMU names them
    #: (ca-cert.pem, server-cert.pem, server-key.pem; `python -m controller.storage_node_cert`
    #: issues them). Set: every host gets its own NBD server on nbd_port, nbd_port + 1, ...
    #: that admits only that host's certificate, and each export opens on the server of the
    #: host its attachment is for. None: one plain NBD server that any host on the fabric can
    #: open (a trusted storage network only).
    nbd_tls_dir: Optional[Path] = None
    #: Seconds between two reconciliations of the served exports with the wanted ones.
    ensure_interval: float = Field(default=5.0, gt=0)
    #: Largest volume accepted, in bytes.
    max_size: int = Field(default=DEFAULT_MAX_SIZE, gt=0)
    #: RBD: the pool the volumes' images live in (created and `rbd pool init`-ed beforehand).
    rbd_pool: str = Field(default="kumo", pattern=r"^[A-Za-z0-9._-]{1,127}$")
    #: RBD: the monitors hosts dial, "addr[:port],..." (port 6789, msgr v1, when left out). The
    #: first is what VolumeSource carries. Required with backend "rbd".
    rbd_mon_hosts: str = ""
    #: RBD: the ceph.conf the node's own rbd/ceph tools read (None: their default,
    #: /etc/ceph/ceph.conf). Hosts never see it: they get the monitor from VolumeSource.
    ceph_conf: Optional[Path] = None
    #: RBD: the Ceph client name the node's tools use (--id; None: "admin"). With cephx, its
    #: caps are agent/storage_node/rbd_cephx.node_caps (images of the pool, and the auth
    #: commands for the hosts' users only).
    rbd_client_id: Optional[str] = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,64}$")
    #: RBD: the keyring with that client's key (None: what the ceph.conf says).
    rbd_keyring: Optional[Path] = None
    #: RBD: how hosts authenticate (docs/security.md "Storage access"). "cephx": each host its
    #: own Ceph user, client.<rbd_host_user_prefix><host id>, whose caps name exactly the
    #: images exported to it; its key reaches only that host, in its volume sources. "none":
    #: the cluster runs with auth none and every client reaches every image (a trusted
    #: storage network only).
    rbd_auth: Literal["none", "cephx"] = "none"
    #: RBD with cephx: the prefix of the hosts' Ceph user ids.
    rbd_host_user_prefix: str = Field(default="kumo-host-",
                                      pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,30}$")

    @field_validator("nbd_host")
    @classmethod
    def _dialable(cls, v: Optional[IPv4Address]) -> Optional[IPv4Address]:
        if v is not None and (v.is_unspecified or v.is_multicast):
            raise ValueError(f"{v} is not an address hosts can dial")
        return v

    @field_validator("rbd_mon_hosts")
    @classmethod
    def _monitors(cls, v: str) -> str:
        for item in filter(None, (x.strip() for x in v.split(","))):
            parse_monitor(item)
        return v

    @field_validator("nbd_tls_dir", "api_tls_dir")
    @classmethod
    def _tls_dir(cls, v: Optional[Path]) -> Optional[Path]:
        if v is None:
            return v
        if not v.is_absolute():
            raise ValueError(f"{v} must be absolute")
        missing = [n for n in ("ca-cert.pem", "server-cert.pem", "server-key.pem")
                   if not (v / n).is_file()]
        if missing:
            raise ValueError(f"{v} lacks {', '.join(missing)}")
        return v

    @field_validator("ceph_conf", "rbd_keyring", "local_socket")
    @classmethod
    def _conf_absolute(cls, v: Optional[Path]) -> Optional[Path]:
        if v is not None and not v.is_absolute():
            raise ValueError(f"{v} must be absolute")
        return v

    @model_validator(mode="after")
    def _backend_needs(self) -> "StorageSettings":
        if self.backend == "nbd" and self.nbd_host is None:
            raise ValueError("backend nbd needs KUMO_STORAGE_NBD_HOST")
        if self.backend == "rbd":
            if not self.monitors():
                raise ValueError("backend rbd needs KUMO_STORAGE_RBD_MON_HOSTS")
        return self

    def monitors(self) -> list[tuple[str, int]]:
        """rbd_mon_hosts as (address, port) pairs, in order."""
        return [parse_monitor(x.strip()) for x in self.rbd_mon_hosts.split(",") if x.strip()]

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


_MON_RE = re.compile(r"^(?P<host>[A-Za-z0-9.-]{1,253})(?::(?P<port>[0-9]{1,5}))?$")


def parse_monitor(item: str) -> tuple[str, int]:
    """"addr[:port]" -> (addr, port), port 6789 by default; the address an IPv4 address or a host
    name that hosts can dial (checked as VolumeSource checks it, which is where it ends up)."""
    m = _MON_RE.match(item)
    if m is None:
        raise ValueError(f"monitor {item!r} is not addr[:port]")
    port = int(m["port"] or 6789)
    if not 0 < port < 65536:
        raise ValueError(f"monitor {item!r}: port not in 1..65535")
    try:
        VolumeSource(protocol="rbd", host=m["host"], port=port, export="p/i")
    except ValueError as e:
        raise ValueError(f"monitor {item!r} is no address hosts can dial") from e
    if re.fullmatch(r"[0-9.]+", m["host"]):
        addr = IPv4Address(m["host"])
        if addr.is_unspecified or addr.is_multicast:
            raise ValueError(f"monitor {item!r} is no address hosts can dial")
    return m["host"], port
