"""Network namespaces: the one place that knows which namespace a process is in, how to enter a
named one, and whether it is the machine's own.

Why one module: the hard rule of Kumo's lab is that nothing is ever programmed in the machine's
own (initial) namespace unless the operator says this host *is* the machine. Every piece of the
agent that touches the kernel's network (dataplane links, nftables, dnsmasq, the firewall's
libnftables thread, bridges) asks here, so the rule is written once and tested once.

Identity is the namespace file's (st_dev, st_ino), as `ip netns identify` does it. Names are
`ip netns` names under /run/netns, validated before they reach any argv or path.
"""
from __future__ import annotations

import os
import re
from typing import Optional, Sequence

NETNS_RUN_DIR = "/run/netns"
# `ip netns` names become file names and argv items: a safe subset, no '/', no leading dash.
NETNS_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class NamespaceRefused(Exception):
    """The caller would program the machine's own network namespace without being allowed to."""

    code = "RootNamespaceRefused"
    retryable = False


def valid_netns_name(value: object) -> str:
    """`value` if it is a safe `ip netns` name, else ValueError."""
    if not isinstance(value, str) or not NETNS_NAME_RE.fullmatch(value) or value in (".", ".."):
        raise ValueError(f"bad network namespace name {value!r}")
    return value


def netns_path(name: str, run_dir: str = NETNS_RUN_DIR) -> str:
    return os.path.join(run_dir, valid_netns_name(name))


def _identity(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _own() -> tuple[int, int]:
    return _identity("/proc/self/ns/net")


def own_netns_name(run_dir: str = NETNS_RUN_DIR) -> Optional[str]:
    """The `ip netns` name of the namespace this process runs in, if it has one (first by name)."""
    try:
        me = _own()
        entries = sorted(os.listdir(run_dir))
    except OSError:
        return None
    for name in entries:
        try:
            if _identity(os.path.join(run_dir, name)) == me:
                return name
        except OSError:
            continue
    return None


def in_private_netns(run_dir: str = NETNS_RUN_DIR) -> bool:
    """True when this process runs in a network namespace other than the machine's own.

    Either a named namespace (`ip netns`, as the lab's hosts are) or one that differs from PID 1's.
    When neither can be shown, assume the machine's own namespace: the safe answer.
    """
    if own_netns_name(run_dir) is not None:
        return True
    try:
        return _identity("/proc/1/ns/net") != _own()
    except OSError:  # /proc/1 is hidden in some sandboxes
        return False


def is_current(name: Optional[str], run_dir: str = NETNS_RUN_DIR) -> bool:
    """True when `name` is the namespace this process runs in (None stands for "this one")."""
    if name is None:
        return True
    try:
        return _identity(netns_path(name, run_dir)) == _own()
    except (OSError, ValueError):
        return False


def pid_in(pid: int, name: str, run_dir: str = NETNS_RUN_DIR) -> bool:
    """True when process `pid` lives in the named namespace."""
    try:
        return _identity(f"/proc/{int(pid)}/ns/net") == _identity(netns_path(name, run_dir))
    except (OSError, ValueError):
        return False


def is_live(name: str, run_dir: str = NETNS_RUN_DIR) -> bool:
    """True when /run/netns/<name> is a namespace (an nsfs mount), not a leftover empty file."""
    try:
        return os.stat(netns_path(name, run_dir)).st_dev == os.stat("/proc/self/ns/net").st_dev
    except (OSError, ValueError):
        return False


def inode(name: Optional[str], run_dir: str = NETNS_RUN_DIR) -> Optional[int]:
    """The namespace's inode (changes when it is re-created), None when absent or unnamed."""
    if name is None:
        return None
    try:
        return os.stat(netns_path(name, run_dir)).st_ino
    except (OSError, ValueError):
        return None


def drop_stale(name: str, run_dir: str = NETNS_RUN_DIR) -> None:
    """Remove /run/netns/<name> when it is a leftover file and no namespace (after a crash).

    A name that is no valid `ip netns` name is left alone: never Kumo's to remove."""
    try:
        path = netns_path(name, run_dir)
    except ValueError:
        return
    if os.path.exists(path) and not is_live(name, run_dir):
        try:
            os.unlink(path)
        except OSError:
            pass


def exec_argv(name: Optional[str], argv: Sequence[str], run_dir: str = NETNS_RUN_DIR) -> list[str]:
    """argv that runs `argv` inside the named namespace (unchanged for None: this one).

    nsenter rather than `ip netns exec`: it enters only the network namespace and keeps the
    mount namespace, so /sys and the agent's files look the same from inside."""
    if name is None:
        return list(argv)
    return ["nsenter", f"--net={netns_path(name, run_dir)}", "--", *argv]


def require_private(allow_own: bool, what: str) -> None:
    """Raise NamespaceRefused unless this process is in a private namespace or `allow_own`."""
    if not allow_own and not in_private_netns():
        raise NamespaceRefused(
            f"refusing to {what} in the machine's own network namespace: set KUMO_AGENT_NETNS, "
            "or KUMO_AGENT_ALLOW_ROOT_NETNS=true on a real host")
