"""Security groups through the REST API: each VPC's default group, create/describe/delete,
authorize and revoke ingress and egress rules, EC2's duplicate rules, dependencies on delete,
limits, account isolation, and for every bad input a 4xx with a stable code and nothing changed.
Also the integration helpers: host_firewall_groups() checked against the agent's firewall model,
resolve_instance_groups(), and migration 0005's default groups for VPCs that already existed."""
from __future__ import annotations

import pytest

from agent.firewall.model import HostFirewall, PortFirewall, SecurityGroup
from controller.models import InstanceSecurityGroup
from controller.services import security_group_rows as sg_rows
from controller.services import security_groups as sgs
from tests.functional.vpc_support import (Cloud, cli_for_new_account, cloud, default_vpc, err,
                                          expect_refused, is_id, items, make_vpc, ok)

__all__ = ["cloud"]
ALL_OUT = {"protocol": "all", "from_port": None, "to_port": None, "icmp_type": None,
           "icmp_code": None, "cidr_ipv4": "0.0.0.0/0", "peer_group_id": None,
           "description": "", "direction": "egress"}
SSH = {"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr_ipv4": "10.0.0.0/8"}


def make_group(client, name: str = "web", vpc_id: str | None = None, **kw) -> dict:
    body = {"group_name": name, "description": f"{name} servers", **kw}
    if vpc_id:
        body["vpc_id"] = vpc_id
    return ok(client.post("/v1/security-groups", json=body), 201)


def authorize(client, gid: str, *rules: dict, direction: str = "ingress") -> list[dict]:
    out = ok(client.post(f"/v1/security-groups/{gid}/{direction}", json={"rules": list(rules)}))
    assert out["group_id"] == gid and out["direction"] == direction
    return out["rules"]


def strip(rule: dict) -> dict:
    return {k: v for k, v in rule.items() if k not in ("rule_id", "group_id")}


def test_default_vpc_has_default_group(cloud):
    alice = cloud.account("alice")
    vpc = default_vpc(alice)
    [group] = items(alice, "security-groups")
    gid = group["group_id"]
    assert is_id(gid, "sg") and group["group_name"] == "default" and group["is_default"]
    assert group["vpc_id"] == vpc["vpc_id"]
    [inbound] = group["ingress_rules"]
    [outbound] = group["egress_rules"]
    assert is_id(inbound["rule_id"], "sgr") and is_id(outbound["rule_id"], "sgr")
    assert strip(inbound) == {**ALL_OUT, "direction": "ingress", "cidr_ipv4": None,
                              "peer_group_id": gid}
    assert strip(outbound) == ALL_OUT
    assert ok(alice.get(f"/v1/security-groups/{gid}")) == group
    # A new VPC comes with its own default group.
    other = make_vpc(alice, "10.0.0.0/16")
    [g2] = items(alice, "security-groups", vpc_id=other["vpc_id"])
    assert g2["is_default"] and g2["group_id"] != gid
    assert g2["ingress_rules"][0]["peer_group_id"] == g2["group_id"]
    types = [e["resource_type"] for e in items(alice, "events")]
    assert types.count("security-group") == 2 and types.count("security-group-rule") == 4


def test_create_describe_delete(cloud):
    alice = cloud.account("alice")
    vpc = make_vpc(alice, "10.0.0.0/16")
    web = make_group(alice, "web", vpc["vpc_id"])
    assert is_id(web["group_id"], "sg") and not web["is_default"]
    assert web["vpc_id"] == vpc["vpc_id"] and web["description"] == "web servers"
    assert web["ingress_rules"] == []
    assert [strip(r) for r in web["egress_rules"]] == [ALL_OUT]
    # Without vpc_id: the default VPC.
    dflt = make_group(alice, "web")
    assert dflt["vpc_id"] == default_vpc(alice)["vpc_id"]
    assert {g["group_name"] for g in items(alice, "security-groups",
                                           vpc_id=vpc["vpc_id"])} == {"default", "web"}
    assert [g["group_id"] for g in items(alice, "security-groups", group_name="web")] == [
        web["group_id"], dflt["group_id"]]
    gone = ok(alice.delete(f"/v1/security-groups/{web['group_id']}"))
    assert gone["group_id"] == web["group_id"]
    err(alice.get(f"/v1/security-groups/{web['group_id']}"), 404, "InvalidGroup.NotFound")
    expect_refused(alice, lambda: alice.delete(f"/v1/security-groups/{web['group_id']}"), 404,
                   "InvalidGroup.NotFound")
    evs = [(e["from_state"], e["to_state"])
           for e in items(alice, "events", resource_id=web["group_id"])]
    assert evs == [(None, "available"), ("available", "deleted")]


