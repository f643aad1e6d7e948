"""Placement and idempotency under concurrency: client tokens (sequential and concurrent
duplicates), 50 concurrent launches against capacity for 10, min/max fallback, disabled and down
hosts, spread over hosts, unique addresses."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from controller.services import hosts as hosts_service
from tests.functional.fake_agent import Cloud, clock_ahead, cloud_fixture


cloud = cloud_fixture(cpu_overcommit=1.0)


def test_client_token_idempotent(cloud):
    cloud.add_host("host-1")
    user = cloud.account("alice")
    first = cloud.run(user, client_token="tok-1", max_count=2)
    assert first.status_code == 201
    again = cloud.run(user, client_token="tok-1", max_count=2)
    assert again.status_code == 201 and again.json() == first.json()
    r = cloud.run(user, client_token="tok-1", max_count=3)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "IdempotentParameterMismatch"
    assert len(user.get("/v1/instances").json()["items"]) == 2
    # Tokens are per account: the same token elsewhere is a new launch.
    bob = cloud.account("bob")
    other = cloud.run(bob, client_token="tok-1", max_count=2)
    assert other.status_code == 201
    assert other.json()["reservation_id"] != first.json()["reservation_id"]


def test_concurrent_duplicate_client_tokens(cloud):
    cloud.add_host("host-1")
    user = cloud.account("alice")
    with ThreadPoolExecutor(12) as ex:
        results = list(ex.map(lambda _: cloud.run(user, client_token="same"), range(12)))
    assert {r.status_code for r in results} == {201}
    assert len({r.json()["reservation_id"] for r in results}) == 1
    assert len({r.json()["instances"][0]["instance_id"] for r in results}) == 1
    assert len(user.get("/v1/instances").json()["items"]) == 1


def test_concurrent_mismatched_client_tokens(cloud):
    cloud.add_host("host-1")
    user = cloud.account("alice")
    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(lambda i: cloud.run(user, client_token="t", tags={"n": str(i % 2)}),
                              range(8)))
    ok = [r for r in results if r.status_code == 201]
    bad = [r for r in results if r.status_code != 201]
    assert len({r.json()["reservation_id"] for r in ok}) == 1
    assert all(r.json()["error"]["code"] == "IdempotentParameterMismatch" for r in bad)
    assert len(user.get("/v1/instances").json()["items"]) == 1


def test_fifty_concurrent_launches_capacity_ten(cloud):
    cloud.add_host("host-1", vcpus=10, memory_mib=100000)
    user = cloud.account("alice")
    with ThreadPoolExecutor(50) as ex:
        results = list(ex.map(lambda _: cloud.run(user), range(50)))
    placed = [r for r in results if r.status_code == 201]
    refused = [r for r in results if r.status_code != 201]
    assert len(placed) == 10
    assert len(refused) == 40
    assert {r.status_code for r in refused} == {503}
    assert {r.json()["error"]["code"] for r in refused} == {"InsufficientInstanceCapacity"}
    assert all(r.json()["error"]["retryable"] for r in refused)
    items = user.get("/v1/instances").json()["items"]
    assert len(items) == 10
    assert len({i["private_ip"] for i in items}) == 10 and len({i["mac"] for i in items}) == 10
    host = cloud.admin.get("/v1/hosts/host-1").json()
    assert host["vcpus_used"] == 10
    # Terminating frees capacity once the instance is terminated.
    user.post(f"/v1/instances/{items[0]['instance_id']}/terminate")
    assert cloud.run(user).status_code == 503
    cloud.tick()
    assert cloud.run(user).status_code == 201


def test_min_max_count_fallback(cloud):
    cloud.add_host("host-1", vcpus=3, memory_mib=100000)
    user = cloud.account("alice")
    r = cloud.run(user, min_count=2, max_count=5)
    assert r.status_code == 201 and len(r.json()["instances"]) == 2
    r = cloud.run(user, min_count=2, max_count=5)
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "InsufficientInstanceCapacity"
    assert len(user.get("/v1/instances").json()["items"]) == 2


def test_disabled_and_down_hosts_get_nothing(tmp_path):
    cloud = Cloud(tmp_path, heartbeat_timeout_s=20.0)
    try:
        cloud.image()
        a1 = cloud.add_host("host-1")
        a2 = cloud.add_host("host-2")
        user = cloud.account("alice")
        r = cloud.admin.post("/v1/hosts/host-1/disable")
        assert r.status_code == 200 and r.json()["enabled"] is False
        hosts = {cloud.run(user).json()["instances"][0]["host_id"] for _ in range(3)}
        assert hosts == {"host-2"}
        cloud.admin.post("/v1/hosts/host-1/enable")
        with clock_ahead(21, hosts_service):  # 21 s on: host-1 heartbeats, host-2 stays silent
            cloud.heartbeat(a1)
            cloud.tick()
        hosts_doc = {h["host_id"]: h for h in cloud.admin.get("/v1/hosts").json()["items"]}
        assert hosts_doc["host-2"]["state"] == "down" and hosts_doc["host-1"]["state"] == "up"
        r = cloud.run(user)
        assert r.json()["instances"][0]["host_id"] == "host-1"
        assert a2.specs == {}
    finally:
        cloud.close()


def test_spread_over_hosts(cloud):
    for k in range(1, 4):
        cloud.add_host(f"host-{k}")
    user = cloud.account("alice")
    r = cloud.run(user, min_count=6, max_count=6)
    hosts = [i["host_id"] for i in r.json()["instances"]]
    assert sorted(hosts) == ["host-1", "host-1", "host-2", "host-2", "host-3", "host-3"]
    # Addresses come from the subnet, not from the host: one default subnet for all six.
    assert len({i["private_ip"] for i in r.json()["instances"]}) == 6
    assert len({i["subnet_id"] for i in r.json()["instances"]}) == 1
