"""Instances in VPC subnets and the per-host network documents the controller pushes (the
vpc-network extension), against fake agents that speak it: who carries which VPC, local and
remote ports, public IPs, gateways and routes, generations, and launch-time validation."""
from __future__ import annotations

import threading

from tests.functional.fake_agent import cloud_fixture
from tests.functional.vpc_support import default_vpc, err, expect_refused, items, ok


cloud = cloud_fixture()


def two_hosts(cloud):
    return (cloud.add_host("host-1", underlay_ip="192.0.2.11"),
            cloud.add_host("host-2", underlay_ip="192.0.2.12"))


def launch(cloud, user, **body) -> dict:
    r = cloud.run(user, **body)
    assert r.status_code == 201, r.text
    return r.json()["instances"][0]


def custom_vpc(user, cidr="10.0.0.0/16", subnets=("10.0.1.0/24",)) -> tuple[str, list[str]]:
    vpc = ok(user.post("/v1/vpcs", json={"cidr_block": cidr}), 201)["vpc_id"]
    subs = [ok(user.post("/v1/subnets", json={"vpc_id": vpc, "cidr_block": c}), 201)["subnet_id"]
            for c in subnets]
    return vpc, subs


def public_subnet_with_nat_gateway(user, vpc: str, public: str) -> tuple[dict, dict]:
    """An attached internet gateway, a route table sending `public`'s 0.0.0.0/0 to it, and a NAT
    gateway in `public` with a new elastic IP; (elastic IP, NAT gateway)."""
    igw = ok(user.post("/v1/internet-gateways"), 201)["internet_gateway_id"]
    ok(user.post(f"/v1/internet-gateways/{igw}/attach", json={"vpc_id": vpc}))
    rtb = ok(user.post("/v1/route-tables", json={"vpc_id": vpc}), 201)["route_table_id"]
    ok(user.post(f"/v1/route-tables/{rtb}/routes",
                 json={"destination_cidr_block": "0.0.0.0/0", "gateway_id": igw}), 201)
    ok(user.post(f"/v1/route-tables/{rtb}/associations", json={"subnet_id": public}), 201)
    eip = ok(user.post("/v1/elastic-ips"), 201)
    nat = ok(user.post("/v1/nat-gateways", json={"subnet_id": public,
                                                  "allocation_id": eip["allocation_id"]}), 201)
    return eip, nat


def test_default_subnet_ports_local_and_remote_with_public_ips(cloud):
    h1, h2 = two_hosts(cloud)
    user = cloud.account("alice")
    a = launch(cloud, user)
    b = launch(cloud, user)
    assert {a["host_id"], b["host_id"]} == {"host-1", "host-2"}  # spread
    assert a["public_ip"] and b["public_ip"] and a["public_ip"] != b["public_ip"]
    cloud.tick()
    vpc = default_vpc(user)
    for agent, mine, other in ((h1, a, b), (h2, b, a)):
        if mine["host_id"] != agent.host_id:
            mine, other = other, mine
        v = agent.vpc(vpc["vpc_id"])
        assert v is not None and v.internet and v.nat_gateway is None
        assert [str(s.route) for s in v.subnets] == ["igw"]
        assert [(p.port_id, str(p.ip), p.mac, str(p.public_ip)) for p in v.ports] == [
            (mine["instance_id"], mine["private_ip"], mine["mac"], mine["public_ip"])]
        assert [(str(r.ip), r.mac) for r in v.remote_ports] == [(other["private_ip"],
                                                                other["mac"])]
        assert str(v.remote_ports[0].host_underlay_ip) == ("192.0.2.12" if agent is h1
                                                           else "192.0.2.11")
    # Acknowledged: nothing more to push until something changes.
    assert cloud.tick()["networks"] == 0


