"""An in-memory agent speaking the agent HTTP contract (agent/contract/v1.py), plus `Cloud`, a
harness wiring one controller app to any number of fake agents, for the controller's
functional tests.

The fake is served through httpx.MockTransport: the controller's real agent client encodes real
HTTP requests and decodes real responses, but no socket is opened. Tests drive time by hand:
`cloud.tick()` runs one reconciler pass, `cloud.heartbeat()` sends every agent's heartbeat.

What the fake accepts is what the real agent (agent/app.py) accepts: full-document PUTs follow
the one generation rule (agent/contract/generations.py: lower -> 409 StaleGeneration, same
generation with other content -> 409 IdempotentParameterMismatch, same content -> no-op), a
deleted instance keeps its generation as a tombstone, and a NetworkSpec goes through the
dataplane and firewall conversions the agent's NetworkService applies (400 with their codes), so
a controller test cannot pass against a document a real host would refuse.
"""
from __future__ import annotations

import base64
import contextlib
import json
import re
import subprocess
import time
from datetime import timedelta
from pathlib import Path
from unittest import mock

import httpx
import pytest
from fastapi.testclient import TestClient

from pydantic import ValidationError

from agent.contract.generations import GenerationConflict, is_resend
from agent.contract.v1 import (EXTENSIONS, ConsoleOutput, ErrorInfo, HeartbeatRequest, HostInfo,
                               InstanceObserved, InstanceSpec, NatProcessed, NetworkObserved,
                               NetworkSpec)
from agent.firewall.model import FirewallInputError
from agent.network.firewall_sync import host_firewall
from agent.network.wire import NetworkSpecRejected, host_network
from controller.app import close_app, create_app
from controller.ids import utcnow
from controller.settings import Settings

AGENT_TOKEN = "test-agent-token"
GIB = 1024**3
_PATH = re.compile(r"^/v1/instances/(i-[0-9a-f]{17})(/console)?$")


def _json(status: int, doc) -> httpx.Response:
    return httpx.Response(status, content=json.dumps(doc).encode(),
                          headers={"content-type": "application/json"})


def _err(status: int, code: str, message: str, retryable: bool = False) -> httpx.Response:
    return _json(status, {"error": {"code": code, "message": message, "retryable": retryable}})


