"""The NBD storage node (agent/storage_node) for lab tests: a qemu-storage-daemon under the
supervisor inside a network namespace the test creates and wires itself (nothing in the machine's
own namespace), and qemu-io/qemu-img over NBD from inside that namespace. On the way out the
daemon is stopped, the namespace deleted and the state dir removed, and all of it is checked.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from agent import netns
from agent.storage_node.backend import NbdBackend
from agent.supervisor import pid_alive
from lab.testing import ns_run


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "nsenter", "qemu-storage-daemon", "qemu-io", "qemu-img"):
        if shutil.which(tool) is None:
            return f"{tool} missing"
    return None


def ip(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    """`ip -n ns ...`: always inside a namespace the test or the lab made."""
    return subprocess.run(["ip", "-n", ns, *argv], check=check, capture_output=True, text=True)


@contextlib.contextmanager
def storage_node(ns: str, addr: str, port: int, wire: Callable[[str], None],
                 unwire: Callable[[], None] = lambda: None
                 ) -> Iterator[tuple[NbdBackend, Path, list[int]]]:
    """(backend, state dir, pids) of an NbdBackend serving on addr:port inside the new namespace
    `ns`, which `wire(ns)` connects (its loopback is up already); `unwire()` undoes what wire
    made outside `ns`. Append the PIDs of daemons you kill to `pids`: none may survive."""
    state = Path(tempfile.mkdtemp(prefix="kumo-nbd-"))
    subprocess.run(["ip", "netns", "add", ns], check=True)
    pids: list[int] = []
    backend = None
    try:
        ip(ns, "link", "set", "lo", "up")
        wire(ns)
        backend = NbdBackend(state, addr, port, netns=ns, max_size=1 << 30)
        yield backend, state, pids
    finally:
        try:
            if backend is not None:
                pid = backend.daemon.pid()
                if pid is not None:
                    pids.append(pid)
                backend.stop()
        finally:
            try:
                unwire()
            finally:
                subprocess.run(["ip", "netns", "del", ns], check=False)
                shutil.rmtree(state, ignore_errors=True)
    assert not [p for p in pids if pid_alive(p)], "a daemon survived"
    assert not netns.is_live(ns) and not os.path.exists(netns.netns_path(ns))
    assert not state.exists()


def nbd_url(addr: str, port: int, volume_id: str) -> str:
    return f"nbd://{addr}:{port}/{volume_id}"


def qemu_io(ns: str, url: str, command: str) -> subprocess.CompletedProcess:
    return ns_run(ns, "qemu-io", "-f", "raw", url, "-c", command, check=False, timeout=15)
