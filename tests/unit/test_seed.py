"""NoCloud seed ISOs: built with pycdlib, read back with pycdlib (and isoinfo when present)."""
from __future__ import annotations

import shutil
import subprocess
from ipaddress import IPv4Address, IPv4Interface

import pytest
import yaml

from agent.contract.v1 import NicSpec
from agent.seed import build_seed, meta_data, network_config_v2, read_seed, write_seed_iso

IID = "i-0123456789abcdef0"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO6pHqJj0ZxKmE0eL8d8s9g0z9y1Wq7K0d3b0bS4l1kq me@x"


def _nics():
    return [
        NicSpec(device="eth0", mac="52:54:00:12:34:56", bridge="br-a",
                address=IPv4Interface("10.0.1.5/24"), gateway=IPv4Address("10.0.1.1"),
                nameservers=[IPv4Address("10.0.1.2")]),
        NicSpec(device="eth1", mac="52:54:00:ab:cd:ef", bridge="br-b",
                address=IPv4Interface("10.0.2.7/28"), gateway=IPv4Address("10.0.2.1")),
    ]


def test_round_trip(tmp_path):
    path = tmp_path / "seed.iso"
    user_data = b"#cloud-config\nruncmd:\n - echo hi\n"
    net = network_config_v2(_nics())
    build_seed(path, instance_id=IID, hostname="web-1", user_data=user_data,
               ssh_authorized_keys=[KEY], network_config=net)
    got = read_seed(path)
    assert got["volume_id"] == "cidata"
    assert got["meta-data"] == {"instance-id": IID, "local-hostname": "web-1",
                                "public-keys": [KEY]}
    assert got["user-data"] == user_data
    assert got["network-config"] == net
    assert got["joliet_names"] == ["meta-data", "network-config", "user-data"]
    assert not list(tmp_path.glob(".*"))  # no temp file left


def test_no_network_config_file_when_none(tmp_path):
    path = build_seed(tmp_path / "s.iso", instance_id=IID, hostname="h", user_data=b"")
    got = read_seed(path)
    assert got["network-config"] is None
    assert got["joliet_names"] == ["meta-data", "user-data"]
    assert got["meta-data"] == {"instance-id": IID, "local-hostname": "h"}  # no empty key list
    assert got["user-data"] == b""


def test_binary_user_data_passes_unchanged(tmp_path):
    blob = bytes(range(256)) * 8  # e.g. gzip'd or MIME multipart user-data
    got = read_seed(build_seed(tmp_path / "s.iso", instance_id=IID, hostname="h", user_data=blob))
    assert got["user-data"] == blob


def test_yaml_metacharacters_are_data(tmp_path):
    """Values that would break a text template stay plain strings in safe_dump'ed YAML."""
    evil = "ssh-rsa AAAA x\ninstance-id: i-ffffffffffffffff0\n- &a !!python/object:os.system"
    path = write_seed_iso(tmp_path / "s.iso", meta_data(IID, "h", [evil + " tail"]), b"")
    md = read_seed(path)["meta-data"]
    assert md["instance-id"] == IID
    assert md["public-keys"] == [evil + " tail"]


def test_network_config_v2_shape():
    net = network_config_v2(_nics())
    assert net == {
        "version": 2,
        "ethernets": {
            "eth0": {"match": {"macaddress": "52:54:00:12:34:56"}, "set-name": "eth0",
                     "addresses": ["10.0.1.5/24"], "gateway4": "10.0.1.1",
                     "nameservers": {"addresses": ["10.0.1.2"]}},
            # only the first NIC with a gateway carries the default route
            "eth1": {"match": {"macaddress": "52:54:00:ab:cd:ef"}, "set-name": "eth1",
                     "addresses": ["10.0.2.7/28"]},
        },
    }
    assert network_config_v2([]) is None


def test_rewrite_replaces_atomically(tmp_path):
    path = tmp_path / "seed.iso"
    build_seed(path, instance_id=IID, hostname="one", user_data=b"a")
    inode = path.stat().st_ino
    build_seed(path, instance_id=IID, hostname="two", user_data=b"b")
    assert path.stat().st_ino != inode  # a new file renamed over the old one
    assert read_seed(path)["meta-data"]["local-hostname"] == "two"


@pytest.mark.skipif(shutil.which("isoinfo") is None, reason="isoinfo (genisoimage) not installed")
def test_independent_reader_sees_label_and_rock_ridge_names(tmp_path):
    path = build_seed(tmp_path / "s.iso", instance_id=IID, hostname="h", user_data=b"x",
                      network_config={"version": 2, "ethernets": {}})
    desc = subprocess.run(["isoinfo", "-d", "-i", str(path)], capture_output=True, text=True,
                          check=True).stdout
    assert "Volume id: cidata" in desc
    assert "Rock Ridge" in desc and "Joliet" in desc
    listing = subprocess.run(["isoinfo", "-R", "-f", "-i", str(path)], capture_output=True,
                             text=True, check=True).stdout.split()
    assert sorted(listing) == ["/meta-data", "/network-config", "/user-data"]
    md = subprocess.run(["isoinfo", "-R", "-x", "/meta-data", "-i", str(path)],
                        capture_output=True, check=True).stdout
    assert yaml.safe_load(md)["instance-id"] == IID


@pytest.mark.skipif(shutil.which("blkid") is None, reason="blkid not installed")
def test_blkid_sees_the_cidata_label(tmp_path):
    """cloud-init's ds-identify finds the seed by filesystem label, as blkid reports it."""
    path = build_seed(tmp_path / "s.iso", instance_id=IID, hostname="h", user_data=b"")
    out = subprocess.run(["blkid", "-p", "-o", "udev", str(path)], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert "ID_FS_TYPE=iso9660" in out and "ID_FS_LABEL=cidata" in out
