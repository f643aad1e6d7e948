"""`python -m controller` as a real process with every kind of listener at once (the API on an
inherited socket, KUMO_LISTEN_FD; the agents' unix socket; the agents' mTLS TCP listener),
served by agent/contract/serving.py's serve_all: one SIGTERM (or SIGINT) stops them all and the
process exits 0, leaving no socket file. Loopback and a temporary directory only; bounded."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from agent.contract import transport
from lab.testing import end_process, free_port, until

ROOT = Path(__file__).resolve().parents[2]


def _answers(url: str) -> bool:
    try:
        with transport.client(url, timeout=2) as c:
            return c.get("/healthz").status_code < 500
    except httpx.HTTPError:
        return False


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_controller_stops_every_listener_on_one_signal(tmp_path, sig):
    api = socket.socket()
    api.bind(("127.0.0.1", 0))
    api.listen(16)
    api_port, agent_port = api.getsockname()[1], free_port()
    agent_sock = tmp_path / "agent.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUMO_")}
    env.update({"PYTHONPATH": str(ROOT), "KUMO_STATE_DIR": str(tmp_path / "ctl"),
                "KUMO_LISTEN": f"127.0.0.1:{free_port()}", "KUMO_LISTEN_FD": str(api.fileno()),
                "KUMO_AGENT_SOCKET": str(agent_sock),
                "KUMO_AGENT_LISTEN": f"127.0.0.1:{agent_port}", "KUMO_AGENT_AUTH": "mtls"})
    proc = subprocess.Popen([sys.executable, "-m", "controller"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            pass_fds=(api.fileno(),))
    api.close()  # the controller holds its own copy
    try:
        until(lambda: proc.poll() is not None or (
            _answers(f"http://127.0.0.1:{api_port}") and agent_sock.exists()
            and _accepts(agent_port)), 60, "the controller's three listeners", every=0.1)
        assert proc.poll() is None, proc.stdout.read()
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert not agent_sock.exists()
        assert not _accepts(agent_port)
        assert not _answers(f"http://127.0.0.1:{api_port}")
    finally:
        if proc.poll() is None:
            end_process(proc)
