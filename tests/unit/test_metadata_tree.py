"""The EC2 path tree: every listing and leaf for the sample document, versions, 404s.

The last tests crawl the tree with a port of cloud-init's MetadataMaterializer (parsing rules
from cloudinit/sources/helpers/ec2.py: '/' means a sub-directory, `N=name` means the leaf
`N/openssh-key`), so the listings are checked the way the real datasource reads them.
"""
from __future__ import annotations

import json

import pytest

from agent.metadata import tree
from agent.metadata.identity import IdentitySigner, verify_signature
from tests.unit.test_metadata_document import INSTANCE_ID, MAC0, MAC1, USER_DATA, sample

SIGNER = IdentitySigner.generate()


def get(path, doc=None):
    return tree.resolve(doc or sample(), path, SIGNER)


def text(path, doc=None):
    answer = get(path, doc)
    assert answer.status == 200, (path, answer.status)
    return answer.body.decode()


def test_root_lists_versions():
    lines = text("/").split("\n")
    assert lines[0] == "1.0" and lines[-1] == "latest"
    for probed in ("2009-04-04", "2016-09-02", "2018-09-24", "2021-03-23", "2007-01-19"):
        assert probed in lines
    assert all(not line.endswith("/") for line in lines)


@pytest.mark.parametrize("version", ["latest", "2009-04-04", "2021-03-23", "1.0"])
def test_every_version_serves_the_tree(version):
    assert text(f"/{version}/meta-data/instance-id") == INSTANCE_ID
    assert text(f"/{version}/") == "dynamic\nmeta-data\nuser-data"


def test_version_listing_omits_user_data_when_absent():
    assert text("/latest/", sample(user_data=None)) == "dynamic\nmeta-data"


def test_meta_data_listing():
    assert text("/latest/meta-data/").split("\n") == [
        "ami-id", "ami-launch-index", "ami-manifest-path", "block-device-mapping/", "hostname",
        "instance-action", "instance-id", "instance-life-cycle", "instance-type",
        "local-hostname", "local-ipv4", "mac", "network/", "placement/", "profile",
        "public-hostname", "public-ipv4", "public-keys/", "reservation-id", "security-groups",
        "tags/",
    ]


def test_meta_data_listing_without_optional_parts():
    doc = sample(public_ipv4=None, public_hostname=None, public_keys=[],
                 options={"instance_metadata_tags": "disabled"})
    listing = text("/latest/meta-data/", doc).split("\n")
    for absent in ("public-ipv4", "public-hostname", "public-keys/", "tags/"):
        assert absent not in listing
    for path in ("public-ipv4", "public-keys/0/openssh-key", "tags/instance/Name"):
        assert get(f"/latest/meta-data/{path}", doc).status == 404


