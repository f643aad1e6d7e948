"""CLI tests for `kumo security-groups ...` against a fake API: each command sends the documented
request, prints the API's object in JSON or as tables, reports API errors as
`error: <code>: <message>` with exit status 1, and usage errors exit 2 sending nothing."""
from __future__ import annotations

import json

import httpx
import pytest

from test_cli_support import FakeKumo, error, invoke, invoke_json, ok

GID = "sg-0000000000000000a"
RULE = {"rule_id": "sgr-0000000000000000a", "group_id": GID, "direction": "ingress",
        "protocol": "tcp", "from_port": 22, "to_port": 22, "icmp_type": None, "icmp_code": None,
        "cidr_ipv4": "10.0.0.0/8", "peer_group_id": None, "description": "ssh"}
EGRESS = dict(RULE, rule_id="sgr-0000000000000000b", direction="egress", protocol="all",
              from_port=None, to_port=None, cidr_ipv4="0.0.0.0/0", description="")
GROUP = {"group_id": GID, "group_name": "web", "description": "web servers",
         "vpc_id": "vpc-0000000000000000a", "account_id": "acct-1", "is_default": False,
         "ingress_rules": [RULE], "egress_rules": [EGRESS], "created_at": "2026-01-01T00:00:00Z"}


class FakeSgApi(FakeKumo):
    """FakeKumo plus canned security-group answers; other calls echo what was sent."""

    def handle(self, request: httpx.Request) -> httpx.Response:
        p, m = request.url.path, request.method
        if request.headers.get("authorization") != "Bearer secret":
            return super().handle(request)
        self.requests.append(request)
        body = json.loads(request.content) if request.content else None
        if p == "/v1/security-groups/sg-missing":
            return error(404, "InvalidGroup.NotFound", "security group 'sg-missing' not found")
        if p == f"/v1/security-groups/{GID}/ingress" and body["rules"][0].get("cidr_ipv4") == "::/0":
            return error(400, "InvalidParameterValue", "IPv6 CIDR '::/0' is not allowed")
        if p == "/v1/security-groups" and m == "GET":
            return self.page(request, [GROUP, dict(GROUP, group_id="sg-0000000000000000b",
                                                   group_name="default", is_default=True)])
        if p == f"/v1/security-groups/{GID}" and m == "GET":
            return ok(request, GROUP)
        if p.endswith("/ingress") or p.endswith("/ingress/revoke"):
            if getattr(self, "table", False):
                return ok(request, {"group_id": GID, "direction": "ingress", "rules": [RULE]})
        echo = {"method": m, "path": p, "body": body, "params": dict(request.url.params)}
        return ok(request, echo)


@pytest.fixture
def fake() -> FakeSgApi:
    return FakeSgApi()


kumo = invoke


def sent(fake, *args: str) -> dict:
    return invoke_json(fake, "security-groups", *args)


SG = "sg-1"


