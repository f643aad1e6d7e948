"""The controller's fast paths: every committed change wakes the reconciler, whether an API
request or a direct service call made it (a spec or network document reaches the agent long
before the periodic tick), while reads, failed requests and heartbeats do not; and lists page by
keyset in SQL (every instance exactly once, also while others are being launched; malformed
tokens are 400s; every list has the same parameters and shape)."""
from __future__ import annotations

import base64
import threading
import time

import pytest
from fastapi.testclient import TestClient

from controller.models import Instance, RunInstancesRequest
from controller.models.security_group import AuthorizeRequest
from controller.services import accounts, instances, lifecycle
from controller.services import security_groups as sgs
from tests.functional.fake_agent import Cloud

LONG_TICK_S = 60.0  # the periodic tick never fires during these tests
# Generous next to LONG_TICK_S so a loaded CI machine cannot fail them, yet anything reaching the
# agent within it can only have come from a wake-up.
FAST = 10.0


def _wait_for(pred, timeout: float) -> float:
    """Seconds until pred() held; fails after timeout."""
    t0 = time.monotonic()
    while not pred():
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.01)
    return time.monotonic() - t0


def _settled(ticks: list[float], quiet: float = 0.5) -> None:
    """Wait until no reconciler tick has started for `quiet` seconds."""
    t0 = time.monotonic()
    seen = len(ticks)
    while True:
        time.sleep(quiet)
        if len(ticks) == seen:
            return
        seen = len(ticks)
        assert time.monotonic() - t0 < FAST, "the reconciler never settled"


@pytest.fixture
def slow_cloud(tmp_path):
    c = Cloud(tmp_path, reconcile_interval_s=LONG_TICK_S)
    c.image()
    yield c
    c.close()


def _counting_ticks(cloud: Cloud) -> list[float]:
    """Record the time of every reconciler tick (the background loop calls self.tick)."""
    rec, ticks, real = cloud.reconciler, [], cloud.reconciler.tick

    def tick():
        ticks.append(time.monotonic())
        return real()
    rec.tick = tick
    return ticks


def test_mutations_reach_the_agent_without_waiting_for_the_tick(slow_cloud):
    cloud = slow_cloud
    agent = cloud.add_host("host-1")
    ticks = _counting_ticks(cloud)
    with TestClient(cloud.app, headers={"Authorization": f"Bearer {cloud.admin_key}"}) as c:
        _wait_for(lambda: len(ticks) >= 1, FAST)  # the loop's first tick, at start-up
        r = cloud.run(c)
        assert r.status_code == 201, r.text
        iid = r.json()["instances"][0]["instance_id"]
        _wait_for(lambda: iid in agent.specs, FAST)
        assert agent.specs[iid].power == "running"
        _wait_for(lambda: cloud.instance(c, iid)["state"] == "running", FAST)

        assert c.post(f"/v1/instances/{iid}/stop").status_code == 200
        _wait_for(lambda: agent.specs[iid].power == "stopped", FAST)
        # The agent has the spec before the controller folds its answer: start is refused
        # (IncorrectInstanceState) while the instance is still stopping, as on EC2.
        _wait_for(lambda: cloud.instance(c, iid)["state"] == "stopped", FAST)
        assert c.post(f"/v1/instances/{iid}/start").status_code == 200
        _wait_for(lambda: agent.specs[iid].power == "running", FAST)
        _wait_for(lambda: cloud.instance(c, iid)["state"] == "running", FAST)
        nonce = agent.specs[iid].reboot_nonce
        assert c.post(f"/v1/instances/{iid}/reboot").status_code == 200
        _wait_for(lambda: agent.specs[iid].reboot_nonce == nonce + 1, FAST)
        assert c.post(f"/v1/instances/{iid}/terminate").status_code == 200
        _wait_for(lambda: iid not in agent.specs, FAST)
        _wait_for(lambda: cloud.instance(c, iid)["state"] == "terminated", FAST)

        # Control: a change committed without notifying (as the reconciler's own writes are) is
        # NOT pushed before the (long) tick, so the speed above came from the wake-ups, not from
        # the loop ticking anyway.
        iid2 = cloud.run(c).json()["instances"][0]["instance_id"]
        _wait_for(lambda: iid2 in agent.specs, FAST)
        gen = agent.specs[iid2].generation
        with cloud.app.state.kumo.db.session(notify=False) as s:
            inst = s.get(Instance, iid2)
            lifecycle.bump(inst)
            s.add(inst)
        time.sleep(1.0)
        assert agent.specs[iid2].generation == gen
        cloud.reconciler.wake()
        _wait_for(lambda: agent.specs[iid2].generation == gen + 1, FAST)
    assert len(ticks) < 30  # woken ticks only, not a busy loop


