"""cloud-init from the metadata service (issue 12), with a real debian-12 guest and no seed ISO.

One guest boots for the whole module: debian-12 launched with nocloud_seed false, IMDSv2
required (Kumo's default), a key pair, #cloud-config user-data, and a security group with SSH
in and NO egress rule at all; beside it a kumo-tiny twin in a second account at the very same
private address (both default VPCs are 172.31.0.0/16), which gets its own data. Everything it knows comes from 169.254.169.254 through cloud-init's
EC2 datasource (the platform recognised from SMBIOS as on EC2). Checks, each once:
- cloud-init done without errors from DataSourceEc2Local; hostname, key, user-data and network
  taken from the metadata; no cdrom in the guest;
- security groups do not filter metadata traffic (there is no egress rule), while another port
  on the same address stays filtered for a whole probe window;
- the token hop limit seen from a network namespace NATed inside the guest: hop limit 1 gets
  the namespace no token for a whole window (while GETs still answer it 401), hop limit 2 does;
- metadata keeps answering while the controller is down, and a token issued before an agent
  restart is still accepted after it.
"""
from __future__ import annotations

import json
import time

import pytest

from tests.lab.cloud import kill9, second_account_fixture, user_fixture
from tests.lab.guests import wait_ssh
from tests.lab.sg_support import restart_agent

pytestmark = [pytest.mark.lab, pytest.mark.slow]

KEY = "md-cloud-init"
USER_DATA = b"#cloud-config\nruncmd:\n  - [sh, -c, 'echo ec2-user-data-ran > /root/ud.txt']\n"
#: A whole probe window for negative checks: every try in it must fail.
WINDOW_S = 6.0
#: A small IMDS client in the guest (python3 is there for cloud-init; there is no curl).
#: `md.py token TTL` prints a token; `md.py get PATH [TOKEN]` the body; failures print
#: "HTTP <code>", "TIMEOUT" or "REFUSED" and exit 1.
CLIENT = r'''
import socket, sys, urllib.error, urllib.request
BASE = "http://169.254.169.254"
def call(req):
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            print(r.read().decode()); return 0
    except urllib.error.HTTPError as e:
        print(f"HTTP {e.code}"); return 1
    except (socket.timeout, TimeoutError):
        print("TIMEOUT"); return 1
    except urllib.error.URLError as e:
        r = e.reason
        print("TIMEOUT" if isinstance(r, (socket.timeout, TimeoutError)) else
              "REFUSED" if isinstance(r, ConnectionRefusedError) else f"ERROR {r}"); return 1
if sys.argv[1] == "token":
    sys.exit(call(urllib.request.Request(BASE + "/latest/api/token", method="PUT",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": sys.argv[2]})))
if sys.argv[1] == "get":
    h = {"X-aws-ec2-metadata-token": sys.argv[3]} if len(sys.argv) > 3 else {}
    sys.exit(call(urllib.request.Request(BASE + sys.argv[2], headers=h)))
if sys.argv[1] == "connect":  # a bare TCP connect to 169.254.169.254:PORT
    s = socket.socket(); s.settimeout(1)
    try:
        s.connect(("169.254.169.254", int(sys.argv[2]))); print("CONNECTED"); sys.exit(0)
    except (socket.timeout, TimeoutError):
        print("TIMEOUT"); sys.exit(1)
    except ConnectionRefusedError:
        print("REFUSED"); sys.exit(1)
'''

cloud = user_fixture()
other = second_account_fixture("mdci-other")


def _default_vpc(cloud) -> str:
    return next(v["vpc_id"] for v in cloud.call("GET", "/v1/vpcs")["items"] if v["is_default"])


@pytest.fixture(scope="module")
def guest(cloud, other):
    key = cloud.key_pair(KEY)
    other.key_pair(KEY)
    vpc = _default_vpc(cloud)
    sg = cloud.call("POST", "/v1/security-groups", json={
        "group_name": f"md-no-egress-{int(time.time())}", "description": "ssh in, nothing out",
        "vpc_id": vpc})
    gid = sg["group_id"]
    cloud.call("POST", f"/v1/security-groups/{gid}/ingress", json={"rules": [
        {"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr_ipv4": "0.0.0.0/0"}]})
    egress = cloud.call("GET", f"/v1/security-groups/{gid}")["egress_rules"]
    if egress:
        cloud.call("POST", f"/v1/security-groups/{gid}/egress/revoke",
                   json={"rule_ids": [r["rule_id"] for r in egress]})
    inst = cloud.run(image="debian-12", instance_type="t3.micro", key_name=KEY,
                     user_data=USER_DATA, nocloud_seed=False, security_group_ids=[gid])[0]
    started = time.monotonic()
    # Its twin: kumo-tiny in another account, at the very same private address.
    twin = other.run(key_name=KEY, private_ip=inst["private_ip"])[0]
    inst = cloud.wait(inst["instance_id"], "running", "ok", timeout=360)
    print(f"debian-12 from the EC2 datasource: ready {time.monotonic() - started:.0f} s after "
          "the launch call (TCG)")
    sh(cloud, inst, key, f"cat > /tmp/md.py <<'EOF'\n{CLIENT}\nEOF")
    twin = other.wait(twin["instance_id"], "running", "ok", timeout=180)
    yield {"inst": inst, "key": key, "sg": gid, "twin": twin, "okey": other.key_pair(KEY)}
    cloud.action(inst["instance_id"], "terminate")
    cloud.wait(inst["instance_id"], "terminated", timeout=120)
    cloud.call("DELETE", f"/v1/security-groups/{gid}")


