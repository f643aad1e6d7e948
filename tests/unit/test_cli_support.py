"""Support for the CLI tests (no tests here): a fake Kumo REST API as an httpx.MockTransport handler.

Implements just enough of docs/api.md (envelope errors, pagination, instance lifecycle) for the
CLI's commands; `instance_script` lets a test decide what successive GETs of an instance return.
A success is answered with the status the controller's route declares (`api_status`, read from
controller/api's routers), never one the fake picks: the fake cannot drift from the API (it once
answered 200 to POST /v1/instances, which the API answers 201). tests/functional/test_cli_api.py
runs the same commands against the real app.
"""
from __future__ import annotations

import functools
import importlib
import json
import pkgutil
import re
from dataclasses import dataclass, field

import httpx

from controller.cli.context import CliState


@functools.cache
def _routes() -> tuple[tuple[str, re.Pattern, int], ...]:
    from fastapi.routing import APIRoute

    import controller.api
    out = []
    for info in pkgutil.iter_modules(controller.api.__path__):
        router = getattr(importlib.import_module(f"controller.api.{info.name}"), "router", None)
        for route in getattr(router, "routes", ()):
            if isinstance(route, APIRoute):
                for method in route.methods:
                    out.append((method, re.compile("^/v1" + route.path_regex.pattern.lstrip("^")),
                                route.status_code or 200))
    return tuple(out)


def api_status(method: str, path: str) -> int:
    """The success status the controller's API answers `method path` with."""
    for m, rx, status in _routes():
        if m == method and rx.match(path):
            return status
    raise AssertionError(f"the API has no route {method} {path}")


def ok(request: httpx.Request, doc=None) -> httpx.Response:
    """The API's success answer to `request`, carrying `doc`."""
    status = api_status(request.method, request.url.path)
    if status == 204:
        return httpx.Response(204)
    return httpx.Response(status, json=doc)


def error(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message,
                                                  "retryable": False}})


