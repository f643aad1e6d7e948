"""A small process supervisor: start a command (optionally inside a network namespace) with an
environment and a log file, record its PID and start time, and end processes by PID (`end`: SIGTERM,
SIGKILL after a timeout, then wait until they have exited). It only ever signals PIDs it recorded,
re-checking the start time against PID reuse, or processes found inside a lab-owned network namespace.

"Exited" means exited: a process whose main thread is a zombie while its other threads are still
exiting (libvirtd takes a second or two) still holds its sockets, files and namespaces, so it is
waited for; so is the reaping of a dead child of ours (waitpid) or, for a while, of someone else's.
`end` is the one way the lab, and the lab tests (lab.testing.end_process), stop a process.
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


def _threads_exited(pid: int) -> bool:
    """True when every thread of the process has exited (only the zombie main thread is left)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return True
    for tid in tids:
        try:
            raw = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if raw[raw.rfind(")") + 2] not in "ZX":
            return False
    return True


def phase(pid: int, start: int) -> str:
    """Where the process with this PID and start time is in its life:
    "running"; "exiting" (its main thread is a zombie, other threads are still exiting, or it is a
    child of ours that waitpid cannot reap yet); "dead" (every thread exited; only its parent's
    wait is left, the parent not being us); "gone" (no such process any more, or the PID now
    belongs to another one). A dead child of ours is reaped here and reported "gone"."""
    st = _stat(pid)
    if st is None or st[1] != start:
        return "gone"
    if st[0] not in ("Z", "X"):
        return "running"
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return "dead" if _threads_exited(pid) else "exiting"
    return "gone" if reaped == pid else "exiting"


def alive(rec: ProcRecord) -> bool:
    """The recorded process still runs, or is still exiting."""
    return phase(rec.pid, rec.start_time) in ("running", "exiting")


def start(
    name: str,
    argv: list[str],
    log: Path,
    env: dict[str, str] | None = None,
    netns: str | None = None,
    cwd: Path | None = None,
    share_mounts: bool = False,
    pass_fds: tuple[int, ...] = (),
) -> ProcRecord:
    """Start argv in the background (own session, stdin from /dev/null, output appended to log).

    With netns, the command runs under `ip netns exec`, which execs in place: the PID we record is
    the PID of the command itself. `ip netns exec` also gives it a private mount namespace (to
    remount /sys); share_mounts=True uses `nsenter --net` instead, keeping the machine's mount
    namespace: an agent creates its VPC router namespaces by bind-mounting them under /run/netns,
    and those mounts must outlive it (a restarted agent, `lab down` and tests must see them).
    pass_fds: descriptors the command inherits under the same numbers (e.g. a listening socket
    bound in the root namespace); every other one is closed."""
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
            pass_fds=tuple(pass_fds),
        )
    st = start_time(p.pid)
    return ProcRecord(name=name, pid=p.pid, start_time=st or 0, argv=full, log=str(log), netns=netns)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait_until(done, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(0.02)
    return done()


def end(recs: list[ProcRecord], sig: int = signal.SIGTERM, timeout: float = 10.0,
        kill_timeout: float = 5.0, reap_timeout: float = 1.0) -> list[ProcRecord]:
    """End processes by PID and wait until they have exited: `sig` to each one still running, SIGKILL
    to those still running after `timeout` seconds, then up to `kill_timeout` more for them to exit.
    A dead process whose parent is not us is given up to `reap_timeout` seconds to be reaped (gone
    from /proc). Returns the records still not exited (none unless a process is stuck in the kernel).
    Records whose PID is gone or reused are never signalled."""
    todo = [r for r in recs if phase(r.pid, r.start_time) != "gone"]

    def running() -> list[ProcRecord]:
        return [r for r in todo if alive(r)]

    for r in running():
        _signal(r.pid, sig)
    if not _wait_until(lambda: not running(), timeout):
        for r in running():
            _signal(r.pid, signal.SIGKILL)
        _wait_until(lambda: not running(), kill_timeout)
    _wait_until(lambda: all(phase(r.pid, r.start_time) == "gone" for r in todo), reap_timeout)
    return running()


def netns_records(netns: str) -> list[ProcRecord]:
    """Records of the processes inside a (lab-owned) network namespace, taken now."""
    recs = []
    for pid in netns_pids(netns):
        t = start_time(pid)
        if t is not None:
            recs.append(ProcRecord(name=f"netns:{netns}", pid=pid, start_time=t, argv=[], log="",
                                   netns=netns))
    return recs


def _netns_id(pid: int | str) -> tuple[int, int] | None:
    try:
        st = os.stat(f"/proc/{pid}/ns/net")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return st.st_ino, st.st_dev


def netns_mates(rec: ProcRecord) -> list[ProcRecord]:
    """Records of the processes sharing the network namespace of the recorded process (itself
    included), also when that namespace's /run/netns handle is gone (deleted and re-created under
    it): what such a process started runs on in there, serving nobody. Empty when the record is
    not alive, or when its namespace is the machine's or ours: those are never swept."""
    if not alive(rec):
        return []
    ns = _netns_id(rec.pid)
    if ns is None or ns in (_netns_id(1), _netns_id("self")):
        return []
    recs = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _netns_id(entry) == ns:
            t = start_time(int(entry))
            if t is not None:
                recs.append(ProcRecord(name=f"netns-of:{rec.name}", pid=int(entry), start_time=t,
                                       argv=[], log="", netns=rec.netns))
    return recs


def stop(rec: ProcRecord, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after timeout; returns once it has exited. A process that already died
    is fine."""
    end([rec], timeout=timeout)


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
    """End every process still inside a lab namespace (e.g. qemu left behind by a libvirtd that
    died) and wait until they have exited: they can only have been started by the lab or by
    something it started."""
    recs = netns_records(netns)
    end(recs, timeout=timeout)
    return sorted(r.pid for r in recs)
