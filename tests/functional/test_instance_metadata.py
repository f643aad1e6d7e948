"""The metadata service's controller side (issue 12): the document and signed identity that travel
with each instance's spec, metadata options at run / in launch templates / modified while
running, bad values refused with a stable code and nothing changed, and the published
certificate."""
from __future__ import annotations

import base64
import json

from cryptography import x509
from sqlmodel import select

from agent.metadata.identity import verify_pkcs7_openssl, verify_signature
from agent.metadata.tree import resolve
from controller.models import LaunchTemplateVersion
from controller.services import launch_templates
from tests.functional.fake_agent import b64, make_qcow2
from tests.functional.vpc_support import cloud, err, ok

__all__ = ["cloud"]

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk1TQwXLkIsRU3uJqVn5uGMqAkp4Wt4D6Lw8zM8jK0z alice"


def _spec(cloud, iid):
    agent = next(iter(cloud.agents.values()))
    return agent.specs[iid]


def test_document_travels_with_the_spec_signed(cloud):
    alice = cloud.account("alice")
    ok(alice.post("/v1/key-pairs", json={"name": "alice-key", "public_key": KEY}), 201)
    key_name = "alice-key"
    iid = cloud.launch_running(alice, key_name=key_name, user_data=b64(b"#!/bin/sh\necho hi\n"),
                               tags={"Name": "web", "bad key/with slash": "x"})
    inst = cloud.instance(alice, iid)
    assert inst["metadata_options"] == {"http_tokens": "required", "http_endpoint": "enabled",
                                        "http_put_response_hop_limit": 1,
                                        "instance_metadata_tags": "disabled"}
    spec = _spec(cloud, iid)
    md = spec.metadata
    assert md is not None
    doc = md.document
    assert doc.instance_id == iid and doc.ami_id == inst["image_id"]
    assert doc.instance_type == inst["instance_type"]
    assert doc.reservation_id == inst["reservation_id"]
    assert str(doc.local_ipv4) == inst["private_ip"]
    assert doc.public_ipv4 is not None and str(doc.public_ipv4) == inst["public_ip"]
    assert doc.owner_id.startswith("acct-")
    nic = doc.primary_interface
    assert nic.mac == inst["mac"] and nic.subnet_id == inst["subnet_id"]
    assert nic.vpc_id == inst["vpc_id"] and str(nic.subnet_ipv4_cidr_block) == "172.31.0.0/20"
    assert nic.security_group_ids == inst["security_group_ids"]
    assert nic.security_group_names == ["default"]
    assert doc.availability_zone == "kumo-1a" and doc.region == "kumo-1"
    assert doc.hostname == "ip-" + inst["private_ip"].replace(".", "-") + ".kumo-1.compute.internal"
    assert doc.block_device_mapping == {"ami": "vda", "root": "/dev/vda"}
    assert doc.tags == {"Name": "web"}  # keys that cannot be a path segment are left out
    assert [(k.name, k.openssh_key.split()[:2]) for k in doc.public_keys] == \
        [("alice-key", KEY.split()[:2])]
    assert doc.user_data is None and spec.user_data_b64  # user-data travels once, in the spec
    # The identity document is signed with the published certificate's key.
    cert_pem = alice.get("/v1/metadata/certificate")
    assert cert_pem.status_code == 200 and b"BEGIN CERTIFICATE" in cert_pem.content
    cert = x509.load_pem_x509_certificate(cert_pem.content)
    body = md.identity.document.encode()
    fields = json.loads(body)
    assert fields["instanceId"] == iid and fields["privateIp"] == inst["private_ip"]
    assert fields["accountId"] == doc.owner_id and fields["region"] == "kumo-1"
    assert verify_signature(body, md.identity.signature, cert)
    assert verify_pkcs7_openssl(body, md.identity.pkcs7, cert_pem.content)
    assert not verify_signature(body.replace(iid.encode(), b"i-00000000000000000"),
                                md.identity.signature, cert)
    # The agent's tree renders the same bytes the controller signed.
    assert resolve(doc, "/latest/dynamic/instance-identity/document", _NoSigner()).body == body
    # The key stays in the controller's state dir, private.
    key_file = cloud.settings.state_dir / "metadata-identity.key"
    assert key_file.stat().st_mode & 0o077 == 0
    assert base64.b64decode(md.identity.pkcs7)


class _NoSigner:
    def signature(self, document):
        raise AssertionError("not asked")

    pkcs7 = signature


