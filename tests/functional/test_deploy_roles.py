"""The role commands (deploy/roles/*.sh) run in their file-laying mode (`--root DIR`) into scratch
directories: nothing on this machine is touched (no packages, users, venv, PostgreSQL, libvirt or
systemctl). Checked here:

- each role lays its env file (mode 0600), its unit and the wants link; a second run gives the
  identical tree and keeps the generated secrets; an operator's edit survives a re-run;
- the written env files load into the role's Settings class as they are;
- --print-config writes nothing and masks secrets;
- the controller, started from its laid-out controller.env (SQLite, 127.0.0.1), answers
  GET /healthz, and stops on SIGTERM by its pid.
"""
from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from agent.settings import AgentSettings
from agent.storage_node.settings import StorageSettings
from controller.settings import Settings

REPO = Path(__file__).resolve().parents[2]
ROLES = REPO / "deploy" / "roles"


def run_role(role: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["bash", str(ROLES / f"{role}.sh"), *args], capture_output=True,
                       text=True, timeout=60)
    if check:
        assert r.returncode == 0, f"{role}.sh {' '.join(args)}:\n{r.stdout}\n{r.stderr}"
    return r


def tree(root: Path) -> dict[str, tuple]:
    """Every path under root: (mode, content or link target)."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode):
            out[str(p.relative_to(root))] = ("link", os.readlink(p))
        elif stat.S_ISDIR(st.st_mode):
            out[str(p.relative_to(root))] = (oct(st.st_mode), None)
        else:
            out[str(p.relative_to(root))] = (oct(st.st_mode), p.read_bytes())
    return out


def env_of(path: Path) -> dict[str, str]:
    """An EnvironmentFile's assignments (the templates use no quoting or continuation)."""
    out = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            k, _, v = line.partition("=")
            out[k] = v
    return out


@pytest.fixture
def token_file(tmp_path):
    p = tmp_path / "agent.token"
    p.write_text("test-shared-token-0123456789\n")
    return p


def role_args(role: str, token_file: Path) -> list[str]:
    return {
        "controller": ["--public-pool", "198.51.100.0/24"],
        "agent": ["--controller-url", "http://10.0.0.10:8787", "--token-file", str(token_file),
                  "--underlay-dev", "eth1", "--underlay-ip", "10.0.0.11", "--host-id", "h1"],
        "storage-node": ["--token-file", str(token_file), "--nbd-host", "10.0.0.10"],
    }[role]


@pytest.mark.parametrize("role", ["controller", "agent", "storage-node"])
def test_role_into_scratch_root_twice_is_identical(role, tmp_path, token_file):
    root = tmp_path / "root"
    run_role(role, "--root", str(root), *role_args(role, token_file))
    first = tree(root)
    env = root / "etc" / "kumo" / f"{role}.env"
    unit = root / "etc" / "systemd" / "system" / f"kumo-{role}.service"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert unit.read_text() == (REPO / "deploy" / "systemd" / unit.name).read_text()
    assert os.readlink(unit.parent / "multi-user.target.wants" / unit.name) == \
        f"/etc/systemd/system/{unit.name}"
    r = run_role(role, "--root", str(root), *role_args(role, token_file))
    assert "written" not in r.stderr.replace("unchanged", ""), r.stderr
    assert tree(root) == first


def test_controller_secrets_generated_once_and_kept(tmp_path):
    root = tmp_path / "root"
    run_role("controller", "--root", str(root))
    env_path = root / "etc" / "kumo" / "controller.env"
    env = env_of(env_path)
    token, url = env["KUMO_AGENT_TOKEN"], env["KUMO_DATABASE_URL"]
    assert len(token) >= 40
    assert url.startswith("postgresql+psycopg://kumo:") and url.endswith(
        "@/kumo?host=/var/run/postgresql")
    assert "{secret}" not in env_path.read_text()
    # another root: other secrets
    other = tmp_path / "other"
    run_role("controller", "--root", str(other))
    assert env_of(other / "etc" / "kumo" / "controller.env")["KUMO_AGENT_TOKEN"] != token
    # an operator's edit (a default uncommented and changed) survives a re-run, secrets too
    text = env_path.read_text().replace("#KUMO_CPU_OVERCOMMIT=4.0", "KUMO_CPU_OVERCOMMIT=2.0")
    env_path.write_text(text)
    run_role("controller", "--root", str(root))
    again = env_of(env_path)
    assert again["KUMO_AGENT_TOKEN"] == token and again["KUMO_DATABASE_URL"] == url
    assert again["KUMO_CPU_OVERCOMMIT"] == "2.0"
    # an explicit option wins over the file
    run_role("controller", "--root", str(root), "--listen", "127.0.0.1:9999")
    assert env_of(env_path)["KUMO_LISTEN"] == "127.0.0.1:9999"


