"""agent.network.dhcp_render (the pure half of DHCP): the dnsmasq config and hosts-file
renderers, validation of everything that reaches them (nothing unvalidated, no newline can be
smuggled in), lease parsing; and the state-dir check of agent.network.dhcp's DhcpServers (no
process is started here)."""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from agent.network import dhcp
from agent.network.dhcp import DhcpServers
from agent.network.dhcp_render import (
    DhcpError, DhcpPaths, DhcpPort, DhcpSubnet, parse_leases, render_config, render_hosts,
    valid_mac,
)
from agent.network.model import PortNet, SubnetNet

PATHS = DhcpPaths.for_vni("/var/lib/kumo/agent/dhcp", 0xABC)
S0 = DhcpSubnet("10.9.0.0/24", "10.9.0.1")
S1 = DhcpSubnet(IPv4Network("10.9.1.0/24"), IPv4Address("10.9.1.1"))
#: Every non-comment line of a rendered config: a bare key or key=value from a narrow alphabet.
SAFE_LINE = re.compile(r"[a-z-]+(=[A-Za-z0-9_./:,+@!-]+)?")


def conf(**kw) -> str:
    return render_config(0xABC, "kr-000abc", [S1, S0], PATHS, **kw)


def test_config_serves_dhcp_only_on_the_router_interface() -> None:
    text = conf()
    lines = text.splitlines()
    assert lines[0].startswith("# Kumo DHCP server of VNI 2748 (000abc)")
    for needed in ("port=0", "no-resolv", "no-hosts", "interface=kr-000abc", "bind-interfaces",
                   "dhcp-ignore=tag:!known", "dhcp-broadcast",
                   "dhcp-hostsfile=/var/lib/kumo/agent/dhcp/000abc.hosts",
                   "dhcp-leasefile=/var/lib/kumo/agent/dhcp/000abc.leases",
                   "pid-file=/var/lib/kumo/agent/dhcp/000abc.pid",
                   "log-facility=/var/lib/kumo/agent/dhcp/000abc.log",
                   "user=dnsmasq", "group=nogroup"):
        assert needed in lines, needed
    # One static range and one explicit router option per subnet, sorted by CIDR, tag-linked.
    assert [ln for ln in lines if ln.startswith("dhcp-")][-4:] == [
        "dhcp-range=set:s0,10.9.0.0,static,255.255.255.0,3600",
        "dhcp-option=tag:s0,option:router,10.9.0.1",
        "dhcp-range=set:s1,10.9.1.0,static,255.255.255.0,3600",
        "dhcp-option=tag:s1,option:router,10.9.1.1",
    ]
    assert "dhcp-authoritative" not in text  # would NAK other hosts' guests
    assert "quiet-dhcp" in lines and "log-dhcp" not in lines
    verbose = conf(log_dhcp=True).splitlines()
    assert "log-dhcp" in verbose and "quiet-dhcp" not in verbose
    assert "dhcp-range=set:s0,10.9.0.0,static,255.255.255.0,86400" in conf(lease_seconds=86400)
    assert all(SAFE_LINE.fullmatch(ln) for ln in lines[1:]), lines
    assert text == conf()  # deterministic


def test_config_accepts_model_subnets() -> None:
    sn = SubnetNet(subnet_id="subnet-0123456789abcdef0", cidr="10.9.0.0/24", router_ip="10.9.0.1")
    assert render_config(0xABC, "kr-000abc", [sn], PATHS) == render_config(0xABC, "kr-000abc", [S0], PATHS)