def test_options_at_run_and_modified_while_running(cloud):
    alice = cloud.account("alice")
    opts = {"http_tokens": "optional", "http_put_response_hop_limit": 3,
            "instance_metadata_tags": "enabled"}
    iid = cloud.launch_running(alice, metadata_options=opts, tags={"Name": "web"})
    want = dict(opts, http_endpoint="enabled")
    assert cloud.instance(alice, iid)["metadata_options"] == want
    doc = _spec(cloud, iid).metadata.document
    assert doc.metadata_options.model_dump() == want
    assert resolve(doc, "/latest/meta-data/tags/instance/Name", _NoSigner()).body == b"web"
    gen = _spec(cloud, iid).generation

    r = ok(alice.post(f"/v1/instances/{iid}/metadata-options", json={"http_endpoint": "disabled"}))
    assert r["instance_id"] == iid and r["state"] == "pending"
    assert r["metadata_options"] == dict(want, http_endpoint="disabled")
    cloud.converge()
    spec = _spec(cloud, iid)
    assert spec.generation > gen
    assert spec.metadata.document.metadata_options.http_endpoint == "disabled"
    assert cloud.instance(alice, iid)["metadata_options"]["http_endpoint"] == "disabled"
    # The same options again change nothing (no new generation).
    r = ok(alice.post(f"/v1/instances/{iid}/metadata-options", json={"http_endpoint": "disabled"}))
    assert r["state"] == "applied"
    cloud.converge()
    assert _spec(cloud, iid).generation == spec.generation


def test_bad_options_refused_nothing_changed(cloud):
    alice = cloud.account("alice")
    iid = cloud.launch_running(alice)
    before = cloud.instance(alice, iid)
    gen = _spec(cloud, iid).generation
    for body in ({"http_tokens": "sometimes"}, {"http_endpoint": "off"},
                 {"http_put_response_hop_limit": 0}, {"http_put_response_hop_limit": 65},
                 {"instance_metadata_tags": True}, {"http_protocol_ipv6": "enabled"}, {}):
        err(alice.post(f"/v1/instances/{iid}/metadata-options", json=body), 400,
            "InvalidParameterValue")
    err(alice.post("/v1/instances/i-0123456789abcdef0/metadata-options",
                   json={"http_tokens": "optional"}), 404, "InvalidInstanceID.NotFound")
    bob = cloud.account("bob")
    err(bob.post(f"/v1/instances/{iid}/metadata-options", json={"http_tokens": "optional"}),
        404, "InvalidInstanceID.NotFound")
    cloud.converge()
    assert cloud.instance(alice, iid) == before and _spec(cloud, iid).generation == gen
    # At run: refused before anything is created.
    n = len(alice.get("/v1/instances").json()["items"])
    for bad in ({"http_tokens": "yes"}, {"http_put_response_hop_limit": 100}):
        err(cloud.run(alice, metadata_options=bad), 400, "InvalidParameterValue")
    assert len(alice.get("/v1/instances").json()["items"]) == n


def test_launch_template_carries_options(cloud):
    alice = cloud.account("alice")
    body = {"launch_template_name": "imds", "launch_template_data": {
        "image": "kumo-tiny", "instance_type": "t3.nano",
        "metadata_options": {"http_tokens": "optional", "http_endpoint": "enabled"}}}
    lt = ok(alice.post("/v1/launch-templates", json=body), 201)
    v = ok(alice.get(f"/v1/launch-templates/{lt['launch_template_id']}/versions"))["items"][0]
    assert v["launch_template_data"]["metadata_options"]["http_tokens"] == "optional"
    bad = {"launch_template_name": "bad", "launch_template_data": {
        "image": "kumo-tiny", "instance_type": "t3.nano",
        "metadata_options": {"http_put_response_hop_limit": 0}}}
    err(alice.post("/v1/launch-templates", json=bad), 400, "InvalidParameterValue")
    # What a launch from the template (Auto Scaling) sends run(): the options are kept.
    with cloud.db.session() as s:
        row = s.exec(select(LaunchTemplateVersion)).first()
        req = launch_templates.RunInstancesRequest.model_validate(row.data)
    assert req.metadata_options.http_tokens == "optional"


def test_cli_run_and_modify_metadata_options(cloud):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_cli_api import Recorder

    rec = Recorder(cloud)
    out = rec.kumo("instances", "run", "--image", "kumo-tiny", "--type", "t3.nano",
                   "--http-tokens", "optional", "--http-put-response-hop-limit", "2")
    inst = out["instances"][0]
    assert inst["metadata_options"]["http_tokens"] == "optional"
    assert inst["metadata_options"]["http_put_response_hop_limit"] == 2
    assert inst["nocloud_seed"] is True
    seedless = rec.kumo("instances", "run", "--image", "kumo-tiny", "--type", "t3.nano",
                        "--no-nocloud-seed")["instances"][0]
    assert seedless["nocloud_seed"] is False
    got = rec.kumo("instances", "metadata-options", inst["instance_id"],
                   "--http-endpoint", "disabled")
    assert got["metadata_options"]["http_endpoint"] == "disabled"
    assert got["metadata_options"]["http_tokens"] == "optional"


