"""The metadata service's wiring (agent/metadata/service.py) over loopback TCP in this process's
namespace (127.0.0.1 only): documents from pushed specs (user-data from the spec, identity signed
by the controller), identification by (listener = VPC, source address) from the network spec,
two VPCs with the same address answered apart, listeners re-opened when they die and closed
with their VPC, and the subsystem's status."""
from __future__ import annotations

import base64
import http.client
import json
import socket

from agent.contract.metadata_v1 import InstanceMetadata, SignedIdentity
from agent.contract.v1 import InstanceSpec, NetworkSpec
from agent.metadata.identity import IdentitySigner, identity_document, verify_signature
from agent.metadata.service import (Documents, MetadataService, PresignedSigner, VpcListener,
                                    metadata_subsystem, ports_of)
from agent.network.subsystems import PassContext
from tests.unit.test_metadata_document import INSTANCE_ID, OTHER_ID, sample

SIGNER = IdentitySigner.generate()
LOOP = "127.0.0.1"


def spec_of(doc, user_data=b"#!/bin/sh\necho hi\n", sign=True) -> InstanceSpec:
    identity = None
    if sign:
        body = identity_document(doc)
        identity = SignedIdentity(document=body.decode(),
                                  signature=SIGNER.signature(body).decode(),
                                  pkcs7=SIGNER.pkcs7(body).decode())
    return InstanceSpec.model_validate({
        "instance_id": doc.instance_id, "generation": 1, "power": "running", "vcpus": 1,
        "memory_mib": 128, "root_disk_bytes": 1 << 30,
        "image": {"image_id": "ami-0a1b2c3d4e5f60718", "url": "/v1/images/x/file",
                  "sha256": "0" * 64, "virtual_size": 1 << 30},
        "hostname": "web", "user_data_b64": base64.b64encode(user_data).decode(),
        "metadata": InstanceMetadata(document=doc.model_copy(update={"user_data": None}),
                                     identity=identity).model_dump(mode="json")})


