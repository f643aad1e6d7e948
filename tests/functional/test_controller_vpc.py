"""VPCs, subnets, internet gateways and route tables through the REST API: the default VPC,
CIDR rules, overlap, dependency checks on delete, public/private subnets, account isolation, and
for every bad input a 4xx with a stable code and nothing changed."""
from __future__ import annotations

from tests.functional.vpc_support import (cli_for_new_account, cloud, default_vpc, err,
                                          expect_refused, is_id, items, make_public, make_subnet,
                                          make_vpc, ok)

__all__ = ["cloud"]


def test_default_vpc_created_once_with_public_default_subnet(cloud):
    alice = cloud.account("alice")
    vpcs = items(alice, "vpcs")
    assert len(vpcs) == 1
    vpc = vpcs[0]
    assert vpc["is_default"] and vpc["cidr_block"] == "172.31.0.0/16" and vpc["state"] == "available"
    assert is_id(vpc["vpc_id"], "vpc") and is_id(vpc["main_route_table_id"], "rtb")
    assert is_id(vpc["internet_gateway_id"], "igw")
    [sub] = items(alice, "subnets")
    assert sub["vpc_id"] == vpc["vpc_id"] and sub["cidr_block"] == "172.31.0.0/20"
    assert sub["default_for_az"] and sub["map_public_ip_on_launch"] and sub["public"] is True
    assert sub["available_ip_address_count"] == 4096 - 5
    assert sub["route_table_id"] == vpc["main_route_table_id"]
    # Idempotent: more reads create nothing more.
    assert len(items(alice, "vpcs")) == 1 and len(items(alice, "subnets")) == 1
    assert len(items(alice, "internet-gateways")) == 1
    types = [e["resource_type"] for e in items(alice, "events")]
    assert types.count("vpc") == 1 and types.count("subnet") == 1


def test_create_describe_delete_vpc(cloud):
    alice = cloud.account("alice")
    vpc = make_vpc(alice, "10.0.0.0/16")
    assert is_id(vpc["vpc_id"], "vpc") and not vpc["is_default"]
    assert vpc["internet_gateway_id"] is None
    assert ok(alice.get(f"/v1/vpcs/{vpc['vpc_id']}")) == vpc
    rtb = ok(alice.get(f"/v1/route-tables/{vpc['main_route_table_id']}"))
    assert rtb["main"] and rtb["routes"] == [{"destination_cidr_block": "10.0.0.0/16",
                                              "target": "local", "state": "active"}]
    for cidr in ("10.1.0.0/28", "192.168.0.0/24"):  # /28 is the smallest allowed
        make_vpc(alice, cidr)
    gone = ok(alice.delete(f"/v1/vpcs/{vpc['vpc_id']}"))
    assert gone["state"] == "deleted"
    err(alice.get(f"/v1/vpcs/{vpc['vpc_id']}"), 404, "InvalidVpcID.NotFound")
    err(alice.get(f"/v1/route-tables/{vpc['main_route_table_id']}"), 404,
        "InvalidRouteTableID.NotFound")
    evs = [(e["from_state"], e["to_state"]) for e in items(alice, "events", resource_id=vpc["vpc_id"])]
    assert evs == [(None, "available"), ("available", "deleted")]


def test_vpc_bad_cidrs(cloud):
    alice = cloud.account("alice")
    cases = [("10.0.0.0/8", "InvalidVpc.Range"), ("10.0.0.0/15", "InvalidVpc.Range"),
             ("10.0.0.0/29", "InvalidVpc.Range"), ("10.0.0.1/16", "InvalidParameterValue"),
             ("10.0.0.0/33", "InvalidParameterValue"), ("banana/16", "InvalidParameterValue"),
             ("fd00::/16", "InvalidParameterValue"), ("10.0.0.0", "InvalidParameterValue")]
    for cidr, code in cases:
        expect_refused(alice, lambda: alice.post("/v1/vpcs", json={"cidr_block": cidr}), 400, code)
    expect_refused(alice, lambda: alice.post("/v1/vpcs", json={}), 400, "MissingParameter")