def instance(iid: str, **kw) -> dict:
    base = {"instance_id": iid, "reservation_id": "r-0000000000000000a",
            "image_id": "ami-00000000000000001", "instance_type": "t3.micro", "vcpus": 1,
            "memory_mib": 512, "root_disk_gib": 1, "key_name": None, "tags": {},
            "state": "pending", "state_reason": None, "instance_status": "initializing",
            "system_status": "ok", "host_id": "host-1", "launch_time": None,
            "private_ip": None, "mac": None, "hostname": None, "client_token": None,
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"}
    base.update(kw)
    return base


@dataclass
class FakeKumo:
    page_size: int = 2
    instances: dict[str, dict] = field(default_factory=dict)
    # instance id -> list of dicts applied one per GET (the last one sticks)
    instance_script: dict[str, list[dict]] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    key_pairs: dict[str, dict] = field(default_factory=dict)
    types: dict[str, dict] = field(default_factory=lambda: {
        "t3.micro": {"name": "t3.micro", "vcpus": 1, "memory_mib": 512, "hourly_price": 0.01,
                     "retired": False}})
    next_id: int = 1

    # -- plumbing ---------------------------------------------------------------------------
    def factory(self, url: str, api_key: str | None) -> httpx.Client:
        self.url, self.api_key = url, api_key
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        return httpx.Client(base_url="http://kumo.test", headers=headers,
                            transport=httpx.MockTransport(self.handle))

    def state(self, **kw) -> CliState:
        return CliState(client_factory=self.factory, clock=kw.pop("clock", lambda: 0.0),
                        sleep=kw.pop("sleep", lambda s: None), **kw)

    def paths(self) -> list[str]:
        return [f"{r.method} {r.url.path}" for r in self.requests]

    def page(self, request: httpx.Request, items: list[dict]) -> httpx.Response:
        size = int(request.url.params.get("max_results", self.page_size))
        start = int(request.url.params.get("next_token") or 0)
        chunk = items[start:start + size]
        nxt = str(start + size) if start + size < len(items) else None
        return ok(request, {"items": chunk, "next_token": nxt})

    # -- routes -------------------------------------------------------------------------------
    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.headers.get("authorization") != "Bearer secret":
            return error(401, "AuthFailure", "missing or invalid API key")
        m, p = request.method, request.url.path
        body = json.loads(request.content) if request.content and m in ("POST", "PATCH") \
            and request.headers.get("content-type") == "application/json" else None
        if p == "/v1/instances" and m == "GET":
            items = list(self.instances.values())
            if s := request.url.params.get("state"):
                items = [i for i in items if i["state"] == s]
            for k, v in request.url.params.items():
                if k.startswith("tag:"):
                    items = [i for i in items if i["tags"].get(k[4:]) == v]
            return self.page(request, items)
        if p == "/v1/instances" and m == "POST":
            if body["instance_type"] not in self.types:
                return error(400, "InvalidInstanceType", f"no type {body['instance_type']}")
            made = []
            for _ in range(body["max_count"]):
                iid = f"i-{self.next_id:017x}"
                self.next_id += 1
                self.instances[iid] = instance(iid, tags=body.get("tags") or {},
                                               key_name=body.get("key_name"),
                                               client_token=body.get("client_token"))
                made.append(self.instances[iid])
            return ok(request, {"reservation_id": "r-0000000000000000a", "instances": made})
        if mm := re.fullmatch(r"/v1/instances/([^/]+)(?:/(\w+))?", p):
            iid, action = mm.groups()
            if iid not in self.instances:
                return error(404, "InvalidInstanceID.NotFound", f"instance {iid} not found")
            inst = self.instances[iid]
            if m == "GET" and action is None:
                script = self.instance_script.get(iid)
                if script:
                    inst.update(script.pop(0) if len(script) > 1 else script[0])
                return ok(request, inst)
            if m == "GET" and action == "console":
                return ok(request, {"instance_id": iid, "output": "boot\nKUMO-READY\n",
                                    "timestamp": "2026-01-01T00:00:00Z"})
            if m == "GET" and action == "status":
                return ok(request, {k: inst[k] for k in (
                    "instance_id", "state", "instance_status", "system_status")} | {"details": []})
            if m == "POST" and action in ("stop", "start", "reboot", "terminate"):
                if action == "start" and inst["state"] != "stopped":
                    return error(409, "IncorrectInstanceState", f"{iid} is {inst['state']}")
                inst["state"] = {"stop": "stopping", "start": "pending", "reboot": inst["state"],
                                 "terminate": "shutting-down"}[action]
                return ok(request, inst)
            if m == "PATCH" and action is None:
                inst["instance_type"] = body["instance_type"]
                return ok(request, inst)
        if p == "/v1/key-pairs" and m == "POST":
            if body["name"] in self.key_pairs:
                return error(400, "InvalidKeyPair.Duplicate", f"{body['name']} exists")
            kp = {"key_pair_id": "key-00000000000000001", "name": body["name"],
                  "fingerprint": "SHA256:x", "key_type": "ed25519",
                  "public_key": body.get("public_key", "ssh-ed25519 AAAA"),
                  "created_at": "2026-01-01T00:00:00Z"}
            self.key_pairs[body["name"]] = kp
            resp = dict(kp)
            if "public_key" not in body:
                resp["private_key"] = "-----BEGIN OPENSSH PRIVATE KEY-----\nxx\n-----END OPENSSH PRIVATE KEY-----\n"
            return ok(request, resp)
        if p == "/v1/key-pairs" and m == "GET":
            return self.page(request, list(self.key_pairs.values()))
        if p == "/v1/instance-types" and m == "GET":
            items = [t for t in self.types.values()
                     if not t["retired"] or request.url.params.get("include_retired") == "true"]
            return self.page(request, items)
        if p.startswith("/v1/instance-types/") and m == "DELETE":
            return ok(request)
        if p == "/v1/images/import" and m == "POST":
            return ok(request, {"image_id": "ami-00000000000000002",
                                "name": request.url.params["name"], "size": len(request.content),
                                "public": request.url.params["public"] == "true"})
        if p == "/v1/images" and m == "POST":
            return ok(request, {"image_id": "ami-00000000000000003", **body})
        if p == "/v1/events" and m == "GET":
            evs = [{"event_id": f"ev-{n}", "time": "2026-01-01T00:00:00Z",
                    "resource_type": "instance", "resource_id": "i-1", "account_id": "acct-1",
                    "from_state": None, "to_state": "pending", "reason": "launched"}
                   for n in range(5)]
            return self.page(request, evs)
        if p == "/v1/accounts" and m == "POST":
            return ok(request, {"account_id": "acct-2", "name": body["name"],
                                "api_key": "kumo_xyz"})
        if p == "/v1/hosts" and m == "GET":
            return self.page(request, [{
                "host_id": "host-1", "state": "up", "enabled": True, "hypervisor": "qemu",
                "architecture": "x86_64", "vcpus": 8, "memory_mib": 16384,
                "disk_bytes": 100 * 2**30, "vcpus_used": 2, "memory_mib_used": 1024,
                "disk_bytes_used": 2**30, "versions": {}, "last_heartbeat": None}])
        if p == "/v1/hosts/x/disable":
            return httpx.Response(422, json={"detail": [{"loc": ["path", "host_id"],
                                                         "msg": "bad host"}]})
        if p == "/v1/broken":
            return httpx.Response(500, text="Internal Server Error")
        return error(404, "NotFound", f"no route {m} {p}")


def invoke(fake: FakeKumo, *args: str):
    """Run `kumo ARGS` against the fake API with an API key and URL set; typer's result."""
    from typer.testing import CliRunner

    from controller.cli.main import app

    env = {"KUMO_API_KEY": "secret", "KUMO_URL": "http://controller:8787"}
    return CliRunner().invoke(app, list(args), obj=fake.state(), env=env)


def invoke_json(fake: FakeKumo, *args: str) -> dict:
    """`kumo -o json ARGS`, asserting success, parsed."""
    r = invoke(fake, "-o", "json", *args)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)
