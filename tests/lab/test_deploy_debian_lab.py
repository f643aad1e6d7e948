"""The deploy role scripts, for real, on a clean Debian 12 (issue 14, "Tests").

One mmdebstrap'd minbase bookworm root is shared (read-only, overlayfs) by two roots of their own:
deploy/roles/controller.sh runs in one, deploy/roles/agent.sh in the other, each inside its own
lab network namespace (the controller's at 100.64.0.2, the agent's host h1 at 100.64.0.11 on a
fabric of its own prefix) with only a registry proxy to download through: apt-get, the kumo user,
/opt/kumo/venv (pip install of this checkout), the PostgreSQL cluster, role and database, the
libvirt set-up, the systemd units installed and enabled. PID 1 is not systemd here, so the roles
start PostgreSQL themselves (pg_ctlcluster) and say the services must be started; the test then
starts each one exactly as its installed unit file says (tests/lab/deploy_support.py).

The agent joins with a one-time join token over mutual TLS, and a kumo-tiny instance launched on
it is reached on its public IP from the lab's internet namespace on the port its security group
opens, and not on another one.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.contract.transport import client
from lab import network as net
from lab import naming as nm
from lab.testing import skip_reason
from tests.lab import deploy_support as ds
from tests.lab.registry_proxy import RegistryProxy
from tests.lab.net_support import CONVERGE
from tests.lab.test_vpc_lab import assert_inet_blocked, inet_probe

pytestmark = [pytest.mark.lab, pytest.mark.slow]

CTL_ADDR = str(nm.CTL_ADDR.ip)  # the controller's namespace on the fabric (lab/network.py ensure_ctl)
HOST = "h1"
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
    """The two roots, their network, the proxy, the API forwarder, timings and logs."""

    def __init__(self, work: Path, prefix: str):
        self.work, self.prefix = work, prefix
        self.base = work / "base"
        self.ctl_ns = nm.ctl_netns(prefix)
        self.host_ns = nm.host_netns(prefix, HOST)
        self.ctl = ds.Root(self.base, work / "controller", self.ctl_ns, hostname="kumo-ctl")
        self.agent = ds.Root(self.base, work / "agent", self.host_ns, hostname=HOST)
        self.proxy = RegistryProxy()
        self.api_sock = work / "api.sock"
        self.forwarder: subprocess.Popen | None = None
        self.times: dict[str, float] = {}
        self.join: dict = {}
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    # -- network: a fabric of our own prefix, the internet, the controller and one host --------
    def network_up(self) -> None:
        net.ensure_fabric(self.prefix)
        net.ensure_inet(self.prefix)
        net.ensure_ctl(self.prefix)  # the controller's namespace, as the shared lab's
        net.ensure_host(self.prefix, HOST)

    def network_down(self) -> None:
        net.remove_host(self.prefix, HOST)
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
        root.run(["bash", f"{ds.SRC_IN_ROOT}/deploy/roles/{name}.sh", *args],
                 self.logs / f"role-{name}.log", timeout=900, env=ds.download_env(root))
        self.times[f"role {name}" + (" (again)" if f"role {name}" in self.times else "")] = \
            time.monotonic() - t0


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
    d.agent.mount()
    d.proxy.listen_in(d.ctl_ns)
    d.proxy.listen_in(d.host_ns)
    # Both roles at once, each in its root and namespace. The agent has no join token yet (the
    # controller is not up): the role installs everything and warns it cannot start.
    _parallel(lambda: d.role(d.ctl, "controller"),
              lambda: d.role(d.agent, "agent", "--host-id", HOST, "--no-start"))
    # The controller, as kumo-controller.service says, on the PostgreSQL the role set up.
    ctl = ds.start_unit(d.ctl, "kumo-controller.service", d.logs / "kumo-controller.log")
    _wait(lambda: d.ctl.path("/var/lib/kumo/controller/admin.key").exists(),
          "the controller's admin key", 120, alive=lambda: ctl.poll() is None)
    d.start_forwarder()
    key = d.admin_key()
    with d.api(key) as api:
        d.join = _call(api, "POST", "/v1/hosts/join-tokens", 201,
                       json={"host_id": HOST, "ttl_s": 600})
    token_file = d.agent.path("/root/kumo-join-token")
    token_file.write_text(d.join["token"] + "\n")
    token_file.chmod(0o600)
    # The role again, now with the join token (idempotent: nothing is reinstalled).
    d.role(d.agent, "agent", "--host-id", HOST, "--controller-url", AGENT_FACING,
           "--join-token-file", "/root/kumo-join-token", "--join-url", API,
           "--ca-sha256", d.join["ca_sha256"])
    # Nothing downloads from here on: the services run with no way out of the lab at all.
    d.proxy.close()
    for unit in ("virtlogd.service", "libvirtd.service"):
        ds.start_unit(d.agent, unit, d.logs / f"{unit}.log")
    _wait(lambda: d.agent.path("/run/libvirt/libvirt-sock").exists(), "libvirtd's socket", 60)
    agent = ds.start_unit(d.agent, "kumo-agent.service", d.logs / "kumo-agent.log")
    with d.api(key) as api:
        _wait(lambda: any(h["host_id"] == HOST and h["state"] == "up"
                          for h in _call(api, "GET", "/v1/hosts")["items"]),
              f"host {HOST} up at the controller", 120, alive=lambda: agent.poll() is None)
    d.times["deploy total"] = time.monotonic() - t_all


def _teardown(d: Deployment) -> list[str]:
    problems = []
    for root in (d.agent, d.ctl):
        left = ds.stop_root(root)
        if left:
            problems.append(f"processes still running in {root.merged}: {left}")
    if d.forwarder is not None:
        ds.end_pids([d.forwarder.pid])
        d.forwarder.wait(timeout=10)
    d.proxy.close()
    for root in (d.agent, d.ctl):
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


def test_agent_joined_over_mutual_tls(deployed):
    d = deployed
    assert d.agent.path("/var/lib/kumo/agent/tls/host.pem").stat().st_size > 0
    env = ds.parse_env_file(d.agent.path("/etc/kumo/agent.env").read_text())
    assert env["KUMO_AGENT_AUTH"] == "mtls" and env["KUMO_AGENT_CONTROLLER_URL"] == AGENT_FACING
    with d.api(d.admin_key()) as api:
        (h,) = [h for h in _call(api, "GET", "/v1/hosts")["items"] if h["host_id"] == HOST]
        assert h["state"] == "up" and h["health"] == "ok", h
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


def test_instance_on_the_deployed_agent_reached_only_where_its_group_allows(deployed):
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
    with d.api(acct["api_key"]) as user:
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
            assert got["host_id"] == HOST and got["public_ip"], got
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
