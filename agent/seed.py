"""NoCloud seed ISOs: the cloud-init data source an instance reads on first boot.

An ISO 9660 image (with Joliet and Rock Ridge so every reader sees the real names) whose volume
identifier is `cidata`, holding `meta-data` and `user-data` and, when the instance has static
addresses, `network-config` (netplan-style version 2). YAML is produced with yaml.safe_dump, never
text templates. Written atomically (temp file + rename) so a guest never sees half a seed.
"""
from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pycdlib
import yaml

from agent.fsutil import atomic_write

VOLUME_ID = "cidata"
#: (Rock Ridge / Joliet name, ISO 9660 level-1 name)
_FILES = {
    "meta-data": "/METADATA.;1",
    "user-data": "/USERDATA.;1",
    "network-config": "/NETCONF.;1",
}


def _yaml(data: dict) -> bytes:
    return yaml.safe_dump(data, default_flow_style=False, sort_keys=True).encode()


def meta_data(instance_id: str, hostname: str, ssh_authorized_keys: Sequence[str] = ()) -> dict:
    """NoCloud meta-data: instance-id (a new one makes cloud-init run its per-instance modules
    again), local-hostname, and public-keys (a list, which NoCloud accepts like EC2's)."""
    md: dict[str, Any] = {"instance-id": instance_id, "local-hostname": hostname}
    keys = [k.strip() for k in ssh_authorized_keys if k.strip()]
    if keys:
        md["public-keys"] = keys
    return md


def network_config_v2(nics: Iterable[Any]) -> dict | None:
    """Network config version 2 for contract NicSpecs (static addresses, matched by MAC).

    Only the first NIC with a gateway gets the default route (gateway4): two default routes
    would make the guest's egress path depend on interface order."""
    ethernets: dict[str, dict] = {}
    have_default = False
    for nic in nics:
        eth: dict[str, Any] = {
            "match": {"macaddress": str(nic.mac).lower()},
            "set-name": nic.device,
            "addresses": [str(nic.address)],
        }
        if nic.gateway is not None and not have_default:
            eth["gateway4"] = str(nic.gateway)
            have_default = True
        if nic.nameservers:
            eth["nameservers"] = {"addresses": [str(ns) for ns in nic.nameservers]}
        ethernets[nic.device] = eth
    if not ethernets:
        return None
    return {"version": 2, "ethernets": ethernets}


def _atomic_write_iso(iso: pycdlib.PyCdlib, path: Path) -> None:
    atomic_write(path, iso.write_fp)


def write_seed_iso(path: Path | str, meta: dict, user_data: bytes,
                   network_config: dict | None = None) -> Path:
    """Write a NoCloud seed ISO with the given meta-data dict, raw user-data and network-config."""
    path = Path(path)
    contents = {"meta-data": _yaml(meta), "user-data": bytes(user_data)}
    if network_config is not None:
        contents["network-config"] = _yaml(network_config)
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=1, vol_ident=VOLUME_ID, joliet=3, rock_ridge="1.09")
    try:
        for name, data in contents.items():
            iso.add_fp(io.BytesIO(data), len(data), iso_path=_FILES[name], rr_name=name,
                       joliet_path=f"/{name}", file_mode=0o100444)
        _atomic_write_iso(iso, path)
    finally:
        iso.close()
    return path


def build_seed(path: Path | str, *, instance_id: str, hostname: str, user_data: bytes,
               ssh_authorized_keys: Sequence[str] = (),
               network_config: dict | None = None) -> Path:
    """Write the seed ISO of one instance."""
    return write_seed_iso(path, meta_data(instance_id, hostname, ssh_authorized_keys),
                          user_data, network_config)


def read_seed(path: Path | str) -> dict:
    """Read a seed back: {"volume_id", "meta-data": dict, "user-data": bytes,
    "network-config": dict | None}. Names are read through Rock Ridge, as Linux guests do."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        out: dict[str, Any] = {"volume_id": iso.pvd.volume_identifier.decode().strip()}
        for name in _FILES:
            buf = io.BytesIO()
            try:
                iso.get_file_from_iso_fp(buf, rr_path=f"/{name}")
            except pycdlib.pycdlibexception.PyCdlibInvalidInput:
                out[name] = None
                continue
            data = buf.getvalue()
            out[name] = data if name == "user-data" else yaml.safe_load(data)
        out["joliet_names"] = sorted(
            child.file_identifier().decode("utf-16-be")
            for child in iso.list_children(joliet_path="/")
            if child.is_file())
        return out
    finally:
        iso.close()