def test_bad_group_requests_change_nothing(cloud):
    alice = cloud.account("alice")
    vpc = make_vpc(alice, "10.0.0.0/16")
    vid = vpc["vpc_id"]
    make_group(alice, "web", vid)
    post = lambda body: lambda: alice.post("/v1/security-groups", json=body)  # noqa: E731
    cases = [({"group_name": "web", "vpc_id": vid}, 409, "InvalidGroup.Duplicate"),
             ({"group_name": "default", "vpc_id": vid}, 400, "InvalidGroup.Reserved"),
             ({"group_name": "bad\nname", "vpc_id": vid}, 400, "InvalidParameterValue"),
             ({"group_name": "bell\x07", "vpc_id": vid}, 400, "InvalidParameterValue"),
             ({"group_name": "ok", "description": "esc\x1b[31m", "vpc_id": vid}, 400,
              "InvalidParameterValue"),
             ({"group_name": "sg-1", "vpc_id": vid}, 400, "InvalidParameterValue"),
             ({"group_name": "x" * 256, "vpc_id": vid}, 400, "InvalidParameterValue"),
             ({"group_name": "ok", "vpc_id": "vpc-00000000000000000"}, 404,
              "InvalidVpcID.NotFound"),
             ({"group_name": "ok", "vpc_id": vid, "surprise": 1}, 400, "InvalidParameterValue"),
             ({"vpc_id": vid}, 400, "MissingParameter")]
    for body, status, code in cases:
        expect_refused(alice, post(body), status, code)


