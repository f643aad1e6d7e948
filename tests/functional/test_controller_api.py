"""The REST contract: auth, admin checks, account isolation, bad input (stable codes, nothing
created), key pairs, instance types, images, pagination and the error body shape."""
from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from tests.functional.fake_agent import AGENT_TOKEN, Cloud, b64, make_qcow2


@pytest.fixture
def cloud(tmp_path):
    c = Cloud(tmp_path)
    c.image()
    c.add_host("host-1")
    yield c
    c.close()


def _err(r, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["retryable"] in (True, False)


def test_auth_failures(cloud):
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"},
                    {"Authorization": f"Bearer {AGENT_TOKEN}"}):
        r = cloud.client(None).get("/v1/instances", headers=headers)
        _err(r, 401, "AuthFailure")
    # The agent endpoints take the agent token, not API keys.
    _err(cloud.admin.post("/v1/agent/heartbeat", json={}), 401, "AuthFailure")
    img = cloud.admin.get("/v1/images").json()["items"][0]
    _err(cloud.admin.get(f"/v1/images/{img['image_id']}/file"), 401, "AuthFailure")
    r = cloud.agent_client.get(f"/v1/images/{img['image_id']}/file")
    assert r.status_code == 200 and r.content[:4] == b"QFI\xfb"


def test_admin_only(cloud):
    user = cloud.account("alice")
    assert user.get("/v1/account").json()["is_admin"] is False
    _err(user.post("/v1/accounts", json={"name": "bob"}), 403, "UnauthorizedOperation")
    _err(user.get("/v1/accounts"), 403, "UnauthorizedOperation")
    _err(user.get("/v1/hosts"), 403, "UnauthorizedOperation")
    _err(user.post("/v1/instance-types", json={"name": "x1.big", "vcpus": 1, "memory_mib": 128}),
         403, "UnauthorizedOperation")
    _err(user.post("/v1/images", json={"name": "x", "path": "/etc/passwd"}), 403,
         "UnauthorizedOperation")
    _err(cloud.admin.post("/v1/accounts", json={"name": "alice"}), 409, "AccountAlreadyExists")
    _err(cloud.admin.post("/v1/accounts", json={"name": "Bad Name<"}), 400,
         "InvalidParameterValue")
    names = [a["name"] for a in cloud.admin.get("/v1/accounts").json()["items"]]
    assert names == ["admin", "alice"]


def test_account_isolation(cloud):
    alice, bob = cloud.account("alice"), cloud.account("bob")
    alice.post("/v1/key-pairs", json={"name": "k"})
    r = cloud.run(alice, key_name="k")
    iid = r.json()["instances"][0]["instance_id"]
    for path in ("", "/console", "/status"):
        _err(bob.get(f"/v1/instances/{iid}{path}"), 404, "InvalidInstanceID.NotFound")
    for action in ("stop", "start", "reboot", "terminate"):
        _err(bob.post(f"/v1/instances/{iid}/{action}"), 404, "InvalidInstanceID.NotFound")
    _err(bob.patch(f"/v1/instances/{iid}", json={"instance_type": "t3.small"}), 404,
         "InvalidInstanceID.NotFound")
    assert bob.get("/v1/instances").json()["items"] == []
    assert bob.get("/v1/instances", params={"instance_id": iid}).json()["items"] == []
    assert bob.get("/v1/key-pairs").json()["items"] == []
    _err(bob.get("/v1/key-pairs/k"), 404, "InvalidKeyPair.NotFound")
    _err(cloud.run(bob, key_name="k"), 404, "InvalidKeyPair.NotFound")
    assert all(e["account_id"] == bob.get("/v1/account").json()["account_id"]
               for e in bob.get("/v1/events").json()["items"])
    assert not [e for e in bob.get("/v1/events").json()["items"] if e["resource_id"] == iid]
    # Private images are invisible to others; public ones are visible but not deletable.
    path = make_qcow2(cloud.tmp / "priv.qcow2")
    r = alice.post("/v1/images/import", params={"name": "alice-img"}, content=path.read_bytes())
    assert r.status_code == 201, r.text
    priv = r.json()
    assert priv["public"] is False and priv["owner_account_id"] != priv["image_id"]
    _err(bob.get(f"/v1/images/{priv['image_id']}"), 404, "InvalidAMIID.NotFound")
    _err(cloud.run(bob, image=priv["image_id"]), 404, "InvalidAMIID.NotFound")
    _err(cloud.run(bob, image="alice-img"), 404, "InvalidAMIID.NotFound")
    assert [i["name"] for i in bob.get("/v1/images").json()["items"]] == ["kumo-tiny"]
    _err(bob.delete("/v1/images/kumo-tiny"), 403, "UnauthorizedOperation")
    assert cloud.run(alice, image="alice-img").status_code == 201


