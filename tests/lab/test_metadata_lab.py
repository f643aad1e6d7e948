"""The instance metadata service (issue 12) from inside real guests: kumo-tiny's curl talks to
169.254.169.254 over the VPC (guest -> its host's VPC router namespace), as cloud-init would.

Three guests boot in parallel and are reused by every check: A and B in the demo account's
default VPC (A with Kumo's defaults: IMDSv2 required; B with http_tokens optional), C in a second
account whose default VPC has the same CIDR (172.31.0.0/16). Checks: IMDSv2 token then
instance-id / local-ipv4 / public key / user-data; 401 without a token when required; v1 GETs
when optional; the identity document's signature and PKCS#7 verify against
GET /v1/metadata/certificate; C gets its own id (same CIDR, other account); A claiming B's
address (a spoofed source) gets nothing for a whole window while its own address works; A's
endpoint disabled while running answers nothing for a whole window while B still answers.
"""
from __future__ import annotations

import base64
import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from ipaddress import ip_address, ip_network

import pytest
from cryptography import x509

from agent.metadata.identity import verify_pkcs7_openssl, verify_signature
from tests.lab.cloud import second_account_fixture, user_fixture

pytestmark = [pytest.mark.lab, pytest.mark.slow]

MD = "http://169.254.169.254"
USER_DATA = b"#!/bin/sh\necho metadata-lab > /root/md.txt\n"
KEY = "metadata-lab"
#: A whole probe window for negative checks: every try in it must fail.
WINDOW_S = 5.0

cloud = user_fixture()


def _sh_ns(*argv, check=True):
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


def test_listener_in_a_router_namespace_real_packets():
    """The agent's listener code on real namespaces of this test's own (no lab needed): the
    address on the router namespace's lo, the socket made inside it and bound to the kr device,
    a guest namespace behind a veth asking through its default route. Checks: the token and a
    GET are answered; an address not in the network document gets no reply; a connection from
    the router namespace itself (not via kr) is refused; token replies leave with the hop limit
    as IP TTL (counted by nftables in the guest namespace), other replies do not."""
    from agent.metadata.service import Documents, MetadataService, PresignedSigner, \
        metadata_subsystem
    from agent.network.subsystems import PassContext
    from tests.unit.test_metadata_document import INSTANCE_ID, sample
    from tests.unit.test_metadata_service import net_spec, spec_of

    tag = f"kmd{int(time.time()) % 100000}"
    router, guest = f"{tag}-r", f"{tag}-g"
    for n in (router, guest):
        _sh_ns("ip", "netns", "add", n)
    svc = None
    try:
        _sh_ns("ip", "-n", router, "link", "add", "kr-000001", "type", "veth", "peer", "name",
               "eth0", "netns", guest)
        for cmd in (("-n", router, "addr", "add", "10.9.0.1/24", "dev", "kr-000001"),
                    ("-n", router, "link", "set", "kr-000001", "up"),
                    ("-n", router, "link", "set", "lo", "up"),
                    ("-n", guest, "addr", "add", "10.9.0.5/24", "dev", "eth0"),
                    ("-n", guest, "addr", "add", "10.9.0.6/24", "dev", "eth0"),
                    ("-n", guest, "link", "set", "eth0", "up"),
                    ("-n", guest, "route", "add", "default", "via", "10.9.0.1")):
            _sh_ns("ip", *cmd)
        _sh_ns("ip", "netns", "exec", guest, "nft", "add table ip t; "
               "add chain ip t in { type filter hook input priority 0; }; "
               "add rule ip t in ip saddr 169.254.169.254 ip ttl 3 counter; "
               "add rule ip t in ip saddr 169.254.169.254 ip ttl != 3 counter")
        specs = {}
        signer = PresignedSigner()
        svc = MetadataService(Documents(specs.get, signer).get, signer)
        specs[INSTANCE_ID] = spec_of(sample(instance_id=INSTANCE_ID, local_ipv4="10.9.0.5",
                                            options={"http_tokens": "required",
                                                     "http_put_response_hop_limit": 3}))
        sub = metadata_subsystem(svc, lambda vni: router)
        net = net_spec(("vpc-0000000000000000a", 1, [(INSTANCE_ID, "10.9.0.5")]))
        assert sub.run(PassContext(net)) is None

        def curl(ns, *args):
            return _sh_ns("ip", "netns", "exec", ns, "curl", "-s", "-m", "3", *args,
                          check=False)

        def counters():
            out = _sh_ns("ip", "netns", "exec", guest, "nft", "-j", "list", "chain", "ip", "t",
                         "in").stdout
            rules = [x["rule"] for x in json.loads(out)["nftables"] if "rule" in x]
            return [next(e["counter"]["packets"] for e in r["expr"] if "counter" in e)
                    for r in rules]
        tok = curl(guest, "-X", "PUT", "-H", "X-aws-ec2-metadata-token-ttl-seconds: 60",
                   f"{MD}/latest/api/token")
        assert tok.returncode == 0 and len(tok.stdout) > 20, tok
        ttl3, _ = counters()
        assert ttl3 > 0  # the token reply's data left with TTL = hop limit
        got = curl(guest, "-H", f"X-aws-ec2-metadata-token: {tok.stdout}",
                   f"{MD}/latest/meta-data/instance-id")
        assert got.stdout == INSTANCE_ID
        assert counters()[0] == ttl3  # a GET's reply: the default TTL
        assert curl(guest, "-w", "%{http_code}", "-o", "/dev/null",
                    f"{MD}/latest/meta-data/").stdout == "401"
        stranger = curl(guest, "--interface", "10.9.0.6", f"{MD}/latest/meta-data/instance-id")
        assert stranger.stdout == "" and stranger.returncode != 0
        local = curl(router, f"{MD}/latest/meta-data/instance-id")
        assert local.stdout == "" and local.returncode != 0
        # A listener that died is re-opened by the next pass.
        svc._close("vpc-0000000000000000a")
        assert sub.run(PassContext(net)) is None
        assert curl(guest, "-w", "%{http_code}", "-o", "/dev/null",
                    f"{MD}/latest/meta-data/").stdout == "401"
    finally:
        if svc is not None:
            svc.close()
        for n in (router, guest):
            _sh_ns("ip", "netns", "del", n, check=False)