def test_default_vpc_deleted_is_not_recreated(cloud):
    alice = cloud.account("alice")
    vpc = default_vpc(alice)
    [sub] = items(alice, "subnets")
    e = expect_refused(alice, lambda: alice.delete(f"/v1/vpcs/{vpc['vpc_id']}"), 409,
                       "DependencyViolation")
    assert sub["subnet_id"] in e["message"] and vpc["internet_gateway_id"] in e["message"]
    ok(alice.delete(f"/v1/subnets/{sub['subnet_id']}"))
    igw = vpc["internet_gateway_id"]
    ok(alice.post(f"/v1/internet-gateways/{igw}/detach", json={"vpc_id": vpc["vpc_id"]}))
    ok(alice.delete(f"/v1/internet-gateways/{igw}"))
    ok(alice.delete(f"/v1/vpcs/{vpc['vpc_id']}"))
    assert items(alice, "vpcs") == [] and items(alice, "subnets") == []


def test_subnets_rules(cloud):
    alice = cloud.account("alice")
    vpc = make_vpc(alice, "10.0.0.0/16")
    vid = vpc["vpc_id"]
    a = make_subnet(alice, vid, "10.0.1.0/24")
    assert is_id(a["subnet_id"], "subnet") and a["available_ip_address_count"] == 251
    assert a["public"] is False and a["map_public_ip_on_launch"] is False
    small = make_subnet(alice, vid, "10.0.2.0/28", map_public_ip_on_launch=True)
    assert small["available_ip_address_count"] == 11 and small["map_public_ip_on_launch"]
    post = lambda body: lambda: alice.post("/v1/subnets", json=body)  # noqa: E731
    cases = [({"vpc_id": vid, "cidr_block": "10.1.0.0/24"}, 400, "InvalidSubnet.Range"),
             ({"vpc_id": vid, "cidr_block": "10.0.0.0/15"}, 400, "InvalidSubnet.Range"),
             ({"vpc_id": vid, "cidr_block": "10.0.3.0/29"}, 400, "InvalidSubnet.Range"),
             ({"vpc_id": vid, "cidr_block": "10.0.1.128/25"}, 409, "InvalidSubnet.Conflict"),
             ({"vpc_id": vid, "cidr_block": "10.0.0.0/16"}, 409, "InvalidSubnet.Conflict"),
             ({"vpc_id": vid, "cidr_block": "10.0.2.0/27"}, 409, "InvalidSubnet.Conflict"),
             ({"vpc_id": vid, "cidr_block": "10.0.1.5/24"}, 400, "InvalidParameterValue"),
             ({"vpc_id": "vpc-00000000000000000", "cidr_block": "10.0.9.0/24"}, 404,
              "InvalidVpcID.NotFound"),
             ({"cidr_block": "10.0.9.0/24"}, 400, "MissingParameter")]
    for body, status, code in cases:
        expect_refused(alice, post(body), status, code)
    # The whole VPC as one subnet is fine in an empty VPC.
    other = make_vpc(alice, "10.9.0.0/24")
    whole = make_subnet(alice, other["vpc_id"], "10.9.0.0/24")
    assert whole["available_ip_address_count"] == 251
    # Same CIDR in another VPC does not conflict.
    make_subnet(alice, make_vpc(alice, "10.0.0.0/16")["vpc_id"], "10.0.1.0/24")
    assert {s["subnet_id"] for s in items(alice, "subnets", vpc_id=vid)} == {
        a["subnet_id"], small["subnet_id"]}
    mod = ok(alice.patch(f"/v1/subnets/{a['subnet_id']}", json={"map_public_ip_on_launch": True}))
    assert mod["map_public_ip_on_launch"] is True
    expect_refused(alice, lambda: alice.delete(f"/v1/vpcs/{vid}"), 409, "DependencyViolation")
    ok(alice.delete(f"/v1/subnets/{a['subnet_id']}"))
    err(alice.get(f"/v1/subnets/{a['subnet_id']}"), 404, "InvalidSubnetID.NotFound")
    expect_refused(alice, lambda: alice.delete(f"/v1/subnets/{a['subnet_id']}"), 404,
                   "InvalidSubnetID.NotFound")


