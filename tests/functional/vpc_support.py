"""Helpers for the VPC functional tests (no tests here): error assertions and a snapshot of every
VPC-networking resource an account sees, to prove a refused request changed nothing."""
from __future__ import annotations

import re

import pytest

from tests.functional.fake_agent import Cloud

LISTS = ("vpcs", "subnets", "internet-gateways", "route-tables", "elastic-ips", "nat-gateways",
         "security-groups")


@pytest.fixture
def cloud(tmp_path):
    c = Cloud(tmp_path)
    c.image()
    c.add_host("host-1")
    yield c
    c.close()


def err(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    return body["error"]


def ok(r, status: int = 200) -> dict:
    assert r.status_code == status, r.text
    return r.json()


def items(client, path: str, **params) -> list[dict]:
    return ok(client.get(f"/v1/{path}", params={"max_results": 1000, **params}))["items"]


def snapshot(client) -> dict:
    snap = {name: items(client, name) for name in LISTS}
    snap["events"] = len(items(client, "events"))
    return snap


def expect_refused(client, call, status: int, code: str) -> dict:
    """Run `call()`; assert the error and that nothing the account sees changed."""
    before = snapshot(client)
    e = err(call(), status, code)
    assert snapshot(client) == before
    return e


def is_id(value: str, prefix: str) -> bool:
    return re.fullmatch(rf"{prefix}-[0-9a-f]{{17}}", value) is not None


def default_vpc(client) -> dict:
    return next(v for v in items(client, "vpcs") if v["is_default"])


def make_vpc(client, cidr: str = "10.0.0.0/16") -> dict:
    return ok(client.post("/v1/vpcs", json={"cidr_block": cidr}), 201)


def make_subnet(client, vpc_id: str, cidr: str, **kw) -> dict:
    return ok(client.post("/v1/subnets", json={"vpc_id": vpc_id, "cidr_block": cidr, **kw}), 201)


def make_public(client, vpc: dict) -> dict:
    """Attach a new internet gateway and route the main table's 0.0.0.0/0 to it."""
    igw = ok(client.post("/v1/internet-gateways"), 201)
    ok(client.post(f"/v1/internet-gateways/{igw['internet_gateway_id']}/attach",
                   json={"vpc_id": vpc["vpc_id"]}))
    ok(client.post(f"/v1/route-tables/{vpc['main_route_table_id']}/routes",
                   json={"destination_cidr_block": "0.0.0.0/0",
                         "gateway_id": igw["internet_gateway_id"]}), 201)
    return igw


__all__ = ["cloud", "err", "ok", "items", "snapshot", "expect_refused", "is_id", "default_vpc",
           "make_vpc", "make_subnet", "make_public", "Cloud"]


def cli_for_new_account(cloud: Cloud, name: str = "carol"):
    """(kumo, run) for a fresh account: `kumo(*args)` invokes the real CLI (`-o json`) against the
    in-process API and returns typer's result; `run(*args)` asserts success and parses the JSON."""
    import json

    from typer.testing import CliRunner

    from controller.cli.context import CliState
    from controller.cli.main import app

    key = ok(cloud.admin.post("/v1/accounts", json={"name": name}), 201)["api_key"]

    def kumo(*args: str):
        st = CliState(client_factory=lambda url, api_key: cloud.client(api_key))
        return CliRunner().invoke(app, ["-o", "json", *args], obj=st,
                                  env={"KUMO_API_KEY": key, "KUMO_URL": "http://x"})

    def run(*args: str) -> dict:
        r = kumo(*args)
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)

    return kumo, run
