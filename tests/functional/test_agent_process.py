"""`python -m agent` as a process: serves the API on a unix socket, heartbeats, and exits
cleanly on SIGTERM."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.contract import transport

ROOT = Path(__file__).resolve().parents[2]


def test_python_m_agent_serves_on_a_unix_socket_and_stops_on_sigterm(tmp_path):
    sock = tmp_path / "agent.sock"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KUMO_AGENT_HOST_ID": "proc-host",
           "KUMO_AGENT_STATE_DIR": str(tmp_path / "state"), "KUMO_AGENT_LISTEN": f"unix:{sock}",
           "KUMO_AGENT_TOKEN": "tok", "KUMO_AGENT_AUTH": "token", "KUMO_AGENT_DRIVER": "fake",
           "KUMO_AGENT_CONTROLLER_URL": f"unix:{tmp_path / 'nobody.sock'}"}
    proc = subprocess.Popen([sys.executable, "-m", "agent"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "agent did not start"
            time.sleep(0.05)
        with transport.client(f"unix:{sock}", "tok") as c:
            host = c.get("/v1/host").json()
            assert host["host_id"] == "proc-host"
            assert host["agent_url"] == f"unix:{sock}"
            assert c.get("/v1/instances").json() == []
        with transport.client(f"unix:{sock}", "wrong") as c:
            assert c.get("/v1/host").status_code == 401
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out
        assert "heartbeat to" in out  # the controller is absent: logged, not fatal
        assert not sock.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