def test_internet_gateway_lifecycle(cloud):
    alice = cloud.account("alice")
    vpc, other = make_vpc(alice, "10.0.0.0/16"), make_vpc(alice, "10.1.0.0/16")
    igw = ok(alice.post("/v1/internet-gateways"), 201)
    gid = igw["internet_gateway_id"]
    assert is_id(gid, "igw") and igw["state"] == "available" and igw["vpc_id"] is None
    att = ok(alice.post(f"/v1/internet-gateways/{gid}/attach", json={"vpc_id": vpc["vpc_id"]}))
    assert att["state"] == "attached" and att["vpc_id"] == vpc["vpc_id"]
    assert ok(alice.get(f"/v1/vpcs/{vpc['vpc_id']}"))["internet_gateway_id"] == gid
    attach = lambda g, v: lambda: alice.post(f"/v1/internet-gateways/{g}/attach",  # noqa: E731
                                             json={"vpc_id": v})
    expect_refused(alice, attach(gid, other["vpc_id"]), 409, "Resource.AlreadyAssociated")
    second = ok(alice.post("/v1/internet-gateways"), 201)["internet_gateway_id"]
    expect_refused(alice, attach(second, vpc["vpc_id"]), 409, "Resource.AlreadyAssociated")
    expect_refused(alice, attach(second, "vpc-00000000000000000"), 404, "InvalidVpcID.NotFound")
    expect_refused(alice, attach("igw-00000000000000000", vpc["vpc_id"]), 404,
                   "InvalidInternetGatewayID.NotFound")
    # Deleting an attached gateway is refused; so is deleting its VPC.
    e = expect_refused(alice, lambda: alice.delete(f"/v1/internet-gateways/{gid}"), 409,
                       "DependencyViolation")
    assert vpc["vpc_id"] in e["message"]
    expect_refused(alice, lambda: alice.delete(f"/v1/vpcs/{vpc['vpc_id']}"), 409,
                   "DependencyViolation")
    expect_refused(alice, lambda: alice.post(f"/v1/internet-gateways/{gid}/detach",
                                             json={"vpc_id": other["vpc_id"]}),
                   400, "Gateway.NotAttached")
    det = ok(alice.post(f"/v1/internet-gateways/{gid}/detach", json={"vpc_id": vpc["vpc_id"]}))
    assert det["state"] == "available" and det["vpc_id"] is None
    assert ok(alice.delete(f"/v1/internet-gateways/{gid}"))["state"] == "deleted"
    err(alice.get(f"/v1/internet-gateways/{gid}"), 404, "InvalidInternetGatewayID.NotFound")
    ok(alice.delete(f"/v1/vpcs/{vpc['vpc_id']}"))
    states = [e["to_state"] for e in items(alice, "events", resource_id=gid)]
    assert states == ["available", "attached", "available", "deleted"]