def test_authorize_and_revoke(cloud):
    alice = cloud.account("alice")
    vid = make_vpc(alice, "10.0.0.0/16")["vpc_id"]
    web = make_group(alice, "web", vid)
    gid = web["group_id"]
    [ssh] = authorize(alice, gid, {**SSH, "description": "admin ssh"})
    assert is_id(ssh["rule_id"], "sgr") and ssh["description"] == "admin ssh"
    ping, dns = authorize(alice, gid, {"protocol": "icmp", "icmp_type": 8, "icmp_code": 0,
                                       "peer_group_id": gid},
                          {"protocol": "udp", "from_port": 53, "to_port": 53,
                           "cidr_ipv4": "172.16.0.0/12"})
    assert (ping["icmp_type"], ping["icmp_code"], ping["peer_group_id"]) == (8, 0, gid)
    assert (ping["from_port"], ping["to_port"]) == (None, None)
    [out443] = authorize(alice, gid, {"protocol": "6", "from_port": 443, "to_port": 443,
                                      "cidr_ipv4": "0.0.0.0/0"}, direction="egress")
    assert out443["protocol"] == "tcp" and out443["direction"] == "egress"
    got = ok(alice.get(f"/v1/security-groups/{gid}"))
    assert {r["rule_id"] for r in got["ingress_rules"]} == {ssh["rule_id"], ping["rule_id"],
                                                            dns["rule_id"]}
    assert len(got["egress_rules"]) == 2
    # Duplicates as in EC2: the description does not make a rule different...
    for dup in ({**SSH, "description": "other"}, {**SSH, "protocol": "TCP"}):
        expect_refused(alice, lambda: alice.post(f"/v1/security-groups/{gid}/ingress",
                                                 json={"rules": [dup]}),
                       409, "InvalidPermission.Duplicate")
    # ...and a batch holding one duplicate adds nothing at all.
    batch = [{**SSH, "from_port": 2222, "to_port": 2222}, SSH]
    expect_refused(alice, lambda: alice.post(f"/v1/security-groups/{gid}/ingress",
                                             json={"rules": batch}),
                   409, "InvalidPermission.Duplicate")
    # ...but the same permission outbound is another rule.
    authorize(alice, gid, SSH, direction="egress")
    # Revoke by id, and by the exact rule.
    out = ok(alice.post(f"/v1/security-groups/{gid}/ingress/revoke",
                        json={"rule_ids": [ssh["rule_id"]]}))
    assert [r["rule_id"] for r in out["rules"]] == [ssh["rule_id"]]
    out = ok(alice.post(f"/v1/security-groups/{gid}/ingress/revoke",
                        json={"rules": [{"protocol": "udp", "from_port": 53, "to_port": 53,
                                         "cidr_ipv4": "172.16.0.0/12"}]}))
    assert [r["rule_id"] for r in out["rules"]] == [dns["rule_id"]]
    revoke = lambda body, d="ingress": lambda: alice.post(  # noqa: E731
        f"/v1/security-groups/{gid}/{d}/revoke", json=body)
    expect_refused(alice, revoke({"rule_ids": [ssh["rule_id"]]}), 404, "InvalidPermission.NotFound")
    expect_refused(alice, revoke({"rules": [SSH]}), 404, "InvalidPermission.NotFound")
    # A rule id of the other direction is not found either; all-or-nothing.
    expect_refused(alice, revoke({"rule_ids": [ping["rule_id"], out443["rule_id"]]}), 404,
                   "InvalidPermission.NotFound")
    expect_refused(alice, revoke({}), 400, "InvalidParameterCombination")
    expect_refused(alice, revoke({"rule_ids": [ping["rule_id"]], "rules": [SSH]}), 400,
                   "InvalidParameterCombination")
    # Revoking the default all-outbound rule leaves the group with no way out but 443/22.
    [default_out] = [r for r in got["egress_rules"] if r["protocol"] == "all"]
    ok(alice.post(f"/v1/security-groups/{gid}/egress/revoke",
                  json={"rules": [{"protocol": "-1", "cidr_ipv4": "0.0.0.0/0"}]}))
    got = ok(alice.get(f"/v1/security-groups/{gid}"))
    assert default_out["rule_id"] not in {r["rule_id"] for r in got["egress_rules"]}
    assert [r["rule_id"] for r in got["ingress_rules"]] == [ping["rule_id"]]
    rule_events = [(e["from_state"], e["to_state"])
                   for e in items(alice, "events", resource_id=ssh["rule_id"])]
    assert rule_events == [(None, "authorized"), ("authorized", "revoked")]
    [revoked] = items(alice, "events", resource_id=ssh["rule_id"])[1:]
    assert gid in revoked["reason"] and "tcp 22-22" in revoked["reason"]