def _sh(cloud_user, inst, key, script: str, timeout: float = 60) -> str:
    r = cloud_user.ssh(inst, key, script, timeout=timeout)
    assert r.returncode == 0, f"{script!r}: rc={r.returncode} {r.stdout!r} {r.stderr!r}"
    return r.stdout


TOKEN = (f"T=$(curl -s -m 3 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' "
         f"{MD}/latest/api/token)")


def _get(path: str) -> str:
    return f"curl -s -m 3 -H \"X-aws-ec2-metadata-token: $T\" {MD}{path}"


other = second_account_fixture("md-other")


@pytest.fixture(scope="module")
def guests(cloud, other):
    key = cloud.key_pair(KEY)
    okey = other.key_pair(KEY)
    a = cloud.run(key_name=KEY, user_data=USER_DATA, tags={"Name": "md-a"})[0]
    b = cloud.run(key_name=KEY, metadata_options={"http_tokens": "optional"})[0]
    c = other.run(key_name=KEY)[0]
    with ThreadPoolExecutor(3) as pool:
        fa = pool.submit(cloud.wait, a["instance_id"], "running", "ok", timeout=180)
        fb = pool.submit(cloud.wait, b["instance_id"], "running", "ok", timeout=180)
        fc = pool.submit(other.wait, c["instance_id"], "running", "ok", timeout=180)
        a, b, c = fa.result(), fb.result(), fc.result()
    return {"a": a, "b": b, "c": c, "key": key, "okey": okey}


def test_imdsv2_from_inside_the_guest(cloud, guests):
    a, key = guests["a"], guests["key"]
    assert a["metadata_options"]["http_tokens"] == "required"
    out = _sh(cloud, a, key, "; ".join([
        TOKEN, "echo \"token=${#T}\"",
        f"echo \"id=$({_get('/latest/meta-data/instance-id')})\"",
        f"echo \"ip=$({_get('/latest/meta-data/local-ipv4')})\"",
        f"echo \"key=$({_get('/latest/meta-data/public-keys/0/openssh-key')})\"",
        f"echo \"keys=$({_get('/latest/meta-data/public-keys/')})\"",
        f"{_get('/latest/user-data')} > /tmp/ud; echo \"ud=$(base64 /tmp/ud | tr -d '\\n')\"",
        f"echo \"v1=$(curl -s -m 3 -w '%{{http_code}}' -o /dev/null {MD}/latest/meta-data/)\"",
    ]))
    got = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert int(got["token"]) > 20, out
    assert got["id"] == a["instance_id"], out
    assert got["ip"] == a["private_ip"], out
    pub = subprocess.run(["ssh-keygen", "-y", "-f", str(key)], capture_output=True,
                         text=True, check=True).stdout.split()[:2]
    assert got["key"].split()[:2] == pub, out
    assert got["keys"] == f"0={KEY}", out
    assert base64.b64decode(got["ud"]) == USER_DATA, out
    assert got["v1"] == "401", out  # http_tokens required: no token, no data


def test_optional_tokens_serve_v1_gets(cloud, guests):
    b = guests["b"]
    out = _sh(cloud, b, guests["key"], f"curl -s -m 3 {MD}/latest/meta-data/instance-id")
    assert out.strip() == b["instance_id"]