@pytest.mark.parametrize("body,status,code", [
    ({"image": "nope"}, 404, "InvalidAMIID.NotFound"),
    ({"image": "ami-0123456789abcdef0"}, 404, "InvalidAMIID.NotFound"),
    ({"instance_type": "t9.huge"}, 400, "InvalidInstanceType"),
    ({"min_count": 3, "max_count": 2}, 400, "InvalidParameterCombination"),
    ({"min_count": 0}, 400, "InvalidParameterValue"),
    ({"user_data": b64(b"x" * (16 * 1024 + 1))}, 400, "InvalidParameterValue"),
    ({"user_data": "not base64!!"}, 400, "InvalidUserData.Malformed"),
    ({"root_disk_gib": 0}, 400, "InvalidParameterValue"),
    ({"key_name": "missing"}, 404, "InvalidKeyPair.NotFound"),
    ({"tags": {"Name": "<script>"}}, 400, "InvalidTag"),
    ({"tags": {"Name": "a; rm -rf /"}}, 400, "InvalidTag"),
    ({"tags": {"Name": "x\n- evil: yaml"}}, 400, "InvalidTag"),
    ({"tags": {"$(reboot)": "v"}}, 400, "InvalidTag"),
    ({"tags": {"kumo:internal": "v"}}, 400, "InvalidTag"),
    ({"tags": {"k": "v'\"`&"}}, 400, "InvalidTag"),
    ({"client_token": "a b<"}, 400, "InvalidParameterValue"),
    ({"image": None}, 400, "InvalidParameterValue"),
    ({"extra": 1, "instance_type": "t9.huge"}, 400, "InvalidInstanceType"),
])
def test_bad_run_input_creates_nothing(cloud, body, status, code):
    user = cloud.account("alice")
    payload = {"image": "kumo-tiny", "instance_type": "t3.nano"}
    payload.update(body)
    r = user.post("/v1/instances", json=payload)
    _err(r, status, code)
    assert user.get("/v1/instances").json()["items"] == []
    assert not [e for e in user.get("/v1/events").json()["items"]
                if e["resource_type"] == "instance"]


def test_user_data_at_limit_and_root_disk_checks(cloud):
    user = cloud.account("alice")
    assert cloud.run(user, user_data=b64(b"x" * 16 * 1024)).status_code == 201
    cloud.image(name="big", size="3G")
    _err(cloud.run(user, image="big", root_disk_gib=2), 400, "InvalidBlockDeviceMapping")
    r = cloud.run(user, image="big")
    assert r.status_code == 201 and r.json()["instances"][0]["root_disk_gib"] == 3
    assert cloud.run(user, image="big", root_disk_gib=5).json()["instances"][0]["root_disk_gib"] == 5


