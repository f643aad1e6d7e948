"""Driving the lab's real controller from tests: an API client with the demo account's key,
waiting for instance states, and finding what is on each lab host (domains, agent files), so
tests check the hosts independently of what the controller says.
"""
from __future__ import annotations

import base64
import os
import signal
import time
from pathlib import Path

import libvirt
import pytest

from agent.contract.transport import client
from lab.naming import host_netns
from lab.state import LabState

from tests.lab.guests import ssh, wait_ssh


class CloudUser:
    def __init__(self, lab, key_dir: Path):
        self.lab = lab
        self.api = client(lab.url, (lab.state_dir / "demo.key").read_text().strip(), timeout=30)
        self.key_dir = key_dir
        self.key_dir.mkdir(parents=True, exist_ok=True)

    def call(self, method: str, path: str, expect: int | None = None, **kw) -> dict:
        r = self.api.request(method, path, **kw)
        if expect is not None:
            assert r.status_code == expect, f"{method} {path}: {r.status_code} {r.text}"
        elif r.status_code >= 400:
            raise AssertionError(f"{method} {path}: {r.status_code} {r.text}")
        return r.json() if r.content else {}

    def key_pair(self, name: str) -> Path:
        path = self.key_dir / name
        if not path.exists():
            created = self.call("POST", "/v1/key-pairs", json={"name": name})
            path.write_text(created["private_key"])
            path.chmod(0o600)
        return path

    def run(self, count: int = 1, *, image: str = "kumo-tiny", instance_type: str = "t3.nano",
            key_name: str | None = None, user_data: bytes = b"", **extra) -> list[dict]:
        body = {"image": image, "instance_type": instance_type, "min_count": count,
                "max_count": count, "key_name": key_name,
                "user_data": base64.b64encode(user_data).decode(), **extra}
        return self.call("POST", "/v1/instances", json=body)["instances"]

    def instance(self, iid: str) -> dict:
        return self.call("GET", f"/v1/instances/{iid}")

    def wait(self, iid: str, state: str, status: str | None = None, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            try:
                seen = self.instance(iid)
            except Exception:  # the controller may be restarting
                time.sleep(0.5)
                continue
            if seen["state"] == state and (status is None or seen["instance_status"] == status):
                return seen
            time.sleep(0.5)
        events = self.call("GET", "/v1/events", params={"resource_id": iid})["items"]
        history = "\n".join(f"  {e['time']} {e['resource_type']} {e['from_state']} -> "
                            f"{e['to_state']}: {e['reason']}" for e in events)
        raise AssertionError(f"{iid} not {state}/{status} within {timeout} s: {seen}\n{history}"
                             f"\nconsole (last 3000 characters):\n{self.console_tail(iid)}")

    def console_tail(self, iid: str, chars: int = 3000) -> str:
        """The end of the guest's serial console, to tell a hung boot from a missed report."""
        try:
            return self.call("GET", f"/v1/instances/{iid}/console")["output"][-chars:]
        except Exception as e:  # diagnostics only: never hide the real failure
            return f"(console unavailable: {e})"

    def action(self, iid: str, verb: str, **params) -> dict:
        return self.call("POST", f"/v1/instances/{iid}/{verb}", params=params)

    def allow_admin_access(self, vpc_id: str | None = None) -> None:
        """Let SSH (tcp/22) and ping in to the VPC's default security group from anywhere, as an
        operator would; the default group otherwise admits only its own members."""
        groups = self.call("GET", "/v1/security-groups",
                           params={"max_results": 1000, **({"vpc_id": vpc_id} if vpc_id else {})})
        for g in groups["items"]:
            if not g["is_default"] or (vpc_id is None and not self._is_default_vpc(g["vpc_id"])):
                continue
            rules = [{"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr_ipv4": "0.0.0.0/0"},
                     {"protocol": "icmp", "icmp_type": -1, "cidr_ipv4": "0.0.0.0/0"}]
            for rule in rules:
                r = self.api.post(f"/v1/security-groups/{g['group_id']}/ingress",
                                  json={"rules": [rule]})
                assert r.status_code == 200 or "Duplicate" in r.text, r.text

    def _is_default_vpc(self, vpc_id: str) -> bool:
        return self.call("GET", f"/v1/vpcs/{vpc_id}")["is_default"]

    def router_netns(self, inst: dict) -> str:
        """The namespace of the instance's VPC router on its host: it holds the subnet's router
        address, so tests reach the guest's private address from there (as its gateway does)."""
        return find_router_netns(self.lab, inst)

    def ssh(self, inst: dict, key: Path, command: str, timeout: float = 60):
        netns = self.router_netns(inst)
        return wait_ssh(netns, key, inst["private_ip"], command, timeout=timeout)

    def terminate_all(self) -> None:
        """Terminate every instance of the account that is not terminated yet (no waiting)."""
        for inst in self.call("GET", "/v1/instances", params={"max_results": 1000})["items"]:
            if inst["state"] != "terminated":
                self.action(inst["instance_id"], "terminate")

    def close(self) -> None:
        self.api.close()


def user_fixture(terminate: bool = True):
    """A module's `cloud` fixture (`cloud = user_fixture()`): the demo account's CloudUser, with
    SSH and ping let in to its default VPC (allow_admin_access: SSH from the VPC router namespace
    goes through the security groups); after the module, unless terminate=False, every instance
    it left terminated so the lab's hosts are empty for the next module."""
    @pytest.fixture(scope="module")
    def cloud(lab, tmp_path_factory):
        user = CloudUser(lab, tmp_path_factory.mktemp("keys"))
        user.allow_admin_access()
        yield user
        if terminate:
            user.terminate_all()
        user.close()
    return cloud


def _vpc_vni(lab, host_id: str, vpc_id: str | None) -> int | None:
    """The VNI of `vpc_id` in the network document the host's agent accepted (its state file),
    or None when it has none yet."""
    import json
    path = lab.state_dir / "hosts" / host_id / "agent" / "network" / "spec.json"
    try:
        vpcs = json.loads(path.read_text()).get("vpcs", [])
    except (OSError, ValueError):
        return None
    return next((v["vni"] for v in vpcs if v.get("vpc_id") == vpc_id), None)


def second_account_fixture(name: str):
    """A module's fixture (`other = second_account_fixture("md-other")`, needing the module's
    `cloud`): a new account with its own default VPC (172.31.0.0/16 like the demo's), SSH and
    ping let in to it; its instances are terminated after the module."""
    @pytest.fixture(scope="module")
    def other(cloud, tmp_path_factory):
        admin_key = (cloud.lab.state_dir / "controller" / "admin.key").read_text().strip()
        with client(cloud.lab.url, admin_key, timeout=30) as admin:
            r = admin.post("/v1/accounts", json={"name": f"{name}-{int(time.time())}"})
            assert r.status_code == 201, r.text
            api_key = r.json()["api_key"]
        user = CloudUser(cloud.lab, tmp_path_factory.mktemp(f"{name}-keys"))
        user.api.close()
        user.api = client(cloud.lab.url, api_key, timeout=30)
        user.call("GET", "/v1/vpcs")  # makes the default VPC
        user.allow_admin_access()
        yield user
        user.terminate_all()
        user.close()
    return other


def find_router_netns(lab, inst: dict, timeout: float = 30) -> str:
    """`<host ns>-kvr-<vni>` of the instance's VPC on its host (the agent creates it when the
    instance's network document arrives: wait for it). Exact by the VPC's VNI from the agent's
    accepted document; else the namespace whose router interface holds the gateway of inst's
    subnet (ambiguous when two VPCs on the host have the same CIDR)."""
    import ipaddress
    import json
    import subprocess
    prefix = host_netns(lab.prefix, inst["host_id"]) + "-kvr-"
    deadline = time.monotonic() + timeout
    while True:
        names = [line.split()[0] for line in subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines() if line]
        vni = _vpc_vni(lab, inst["host_id"], inst.get("vpc_id"))
        if vni is not None:
            exact = f"{prefix}{vni:06x}"
            if exact in names:
                return exact
            if time.monotonic() > deadline:
                raise AssertionError(f"no VPC router namespace {exact}: {names}")
            time.sleep(0.5)
            continue
        for name in sorted(n for n in names if n.startswith(prefix)):
            out = subprocess.run(["ip", "-n", name, "-j", "addr"], capture_output=True, text=True)
            for link in json.loads(out.stdout or "[]"):
                for a in link.get("addr_info", []):
                    if a.get("family") != "inet" or not link["ifname"].startswith("kr-"):
                        continue
                    net = ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}").network
                    if ipaddress.ip_address(inst["private_ip"]) in net:
                        return name
        if time.monotonic() > deadline:
            raise AssertionError(f"no VPC router namespace for {inst['instance_id']} under "
                                 f"{prefix}*: {names}")
        time.sleep(0.5)


def domains_named(lab, name: str) -> dict[str, int]:
    """{host_id: libvirt state} of every domain called `name` on the lab's hosts."""
    found = {}
    for hid in lab_hosts(lab):
        conn = libvirt.open(lab.libvirt_uri(hid))
        try:
            dom = conn.lookupByName(name)
            found[hid] = dom.state()[0]
        except libvirt.libvirtError:
            pass
        finally:
            conn.close()
    return found


def lab_hosts(lab) -> list[str]:
    import json
    return LabState.from_dict(json.loads((lab.state_dir / "lab.json").read_text())).hosts


def agent_instance_dir(lab, host_id: str, iid: str) -> Path:
    return lab.state_dir / "hosts" / host_id / "agent" / "instances" / iid


def kill9(lab, process: str) -> int:
    """SIGKILL one of the lab's own processes (by its recorded PID) and return the PID."""
    import json
    state = LabState.from_dict(json.loads((lab.state_dir / "lab.json").read_text()))
    pid = state.processes[process].pid
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)
    return pid


__all__ = ["CloudUser", "domains_named", "agent_instance_dir", "find_router_netns", "kill9", "ssh",
           "second_account_fixture"]
