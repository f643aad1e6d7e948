"""Two REAL controller processes (`python -m controller`) on one PostgreSQL database (a
throw-away server on a unix socket, tests/functional/pg.py) and two agent processes with the
fake driver, everything over unix sockets. Client threads send a burst of launches and security
group rule changes to both controllers; the leader is killed with SIGKILL mid-burst. Then:
- the other controller takes over (the time is measured and bounded), with epoch 2;
- every 2xx a client saw exists afterwards (instances, rules);
- every instance reaches running, on exactly one agent, with exactly one pending -> running
  event (nothing done twice);
- nothing is stranded: no spec or network document left unacknowledged.
Clients retry a request that failed on the dead controller on the other one (a launch with
its client token, so a launch that committed just before the kill is answered, not repeated).
The agents heartbeat to the survivor (in production: a VIP or load balancer in front of the
controllers). Controllers share one state directory (admin.key, image store: a shared
filesystem in production). Skipped without PostgreSQL; every process is stopped by its PID.
"""
from __future__ import annotations

import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from agent.contract import transport
from tests.functional.pg import postgres  # noqa: F401 (fixture)
from tests.functional.test_controller_with_agent import _wait, procs  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow

TTL, RENEW = 2.0, 0.5
LAUNCHES, RULES, WORKERS = 16, 16, 4




def controller_env(state, url: str, sock) -> dict:
    return {"KUMO_STATE_DIR": str(state), "KUMO_DATABASE_URL": url,
            "KUMO_LISTEN": "127.0.0.1:0", "KUMO_AGENT_SOCKET": str(sock),
            "KUMO_AGENT_TOKEN": "secret", "KUMO_AGENT_AUTH": "token", "KUMO_RECONCILE_INTERVAL_S": "0.2",
            "KUMO_HEARTBEAT_TIMEOUT_S": "30",
            "KUMO_LEADER_LEASE_TTL_S": str(TTL), "KUMO_LEADER_RENEW_INTERVAL_S": str(RENEW)}


def agent_env(host: str, state, sock, controller_sock) -> dict:
    return {"KUMO_AGENT_HOST_ID": host, "KUMO_AGENT_STATE_DIR": str(state),
            "KUMO_AGENT_LISTEN": f"unix:{sock}", "KUMO_AGENT_CONTROLLER_URL": f"unix:{controller_sock}",
            "KUMO_AGENT_TOKEN": "secret", "KUMO_AGENT_AUTH": "token", "KUMO_AGENT_DRIVER": "fake",
            "KUMO_AGENT_HEARTBEAT_INTERVAL": "0.3"}


def status(api) -> dict:
    r = api.get("/v1/admin/status")
    assert r.status_code == 200, r.text
    return r.json()


class Burst:
    """Client threads alternating between the controllers; what each 2xx answered."""

    def __init__(self, clients: list[httpx.Client], sg: str):
        self.clients, self.sg = clients, sg
        self.lock = threading.Lock()
        self.instances: set[str] = set()
        self.rules: set[str] = set()
        self.ok = 0
        self.retries = 0

    def _send(self, first: int, method: str, path: str, body: dict) -> httpx.Response:
        for attempt in range(2 * len(self.clients)):
            client = self.clients[(first + attempt) % len(self.clients)]
            try:
                return client.request(method, path, json=body)
            except httpx.TransportError:
                with self.lock:
                    self.retries += 1
        raise AssertionError(f"{method} {path}: no controller answered")

    def launch(self, i: int) -> None:
        r = self._send(i, "POST", "/v1/instances", {
            "image": "kumo-tiny", "instance_type": "t3.nano", "client_token": f"burst-{i}",
            "security_group_ids": [self.sg]})
        assert r.status_code == 201, r.text
        with self.lock:
            self.instances.add(r.json()["instances"][0]["instance_id"])
            self.ok += 1

    def rule(self, i: int) -> None:
        rule = {"protocol": "tcp", "from_port": 1000 + i, "to_port": 1000 + i,
                "cidr_ipv4": "10.0.0.0/8"}
        r = self._send(i, "POST", f"/v1/security-groups/{self.sg}/ingress", {"rules": [rule]})
        # A retry of a rule the dead controller committed without answering is a duplicate.
        if r.status_code == 409 and r.json()["error"]["code"] == "InvalidPermission.Duplicate":
            return
        assert r.status_code == 200, r.text
        with self.lock:
            self.rules.add(r.json()["rules"][0]["rule_id"])
            self.ok += 1