def test_print_config_writes_nothing_and_masks_secrets(tmp_path, token_file):
    root = tmp_path / "root"
    r = run_role("controller", "--root", str(root), "--print-config")
    assert not root.exists()
    assert "KUMO_AGENT_TOKEN=<secret: generated at install>" in r.stdout
    assert "kumo:<secret: generated at install>@/kumo" in r.stdout
    assert "[Service]" in r.stdout
    r = run_role("agent", "--root", str(root), "--print-config", *role_args("agent", token_file))
    assert "test-shared-token" not in r.stdout and not root.exists()


def test_bad_options_are_refused(tmp_path):
    r = run_role("controller", "--root", str(tmp_path / "r"), "--no-such-option", "x",
                 check=False)
    assert r.returncode != 0 and "unknown option" in r.stderr
    # A token never goes on a command line (ps, shell history): only in a file.
    r = run_role("agent", "--root", str(tmp_path / "r"), "--join-token", "abc", check=False)
    assert r.returncode != 0 and "unknown option" in r.stderr
    r = run_role("agent", "--root", str(tmp_path / "r"), "--join-token-file",
                 str(tmp_path / "missing"), check=False)
    assert r.returncode != 0 and not (tmp_path / "r" / "etc" / "kumo" / "agent.env").exists()
    r = run_role("controller", "--root", str(tmp_path / "r"), "--agent-auth", "none",
                 check=False)
    assert r.returncode != 0 and "mtls or token" in r.stderr


@pytest.mark.parametrize("role,cls", [("controller", Settings), ("agent", AgentSettings),
                                      ("storage-node", StorageSettings)])
