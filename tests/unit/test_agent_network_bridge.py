"""The pyroute2 bridge driver, checked with `ip` inside a network namespace the test creates
(never the machine's own namespace, which the driver refuses to touch by default)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest

from agent.drivers.base import DriverError
from agent.network_bridge import BridgeNetwork, in_private_netns

needs_root_ip = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"),
                                   reason="needs root and iproute2")

_SCRIPT = """
import json, sys
from ipaddress import IPv4Interface
from agent.drivers.base import DriverError
from agent.network_bridge import BridgeNetwork
net = BridgeNetwork(allow_root_netns=False)
out = {"before": net.bridge_ready("br-t", IPv4Interface("10.9.0.1/24"))}
net.ensure_bridge("br-t", IPv4Interface("10.9.0.1/24"))
net.ensure_bridge("br-t", IPv4Interface("10.9.0.1/24"))   # idempotent
net.ensure_bridge("br-u", None)
out["after"] = net.bridge_ready("br-t", IPv4Interface("10.9.0.1/24"))
try:
    net.ensure_bridge("dum0", None)
except DriverError as e:
    out["conflict"] = e.code
print(json.dumps(out))
"""


@pytest.mark.skipif(in_private_netns(), reason="only meaningful in the initial namespace")
def test_refuses_the_machine_namespace():
    with pytest.raises(DriverError) as e:
        BridgeNetwork().ensure_bridge("br-kumo-never", None)
    assert e.value.code == "NetworkNamespaceRefused" and not e.value.retryable
    assert not os.path.exists("/sys/class/net/br-kumo-never")


@needs_root_ip
def test_bridge_in_a_private_namespace():
    ns = f"kumo-ut-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "add", "dum0", "type", "veth", "peer", "name", "dum1"], check=True)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", _SCRIPT],
                           capture_output=True, text=True, cwd=root, timeout=60,
                           env={**os.environ, "PYTHONPATH": root})
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out == {"before": False, "after": True, "conflict": "NetworkConflict"}
        links = json.loads(subprocess.run(["ip", "-n", ns, "-j", "-d", "addr", "show"],
                                          capture_output=True, text=True, check=True).stdout)
        by_name = {link["ifname"]: link for link in links}
        br = by_name["br-t"]
        assert br["linkinfo"]["info_kind"] == "bridge"
        assert "UP" in br["flags"]
        v4 = [(a["local"], a["prefixlen"]) for a in br["addr_info"] if a["family"] == "inet"]
        assert v4 == [("10.9.0.1", 24)]  # added once, not twice
        assert "UP" in by_name["br-u"]["flags"]
        assert not [a for a in by_name["br-u"]["addr_info"] if a["family"] == "inet"]
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)
    assert ns not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                    text=True).stdout
