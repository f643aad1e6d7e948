"""Elastic IPs, NAT gateways and IPAM through the controller: the public pool and its exhaustion,
association rules (same account only, reassociation, InUse on release), NAT gateway states,
and IPAM allocation under concurrency (all distinct, exhaustion after the last)."""
from __future__ import annotations

import ipaddress
import threading

import pytest

from controller.errors import KumoError
from controller.models import Subnet
from controller.services import ipam
from tests.functional.fake_agent import Cloud
from tests.functional.vpc_support import (cloud, expect_refused, is_id, items, make_public,
                                          make_subnet, make_vpc, ok)

__all__ = ["cloud"]


def _instance(cloud, client) -> dict:
    r = cloud.run(client)
    assert r.status_code == 201, r.text
    inst = r.json()["instances"][0]
    assert inst["private_ip"], inst
    return inst


def test_allocate_from_pool_until_exhausted(tmp_path):
    c = Cloud(tmp_path, public_pool="198.51.100.0/29")
    try:
        alice = c.account("alice")
        got = [ok(alice.post("/v1/elastic-ips"), 201) for _ in range(5)]
        assert [g["public_ip"] for g in got] == [f"198.51.100.{n}" for n in range(2, 7)]
        assert all(is_id(g["allocation_id"], "eipalloc") and g["association_id"] is None
                   for g in got)
        e = expect_refused(alice, lambda: alice.post("/v1/elastic-ips"), 400,
                           "AddressLimitExceeded")
        assert "198.51.100.0/29" in e["message"]
        bob = c.account("bob")
        expect_refused(bob, lambda: bob.post("/v1/elastic-ips"), 400, "AddressLimitExceeded")
        gone = ok(alice.delete(f"/v1/elastic-ips/{got[2]['allocation_id']}"))
        assert gone["public_ip"] == "198.51.100.4"
        again = ok(bob.post("/v1/elastic-ips"), 201)
        assert again["public_ip"] == "198.51.100.4" and again["allocation_id"] != gone["allocation_id"]
    finally:
        c.close()


def test_default_pool_skips_network_router_broadcast(cloud):
    alice = cloud.account("alice")
    first = ok(alice.post("/v1/elastic-ips"), 201)
    assert first["public_ip"] == "203.0.113.2"
    from controller.services.elastic_ips import pool_addresses
    pool = pool_addresses("203.0.113.0/24")
    assert len(pool) == 253 and "203.0.113.1" not in pool and "203.0.113.255" not in pool


def test_associate_disassociate_release(cloud):
    alice, bob = cloud.account("alice"), cloud.account("bob")
    i1, i2 = _instance(cloud, alice), _instance(cloud, alice)
    theirs = _instance(cloud, bob)
    a = ok(alice.post("/v1/elastic-ips"), 201)
    b = ok(alice.post("/v1/elastic-ips"), 201)
    aid, bid = a["allocation_id"], b["allocation_id"]
    assoc = lambda alloc, **body: lambda: alice.post(  # noqa: E731
        f"/v1/elastic-ips/{alloc}/associate", json=body)
    expect_refused(alice, assoc(aid, instance_id=theirs["instance_id"]), 404,
                   "InvalidInstanceID.NotFound")
    expect_refused(alice, assoc(aid, instance_id="i-00000000000000000"), 404,
                   "InvalidInstanceID.NotFound")
    expect_refused(alice, assoc(aid, instance_id=i1["instance_id"], private_ip="10.99.0.9"), 400,
                   "InvalidParameterValue")
    expect_refused(alice, assoc(aid, instance_id=i1["instance_id"], private_ip="zzz"), 400,
                   "InvalidParameterValue")
    expect_refused(alice, assoc("eipalloc-00000000000000000", instance_id=i1["instance_id"]), 404,
                   "InvalidAllocationID.NotFound")
    expect_refused(bob, lambda: bob.post(f"/v1/elastic-ips/{aid}/associate",
                                         json={"instance_id": theirs["instance_id"]}),
                   404, "InvalidAllocationID.NotFound")
    r = ok(assoc(aid, instance_id=i1["instance_id"], private_ip=i1["private_ip"])())
    assert is_id(r["association_id"], "eipassoc")
    assert r["instance_id"] == i1["instance_id"] and r["private_ip"] == i1["private_ip"]
    # Same association again: a no-op.
    assert ok(assoc(aid, instance_id=i1["instance_id"])())["association_id"] == r["association_id"]
    # Moving needs allow_reassociation; so does giving i1 a second address.
    expect_refused(alice, assoc(aid, instance_id=i2["instance_id"]), 409,
                   "Resource.AlreadyAssociated")
    expect_refused(alice, assoc(bid, instance_id=i1["instance_id"]), 409,
                   "Resource.AlreadyAssociated")
    moved = ok(assoc(aid, instance_id=i2["instance_id"], allow_reassociation=True)())
    assert moved["instance_id"] == i2["instance_id"] and moved["association_id"] != r["association_id"]
    # Releasing an associated address fails (EC2), nothing changes.
    e = expect_refused(alice, lambda: alice.delete(f"/v1/elastic-ips/{aid}"), 409,
                       "InvalidIPAddress.InUse")
    assert i2["instance_id"] in e["message"]
    d = ok(alice.post(f"/v1/elastic-ips/{aid}/disassociate"))
    assert d["association_id"] is None and d["instance_id"] is None and d["private_ip"] is None
    expect_refused(alice, lambda: alice.post(f"/v1/elastic-ips/{aid}/disassociate"), 404,
                   "InvalidAssociationID.NotFound")
    ok(alice.delete(f"/v1/elastic-ips/{aid}"))
    expect_refused(alice, lambda: alice.delete(f"/v1/elastic-ips/{aid}"), 404,
                   "InvalidAllocationID.NotFound")
    assert [x["allocation_id"] for x in items(alice, "elastic-ips")] == [bid]
    states = [(ev["from_state"], ev["to_state"]) for ev in items(alice, "events", resource_id=aid)]
    assert states == [(None, "allocated"), ("allocated", "associated"),
                      ("associated", "allocated"), ("allocated", "associated"),
                      ("associated", "allocated"), ("allocated", "released")]