def test_written_env_files_load_into_settings(role, cls, tmp_path, token_file, monkeypatch):
    root = tmp_path / "root"
    run_role(role, "--root", str(root), *role_args(role, token_file))
    env = env_of(root / "etc" / "kumo" / f"{role}.env")
    for k in [k for k in os.environ if k.startswith("KUMO_")]:
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = cls()
    if role == "agent":
        assert s.allow_root_netns and s.host_id == "h1" and s.underlay_dev == "eth1"
        assert s.token == "test-shared-token-0123456789"
        assert s.agent_url() == "http://10.0.0.11:8788"
    elif role == "storage-node":
        assert str(s.nbd_host) == "10.0.0.10" and s.listen == "0.0.0.0:8789"
    else:
        assert s.resolved_database_url().startswith("postgresql+psycopg://kumo:")
        assert s.public_pool == "198.51.100.0/24" and s.listen == "0.0.0.0:8787"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_controller_starts_from_laid_out_config(tmp_path):
    """What kumo-controller.service does, by hand: the env file as the environment, then
    `python -m controller` (this venv's python instead of /opt/kumo/venv's)."""
    root = tmp_path / "root"
    port = _free_port()
    state = tmp_path / "state"
    run_role("controller", "--root", str(root), "--sqlite", "--listen", f"127.0.0.1:{port}",
             "--set", f"KUMO_STATE_DIR={state}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUMO_")}
    env.update(env_of(root / "etc" / "kumo" / "controller.env"))
    assert env["KUMO_DATABASE_URL"] == ""
    log = (tmp_path / "controller.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "controller"], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        answer = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert answer is not None and answer.status_code == 200, \
            (tmp_path / "controller.log").read_text()[-3000:]
        assert answer.json() == {"ok": True}
        assert (state / "kumo.db").exists() and (state / "admin.key").exists()
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            rc = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        log.close()
    assert rc == 0


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"{url} never answered:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> int:
    os.kill(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def test_agent_joins_a_laid_out_controller_over_mutual_tls(tmp_path):
    """Both roles laid out with their defaults (mutual TLS), then started as their units start
    them: the agent exchanges the one-time join token from --join-token-file for its own
    certificate at its first start, heartbeats over mutual TLS to the controller's agent
    listener, and the host comes up.
    Everything listens on 127.0.0.1; the agent runs its fake drivers."""
    api, ctl_agents, agent_port = _free_port(), _free_port(), _free_port()
    ctl_root, ag_root = tmp_path / "ctl-root", tmp_path / "agent-root"
    ctl_state, ag_state = tmp_path / "ctl-state", tmp_path / "agent-state"
    run_role("controller", "--root", str(ctl_root), "--sqlite", "--listen", f"127.0.0.1:{api}",
             "--agent-listen", f"127.0.0.1:{ctl_agents}", "--agent-facing-url",
             f"https://127.0.0.1:{ctl_agents}", "--set", f"KUMO_STATE_DIR={ctl_state}")
    base = {k: v for k, v in os.environ.items() if not k.startswith("KUMO_")}
    ctl_env = {**base, **env_of(ctl_root / "etc" / "kumo" / "controller.env")}
    assert ctl_env["KUMO_AGENT_AUTH"] == "mtls"
    procs: list[subprocess.Popen] = []
    logs = []
    try:
        logs.append((tmp_path / "controller.log").open("wb"))
        procs.append(subprocess.Popen([sys.executable, "-m", "controller"], cwd=REPO,
                                      env=ctl_env, stdout=logs[-1], stderr=subprocess.STDOUT))
        _wait_http(f"http://127.0.0.1:{api}/healthz", procs[0], tmp_path / "controller.log")
        admin = httpx.Client(base_url=f"http://127.0.0.1:{api}", headers={
            "Authorization": f"Bearer {(ctl_state / 'admin.key').read_text().strip()}"})
        made = admin.post("/v1/hosts/join-tokens", json={"host_id": "h-deploy"})
        assert made.status_code == 201, made.text
        token_file = tmp_path / "join-token"
        token_file.write_text(made.json()["token"] + "\n")
        token_file.chmod(0o600)
        run_role("agent", "--root", str(ag_root), "--host-id", "h-deploy",
                 "--controller-url", f"https://127.0.0.1:{ctl_agents}",
                 "--join-token-file", str(token_file), "--join-url", f"http://127.0.0.1:{api}",
                 "--ca-sha256", made.json()["ca_sha256"], "--listen", f"127.0.0.1:{agent_port}",
                 "--advertise-url", f"https://127.0.0.1:{agent_port}",
                 "--set", f"KUMO_AGENT_STATE_DIR={ag_state}")
        ag_file = env_of(ag_root / "etc" / "kumo" / "agent.env")
        assert (ag_file["KUMO_AGENT_AUTH"], ag_file["KUMO_AGENT_JOIN_TOKEN"]) == \
            ("mtls", made.json()["token"])
        # The unit's environment, with the fake drivers: nothing touches this machine's network.
        ag_env = {**base, **ag_file, "KUMO_AGENT_DRIVER": "fake", "KUMO_AGENT_NETWORK": "fake",
                  "KUMO_AGENT_ALLOW_ROOT_NETNS": "false"}
        logs.append((tmp_path / "agent.log").open("wb"))
        procs.append(subprocess.Popen([sys.executable, "-m", "agent"], cwd=REPO, env=ag_env,
                                      stdout=logs[-1], stderr=subprocess.STDOUT))
        deadline, host = time.monotonic() + 30, {}
        while time.monotonic() < deadline and procs[1].poll() is None:
            host = admin.get("/v1/hosts/h-deploy").json()
            if host.get("state") == "up":
                break
            time.sleep(0.3)
        assert host.get("state") == "up", (host, (tmp_path / "agent.log").read_text()[-3000:])
        pem = ag_state / "tls" / "host.pem"
        assert stat.S_IMODE(pem.stat().st_mode) == 0o600
        # The token was for one join: a second agent start with it cannot join again.
        again = httpx.post(f"http://127.0.0.1:{api}/v1/agent/join",
                           json={"token": made.json()["token"], "csr": "x"})
        assert again.status_code in (400, 401), again.text
    finally:
        for proc in reversed(procs):
            assert _stop(proc) == 0
        for f in logs:
            f.close()