def test_key_pairs(cloud):
    user = cloud.account("alice")
    r = user.post("/v1/key-pairs", json={"name": "gen"})
    assert r.status_code == 201, r.text
    kp = r.json()
    assert kp["key_pair_id"].startswith("key-") and kp["key_type"] == "ed25519"
    assert kp["private_key"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    priv = serialization.load_ssh_private_key(kp["private_key"].encode(), None)
    pub = priv.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()
    assert pub == kp["public_key"] and kp["fingerprint"].startswith("SHA256:")
    listed = user.get("/v1/key-pairs").json()["items"]
    assert [k["name"] for k in listed] == ["gen"] and "private_key" not in listed[0]
    _err(user.post("/v1/key-pairs", json={"name": "gen"}), 409, "InvalidKeyPair.Duplicate")

    other = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    r = user.post("/v1/key-pairs", json={"name": "imp", "public_key": other + " me@host"})
    assert r.status_code == 201 and r.json()["public_key"] == other
    assert "private_key" not in r.json()
    small_rsa = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    for bad in ("ssh-ed25519 AAAA", "hello", other + "\nssh-ed25519 AAAA", "",
                small_rsa.public_bytes(serialization.Encoding.OpenSSH,
                                       serialization.PublicFormat.OpenSSH).decode()):
        _err(user.post("/v1/key-pairs", json={"name": "bad", "public_key": bad}), 400,
             "InvalidKey.Format")
    _err(user.post("/v1/key-pairs", json={"name": "a;b"}), 400, "InvalidParameterValue")
    assert [k["name"] for k in user.get("/v1/key-pairs").json()["items"]] == ["gen", "imp"]
    first = user.delete("/v1/key-pairs/imp")
    assert first.status_code == 200 and first.json()["key_pair_id"].startswith("key-")
    again = user.delete("/v1/key-pairs/imp")  # idempotent, like EC2
    assert again.status_code == 200 and again.json()["key_pair_id"] is None
    assert [k["name"] for k in user.get("/v1/key-pairs").json()["items"]] == ["gen"]


def test_instance_types(cloud):
    user = cloud.account("alice")
    names = [t["name"] for t in user.get("/v1/instance-types").json()["items"]]
    assert "t3.nano" in names and "t3.micro" in names
    r = cloud.admin.post("/v1/instance-types",
                         json={"name": "k1.tiny", "vcpus": 1, "memory_mib": 128,
                               "hourly_price": 0.001})
    assert r.status_code == 201 and r.json() == {"name": "k1.tiny", "vcpus": 1, "memory_mib": 128,
                                                 "hourly_price": 0.001, "retired": False}
    _err(cloud.admin.post("/v1/instance-types", json={"name": "k1.tiny", "vcpus": 1,
                                                      "memory_mib": 128}), 409,
         "InstanceTypeAlreadyExists")
    _err(cloud.admin.post("/v1/instance-types", json={"name": "bad name", "vcpus": 1,
                                                      "memory_mib": 128}), 400,
         "InvalidParameterValue")
    iid = cloud.run(user, instance_type="k1.tiny").json()["instances"][0]["instance_id"]
    r = cloud.admin.delete("/v1/instance-types/k1.tiny")
    assert r.status_code == 200 and r.json()["retired"] is True
    assert "k1.tiny" not in [t["name"] for t in user.get("/v1/instance-types").json()["items"]]
    retired = user.get("/v1/instance-types", params={"include_retired": "true"}).json()["items"]
    assert [t["retired"] for t in retired if t["name"] == "k1.tiny"] == [True]
    _err(cloud.run(user, instance_type="k1.tiny"), 400, "InvalidInstanceType")
    assert cloud.instance(user, iid)["instance_type"] == "k1.tiny"
    _err(cloud.admin.delete("/v1/instance-types/zz.none"), 404, "InvalidInstanceType")


def test_images_register_import_checks(cloud):
    tmp = cloud.tmp
    img = cloud.admin.get("/v1/images/kumo-tiny").json()
    assert img["image_id"].startswith("ami-") and img["format"] == "qcow2"
    assert img["virtual_size"] == 64 * 1024**2 and len(img["sha256"]) == 64
    assert img["state"] == "available" and img["ready_marker"] == "KUMO-READY"
    raw = tmp / "raw.img"
    raw.write_bytes(b"\0" * 65536)
    _err(cloud.admin.post("/v1/images", json={"name": "raw", "path": str(raw)}), 400,
         "InvalidImage.FormatMismatch")
    base = make_qcow2(tmp / "base.qcow2")
    import subprocess
    over = tmp / "over.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2",
                    str(over)], check=True)
    _err(cloud.admin.post("/v1/images", json={"name": "over", "path": str(over)}), 400,
         "InvalidImage.BackingFile")
    datafile = tmp / "ext.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                    f"data_file={tmp / 'ext.raw'}", str(datafile), "16M"], check=True)
    _err(cloud.admin.post("/v1/images", json={"name": "ext", "path": str(datafile)}), 400,
         "InvalidImage.DataFile")
    huge = make_qcow2(tmp / "huge.qcow2", "300G")
    _err(cloud.admin.post("/v1/images", json={"name": "huge", "path": str(huge)}), 400,
         "InvalidImage.VirtualSize")
    _err(cloud.admin.post("/v1/images", json={"name": "gone", "path": str(tmp / "nope")}), 400,
         "InvalidImage.NotFound")
    _err(cloud.admin.post("/v1/images", json={"name": "x", "path": str(base),
                                              "format": "raw"}), 400, "InvalidParameterValue")
    _err(cloud.admin.post("/v1/images", json={"name": "x", "path": str(base),
                                              "ready_marker": "a<b>"}), 400,
         "InvalidParameterValue")
    user = cloud.account("alice")
    _err(user.post("/v1/images/import", params={"name": "raw"}, content=raw.read_bytes()), 400,
         "InvalidImage.FormatMismatch")
    _err(user.post("/v1/images/import", params={"name": "over"}, content=over.read_bytes()), 400,
         "InvalidImage.BackingFile")
    _err(user.post("/v1/images/import", params={"name": "pub", "public": "true"},
                   content=base.read_bytes()), 403, "UnauthorizedOperation")
    _err(user.post("/v1/images/import", params={"name": "a;b"}, content=base.read_bytes()),
         400, "InvalidParameterValue")
    assert [i["name"] for i in user.get("/v1/images").json()["items"]] == ["kumo-tiny"]
    stored = sorted(p.name for p in (cloud.settings.state_dir / "images").iterdir())
    assert stored == [f"{img['image_id']}.qcow2"]  # refused files left nothing behind
    # Deregister: gone from lists and launches; an image no instance uses loses its file at
    # once (tests/functional/test_image_capture.py covers one kept for a running instance).
    own = user.post("/v1/images/import", params={"name": "mine"}, content=base.read_bytes())
    assert own.status_code == 201
    iid = own.json()["image_id"]
    r = user.delete(f"/v1/images/{iid}")
    assert r.status_code == 200 and r.json()["state"] == "deregistered"
    _err(user.get(f"/v1/images/{iid}"), 404, "InvalidAMIID.NotFound")
    assert cloud.agent_client.get(f"/v1/images/{iid}/file").status_code == 404
    assert not (cloud.settings.state_dir / "images" / f"{iid}.qcow2").exists()


