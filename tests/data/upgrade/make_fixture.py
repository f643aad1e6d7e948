"""Make the upgrade fixture: a controller database written by a previous release of Kumo, with
data in it, for tests/functional/test_upgrade_from_previous_release.py.

Run it with a checkout of that release first on sys.path (its controller, its migrations, its
fake-agent harness), e.g. for the release whose last migration is 0016:

    git worktree add /tmp/kumo-prev 782050d
    PYTHONPATH=/tmp/kumo-prev .venv/bin/python tests/data/upgrade/make_fixture.py \\
        /tmp/release-0016 && gzip -9 /tmp/release-0016/kumo.db && \\
        cp /tmp/release-0016/* tests/data/upgrade/release-0016/
    git worktree remove /tmp/kumo-prev

It drives that release's own API (through its functional-test harness and fake agents) to make
what a running cloud has: two accounts, a key pair, a VPC with a public and a private subnet, an
internet gateway, a route table, an elastic IP, security groups with CIDR and group-peer rules,
instances running, stopped and terminated, a launch template and an Auto Scaling group, a metric
alarm and the event history. It writes OUT/kumo.db (SQLite, checkpointed), OUT/admin.key and
OUT/expected.json (what the test checks after upgrading: ids, states, the users' API keys).
"""
from __future__ import annotations

import json
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

from tests.functional.fake_agent import Cloud  # the release's harness (PYTHONPATH)


def ok(r, status: int = 200) -> dict:
    assert r.status_code == status, f"{r.request.method} {r.request.url}: {r.status_code} {r.text}"
    return r.json() if r.content else {}


