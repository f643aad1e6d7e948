"""Builds the storage node's VolumeBackend from its settings (KUMO_STORAGE_BACKEND): the NBD
backend (agent/storage_node/backend.py) or the Ceph RBD one (rbd_backend.py). The app
(app.py) never knows which: this is the only place that chooses.

RBD with rbd_auth "cephx" keeps one Ceph user per host (agent/storage_node/rbd_cephx.py). With
rbd_auth "none", a ceph.conf that requires cephx of clients is refused, loudly, rather than
started: the hosts' QEMUs would be handed sources without a key that they cannot open.
"""
from __future__ import annotations

import re
from pathlib import Path

from agent.drivers.base import NetworkHost
from agent.drivers.volumes import VolumeBackend
from agent.storage_node.settings import StorageSettings


class UnsupportedStorageConfig(RuntimeError):
    """The settings ask for something this node cannot serve hosts (e.g. cephx)."""


_AUTH_LINE_RE = re.compile(r"^\s*auth[ _](client|cluster)[ _]required\s*=\s*(?P<v>.*)$",
                           re.IGNORECASE)


def conf_requires_cephx(conf_text: str) -> bool:
    """True when a ceph.conf requires cephx of clients (or the cluster) with no "none" allowed:
    Ceph's default when the option is missing is "cephx", so a missing line counts too."""
    values = [m["v"].split("#", 1)[0] for m in map(_AUTH_LINE_RE.match, conf_text.splitlines())
              if m is not None]
    if not values:
        return True
    return any("none" not in {x.strip() for x in re.split(r"[,; ]+", v)} for v in values)


def build_backend(settings: StorageSettings) -> VolumeBackend:
    """The backend the settings choose. Raises UnsupportedStorageConfig for what hosts could not
    use; nothing is created on the way (the RBD pool must exist already)."""
    if settings.backend == "nbd":
        from agent.storage_node.backend import NbdBackend  # needs qemu-storage-daemon only here

        # netns None: this process already runs in the node's namespace (__main__.py).
        return NbdBackend(settings.state_dir, str(settings.nbd_host), settings.nbd_port,
                          max_size=settings.max_size, tls_dir=settings.nbd_tls_dir)
    from agent.storage_node.rbd_backend import RbdBackend

    conf = settings.ceph_conf or Path("/etc/ceph/ceph.conf")
    try:
        text = conf.read_text()
    except OSError as e:
        raise UnsupportedStorageConfig(f"cannot read the ceph conf {conf}: {e}") from e
    cephx = settings.rbd_auth == "cephx"
    if not cephx and conf_requires_cephx(text):
        raise UnsupportedStorageConfig(
            f"{conf} requires cephx (or leaves Ceph's default, cephx) while rbd_auth is none: "
            "hosts would get no key; set KUMO_STORAGE_RBD_AUTH=cephx (per-host users), or "
            "'auth client required = none' (and cluster/service) on a trusted network")
    mons = [NetworkHost(host, port) for host, port in settings.monitors()]
    return RbdBackend(settings.state_dir, settings.rbd_pool, mons, conf=settings.ceph_conf,
                      client_id=settings.rbd_client_id, keyring=settings.rbd_keyring,
                      host_user_prefix=settings.rbd_host_user_prefix if cephx else None,
                      max_size=settings.max_size)