def test_identity_document_verifies_against_the_published_certificate(cloud, guests):
    a = guests["a"]
    r = cloud.api.get("/v1/metadata/certificate")
    assert r.status_code == 200, r.text
    cert_pem = r.content
    cert = x509.load_pem_x509_certificate(cert_pem)
    out = _sh(cloud, a, guests["key"], "; ".join([
        TOKEN,
        f"{_get('/latest/dynamic/instance-identity/document')} > /tmp/doc",
        f"{_get('/latest/dynamic/instance-identity/signature')} > /tmp/sig",
        f"{_get('/latest/dynamic/instance-identity/pkcs7')} > /tmp/p7",
        "for f in doc sig p7; do echo \"$f=$(base64 /tmp/$f | tr -d '\\n')\"; done"]))
    got = {k: base64.b64decode(v) for k, v in
           (line.split("=", 1) for line in out.splitlines() if "=" in line)}
    doc = json.loads(got["doc"])
    assert doc["instanceId"] == a["instance_id"] and doc["privateIp"] == a["private_ip"]
    assert doc["imageId"] == a["image_id"] and doc["instanceType"] == a["instance_type"]
    assert verify_signature(got["doc"], got["sig"], cert)
    assert verify_pkcs7_openssl(got["doc"], got["p7"], cert_pem)
    assert not verify_signature(got["doc"].replace(b"running", b"x") + b" ", got["sig"], cert)


def test_two_accounts_same_cidr_each_get_their_own_instance(cloud, other, guests):
    a, c = guests["a"], guests["c"]
    net = ip_network("172.31.0.0/16")
    assert ip_address(a["private_ip"]) in net and ip_address(c["private_ip"]) in net
    assert a["vpc_id"] != c["vpc_id"]
    script = "; ".join([TOKEN, _get("/latest/meta-data/instance-id"), "echo",
                        _get("/latest/meta-data/mac")])
    lines = _sh(other, c, guests["okey"], script).split()
    assert lines[0] == c["instance_id"] and lines[-1] == c["mac"], lines
    # And A, same CIDR (maybe the same address), still gets its own.
    assert _sh(cloud, a, guests["key"], f"{TOKEN}; {_get('/latest/meta-data/instance-id')}"
               ).strip() == a["instance_id"]


def _window_all_fail(cloud_user, inst, key, probe: str) -> str:
    """Run `probe` in the guest over WINDOW_S seconds; '' if every try failed, else output."""
    script = (f"end=$(( $(date +%s) + {int(WINDOW_S)} )); n=0; "
              f"while [ $(date +%s) -lt $end ]; do n=$((n+1)); "
              f"if out=$({probe} 2>/dev/null) && [ -n \"$out\" ]; then echo \"ANSWER $out\"; fi; "
              f"sleep 0.3; done; echo \"tries=$n\"")
    return _sh(cloud_user, inst, key, script, timeout=60)


def test_spoofed_source_is_dropped_before_the_server(cloud, guests):
    """A claims B's address as its source for 169.254.169.254: the bridge's anti-spoofing drops
    the frames, so no answer (in particular not B's data) for the whole window. Positive control
    first and last: A's own address is answered."""
    a, b, key = guests["a"], guests["b"], guests["key"]
    probe = f"curl -s -m 1 {MD}/latest/meta-data/instance-id"
    assert _sh(cloud, a, key, f"{TOKEN}; {_get('/latest/meta-data/instance-id')}").strip() == \
        a["instance_id"]
    gw = str(ip_network(f"{a['private_ip']}/20", strict=False).network_address + 1)
    spoof = (f"ip addr add {b['private_ip']}/32 dev eth0; "
             f"ip route replace 169.254.169.254/32 via {gw} dev eth0 src {b['private_ip']}")
    undo = (f"ip route del 169.254.169.254/32; ip addr del {b['private_ip']}/32 dev eth0")
    _sh(cloud, a, key, spoof)
    try:
        out = _window_all_fail(cloud, a, key, probe)
    finally:
        _sh(cloud, a, key, undo)
    assert "ANSWER" not in out and "tries=" in out, out
    assert _sh(cloud, a, key, f"{TOKEN}; {_get('/latest/meta-data/instance-id')}").strip() == \
        a["instance_id"]


def test_endpoint_disabled_while_running_answers_nothing(cloud, guests):
    a, b, key = guests["a"], guests["b"], guests["key"]
    iid = a["instance_id"]
    r = cloud.call("POST", f"/v1/instances/{iid}/metadata-options",
                   json={"http_endpoint": "disabled"})
    assert r["metadata_options"]["http_endpoint"] == "disabled"
    deadline = time.monotonic() + 60
    while cloud.call("POST", f"/v1/instances/{iid}/metadata-options",
                     json={"http_endpoint": "disabled"})["state"] != "applied":
        assert time.monotonic() < deadline, "the host never acknowledged the new options"
        time.sleep(0.5)
    # Positive control: the service answers B meanwhile.
    assert _sh(cloud, b, key, f"curl -s -m 3 {MD}/latest/meta-data/instance-id").strip() == \
        b["instance_id"]
    probe = (f"curl -s -m 1 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' "
             f"{MD}/latest/api/token")
    out = _window_all_fail(cloud, a, key, probe)
    assert "ANSWER" not in out and "tries=" in out, out
    # Enabled again: answered again.
    cloud.call("POST", f"/v1/instances/{iid}/metadata-options", json={"http_endpoint": "enabled"})
    deadline = time.monotonic() + 60
    while True:
        got = cloud.ssh(a, key, f"{TOKEN}; {_get('/latest/meta-data/instance-id')}").stdout
        if got.strip() == iid:
            break
        assert time.monotonic() < deadline, got
        time.sleep(1)