def test_terminated_instance_loses_its_address(cloud):
    alice = cloud.account("alice")
    inst = _instance(cloud, alice)
    aid = ok(alice.post("/v1/elastic-ips"), 201)["allocation_id"]
    ok(alice.post(f"/v1/elastic-ips/{aid}/associate", json={"instance_id": inst["instance_id"]}))
    ok(alice.post(f"/v1/instances/{inst['instance_id']}/terminate"))
    got = ok(alice.get(f"/v1/elastic-ips/{aid}"))
    assert got["instance_id"] is None and got["association_id"] is None
    expect_refused(alice, lambda: alice.post(f"/v1/elastic-ips/{aid}/associate",
                                             json={"instance_id": inst["instance_id"]}),
                   409, "IncorrectInstanceState")
    ok(alice.delete(f"/v1/elastic-ips/{aid}"))


def test_nat_gateway_lifecycle(cloud):
    alice = cloud.account("alice")
    vpc = make_vpc(alice, "10.0.0.0/16")
    vid = vpc["vpc_id"]
    pub = make_subnet(alice, vid, "10.0.0.0/24")
    priv = make_subnet(alice, vid, "10.0.1.0/24")
    eip = ok(alice.post("/v1/elastic-ips"), 201)
    aid = eip["allocation_id"]
    nat = lambda subnet, alloc: lambda: alice.post(  # noqa: E731
        "/v1/nat-gateways", json={"subnet_id": subnet, "allocation_id": alloc})
    # Not public yet (no internet gateway): refused.
    expect_refused(alice, nat(pub["subnet_id"], aid), 400, "InvalidParameterValue")
    igw = make_public(alice, vpc)["internet_gateway_id"]
    # Give the private subnet its own table without a default route.
    rtb = ok(alice.post("/v1/route-tables", json={"vpc_id": vid}), 201)["route_table_id"]
    ok(alice.post(f"/v1/route-tables/{rtb}/associations", json={"subnet_id": priv["subnet_id"]}),
       201)
    assert ok(alice.get(f"/v1/subnets/{pub['subnet_id']}"))["public"] is True
    assert ok(alice.get(f"/v1/subnets/{priv['subnet_id']}"))["public"] is False
    expect_refused(alice, nat(priv["subnet_id"], aid), 400, "InvalidParameterValue")
    expect_refused(alice, nat("subnet-00000000000000000", aid), 404, "InvalidSubnetID.NotFound")
    expect_refused(alice, nat(pub["subnet_id"], "eipalloc-00000000000000000"), 404,
                   "InvalidAllocationID.NotFound")
    n = ok(nat(pub["subnet_id"], aid)(), 201)
    nid = n["nat_gateway_id"]
    assert is_id(nid, "nat") and n["state"] == "available" and "elastic IP bound" in n["state_message"]
    assert n["public_ip"] == eip["public_ip"] and n["private_ip"] == "10.0.0.4"
    assert n["vpc_id"] == vid and n["subnet_id"] == pub["subnet_id"]
    assert ok(alice.get(f"/v1/subnets/{pub['subnet_id']}"))["available_ip_address_count"] == 250
    e = ok(alice.get(f"/v1/elastic-ips/{aid}"))
    assert e["nat_gateway_id"] == nid and e["private_ip"] == "10.0.0.4" and e["association_id"]
    # The address is taken: no second NAT, no release, no instance association, no disassociate.
    expect_refused(alice, nat(pub["subnet_id"], aid), 409, "Resource.AlreadyAssociated")
    expect_refused(alice, lambda: alice.delete(f"/v1/elastic-ips/{aid}"), 409,
                   "InvalidIPAddress.InUse")
    expect_refused(alice, lambda: alice.post(f"/v1/elastic-ips/{aid}/disassociate"), 409,
                   "InvalidIPAddress.InUse")
    inst = _instance(cloud, alice)
    expect_refused(alice, lambda: alice.post(f"/v1/elastic-ips/{aid}/associate",
                                             json={"instance_id": inst["instance_id"]}),
                   409, "Resource.AlreadyAssociated")
    # One live NAT gateway per VPC (the dataplane's route target), even with a free address.
    spare = ok(alice.post("/v1/elastic-ips"), 201)["allocation_id"]
    assert nid in expect_refused(alice, nat(pub["subnet_id"], spare), 400,
                                 "NatGatewayLimitExceeded")["message"]
    # Dependencies: the subnet, the gateway's detach and the VPC are refused.
    for call in (lambda: alice.delete(f"/v1/subnets/{pub['subnet_id']}"),
                 lambda: alice.post(f"/v1/internet-gateways/{igw}/detach", json={"vpc_id": vid}),
                 lambda: alice.delete(f"/v1/vpcs/{vid}")):
        assert nid in expect_refused(alice, call, 409, "DependencyViolation")["message"]
    # The private subnet routes to the NAT gateway.
    rt = ok(alice.post(f"/v1/route-tables/{rtb}/routes",
                       json={"destination_cidr_block": "0.0.0.0/0", "nat_gateway_id": nid}), 201)
    assert {"destination_cidr_block": "0.0.0.0/0", "target": nid, "state": "active"} in rt["routes"]
    assert ok(alice.get(f"/v1/subnets/{priv['subnet_id']}"))["public"] is False
    other = make_vpc(alice, "10.7.0.0/16")
    expect_refused(alice, lambda: alice.post(
        f"/v1/route-tables/{other['main_route_table_id']}/routes",
        json={"destination_cidr_block": "0.0.0.0/0", "nat_gateway_id": nid}),
        400, "InvalidParameterValue")
    assert [x["nat_gateway_id"] for x in items(alice, "nat-gateways", vpc_id=vid)] == [nid]
    # Delete: the private address and the elastic IP come back; the route is a blackhole.
    d = ok(alice.delete(f"/v1/nat-gateways/{nid}"))
    assert d["state"] == "deleted" and d["deleted_at"]
    assert ok(alice.delete(f"/v1/nat-gateways/{nid}"))["state"] == "deleted"
    assert ok(alice.get(f"/v1/subnets/{pub['subnet_id']}"))["available_ip_address_count"] == 251
    e = ok(alice.get(f"/v1/elastic-ips/{aid}"))
    assert e["nat_gateway_id"] is None and e["association_id"] is None
    rt = ok(alice.get(f"/v1/route-tables/{rtb}"))
    assert {"destination_cidr_block": "0.0.0.0/0", "target": nid, "state": "blackhole"} in rt["routes"]
    expect_refused(alice, lambda: alice.post(f"/v1/route-tables/{rtb}/routes", json={
        "destination_cidr_block": "1.0.0.0/8", "nat_gateway_id": nid}), 404, "NatGatewayNotFound")
    states = [ev["to_state"] for ev in items(alice, "events", resource_id=nid)]
    assert states == ["pending", "available", "deleting", "deleted"]
    # A deleted gateway no longer counts: a new one may take its place.
    again = ok(nat(pub["subnet_id"], spare)(), 201)
    assert again["state"] == "available"
    ok(alice.delete(f"/v1/nat-gateways/{again['nat_gateway_id']}"))
    ok(alice.delete(f"/v1/elastic-ips/{aid}"))
    ok(alice.post(f"/v1/internet-gateways/{igw}/detach", json={"vpc_id": vid}))


