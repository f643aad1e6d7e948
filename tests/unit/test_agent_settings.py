"""Agent settings from the environment, and the host facts a heartbeat reports."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from agent.heartbeat import disk_bytes, host_memory_mib
from agent.settings import AgentSettings


def test_settings_from_environment(monkeypatch, tmp_path):
    for k, v in {"HOST_ID": "host-7", "STATE_DIR": str(tmp_path), "LISTEN": "unix:/run/a.sock",
                 "CONTROLLER_URL": "unix:/run/c.sock", "TOKEN": "tok", "DRIVER": "fake",
                 "HYPERVISOR": "qemu", "HEARTBEAT_INTERVAL": "0.5", "SHUTDOWN_TIMEOUT": "3",
                 "LIBVIRT_URI": "qemu:///system?socket=/x/libvirt-sock"}.items():
        monkeypatch.setenv(f"KUMO_AGENT_{k}", v)
    s = AgentSettings()
    assert (s.host_id, s.state_dir, s.driver, s.hypervisor) == ("host-7", tmp_path, "fake", "qemu")
    assert s.listen_socket() == "/run/a.sock"
    assert s.agent_url() == "unix:/run/a.sock"
    assert (s.heartbeat_interval, s.shutdown_timeout) == (0.5, 3.0)
    assert "tok" not in repr(s)  # the token never lands in logs


def test_tcp_listen_and_advertised_url():
    s = AgentSettings(listen="0.0.0.0:9000", host_id="h")
    assert s.listen_host_port() == ("0.0.0.0", 9000)
    assert s.agent_url() == "http://0.0.0.0:9000"
    assert AgentSettings(listen="0.0.0.0:9000", host_id="h",
                         advertise_url="http://10.1.0.2:9000").agent_url() == "http://10.1.0.2:9000"


@pytest.mark.parametrize("field,value", [("listen", "unix:relative.sock"), ("listen", "nohost"),
                                         ("listen", "h:99999"), ("host_id", "Bad_Host"),
                                         ("driver", "xen"), ("hypervisor", "hvf"),
                                         ("heartbeat_interval", 0)])
def test_bad_settings_are_refused(field, value):
    with pytest.raises(ValidationError):
        AgentSettings(**{"host_id": "h", field: value})


def test_host_facts(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24684544 kB\nMemFree:  1 kB\n")
    assert host_memory_mib(meminfo) == 24684544 // 1024
    assert host_memory_mib(tmp_path / "missing") == 0
    assert disk_bytes(tmp_path) > 0


def test_local_socket_is_an_absolute_path_or_none(tmp_path):
    assert AgentSettings(host_id="h").local_socket is None
    s = AgentSettings(host_id="h", listen="100.64.0.11:8788", local_socket=tmp_path / "a.sock")
    assert s.local_socket == tmp_path / "a.sock"
    assert s.agent_url() == "http://100.64.0.11:8788"  # the TCP listener is what is advertised
    with pytest.raises(ValidationError):
        AgentSettings(host_id="h", local_socket="relative.sock")
