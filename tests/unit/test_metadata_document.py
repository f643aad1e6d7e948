"""The metadata document model: a sample the other metadata tests share, and what it refuses.

The refusals matter because document values become lines of EC2 listings that cloud-init splits
on newlines, '/' and '=': a value able to carry those could forge entries elsewhere in the tree.
"""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

from agent.metadata.document import InstanceDocument, MetadataOptions

INSTANCE_ID = "i-0123456789abcdef0"
OTHER_ID = "i-0fedcba9876543210"
MAC0 = "02:00:0a:00:01:05"
MAC1 = "02:00:0a:00:02:09"
USER_DATA = b"#cloud-config\nhostname: web\n\x00\xff binary tail"


def sample(**changes) -> InstanceDocument:
    """A fully populated document; keyword arguments replace top-level fields."""
    options = changes.pop("options", {})
    data = {
        "instance_id": INSTANCE_ID,
        "ami_id": "ami-0a1b2c3d4e5f60718",
        "instance_type": "t3.micro",
        "owner_id": "123456789012",
        "reservation_id": "r-0aaaaaaaaaaaaaaaa",
        "hostname": "ip-10-0-1-5.kumo.internal",
        "local_hostname": "ip-10-0-1-5.kumo.internal",
        "local_ipv4": "10.0.1.5",
        "public_ipv4": "203.0.113.7",
        "public_hostname": "ec2-203-0-113-7.compute.kumo.example",
        "availability_zone": "kumo-1a",
        "region": "kumo-1",
        "pending_time": datetime(2026, 12, 1, 8, 30, 15, tzinfo=timezone.utc),
        "interfaces": [
            {"mac": MAC0, "device_number": 0, "interface_id": "eni-0000000000000000a",
             "local_ipv4s": ["10.0.1.5", "10.0.1.6"], "public_ipv4s": ["203.0.113.7"],
             "owner_id": "123456789012", "subnet_id": "subnet-0000000000000000b",
             "subnet_ipv4_cidr_block": "10.0.1.0/24", "vpc_id": "vpc-0000000000000000c",
             "vpc_ipv4_cidr_blocks": ["10.0.0.0/16", "100.64.0.0/16"],
             "security_group_ids": ["sg-0000000000000000d", "sg-0000000000000000e"],
             "security_group_names": ["default", "web servers"]},
            {"mac": MAC1.upper(), "device_number": 1, "interface_id": "eni-0000000000000000f",
             "local_ipv4s": ["10.0.2.9"], "owner_id": "123456789012",
             "subnet_id": "subnet-00000000000000010", "subnet_ipv4_cidr_block": "10.0.2.0/24",
             "vpc_id": "vpc-0000000000000000c", "vpc_ipv4_cidr_blocks": ["10.0.0.0/16"],
             "security_group_ids": ["sg-0000000000000000d"],
             "security_group_names": ["default"]},
        ],
        "block_device_mapping": {"ami": "vda", "root": "/dev/vda", "ebs1": "/dev/vdb"},
        "public_keys": [
            {"name": "alice", "openssh_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA alice@x"},
            {"name": "bob", "openssh_key": "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ bob"},
        ],
        "tags": {"Name": "web-1", "env": "prod line1\nline2"},
        "user_data": USER_DATA,
        "metadata_options": {"http_tokens": "optional", "instance_metadata_tags": "enabled",
                             **options},
    }
    data.update(changes)
    return InstanceDocument.model_validate(data)


def test_sample_is_valid_and_normalised():
    doc = sample()
    assert doc.primary_interface.mac == MAC0
    assert doc.interfaces[1].mac == MAC1  # lower-cased
    assert doc.pending_time.tzinfo == timezone.utc


def test_defaults_are_the_careful_ones():
    options = MetadataOptions()
    assert options.http_tokens == "required"
    assert options.http_endpoint == "enabled"
    assert options.http_put_response_hop_limit == 1
    assert options.instance_metadata_tags == "disabled"


@pytest.mark.parametrize("hop", [0, 65])
def test_hop_limit_bounds(hop):
    with pytest.raises(ValidationError):
        MetadataOptions(http_put_response_hop_limit=hop)


@pytest.mark.parametrize("change", [
    {"tags": {"a/b": "x"}},                      # a '/' would become a path segment
    {"tags": {"a b": "x"}},
    {"tags": {"0=x": "x"}},                      # cloud-init would read it as a key reference
    {"tags": {"evil\nmeta-data/": "x"}},
    {"public_keys": [{"name": "k\n1=forged", "openssh_key": "ssh-ed25519 AAAA"}]},
    {"public_keys": [{"name": "k=1", "openssh_key": "ssh-ed25519 AAAA"}]},
    {"public_keys": [{"name": "k", "openssh_key": "ssh-ed25519 AAAA\nssh-rsa BBBB"}]},
    {"hostname": "host\nname"},
    {"instance_type": "t3.micro\nx"},
    {"instance_id": "i-XYZ"},
    {"owner_id": "12345"},
    {"block_device_mapping": {"root": "/dev/../etc"}},
    {"block_device_mapping": {"../x": "vda"}},
    {"user_data": b"x" * 16385},
])
def test_refuses_values_that_could_forge_entries(change):
    with pytest.raises(ValidationError):
        sample(**change)


def test_interfaces_need_one_primary_and_unique_macs():
    doc = sample()
    eni = [i.model_dump() for i in doc.interfaces]
    with pytest.raises(ValidationError):
        sample(interfaces=[{**eni[1], "device_number": 2}])
    with pytest.raises(ValidationError):
        sample(interfaces=[eni[0], {**eni[1], "mac": MAC0}])
    with pytest.raises(ValidationError):
        sample(interfaces=[{**eni[0], "security_group_names": ["default"]}])