def test_registered_image_is_a_copy(cloud):
    src = make_qcow2(cloud.tmp / "src.qcow2")
    r = cloud.admin.post("/v1/images", json={"name": "copied", "path": str(src)})
    assert r.status_code == 201, r.text
    img = r.json()
    make_qcow2(src, "32M")  # the source is rebuilt in place afterwards
    got = cloud.agent_client.get(f"/v1/images/{img['image_id']}/file")
    assert got.status_code == 200
    import hashlib
    assert hashlib.sha256(got.content).hexdigest() == img["sha256"]
    assert got.headers["x-kumo-sha256"] == img["sha256"]


def test_list_filters_and_pagination(cloud):
    user = cloud.account("alice")
    r = cloud.run(user, min_count=5, max_count=5, tags={"Name": "web"})
    ids = [i["instance_id"] for i in r.json()["instances"]]
    cloud.run(user, tags={"Name": "db"})
    seen, token = [], None
    while True:
        params = {"max_results": 2, "tag:Name": "web"}
        if token:
            params["next_token"] = token
        page = user.get("/v1/instances", params=params).json()
        seen += [i["instance_id"] for i in page["items"]]
        token = page["next_token"]
        if not token:
            break
    assert seen == ids
    assert len(user.get("/v1/instances", params={"state": "pending"}).json()["items"]) == 6
    assert user.get("/v1/instances", params={"state": "running"}).json()["items"] == []
    one = user.get("/v1/instances", params={"instance_id": ids[2]}).json()["items"]
    assert [i["instance_id"] for i in one] == [ids[2]]
    _err(user.get("/v1/instances", params={"next_token": "!!"}), 400, "InvalidPaginationToken")
    _err(user.get("/v1/instances", params={"max_results": 5000}), 400, "InvalidParameterValue")
    _err(user.get("/v1/instances/i-0123456789abcdef0"), 404, "InvalidInstanceID.NotFound")


def test_instance_json_shape(cloud):
    user = cloud.account("alice")
    inst = cloud.run(user).json()["instances"][0]
    assert set(inst) == {
        "instance_id", "reservation_id", "image_id", "instance_type", "vcpus", "memory_mib",
        "root_disk_gib", "key_name", "tags", "state", "state_reason", "instance_status",
        "system_status", "host_id", "launch_time", "private_ip", "mac", "hostname",
        "client_token", "created_at", "updated_at", "vpc_id", "subnet_id", "public_ip",
        "security_group_ids", "block_device_mappings", "metadata_options", "nocloud_seed"}
    assert inst["block_device_mappings"] == []
    assert inst["instance_id"].startswith("i-") and len(inst["instance_id"]) == 19
    assert inst["created_at"].endswith("Z")