def test_hosts_file_has_one_line_per_local_port_sorted() -> None:
    ports = [DhcpPort("02:00:00:00:00:0B", "10.9.1.20"), DhcpPort("02:00:00:00:00:0a", "10.9.0.10", "Web-1")]
    assert render_hosts([S0, S1], ports) == "02:00:00:00:00:0a,10.9.0.10,web-1\n02:00:00:00:00:0b,10.9.1.20\n"
    assert render_hosts([S0], []) == ""
    pn = PortNet(port_id="eni-0123456789abcdef0", tap="tap0", mac="02:00:00:00:00:0a", ip="10.9.0.10",
                 subnet_id="subnet-0123456789abcdef0")
    assert render_hosts([S0], [pn]) == "02:00:00:00:00:0a,10.9.0.10\n"


@pytest.mark.parametrize("mac", [
    "02:00:00:00:00:0g", "02:00:00:00:00", "02:00:00:00:00:00:00", "02-00-00-00-00-01",
    "02:00:00:00:00:01\n", "02:00:00:00:00:01\nport=53", " 02:00:00:00:00:01", "",
    "01:00:5e:00:00:01",  # multicast
    "00:00:00:00:00:00", None, 2,
])
def test_bad_macs_are_refused(mac) -> None:
    with pytest.raises(DhcpError) as e:
        DhcpPort(mac, "10.9.0.10")
    assert e.value.code == "InvalidParameterValue"
    with pytest.raises(DhcpError):
        valid_mac(mac)


@pytest.mark.parametrize("ip", ["10.9.0.300", "10.9.0.10\nport=53", "10.9.0.10,", "fe80::1", "", None, 10])
def test_bad_port_addresses_are_refused(ip) -> None:
    with pytest.raises(DhcpError) as e:
        DhcpPort("02:00:00:00:00:01", ip)
    assert e.value.code == "InvalidParameterValue"


@pytest.mark.parametrize("name", ["a b", "a,b", "a\nb", "-a", "a-", "a.b", "x" * 64, "", "é", "a#b"])
def test_bad_hostnames_are_refused(name) -> None:
    with pytest.raises(DhcpError):
        DhcpPort("02:00:00:00:00:01", "10.9.0.10", name)


@pytest.mark.parametrize("cidr,router", [
    ("10.9.0.0/24", "10.9.1.1"), ("10.9.0.0/24", "10.9.0.0"), ("10.9.0.0/24", "10.9.0.255"),
    ("10.9.0.1/24", "10.9.0.1"),  # host bits set
    ("10.9.0.0/31", "10.9.0.1"), ("10.9.0.0/24\n", "10.9.0.1"), ("10.9.0.0/24", "10.9.0.1\n"),
])
def test_bad_subnets_are_refused(cidr, router) -> None:
    with pytest.raises(DhcpError):
        DhcpSubnet(cidr, router)


@pytest.mark.parametrize("ports", [
    [DhcpPort("02:00:00:00:00:01", "10.9.2.5")],  # in no subnet
    [DhcpPort("02:00:00:00:00:01", "10.9.0.1")],  # the router
    [DhcpPort("02:00:00:00:00:01", "10.9.0.0")], [DhcpPort("02:00:00:00:00:01", "10.9.0.255")],
    [DhcpPort("02:00:00:00:00:01", "10.9.0.5"), DhcpPort("02:00:00:00:00:01", "10.9.0.6")],
    [DhcpPort("02:00:00:00:00:01", "10.9.0.5"), DhcpPort("02:00:00:00:00:02", "10.9.0.5")],
])
def test_inconsistent_ports_are_refused(ports) -> None:
    with pytest.raises(DhcpError):
        render_hosts([S0, S1], ports)


@pytest.mark.parametrize("kw", [
    {"vni": 0}, {"vni": 1 << 24}, {"vni": "12"}, {"vni": True},
    {"iface": "kr-000abc\nport=53"}, {"iface": "a" * 16}, {"iface": "kr 0"}, {"iface": ""},
    {"subnets": []}, {"subnets": [S0, DhcpSubnet("10.9.0.0/16", "10.9.0.1")]},
    {"lease_seconds": 60}, {"lease_seconds": 1 << 32}, {"lease_seconds": "3600"},
    {"user": "root\nport=53"}, {"group": "a b"},
])
def test_bad_config_inputs_are_refused(kw) -> None:
    args = {"vni": 0xABC, "iface": "kr-000abc", "subnets": [S0], **kw}
    extra = {k: v for k, v in kw.items() if k in ("lease_seconds", "user", "group")}
    with pytest.raises(DhcpError) as e:
        render_config(args["vni"], args["iface"], args["subnets"], PATHS, **extra)
    assert e.value.code == "InvalidParameterValue"