def test_elastic_ip_replaces_auto_ip_moves_and_goes(cloud):
    h1, _ = two_hosts(cloud)
    user = cloud.account("alice")
    a = launch(cloud, user)
    b = launch(cloud, user)
    cloud.tick()
    gen = {ag.host_id: ag.network.generation for ag in cloud.agents.values()}
    eip = ok(user.post("/v1/elastic-ips"), 201)
    ok(user.post(f"/v1/elastic-ips/{eip['allocation_id']}/associate",
                 json={"instance_id": a["instance_id"]}))
    got = cloud.instance(user, a["instance_id"])
    assert got["public_ip"] == eip["public_ip"]  # the auto-assigned address is gone
    assert [e["allocation_id"] for e in items(user, "elastic-ips")] == [eip["allocation_id"]]
    assert cloud.tick()["networks"] == 1  # only a's host changed
    host_a = cloud.agents[f"http://{a['host_id']}.agents.test:8788"]
    assert host_a.network.generation == gen[a["host_id"]] + 1
    port = host_a.vpc(a["vpc_id"]).ports[0]
    assert str(port.public_ip) == eip["public_ip"]
    # Move it to b.
    ok(user.post(f"/v1/elastic-ips/{eip['allocation_id']}/associate",
                 json={"instance_id": b["instance_id"], "allow_reassociation": True}))
    cloud.tick()
    host_b = cloud.agents[f"http://{b['host_id']}.agents.test:8788"]
    assert str(host_b.vpc(b["vpc_id"]).ports[0].public_ip) == eip["public_ip"]
    assert host_a.vpc(a["vpc_id"]).ports[0].public_ip is None  # its auto IP was freed
    ok(user.post(f"/v1/elastic-ips/{eip['allocation_id']}/disassociate"))
    cloud.tick()
    assert host_b.vpc(b["vpc_id"]).ports[0].public_ip is None


def test_private_subnet_nat_gateway_and_routes(cloud):
    h1, h2 = two_hosts(cloud)
    user = cloud.account("alice")
    vpc, (public, private) = custom_vpc(user, subnets=("10.0.1.0/24", "10.0.2.0/24"))
    inst = launch(cloud, user, subnet_id=private)
    assert inst["public_ip"] is None and inst["private_ip"] == "10.0.2.4"
    cloud.tick()
    host = cloud.agents[f"http://{inst['host_id']}.agents.test:8788"]
    v = host.vpc(vpc)
    assert not v.internet and {str(s.cidr): s.route for s in v.subnets} == {
        "10.0.1.0/24": "local", "10.0.2.0/24": "local"}
    other = h2 if host is h1 else h1
    assert other.vpc(vpc) is None  # no port there: the other host does not carry the VPC
    # Internet gateway + public route table + NAT gateway + private default route to it.
    eip, nat = public_subnet_with_nat_gateway(user, vpc, public)
    main = next(t for t in items(user, "route-tables", vpc_id=vpc) if t["main"])
    ok(user.post(f"/v1/route-tables/{main['route_table_id']}/routes",
                 json={"destination_cidr_block": "0.0.0.0/0",
                       "nat_gateway_id": nat["nat_gateway_id"]}), 201)
    cloud.tick()
    v = host.vpc(vpc)
    assert v.internet and {str(s.cidr): s.route for s in v.subnets} == {
        "10.0.1.0/24": "igw", "10.0.2.0/24": "nat"}
    ng = v.nat_gateway
    assert ng.nat_gateway_id == nat["nat_gateway_id"] and str(ng.public_ip) == eip["public_ip"]
    # The NAT gateway lives where the VPC already is.
    assert str(ng.host_underlay_ip) == str(host.info.underlay_ip)
    # Deleting the NAT gateway: the private subnet's default route is a blackhole again.
    ok(user.delete(f"/v1/nat-gateways/{nat['nat_gateway_id']}"))
    cloud.tick()
    v = host.vpc(vpc)
    assert v.nat_gateway is None and {s.route for s in v.subnets} == {"igw", "local"}