@pytest.mark.parametrize("args,method,path,body", [
    (["create", "--name", "web"], "POST", "/v1/security-groups",
     {"group_name": "web", "description": ""}),
    (["create", "--name", "web", "--description", "web servers", "--vpc-id", "vpc-1"], "POST",
     "/v1/security-groups", {"group_name": "web", "description": "web servers", "vpc_id": "vpc-1"}),
    (["delete", SG], "DELETE", f"/v1/security-groups/{SG}", None),
    (["authorize", SG, "--protocol", "tcp", "--port", "22", "--cidr", "10.0.0.0/8",
      "--description", "ssh"], "POST", f"/v1/security-groups/{SG}/ingress",
     {"rules": [{"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr_ipv4": "10.0.0.0/8",
                 "description": "ssh"}]}),
    (["authorize", SG, "-p", "udp", "--port", "1000-2000", "--peer-group", "sg-2"], "POST",
     f"/v1/security-groups/{SG}/ingress",
     {"rules": [{"protocol": "udp", "from_port": 1000, "to_port": 2000,
                 "peer_group_id": "sg-2"}]}),
    (["authorize", SG, "--egress", "-p", "icmp", "--icmp-type", "8", "--icmp-code", "0",
      "--cidr", "0.0.0.0/0"], "POST", f"/v1/security-groups/{SG}/egress",
     {"rules": [{"protocol": "icmp", "icmp_type": 8, "icmp_code": 0, "cidr_ipv4": "0.0.0.0/0"}]}),
    (["authorize", SG, "-p", "-1", "--peer-group", SG], "POST", f"/v1/security-groups/{SG}/ingress",
     {"rules": [{"protocol": "-1", "peer_group_id": SG}]}),
    (["revoke", SG, "--rule-id", "sgr-1", "--rule-id", "sgr-2"], "POST",
     f"/v1/security-groups/{SG}/ingress/revoke", {"rule_ids": ["sgr-1", "sgr-2"]}),
    (["revoke", SG, "--egress", "-p", "all", "--cidr", "0.0.0.0/0"], "POST",
     f"/v1/security-groups/{SG}/egress/revoke",
     {"rules": [{"protocol": "all", "cidr_ipv4": "0.0.0.0/0"}]}),
])
def test_commands_send_the_documented_request(fake, args, method, path, body):
    out = sent(fake, *args)
    assert (out["method"], out["path"], out["body"]) == (method, path, body)


def test_list_filters_and_pagination(fake):
    fake.page_size = 1  # two pages merged into one list
    out = sent(fake, "list")
    assert [g["group_id"] for g in out["items"]] == [GID, "sg-0000000000000000b"]
    assert out["next_token"] is None
    sent(fake, "list", "--vpc-id", "vpc-1", "--name", "web")
    assert dict(fake.requests[-1].url.params)["vpc_id"] == "vpc-1"
    assert dict(fake.requests[-1].url.params)["group_name"] == "web"


def test_describe_json_is_the_api_object(fake):
    assert sent(fake, "describe", GID) == GROUP


def test_tables(fake):
    r = kumo(fake, "security-groups", "list")
    assert r.exit_code == 0, r.output
    assert GID in r.stdout and "web servers" in r.stdout and "default" in r.stdout
    r = kumo(fake, "security-groups", "describe", GID)
    assert r.exit_code == 0, r.output
    for text in ("sgr-0000000000000000a", "10.0.0.0/8", "sgr-0000000000000000b", "0.0.0.0/0",
                 "vpc-0000000000000000a"):
        assert text in r.stdout, text
    fake.table = True
    r = kumo(fake, "security-groups", "authorize", GID, "-p", "tcp", "--port", "22",
             "--cidr", "10.0.0.0/8")
    assert r.exit_code == 0, r.output
    assert "sgr-0000000000000000a" in r.stdout and "22" in r.stdout


def test_api_errors_exit_1_with_code(fake):
    r = kumo(fake, "security-groups", "describe", "sg-missing")
    assert r.exit_code == 1
    assert "error: InvalidGroup.NotFound: security group 'sg-missing' not found" in r.stderr
    r = kumo(fake, "security-groups", "authorize", GID, "-p", "tcp", "--port", "22",
             "--cidr", "::/0")
    assert r.exit_code == 1 and "error: InvalidParameterValue:" in r.stderr


def test_usage_errors_send_nothing(fake):
    for args in (["authorize", SG, "--port", "22", "--cidr", "10.0.0.0/8"],  # no protocol
                 ["authorize", SG, "-p", "tcp", "--port", "twenty", "--cidr", "10.0.0.0/8"],
                 ["authorize", SG, "-p", "tcp", "--port", "1-2-3", "--cidr", "10.0.0.0/8"],
                 ["authorize", SG, "-p", "icmp", "--icmp-type", "x", "--cidr", "10.0.0.0/8"],
                 ["revoke", SG, "--rule-id", "sgr-1", "-p", "tcp"],
                 ["revoke", SG],
                 ["describe", "../accounts"], ["delete", "x?y=1"],
                 ["create"]):
        r = kumo(fake, "security-groups", *args)
        assert r.exit_code == 2, (args, r.output)
    assert fake.requests == []