def _subnet_row(cloud, subnet_id: str) -> Subnet:
    with cloud.app.state.kumo.db.session() as s:
        return s.get(Subnet, subnet_id)


def test_ipam_concurrent_allocations_from_a_28(cloud):
    alice = cloud.account("alice")
    vpc = make_vpc(alice, "10.0.0.0/16")
    sub = make_subnet(alice, vpc["vpc_id"], "10.0.3.0/28")
    db = cloud.app.state.kumo.db
    row = _subnet_row(cloud, sub["subnet_id"])
    got, errors, lock = [], [], threading.Lock()
    barrier = threading.Barrier(24)

    def worker(n: int) -> None:
        barrier.wait()
        try:
            with db.session() as s:
                addr = ipam.allocate(s, row, "test", f"owner-{n}")
            with lock:
                got.append(addr)
        except KumoError as e:
            with lock:
                errors.append(e.code)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    net = ipaddress.IPv4Network("10.0.3.0/28")
    assert len(got) == 11 and len(set(got)) == 11
    assert sorted(got, key=ipaddress.IPv4Address) == [str(net[n]) for n in range(4, 15)]
    assert errors == ["InsufficientFreeAddressesInSubnet"] * 13
    assert ok(alice.get(f"/v1/subnets/{sub['subnet_id']}"))["available_ip_address_count"] == 0
    # Releasing one address makes exactly that one available again.
    with db.session() as s:
        assert ipam.release(s, row.subnet_id, "10.0.3.9")
    with db.session() as s:
        assert ipam.allocate(s, row, "test", "owner-x") == "10.0.3.9"
    with pytest.raises(KumoError) as exc, db.session() as s:
        ipam.allocate(s, row, "test", "owner-y")
    assert exc.value.code == "InsufficientFreeAddressesInSubnet"
    e = expect_refused(alice, lambda: alice.delete(f"/v1/subnets/{sub['subnet_id']}"), 409,
                       "DependencyViolation")
    assert "test owner-x" in e["message"]