def test_a_change_made_by_calling_a_service_wakes_the_reconciler(slow_cloud):
    """No HTTP request at all: services called the way the controller's own loops call them
    (auto scaling, scheduled actions, health replacement) commit, and the commit wakes it."""
    cloud = slow_cloud
    agent = cloud.add_host("host-1", underlay_ip="192.0.2.10")  # carries VPC network documents
    ctx = cloud.app.state.kumo
    admin = accounts.authenticate(ctx.db, cloud.admin_key)
    ticks = _counting_ticks(cloud)
    with TestClient(cloud.app):  # runs the app's lifespan: the background loop
        _wait_for(lambda: len(ticks) >= 1, FAST)
        _, [inst] = instances.run(ctx.db, ctx.settings, admin, RunInstancesRequest(
            image="kumo-tiny", instance_type="t3.nano"))
        iid = inst.instance_id
        [group_id] = instances.describe(ctx.db, [inst])[0].security_group_ids

        def rules_carried() -> list:
            network = agent.network
            groups = network.security_groups if network is not None else []
            return [r for g in groups if g.group_id == group_id for r in g.rules]
        _wait_for(lambda: iid in agent.specs and rules_carried(), FAST)
        assert agent.specs[iid].power == "running"
        _settled(ticks)

        # A security-group rule changes the host's network document: pushed at once.
        generation = agent.network.generation
        rule = AuthorizeRequest(rules=[{"protocol": "tcp", "from_port": 22, "to_port": 22,
                                        "cidr_ipv4": "10.9.0.0/16"}]).rules[0]
        sgs.authorize(ctx.db, ctx.settings, admin, group_id, "ingress", [rule.model_dump()])
        _wait_for(lambda: agent.network.generation > generation and any(
            str(r.cidr) == "10.9.0.0/16" for r in rules_carried() if r.cidr is not None), FAST)

        # An instance action: its new spec is pushed at once.
        instances.stop(ctx.db, ctx.settings, admin, iid)
        _wait_for(lambda: agent.specs[iid].power == "stopped", FAST)


def test_reads_failed_requests_and_heartbeats_do_not_wake_it(slow_cloud):
    cloud = slow_cloud
    agent = cloud.add_host("host-1")
    ticks = _counting_ticks(cloud)
    with TestClient(cloud.app, headers={"Authorization": f"Bearer {cloud.admin_key}"}) as c:
        _wait_for(lambda: len(ticks) >= 1, FAST)
        iid = cloud.run(c).json()["instances"][0]["instance_id"]  # makes the default VPC too
        _wait_for(lambda: cloud.instance(c, iid)["state"] == "running", FAST)
        _settled(ticks)
        before = len(ticks)
        for path in ("/v1/instances", f"/v1/instances/{iid}", f"/v1/instances/{iid}/status",
                     f"/v1/instances/{iid}/console", "/v1/vpcs", "/v1/subnets",
                     "/v1/security-groups", "/v1/route-tables", "/v1/internet-gateways",
                     "/v1/elastic-ips", "/v1/nat-gateways", "/v1/images", "/v1/key-pairs",
                     "/v1/instance-types", "/v1/hosts", "/v1/accounts", "/v1/events"):
            r = c.get(path)
            assert r.status_code == 200, (path, r.text)
        # Refused mutations: nothing committed.
        assert c.post("/v1/instances/i-0123456789abcdef0/stop").status_code == 404
        assert c.patch(f"/v1/instances/{iid}", json={"instance_type": "t3.micro"}
                       ).status_code == 409  # must be stopped first
        assert c.post("/v1/vpcs", json={"cidr_block": "10.0.0.0/8"}).status_code == 400
        cloud.heartbeat(agent)  # observed state: the periodic tick's business
        time.sleep(1.0)
        assert len(ticks) == before
        # Control: a mutation that commits does wake it.
        assert c.post(f"/v1/instances/{iid}/stop").status_code == 200
        _wait_for(lambda: len(ticks) > before, FAST)