@pytest.mark.parametrize("path,value", [
    ("ami-id", "ami-0a1b2c3d4e5f60718"),
    ("ami-launch-index", "0"),
    ("hostname", "ip-10-0-1-5.kumo.internal"),
    ("local-hostname", "ip-10-0-1-5.kumo.internal"),
    ("instance-id", INSTANCE_ID),
    ("instance-type", "t3.micro"),
    ("local-ipv4", "10.0.1.5"),
    ("public-ipv4", "203.0.113.7"),
    ("public-hostname", "ec2-203-0-113-7.compute.kumo.example"),
    ("mac", MAC0),
    ("reservation-id", "r-0aaaaaaaaaaaaaaaa"),
    ("security-groups", "default\nweb servers"),
    ("placement/", "availability-zone\nregion"),
    ("placement/availability-zone", "kumo-1a"),
    ("placement/region", "kumo-1"),
    ("block-device-mapping/", "ami\nebs1\nroot"),
    ("block-device-mapping/ami", "vda"),
    ("block-device-mapping/root", "/dev/vda"),
    ("block-device-mapping/ebs1", "/dev/vdb"),
    ("public-keys/", "0=alice\n1=bob"),
    ("public-keys/0/", "openssh-key"),
    ("public-keys/0", "openssh-key"),
    ("public-keys/0/openssh-key", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA alice@x"),
    ("public-keys/1/openssh-key", "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ bob"),
    ("network/", "interfaces/"),
    ("network/interfaces/", "macs/"),
    ("network/interfaces/macs/", f"{MAC0}/\n{MAC1}/"),
    ("tags/", "instance/"),
    ("tags/instance/", "Name\nenv"),
    ("tags/instance/Name", "web-1"),
    ("tags/instance/env", "prod line1\nline2"),
])
def test_meta_data_leaves_and_listings(path, value):
    assert text(f"/latest/meta-data/{path}") == value


def test_interface_listing_and_leaves():
    base = f"/latest/meta-data/network/interfaces/macs/{MAC0}/"
    assert text(base).split("\n") == [
        "device-number", "interface-id", "ipv4-associations/", "local-hostname", "local-ipv4s",
        "mac", "owner-id", "public-hostname", "public-ipv4s", "security-group-ids",
        "security-groups", "subnet-id", "subnet-ipv4-cidr-block", "vpc-id",
        "vpc-ipv4-cidr-block", "vpc-ipv4-cidr-blocks"]
    expected = {
        "device-number": "0", "interface-id": "eni-0000000000000000a",
        "local-ipv4s": "10.0.1.5\n10.0.1.6", "mac": MAC0, "owner-id": "123456789012",
        "public-ipv4s": "203.0.113.7",
        "security-group-ids": "sg-0000000000000000d\nsg-0000000000000000e",
        "security-groups": "default\nweb servers", "subnet-id": "subnet-0000000000000000b",
        "subnet-ipv4-cidr-block": "10.0.1.0/24", "vpc-id": "vpc-0000000000000000c",
        "vpc-ipv4-cidr-block": "10.0.0.0/16",
        "vpc-ipv4-cidr-blocks": "10.0.0.0/16\n100.64.0.0/16",
        "ipv4-associations/": "203.0.113.7", "ipv4-associations/203.0.113.7": "10.0.1.5",
    }
    for leaf, value in expected.items():
        assert text(base + leaf) == value, leaf


def test_secondary_interface_without_public_addresses():
    base = f"/latest/meta-data/network/interfaces/macs/{MAC1}/"
    listing = text(base).split("\n")
    assert "public-ipv4s" not in listing and "ipv4-associations/" not in listing
    assert text(base + "device-number") == "1"
    assert text(base + "subnet-ipv4-cidr-block") == "10.0.2.0/24"
    assert get(base + "public-ipv4s").status == 404


def test_tags_only_when_enabled():
    off = sample(options={"instance_metadata_tags": "disabled"})
    assert get("/latest/meta-data/tags/instance/", off).status == 404
    assert get("/latest/meta-data/tags/instance/Name", off).status == 404
    assert text("/latest/meta-data/tags/instance", sample()) == "Name\nenv"


def test_user_data_raw_bytes_or_404():
    answer = get("/latest/user-data")
    assert answer.status == 200 and answer.body == USER_DATA
    assert answer.content_type == "application/octet-stream"
    assert get("/2009-04-04/user-data").body == USER_DATA
    assert get("/latest/user-data", sample(user_data=None)).status == 404
    assert get("/latest/user-data", sample(user_data=b"")).body == b""


def test_dynamic_listings():
    assert text("/latest/dynamic/") == "instance-identity/"
    assert text("/latest/dynamic/instance-identity/") == "document\npkcs7\nrsa2048\nsignature"


def test_identity_document_as_ec2():
    body = text("/latest/dynamic/instance-identity/document")
    assert body.startswith('{\n  "accountId" : "123456789012",\n')
    parsed = json.loads(body)
    assert list(parsed) == [
        "accountId", "architecture", "availabilityZone", "billingProducts",
        "devpayProductCodes", "marketplaceProductCodes", "imageId", "instanceId",
        "instanceType", "kernelId", "pendingTime", "privateIp", "ramdiskId", "region", "version"]
    assert parsed == {
        "accountId": "123456789012", "architecture": "x86_64", "availabilityZone": "kumo-1a",
        "billingProducts": None, "devpayProductCodes": None, "marketplaceProductCodes": None,
        "imageId": "ami-0a1b2c3d4e5f60718", "instanceId": INSTANCE_ID,
        "instanceType": "t3.micro", "kernelId": None, "pendingTime": "2026-12-01T08:30:15Z",
        "privateIp": "10.0.1.5", "ramdiskId": None, "region": "kumo-1", "version": "2017-09-30"}
    signature = text("/latest/dynamic/instance-identity/signature")
    assert verify_signature(body.encode(), signature, SIGNER.certificate)


@pytest.mark.parametrize("path", [
    "/latest/meta-data/nope", "/latest/meta-data/instance-id/extra", "/2099-01-01/meta-data/",
    "/latest/nope", "/meta-data/", "/latest/meta-data/public-keys/alice",
    "/latest/meta-data/public-keys/2/openssh-key", "/latest/meta-data/../meta-data/ami-id",
    "/latest/dynamic/instance-identity/nope", "/latest/meta-data/network/interfaces/macs/x/",
    "/latest/api/token",
])
def test_unknown_paths_are_404_with_the_fixed_page(path):
    answer = get(path)
    assert answer.status == 404
    assert b"<title>404 - Not Found</title>" in answer.body
    assert path.encode() not in answer.body


def test_slashes_and_query_strings():
    assert text("/latest/meta-data") == text("/latest/meta-data/")
    assert text("/latest/meta-data/placement") == "availability-zone\nregion"
    assert text("/latest/meta-data/instance-id/") == INSTANCE_ID
    assert text("/latest//meta-data//instance-id") == INSTANCE_ID
    assert text("/latest/meta-data/instance-id?x=1") == INSTANCE_ID
    assert text("/latest") == text("/latest/")


# --- a port of cloud-init's MetadataMaterializer (helpers/ec2.py), to crawl as it does ---

def _materialize(path: str) -> dict:
    leaves, children = {}, []
    for field in text(path).splitlines():
        field = field.strip()
        name = field.rstrip("/")
        if not field or not name:
            continue
        if field.endswith("/"):
            children.append(name)
            continue
        resource = name
        ident, eq, sub = field.partition("=")
        if eq and ident.isdigit():
            resource, name = f"{ident}/openssh-key", sub
        leaves[name] = resource
    out = {c: _materialize(f"{path}{c}/") for c in children}
    for name, resource in leaves.items():
        blob = text(path + resource)
        out[name] = blob.splitlines() if "\n" in blob else blob
    return out


def test_cloud_init_crawl_of_meta_data():
    md = _materialize("/2021-03-23/meta-data/")
    assert md["instance-id"] == INSTANCE_ID
    assert md["public-keys"] == {"alice": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA alice@x",
                                 "bob": "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ bob"}
    macs = md["network"]["interfaces"]["macs"]
    assert set(macs) == {MAC0, MAC1}
    assert macs[MAC0]["device-number"] == "0"
    assert macs[MAC0]["local-ipv4s"] == ["10.0.1.5", "10.0.1.6"]
    assert macs[MAC1]["subnet-id"] == "subnet-00000000000000010"
    assert md["placement"] == {"availability-zone": "kumo-1a", "region": "kumo-1"}
    assert md["block-device-mapping"] == {"ami": "vda", "ebs1": "/dev/vdb", "root": "/dev/vda"}
    assert md["tags"]["instance"]["Name"] == "web-1"
    assert md["security-groups"] == ["default", "web servers"]


def test_cloud_init_crawl_of_identity():
    identity = _materialize("/latest/dynamic/instance-identity/")
    document = "\n".join(identity["document"])
    assert json.loads(document)["instanceId"] == INSTANCE_ID
    assert verify_signature(document.encode(), "".join(identity["signature"]),
                            SIGNER.certificate)