def sh(cloud, inst, key, command: str, timeout: float = 90) -> str:
    """Run `command` as Debian's default user (the key from the metadata is theirs)."""
    r = wait_ssh(cloud.router_netns(inst), key, inst["private_ip"], command, timeout=timeout,
                 user="debian")
    assert r.returncode == 0, f"{command!r}: {r.returncode} {r.stdout} {r.stderr}"
    return r.stdout


def _window(cloud, g, command: str) -> list[str]:
    """Run `command` in the guest again and again over WINDOW_S seconds; each try's output."""
    script = (f"end=$(( $(date +%s) + {int(WINDOW_S)} )); "
              f"while [ $(date +%s) -lt $end ]; do echo \"TRY $({command} 2>&1 | head -c 200)\"; "
              "sleep 0.2; done")
    out = sh(cloud, g["inst"], g["key"], script, timeout=60)
    return [line[4:] for line in out.splitlines() if line.startswith("TRY ")]


def test_cloud_init_done_from_the_ec2_datasource(cloud, guest):
    inst = guest["inst"]
    assert inst["nocloud_seed"] is False
    assert inst["metadata_options"]["http_tokens"] == "required"
    out = sh(cloud, inst, guest["key"], "; ".join([
        "echo \"hostname=$(hostname)\"",
        "cloud-init status --long",
        "echo \"result=$(sudo cat /run/cloud-init/result.json | tr -d '\\n')\"",
        "echo \"ud=$(sudo cat /root/ud.txt)\"",
        "echo \"iid=$(cat /var/lib/cloud/data/instance-id)\"",
        "echo \"cdrom=$(ls /dev/sr* /dev/cdrom 2>/dev/null | wc -l)\"",
        "echo \"uuid=$(sudo cat /sys/class/dmi/id/product_uuid)\"",
        "echo \"net=$(sudo cat /etc/network/interfaces.d/50-cloud-init | tr '\\n' ' ')\""]))
    got = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    print(out)
    assert "status: done" in out, out
    result = json.loads(got["result"])["v1"]
    assert result["errors"] == [], out
    assert result["datasource"].startswith("DataSourceEc2Local"), out
    # The hostname cloud-init set is the metadata's local-hostname (EC2's ip-a-b-c-d form).
    assert got["hostname"].split(".")[0] == "ip-" + inst["private_ip"].replace(".", "-"), out
    assert got["ud"] == "ec2-user-data-ran", out  # user-data from GET /latest/user-data
    assert got["iid"] == inst["instance_id"], out
    assert got["cdrom"] == "0", out  # no seed: nothing else could have told it
    assert got["uuid"].startswith("ec2"), out  # what ds-identify recognised
    assert "dhcp" in got["net"], out  # network config rendered from the metadata's NIC


def test_the_same_address_in_another_account_gets_its_own(cloud, other, guest):
    inst, twin = guest["inst"], guest["twin"]
    assert twin["private_ip"] == inst["private_ip"] and twin["vpc_id"] != inst["vpc_id"]
    r = other.ssh(twin, guest["okey"], "T=$(curl -s -m 3 -X PUT -H "
                  "'X-aws-ec2-metadata-token-ttl-seconds: 60' http://169.254.169.254/latest/api/token)"
                  " && curl -s -m 3 -H \"X-aws-ec2-metadata-token: $T\" "
                  "http://169.254.169.254/latest/meta-data/instance-id")
    assert r.returncode == 0 and r.stdout.strip() == twin["instance_id"], (r.stdout, r.stderr)
    # (and the debian guest configured itself with its own id: the test above)


