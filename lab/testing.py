"""Helpers for tests that use the lab: run commands inside a lab namespace, read `ip -j` output (an
independent check of what pyroute2 made), make a throw-away bridge with an address inside a host
namespace, end a process a test started, and snapshot the machine's root-namespace state to
prove `down` left it as found.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from lab import naming as nm
from lab import procs
from lab.state import ProcRecord

# System places a lab could leave files in; compared (minus the state dir) before/after a lab's life.
WATCHED_DIRS = ("/run", "/etc/libvirt", "/var/lib/libvirt", "/var/cache/libvirt", "/var/log/libvirt",
                "/var/lib/kumo", "/etc/netns")  # fmt: skip


def skip_reason() -> str | None:
    """Why lab tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "lab tests need root (network namespaces, mounts, libvirtd)"
    if not os.access("/usr/sbin/libvirtd", os.X_OK):
        return "libvirtd missing: apt-get install libvirt-daemon-system"
    for tool in ("ip", "unshare", "mount", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} missing"
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return "libvirt-python missing"
    return None


def until(pred, timeout: float, what: str, every: float = 0.5):
    """pred()'s first truthy value, asked every `every` seconds; AssertionError naming `what`
    once `timeout` seconds have passed without one."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(every)


def unique_prefix() -> str:
    return "kt" + secrets.token_hex(3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def end_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
    """End a process this test started, by its PID, the way `lab down` ends the lab's
    (lab.procs.end): `sig`, then SIGKILL after `grace` seconds; returns once it has exited and
    been reaped."""
    if proc.poll() is not None:
        return
    # An unreaped child's PID cannot be reused: its start time read now is the process's own.
    started = procs.start_time(proc.pid)
    if started is not None:
        procs.end([ProcRecord("test", proc.pid, started, [], "")], sig, timeout=grace)
    proc.poll()  # sets returncode (0 when procs.end reaped it: its status is not kept)


def ns_run(netns: str, *argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run argv inside a lab namespace (never the root one) and capture its output as text."""
    if not netns:
        raise ValueError("a lab namespace is required")
    return subprocess.run(["ip", "netns", "exec", netns, *argv], check=check, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def ping(netns: str, address: str, count: int = 1, wait: int = 2) -> bool:
    """ICMP echo from inside a lab namespace (busybox ping: iputils is not installed everywhere)."""
    r = ns_run(netns, "busybox", "ping", "-c", str(count), "-W", str(wait), address, check=False)
    return r.returncode == 0


def ip_json(netns: str | None, *args: str) -> list[dict]:
    """`ip [-n NS] -j ARGS` parsed (netns None = the root namespace, read-only queries only)."""
    cmd = ["ip"] + (["-n", netns] if netns else []) + ["-j", *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out or "[]")


def addresses(netns: str, ifname: str) -> list[str]:
    return [f"{a['local']}/{a['prefixlen']}" for link in ip_json(netns, "addr", "show", "dev", ifname)
            for a in link.get("addr_info", []) if a.get("family") == "inet"]  # fmt: skip


def make_bridge(netns: str, name: str, cidr: str) -> None:
    """A test bridge with an address inside a lab host namespace (removed by remove_bridge, or with
    the namespace)."""
    nm._checked(name)
    if not netns or netns.startswith("-"):
        raise ValueError("a lab namespace is required")
    subprocess.run(["ip", "-n", netns, "link", "add", name, "type", "bridge"], check=True)
    subprocess.run(["ip", "-n", netns, "addr", "add", cidr, "dev", name], check=True)
    subprocess.run(["ip", "-n", netns, "link", "set", name, "up"], check=True)


def remove_bridge(netns: str, name: str) -> None:
    subprocess.run(["ip", "-n", netns, "link", "del", name], check=False, capture_output=True)


def _files(root: str, exclude: Path) -> set[str]:
    out: set[str] = set()
    if not os.path.isdir(root):
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == exclude or exclude in Path(dirpath).parents:
            dirnames[:] = []
            continue
        for n in dirnames + filenames:
            out.add(os.path.join(dirpath, n))
    return out


def machine_snapshot(state_dir: Path) -> dict:
    """What a lab must not change outside its own namespaces and state dir."""
    nft = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    files: set[str] = set()
    for d in WATCHED_DIRS:
        files |= _files(d, Path(state_dir).absolute())
    return {
        "netns": set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set(),
        "root_links": {(link["ifindex"], link["ifname"]) for link in ip_json(None, "link")},
        "root_addrs": {(link["ifname"], a["local"]) for link in ip_json(None, "addr")
                       for a in link.get("addr_info", [])},  # fmt: skip
        "root_routes": {json.dumps(r, sort_keys=True) for r in ip_json(None, "route", "show", "table", "all")},
        "nft_tables": set(nft.split("\n")) - {""},
        "files": files,
        "mounts": set(Path("/proc/self/mountinfo").read_text().splitlines()),
    }
