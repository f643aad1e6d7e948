"""Shared by the lab's real-guest network tests (test_vpc_lab.py, test_security_groups_lab.py):
the admin API and fresh accounts, a launched instance (Vm), guest probe commands built only from
checked addresses, the negative-window loop every "must be blocked" check runs inside a guest,
the world both tests build (LabWorld: router namespaces, SSH checks, placed launches), and a
listener in the internet namespace that logs the source addresses it sees.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.contract.transport import client
from agent.network import names
from lab.naming import INET_SERVER_ADDR, host_netns, inet_netns
from lab import services
from lab.testing import end_process
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
_NEG_RE = re.compile(r"WINDOW (\d+) ATTEMPTS (\d+) HITS (\d+)")


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
    with services.agent_client(lab.state_dir, host_id) as c:
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


@dataclass
class LabWorld:
    """What both real-guest network tests build: accounts, launched guests (Vm by name), ids of
    what they created, and a way into each guest over SSH from its VPC's router namespace.
    Subclasses say how (``sh``); the checks built on it live here."""

    lab: object
    admin: object
    workdir: Path | None = None
    users: list = field(default_factory=list)
    vms: dict = field(default_factory=dict)
    ids: dict = field(default_factory=dict)
    _rns: dict = field(default_factory=dict)

    # Guests are reached from their VPC's router namespace on their host: the only place (besides
    # the guests) that has addresses in the VPC. The namespace is found by its router MAC, which is
    # derived from the VPC id (agent.network.names), so two VPCs with the same CIDR are never
    # confused and no controller-internal VNI is needed.
    def router_ns(self, host_id: str, vpc_id: str, timeout: float = CONVERGE) -> str:
        key = (host_id, vpc_id)
        if key in self._rns:
            return self._rns[key]
        prefix = f"{host_netns(self.lab.prefix, host_id)}-kvr-"
        mac = names.router_mac(vpc_id)
        deadline = time.monotonic() + timeout
        while True:
            for ns in netns_list():
                if ns.startswith(prefix) and any(
                        link.get("address") == mac for link in ns_links(self.lab, host_id, ns)):
                    self._rns[key] = ns
                    return ns
            assert time.monotonic() < deadline, f"no router namespace of {vpc_id} on {host_id}"
            time.sleep(0.5)

    def sh(self, vm: Vm, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        raise NotImplementedError

    def sh_until(self, vm: Vm, command: str, ok=lambda o: True, timeout: float = CONVERGE) -> str:
        """Run `command` in the guest until ok(stdout) (convergence after a change); the output."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.sh(vm, command, timeout=30)
            if r.returncode == 0 and ok(r.stdout):
                return r.stdout
            assert time.monotonic() < deadline, (
                f"{vm.name}: {command!r} never succeeded: rc={r.returncode} out={r.stdout!r} "
                f"err={r.stderr[-500:]!r}")
            time.sleep(1)

    def negative(self, vm: Vm, probe: str, secs: int = WINDOW) -> str:
        """Run `probe` in the guest repeatedly for `secs` s; assert that no attempt succeeded."""
        r = self.sh(vm, _NEG.format(secs=int(secs), probe=probe), timeout=secs + 40)
        m = _NEG_RE.search(r.stdout)
        assert m, f"{vm.name}: probe window did not run: {r.returncode} {r.stdout!r} {r.stderr!r}"
        window, attempts, hits = map(int, m.groups())
        assert window >= 4 and attempts >= 3, f"{vm.name}: window too short: {m.group(0)}"
        assert hits == 0, f"{vm.name}: {probe!r} succeeded {hits}/{attempts} times (must be blocked)"
        return f"{vm.name}: {probe}: {m.group(0)}"


def launch_placed(w: LabWorld, plan: list[tuple[str, CloudUser, Path, str, dict]]) -> None:
    """Launch each (name, user, key, host, run-args) with only `host` enabled; wait all ok."""
    hosts = sorted({p[3] for p in plan})
    all_hosts = [h["host_id"] for h in call(w.admin, "GET", "/v1/hosts")["items"]]
    try:
        for host in hosts:
            for other in all_hosts:
                set_host_enabled(w.admin, other, other == host)
            for name, user, key, where, args in plan:
                if where == host:
                    (inst,) = user.run(1, key_name=key.name, tags={"Name": name}, **args)
                    w.vms[name] = Vm(name, user, key, inst)
    finally:
        for other in all_hosts:
            set_host_enabled(w.admin, other, True)
    for vm in w.vms.values():
        vm.d = vm.user.wait(vm.id, "running", "ok", timeout=300)


# --- a listener in the internet namespace ---------------------------------------------------------
LISTENER = r"""
import socket, sys, threading, time
port, path = int(sys.argv[1]), sys.argv[2]
log = open(path, "a", buffering=1)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[3], port)); s.listen(64)
def serve(c, peer):
    try:
        c.settimeout(3); c.recv(2048)
        body = peer + "\n"
        c.sendall(("HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)).encode())
    except OSError:
        pass
    finally:
        c.close()
print("ready", flush=True)
while True:
    c, peer = s.accept()
    log.write("%.3f %s\n" % (time.time(), peer[0]))
    threading.Thread(target=serve, args=(c, peer[0]), daemon=True).start()
"""


class Listener:
    """A TCP/HTTP listener on 198.51.100.1 in the internet namespace that answers with, and logs,
    the source address it sees. Started and stopped (by PID) by the test."""

    def __init__(self, lab, workdir: Path, port: int):
        self.port = port
        self.log = workdir / f"listener-{port}.log"
        self.log.touch()
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", inet_netns(lab.prefix), sys.executable, "-c", LISTENER,
             str(port), str(self.log), INET_SERVER],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", f"listener did not start: {line!r} {self.proc.stderr.read()}"

    def entries(self, since: float = 0.0) -> list[tuple[float, str]]:
        out = []
        for line in self.log.read_text().splitlines():
            t, peer = line.split()
            if float(t) >= since:
                out.append((float(t), peer))
        return out

    def stop(self) -> None:
        end_process(self.proc)
