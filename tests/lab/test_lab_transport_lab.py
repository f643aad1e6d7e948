"""The lab's controller <-> agent traffic is the production transport (issue 14): TLS over TCP
across the lab fabric, client certificates both ways. The controller runs in its own namespace on
the fabric; users reach its API on the root namespace's loopback through a socket the lab bound
there, and nothing links the root namespace to the lab.

Every probe of the fabric runs from inside a lab namespace (lab.network.call_in): never from the
root namespace, which has no route there.
"""
from __future__ import annotations

import os
import socket
import ssl
import subprocess
import time

import httpx
import pytest

from agent.contract import tls
from lab import naming as nm, network, services
from lab.testing import ip_json
from tests.lab.net_support import admin_api, call, lab_state

pytestmark = pytest.mark.skipif(services.agent_auth() != "mtls",
                                reason="the lab runs with KUMO_LAB_AGENT_AUTH=token")

HOSTS = ("h1", "h2")


def _exchange(netns: str, addr: str, ctx: ssl.SSLContext | None,
              path: str = "/healthz") -> bytes | str:
    """GET `path` sent to addr (HOST:PORT) from inside `netns`, over TLS with `ctx` (None: plain
    TCP); what came back until the server closed, or the name of the error that ended it."""
    host, port = services.split_listen(addr)
    request = f"GET {path} HTTP/1.1\r\nHost: kumo\r\nConnection: close\r\n\r\n".encode()

    def go() -> bytes | str:
        raw = socket.create_connection((host, port), timeout=10)
        try:
            s = ctx.wrap_socket(raw) if ctx is not None else raw
            s.sendall(request)
            out = b""
            while chunk := s.recv(65536):
                out += chunk
            return out
        except (ssl.SSLError, ConnectionError) as e:
            return type(e).__name__
        finally:
            raw.close()
    return network.call_in(netns, go)


def _established(prefix: str) -> list[tuple[str, str, str]]:
    """(local, peer, process) of the TCP connections established in the controller's namespace."""
    out = subprocess.run(["ip", "netns", "exec", nm.ctl_netns(prefix), "ss", "-tnpH",
                          "state", "established"], capture_output=True, text=True, check=True,
                         timeout=30).stdout
    rows = []
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 4:  # Recv-Q Send-Q Local Peer [Process]
            rows.append((f[2], f[3], " ".join(f[4:])))
    return rows


def _controller_ctx(lab) -> ssl.SSLContext:
    cdir = services.controller_dir(lab.state_dir)
    return tls.client_context((cdir / "cloud-ca.crt").read_bytes(),
                              str(cdir / "controller-tls.pem"))


def _host_ctx(lab, hid: str) -> ssl.SSLContext:
    d = services.agent_state_dir(lab.state_dir, hid) / "tls"
    return tls.client_context((d / "ca.crt").read_bytes(), str(d / "host.pem"))


def _no_cert_ctx(lab) -> ssl.SSLContext:
    """TLS trusting the cloud CA, presenting no certificate."""
    ctx = ssl.create_default_context(
        cadata=(services.controller_dir(lab.state_dir) / "cloud-ca.crt").read_text())
    ctx.check_hostname = False
    return ctx


def test_agents_and_controller_talk_tls_over_tcp_on_the_fabric(lab):
    ctl_pid = lab_state(lab).processes["controller"].pid
    with admin_api(lab) as api:
        hosts = {h["host_id"]: h for h in call(api, "GET", "/v1/hosts")["items"]}
    for hid in HOSTS:
        assert hosts[hid]["state"] == "up"
        # What the agent heartbeats as its URL (HostInfo.agent_url), hence what the controller
        # dials: its fabric address, over TLS.
        with services.agent_client(lab.state_dir, hid) as c:
            info = c.get("/v1/host").json()
        assert info["agent_url"] == f"https://{nm.host_address(hid).ip}:{nm.AGENT_PORT}"

    # Heartbeats: each host's agent holds a connection to the controller's fabric listener
    # (kept alive between beats), seen from the controller's side, owned by the controller.
    listener = nm.controller_agent_listen()
    want = {str(nm.host_address(h).ip) for h in HOSTS}
    deadline, seen = time.monotonic() + 30, set()
    while time.monotonic() < deadline and seen != want:
        seen = {peer.rpartition(":")[0] for local, peer, proc in _established(lab.prefix)
                if local == listener and f"pid={ctl_pid}," in proc} & want
        time.sleep(0.5)
    assert seen == want, _established(lab.prefix)

    # The controller's calls to the agents went to their fabric addresses over https (its own
    # client log: PUT of each host's network document at up).
    log = (services.controller_dir(lab.state_dir) / "controller.log").read_text()
    for hid in HOSTS:
        assert (f"PUT https://{nm.agent_listen(hid)}/v1/network \"HTTP/1.1 200 OK\""
                in log), hid


def test_the_fabric_listeners_require_a_certificate_from_the_cloud_ca(lab):
    h1, ctl = nm.host_netns(lab.prefix, "h1"), nm.ctl_netns(lab.prefix)
    controller, agent = nm.controller_agent_listen(), nm.agent_listen("h1")
    # The controller's agent listener: a host's certificate gets an answer ...
    assert _exchange(h1, controller, _host_ctx(lab, "h1")).startswith(b"HTTP/1.1 200")
    # ... plain HTTP and TLS without a client certificate get none.
    for ctx in (None, _no_cert_ctx(lab)):
        got = _exchange(h1, controller, ctx)
        assert not (isinstance(got, bytes) and b"HTTP/" in got), got
    # The agent's listener: the controller's certificate gets an answer; plain HTTP, TLS without
    # a certificate, and another host's certificate (a host is not the controller) get none.
    assert _exchange(ctl, agent, _controller_ctx(lab), "/v1/host").startswith(b"HTTP/1.1 200")
    for ctx in (None, _no_cert_ctx(lab)):
        got = _exchange(ctl, agent, ctx, "/v1/host")
        assert not (isinstance(got, bytes) and b"HTTP/" in got), got
    other = _exchange(nm.host_netns(lab.prefix, "h2"), agent, _host_ctx(lab, "h2"), "/v1/host")
    assert not (isinstance(other, bytes) and other.startswith(b"HTTP/1.1 200")), other


def test_controller_runs_in_its_namespace_and_serves_users_on_the_root_loopback(lab):
    rec = lab_state(lab).processes["controller"]
    ctl = nm.ctl_netns(lab.prefix)
    assert os.stat(f"/proc/{rec.pid}/ns/net").st_ino == os.stat(f"/run/netns/{ctl}").st_ino
    # The users' API answers on 127.0.0.1 in the root namespace ...
    assert httpx.get(f"{lab.url}/healthz", timeout=10).status_code == 200
    # ... through the inherited socket: inside the controller's namespace nothing listens on
    # that port, only the agents' listener on the fabric address.
    out = subprocess.run(["ip", "netns", "exec", ctl, "ss", "-tlnH"], capture_output=True,
                         text=True, check=True, timeout=30).stdout
    listening = {line.split()[3] for line in out.splitlines()}
    assert listening == {nm.controller_agent_listen()}, listening
    # The root namespace got nothing of the fabric: no address in it, no lab link.
    root_addrs = [a["local"] for link in ip_json(None, "addr") for a in link.get("addr_info", [])]
    assert not [a for a in root_addrs if a.startswith("100.64.0.")], root_addrs
    root_links = {link["ifname"] for link in ip_json(None, "link")}
    assert not root_links & {nm.CTL_FABRIC_PORT, nm.UPLINK}
