"""Shared by the lab's real-guest network tests (test_vpc_lab.py, test_security_groups_lab.py):
the admin API and fresh accounts, a launched instance (Vm), guest probe commands built only from
checked addresses, and the negative-window loop every "must be blocked" check runs inside a guest.
"""
from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from agent.contract.transport import client
from lab.naming import INET_SERVER_ADDR
from lab.services import agent_socket
from lab.state import LabState
from tests.lab.cloud import CloudUser

INET_SERVER = str(INET_SERVER_ADDR)
WINDOW = 5  # seconds of a negative probe window (asserted >= 4 s and >= 3 attempts)
CONVERGE = 60.0  # seconds a positive check may take after boot or a change
_IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")

# A negative window inside a guest: every attempt of PROBE must fail for `secs` seconds.
_NEG = ('s=$(date +%s); n=0; hit=0; while [ $(date +%s) -lt $((s+{secs})) ]; do n=$((n+1)); '
        'if {probe} >/dev/null 2>&1; then hit=$((hit+1)); fi; sleep 0.2; done; '
        'echo "WINDOW $(( $(date +%s) - s )) ATTEMPTS $n HITS $hit"')


def ip_(value: str) -> str:
    """Everything put into a guest command line is a checked IPv4 address (no templated text)."""
    assert isinstance(value, str) and _IPV4.match(value), value
    return value


def ping_cmd(ip: str) -> str:
    return f"ping -c 1 -W 1 {ip_(ip)}"


def http_cmd(ip: str, port: int = 80, secs: int = 3) -> str:
    return f"timeout {int(secs)} wget -q -O - http://{ip_(ip)}:{int(port)}/"


def lab_state(lab) -> LabState:
    return LabState.from_dict(json.loads((lab.state_dir / "lab.json").read_text()))


def admin_api(lab):
    key = (lab.state_dir / "controller" / "admin.key").read_text().strip()
    return client(lab.url, key, timeout=30)


def call(api, method: str, path: str, **kw) -> dict:
    r = api.request(method, path, **kw)
    assert r.status_code < 400, f"{method} {path}: {r.status_code} {r.text}"
    return r.json() if r.content else {}


def new_account(lab, admin, key_dir: Path, name: str) -> CloudUser:
    created = call(admin, "POST", "/v1/accounts", json={"name": name})
    user = CloudUser(lab, key_dir)
    user.api.close()
    user.api = client(lab.url, created["api_key"], timeout=30)
    return user


def set_host_enabled(admin, host_id: str, enabled: bool) -> None:
    call(admin, "POST", f"/v1/hosts/{host_id}/{'enable' if enabled else 'disable'}")


def netns_list() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def in_router_ns(lab, host_id: str, ns: str) -> list[str]:
    """argv prefix running a command in router namespace `ns` (on `host_id`; the lab's agents
    keep the machine's mount namespace, so every router namespace is enterable by name)."""
    return ["ip", "netns", "exec", ns]


def ns_links(lab, host_id: str, ns: str) -> list[dict]:
    """`ip -j link` inside a router namespace ([] when it cannot be entered or just went)."""
    r = subprocess.run([*in_router_ns(lab, host_id, ns), "ip", "-j", "link"], capture_output=True,
                       text=True)
    return json.loads(r.stdout or "[]") if r.returncode == 0 else []


def agent_network(lab, host_id: str) -> dict:
    """The agent's GET /v1/network on `host_id` (its NetworkObserved)."""
    token = (lab.state_dir / "agent.token").read_text().strip()
    with client(f"unix:{agent_socket(lab.state_dir, host_id)}", token, timeout=10) as c:
        r = c.get("/v1/network")
        r.raise_for_status()
        return r.json()


@dataclass
class Vm:
    name: str
    user: CloudUser
    key: Path
    d: dict

    @property
    def id(self) -> str:
        return self.d["instance_id"]

    @property
    def ip(self) -> str:
        return self.d["private_ip"]

    @property
    def host(self) -> str:
        return self.d["host_id"]

    def refresh(self) -> "Vm":
        self.d = self.user.instance(self.id)
        return self
