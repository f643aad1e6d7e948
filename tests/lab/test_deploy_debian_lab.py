"""The deploy role scripts, for real, on a clean Debian 12 (issue 14, "Tests").

One mmdebstrap'd minbase bookworm root is shared (read-only, overlayfs) by three roots of their
own: deploy/roles/controller.sh runs in one, deploy/roles/agent.sh in each of the two others,
each inside its own lab network namespace (the controller's at 100.64.0.2, the agents' hosts h1
and h2 at 100.64.0.11 and .12 on a fabric of its own prefix) with only a registry proxy to
download through: apt-get, the kumo user,
/opt/kumo/venv (pip install of this checkout), the PostgreSQL cluster, role and database, the
libvirt set-up, the systemd units installed and enabled. PID 1 is not systemd here, so the roles
start PostgreSQL themselves (pg_ctlcluster) and say the services must be started; the test then
starts each one exactly as its installed unit file says (tests/lab/deploy_support.py).

Each agent joins with a one-time join token of its own over mutual TLS. A kumo-tiny instance
launched on the deployed cloud is reached on its public IP from the lab's internet namespace on
the port its security group opens, and not on another one; two instances of one VPC, one on each
host, reach each other over the hosts' VXLAN (ping and HTTP between the guests, both ways) and
each answers on its public IP. A third guest of that VPC, without a public IP in a private
subnet whose default route goes to a NAT gateway, reaches the lab's internet through it (the
server sees the gateway's public IP) and nothing reaches it from there.

Backup and restore on PostgreSQL, as docs/deploy.md "Backup and restore" runs them: `kumo admin
backup` from the deployed venv as the kumo user with controller.env; an instance launched and a
rule added afterwards; the controller killed, its database dropped and created again, its state
directory emptied, `kumo admin restore`, the controller started again from its unit. The agents
come back over mTLS without joining again, the later instance leaves its host as an orphan and
the rule leaves the hosts' nftables, the guests from before the backup run on in the same libvirt
domains.

The hosts' /dev/kvm is given udev's owner and mode (deploy_support.Root.udev_kvm): with the
machine's root-only one, libvirtd re-probed QEMU at every call and a launch took two minutes.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.contract.transport import client
from agent.network import names
from lab import network as net
from lab import naming as nm
from lab.testing import skip_reason
from tests.lab import deploy_support as ds
from tests.lab.cloud import CloudUser
from tests.lab.guests import SSH_OPTS
from tests.lab.net_support import (CONVERGE, INET_SERVER, LabWorld, Listener, Vm, http_cmd, ip_,
                                   launch_placed, ping_cmd)
from tests.lab.registry_proxy import RegistryProxy
from tests.lab.test_vpc_lab import assert_inet_blocked, inet_probe, open_group

pytestmark = [pytest.mark.lab, pytest.mark.slow]

CTL_ADDR = str(nm.CTL_ADDR.ip)  # the controller's namespace on the fabric (lab/network.py ensure_ctl)
HOST = "h1"
HOSTS = ("h1", "h2")
API = f"http://{CTL_ADDR}:8787"
AGENT_FACING = f"https://{CTL_ADDR}:8790"
IMAGE_IN_ROOT = "/var/lib/kumo/images/kumo-tiny.qcow2"


def _call(api, method: str, path: str, expect: int | None = None, **kw) -> dict:
    r = api.request(method, path, **kw)
    if expect is not None:
        assert r.status_code == expect, f"{method} {path}: {r.status_code} {r.text}"
    else:
        assert r.status_code < 400, f"{method} {path}: {r.status_code} {r.text}"
    return r.json() if r.content else {}


def _wait(check, what: str, timeout: float, alive=lambda: True):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        assert alive(), f"died while waiting for {what}"
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout} s")


class Deployment:
    """The three roots, their network, the proxy, the API forwarder, timings and logs."""

    def __init__(self, work: Path, prefix: str):
        self.work, self.prefix = work, prefix
        self.base = work / "base"
        self.ctl_ns = nm.ctl_netns(prefix)
        self.ctl = ds.Root(self.base, work / "controller", self.ctl_ns, hostname="kumo-ctl")
        #: host id -> its root (the first one's work dir keeps its old name, "agent")
        self.agents = {h: ds.Root(self.base, work / ("agent" if h == HOST else f"agent-{h}"),
                                  nm.host_netns(prefix, h), hostname=h) for h in HOSTS}
        self.agent = self.agents[HOST]
        self.agent_procs: dict[str, subprocess.Popen] = {}
        self.ctl_proc: subprocess.Popen | None = None
        self.proxy = RegistryProxy()
        self.api_sock = work / "api.sock"
        self.forwarder: subprocess.Popen | None = None
        self.times: dict[str, float] = {}
        self.join: dict = {}  # the first host's join token answer
        self.joins: dict[str, dict] = {}
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    # -- network: a fabric of our own prefix, the internet, the controller and the hosts -------
    def network_up(self) -> None:
        net.ensure_fabric(self.prefix)
        net.ensure_inet(self.prefix)
        net.ensure_ctl(self.prefix)  # the controller's namespace, as the shared lab's
        for h in HOSTS:
            net.ensure_host(self.prefix, h)

    def network_down(self) -> None:
        for h in HOSTS:
            net.remove_host(self.prefix, h)
        net.remove_ctl(self.prefix)
        for name in (nm.inet_netns(self.prefix), nm.fabric_netns(self.prefix)):
            net.remove_netns(name)

    # -- the API, from the internet namespace (an operator's view) ------------------------------
    def api(self, key: str):
        return client(f"unix:{self.api_sock}", key, timeout=30)

    def admin_key(self) -> str:
        return self.ctl.path("/var/lib/kumo/controller/admin.key").read_text().strip()

    def start_forwarder(self) -> None:
        self.forwarder = subprocess.Popen(
            ["ip", "netns", "exec", nm.inet_netns(self.prefix), "socat",
             f"UNIX-LISTEN:{self.api_sock},fork,mode=600", f"TCP:{CTL_ADDR}:8787"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        _wait(self.api_sock.exists, "the API forwarder's socket", 10)

    # -- the roles -----------------------------------------------------------------------------
    def tails(self, chars: int = 3000) -> str:
        """The end of every log of this deployment (role runs, services), for failure reports."""
        out = []
        for f in sorted(self.logs.glob("*.log")):
            out.append(f"--- {f.name} ---\n{f.read_text(errors='replace')[-chars:]}")
        return "\n".join(out)

    def role(self, root: ds.Root, name: str, *args: str) -> None:
        t0 = time.monotonic()
        label = name if root in (self.ctl, self.agent) else f"{name}-{root.hostname}"
        root.run(["bash", f"{ds.SRC_IN_ROOT}/deploy/roles/{name}.sh", *args],
                 self.logs / f"role-{label}.log", timeout=900, env=ds.download_env(root))
        self.times[f"role {label}" + (" (again)" if f"role {label}" in self.times else "")] = \
            time.monotonic() - t0

    def join_host(self, api, h: str) -> None:
        """A one-time join token for host `h`, and its role run again with it."""
        self.joins[h] = _call(api, "POST", "/v1/hosts/join-tokens", 201,
                              json={"host_id": h, "ttl_s": 600})
        root = self.agents[h]
        root.udev_kvm()  # what udev does on a real host (deploy_support.Root.udev_kvm)
        token_file = root.path("/root/kumo-join-token")
        token_file.write_text(self.joins[h]["token"] + "\n")
        token_file.chmod(0o600)
        # The role again, now with the join token (idempotent: nothing is reinstalled).
        self.role(root, "agent", "--host-id", h, "--controller-url", AGENT_FACING,
                  "--join-token-file", "/root/kumo-join-token", "--join-url", API,
                  "--ca-sha256", self.joins[h]["ca_sha256"])

    def start_controller(self) -> subprocess.Popen:
        """The controller, as kumo-controller.service says, on the PostgreSQL the role set up."""
        self.ctl_proc = ds.start_unit(self.ctl, "kumo-controller.service",
                                      self.logs / "kumo-controller.log")
        return self.ctl_proc

    def start_host(self, h: str) -> None:
        """libvirtd (virtlogd) and the agent of host `h`, as their units say."""
        root = self.agents[h]
        for unit in ("virtlogd.service", "libvirtd.service"):
            ds.start_unit(root, unit, self.logs / f"{h}-{unit}.log")
        _wait(lambda: root.path("/run/libvirt/libvirt-sock").exists(), f"{h}'s libvirtd socket",
              60)
        log = "kumo-agent.log" if h == HOST else f"kumo-agent-{h}.log"
        self.agent_procs[h] = ds.start_unit(root, "kumo-agent.service", self.logs / log)


def _parallel(*fns) -> None:
    errors: list[BaseException] = []

    def run(fn):
        try:
            fn()
        except BaseException as e:  # reported below, from the test's thread
            errors.append(e)
    threads = [threading.Thread(target=run, args=(fn,)) for fn in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _deploy(d: Deployment) -> None:
    t_all = time.monotonic()
    d.times["mmdebstrap"] = ds.build_base(d.base, log=lambda m: None)
    d.network_up()
    d.ctl.mount()
    d.proxy.listen_in(d.ctl_ns)
    for h, root in d.agents.items():
        root.mount()
        d.proxy.listen_in(root.netns)
    # Every role at once, each in its root and namespace. The agents have no join token yet
    # (the controller is not up): the role installs everything and warns it cannot start.
    _parallel(lambda: d.role(d.ctl, "controller"),
              *[lambda h=h, root=root: d.role(root, "agent", "--host-id", h, "--no-start")
                for h, root in d.agents.items()])
    ctl = d.start_controller()
    _wait(lambda: d.ctl.path("/var/lib/kumo/controller/admin.key").exists(),
          "the controller's admin key", 120, alive=lambda: ctl.poll() is None)
    d.start_forwarder()
    key = d.admin_key()
    with d.api(key) as api:
        _parallel(*[lambda h=h: d.join_host(api, h) for h in HOSTS])
    d.join = d.joins[HOST]
    # Nothing downloads from here on: the services run with no way out of the lab at all.
    d.proxy.close()
    for h in HOSTS:
        d.start_host(h)
    t_up = time.monotonic()
    with d.api(key) as api:
        _wait(lambda: {h["host_id"] for h in _call(api, "GET", "/v1/hosts")["items"]
                       if h["state"] == "up"} >= set(HOSTS),
              f"hosts {HOSTS} up at the controller", 120,
              alive=lambda: all(p.poll() is None for p in d.agent_procs.values()))
    d.times["agents up"] = time.monotonic() - t_up
    d.times["deploy total"] = time.monotonic() - t_all


def _teardown(d: Deployment) -> list[str]:
    problems = []

    def stop(root: ds.Root) -> None:
        left = ds.stop_root(root)
        if left:
            problems.append(f"processes still running in {root.merged}: {left}")
    _parallel(*[lambda root=root: stop(root) for root in (*d.agents.values(), d.ctl)])
    if d.forwarder is not None:
        ds.end_pids([d.forwarder.pid])
        d.forwarder.wait(timeout=10)
    d.proxy.close()
    keep = os.environ.get("KUMO_DEPLOY_KEEP_LOGS")  # a directory: the logs outlive the run
    if keep:
        shutil.copytree(d.logs, keep, dirs_exist_ok=True)
        for h, root in d.agents.items():
            if root.path("/var/log/libvirt").is_dir():
                shutil.copytree(root.path("/var/log/libvirt"), Path(keep) / f"{h}-libvirt",
                                dirs_exist_ok=True)
    for root in (*d.agents.values(), d.ctl):
        root.umount()
    d.network_down()
    shutil.rmtree(d.work, ignore_errors=True)
    return problems


@pytest.fixture(scope="module")
def deployed():
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    if shutil.which("mmdebstrap") is None or shutil.which("socat") is None:
        pytest.skip("mmdebstrap and socat are needed (deploy/lib.sh installs them)")
    # A prefix of its own ("kd": deploy test), never the shared lab's.
    prefix = nm.validate_prefix("kd" + secrets.token_hex(3))
    d = Deployment(Path(tempfile.mkdtemp(prefix="kumo-deploy-", dir="/var/tmp")), prefix)
    try:
        try:
            _deploy(d)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{d.tails()}") from e
        yield d
    finally:
        problems = _teardown(d)
        print("deploy test timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in d.times.items()))
    assert not problems, problems


def _in_root(root: ds.Root, *argv: str) -> str:
    r = subprocess.run(root.argv(list(argv)), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"{argv}: {r.stderr}"
    return r.stdout


def test_roles_installed_everything_for_real(deployed):
    d = deployed
    # the kumo system user, the venv with Kumo in it, the units enabled, env files 0600
    assert "kumo:" in d.ctl.path("/etc/passwd").read_text()
    for root, role, unit in ((d.ctl, "controller", "kumo-controller.service"),
                             (d.agent, "agent", "kumo-agent.service")):
        assert _in_root(root, "/opt/kumo/venv/bin/python", "-c",
                        "import controller, agent; print('ok')").strip() == "ok"
        assert root.path(f"/etc/systemd/system/multi-user.target.wants/{unit}").is_symlink()
        assert (root.path(f"/etc/kumo/{role}.env").stat().st_mode & 0o777) == 0o600
    # PostgreSQL: the role kumo owns the database kumo, and the controller uses it
    owner = _in_root(d.ctl, "runuser", "-u", "postgres", "--", "psql", "-qtAX", "-c",
                     "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'kumo'")
    assert owner.strip() == "kumo"
    url = ds.parse_env_file(d.ctl.path("/etc/kumo/controller.env").read_text())["KUMO_DATABASE_URL"]
    assert url.startswith("postgresql+psycopg://kumo:")
    tables = _in_root(d.ctl, "runuser", "-u", "postgres", "--", "psql", "-qtAX", "kumo", "-c",
                      "SELECT count(*) FROM host WHERE host_id = 'h1'")
    assert tables.strip() == "1"
    # libvirt: the agent's packages are there and libvirt's default NAT network is not autostarted
    assert d.agent.path("/usr/sbin/libvirtd").exists()
    assert not d.agent.path("/etc/libvirt/qemu/networks/autostart/default.xml").exists()
    # no systemd as PID 1: each role said what it could not start; PostgreSQL it started itself
    for role, unit in (("controller", "kumo-controller.service"), ("agent", "kumo-agent.service")):
        said = (d.logs / f"role-{role}.log").read_text(errors="replace")
        assert f"{unit} is installed and enabled, not started" in said or \
            f"not starting {unit} (--no-start)" in said, said[-2000:]
    assert "libvirtd.service (and virtlogd.service) is installed and enabled, not started" in \
        (d.logs / "role-agent.log").read_text(errors="replace")
    (pidfile,) = d.ctl.path("/var/lib/postgresql").glob("*/main/postmaster.pid")
    pid = int(pidfile.read_text().split()[0])
    assert pid in ds.pids_in_root(d.ctl)
    # the proxy was only ever asked for registries
    assert not d.proxy.refused, d.proxy.refused


def test_agents_joined_over_mutual_tls_each_with_its_own_certificate(deployed):
    d = deployed
    from cryptography import x509
    for hid, root in d.agents.items():
        cert = x509.load_pem_x509_certificate(
            root.path("/var/lib/kumo/agent/tls/host.pem").read_bytes())
        uris = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier)
        assert uris == [f"kumo:host:{hid}"], uris
        env = ds.parse_env_file(root.path("/etc/kumo/agent.env").read_text())
        assert env["KUMO_AGENT_AUTH"] == "mtls" and env["KUMO_AGENT_HOST_ID"] == hid
        assert env["KUMO_AGENT_CONTROLLER_URL"] == AGENT_FACING
    with d.api(d.admin_key()) as api:
        hosts = {h["host_id"]: h for h in _call(api, "GET", "/v1/hosts")["items"]}
        for hid in HOSTS:
            assert hosts[hid]["state"] == "up" and hosts[hid]["health"] == "ok", hosts[hid]
    # The agents' TLS listener refuses a client without a certificate from the cloud CA ...
    inet = nm.inet_netns(d.prefix)
    r = subprocess.run(["ip", "netns", "exec", inet, "curl", "-sk", "-m", "5", "-o", "/dev/null",
                        "-w", "%{http_code}", f"{AGENT_FACING}/v1/agent/heartbeat"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and r.stdout in ("", "000"), (r.returncode, r.stdout)
    # ... and the join token was one-time: a second join with it (a well-formed CSR) is refused.
    from agent.identity import make_csr, new_key
    with client(f"unix:{d.api_sock}", timeout=30) as anon:
        r = anon.post("/v1/agent/join", json={"csr": make_csr(new_key(), HOST),
                                              "join_token": d.join["token"]})
    assert r.status_code == 409 and "JoinTokenUsed" in r.text, (r.status_code, r.text)


@pytest.fixture(scope="module")
def tenant(deployed):
    """kumo-tiny registered (a file in the controller's root) and an account of the deployed
    cloud; `lab` is what tests/lab's CloudUser needs (the API's URL, the account's key)."""
    d = deployed
    from images.builder import cached_manifest
    m = cached_manifest("kumo-tiny")
    if m is None:
        pytest.skip("kumo-tiny is not built (kumo image build kumo-tiny)")
    dst = d.ctl.path(IMAGE_IN_ROOT)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(m.path, dst)
    dst.chmod(0o644)
    with d.api(d.admin_key()) as admin:
        _call(admin, "POST", "/v1/images", json={
            "name": "kumo-tiny", "path": IMAGE_IN_ROOT, "format": m.format, "public": True,
            "architecture": m.architecture, "ready_marker": m.ready_marker,
            "min_ram_mib": m.min_ram_mib, "description": "deploy test"})
        acct = _call(admin, "POST", "/v1/accounts", json={"name": "deploytest"})
    state = d.work / "tenant"
    state.mkdir()
    (state / "demo.key").write_text(acct["api_key"] + "\n")  # CloudUser's account
    (state / "demo.key").chmod(0o600)
    return SimpleNamespace(key=acct["api_key"], lab=SimpleNamespace(
        prefix=d.prefix, url=f"unix:{d.api_sock}", state_dir=state))


def test_instance_on_the_deployed_agent_reached_only_where_its_group_allows(deployed, tenant):
    d = deployed
    with d.api(tenant.key) as user:
        (inst,) = _call(user, "POST", "/v1/instances", json={
            "image": "kumo-tiny", "instance_type": "t3.nano", "min_count": 1,
            "max_count": 1})["instances"]
        iid = inst["instance_id"]
        t0 = time.monotonic()
        try:
            got = _wait(lambda: (lambda i: i if i["state"] == "running" and
                                 i["instance_status"] == "ok" else None)(
                _call(user, "GET", f"/v1/instances/{iid}")), f"{iid} running/ok", 300)
            d.times["instance running/ok"] = time.monotonic() - t0
            assert got["host_id"] in HOSTS and got["public_ip"], got
            ip = got["public_ip"]
            (sg,) = got["security_group_ids"]
            _call(user, "POST", f"/v1/security-groups/{sg}/ingress", json={"rules": [
                {"protocol": "tcp", "from_port": 80, "to_port": 80, "cidr_ipv4": "0.0.0.0/0"}]})
            lab = SimpleNamespace(prefix=d.prefix)
            res = inet_probe(lab, ip, port=80, duration=CONVERGE, stop=f"match:{iid}")
            assert res[-1]["body"] == iid, res[-3:]
            d.times["public IP answered"] = time.monotonic() - t0
            # SSH (dropbear listens on 22) is not in the group: blocked for the whole window
            assert_inet_blocked(lab, ip, port=22)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{d.tails()}") from e
        finally:
            _call(user, "POST", f"/v1/instances/{iid}/terminate")
            _wait(lambda: _call(user, "GET", f"/v1/instances/{iid}")["state"] == "terminated",
                  f"{iid} terminated", 120)


# ---- two hosts: one VPC across them ------------------------------------------------------------

@dataclass
class DeployedWorld(LabWorld):
    """tests/lab's LabWorld on the deployed hosts. A VPC's router namespace has its `ip netns`
    name only inside the agent's own mount namespace (the agent runs in its root): it is entered
    by path, /proc/<agent pid>/root/run/netns/<name>, found by its router MAC as LabWorld does."""

    deployment: Deployment | None = None

    def router_ns(self, host_id: str, vpc_id: str, timeout: float = CONVERGE) -> str:
        key = (host_id, vpc_id)
        if key in self._rns:
            return self._rns[key]
        netns_dir = Path(f"/proc/{self.deployment.agent_procs[host_id].pid}/root/run/netns")
        mac = names.router_mac(vpc_id)
        deadline = time.monotonic() + timeout
        while True:
            for ns in sorted(netns_dir.glob(names.router_netns_prefix(host_id) + "*")):
                r = subprocess.run(["nsenter", f"--net={ns}", "ip", "-j", "link"],
                                   capture_output=True, text=True, timeout=30)
                if r.returncode == 0 and any(link.get("address") == mac
                                             for link in json.loads(r.stdout or "[]")):
                    self._rns[key] = str(ns)
                    return str(ns)
            assert time.monotonic() < deadline, f"no router namespace of {vpc_id} on {host_id}"
            time.sleep(0.5)

    def sh(self, vm: Vm, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """SSH into the guest from its VPC's router namespace on its own host."""
        ns = self.router_ns(vm.host, vm.d["vpc_id"])
        return subprocess.run(["nsenter", f"--net={ns}", "ssh", "-i", str(vm.key), *SSH_OPTS,
                               f"root@{ip_(vm.ip)}", command],
                              capture_output=True, text=True, timeout=timeout)


def _vxlan_packets(d: Deployment, host_id: str) -> int:
    """Packets the host's VXLAN devices received and sent (its namespace: the agent's own)."""
    r = subprocess.run(["ip", "netns", "exec", nm.host_netns(d.prefix, host_id), "ip", "-j",
                        "-s", "link", "show", "type", "vxlan"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return sum(link["stats64"]["rx"]["packets"] + link["stats64"]["tx"]["packets"]
               for link in json.loads(r.stdout or "[]"))


#: A private subnet of the account's default VPC (172.31.0.0/16; its default subnet is /20 at 0).
PRIVATE_CIDR = "172.31.32.0/24"


def _private_subnet_behind_a_nat_gateway(user: CloudUser) -> dict:
    """A subnet of the default VPC with a route table of its own whose default route goes to a
    NAT gateway (its own elastic IP) in the default subnet, as the shared lab's NAT scenario
    builds it (tests/lab/test_vpc_lab.py _build)."""
    vpc = next(v for v in user.call("GET", "/v1/vpcs")["items"] if v["is_default"])
    public = next(sn for sn in user.call("GET", "/v1/subnets",
                                         params={"vpc_id": vpc["vpc_id"]})["items"]
                  if sn["default_for_az"])
    sn = user.call("POST", "/v1/subnets", json={"vpc_id": vpc["vpc_id"],
                                                "cidr_block": PRIVATE_CIDR})
    rt = user.call("POST", "/v1/route-tables", json={"vpc_id": vpc["vpc_id"]})
    user.call("POST", f"/v1/route-tables/{rt['route_table_id']}/associations",
              json={"subnet_id": sn["subnet_id"]})
    eip = user.call("POST", "/v1/elastic-ips")
    nat = user.call("POST", "/v1/nat-gateways", json={"subnet_id": public["subnet_id"],
                                                      "allocation_id": eip["allocation_id"]})
    user.call("POST", f"/v1/route-tables/{rt['route_table_id']}/routes",
              json={"destination_cidr_block": "0.0.0.0/0", "nat_gateway_id": nat["nat_gateway_id"]})
    return {"sn_priv": sn["subnet_id"], "nat": nat["nat_gateway_id"], "nat_ip": nat["public_ip"]}


@pytest.fixture(scope="module")
def vpc(deployed, tenant, tmp_path_factory):
    """Three guests of the account's default VPC, booted in parallel (placed by disabling the
    other host while launching): "h1" and "h2", one per host in the default subnet (public
    IPs), and "private" (on h2, no public IP) in a private subnet behind a NAT gateway. The
    tests below share them; they are terminated at the end."""
    d = deployed
    user = CloudUser(tenant.lab, tmp_path_factory.mktemp("deploy-vpc") / "keys")
    w = DeployedWorld(lab=tenant.lab, admin=d.api(d.admin_key()), deployment=d)
    w.users.append(user)
    t0 = time.monotonic()
    try:
        try:
            key = user.key_pair("deploy-vpc")
            w.ids["sg"] = sg = open_group(user, None, "deploy-vpc-open")
            w.ids.update(_private_subnet_behind_a_nat_gateway(user))
            launch_placed(w, [(h, user, key, h, dict(security_group_ids=[sg])) for h in HOSTS] + [
                ("private", user, key, HOSTS[1], dict(subnet_id=w.ids["sn_priv"],
                                                      associate_public_ip=False,
                                                      security_group_ids=[sg]))])
        except AssertionError as e:
            raise AssertionError(f"{e}\n{d.tails()}") from e
        d.times["three guests running/ok"] = time.monotonic() - t0
        yield w
    finally:
        try:
            user.terminate_all()
            for vm in w.vms.values():
                user.wait(vm.id, "terminated", timeout=120)
        finally:
            user.close()
            w.admin.close()


def test_one_vpc_across_the_two_deployed_hosts(deployed, vpc):
    """Two instances of the account's default VPC, one per host: ping and HTTP between the
    guests both ways go over the hosts' VXLAN on the fabric; each answers the internet on its
    public IP."""
    d, w = deployed, vpc
    t0 = time.monotonic()
    try:
        a, b = (w.vms[h] for h in HOSTS)
        assert (a.host, b.host) == HOSTS and a.d["vpc_id"] == b.d["vpc_id"], (a.d, b.d)
        before = {h: _vxlan_packets(d, h) for h in HOSTS}
        for x, y in ((a, b), (b, a)):
            out = w.sh_until(x, f"{ping_cmd(y.ip)} >/dev/null && echo PING-OK; {http_cmd(y.ip)}",
                             lambda o, y=y: "PING-OK" in o and y.id in o)
            assert out.split() == ["PING-OK", y.id], out
        d.times["guests reached each other"] = time.monotonic() - t0
        # ... and their packets went through both hosts' VXLAN devices
        after = {h: _vxlan_packets(d, h) for h in HOSTS}
        assert all(after[h] > before[h] for h in HOSTS), (before, after)
        lab = SimpleNamespace(prefix=d.prefix)
        for vm in (a, b):
            assert vm.d["public_ip"], vm.d
            res = inet_probe(lab, vm.d["public_ip"], duration=CONVERGE, stop=f"match:{vm.id}")
            assert res[-1]["body"] == vm.id, res[-3:]
    except AssertionError as e:
        raise AssertionError(f"{e}\n{d.tails()}") from e


def test_private_subnet_reaches_the_internet_only_through_its_nat_gateway(deployed, vpc,
                                                                          tmp_path):
    """The private guest (no public IP) reaches a server in the lab's internet namespace, which
    sees the NAT gateway's public IP as the source; from the internet nothing reaches it: not
    its private address (even routed to its host) nor the NAT gateway's public IP, for the
    whole window, while it does answer HTTP inside the VPC."""
    d, w = deployed, vpc
    p, a = w.vms["private"], w.vms[HOSTS[0]]
    assert p.d["subnet_id"] == w.ids["sn_priv"] and not p.d.get("public_ip"), p.d
    t0 = time.monotonic()
    listener = Listener(w.lab, tmp_path, 18000 + secrets.randbelow(2000))
    inet = nm.inet_netns(d.prefix)
    route = [f"{p.ip}/32", "via", str(nm.host_address(p.host).ip)]
    routed = False
    try:
        out = w.sh_until(p, http_cmd(INET_SERVER, listener.port), lambda o: o.strip())
        assert out.strip() == w.ids["nat_ip"], f"the private guest left as {out.strip()}"
        assert {peer for _, peer in listener.entries()} == {w.ids["nat_ip"]}, listener.entries()
        d.times["private guest out through NAT"] = time.monotonic() - t0
        # positive control of the negative probes: the guest answers HTTP (inside the VPC)
        w.sh_until(a, http_cmd(p.ip), lambda o: p.id in o)
        subprocess.run(["ip", "netns", "exec", inet, "ip", "route", "add", *route],
                       check=True, capture_output=True, timeout=30)
        routed = True
        with ThreadPoolExecutor(2) as pool:
            for f in [pool.submit(assert_inet_blocked, w.lab, t)
                      for t in (p.ip, w.ids["nat_ip"])]:
                f.result()
        d.times["NAT checks"] = time.monotonic() - t0
    except AssertionError as e:
        raise AssertionError(f"{e}\n{d.tails()}") from e
    finally:
        if routed:
            subprocess.run(["ip", "netns", "exec", inet, "ip", "route", "del", *route],
                           capture_output=True, timeout=30)
        listener.stop()


# ---- backup and restore of the deployed controller (PostgreSQL) ---------------------------------

CTL_STATE = "/var/lib/kumo/controller"
BACKUP_IN_ROOT = "/var/backups/kumo/kumo.tar"
#: A port no other rule uses: the after-backup rule, looked for in the hosts' nftables.
MARK_PORT = 47211


def _kumo_admin(d: Deployment, *args: str) -> dict:
    """`kumo admin ...` as docs/deploy.md "Backup and restore" runs it on the controller host:
    the deployed venv's kumo, as the kumo user, with /etc/kumo/controller.env's settings."""
    env = ds.parse_env_file(d.ctl.path("/etc/kumo/controller.env").read_text())
    r = subprocess.run(d.ctl.argv(["/opt/kumo/venv/bin/kumo", "-o", "json", "admin", *args],
                                  env, "kumo:kumo"),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"kumo admin {' '.join(args)}: {r.returncode}\n{r.stdout}\n{r.stderr}"
    return json.loads(r.stdout)


def _domain(d: Deployment, host_id: str, name: str) -> tuple[int, str] | None:
    """(id, UUID) of the libvirt domain `name` on the deployed host, or None."""
    import libvirt
    sock = d.agents[host_id].path("/run/libvirt/libvirt-sock")
    conn = libvirt.open(f"qemu:///system?socket={sock}")
    try:
        dom = conn.lookupByName(name)
        return dom.ID(), dom.UUIDString()
    except libvirt.libvirtError:
        return None
    finally:
        conn.close()


def _ruleset_has_mark(d: Deployment, host_id: str) -> bool:
    r = subprocess.run(["ip", "netns", "exec", nm.host_netns(d.prefix, host_id), "nft", "list",
                        "ruleset"], capture_output=True, text=True, timeout=30, check=True)
    return str(MARK_PORT) in r.stdout


def _view(user: CloudUser) -> dict:
    """What the API shows of the account: its instances (not terminated) and groups."""
    fields = ("instance_id", "state", "host_id", "private_ip", "vpc_id", "subnet_id",
              "instance_type", "image_id", "tags", "security_group_ids", "public_ip",
              "launch_time")
    insts = user.call("GET", "/v1/instances", params={"max_results": 1000})["items"]
    groups = user.call("GET", "/v1/security-groups", params={"max_results": 1000})["items"]
    return {"instances": sorted(({f: i.get(f) for f in fields} for i in insts
                                 if i["state"] != "terminated"), key=lambda i: i["instance_id"]),
            "groups": sorted(groups, key=lambda g: g["group_id"])}


def test_backup_and_restore_on_postgresql_with_the_deployed_agents(deployed, vpc):
    """`kumo admin backup` on the deployed controller (pg_dump of its PostgreSQL) while the
    three guests run; then instance C is launched and a rule added to their group. The
    controller is killed, its database dropped and created again as the role creates it and its
    state directory emptied (a fresh controller), `kumo admin restore`, and the controller is
    started again as its unit says. The agents, with the certificates they had, heartbeat to it
    over mutual TLS; C is an orphan and leaves its host; the rule leaves the hosts' nftables;
    the guests from before the backup run on in the same libvirt domains; the API shows what it
    showed at backup time."""
    d, w = deployed, vpc
    user = w.users[0]
    t0 = time.monotonic()
    try:
        domains = {vm.id: _domain(d, vm.host, vm.id) for vm in w.vms.values()}
        assert all(domains.values()), domains
        certs = {h: r.path("/var/lib/kumo/agent/tls/host.pem").read_bytes()
                 for h, r in d.agents.items()}
        ca = d.ctl.path(f"{CTL_STATE}/cloud-ca.crt").read_bytes()
        _in_root(d.ctl, "install", "-d", "-o", "kumo", "-m", "0700", "/var/backups/kumo")
        before = _view(user)
        made = _kumo_admin(d, "backup", BACKUP_IN_ROOT)
        assert made["database"] == "postgresql" and made["members"] >= 4, made
        assert (d.ctl.path(BACKUP_IN_ROOT).stat().st_mode & 0o777) == 0o600
        d.times["backup"] = time.monotonic() - t0

        # After the backup: C, and a rule in the guests' group (positive controls on the hosts).
        (c,) = user.run(1, key_name="deploy-vpc", tags={"Name": "after-backup"},
                        security_group_ids=[w.ids["sg"]])
        user.call("POST", f"/v1/security-groups/{w.ids['sg']}/ingress", json={"rules": [
            {"protocol": "tcp", "from_port": MARK_PORT, "to_port": MARK_PORT,
             "cidr_ipv4": "198.51.100.0/24"}]})
        c = user.wait(c["instance_id"], "running", timeout=120)
        assert _domain(d, c["host_id"], c["instance_id"]), c
        _wait(lambda: all(_ruleset_has_mark(d, h) for h in HOSTS),
              "the after-backup rule in the hosts' nftables", 60)

        # The controller is lost: a fresh one (empty database as the role makes it, empty state
        # directory but for the image store) gets the backup.
        d.ctl_proc.kill()  # its PID is the controller's own (every wrapper execs)
        d.ctl_proc.wait(timeout=10)
        assert d.ctl_proc.pid not in ds.pids_in_root(d.ctl)
        psql = ["runuser", "-u", "postgres", "--", "psql", "-qtAX", "-v", "ON_ERROR_STOP=1"]
        _in_root(d.ctl, *psql, "-c", "DROP DATABASE kumo WITH (FORCE)")
        _in_root(d.ctl, "runuser", "-u", "postgres", "--", "createdb", "-O", "kumo", "kumo")
        aside = d.work / "lost-controller"
        aside.mkdir()
        for entry in list(d.ctl.path(CTL_STATE).iterdir()):
            if entry.name != "images":
                shutil.move(str(entry), aside / entry.name)
        report = _kumo_admin(d, "restore", BACKUP_IN_ROOT)
        assert report["database"] == "postgresql", report
        assert {"admin.key", "cloud-ca.crt", "cloud-ca.key"} <= set(report["files"]), report
        assert report["images_missing"] == [], report
        d.times["kill, fresh database, restore"] = time.monotonic() - t0
        started = time.monotonic()
        ctl = d.start_controller()
        assert d.ctl.path(f"{CTL_STATE}/cloud-ca.crt").read_bytes() == ca

        # The agents heartbeat to it over mTLS with the certificates they had (nobody re-joined).
        def healthy() -> bool:
            try:
                with d.api(d.admin_key()) as admin:
                    seen = {h["host_id"]: h for h in admin.get("/v1/hosts").json()["items"]}
            except Exception:  # not listening yet
                return False
            since = time.monotonic() - started
            return all(h in seen and seen[h]["health"] == "ok" and seen[h]["state"] == "up"
                       and seen[h]["heartbeat_age_s"] is not None
                       and seen[h]["heartbeat_age_s"] < since for h in HOSTS)
        _wait(healthy, "every host heartbeating to the restored controller", 90,
              alive=lambda: ctl.poll() is None)
        d.times["hosts healthy after restore"] = time.monotonic() - started
        assert {h: r.path("/var/lib/kumo/agent/tls/host.pem").read_bytes()
                for h, r in d.agents.items()} == certs
        # C is an orphan to the restored controller: its agent removes it; the rule goes too.
        _wait(lambda: _domain(d, c["host_id"], c["instance_id"]) is None,
              f"orphan {c['instance_id']}'s domain removed from {c['host_id']}", 60)
        _wait(lambda: not any(_ruleset_has_mark(d, h) for h in HOSTS),
              "the after-backup rule gone from the hosts' nftables", 90)
        d.times["orphan and rule gone"] = time.monotonic() - started
        user.call("GET", f"/v1/instances/{c['instance_id']}", expect=404)
        # The guests from before the backup: running, the same libvirt domains, still connected.
        for vm in w.vms.values():
            user.wait(vm.id, "running", "ok", timeout=60)
            assert _domain(d, vm.host, vm.id) == domains[vm.id], vm.name
        assert _view(user) == before
        a, b = (w.vms[h] for h in HOSTS)
        out = w.sh_until(a, http_cmd(b.ip), lambda o: b.id in o)
        assert out.strip() == b.id, out
    except AssertionError as e:
        raise AssertionError(f"{e}\n{d.tails()}") from e