def test_burst_of_wakeups_coalesces(slow_cloud):
    cloud = slow_cloud
    agent = cloud.add_host("host-1", vcpus=64, memory_mib=65536)
    ticks = _counting_ticks(cloud)
    with TestClient(cloud.app, headers={"Authorization": f"Bearer {cloud.admin_key}"}) as c:
        _wait_for(lambda: len(ticks) >= 1, FAST)
        before = len(ticks)
        for _ in range(200):
            cloud.reconciler.wake()
        _wait_for(lambda: len(ticks) > before, FAST)
        time.sleep(0.5)
        # Wake-ups arriving during a tick fold into one more tick: a handful, never one per wake.
        assert len(ticks) - before <= 20
        ids = []
        for _ in range(12):  # launches in quick succession: each reaches the agent
            r = cloud.run(c)
            assert r.status_code == 201, r.text
            ids.append(r.json()["instances"][0]["instance_id"])
        _wait_for(lambda: all(i in agent.specs for i in ids), FAST)
    assert len(ticks) - before <= 20 + 12 + 1


def test_tick_without_loop_and_wake_without_loop_are_harmless(tmp_path):
    cloud = Cloud(tmp_path)  # reconcile_interval_s=0: no background loop
    try:
        cloud.image()
        agent = cloud.add_host("host-1")
        user = cloud.account("alice")
        cloud.reconciler.wake()
        iid = cloud.run(user).json()["instances"][0]["instance_id"]
        assert iid not in agent.specs  # nothing runs in the background
        assert cloud.tick()["pushed"] == 1
        cloud.heartbeat()
        assert cloud.tick() == {"pushed": 0, "deleted": 0, "errors": 0, "networks": 0}  # nothing left to do
        assert cloud.reconciler._plan() == []
    finally:
        cloud.close()


# -- pagination ------------------------------------------------------------------------------
@pytest.fixture
def cloud(tmp_path):
    c = Cloud(tmp_path)
    c.image()
    c.add_host("host-1", vcpus=64, memory_mib=65536)
    yield c
    c.close()


def _walk(client, page_size: int, **params) -> tuple[list[dict], int]:
    items, token, pages = [], None, 0
    while True:
        q = {"max_results": page_size, **params}
        if token:
            q["next_token"] = token
        r = client.get("/v1/instances", params=q)
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"items", "next_token"}
        assert len(body["items"]) <= page_size
        items += body["items"]
        pages += 1
        token = body["next_token"]
        if not token:
            return items, pages


def _key(i: dict) -> tuple[str, str]:
    return i["created_at"], i["instance_id"]


