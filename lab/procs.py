"""A small process supervisor: start a command (optionally inside a network namespace) with an
environment and a log file, record its PID and start time, and stop it by PID (SIGTERM, then SIGKILL
after a timeout). It only ever signals PIDs it recorded, re-checking the start time against PID reuse,
or processes found inside a lab-owned network namespace.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from lab.state import ProcRecord

NETNS_DIR = Path("/run/netns")


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a PID, or None if it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    rest = raw[raw.rfind(")") + 2 :].split()
    return rest[0], int(rest[19])


def start_time(pid: int) -> int | None:
    st = _stat(pid)
    return None if st is None else st[1]


def _reap(pid: int) -> None:
    # Processes we started in this Python process become zombies until waited for.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def alive(rec: ProcRecord) -> bool:
    st = _stat(rec.pid)
    if st is None or st[1] != rec.start_time:
        return False
    if st[0] in ("Z", "X"):
        _reap(rec.pid)
        return False
    return True


def start(
    name: str,
    argv: list[str],
    log: Path,
    env: dict[str, str] | None = None,
    netns: str | None = None,
    cwd: Path | None = None,
    share_mounts: bool = False,
) -> ProcRecord:
    """Start argv in the background (own session, stdin from /dev/null, output appended to log).

    With netns, the command runs under `ip netns exec`, which execs in place: the PID we record is
    the PID of the command itself. `ip netns exec` also gives it a private mount namespace (to
    remount /sys); share_mounts=True uses `nsenter --net` instead, keeping the machine's mount
    namespace: an agent creates its VPC router namespaces by bind-mounting them under /run/netns,
    and those mounts must outlive it (a restarted agent, `lab down` and tests must see them)."""
    if netns and share_mounts:
        prefix = ["nsenter", f"--net=/run/netns/{netns}", "--"]
    else:
        prefix = ["ip", "netns", "exec", netns] if netns else []
    full = prefix + list(argv)
    log.parent.mkdir(parents=True, exist_ok=True)
    penv = dict(os.environ)
    penv.update(env or {})
    with open(log, "ab") as out:
        out.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {name}: {full}\n".encode())
        out.flush()
        p = subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=penv,
            cwd=str(cwd) if cwd else None,
            start_new_session=True,
            close_fds=True,
        )
    st = start_time(p.pid)
    return ProcRecord(name=name, pid=p.pid, start_time=st or 0, argv=full, log=str(log), netns=netns)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait_gone(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not check():
            return True
        time.sleep(0.05)
    return not check()


def stop(rec: ProcRecord, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after timeout. A process that already died is fine."""
    if not alive(rec):
        _reap(rec.pid)
        return
    _signal(rec.pid, signal.SIGTERM)
    if _wait_gone(lambda: alive(rec), timeout):
        _reap(rec.pid)
        return
    if alive(rec):
        _signal(rec.pid, signal.SIGKILL)
    _wait_gone(lambda: alive(rec), 5.0)
    _reap(rec.pid)


def netns_pids(netns: str) -> list[int]:
    """PIDs of processes whose network namespace is the named one (found by inode)."""
    try:
        ns = os.stat(NETNS_DIR / netns)
    except FileNotFoundError:
        return []
    me = os.getpid()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if (st.st_ino, st.st_dev) == (ns.st_ino, ns.st_dev):
            pids.append(int(entry))
    return pids


def kill_netns_processes(netns: str, timeout: float = 5.0) -> list[int]:
    """Stop every process still inside a lab namespace (e.g. qemu left behind by a libvirtd that
    died): they can only have been started by the lab or by something it started."""
    victims = {pid: start_time(pid) for pid in netns_pids(netns)}
    victims = {p: t for p, t in victims.items() if t is not None}
    if not victims:
        return []
    recs = [ProcRecord(name="netns", pid=p, start_time=t, argv=[], log="") for p, t in victims.items()]
    for r in recs:
        _signal(r.pid, signal.SIGTERM)
    if not _wait_gone(lambda: any(alive(r) for r in recs), timeout):
        for r in recs:
            if alive(r):
                _signal(r.pid, signal.SIGKILL)
        _wait_gone(lambda: any(alive(r) for r in recs), 5.0)
    for r in recs:
        _reap(r.pid)
    return sorted(victims)