@pytest.mark.parametrize("bad", ["relative/dir", "/var/lib/my dir", "/var/lib/a\nport=53", "/a,b",
                                 "/a#b", "/a'b", "/var/../etc"])
def test_unsafe_paths_are_refused(bad) -> None:
    with pytest.raises(DhcpError):
        DhcpPaths.for_vni(bad, 1)
    evil = DhcpPaths(bad, PATHS.hosts, PATHS.leases, PATHS.pid, PATHS.log)
    with pytest.raises(DhcpError):
        render_config(1, "kr-000001", [S0], evil)


def test_parse_leases_keeps_ipv4_leases_only() -> None:
    text = ("1700000000 02:00:00:00:00:0a 10.9.0.10 web-1 01:02:00:00:00:00:0a\n"
            "duid 00:01:00:01\n"
            "1700000000 02:00:00:00:00:0b not-an-ip * *\n\n"
            "1700000000 02:00:00:00:00:0C 10.9.1.20 * *\n")
    assert parse_leases(text) == [("02:00:00:00:00:0a", IPv4Address("10.9.0.10")),
                                  ("02:00:00:00:00:0c", IPv4Address("10.9.1.20"))]


def _dnsmasq_missing() -> bool:
    return not os.access("/usr/sbin/dnsmasq", os.X_OK)


@pytest.mark.skipif(_dnsmasq_missing(), reason="dnsmasq-base not installed")
def test_state_dir_must_be_traversable_by_the_dnsmasq_user(tmp_path: Path) -> None:
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    os.chmod(closed, 0o700)
    with pytest.raises(DhcpError) as e:
        DhcpServers(closed / "dhcp", "host1", user="nobody")
    assert e.value.code == "DhcpStateDirNotReadable"
    open_dir = tempfile.mkdtemp(prefix="kdh-unit-")  # /tmp itself is world-traversable
    try:
        os.chmod(open_dir, 0o755)
        servers = DhcpServers(Path(open_dir) / "dhcp", "host1", user="nobody")
        assert servers.owned() == []
        assert servers.netns_for(0xABC) == "host1-kvr-000abc"
        assert servers.paths(0xABC).hosts == f"{open_dir}/dhcp/000abc.hosts"
        assert os.stat(f"{open_dir}/dhcp").st_mode & 0o777 == 0o755
    finally:
        shutil.rmtree(open_dir)


@pytest.mark.skipif(_dnsmasq_missing(), reason="dnsmasq-base not installed")
def test_root_user_skips_the_traversal_check(tmp_path: Path) -> None:
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    servers = DhcpServers(closed, lambda vni: f"ns-{vni}", user="root")
    assert servers.netns_for(7) == "ns-7"
    with pytest.raises(DhcpError):
        DhcpServers(closed, lambda vni: "bad/ns", user="root").netns_for(7)
    assert servers.stop(7) is False and servers.pid(7) is None


def test_missing_dnsmasq_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DhcpError) as e:
        DhcpServers(tmp_path, "h", dnsmasq="/nonexistent/dnsmasq")
    assert e.value.code == "DhcpUnavailable"


def test_dhcp_keeps_exporting_the_renderer() -> None:
    """Callers that import the renderer's names from agent.network.dhcp keep working."""
    assert dhcp.DhcpError is DhcpError and dhcp.render_config is render_config
    assert dhcp.DhcpPort is DhcpPort and dhcp.parse_leases is parse_leases