def test_bad_rules_change_nothing(cloud):
    alice, bob = cloud.account("alice"), cloud.account("bob")
    vid = make_vpc(alice, "10.0.0.0/16")["vpc_id"]
    gid = make_group(alice, "web", vid)["group_id"]
    other_vpc_group = make_group(alice, "web")["group_id"]  # alice's default VPC
    bobs = make_group(bob, "web")["group_id"]
    cases = [({"cidr_ipv4": "10.0.0.0/8 accept; flush ruleset"}, 400, "InvalidParameterValue"),
             ({"cidr_ipv4": "::/0"}, 400, "InvalidParameterValue"),
             ({"cidr_ipv4": "10.0.0.5/8"}, 400, "InvalidParameterValue"),
             ({"to_port": 65536}, 400, "InvalidPermission.Malformed"),
             ({"from_port": 23, "to_port": 22}, 400, "InvalidPermission.Malformed"),
             ({"protocol": "sctp"}, 400, "InvalidPermission.Malformed"),
             ({"protocol": "all"}, 400, "InvalidPermission.Malformed"),
             ({"cidr_ipv4": None}, 400, "InvalidPermission.Malformed"),
             ({"cidr_ipv4": None, "peer_group_id": other_vpc_group}, 404, "InvalidGroup.NotFound"),
             ({"cidr_ipv4": None, "peer_group_id": bobs}, 404, "InvalidGroup.NotFound"),
             ({"cidr_ipv4": None, "peer_group_id": "sg-00000000000000000"}, 404,
              "InvalidGroup.NotFound"),
             ({"description": "ctl\x00"}, 400, "InvalidParameterValue"),
             ({"from_port": "22; drop"}, 400, "InvalidParameterValue"),
             ({"from_port": 22.5}, 400, "InvalidParameterValue"),
             ({"protocol": True}, 400, "InvalidParameterValue"),
             ({"cidr": "10.0.0.0/8"}, 400, "InvalidParameterValue")]  # unknown field
    for change, status, code in cases:
        rule = {k: v for k, v in {**SSH, **change}.items() if v is not None}
        for direction in ("ingress", "egress"):
            expect_refused(alice, lambda: alice.post(f"/v1/security-groups/{gid}/{direction}",
                                                     json={"rules": [rule]}), status, code)
    # A good rule next to a bad one is not added either.
    expect_refused(alice, lambda: alice.post(f"/v1/security-groups/{gid}/ingress", json={
        "rules": [SSH, {**SSH, "cidr_ipv4": "::/0"}]}), 400, "InvalidParameterValue")
    expect_refused(alice, lambda: alice.post(f"/v1/security-groups/{gid}/sideways",
                                             json={"rules": [SSH]}), 400, "InvalidParameterValue")
    expect_refused(alice, lambda: alice.post(f"/v1/security-groups/{gid}/ingress",
                                             json={"rules": []}), 400, "InvalidParameterValue")
    assert ok(alice.get(f"/v1/security-groups/{gid}"))["ingress_rules"] == []


def test_delete_dependencies(cloud):
    alice = cloud.account("alice")
    vpc = make_vpc(alice, "10.0.0.0/16")
    vid = vpc["vpc_id"]
    web, db = make_group(alice, "web", vid), make_group(alice, "db", vid)
    # db lets web in: web cannot go while that rule exists.
    [rule] = authorize(alice, db["group_id"], {"protocol": "tcp", "from_port": 5432,
                                               "to_port": 5432, "peer_group_id": web["group_id"]})
    e = expect_refused(alice, lambda: alice.delete(f"/v1/security-groups/{web['group_id']}"),
                       409, "DependencyViolation")
    assert db["group_id"] in e["message"]
    # A rule naming its own group does not block deleting it.
    authorize(alice, db["group_id"], {"protocol": "all", "peer_group_id": db["group_id"]})
    [dflt] = [g for g in items(alice, "security-groups", vpc_id=vid) if g["is_default"]]
    expect_refused(alice, lambda: alice.delete(f"/v1/security-groups/{dflt['group_id']}"), 400,
                   "CannotDelete")
    e = expect_refused(alice, lambda: alice.delete(f"/v1/vpcs/{vid}"), 409, "DependencyViolation")
    assert web["group_id"] in e["message"] and db["group_id"] in e["message"]
    ok(alice.post(f"/v1/security-groups/{db['group_id']}/ingress/revoke",
                  json={"rule_ids": [rule["rule_id"]]}))
    # An instance that is a member blocks the delete until it is terminated.
    inst = cloud.run(alice).json()["instances"][0]
    iid = inst["instance_id"]
    db_ = cloud.app.state.kumo.db
    with db_.session() as s:
        s.add(InstanceSecurityGroup(instance_id=iid, group_id=web["group_id"]))
    e = expect_refused(alice, lambda: alice.delete(f"/v1/security-groups/{web['group_id']}"),
                       409, "DependencyViolation")
    assert iid in e["message"]
    ok(alice.post(f"/v1/instances/{iid}/terminate"))
    cloud.converge()
    assert cloud.instance(alice, iid)["state"] == "terminated"
    ok(alice.delete(f"/v1/security-groups/{web['group_id']}"))
    ok(alice.delete(f"/v1/security-groups/{db['group_id']}"))
    # The default group goes with its VPC.
    ok(alice.delete(f"/v1/vpcs/{vid}"))
    err(alice.get(f"/v1/security-groups/{dflt['group_id']}"), 404, "InvalidGroup.NotFound")
    assert all(g["vpc_id"] != vid for g in items(alice, "security-groups"))