def test_security_groups_do_not_filter_metadata(cloud, guest):
    sg = cloud.call("GET", f"/v1/security-groups/{guest['sg']}")
    assert sg["egress_rules"] == []
    # The service answers (GETs without a token are 401: it answered)...
    assert "HTTP 401" in sh(cloud, guest["inst"], guest["key"],
                            "python3 /tmp/md.py get /latest/meta-data/instance-id || true")
    # ...but only it is exempt: another port of the same address is dropped by the group for
    # the whole window (without the group the router namespace would refuse it at once).
    tries = _window(cloud, guest, "python3 /tmp/md.py connect 81")
    assert len(tries) >= 3 and all(t == "TIMEOUT" for t in tries), tries


def _namespace_behind_nat(cloud, guest) -> None:
    """`md-c` inside the guest: a veth to the guest, masqueraded out of its uplink, as a
    container runtime does."""
    sh(cloud, guest["inst"], guest["key"], "sudo sh -ec '"
       "ip netns add md-c; ip link add md-v0 type veth peer name md-v1; "
       "ip link set md-v1 netns md-c; ip addr add 192.168.77.1/24 dev md-v0; ip link set md-v0 up; "
       "ip -n md-c addr add 192.168.77.2/24 dev md-v1; ip -n md-c link set md-v1 up; "
       "ip -n md-c link set lo up; ip -n md-c route add default via 192.168.77.1; "
       "sysctl -qw net.ipv4.ip_forward=1; "
       "up=$(ip route show default | sed -n \"s/.* dev \\([^ ]*\\).*/\\1/p\"); "
       "nft add table ip mdnat; "
       "nft add chain ip mdnat post { type nat hook postrouting priority 100 \\; }; "
       "nft add rule ip mdnat post oifname $up ip saddr 192.168.77.0/24 masquerade'")


def _set_hop_limit(cloud, iid: str, limit: int) -> None:
    deadline = time.monotonic() + 60
    while cloud.call("POST", f"/v1/instances/{iid}/metadata-options",
                     json={"http_put_response_hop_limit": limit})["state"] != "applied":
        assert time.monotonic() < deadline, "the host never acknowledged the new options"
        time.sleep(0.5)


def test_token_hop_limit_seen_from_a_namespace_inside_the_guest(cloud, guest):
    inst, key = guest["inst"], guest["key"]
    assert inst["metadata_options"]["http_put_response_hop_limit"] == 1
    _namespace_behind_nat(cloud, guest)
    in_ns = "sudo ip netns exec md-c python3 /tmp/md.py"
    try:
        # Positive controls: the guest itself gets a token; the namespace reaches the service
        # (a GET's reply is not hop-limited: 401, no token).
        assert len(sh(cloud, inst, key, "python3 /tmp/md.py token 60").strip()) > 20
        assert "HTTP 401" in sh(cloud, inst, key,
                                f"{in_ns} get /latest/meta-data/instance-id || true")
        # Hop limit 1: the token reply dies at the guest's forwarding, every try of the window.
        tries = _window(cloud, guest, f"{in_ns} token 60")
        assert len(tries) >= 2 and all(t == "TIMEOUT" for t in tries), tries
        _set_hop_limit(cloud, inst["instance_id"], 2)
        out = sh(cloud, inst, key, f"T=$({in_ns} token 60) && "
                 f"{in_ns} get /latest/meta-data/instance-id \"$T\"")
        assert out.strip() == inst["instance_id"], out
    finally:
        _set_hop_limit(cloud, inst["instance_id"], 1)
        sh(cloud, inst, key, "sudo sh -c 'nft delete table ip mdnat; ip netns del md-c; "
           "ip link del md-v0' || true")


def test_metadata_without_the_controller_and_tokens_across_an_agent_restart(cloud, guest):
    inst, key = guest["inst"], guest["key"]
    token = sh(cloud, inst, key, "python3 /tmp/md.py token 21600").strip()
    get_id = f"python3 /tmp/md.py get /latest/meta-data/instance-id {token}"
    kill9(cloud.lab, "controller")
    try:
        # Every try over the window answers, from the host's own copy of the spec.
        tries = _window(cloud, guest, get_id)
        assert len(tries) >= 3 and all(t == inst["instance_id"] for t in tries), tries
        with pytest.raises(Exception):
            cloud.api.get("/v1/instances", timeout=2)  # really down
    finally:
        cloud.lab.up(hosts=2)  # restarts what died, touches nothing else
    restart_agent(cloud.lab, inst["host_id"])
    # The token issued before the agent restarted is still accepted (the secret is kept).
    out = sh(cloud, inst, key, f"for i in 1 2 3 4 5 6 7 8 9 10; do {get_id} && break; "
             "sleep 1; done")
    assert out.strip().splitlines()[-1] == inst["instance_id"], out