def main(out: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="kumo-upgrade-fixture-"))
    cloud = Cloud(tmp)
    try:
        cloud.image()
        cloud.add_host("h1")
        cloud.add_host("h2")
        alice_r = ok(cloud.admin.post("/v1/accounts", json={"name": "alice"}), 201)
        bob_r = ok(cloud.admin.post("/v1/accounts", json={"name": "bob"}), 201)
        alice, bob = cloud.client(alice_r["api_key"]), cloud.client(bob_r["api_key"])
        key = ok(alice.post("/v1/key-pairs", json={"name": "alice-key"}), 201)

        vpc = ok(alice.post("/v1/vpcs", json={"cidr_block": "10.8.0.0/16"}), 201)
        public = ok(alice.post("/v1/subnets", json={
            "vpc_id": vpc["vpc_id"], "cidr_block": "10.8.1.0/24",
            "map_public_ip_on_launch": True}), 201)
        private = ok(alice.post("/v1/subnets", json={
            "vpc_id": vpc["vpc_id"], "cidr_block": "10.8.2.0/24"}), 201)
        igw = ok(alice.post("/v1/internet-gateways"), 201)
        ok(alice.post(f"/v1/internet-gateways/{igw['internet_gateway_id']}/attach",
                      json={"vpc_id": vpc["vpc_id"]}))
        rt = ok(alice.post("/v1/route-tables", json={"vpc_id": vpc["vpc_id"]}), 201)
        ok(alice.post(f"/v1/route-tables/{rt['route_table_id']}/routes", json={
            "destination_cidr_block": "0.0.0.0/0",
            "gateway_id": igw["internet_gateway_id"]}), 201)
        ok(alice.post(f"/v1/route-tables/{rt['route_table_id']}/associations",
                      json={"subnet_id": public["subnet_id"]}), 201)

        web = ok(alice.post("/v1/security-groups", json={
            "group_name": "web", "description": "web servers (public)", "vpc_id": vpc["vpc_id"]}), 201)
        db = ok(alice.post("/v1/security-groups", json={
            "group_name": "db", "description": "", "vpc_id": vpc["vpc_id"]}), 201)
        ok(alice.post(f"/v1/security-groups/{web['group_id']}/ingress", json={"rules": [
            {"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr_ipv4": "192.0.2.0/24"},
            {"protocol": "tcp", "from_port": 443, "to_port": 443, "cidr_ipv4": "0.0.0.0/0"}]}), 200)
        ok(alice.post(f"/v1/security-groups/{db['group_id']}/ingress", json={"rules": [
            {"protocol": "tcp", "from_port": 5432, "to_port": 5432,
             "peer_group_id": web["group_id"]}]}), 200)

        running = cloud.launch_running(alice, key_name="alice-key", subnet_id=public["subnet_id"],
                                       security_group_ids=[web["group_id"]],
                                       tags={"Name": "web-1"})
        stopped = cloud.launch_running(alice, subnet_id=private["subnet_id"],
                                       security_group_ids=[db["group_id"]],
                                       instance_type="t3.small", user_data="IyEvYmluL3NoCg==")
        gone = cloud.launch_running(bob)
        bobs = cloud.launch_running(bob, tags={"team": "b"})
        ok(alice.post(f"/v1/instances/{stopped}/stop"))
        ok(bob.post(f"/v1/instances/{gone}/terminate"))
        cloud.converge(4)
        eip = ok(alice.post("/v1/elastic-ips"), 201)
        ok(alice.post(f"/v1/elastic-ips/{eip['allocation_id']}/associate",
                      json={"instance_id": running}))
        cloud.converge(2)

        ok(alice.post("/v1/launch-templates", json={
            "launch_template_name": "web-lt", "launch_template_data": {
                "image": "kumo-tiny", "instance_type": "t3.nano", "key_name": "alice-key"}}), 201)
        ok(alice.post("/v1/autoscaling-groups", json={
            "auto_scaling_group_name": "web-asg",
            "launch_template": {"launch_template_name": "web-lt"},
            "min_size": 1, "max_size": 3, "desired_capacity": 1,
            "subnet_ids": [private["subnet_id"]]}), 201)
        ok(alice.put("/v1/alarms/web-cpu-high", json={
            "metric_name": "CPUUtilization", "namespace": "Kumo/EC2",
            "dimensions": [{"name": "AutoScalingGroupName", "value": "web-asg"}],
            "statistic": "Average", "period": 60, "evaluation_periods": 2,
            "threshold": 70, "comparison_operator": "GreaterThanThreshold"}))
        cloud.converge(4)

        states = {iid: cloud.instance(c, iid)["state"] for c, iid in
                  ((alice, running), (alice, stopped), (bob, gone), (bob, bobs))}
        expected = {
            "release_head": "0016",
            "accounts": {"alice": {"account_id": alice_r["account_id"],
                                   "api_key": alice_r["api_key"]},
                         "bob": {"account_id": bob_r["account_id"], "api_key": bob_r["api_key"]}},
            "key_pair": {"name": "alice-key", "fingerprint": key["fingerprint"]},
            "vpc_id": vpc["vpc_id"], "subnets": [public["subnet_id"], private["subnet_id"]],
            "internet_gateway_id": igw["internet_gateway_id"],
            "route_table_id": rt["route_table_id"],
            "security_groups": {"web": web["group_id"], "db": db["group_id"]},
            "allocation_id": eip["allocation_id"], "public_ip": eip["public_ip"],
            "instances": {"web": running, "stopped": stopped, "terminated": gone, "bob": bobs},
            "states": states,
            "autoscaling_group": "web-asg", "launch_template": "web-lt",
            "alarm": "web-cpu-high",
        }
    finally:
        cloud.close()
    out.mkdir(parents=True, exist_ok=True)
    db_path = tmp / "controller" / "kumo.db"
    with sqlite3.connect(db_path) as conn:  # fold the WAL into the one file that is kept
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with sqlite3.connect(db_path) as src, sqlite3.connect(out / "kumo.db") as dst:
        src.backup(dst)
    with sqlite3.connect(out / "kumo.db") as conn:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("VACUUM")
    shutil.copy(tmp / "controller" / "admin.key", out / "admin.key")
    (out / "expected.json").write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(tmp)
    print(f"{out}: {(out / 'kumo.db').stat().st_size} bytes, instances {states}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