def test_route_tables_and_public_subnets(cloud):
    alice = cloud.account("alice")
    vpc = make_vpc(alice, "10.0.0.0/16")
    vid, main = vpc["vpc_id"], vpc["main_route_table_id"]
    pub = make_subnet(alice, vid, "10.0.0.0/24")
    priv = make_subnet(alice, vid, "10.0.1.0/24")
    igw = ok(alice.post("/v1/internet-gateways"), 201)["internet_gateway_id"]
    route = lambda rtb, body: lambda: alice.post(f"/v1/route-tables/{rtb}/routes",  # noqa: E731
                                                 json=body)
    # A detached gateway cannot be a route target.
    expect_refused(alice, route(main, {"destination_cidr_block": "0.0.0.0/0", "gateway_id": igw}),
                   400, "InvalidParameterValue")
    ok(alice.post(f"/v1/internet-gateways/{igw}/attach", json={"vpc_id": vid}))
    custom = ok(alice.post("/v1/route-tables", json={"vpc_id": vid}), 201)
    cid = custom["route_table_id"]
    assert is_id(cid, "rtb") and not custom["main"]
    assert custom["routes"] == [{"destination_cidr_block": "10.0.0.0/16", "target": "local",
                                 "state": "active"}]
    rt = ok(alice.post(f"/v1/route-tables/{cid}/routes",
                       json={"destination_cidr_block": "0.0.0.0/0", "gateway_id": igw}), 201)
    assert {"destination_cidr_block": "0.0.0.0/0", "target": igw, "state": "active"} in rt["routes"]
    assoc = ok(alice.post(f"/v1/route-tables/{cid}/associations",
                          json={"subnet_id": pub["subnet_id"]}), 201)
    assert is_id(assoc["association_id"], "rtbassoc")
    got = ok(alice.get(f"/v1/subnets/{pub['subnet_id']}"))
    assert got["public"] is True and got["route_table_id"] == cid
    assert ok(alice.get(f"/v1/subnets/{priv['subnet_id']}"))["public"] is False
    bad = [
        (route(cid, {"destination_cidr_block": "0.0.0.0/0", "gateway_id": igw}), 409,
         "RouteAlreadyExists"),
        (route(cid, {"destination_cidr_block": "10.0.0.0/16", "gateway_id": igw}), 409,
         "RouteAlreadyExists"),
        (route(cid, {"destination_cidr_block": "10.0.5.0/24", "gateway_id": igw}), 400,
         "InvalidParameterValue"),
        (route(cid, {"destination_cidr_block": "0.0.0.1/0", "gateway_id": igw}), 400,
         "InvalidParameterValue"),
        (route(cid, {"destination_cidr_block": "nope/0", "gateway_id": igw}), 400,
         "InvalidParameterValue"),
        (route(cid, {"destination_cidr_block": "8.8.8.0/24"}), 400, "InvalidParameterValue"),
        (route(cid, {"destination_cidr_block": "8.8.8.0/24", "gateway_id": igw,
                     "nat_gateway_id": "nat-00000000000000000"}), 400, "InvalidParameterValue"),
        (route(cid, {"destination_cidr_block": "8.8.8.0/24",
                     "gateway_id": "igw-00000000000000000"}), 404, "InvalidGatewayID.NotFound"),
        (route(cid, {"destination_cidr_block": "8.8.8.0/24",
                     "nat_gateway_id": "nat-00000000000000000"}), 404, "NatGatewayNotFound"),
        (route("rtb-00000000000000000", {"destination_cidr_block": "8.8.8.0/24",
                                         "gateway_id": igw}), 404, "InvalidRouteTableID.NotFound"),
        (lambda: alice.post(f"/v1/route-tables/{cid}/associations",
                            json={"subnet_id": pub["subnet_id"]}), 409,
         "Resource.AlreadyAssociated"),
        (lambda: alice.post(f"/v1/route-tables/{cid}/associations",
                            json={"subnet_id": "subnet-00000000000000000"}), 404,
         "InvalidSubnetID.NotFound"),
        (lambda: alice.post("/v1/route-tables", json={"vpc_id": "vpc-00000000000000000"}), 404,
         "InvalidVpcID.NotFound"),
        (lambda: alice.delete(f"/v1/route-tables/{cid}"), 409, "DependencyViolation"),
        (lambda: alice.delete(f"/v1/route-tables/{main}"), 409, "DependencyViolation"),
        (lambda: alice.delete(f"/v1/route-tables/{cid}/routes",
                              params={"destination_cidr_block": "10.0.0.0/16"}), 400,
         "InvalidParameterValue"),
        (lambda: alice.delete(f"/v1/route-tables/{cid}/routes",
                              params={"destination_cidr_block": "9.9.9.0/24"}), 404,
         "InvalidRoute.NotFound"),
        (lambda: alice.delete("/v1/route-table-associations/rtbassoc-00000000000000000"), 404,
         "InvalidAssociationID.NotFound"),
        (lambda: alice.post(f"/v1/internet-gateways/{igw}/attach", json={"vpc_id": vid}), 409,
         "Resource.AlreadyAssociated"),
    ]
    for call, status, code in bad:
        expect_refused(alice, call, status, code)
    # A subnet of another VPC cannot join this table.
    other_sub = make_subnet(alice, make_vpc(alice, "10.5.0.0/16")["vpc_id"], "10.5.0.0/24")
    expect_refused(alice, lambda: alice.post(f"/v1/route-tables/{cid}/associations",
                                             json={"subnet_id": other_sub["subnet_id"]}),
                   400, "InvalidParameterValue")
    # Detaching the gateway turns the route into a blackhole: the subnet is no longer public.
    ok(alice.post(f"/v1/internet-gateways/{igw}/detach", json={"vpc_id": vid}))
    rt = ok(alice.get(f"/v1/route-tables/{cid}"))
    assert {"destination_cidr_block": "0.0.0.0/0", "target": igw, "state": "blackhole"} in rt["routes"]
    assert ok(alice.get(f"/v1/subnets/{pub['subnet_id']}"))["public"] is False
    ok(alice.post(f"/v1/internet-gateways/{igw}/attach", json={"vpc_id": vid}))
    assert ok(alice.get(f"/v1/subnets/{pub['subnet_id']}"))["public"] is True
    # Disassociate: back to the main table (no default route: private).
    d = ok(alice.delete(f"/v1/route-table-associations/{assoc['association_id']}"))
    assert d["disassociated"] is True
    got = ok(alice.get(f"/v1/subnets/{pub['subnet_id']}"))
    assert got["route_table_id"] == main and got["public"] is False
    # Main table routed to the gateway: every subnet without its own table is public.
    ok(alice.post(f"/v1/route-tables/{main}/routes",
                  json={"destination_cidr_block": "0.0.0.0/0", "gateway_id": igw}), 201)
    assert all(s["public"] for s in items(alice, "subnets", vpc_id=vid))
    r = ok(alice.delete(f"/v1/route-tables/{main}/routes",
                        params={"destination_cidr_block": "0.0.0.0/0"}))
    assert all(x["target"] == "local" for x in r["routes"])
    assert not any(s["public"] for s in items(alice, "subnets", vpc_id=vid))
    ok(alice.delete(f"/v1/route-tables/{cid}"))
    err(alice.get(f"/v1/route-tables/{cid}"), 404, "InvalidRouteTableID.NotFound")
    # Deleting a subnet drops its explicit association.
    c2 = ok(alice.post("/v1/route-tables", json={"vpc_id": vid}), 201)["route_table_id"]
    ok(alice.post(f"/v1/route-tables/{c2}/associations", json={"subnet_id": priv["subnet_id"]}),
       201)
    ok(alice.delete(f"/v1/subnets/{priv['subnet_id']}"))
    assert ok(alice.get(f"/v1/route-tables/{c2}"))["associations"] == []
    ok(alice.delete(f"/v1/route-tables/{c2}"))