def test_leader_killed_mid_burst(postgres, tmp_path, procs):  # noqa: F811
    url = postgres.create_database(prefix="failover")
    state = tmp_path / "ctl"
    socks = [tmp_path / "a.sock", tmp_path / "b.sock"]
    image = tmp_path / "tiny.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    leader = procs(controller_env(state, url, socks[0]), "controller", tmp_path / "a.log")
    _wait(socks[0].exists, timeout=60, what="controller a")
    key = (state / "admin.key").read_text().strip()
    apis = [transport.client(f"unix:{s}", key, timeout=15) for s in socks]
    try:
        first = _wait(lambda: status(apis[0])["leader"]["controller_id"], timeout=30,
                      what="controller a leads")
        procs(controller_env(state, url, socks[1]), "controller", tmp_path / "b.log")
        _wait(socks[1].exists, timeout=60, what="controller b")
        for h in ("host-1", "host-2"):  # the agents talk to the survivor (see the docstring)
            procs(agent_env(h, tmp_path / h, tmp_path / f"{h}.sock", socks[1]), "agent",
                  tmp_path / f"{h}.log")
        _wait(lambda: len(apis[1].get("/v1/hosts").json()["items"]) == 2, what="hosts")
        st = status(apis[1])
        assert st["leader"]["controller_id"] == first and st["leader"]["epoch"] == 1
        assert len(st["controllers"]) == 2 and all(c["alive"] for c in st["controllers"])
        second = st["answered_by"]
        assert second != first
        r = apis[1].post("/v1/images", json={"name": "kumo-tiny", "path": str(image),
                                             "public": True})
        assert r.status_code == 201, r.text
        sg = apis[1].post("/v1/security-groups", json={"group_name": "burst"}).json()["group_id"]

        burst = Burst(apis, sg)
        jobs = [(burst.launch, i) for i in range(LAUNCHES)] + [(burst.rule, i) for i in range(RULES)]
        jobs.sort(key=lambda j: j[1])  # launches and rule changes interleaved
        killed_at = None
        with ThreadPoolExecutor(WORKERS) as pool:
            futures = [pool.submit(fn, i) for fn, i in jobs]
            _wait(lambda: burst.ok >= (LAUNCHES + RULES) // 3, timeout=60, what="burst under way")
            leader.send_signal(signal.SIGKILL)  # the leader, mid-burst
            killed_at = time.monotonic()
            leader.wait(timeout=10)
            st = _wait(lambda: (lambda s: s if s["leader"]["controller_id"] == second else None)(
                status(apis[1])), timeout=TTL + 10, what="takeover")
            takeover_s = time.monotonic() - killed_at
            for f in futures:
                f.result(timeout=60)
        print(f"takeover after SIGKILL: {takeover_s:.2f} s; client retries {burst.retries}")
        assert st["leader"]["epoch"] == 2
        assert burst.retries > 0  # some requests did hit the dead leader
        assert takeover_s < TTL + 3 * RENEW + 3.0  # within seconds (margin for a loaded machine)

        api = apis[1]
        assert len(burst.instances) == LAUNCHES  # every launch answered (retries included)
        # every instance reaches running; nothing left unacknowledged
        def settled():
            items = api.get("/v1/instances", params={"max_results": 1000}).json()["items"]
            s = status(api)["reconcile"]
            return (all(i["state"] == "running" for i in items)
                    and s["unacknowledged_instances"] == 0 and s["unacknowledged_networks"] == 0
                    and items)
        items = _wait(settled, timeout=60, what="every instance running, all acknowledged")
        assert {i["instance_id"] for i in items} == burst.instances  # 2xx ones exist, no extra
        rules = {r["rule_id"] for r in api.get(f"/v1/security-groups/{sg}").json()["ingress_rules"]}
        assert burst.rules <= rules and len(rules) == RULES
        # exactly one domain per instance, on the host the database placed it on
        placed: dict[str, list[str]] = {}
        for h in ("host-1", "host-2"):
            with transport.client(f"unix:{tmp_path / f'{h}.sock'}", "secret") as agent:
                for obs in agent.get("/v1/instances").json():
                    placed.setdefault(obs["instance_id"], []).append(h)
        assert {i["instance_id"]: [i["host_id"]] for i in items} == placed
        # one event per transition
        for iid in burst.instances:
            ev = api.get("/v1/events", params={"resource_id": iid,
                                               "resource_type": "instance"}).json()["items"]
            assert [e["to_state"] for e in ev] == ["pending", "running"], (iid, ev)
        st = status(api)
        assert {c["controller_id"]: c["alive"] for c in st["controllers"]} == {
            first: False, second: True}
    finally:
        for a in apis:
            a.close()