def test_limits(tmp_path):
    cloud = Cloud(tmp_path, sg_ingress_rules_limit=2, sg_egress_rules_limit=2,
                  security_groups_per_vpc=3)
    try:
        alice = cloud.account("alice")
        vid = make_vpc(alice, "10.0.0.0/16")["vpc_id"]  # its default group counts
        gid = make_group(alice, "a", vid)["group_id"]
        make_group(alice, "b", vid)
        e = expect_refused(alice, lambda: alice.post("/v1/security-groups", json={
            "group_name": "c", "vpc_id": vid}), 400, "SecurityGroupLimitExceeded")
        assert "limit 3" in e["message"]
        port = lambda p: {**SSH, "from_port": p, "to_port": p}  # noqa: E731
        expect_refused(alice, lambda: alice.post(f"/v1/security-groups/{gid}/ingress", json={
            "rules": [port(1), port(2), port(3)]}), 400, "RulesPerSecurityGroupLimitExceeded")
        authorize(alice, gid, port(1), port(2))
        expect_refused(alice, lambda: alice.post(f"/v1/security-groups/{gid}/ingress", json={
            "rules": [port(3)]}), 400, "RulesPerSecurityGroupLimitExceeded")
        authorize(alice, gid, port(3), direction="egress")  # egress: 1 (all out) + 1
        expect_refused(alice, lambda: alice.post(f"/v1/security-groups/{gid}/egress", json={
            "rules": [port(4)]}), 400, "RulesPerSecurityGroupLimitExceeded")
        # Revoking makes room again.
        ok(alice.post(f"/v1/security-groups/{gid}/ingress/revoke", json={"rules": [port(1)]}))
        authorize(alice, gid, port(3))
    finally:
        cloud.close()


def test_account_isolation(cloud):
    alice, bob = cloud.account("alice"), cloud.account("bob")
    gid = make_group(alice, "web")["group_id"]
    bob_groups = items(bob, "security-groups")
    assert [g["group_name"] for g in bob_groups] == ["default"]
    for call in (lambda: bob.get(f"/v1/security-groups/{gid}"),
                 lambda: bob.delete(f"/v1/security-groups/{gid}"),
                 lambda: bob.post(f"/v1/security-groups/{gid}/ingress", json={"rules": [SSH]}),
                 lambda: bob.post(f"/v1/security-groups/{gid}/egress/revoke",
                                  json={"rules": [{"protocol": "all",
                                                   "cidr_ipv4": "0.0.0.0/0"}]})):
        expect_refused(bob, call, 404, "InvalidGroup.NotFound")
    # Bob cannot create a group in alice's VPC either.
    alice_vpc = default_vpc(alice)["vpc_id"]
    expect_refused(bob, lambda: bob.post("/v1/security-groups", json={
        "group_name": "x", "vpc_id": alice_vpc}), 404, "InvalidVpcID.NotFound")
    assert ok(alice.get(f"/v1/security-groups/{gid}"))["ingress_rules"] == []
    admin_ids = {g["group_id"] for g in items(cloud.admin, "security-groups")}
    assert gid in admin_ids and {g["group_id"] for g in bob_groups} <= admin_ids
    # Paging.
    page = ok(alice.get("/v1/security-groups", params={"max_results": 1}))
    assert len(page["items"]) == 1 and page["next_token"]
    rest = ok(alice.get("/v1/security-groups", params={"max_results": 1,
                                                       "next_token": page["next_token"]}))
    assert rest["items"][0]["group_id"] != page["items"][0]["group_id"]


