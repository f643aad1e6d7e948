"""clear_stale_socket (agent/contract/serving.py): how the controller, the agent and the storage
node claim a unix socket path. A socket left by a dead process goes; a live one or a
non-socket stops the start and stays untouched."""
from __future__ import annotations

import socket

import pytest

import controller.__main__ as controller_main
from agent.contract.serving import clear_stale_socket
from controller.settings import Settings


def _bound(path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    return s


def test_a_dead_socket_is_removed_and_a_missing_one_is_fine(tmp_path):
    path = tmp_path / "a.sock"
    _bound(path).close()  # bound, never listening, closed: what a killed process leaves
    assert path.is_socket()
    clear_stale_socket(str(path))
    assert not path.exists()
    clear_stale_socket(str(path))


def test_a_live_socket_or_a_file_is_refused_and_kept(tmp_path):
    path = tmp_path / "a.sock"
    live = _bound(path)
    live.listen(1)
    try:
        with pytest.raises(SystemExit, match="another process is listening"):
            clear_stale_socket(str(path))
        assert path.is_socket()
    finally:
        live.close()
    plain = tmp_path / "plain"
    plain.write_text("data")
    with pytest.raises(SystemExit, match="not a socket"):
        clear_stale_socket(str(plain))
    assert plain.read_text() == "data"


def test_a_second_controller_leaves_the_first_ones_agent_socket_alone(tmp_path, monkeypatch):
    """The agent socket is claimed before the app is built: a second controller configured with
    a live socket's path stops there, and neither takes nor (on its way out) deletes it."""
    monkeypatch.setenv("KUMO_STATE_DIR", str(tmp_path))
    path = tmp_path / "agents.sock"
    monkeypatch.setenv("KUMO_AGENT_SOCKET", str(path))
    built = []
    monkeypatch.setattr(controller_main, "create_app", lambda s: built.append(s))
    live = _bound(path)
    live.listen(1)
    try:
        with pytest.raises(SystemExit, match="another process is listening"):
            controller_main.serve(Settings())
        assert built == [] and path.is_socket()
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(path))  # still the first one's
        client.close()
    finally:
        live.close()