def test_account_isolation(cloud):
    alice, bob = cloud.account("alice"), cloud.account("bob")
    vpc = make_vpc(alice, "10.0.0.0/16")
    sub = make_subnet(alice, vpc["vpc_id"], "10.0.0.0/24")
    igw = make_public(alice, vpc)["internet_gateway_id"]
    rtb = vpc["main_route_table_id"]
    eip = ok(alice.post("/v1/elastic-ips"), 201)["allocation_id"]
    nat = ok(alice.post("/v1/nat-gateways", json={"subnet_id": sub["subnet_id"],
                                                  "allocation_id": eip}), 201)["nat_gateway_id"]
    alice_ids = {vpc["vpc_id"], sub["subnet_id"], igw, rtb, eip, nat}
    for name in ("vpcs", "subnets", "internet-gateways", "route-tables", "elastic-ips",
                 "nat-gateways"):
        seen = {v for x in items(bob, name) for v in x.values() if isinstance(v, str)}
        assert not (seen & alice_ids), name
    checks = [(f"/v1/vpcs/{vpc['vpc_id']}", "InvalidVpcID.NotFound"),
              (f"/v1/subnets/{sub['subnet_id']}", "InvalidSubnetID.NotFound"),
              (f"/v1/internet-gateways/{igw}", "InvalidInternetGatewayID.NotFound"),
              (f"/v1/route-tables/{rtb}", "InvalidRouteTableID.NotFound"),
              (f"/v1/elastic-ips/{eip}", "InvalidAllocationID.NotFound"),
              (f"/v1/nat-gateways/{nat}", "NatGatewayNotFound")]
    for path, code in checks:
        err(bob.get(path), 404, code)
        expect_refused(alice, lambda: bob.delete(path), 404, code)
    bob_vpc = default_vpc(bob)
    expect_refused(alice, lambda: bob.post("/v1/subnets", json={
        "vpc_id": vpc["vpc_id"], "cidr_block": "10.0.9.0/24"}), 404, "InvalidVpcID.NotFound")
    expect_refused(alice, lambda: bob.post("/v1/nat-gateways", json={
        "subnet_id": sub["subnet_id"], "allocation_id": eip}), 404, "InvalidSubnetID.NotFound")
    bob_igw = ok(bob.post("/v1/internet-gateways"), 201)["internet_gateway_id"]
    expect_refused(alice, lambda: bob.post(f"/v1/internet-gateways/{bob_igw}/attach",
                                           json={"vpc_id": vpc["vpc_id"]}),
                   404, "InvalidVpcID.NotFound")
    expect_refused(bob, lambda: bob.post(
        f"/v1/route-tables/{bob_vpc['main_route_table_id']}/routes",
        json={"destination_cidr_block": "8.0.0.0/8", "gateway_id": igw}),
        404, "InvalidGatewayID.NotFound")
    expect_refused(alice, lambda: bob.post(
        f"/v1/route-tables/{bob_vpc['main_route_table_id']}/associations",
        json={"subnet_id": sub["subnet_id"]}), 404, "InvalidSubnetID.NotFound")
    expect_refused(alice, lambda: bob.post("/v1/route-tables", json={"vpc_id": vpc["vpc_id"]}),
                   404, "InvalidVpcID.NotFound")
    expect_refused(alice, lambda: bob.post(f"/v1/internet-gateways/{igw}/detach",
                                           json={"vpc_id": vpc["vpc_id"]}),
                   404, "InvalidInternetGatewayID.NotFound")
    expect_refused(alice, lambda: bob.post(f"/v1/elastic-ips/{eip}/disassociate"), 404,
                   "InvalidAllocationID.NotFound")
    assert not [e for e in items(bob, "events") if e["resource_id"] in alice_ids]
    # Admins see everyone's resources.
    admin_vpcs = {v["vpc_id"] for v in items(cloud.admin, "vpcs")}
    assert {vpc["vpc_id"], bob_vpc["vpc_id"]} <= admin_vpcs
    assert ok(cloud.admin.get(f"/v1/subnets/{sub['subnet_id']}"))["account_id"] == \
        vpc["account_id"]