def test_heartbeat_without_underlay_ip_keeps_forwarding_and_the_nat_gateway(cloud):
    """A restarted agent may heartbeat before it has resolved its uplink address: the controller
    must keep the known address, not drop the host's ports from the other hosts' forwarding or
    move its NAT gateway (that cut running guests off for a moment in a CI run)."""
    h1, h2 = two_hosts(cloud)
    user = cloud.account("alice")
    vpc, (public, private) = custom_vpc(user, subnets=("10.0.1.0/24", "10.0.2.0/24"))
    for subnet in (private, public, private):
        launch(cloud, user, subnet_id=subnet)
    public_subnet_with_nat_gateway(user, vpc, public)
    cloud.tick()

    def seen() -> dict:
        return {a.host_id: (str(a.vpc(vpc).nat_gateway.host_underlay_ip),
                            sorted(str(r.ip) for r in a.vpc(vpc).remote_ports)) for a in (h1, h2)}

    before = seen()
    assert all(remote for _, remote in before.values())  # each host forwards to the other's ports
    nat_host = next(a for a in (h1, h2) if str(a.info.underlay_ip) == before["host-1"][0])
    known = nat_host.info
    nat_host.info = known.model_copy(update={"underlay_ip": None})
    cloud.heartbeat(nat_host)
    assert cloud.tick()["networks"] == 0  # nothing to push: nothing changed
    assert seen() == before
    nat_host.info = known
    cloud.heartbeat(nat_host)
    cloud.tick()
    assert seen() == before


def test_terminate_gives_back_address_and_public_ip_and_leaves_the_document(cloud):
    h1, _ = two_hosts(cloud)
    user = cloud.account("alice")
    sub = default_vpc(user)
    subnet = items(user, "subnets", vpc_id=sub["vpc_id"])[0]
    free = subnet["available_ip_address_count"]
    a = launch(cloud, user)
    cloud.tick()
    assert items(user, "subnets", vpc_id=sub["vpc_id"])[0]["available_ip_address_count"] == free - 1
    ok(user.post(f"/v1/instances/{a['instance_id']}/terminate"))
    cloud.converge()
    assert cloud.instance(user, a["instance_id"])["state"] == "terminated"
    assert items(user, "subnets", vpc_id=sub["vpc_id"])[0]["available_ip_address_count"] == free
    host = cloud.agents[f"http://{a['host_id']}.agents.test:8788"]
    assert host.vpc(sub["vpc_id"]) is None
    # The same address and public IP are handed out again.
    b = launch(cloud, user)
    assert b["private_ip"] == a["private_ip"] and b["public_ip"] == a["public_ip"]


def test_same_cidr_in_two_accounts_gets_two_vnis(cloud):
    h1, _ = two_hosts(cloud)
    alice, bob = cloud.account("alice"), cloud.account("bob")
    va, (sa,) = custom_vpc(alice)
    vb, (sb,) = custom_vpc(bob)
    ia = launch(cloud, alice, subnet_id=sa, private_ip="10.0.1.10")
    ib = launch(cloud, bob, subnet_id=sb, private_ip="10.0.1.10")
    assert ia["private_ip"] == ib["private_ip"] == "10.0.1.10"
    cloud.tick()
    vnis = set()
    for agent in cloud.agents.values():
        for v in (agent.network.vpcs if agent.network else []):
            vnis.add((v.vpc_id, v.vni))
    assert len({vni for _, vni in vnis}) == len({vid for vid, _ in vnis}) == 2


