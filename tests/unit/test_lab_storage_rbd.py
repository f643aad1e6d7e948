"""The lab's switch of its storage node to RBD (lab/services.storage_rbd_env,
lab/storage_restart.py): the environment is one the node's settings accept as an RBD node on the
node's fabric address, with its own state dir and the same API socket; a lab without a storage
node is refused before anything is stopped."""
from __future__ import annotations

from pathlib import Path

import pytest

from agent.storage_node.settings import StorageSettings
from lab import Lab
from lab import naming as nm
from lab import services
from lab.errors import LabError
from lab.storage_restart import restart_storage


def test_rbd_env_is_an_rbd_node_on_the_fabric_address(tmp_path, monkeypatch):
    monkeypatch.setenv("KUMO_LAB_STORAGE_TLS", "0")  # (TLS settings want their files to exist)
    env = {**services.storage_env(tmp_path, "tok"),
           **services.storage_rbd_env(tmp_path, Path("/tmp/kceph-x/ceph.conf"), "kumo")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = StorageSettings()
    assert s.backend == "rbd" and s.rbd_pool == "kumo"
    assert s.monitors() == [(str(nm.STORAGE_ADDR.ip), 6789)]
    assert s.ceph_conf == Path("/tmp/kceph-x/ceph.conf")
    assert s.state_dir == services.storage_dir(tmp_path) / "rbd"  # not the NBD node's
    assert s.listen == services.storage_url(tmp_path)  # the controller's URL stays


def test_restart_needs_a_storage_node(tmp_path):
    with pytest.raises(LabError) as e:
        restart_storage(Lab(tmp_path, prefix="kt0000"))
    assert e.value.code == "LabNoStorageNode"


def test_rbd_env_with_cephx_is_a_per_host_cephx_node(tmp_path, monkeypatch):
    monkeypatch.setenv("KUMO_LAB_STORAGE_TLS", "0")
    conf = Path("/tmp/kceph-x/ceph.conf")
    env = {**services.storage_env(tmp_path, "tok"),
           **services.storage_rbd_env(tmp_path, conf, "kumo", client_id="kumo-storage",
                                      keyring=Path("/tmp/kceph-x/kumo-storage.keyring"))}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = StorageSettings()
    assert (s.rbd_auth, s.rbd_client_id) == ("cephx", "kumo-storage")
    assert s.rbd_keyring == Path("/tmp/kceph-x/kumo-storage.keyring")
    assert "KUMO_STORAGE_RBD_AUTH" not in services.storage_rbd_env(tmp_path, conf, "kumo")
    with pytest.raises(LabError) as e:  # half a credential
        services.storage_rbd_env(tmp_path, conf, "kumo", client_id="kumo-storage")
    assert e.value.code == "InvalidRbdAuth"