def test_migration_0003_downgrades_and_upgrades(tmp_path):
    from alembic import command
    from sqlalchemy import inspect

    from controller import db_migrate
    from controller.db import Database

    db = Database(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        db_migrate.upgrade(db)
        tables = {"vpc", "subnet", "ip_allocation", "internet_gateway", "route_table", "route",
                  "route_table_association", "elastic_ip", "nat_gateway", "default_vpc_marker"}
        assert tables <= set(inspect(db.engine).get_table_names())
        cfg = db_migrate.alembic_config(db.url)
        with db.engine.connect() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0002")
            conn.commit()
        left = set(inspect(db.engine).get_table_names())
        assert not (tables & left) and "instance" in left
        db_migrate.upgrade(db)
        assert tables <= set(inspect(db.engine).get_table_names())
    finally:
        db.dispose()


def test_cli_against_the_real_api(cloud):
    """`kumo` networking commands end to end: the CLI's requests match the real routers."""
    kumo, run = cli_for_new_account(cloud)

    vpc = run("vpcs", "create", "--cidr", "10.20.0.0/16")
    sub = run("subnets", "create", "--vpc-id", vpc["vpc_id"], "--cidr", "10.20.1.0/24")
    igw = run("igws", "create")
    run("igws", "attach", igw["internet_gateway_id"], "--vpc-id", vpc["vpc_id"])
    rtb = run("route-tables", "add-route", vpc["main_route_table_id"], "--destination",
              "0.0.0.0/0", "--gateway-id", igw["internet_gateway_id"])
    assert len(rtb["routes"]) == 2
    assert run("subnets", "describe", sub["subnet_id"])["public"] is True
    eip = run("eips", "allocate")
    nat = run("nat-gateways", "create", "--subnet-id", sub["subnet_id"], "--allocation-id",
              eip["allocation_id"])
    assert nat["state"] == "available"
    assert {v["vpc_id"] for v in run("vpcs", "list")["items"]} >= {vpc["vpc_id"]}
    r = kumo("eips", "release", eip["allocation_id"])
    assert r.exit_code == 1 and "error: InvalidIPAddress.InUse:" in r.stderr
    r = kumo("vpcs", "create", "--cidr", "10.0.0.0/8")
    assert r.exit_code == 1 and "error: InvalidVpc.Range:" in r.stderr
    assert run("nat-gateways", "delete", nat["nat_gateway_id"])["state"] == "deleted"
    run("eips", "release", eip["allocation_id"])
    run("route-tables", "delete-route", vpc["main_route_table_id"], "--destination", "0.0.0.0/0")
    assert run("subnets", "describe", sub["subnet_id"])["public"] is False