def test_launch_validation_changes_nothing(cloud):
    two_hosts(cloud)
    alice, bob = cloud.account("alice"), cloud.account("bob")
    _, (sa,) = custom_vpc(alice)
    _, (sb,) = custom_vpc(bob)
    taken = launch(cloud, alice, subnet_id=sa)["private_ip"]

    def count():
        return len(items(alice, "instances"))

    n = count()
    expect_refused(alice, lambda: cloud.run(alice, subnet_id=sa, private_ip=taken), 409,
                   "InvalidIPAddress.InUse")
    expect_refused(alice, lambda: cloud.run(alice, subnet_id=sa, private_ip="10.0.9.9"), 400,
                   "InvalidParameterValue")
    expect_refused(alice, lambda: cloud.run(alice, subnet_id=sa, private_ip="10.0.1.1"), 400,
                   "InvalidParameterValue")  # the router: reserved
    expect_refused(alice, lambda: cloud.run(alice, subnet_id=sa, private_ip="not-an-ip"), 400,
                   "InvalidParameterValue")
    expect_refused(alice, lambda: cloud.run(alice, subnet_id=sb), 404, "InvalidSubnetID.NotFound")
    expect_refused(alice, lambda: cloud.run(alice, subnet_id=sa, private_ip="10.0.1.20",
                                            min_count=2, max_count=2), 400,
                   "InvalidParameterCombination")
    expect_refused(alice, lambda: cloud.run(alice, subnet_id=sa,
                                            security_group_ids=["sg-0123456789abcdef0"]), 404,
                   "InvalidGroup.NotFound")
    assert count() == n


