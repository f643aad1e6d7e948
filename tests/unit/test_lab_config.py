"""Per-host libvirtd configuration and commands, services' environments (pure)."""

import socket
import stat
from pathlib import Path

import pytest

from lab import libvirtd as lv
from lab import services as sv
from lab.errors import LabError


def test_host_paths_and_uri():
    p = lv.HostPaths(Path("/s/hosts/h1"))
    assert p.uri == "qemu:///system?socket=/s/hosts/h1/run/libvirt-sock"
    assert p.pid_file == Path("/s/hosts/h1/run/libvirtd.pid")


def test_conf_rendering_and_refusal_of_breakout_values():
    text = lv.render_conf({"a": "x", "b": 0, "c": [], "d": ["p", "q"], "e": True})
    assert 'a = "x"\nb = 0\nc = []\nd = ["p", "q"]\ne = 1\n' in text
    for bad in ['x"\nuser = "evil', "a\\b", "line\nbreak"]:
        with pytest.raises(LabError):
            lv.render_conf({"unix_sock_dir": bad})


def test_libvirtd_conf_points_at_the_host_state():
    conf = lv.libvirtd_conf(lv.HostPaths(Path("/s/hosts/h2")))
    assert conf["unix_sock_dir"] == "/s/hosts/h2/run"
    assert conf["auth_unix_rw"] == "none" and conf["unix_sock_rw_perms"] == "0700"


def test_qemu_conf_choices():
    assert lv.QEMU_CONF["stdio_handler"] == "file"
    assert lv.QEMU_CONF["dynamic_ownership"] == 0 and lv.QEMU_CONF["security_driver"] == "none"


def test_command_execs_libvirtd_in_the_foreground_after_the_binds():
    p = lv.HostPaths(Path("/s/hosts/h1"))
    argv = lv.command(p)
    assert argv[:4] == ["unshare", "-m", "--propagation", "private"]
    assert argv[6] == lv.MOUNT_AND_EXEC  # a constant script: paths only ever travel as arguments
    sep = argv.index("--")
    pairs = argv[8:sep]
    assert dict(zip(pairs[1::2], pairs[0::2]))["/etc/libvirt"] == "/s/hosts/h1/libvirt/etc"
    assert set(pairs[1::2]) == {"/etc/libvirt", "/run/libvirt", "/var/lib/libvirt", "/var/cache/libvirt",
                                "/var/log/libvirt"}  # fmt: skip
    assert argv[sep + 1 :] == ["/usr/sbin/libvirtd", "--config", "/s/hosts/h1/libvirt/etc/libvirtd.conf",
                               "--pid-file", "/s/hosts/h1/run/libvirtd.pid"]  # fmt: skip
    assert "-d" not in argv


def test_too_long_socket_path_is_refused(tmp_path):
    with pytest.raises(LabError) as e:
        lv.prepare(lv.HostPaths(tmp_path / ("x" * 100) / "h1"))
    assert e.value.code == "LabPathTooLong"