class FakeAgent:
    """One host's agent. Knobs: auto_run (PUT running -> power running at once, else
    'building'), auto_boot (the ready marker 'appears' at once), unreachable, put_error."""

    def __init__(self, host_id: str, *, vcpus: int = 8, memory_mib: int = 16384,
                 disk_bytes: int = 200 * GIB, token: str = AGENT_TOKEN,
                 underlay_ip: str | None = None):
        self.host_id, self.token = host_id, token
        self.url = f"http://{host_id}.agents.test:8788"
        # Every extension of this contract, as a current agent (agent/heartbeat.py); underlay_ip:
        # the host speaks vpc-network (PUT /v1/network).
        self.info = HostInfo(host_id=host_id, agent_url=self.url, hypervisor="qemu",
                             architecture="x86_64", vcpus=vcpus, memory_mib=memory_mib,
                             disk_bytes=disk_bytes, versions={"agent": "fake"},
                             underlay_ip=underlay_ip,
                             extensions=[e for e in EXTENSIONS
                                         if underlay_ip or e != "vpc-network"])
        self.network: NetworkSpec | None = None
        #: NAT gateway id -> bytes its counter shows (extension nat-processed; tests set it),
        #: reported once the controller's heartbeat answer asked (`send_nat`), as a real agent.
        self.nat_bytes: dict[str, int] = {}
        self.send_nat = False
        self.specs: dict[str, InstanceSpec] = {}
        #: Tombstones: instance id -> generation it had when deleted (as agent/state.py keeps).
        self.deleted: dict[str, int] = {}
        self.observed: dict[str, dict] = {}
        self.consoles: dict[str, str] = {}
        self.requests: list[tuple[str, str]] = []
        self.auto_run = True
        self.auto_boot = True
        self.unreachable = False
        self.put_error: ErrorInfo | None = None

    # -- HTTP -------------------------------------------------------------------------------
    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.unreachable:
            raise httpx.ConnectError("fake agent unreachable", request=request)
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return _err(401, "AuthFailure", "bad agent token")
        path = request.url.path
        self.requests.append((request.method, path))
        if path == "/v1/host" and request.method == "GET":
            return _json(200, self.info.model_dump(mode="json"))
        if path == "/v1/network" and self.info.underlay_ip is not None:
            if request.method == "PUT":
                return self._put_network(request.content)
            return _json(200, self.network_obs().model_dump(mode="json"))
        if path == "/v1/instances" and request.method == "GET":
            return _json(200, [self.obs(i).model_dump(mode="json") for i in self.specs])
        m = _PATH.match(path)
        if not m:
            return _err(404, "NotFound", path)
        iid, console = m.group(1), m.group(2)
        if console:
            if iid not in self.specs:
                return _err(404, "InstanceNotFound", iid)
            return _json(200, ConsoleOutput(instance_id=iid,
                                            output=self.consoles.get(iid, "")).model_dump())
        if request.method == "PUT":
            try:
                spec = InstanceSpec.model_validate_json(request.content)
            except ValidationError as e:
                return _err(400, "InvalidParameterValue", str(e))
            if spec.instance_id != iid:
                return _err(400, "InvalidParameterValue",
                            f"spec.instance_id {spec.instance_id} does not match the URL")
            return self._put(spec)
        if request.method == "GET":
            if iid not in self.specs:
                return _err(404, "InstanceNotFound", iid)
            return _json(200, self.obs(iid).model_dump(mode="json"))
        if request.method == "DELETE":
            old = self.specs.pop(iid, None)
            if old is not None:
                self.deleted[iid] = old.generation
            self.observed.pop(iid, None)
            return httpx.Response(204)
        return _err(405, "MethodNotAllowed", request.method)

    def _put_network(self, content: bytes) -> httpx.Response:
        """PUT /v1/network as agent.network.service.NetworkService.accept answers it."""
        try:
            spec = NetworkSpec.model_validate_json(content)
        except ValidationError as e:
            return _err(400, "InvalidParameterValue", str(e))
        try:
            if is_resend(spec, self.network):
                return _json(200, self.network_obs().model_dump(mode="json"))
        except GenerationConflict as e:
            return _err(409, e.code, e.message)
        try:
            host_network(spec, self.info.underlay_ip, "uplink0")
            host_firewall(spec)
        except NetworkSpecRejected as e:
            return _err(e.status, e.code, e.message)
        except FirewallInputError as e:
            return _err(400, e.code, f"security groups: {e.message}")
        self.network = spec
        return _json(200, self.network_obs().model_dump(mode="json"))

    def _put(self, spec: InstanceSpec) -> httpx.Response:
        old = self.specs.get(spec.instance_id)
        try:
            if is_resend(spec, old):
                return _json(200, self.obs(spec.instance_id).model_dump(mode="json"))
        except GenerationConflict as e:
            return _err(409, e.code, e.message)
        gone = self.deleted.get(spec.instance_id)
        if old is None and gone is not None and spec.generation <= gone:
            return _err(409, "StaleGeneration",
                        f"instance {spec.instance_id} was deleted at generation {gone}")
        self.specs[spec.instance_id] = spec
        o = self.observed.setdefault(spec.instance_id, {"power": "absent", "booted": False,
                                                        "boot_count": 0, "error": None})
        o["error"] = self.put_error
        if self.put_error is None:
            if spec.power == "running":
                rebooted = old is not None and spec.reboot_nonce > old.reboot_nonce
                if o["power"] != "running" or rebooted:
                    if self.auto_run:
                        self._boot(spec.instance_id)
                    else:
                        o["power"] = "building"
            else:
                o.update(power="shutoff", booted=False)
        return _json(200, self.obs(spec.instance_id).model_dump(mode="json"))

    # -- simulated guest events -------------------------------------------------------------
    def _boot(self, iid: str) -> None:
        o = self.observed[iid]
        o.update(power="running", boot_count=o["boot_count"] + 1, booted=self.auto_boot)
        if self.auto_boot:
            self.consoles[iid] = self.consoles.get(iid, "") + f"KUMO-READY instance-id={iid}\n"

    def finish_boot(self, iid: str) -> None:
        self._boot(iid) if self.observed[iid]["power"] != "running" else None
        self.observed[iid]["booted"] = True

    def guest_poweroff(self, iid: str) -> None:
        self.observed[iid].update(power="shutoff", booted=False)

    def obs(self, iid: str) -> InstanceObserved:
        spec = self.specs[iid]
        o = self.observed[iid]
        return InstanceObserved(instance_id=iid, generation=spec.generation, power=o["power"],
                                booted=o["booted"], boot_count=o["boot_count"],
                                vcpus=spec.vcpus, memory_mib=spec.memory_mib, error=o["error"])

    def network_obs(self) -> NetworkObserved:
        gen = self.network.generation if self.network is not None else 0
        return NetworkObserved(generation=gen, applied_generation=gen)

    def vpc(self, vpc_id: str):
        """The VpcWire this host was told to carry for vpc_id, or None."""
        if self.network is None:
            return None
        return next((v for v in self.network.vpcs if v.vpc_id == vpc_id), None)

    def heartbeat_request(self) -> HeartbeatRequest:
        net = self.network_obs() if self.info.underlay_ip is not None else None
        if net is not None and self.send_nat:
            net = net.model_copy(update={"nat_processed": [
                NatProcessed(nat_gateway_id=k, bytes=v) for k, v in sorted(self.nat_bytes.items())]})
        return HeartbeatRequest(host=self.info, instances=[self.obs(i) for i in self.specs],
                                network=net, sent_at=time.time())


def make_qcow2(path: Path, size: str = "64M") -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return path