def test_concurrent_launches_never_share_an_address(cloud):
    for k in range(1, 4):
        cloud.add_host(f"host-{k}", underlay_ip=f"192.0.2.{10 + k}", vcpus=64, memory_mib=65536)
    user = cloud.account("alice")
    _, (sub,) = custom_vpc(user, subnets=("10.0.1.0/28",))  # 11 usable addresses
    results = []

    def one():
        results.append(cloud.run(user, subnet_id=sub))

    threads = [threading.Thread(target=one) for _ in range(14)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    okd = [r.json()["instances"][0] for r in results if r.status_code == 201]
    refused = [r for r in results if r.status_code != 201]
    assert len(okd) == 11 and len({i["private_ip"] for i in okd}) == 11
    assert all(r.json()["error"]["code"] == "InsufficientFreeAddressesInSubnet" for r in refused)


def test_agent_that_lost_its_network_document_gets_it_again(cloud):
    h1 = cloud.add_host("host-1", underlay_ip="192.0.2.11")
    user = cloud.account("alice")
    launch(cloud, user)
    cloud.tick()
    gen = h1.network.generation
    assert gen >= 1 and cloud.tick()["networks"] == 0
    h1.network = None  # the agent's state was wiped
    cloud.heartbeat(h1)
    assert cloud.tick()["networks"] == 1 and h1.network.generation == gen


def test_describe_shows_vpc_subnet_addresses_and_groups(cloud):
    two_hosts(cloud)
    user = cloud.account("alice")
    vpc, (sub,) = custom_vpc(user)
    ok(user.patch(f"/v1/subnets/{sub}", json={"map_public_ip_on_launch": True}))
    inst = launch(cloud, user, subnet_id=sub, associate_public_ip=False)
    got = cloud.instance(user, inst["instance_id"])
    assert got["vpc_id"] == vpc and got["subnet_id"] == sub and got["public_ip"] is None
    assert got["private_ip"].startswith("10.0.1.") and got["mac"].startswith("52:54:00:")
    default_sg = next(g for g in items(user, "security-groups", vpc_id=vpc) if g["is_default"])
    assert got["security_group_ids"] == [default_sg["group_id"]]
    inst2 = launch(cloud, user, subnet_id=sub)  # follows the subnet's flag
    assert inst2["public_ip"] is not None
    err(cloud.run(user, subnet_id=sub, private_ip="10.0.1.5", max_count=2), 400,
        "InvalidParameterCombination")


def test_security_groups_reach_the_hosts_with_members_and_changes(cloud):
    h1, h2 = two_hosts(cloud)
    user = cloud.account("alice")
    vpc, (sub,) = custom_vpc(user)
    web = ok(user.post("/v1/security-groups", json={"vpc_id": vpc, "group_name": "web",
                                                   "description": "web"}), 201)["group_id"]
    default = next(g for g in items(user, "security-groups", vpc_id=vpc) if g["is_default"])
    a = launch(cloud, user, subnet_id=sub, security_group_ids=[web])
    b = launch(cloud, user, subnet_id=sub)
    cloud.tick()
    host_a = cloud.agents[f"http://{a['host_id']}.agents.test:8788"]
    port = host_a.vpc(vpc).ports[0]
    assert port.security_group_ids == [web]
    groups = {g.group_id: g for g in host_a.network.security_groups}
    assert set(groups) == {web} and [str(m) for m in groups[web].members] == [a["private_ip"]]
    assert groups[web].zone == host_a.vpc(vpc).vni
    # A rule change reaches the host with the next document.
    gen = host_a.network.generation
    ok(user.post(f"/v1/security-groups/{web}/ingress", json={"rules": [{
        "protocol": "tcp", "from_port": 22, "to_port": 22,
        "peer_group_id": default["group_id"]}]}))
    cloud.tick()
    assert host_a.network.generation == gen + 1
    groups = {g.group_id: g for g in host_a.network.security_groups}
    assert set(groups) == {web, default["group_id"]}  # the peer group comes along
    assert [str(m) for m in groups[default["group_id"]].members] == [b["private_ip"]]
    # Changing a running instance's groups.
    got = ok(user.put(f"/v1/instances/{a['instance_id']}/security-groups",
                      json={"security_group_ids": [web, default["group_id"]]}))
    assert got["security_group_ids"] == sorted([web, default["group_id"]])
    cloud.tick()
    assert sorted(host_a.vpc(vpc).ports[0].security_group_ids) == sorted([web,
                                                                          default["group_id"]])
    err(user.put(f"/v1/instances/{a['instance_id']}/security-groups",
                 json={"security_group_ids": ["sg-0123456789abcdef0"]}), 404,
        "InvalidGroup.NotFound")
    err(user.put(f"/v1/instances/{a['instance_id']}/security-groups",
                 json={"security_group_ids": []}), 400, "InvalidParameterValue")


def test_documents_are_rebuilt_only_when_their_inputs_change(cloud):
    """Idle ticks, heartbeats and instance state changes that move no port reuse the last build
    (it costs O(hosts x ports)); a change of any input rebuilds and reaches the hosts."""
    two_hosts(cloud)
    user = cloud.account("alice")
    a = launch(cloud, user)
    launch(cloud, user)
    cloud.tick()
    cloud.heartbeat()
    cloud.tick()
    built = cloud.reconciler.network_rebuilds
    for _ in range(3):
        cloud.heartbeat()
        assert cloud.tick()["networks"] == 0
    assert cloud.reconciler.network_rebuilds == built
    # One input of each kind: a rule of the default group, an elastic IP, a stopped instance.
    sg = a["security_group_ids"][0]
    ok(user.post(f"/v1/security-groups/{sg}/ingress",
                 json={"rules": [{"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr_ipv4": "0.0.0.0/0"}]}))
    assert cloud.tick()["networks"] == 2  # both hosts filter on the default group
    assert cloud.reconciler.network_rebuilds == built + 1
    eip = ok(user.post("/v1/elastic-ips"), 201)
    ok(user.post(f"/v1/elastic-ips/{eip['allocation_id']}/associate",
                 json={"instance_id": a["instance_id"]}))
    assert cloud.tick()["networks"] == 1
    ok(user.post(f"/v1/instances/{a['instance_id']}/stop"), 200)
    cloud.tick()
    cloud.heartbeat()
    cloud.tick()
    host_a = cloud.agents[f"http://{a['host_id']}.agents.test:8788"]
    assert all(p.port_id != a["instance_id"] for v in host_a.network.vpcs for p in v.ports)