def test_keyset_pages_cover_every_instance_once(cloud):
    user = cloud.account("alice")
    other = cloud.account("bob")
    # One reservation of 13 shares its created_at: ties are broken by the instance id.
    r = cloud.run(user, min_count=13, max_count=13, tags={"Name": "web", "tier": "a"})
    web = [i["instance_id"] for i in r.json()["instances"]]
    more = [cloud.run(user, tags={"Name": "db"}).json()["instances"][0]["instance_id"]
            for _ in range(4)]
    cloud.run(other, min_count=3, max_count=3)
    everything = web + more
    for size in (1, 2, 5, 13, 17, 100):
        items, pages = _walk(user, size)
        ids = [i["instance_id"] for i in items]
        assert sorted(ids) == sorted(everything) and len(set(ids)) == len(ids)
        assert [_key(i) for i in items] == sorted(_key(i) for i in items)
        assert pages == -(-len(everything) // size)  # no empty trailing page
    # Filters are applied before paging.
    assert [i["instance_id"] for i in _walk(user, 4, **{"tag:Name": "web"})[0]] == web
    assert [i["instance_id"] for i in _walk(user, 4, **{"tag:Name": "web", "tag:tier": "a"})[0]
            ] == web
    assert [i["instance_id"] for i in _walk(user, 2, **{"tag:Name": "db"})[0]] == more
    assert _walk(user, 2, **{"tag:Name": "web", "tag:tier": "b"})[0] == []
    assert _walk(user, 2, **{"tag:Name": "we"})[0] == []
    assert _walk(user, 2, **{'tag:Na"me': "web"})[0] == []  # never a JSON path
    assert _walk(user, 2, **{"tag:missing": ""})[0] == []
    user.post(f"/v1/instances/{more[1]}/terminate")
    got = _walk(user, 2, state="shutting-down,terminated")[0]
    assert [i["instance_id"] for i in got] == [more[1]]
    got = _walk(user, 3, state="pending", instance_id=",".join(web[:5] + [more[1]]))[0]
    assert sorted(i["instance_id"] for i in got) == sorted(web[:5])
    # Admins see every account, in the same order.
    ids = [i["instance_id"] for i in _walk(cloud.admin, 4)[0]]
    assert len(ids) == len(everything) + 3 and set(everything) <= set(ids)


def test_keyset_pages_under_concurrent_launches(cloud):
    user = cloud.account("alice")
    before = [cloud.run(user).json()["instances"][0]["instance_id"] for _ in range(15)]
    stop = threading.Event()
    launched: list[str] = []

    launcher = cloud.client(user.headers["authorization"].split()[1])  # its own client

    def launch():
        while not stop.is_set() and len(launched) < 60:
            r = cloud.run(launcher)
            assert r.status_code == 201, r.text
            launched.append(r.json()["instances"][0]["instance_id"])

    t = threading.Thread(target=launch)
    t.start()
    try:
        walks = [_walk(user, 2)[0] for _ in range(3)]
    finally:
        stop.set()
        t.join(30)
    assert launched, "no launch ran during the walks"
    for items in walks:
        ids = [i["instance_id"] for i in items]
        assert len(ids) == len(set(ids)), "an instance appeared twice"
        assert set(before) <= set(ids), "an instance that existed all along was skipped"
        assert set(ids) <= set(before) | set(launched)
        assert [_key(i) for i in items] == sorted(_key(i) for i in items)
    final = [i["instance_id"] for i in _walk(user, 7)[0]]
    assert sorted(final) == sorted(before + launched)


@pytest.mark.parametrize("token", [
    "!!",
    "bm9wZQ",                                                      # "nope"
    base64.urlsafe_b64encode(b"100").decode(),                     # an old offset token
    base64.urlsafe_b64encode(b"k1:abc:i-0123456789abcdef0").decode(),
    base64.urlsafe_b64encode(b"k1:123:i-0123456789abcdeZ0").decode(),
    base64.urlsafe_b64encode(b"k1:-5:i-0123456789abcdef0").decode(),
    base64.urlsafe_b64encode(b"k2:123:i-0123456789abcdef0").decode(),
    base64.urlsafe_b64encode(b"k1:123:i-0123456789abcdef0\n").decode(),
    base64.urlsafe_b64encode("k1:١٢٣:i-0123456789abcdef0".encode()).decode(),
    "\u00e9t\u00e9",
])
def test_malformed_next_token_is_400(cloud, token):
    user = cloud.account("alice")
    cloud.run(user)
    r = user.get("/v1/instances", params={"next_token": token})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "InvalidPaginationToken" and err["retryable"] is False


def test_overlong_next_token_is_400(cloud):
    user = cloud.account("alice")
    r = user.get("/v1/instances", params={"next_token": "A" * 500})
    assert r.status_code == 400 and r.json()["error"]["code"] == "InvalidParameterValue"


def test_next_token_is_opaque_and_only_moves_forward(cloud):
    user = cloud.account("alice")
    ids = [i["instance_id"] for i in
           cloud.run(user, min_count=5, max_count=5).json()["instances"]]
    page = user.get("/v1/instances", params={"max_results": 2}).json()
    token = page["next_token"]
    assert token and ids[1] not in token  # not the raw key
    # The same token twice answers the same page (a client retry is safe).
    a = user.get("/v1/instances", params={"max_results": 2, "next_token": token}).json()
    b = user.get("/v1/instances", params={"max_results": 2, "next_token": token}).json()
    assert a == b and [i["instance_id"] for i in a["items"]] == ids[2:4]
    # Another account's token position reveals nothing of that account.
    bob = cloud.account("bob")
    assert bob.get("/v1/instances", params={"next_token": token}).json() == {
        "items": [], "next_token": None}


# Every list of the API, with the field that identifies its items.
LISTS = {"/v1/accounts": "account_id", "/v1/images": "image_id", "/v1/key-pairs": "key_pair_id",
         "/v1/instance-types": "name", "/v1/hosts": "host_id", "/v1/events": "event_id",
         "/v1/instances": "instance_id", "/v1/vpcs": "vpc_id", "/v1/subnets": "subnet_id",
         "/v1/security-groups": "group_id", "/v1/route-tables": "route_table_id",
         "/v1/internet-gateways": "internet_gateway_id", "/v1/elastic-ips": "allocation_id",
         "/v1/nat-gateways": "nat_gateway_id"}


def _walk_list(client, path: str, page_size: int) -> tuple[list[dict], int]:
    items, token, pages = [], None, 0
    while True:
        q = {"max_results": page_size, **({"next_token": token} if token else {})}
        r = client.get(path, params=q)
        assert r.status_code == 200, (path, r.text)
        body = r.json()
        assert set(body) == {"items", "next_token"} and len(body["items"]) <= page_size
        items += body["items"]
        pages += 1
        token = body["next_token"]
        if not token:
            return items, pages


def test_every_list_pages_the_same_way(cloud):
    admin = cloud.admin
    for name in ("alice", "bob"):
        cloud.account(name)
    for name in ("img-a", "img-b"):
        cloud.image(name)
    for name in ("k1", "k2", "k3"):
        assert admin.post("/v1/key-pairs", json={"name": name}).status_code == 201
    for k in (2, 3):
        cloud.add_host(f"host-{k}")
    for _ in range(3):
        assert cloud.run(admin).status_code == 201
    for k in range(3):
        vpc = admin.post("/v1/vpcs", json={"cidr_block": f"10.{k}.0.0/16"}).json()["vpc_id"]
        assert admin.post("/v1/subnets", json={"vpc_id": vpc, "cidr_block": f"10.{k}.1.0/24"}
                          ).status_code == 201
        assert admin.post("/v1/security-groups", json={
            "group_name": f"g{k}", "description": "d", "vpc_id": vpc}).status_code == 201
        assert admin.post("/v1/route-tables", json={"vpc_id": vpc}).status_code == 201
        assert admin.post("/v1/internet-gateways").status_code == 201
        assert admin.post("/v1/elastic-ips").status_code == 201
    public = next(s for s in _walk_list(admin, "/v1/subnets", 1000)[0] if s["public"])
    eip = admin.post("/v1/elastic-ips").json()["allocation_id"]
    assert admin.post("/v1/nat-gateways", json={"subnet_id": public["subnet_id"],
                                                "allocation_id": eip}).status_code == 201
    for path, key in LISTS.items():
        everything, pages = _walk_list(admin, path, 1000)
        ids = [i[key] for i in everything]
        assert pages == 1 and len(set(ids)) == len(ids) >= 1, (path, ids)
        for size in (1, 2):
            items, pages = _walk_list(admin, path, size)
            assert [i[key] for i in items] == ids, path  # same rows, same order
            assert pages == max(1, -(-len(ids) // size)), path  # no empty trailing page
        bad = admin.get(path, params={"next_token": "bm9wZQ"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "InvalidPaginationToken"
        for params in ({"next_token": "A" * 500}, {"max_results": 0}, {"max_results": 1001}):
            r = admin.get(path, params=params)
            assert r.status_code == 400 and r.json()["error"]["code"] == "InvalidParameterValue"
