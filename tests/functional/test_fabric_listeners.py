"""The listeners the lab's fabric transport relies on (issue 14), as processes: an agent serving
its API on TCP and on a host-local unix socket at once (both stop on one SIGTERM, status 0),
and a controller serving its API on an inherited listening socket (KUMO_LISTEN_FD) instead of
binding KUMO_LISTEN. Loopback only."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from agent.contract import transport
from lab.testing import free_port

ROOT = Path(__file__).resolve().parents[2]


def _wait(pred, proc: subprocess.Popen, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert proc.poll() is None, f"{what}: exited\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, f"{what}: not ready"
        time.sleep(0.05)


def _answers(url: str, token: str | None = None) -> bool:
    try:
        with transport.client(url, token, timeout=2) as c:
            return c.get("/healthz").status_code < 500
    except httpx.HTTPError:
        return False


def test_agent_serves_tcp_and_a_local_socket_and_stops_both_on_sigterm(tmp_path):
    port, sock = free_port(), tmp_path / "local.sock"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KUMO_AGENT_HOST_ID": "two-listeners",
           "KUMO_AGENT_STATE_DIR": str(tmp_path / "state"),
           "KUMO_AGENT_LISTEN": f"127.0.0.1:{port}", "KUMO_AGENT_LOCAL_SOCKET": str(sock),
           "KUMO_AGENT_TOKEN": "tok", "KUMO_AGENT_AUTH": "token", "KUMO_AGENT_DRIVER": "fake",
           "KUMO_AGENT_METRICS_INTERVAL": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "agent"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        tcp, local = f"http://127.0.0.1:{port}", f"unix:{sock}"
        _wait(lambda: _answers(tcp) and _answers(local), proc, "agent")
        for url in (tcp, local):  # the same API, the same authentication
            with transport.client(url, "tok") as c:
                assert c.get("/v1/host").json()["agent_url"] == tcp
            with transport.client(url, "wrong") as c:
                assert c.get("/v1/host").status_code == 401
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert not sock.exists()
        assert not _answers(tcp)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_controller_serves_its_api_on_an_inherited_socket(tmp_path):
    api = socket.socket()
    api.bind(("127.0.0.1", 0))
    api.listen(16)
    port = api.getsockname()[1]
    # KUMO_LISTEN names another port: the controller must not bind it, only serve the socket.
    named = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KUMO_STATE_DIR": str(tmp_path / "ctl"),
           "KUMO_LISTEN": f"127.0.0.1:{named}", "KUMO_LISTEN_FD": str(api.fileno()),
           "KUMO_AGENT_AUTH": "token", "KUMO_AGENT_TOKEN": "tok"}
    proc = subprocess.Popen([sys.executable, "-m", "controller"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            pass_fds=(api.fileno(),))
    api.close()  # the controller holds its own copy
    try:
        _wait(lambda: _answers(f"http://127.0.0.1:{port}"), proc, "controller", timeout=60)
        assert not _answers(f"http://127.0.0.1:{named}")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