def test_host_firewall_groups_parse_in_the_agent_model(cloud):
    alice = cloud.account("alice")
    vid = make_vpc(alice, "10.0.0.0/16")["vpc_id"]
    web, db = make_group(alice, "web", vid), make_group(alice, "db", vid)
    [dflt] = [g for g in items(alice, "security-groups", vpc_id=vid) if g["is_default"]]
    authorize(alice, web["group_id"], SSH,
              {"protocol": "icmp", "peer_group_id": web["group_id"]},
              {"protocol": "icmp", "icmp_type": 3, "icmp_code": 4, "cidr_ipv4": "0.0.0.0/0"},
              {"protocol": "udp", "from_port": 1000, "to_port": 2000,
               "peer_group_id": db["group_id"]})
    authorize(alice, web["group_id"], {"protocol": "all", "peer_group_id": dflt["group_id"]},
              direction="egress")
    with cloud.app.state.kumo.db.session() as s:
        rendered = sg_rows.host_firewall_groups(s, [web["group_id"]])
        again = sg_rows.host_firewall_groups(s, [web["group_id"], web["group_id"], "sg-missing"])
    assert rendered == again
    # The peers come along so the set is self-contained.
    assert [g["group_id"] for g in rendered][0] == web["group_id"]
    assert {g["group_id"] for g in rendered} == {web["group_id"], db["group_id"],
                                                 dflt["group_id"]}
    parsed = {g["group_id"]: SecurityGroup.parse(g) for g in rendered}
    w = parsed[web["group_id"]]
    assert w.members == frozenset() and len({g.zone for g in parsed.values()}) == 1
    by_dir = {(r.direction, r.protocol, r.peer_group or str(r.cidr)) for r in w.rules}
    assert by_dir == {("ingress", "tcp", "10.0.0.0/8"), ("ingress", "icmp", web["group_id"]),
                      ("ingress", "icmp", "0.0.0.0/0"), ("ingress", "udp", db["group_id"]),
                      ("egress", "all", "0.0.0.0/0"), ("egress", "all", dflt["group_id"])}
    [unreach] = [r for r in w.rules if r.protocol == "icmp" and r.cidr is not None]
    assert (unreach.icmp_type, unreach.icmp_code) == (3, 4)
    [any_icmp] = [r for r in w.rules if r.protocol == "icmp" and r.peer_group]
    assert any_icmp.icmp_ranges == ((0, 255), (0, 255))
    [udp] = [r for r in w.rules if r.protocol == "udp"]
    assert udp.port_range == (1000, 2000)
    zone = w.zone
    fw = HostFirewall.parse({"groups": rendered, "ports": [
        {"tap": "kt0", "bridge": "kbr0", "mac": "52:54:00:00:00:01", "ipv4": "10.0.0.5",
         "zone": zone, "group_ids": [web["group_id"], db["group_id"]]}]})
    assert set(fw.groups) == {g["group_id"] for g in rendered}
    assert isinstance(fw.ports[0], PortFirewall)
    # Another VPC's groups get another zone: the agent model refuses mixing them on a port.
    other = sgs_groups_of(cloud, alice, default_vpc(alice)["vpc_id"])
    assert other[0]["zone"] != zone


def sgs_groups_of(cloud, client, vpc_id: str) -> list[dict]:
    ids = [g["group_id"] for g in items(client, "security-groups", vpc_id=vpc_id)]
    with cloud.app.state.kumo.db.session() as s:
        return sg_rows.host_firewall_groups(s, ids)


def test_resolve_instance_groups(cloud):
    alice, bob = cloud.account("alice"), cloud.account("bob")
    vid = make_vpc(alice, "10.0.0.0/16")["vpc_id"]
    groups = [make_group(alice, f"g{i}", vid)["group_id"] for i in range(6)]
    [dflt] = [g["group_id"] for g in items(alice, "security-groups", vpc_id=vid) if g["is_default"]]
    elsewhere = make_group(alice, "web")["group_id"]
    bobs = make_group(bob, "web")["group_id"]
    acct = ok(alice.get("/v1/account"))["account_id"]
    with cloud.app.state.kumo.db.session() as s:
        assert [g.group_id for g in sg_rows.resolve_instance_groups(s, acct, vid, [])] == [dflt]
        got = sg_rows.resolve_instance_groups(s, acct, vid, groups[:5])
        assert [g.group_id for g in got] == groups[:5]
        for bad, code in ((groups, "SecurityGroupsPerInstanceLimitExceeded"),
                          ([groups[0], elsewhere], "InvalidGroup.NotFound"),
                          ([bobs], "InvalidGroup.NotFound"),
                          (["sg-nope"], "InvalidGroup.NotFound")):
            with pytest.raises(Exception) as info:
                sg_rows.resolve_instance_groups(s, acct, vid, bad)
            assert getattr(info.value, "code", None) == code