def test_ipam_requested_addresses(cloud):
    alice = cloud.account("alice")
    sub = make_subnet(alice, make_vpc(alice, "10.0.0.0/16")["vpc_id"], "10.0.4.0/24")
    db = cloud.app.state.kumo.db
    row = _subnet_row(cloud, sub["subnet_id"])
    with db.session() as s:
        assert ipam.allocate(s, row, "test", "a", requested="10.0.4.50") == "10.0.4.50"
    for bad, code in [("10.0.4.50", "InvalidIPAddress.InUse"), ("10.0.5.7", "InvalidParameterValue"),
                      ("10.0.4.0", "InvalidParameterValue"), ("10.0.4.1", "InvalidParameterValue"),
                      ("10.0.4.2", "InvalidParameterValue"), ("10.0.4.3", "InvalidParameterValue"),
                      ("10.0.4.255", "InvalidParameterValue"), ("10.0.4.x", "InvalidParameterValue")]:
        with pytest.raises(KumoError) as exc, db.session() as s:
            ipam.allocate(s, row, "test", "b", requested=bad)
        assert exc.value.code == code, bad
    assert ok(alice.get(f"/v1/subnets/{sub['subnet_id']}"))["available_ip_address_count"] == 250
    with db.session() as s:
        assert ipam.allocate(s, row, "test", "c") == "10.0.4.4"


def test_ipam_retries_after_a_conflicting_insert(cloud, monkeypatch):
    """A stale read of the used set (another transaction committed meanwhile, as can happen on
    PostgreSQL) must not hand out a taken address: the unique constraint wins and we move on."""
    alice = cloud.account("alice")
    sub = make_subnet(alice, make_vpc(alice, "10.0.0.0/16")["vpc_id"], "10.0.6.0/28")
    db = cloud.app.state.kumo.db
    row = _subnet_row(cloud, sub["subnet_id"])
    with db.session() as s:
        for owner in ("a", "b", "c"):
            ipam.allocate(s, row, "test", owner)
    monkeypatch.setattr(ipam, "used_addresses", lambda s, subnet_id: set())
    with db.session() as s:
        assert ipam.allocate(s, row, "test", "d") == "10.0.6.7"
    with pytest.raises(KumoError) as exc, db.session() as s:
        ipam.allocate(s, row, "test", "e", requested="10.0.6.5")
    assert exc.value.code == "InvalidIPAddress.InUse"
