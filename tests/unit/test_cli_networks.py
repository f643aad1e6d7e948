"""CLI tests for `kumo vpcs|subnets|igws|route-tables|eips|nat-gateways` against a fake API: each
command sends the documented request, prints the API's object in JSON, and reports API errors as
`error: <code>: <message>` with exit status 1."""
from __future__ import annotations

import json

import httpx
import pytest

from test_cli_support import FakeKumo, error, invoke, invoke_json, ok

VPC = {"vpc_id": "vpc-0000000000000000a", "account_id": "acct-1", "cidr_block": "10.0.0.0/16",
       "state": "available", "is_default": False, "main_route_table_id": "rtb-0000000000000000a",
       "internet_gateway_id": None, "created_at": "2026-01-01T00:00:00Z"}
RTB = {"route_table_id": "rtb-0000000000000000a", "vpc_id": VPC["vpc_id"], "account_id": "acct-1",
       "main": True, "routes": [{"destination_cidr_block": "10.0.0.0/16", "target": "local",
                                 "state": "active"},
                                {"destination_cidr_block": "0.0.0.0/0",
                                 "target": "igw-0000000000000000a", "state": "blackhole"}],
       "associations": [{"association_id": "rtbassoc-0000000000000000a",
                         "subnet_id": "subnet-0000000000000000a"}],
       "created_at": "2026-01-01T00:00:00Z"}


class FakeNetApi(FakeKumo):
    """FakeKumo plus canned answers for the networking paths: echoes what it was sent."""

    def handle(self, request: httpx.Request) -> httpx.Response:
        p, m = request.url.path, request.method
        if request.headers.get("authorization") != "Bearer secret":
            return super().handle(request)
        self.requests.append(request)
        body = json.loads(request.content) if request.content else None
        if p == "/v1/vpcs/vpc-missing":
            return error(404, "InvalidVpcID.NotFound", "VPC 'vpc-missing' not found")
        if p == "/v1/vpcs" and m == "GET":
            return self.page(request, [VPC, dict(VPC, vpc_id="vpc-0000000000000000b",
                                                 is_default=True)])
        if p == "/v1/route-tables" and m == "GET":
            return self.page(request, [RTB])
        if p == "/v1/elastic-ips" and m == "POST" and getattr(self, "pool_empty", False):
            return error(400, "AddressLimitExceeded", "the public pool has no free address left")
        echo = {"method": m, "path": p, "body": body, "params": dict(request.url.params)}
        if m == "GET" and p.count("/") == 2:  # a list endpoint: one page holding the echo
            return self.page(request, [echo])
        return ok(request, echo)


@pytest.fixture
def fake() -> FakeNetApi:
    return FakeNetApi()


kumo = invoke


def sent(fake, *args: str) -> dict:
    return invoke_json(fake, *args)