def test_migration_0005_gives_existing_vpcs_a_default_group(tmp_path):
    from alembic import command
    from sqlalchemy import text
    from sqlmodel import select

    from controller import db_migrate
    from controller.db import Database
    from controller.models import SecurityGroup as SecurityGroupRow

    db = Database(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        cfg = db_migrate.alembic_config(db.url)
        with db.engine.connect() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0004")
            conn.commit()
        with db.engine.begin() as conn:
            conn.execute(text("INSERT INTO account (account_id, name, api_key_hash, is_admin, "
                              "created_at) VALUES ('acct-1', 'a', 'h', 0, '2026-01-01')"))
            conn.execute(text("INSERT INTO vpc (vpc_id, account_id, cidr_block, is_default, vni, "
                              "created_at) VALUES ('vpc-1', 'acct-1', '10.0.0.0/16', 0, 1, "
                              "'2026-01-01')"))
        db_migrate.upgrade(db)
        with db.session() as s:
            [group] = s.exec(select(SecurityGroupRow)).all()
            assert group.vpc_id == "vpc-1" and group.is_default and group.group_name == "default"
            rules = sgs.to_public(s, group)
            assert [r.peer_group_id for r in rules.ingress_rules] == [group.group_id]
            assert [r.cidr_ipv4 for r in rules.egress_rules] == ["0.0.0.0/0"]
            # The keys match the service's: the default egress rule is a duplicate of itself.
            from controller.services.sg_rules import parse_rule
            keys = {r.rule_key for r in sg_rows.rules(s, group.group_id)}
            assert parse_rule("egress", {"protocol": "all", "cidr_ipv4": "0.0.0.0/0"}).key in keys
            assert parse_rule("ingress", {"protocol": "all",
                                          "peer_group_id": group.group_id}).key in keys
    finally:
        db.dispose()


def test_cli_against_the_real_api(cloud):
    """`kumo security-groups` end to end: the CLI's requests match the real router."""
    kumo, run = cli_for_new_account(cloud)

    web = run("security-groups", "create", "--name", "web", "--description", "web servers")
    gid = web["group_id"]
    [ssh] = run("security-groups", "authorize", gid, "-p", "tcp", "--port", "22", "--cidr",
                "10.0.0.0/8")["rules"]
    run("security-groups", "authorize", gid, "-p", "icmp", "--peer-group", gid)
    run("security-groups", "authorize", gid, "--egress", "-p", "udp", "--port", "53-54",
        "--cidr", "10.0.0.2/32")
    got = run("security-groups", "describe", gid)
    assert len(got["ingress_rules"]) == 2 and len(got["egress_rules"]) == 2
    r = kumo("security-groups", "authorize", gid, "-p", "tcp", "--port", "22", "--cidr",
             "10.0.0.0/8")
    assert r.exit_code == 1 and "error: InvalidPermission.Duplicate:" in r.stderr
    r = kumo("security-groups", "authorize", gid, "-p", "tcp", "--port", "1-65536", "--cidr",
             "10.0.0.0/8")
    assert r.exit_code == 1 and "error: InvalidPermission.Malformed:" in r.stderr
    run("security-groups", "revoke", gid, "--rule-id", ssh["rule_id"])
    run("security-groups", "revoke", gid, "--egress", "-p", "all", "--cidr", "0.0.0.0/0")
    got = run("security-groups", "describe", gid)
    assert [r["protocol"] for r in got["ingress_rules"]] == ["icmp"]
    assert [r["protocol"] for r in got["egress_rules"]] == ["udp"]
    names = {g["group_name"] for g in run("security-groups", "list", "--name", "web")["items"]}
    assert names == {"web"}
    run("security-groups", "delete", gid)
    r = kumo("security-groups", "describe", gid)
    assert r.exit_code == 1 and "error: InvalidGroup.NotFound:" in r.stderr