def clock_ahead(seconds: float, *modules) -> contextlib.ExitStack:
    """Inside the block those controller modules see the time `seconds` from now (their
    imported `utcnow`). Deadline and liveness tests move the clock past a deadline of 20 s
    instead of sleeping past one of 1 s: the short real deadline raced the tests' own first
    steps on a loaded machine (PostgreSQL, CI) and fired before the check that it had not yet."""
    stack = contextlib.ExitStack()
    for m in modules:
        stack.enter_context(mock.patch.object(m, "utcnow",
                                              lambda: utcnow() + timedelta(seconds=seconds)))
    return stack


class Cloud:
    """A controller app (reconciler driven by hand) and its fake agents."""

    def __init__(self, tmp_path: Path, **overrides):
        self.tmp = tmp_path
        self.agents: dict[str, FakeAgent] = {}
        base = dict(state_dir=tmp_path / "controller", agent_token=AGENT_TOKEN, agent_auth="token",
                    reconcile_interval_s=0, agent_facing_url="http://controller.test:8787",
                    heartbeat_timeout_s=30)
        base.update(overrides)
        self.settings = Settings(**base)
        self.app = create_app(self.settings, agent_http_factory=self._http)
        self.admin_key = (self.settings.state_dir / "admin.key").read_text().strip()
        self.admin = self.client(self.admin_key)
        self.agent_client = self.client(AGENT_TOKEN)
        self._image_id: str | None = None

    def _http(self, url: str, token: str | None, timeout: float) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=url, headers=headers, timeout=timeout,
                            transport=httpx.MockTransport(lambda r: self.agents[url].handle(r)))

    def client(self, key: str | None) -> TestClient:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return TestClient(self.app, headers=headers)

    @property
    def reconciler(self):
        return self.app.state.kumo.reconciler

    def account(self, name: str) -> TestClient:
        r = self.admin.post("/v1/accounts", json={"name": name})
        assert r.status_code == 201, r.text
        return self.client(r.json()["api_key"])

    def add_host(self, host_id: str, **capacity) -> FakeAgent:
        agent = FakeAgent(host_id, **capacity)
        self.agents[agent.url] = agent
        self.heartbeat(agent)
        return agent

    def heartbeat(self, *agents: FakeAgent) -> None:
        for a in agents or tuple(self.agents.values()):
            r = self.agent_client.post("/v1/agent/heartbeat",
                                       json=a.heartbeat_request().model_dump(mode="json"))
            assert r.status_code == 200, r.text
            a.send_nat = r.json().get("nat_processed", False)

    def tick(self) -> dict:
        return self.reconciler.tick()

    def converge(self, rounds: int = 3) -> None:
        for _ in range(rounds):
            self.tick()
            self.heartbeat()

    def image(self, name: str = "kumo-tiny", size: str = "64M", ready_marker: str | None =
              "KUMO-READY", public: bool = True) -> dict:
        path = make_qcow2(self.tmp / f"{name}.qcow2", size)
        r = self.admin.post("/v1/images", json={"name": name, "path": str(path), "public": public,
                                                "ready_marker": ready_marker})
        assert r.status_code == 201, r.text
        return r.json()

    def run(self, client: TestClient, **body) -> httpx.Response:
        body.setdefault("image", "kumo-tiny")
        body.setdefault("instance_type", "t3.nano")
        return client.post("/v1/instances", json=body)

    def instance(self, client: TestClient, iid: str) -> dict:
        r = client.get(f"/v1/instances/{iid}")
        assert r.status_code == 200, r.text
        return r.json()

    def launch(self, client: TestClient, **body) -> str:
        """Launch one instance (asserting 201); its id."""
        r = self.run(client, **body)
        assert r.status_code == 201, r.text
        return r.json()["instances"][0]["instance_id"]

    def launch_running(self, client: TestClient, **body) -> str:
        """Launch one instance and converge until it runs; its id."""
        iid = self.launch(client, **body)
        self.converge()
        assert self.instance(client, iid)["state"] == "running"
        return iid

    @property
    def db(self):
        return self.app.state.kumo.db

    def set_row(self, model, key: str, **values) -> None:
        """What the reconciler would do: set columns of one row (e.g. move it to another
        state)."""
        with self.db.session() as s:
            row = s.get(model, key)
            for k, v in values.items():
                setattr(row, k, v)
            s.add(row)

    def set_rows(self, query, **values) -> None:
        """set_row for every row `query` (a select) finds."""
        with self.db.session() as s:
            for row in s.exec(query):
                for k, v in values.items():
                    setattr(row, k, v)
                s.add(row)

    def close(self) -> None:
        close_app(self.app)


def cloud_fixture(image: bool = True, **overrides):
    """A `cloud` fixture for a test module (`cloud = cloud_fixture(...)`): a Cloud with the
    settings `overrides`, the kumo-tiny image registered unless image=False, and no host;
    closed after each test."""
    @pytest.fixture
    def cloud(tmp_path):
        c = Cloud(tmp_path, **overrides)
        if image:
            c.image()
        yield c
        c.close()
    return cloud


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