@pytest.mark.parametrize("args,method,path,body", [
    (["vpcs", "create", "--cidr", "10.0.0.0/16"], "POST", "/v1/vpcs", {"cidr_block": "10.0.0.0/16"}),
    (["vpcs", "describe", "vpc-1"], "GET", "/v1/vpcs/vpc-1", None),
    (["vpcs", "delete", "vpc-1"], "DELETE", "/v1/vpcs/vpc-1", None),
    (["subnets", "create", "--vpc-id", "vpc-1", "--cidr", "10.0.1.0/24",
      "--map-public-ip-on-launch"], "POST", "/v1/subnets",
     {"vpc_id": "vpc-1", "cidr_block": "10.0.1.0/24", "map_public_ip_on_launch": True}),
    (["subnets", "create", "--vpc-id", "vpc-1", "--cidr", "10.0.1.0/24"], "POST", "/v1/subnets",
     {"vpc_id": "vpc-1", "cidr_block": "10.0.1.0/24", "map_public_ip_on_launch": False}),
    (["subnets", "modify", "subnet-1", "--no-map-public-ip-on-launch"], "PATCH",
     "/v1/subnets/subnet-1", {"map_public_ip_on_launch": False}),
    (["subnets", "describe", "subnet-1"], "GET", "/v1/subnets/subnet-1", None),
    (["subnets", "delete", "subnet-1"], "DELETE", "/v1/subnets/subnet-1", None),
    (["igws", "create"], "POST", "/v1/internet-gateways", None),
    (["igws", "attach", "igw-1", "--vpc-id", "vpc-1"], "POST", "/v1/internet-gateways/igw-1/attach",
     {"vpc_id": "vpc-1"}),
    (["igws", "detach", "igw-1", "--vpc-id", "vpc-1"], "POST", "/v1/internet-gateways/igw-1/detach",
     {"vpc_id": "vpc-1"}),
    (["igws", "delete", "igw-1"], "DELETE", "/v1/internet-gateways/igw-1", None),
    (["route-tables", "create", "--vpc-id", "vpc-1"], "POST", "/v1/route-tables",
     {"vpc_id": "vpc-1"}),
    (["route-tables", "add-route", "rtb-1", "--destination", "0.0.0.0/0", "--gateway-id", "igw-1"],
     "POST", "/v1/route-tables/rtb-1/routes",
     {"destination_cidr_block": "0.0.0.0/0", "gateway_id": "igw-1"}),
    (["route-tables", "add-route", "rtb-1", "--destination", "0.0.0.0/0", "--nat-gateway-id",
      "nat-1"], "POST", "/v1/route-tables/rtb-1/routes",
     {"destination_cidr_block": "0.0.0.0/0", "nat_gateway_id": "nat-1"}),
    (["route-tables", "associate", "rtb-1", "--subnet-id", "subnet-1"], "POST",
     "/v1/route-tables/rtb-1/associations", {"subnet_id": "subnet-1"}),
    (["route-tables", "disassociate", "rtbassoc-1"], "DELETE",
     "/v1/route-table-associations/rtbassoc-1", None),
    (["route-tables", "delete", "rtb-1"], "DELETE", "/v1/route-tables/rtb-1", None),
    (["eips", "allocate"], "POST", "/v1/elastic-ips", None),
    (["eips", "associate", "eipalloc-1", "--instance-id", "i-1"], "POST",
     "/v1/elastic-ips/eipalloc-1/associate", {"instance_id": "i-1", "allow_reassociation": False}),
    (["eips", "associate", "eipalloc-1", "--instance-id", "i-1", "--private-ip", "10.0.0.4",
      "--allow-reassociation"], "POST", "/v1/elastic-ips/eipalloc-1/associate",
     {"instance_id": "i-1", "private_ip": "10.0.0.4", "allow_reassociation": True}),
    (["eips", "disassociate", "eipalloc-1"], "POST", "/v1/elastic-ips/eipalloc-1/disassociate",
     None),
    (["eips", "release", "eipalloc-1"], "DELETE", "/v1/elastic-ips/eipalloc-1", None),
    (["eips", "describe", "eipalloc-1"], "GET", "/v1/elastic-ips/eipalloc-1", None),
    (["nat-gateways", "create", "--subnet-id", "subnet-1", "--allocation-id", "eipalloc-1"],
     "POST", "/v1/nat-gateways", {"subnet_id": "subnet-1", "allocation_id": "eipalloc-1"}),
    (["nat-gateways", "describe", "nat-1"], "GET", "/v1/nat-gateways/nat-1", None),
    (["nat-gateways", "delete", "nat-1"], "DELETE", "/v1/nat-gateways/nat-1", None),
])
def test_commands_send_the_documented_request(fake, args, method, path, body):
    out = sent(fake, *args)
    assert (out["method"], out["path"], out["body"]) == (method, path, body)


def test_delete_route_passes_destination_as_query(fake):
    out = sent(fake, "route-tables", "delete-route", "rtb-1", "--destination", "0.0.0.0/0")
    assert out["method"] == "DELETE" and out["path"] == "/v1/route-tables/rtb-1/routes"
    assert out["params"] == {"destination_cidr_block": "0.0.0.0/0"}


def test_list_filters_and_pagination(fake):
    out = sent(fake, "subnets", "list", "--vpc-id", "vpc-1")
    assert out["items"][0]["params"]["vpc_id"] == "vpc-1"
    out = sent(fake, "nat-gateways", "list")
    assert "vpc_id" not in out["items"][0]["params"]
    fake.page_size = 1  # two pages of VPCs merged into one list
    out = sent(fake, "vpcs", "list")
    assert [v["vpc_id"] for v in out["items"]] == [VPC["vpc_id"], "vpc-0000000000000000b"]


def test_tables(fake):
    r = kumo(fake, "vpcs", "list")
    assert r.exit_code == 0, r.output
    assert "vpc-0000000000000000a" in r.stdout and "10.0.0.0/16" in r.stdout
    r = kumo(fake, "route-tables", "list")
    assert r.exit_code == 0, r.output
    assert "0.0.0.0/0->igw-0000000000000000a(blackhole)" in r.stdout
    assert "subnet-0000000000000000a" in r.stdout


def test_api_errors_exit_1_with_code(fake):
    r = kumo(fake, "vpcs", "describe", "vpc-missing")
    assert r.exit_code == 1
    assert "error: InvalidVpcID.NotFound: VPC 'vpc-missing' not found" in r.stderr
    fake.pool_empty = True
    r = kumo(fake, "eips", "allocate")
    assert r.exit_code == 1 and "error: AddressLimitExceeded:" in r.stderr


def test_usage_errors_send_nothing(fake):
    for args in (["route-tables", "add-route", "rtb-1", "--destination", "0.0.0.0/0"],
                 ["route-tables", "add-route", "rtb-1", "--destination", "0.0.0.0/0",
                  "--gateway-id", "igw-1", "--nat-gateway-id", "nat-1"],
                 ["vpcs", "describe", "../accounts"], ["eips", "release", "x?y=1"],
                 ["vpcs", "create"], ["subnets", "create", "--vpc-id", "vpc-1"]):
        r = kumo(fake, *args)
        assert r.exit_code == 2, (args, r.output)
    assert fake.requests == []