class Cloud:
    def __init__(self):
        self.specs: dict[str, InstanceSpec] = {}
        self.bound: dict[str, int] = {}
        self.ttls: list[int] = []
        signer = PresignedSigner()
        self.svc = MetadataService(Documents(self.specs.get, signer).get, signer,
                                   listen=self._listen,
                                   set_ttl=lambda sock, ttl: self.ttls.append(ttl))

    def _listen(self, v: VpcListener) -> socket.socket:
        sock = socket.socket()
        sock.bind((LOOP, 0))
        sock.listen(16)
        sock.setblocking(False)
        self.bound[v.label] = sock.getsockname()[1]
        return sock

    def request(self, label, method, path, headers=None):
        conn = http.client.HTTPConnection(LOOP, self.bound[label], timeout=5)
        try:
            conn.request(method, path, headers=headers or {})
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def token(self, label):
        status, body = self.request(label, "PUT", "/latest/api/token",
                                    {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
        assert status == 200
        return body.decode()

    def get(self, label, path):
        return self.request(label, "GET", path, {"X-aws-ec2-metadata-token": self.token(label)})


def net_spec(*vpcs) -> NetworkSpec:
    """vpcs: (vpc_id, vni, [(instance id, ip)])."""
    return NetworkSpec.model_validate({"generation": 1, "vpcs": [
        {"vpc_id": vid, "vni": vni, "cidr": "127.0.0.0/8",
         "subnets": [{"subnet_id": "subnet-0000000000000000a", "cidr": "127.0.0.0/8",
                      "router_ip": "127.0.0.254"}],
         "ports": [{"port_id": iid, "mac": "02:00:00:00:00:0%d" % n, "ip": ip,
                    "subnet_id": "subnet-0000000000000000a"} for n, (iid, ip) in enumerate(ports)]}
        for vid, vni, ports in vpcs]})


def test_two_vpcs_same_address_each_get_their_own_document():
    cloud = Cloud()
    try:
        a = sample(instance_id=INSTANCE_ID, local_ipv4=LOOP, options={"http_tokens": "required"})
        b = sample(instance_id=OTHER_ID, local_ipv4=LOOP, options={"http_tokens": "optional"})
        cloud.specs.update({INSTANCE_ID: spec_of(a), OTHER_ID: spec_of(b, b"other")})
        sub = metadata_subsystem(cloud.svc, lambda vni: None, inode=lambda name: None)
        spec = net_spec(("vpc-0000000000000000a", 1, [(INSTANCE_ID, LOOP)]),
                        ("vpc-0000000000000000b", 2, [(OTHER_ID, LOOP)]))
        assert sub.run(PassContext(spec)) is None
        assert cloud.svc.labels() == {"vpc-0000000000000000a", "vpc-0000000000000000b"}
        assert cloud.get("vpc-0000000000000000a", "/latest/meta-data/instance-id") == \
            (200, INSTANCE_ID.encode())
        assert cloud.get("vpc-0000000000000000b", "/latest/meta-data/instance-id") == \
            (200, OTHER_ID.encode())
        assert cloud.get("vpc-0000000000000000a", "/latest/user-data")[1] == b"#!/bin/sh\necho hi\n"
        assert cloud.get("vpc-0000000000000000b", "/latest/user-data")[1] == b"other"
        # http_tokens: required for a, optional for b.
        assert cloud.request("vpc-0000000000000000a", "GET", "/latest/meta-data/")[0] == 401
        assert cloud.request("vpc-0000000000000000b", "GET", "/latest/meta-data/ami-id")[0] == 200
        assert cloud.ttls and set(cloud.ttls) == {1}
        # The identity the controller signed is served as it came, and verifies.
        _, doc = cloud.get("vpc-0000000000000000a", "/latest/dynamic/instance-identity/document")
        _, sig = cloud.get("vpc-0000000000000000a", "/latest/dynamic/instance-identity/signature")
        assert json.loads(doc)["instanceId"] == INSTANCE_ID
        assert verify_signature(doc, sig, SIGNER.certificate)
    finally:
        cloud.svc.close()


def test_unknown_source_disabled_endpoint_and_listener_lifecycle():
    cloud = Cloud()
    try:
        a = sample(instance_id=INSTANCE_ID, local_ipv4=LOOP)
        cloud.specs[INSTANCE_ID] = spec_of(a)
        sub = metadata_subsystem(cloud.svc, lambda vni: None, inode=lambda name: None)
        label = "vpc-0000000000000000a"
        # The port's address differs from the client's: nobody we serve, connection closed.
        assert sub.run(PassContext(net_spec((label, 1, [(INSTANCE_ID, "127.0.0.9")])))) is None
        try:
            status = cloud.request(label, "GET", "/latest/meta-data/")[0]
        except (ConnectionError, http.client.RemoteDisconnected):
            status = None
        assert status is None
        assert sub.run(PassContext(net_spec((label, 1, [(INSTANCE_ID, LOOP)])))) is None
        assert cloud.get(label, "/latest/meta-data/local-ipv4") == (200, b"127.0.0.1")
        # Disabled: no answer at all.
        cloud.specs[INSTANCE_ID] = spec_of(sample(instance_id=INSTANCE_ID, local_ipv4=LOOP,
                                                  options={"http_endpoint": "disabled"}))
        try:
            status = cloud.request(label, "PUT", "/latest/api/token",
                                   {"X-aws-ec2-metadata-token-ttl-seconds": "60"})[0]
        except (ConnectionError, http.client.RemoteDisconnected):
            status = None
        assert status is None
        # A listener that died is re-opened by the next pass; a VPC gone closes its listener.
        port = cloud.bound[label]
        cloud.svc._close(label)
        assert sub.run(PassContext(net_spec((label, 1, [(INSTANCE_ID, LOOP)])))) is None
        assert cloud.bound[label] != port and cloud.svc.labels() == {label}
        sub.prepare(type("Host", (), {"vpcs": ()})())
        assert cloud.svc.labels() == set()
    finally:
        cloud.svc.close()


def test_listen_failure_is_the_subsystems_error():
    signer = PresignedSigner()

    def refuse(v):
        raise OSError(99, "Cannot assign requested address")
    svc = MetadataService(lambda iid: None, signer, listen=refuse)
    try:
        sub = metadata_subsystem(svc, lambda vni: None, inode=lambda name: None)
        err = sub.run(PassContext(net_spec(("vpc-0000000000000000a", 1, []))))
        assert err is not None and err.code == "MetadataListenFailed" and err.retryable
    finally:
        svc.close()


def test_ports_of_and_inline_user_data_refused():
    spec = net_spec(("vpc-0000000000000000a", 1, [(INSTANCE_ID, "10.0.0.5")]))
    assert ports_of(spec) == {("vpc-0000000000000000a", "10.0.0.5"): INSTANCE_ID}
    import pytest
    from pydantic import ValidationError
    with pytest.raises(ValidationError):
        InstanceMetadata(document=sample())  # sample() carries user_data