def test_agent_and_controller_environment():
    env = sv.agent_env(Path("/s"), "h2", "tok", "qemu:///system?socket=/s/hosts/h2/run/libvirt-sock",
                       "kt")
    assert env == {
        "KUMO_AGENT_HOST_ID": "h2",
        "KUMO_AGENT_STATE_DIR": "/s/hosts/h2/agent",
        # The API on the host's fabric address, the controller across the fabric (TLS), and a
        # host-local socket for local administration.
        "KUMO_AGENT_LISTEN": "100.64.0.12:8788",
        "KUMO_AGENT_ADVERTISE_URL": "https://100.64.0.12:8788",
        "KUMO_AGENT_LOCAL_SOCKET": "/s/hosts/h2/agent.sock",
        "KUMO_AGENT_CONTROLLER_URL": "https://100.64.0.2:8789",
        "KUMO_AGENT_AUTH": "mtls",  # no shared secret: the host's certificate (join_agent)
        "KUMO_AGENT_LIBVIRT_URI": "qemu:///system?socket=/s/hosts/h2/run/libvirt-sock",
        "KUMO_AGENT_NETNS": "kt-h2",
        "KUMO_AGENT_UNDERLAY_DEV": "uplink0",
    }
    token_env = sv.agent_env(Path("/s"), "h2", "tok", "qemu:///x", "kt", auth="token")
    assert (token_env["KUMO_AGENT_AUTH"], token_env["KUMO_AGENT_TOKEN"]) == ("token", "tok")
    # The token mode: the same fabric transport, plain HTTP.
    assert (token_env["KUMO_AGENT_CONTROLLER_URL"], token_env["KUMO_AGENT_ADVERTISE_URL"]) == (
        "http://100.64.0.2:8789", "http://100.64.0.12:8788")
    assert sv.controller_env(Path("/s"), "127.0.0.1:8787", "tok", listen_fd=7) == {
        "KUMO_STATE_DIR": "/s/controller",
        "KUMO_LISTEN": "127.0.0.1:8787",
        "KUMO_LISTEN_FD": "7",  # the API socket the lab bound in the root namespace
        "KUMO_AGENT_LISTEN": "100.64.0.2:8789",
        "KUMO_AGENT_FACING_URL": "https://100.64.0.2:8789",
        "KUMO_AGENT_TOKEN": "tok",  # the storage node's credential
        "KUMO_AGENT_AUTH": "mtls",
        "KUMO_PUBLIC_POOL": "203.0.113.0/24",
    }
    assert "KUMO_LISTEN_FD" not in sv.controller_env(Path("/s"), "127.0.0.1:8787", "tok")
    assert sv.controller_env(Path("/s"), "127.0.0.1:8787", "tok", auth="token")[
        "KUMO_AGENT_FACING_URL"] == "http://100.64.0.2:8789"
    assert sv.agent_argv("/py") == ["/py", "-m", "agent"]


def test_token_is_generated_once_and_private(tmp_path):
    t1 = sv.ensure_token(tmp_path)
    t2 = sv.ensure_token(tmp_path)
    assert t1 == t2 and len(t1) >= 32
    assert stat.S_IMODE((tmp_path / "agent.token").stat().st_mode) == 0o600


def test_storage_node_environment(monkeypatch):
    plain = {
        "KUMO_STORAGE_NODE_ID": "sn1",
        "KUMO_STORAGE_STATE_DIR": "/s/storage",
        "KUMO_STORAGE_LISTEN": "unix:/s/storage/storage.sock",
        "KUMO_STORAGE_TOKEN": "tok",
        "KUMO_STORAGE_NBD_HOST": "100.64.0.250",
        "KUMO_STORAGE_NBD_PORT": "10809",
    }
    # Per-host NBD over TLS and the API over mutual TLS, the controller told so: the default.
    # Its API on its fabric address (what the controller dials) and a node-local socket.
    monkeypatch.delenv("KUMO_LAB_STORAGE_TLS", raising=False)
    assert sv.storage_env(Path("/s"), "tok") == {
        **plain, "KUMO_STORAGE_LISTEN": "100.64.0.250:8789",
        "KUMO_STORAGE_LOCAL_SOCKET": "/s/storage/storage.sock",
        "KUMO_STORAGE_NBD_TLS_DIR": "/s/storage/tls", "KUMO_STORAGE_API_TLS_DIR": "/s/storage/tls"}
    env = sv.controller_env(Path("/s"), "127.0.0.1:8787", "tok", sv.storage_url(Path("/s")))
    assert env["KUMO_STORAGE_URL"] == "https://100.64.0.250:8789"
    assert env["KUMO_STORAGE_MTLS"] == "true"
    monkeypatch.setenv("KUMO_LAB_STORAGE_TLS", "0")  # the explicit opt-out: plain
    assert sv.storage_env(Path("/s"), "tok") == plain
    env = sv.controller_env(Path("/s"), "127.0.0.1:8787", "tok", sv.storage_url(Path("/s")))
    assert "KUMO_STORAGE_MTLS" not in env
    assert env["KUMO_STORAGE_URL"] == "unix:/s/storage/storage.sock"
    assert sv.storage_argv("/py") == ["/py", "-m", "agent.storage_node"]
    assert sv.storage_available()


def test_bind_listen_gives_a_listening_socket_and_refuses_a_taken_address():
    from lab.testing import free_port

    s = sv.bind_listen(f"127.0.0.1:{free_port()}")
    try:
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        taken = "127.0.0.1:%d" % s.getsockname()[1]
        with pytest.raises(LabError) as e:
            sv.bind_listen(taken)
        assert e.value.code == "LabListenFailed"
    finally:
        s.close()