def test_security_group_change_reaches_the_document(cloud):
    alice = cloud.account("alice")
    iid = cloud.launch_running(alice)
    vpc_id = cloud.instance(alice, iid)["vpc_id"]
    sg = ok(alice.post("/v1/security-groups", json={"group_name": "web", "description": "w",
                                                     "vpc_id": vpc_id}), 201)
    gen = _spec(cloud, iid).generation
    ok(alice.put(f"/v1/instances/{iid}/security-groups",
                 json={"security_group_ids": [sg["group_id"]]}))
    cloud.converge()
    spec = _spec(cloud, iid)
    assert spec.generation > gen
    nic = spec.metadata.document.primary_interface
    assert nic.security_group_ids == [sg["group_id"]] and nic.security_group_names == ["web"]


def test_elastic_ip_reaches_the_document_at_once(cloud):
    alice = cloud.account("alice")
    iid = cloud.launch_running(alice)
    auto_ip = cloud.instance(alice, iid)["public_ip"]
    eip = ok(alice.post("/v1/elastic-ips"), 201)
    gen = _spec(cloud, iid).generation
    ok(alice.post(f"/v1/elastic-ips/{eip['allocation_id']}/associate",
                  json={"instance_id": iid}))
    cloud.converge()
    spec = _spec(cloud, iid)
    assert spec.generation > gen
    assert str(spec.metadata.document.public_ipv4) == eip["public_ip"] != auto_ip
    ok(alice.post(f"/v1/elastic-ips/{eip['allocation_id']}/disassociate"))
    cloud.converge()
    assert _spec(cloud, iid).metadata.document.public_ipv4 is None
    assert cloud.instance(alice, iid)["public_ip"] is None


def test_nocloud_seed_per_instance_image_and_template(cloud):
    alice = cloud.account("alice")
    default = cloud.launch_running(alice)
    assert cloud.instance(alice, default)["nocloud_seed"] is True
    assert _spec(cloud, default).nocloud_seed is True
    seedless = cloud.launch_running(alice, nocloud_seed=False)
    assert cloud.instance(alice, seedless)["nocloud_seed"] is False
    assert _spec(cloud, seedless).nocloud_seed is False
    assert _spec(cloud, seedless).metadata is not None
    # An image that reads 169.254.169.254 only: its instances get no seed unless they ask.
    img = ok(cloud.admin.post("/v1/images", json={
        "name": "ec2-style", "public": True, "nocloud_seed": False,
        "path": str(make_qcow2(cloud.tmp / "ec2-style.qcow2"))}), 201)
    assert img["nocloud_seed"] is False
    by_image = cloud.launch_running(alice, image="ec2-style")
    assert _spec(cloud, by_image).nocloud_seed is False
    asked = cloud.launch_running(alice, image="ec2-style", nocloud_seed=True)
    assert _spec(cloud, asked).nocloud_seed is True
    body = {"launch_template_name": "seedless", "launch_template_data": {
        "image": "kumo-tiny", "instance_type": "t3.nano", "nocloud_seed": False}}
    lt = ok(alice.post("/v1/launch-templates", json=body), 201)
    v = ok(alice.get(f"/v1/launch-templates/{lt['launch_template_id']}/versions"))["items"][0]
    assert v["launch_template_data"]["nocloud_seed"] is False
    err(cloud.run(alice, nocloud_seed="sometimes"), 400, "InvalidParameterValue")


def test_an_agent_without_the_extensions_gets_the_base_contract(cloud):
    """Version skew: a host whose agent predates instance-metadata gets specs without the
    optional fields (an older agent refuses unknown fields) and with a seed; once its agent
    advertises the extensions, its instances' specs are rebuilt with them."""
    agent = next(iter(cloud.agents.values()))
    full = agent.info.extensions
    agent.info = agent.info.model_copy(update={"extensions": ["vpc-network"]})
    cloud.heartbeat()
    alice = cloud.account("alice")
    iid = cloud.launch_running(alice, nocloud_seed=False)
    spec = _spec(cloud, iid)
    assert spec.metadata is None and spec.nocloud_seed is True
    wire = spec.model_dump(mode="json")
    assert "metadata" not in wire and "nocloud_seed" not in wire
    gen = spec.generation
    agent.info = agent.info.model_copy(update={"extensions": full})
    cloud.converge()
    spec = _spec(cloud, iid)
    assert spec.generation > gen
    assert spec.metadata is not None and spec.nocloud_seed is False
    assert spec.model_dump(mode="json")["nocloud_seed"] is False
