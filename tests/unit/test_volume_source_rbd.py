"""Ceph RBD volume sources (issue 10): the contract's VolumeSource with protocol "rbd" (round
trip, validation as NetworkSource validates), the rbd network disk the agent renders from it, the
storage node's answer (wire_source, StorageInfo), its backend choice by settings (and the loud
refusal of a cephx cluster without rbd_auth cephx), and the controller's source -> spec with rows from before the protocol."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
import xml.etree.ElementTree as ET

import pytest
from pydantic import ValidationError

from agent.contract.storage_v1 import StorageInfo, VolumeObserved
from agent.contract.v1 import EXTENSIONS, VolumeAttachment, VolumeSource
from agent.drivers.base import DriverError, NetworkHost, NetworkSource
from agent.libvirt.disks import to_xml_disk
from agent.reconcile.steps import volume_disk
from agent.storage_node.app import wire_source
from agent.storage_node.backend import NbdBackend
from agent.storage_node.backends import (UnsupportedStorageConfig, build_backend,
                                         conf_requires_cephx)
from agent.storage_node.rbd_backend import RbdBackend
from agent.storage_node.settings import StorageSettings
from controller import specs
from controller.models import Volume

VID = "vol-0123456789abcdef0"
RBD = {"protocol": "rbd", "host": "100.64.0.250", "port": 6789, "export": f"kumo/{VID}"}
NOW = datetime(2026, 12, 6, tzinfo=timezone.utc)


# -- the contract -----------------------------------------------------------------------------
def test_rbd_source_round_trips_and_nbd_stays_the_default():
    src = VolumeSource.model_validate(RBD)
    assert VolumeSource.model_validate_json(src.model_dump_json()) == src
    assert src.model_dump() == RBD
    nbd = VolumeSource(host="100.64.0.250", export=VID)
    assert (nbd.protocol, nbd.port) == ("nbd", 10809)
    assert "volumes-rbd" in EXTENSIONS
    obs = VolumeObserved(volume_id=VID, size_bytes=1 << 30, exported=True, source=src)
    assert VolumeObserved.model_validate_json(obs.model_dump_json()).source.protocol == "rbd"


@pytest.mark.parametrize("bad", [
    {"export": VID}, {"export": "kumo/a/b"}, {"export": "kumo/"}, {"export": "/x"},
    {"export": "kumo/x@snap"}, {"export": "kumo/x y"}, {"export": "kumo/x'/><a"},
    {"export": "p" * 128 + "/x"}, {"host": "mon:6789"}, {"host": "10.0.0.256"},
    {"host": "[::1]"}, {"port": 0}, {"protocol": "iscsi"},
])
def test_bad_rbd_sources_are_refused(bad):
    with pytest.raises(ValidationError):
        VolumeSource.model_validate({**RBD, **bad})


def test_an_nbd_export_still_has_no_slash():
    with pytest.raises(ValidationError):
        VolumeSource(protocol="nbd", host="h", export="kumo/x")


def test_volume_disk_renders_an_rbd_network_disk():
    att = VolumeAttachment(volume_id=VID, device="vdc", source=VolumeSource(**RBD))
    disk = volume_disk(att)
    assert disk.source == NetworkSource("rbd", f"kumo/{VID}", (NetworkHost("100.64.0.250", 6789),))
    assert (disk.cache, disk.error_policy) == ("none", "stop")
    el = ET.fromstring(to_xml_disk(disk).to_xml())
    assert el.get("type") == "network"
    src = el.find("source")
    assert (src.get("protocol"), src.get("name")) == ("rbd", f"kumo/{VID}")
    host = src.find("host")
    assert (host.get("name"), host.get("port")) == ("100.64.0.250", "6789")
    assert el.find("auth") is None  # auth none: no secret


# -- the storage node ---------------------------------------------------------------------------
def test_wire_source_answers_rbd_through_the_first_monitor():
    src = NetworkSource("rbd", f"kumo/{VID}", (NetworkHost("10.0.0.1", 6789),
                                               NetworkHost("10.0.0.2", 6789)))
    assert wire_source(src) == VolumeSource(**{**RBD, "host": "10.0.0.1"})
    assert wire_source(NetworkSource("rbd", f"kumo/{VID}", (NetworkHost("mon1"),))).port == 6789
    with pytest.raises(DriverError):
        wire_source(NetworkSource("nbd", VID, (NetworkHost(socket=Path("/run/x.sock")),)))


def test_storage_info_protocol():
    assert StorageInfo(node_id="sn1").protocol == "nbd"
    assert StorageInfo(node_id="sn1", protocol="rbd").protocol == "rbd"
    with pytest.raises(ValidationError):
        StorageInfo(node_id="sn1", protocol="iscsi")


@pytest.fixture
def env(monkeypatch, tmp_path):
    for k in ("NBD_HOST", "BACKEND", "RBD_MON_HOSTS", "CEPH_CONF", "RBD_POOL", "RBD_AUTH",
              "RBD_CLIENT_ID", "RBD_KEYRING", "RBD_HOST_USER_PREFIX"):
        monkeypatch.delenv(f"KUMO_STORAGE_{k}", raising=False)
    monkeypatch.setenv("KUMO_STORAGE_STATE_DIR", str(tmp_path / "state"))

    def set_env(**kw):
        for k, v in kw.items():
            monkeypatch.setenv(f"KUMO_STORAGE_{k.upper()}", v)
    return set_env


def _conf(tmp_path, auth="none") -> Path:
    p = tmp_path / "ceph.conf"
    p.write_text(f"[global]\nmon host = 10.0.0.1\nauth cluster required = {auth}\n"
                 f"auth service required = {auth}\nauth client required = {auth}\n")
    return p


def test_settings_choose_nbd_by_default(env, tmp_path):
    env(nbd_host="100.64.0.250")
    s = StorageSettings()
    assert s.backend == "nbd"
    assert isinstance(build_backend(s), NbdBackend)


def test_settings_build_an_rbd_backend(env, tmp_path):
    env(backend="rbd", rbd_mon_hosts="100.64.0.250, mon2:3300", rbd_pool="vols",
        ceph_conf=str(_conf(tmp_path)), rbd_client_id="kumo")
    s = StorageSettings()
    assert s.monitors() == [("100.64.0.250", 6789), ("mon2", 3300)]
    b = build_backend(s)
    assert isinstance(b, RbdBackend) and b.pool == "vols" and b.client_id == "kumo"
    assert b.mon_hosts == (NetworkHost("100.64.0.250", 6789), NetworkHost("mon2", 3300))
    assert b.netns is None  # the node already runs in its namespace
    assert b._argv("rbd", "ls")[:5] == ["rbd", "--conf", str(tmp_path / "ceph.conf"), "--id",
                                        "kumo"]


@pytest.mark.parametrize("bad", [
    {"backend": "rbd"},                                            # no monitor
    {"backend": "rbd", "rbd_mon_hosts": "0.0.0.0"},
    {"backend": "rbd", "rbd_mon_hosts": "10.0.0.1:0"},
    {"backend": "rbd", "rbd_mon_hosts": "10.0.0.1:99999"},
    {"backend": "rbd", "rbd_mon_hosts": "mon;rm -rf /"},
    {"backend": "rbd", "rbd_mon_hosts": "10.0.0.1", "rbd_pool": "a/b"},
    {"backend": "rbd", "rbd_mon_hosts": "10.0.0.1", "ceph_conf": "relative.conf"},
    {"backend": "rbd", "rbd_mon_hosts": "10.0.0.1", "rbd_auth": "kerberos"},
    {"backend": "rbd", "rbd_mon_hosts": "10.0.0.1", "rbd_host_user_prefix": "a b"},
    {"backend": "rbd", "rbd_mon_hosts": "10.0.0.1", "rbd_keyring": "relative.keyring"},
    {"backend": "iscsi", "nbd_host": "10.0.0.1"},
    {"backend": "nbd"},                                            # no NBD address
])
def test_bad_backend_settings_are_refused(env, bad):
    env(**bad)
    with pytest.raises(ValidationError):
        StorageSettings()


def test_a_cephx_conf_is_refused_clearly_without_rbd_auth_cephx(env, tmp_path):
    env(backend="rbd", rbd_mon_hosts="10.0.0.1", ceph_conf=str(_conf(tmp_path, "cephx")))
    with pytest.raises(UnsupportedStorageConfig, match="cephx.*RBD_AUTH=cephx"):
        build_backend(StorageSettings())
    env(rbd_auth="cephx", rbd_client_id="kumo-storage",
        rbd_keyring=str(tmp_path / "node.keyring"))
    b = build_backend(StorageSettings())
    assert isinstance(b, RbdBackend) and b.cephx is not None
    assert b.cephx.prefix == "kumo-host-" and b.keyring == tmp_path / "node.keyring"
    assert b._argv("rbd", "ls")[5:7] == ["--keyring", str(tmp_path / "node.keyring")]
    env(ceph_conf=str(tmp_path / "missing.conf"))
    with pytest.raises(UnsupportedStorageConfig, match="cannot read"):
        build_backend(StorageSettings())


@pytest.mark.parametrize("text,cephx", [
    ("[global]\nauth client required = none\n", False),
    ("[global]\nauth_client_required = cephx, none\n", False),
    ("[global]\nauth client required = cephx\n", True),
    ("[global]\nauth client required = none\nauth cluster required = cephx\n", True),
    ("[global]\nmon host = 10.0.0.1\n", True),  # Ceph's default is cephx
])
def test_conf_requires_cephx(text, cephx):
    assert conf_requires_cephx(text) is cephx


# -- the controller ---------------------------------------------------------------------------
def _vol(**source) -> Volume:
    return Volume(volume_id=VID, account_id="acct-1", size_gib=1, state="in-use",
                  availability_zone="kumo-1a", created_at=NOW, updated_at=NOW, **source)


def test_volume_source_carries_the_recorded_protocol():
    src = specs.volume_source(_vol(source_protocol="rbd", source_host="100.64.0.250",
                                   source_port=6789, source_export=f"kumo/{VID}"))
    assert src == VolumeSource(**RBD)
    # A row from before the column: NBD, its port as recorded (10809 when none was).
    old = specs.volume_source(_vol(source_host="100.64.0.250", source_export=VID))
    assert (old.protocol, old.port, old.export) == ("nbd", 10809, VID)
    assert specs.volume_source(_vol(source_protocol="rbd")) is None  # not exported
