"""Supervised child processes: a long-running program the agent starts, watches, restarts and
stops, which outlives the agent and is adopted by the next one.

It knows nothing about what it runs: dnsmasq (agent/network/dhcp.py) uses it now, the metadata
server and the storage daemon next. One `Supervised` looks after one `ChildSpec`:

- argv: the program and its arguments exactly as /proc/<pid>/cmdline shows them (the program
  itself, never a wrapper: a namespace is entered with agent.netns.exec_argv, whose nsenter execs
  the program in place, so the child's pid is the program's).
- netns: the `ip netns` name to run it in (None: the agent's own namespace).
- pid_file: where its pid is kept. Either the program writes it itself once it is ready
  (`child_writes_pid_file`, e.g. dnsmasq's pid-file=: the readiness signal waited for), or the
  supervisor writes it as soon as the program runs (its /proc cmdline is argv).
- log_file: stdout and stderr are appended there; a failed start quotes what the child wrote.

Life cycle (not thread-safe: one owner thread calls it):
- pid(): the live process: our child (one that died is reaped, logged and counted as a crash),
  else one an earlier agent left running, found by its pid file and trusted only when
  /proc/<pid>/cmdline is exactly argv (a reused pid or a foreign pid file is never adopted).
- in_place(): the live process runs in spec.netns (agent.netns.pid_in). A namespace deleted and
  re-created under a child leaves it serving nobody; an adopted child is adopted first (so it can
  be stopped) and checked here.
- start(): spawn and wait up to start_timeout for readiness, else SupervisorError
  ProcessStartFailed (with the log's tail) and nothing left running. After a crash or a failed
  start the next start backs off: with n consecutive failures it waits backoff(n) (the first
  retry at once, then 1, 2, 4 ... up to backoff_max seconds; SupervisorError ProcessBackoff
  meanwhile). A child that lived stable_after seconds resets the count; so does reset_backoff()
  (e.g. the caller changed the child's configuration).
- ensure(): running in place -> "running"; a misplaced one is stopped; then start(): "started",
  or "restarted" after a crash or a misplacement.
- signal(sig): deliver a signal to the live process; False when there is none.
- stop(): SIGTERM, SIGKILL after stop_timeout, wait for the exit (our own child is reaped: no
  zombie; an adopted one is watched through /proc), then remove the pid file. A deliberate stop is
  never a crash.
"""
from __future__ import annotations

import logging
import os
import signal as _signal
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Optional

from agent import netns

log = logging.getLogger(__name__)

#: Seconds between readiness / exit polls.
POLL = 0.02


class SupervisorError(Exception):
    """code: ProcessStartFailed (exited or not ready in time), ProcessBackoff (crashed or failed
    recently: the next start waits), ProcessAlreadyRunning (start() while one is live)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ChildSpec:
    """What to run and where (see the module docstring)."""

    #: For logs and errors, e.g. "dnsmasq for VNI 42 in h1-kvr-00002a".
    name: str
    argv: tuple[str, ...]
    pid_file: str
    netns: Optional[str] = None
    log_file: Optional[str] = None
    child_writes_pid_file: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "argv", tuple(self.argv))
        if not self.argv:
            raise ValueError("a child needs a program")
        if self.netns is not None:
            netns.valid_netns_name(self.netns)


@dataclass
class _Proc:
    pid: int
    popen: Optional[subprocess.Popen] = None  # None when adopted from an earlier agent
    started_at: Optional[float] = None  # monotonic; None when adopted

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None  # reaps it if it died
        return pid_alive(self.pid)


class Supervised:
    """One supervised child process (see the module docstring)."""

    def __init__(self, spec: ChildSpec, *, start_timeout: float = 5.0, stop_timeout: float = 5.0,
                 backoff_base: float = 1.0, backoff_max: float = 30.0, stable_after: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        #: May be replaced (e.g. another namespace): the next start uses it, in_place() checks it.
        self.spec = spec
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self.stable_after = stable_after
        self.clock = clock
        #: Consecutive crashes and failed starts.
        self.failures = 0
        self._failed_at = 0.0
        self._proc: Optional[_Proc] = None

    # -- queries ------------------------------------------------------------------------------
    def pid(self) -> Optional[int]:
        """The live process's pid (ours, or adopted from the pid file), None when there is none."""
        p = self._proc
        if p is not None and not p.alive():
            code = p.popen.returncode if p.popen is not None else None
            log.warning("%s (pid %d) exited%s", self.spec.name, p.pid,
                        f" with {code}" if code is not None else "")
            lived = None if p.started_at is None else self.clock() - p.started_at
            self._failed(reset=lived is None or lived >= self.stable_after)
            self._proc = p = None
        if p is None:
            p = self._proc = self._adopt()
        return p.pid if p is not None else None

    def in_place(self) -> bool:
        """True when the live process runs in spec.netns (any, for None)."""
        pid = self.pid()
        if pid is None:
            return False
        return self.spec.netns is None or netns.pid_in(pid, self.spec.netns)

    def backoff(self, failures: Optional[int] = None) -> float:
        """Seconds the next start waits after `failures` consecutive failures (default: now)."""
        n = self.failures if failures is None else failures
        if n <= 1:
            return 0.0
        return min(self.backoff_base * 2 ** (n - 2), self.backoff_max)

    def retry_in(self) -> float:
        """Seconds until start() may run (0: now)."""
        return max(0.0, self._failed_at + self.backoff() - self.clock()) if self.failures else 0.0

    def reset_backoff(self) -> None:
        self.failures = 0

    # -- actions ------------------------------------------------------------------------------
    def ensure(self) -> str:
        """Keep it running in place: "running", "started" or "restarted" (see the docstring)."""
        misplaced = False
        if self.pid() is not None:
            if self.in_place():
                return "running"
            log.warning("%s (pid %d) is not in namespace %s: stopping it", self.spec.name,
                        self._proc.pid, self.spec.netns)
            self.stop()
            misplaced = True
        crashed = self.failures > 0  # counted by pid() when it found the child dead
        self.start()
        return "restarted" if misplaced or crashed else "started"

    def start(self) -> int:
        """Spawn the child and wait until it is ready; its pid. Raises SupervisorError."""
        spec = self.spec
        if self.pid() is not None:
            raise SupervisorError("ProcessAlreadyRunning",
                                  f"{spec.name} already runs (pid {self._proc.pid})")
        wait = self.retry_in()
        if wait > 0:
            raise SupervisorError("ProcessBackoff", f"{spec.name} failed {self.failures} times in "
                                  f"a row; next start in {wait:.1f} s")
        _unlink(spec.pid_file)
        offset = file_size(spec.log_file) if spec.log_file else 0
        out = (os.open(spec.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
               if spec.log_file else subprocess.DEVNULL)
        try:
            popen = subprocess.Popen(netns.exec_argv(spec.netns, spec.argv),
                                     stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        except OSError as e:
            self._failed()
            raise SupervisorError("ProcessStartFailed",
                                  f"{spec.name} could not start: {e}") from None
        finally:
            if spec.log_file:
                os.close(out)
        try:
            self._wait_ready(popen, offset)
        except SupervisorError:
            self._failed()
            raise
        self._proc = _Proc(popen.pid, popen, self.clock())
        log.info("%s started (pid %d)", spec.name, popen.pid)
        return popen.pid

    def signal(self, sig: int) -> bool:
        """Send `sig` to the live process; False when there is none (a dead child is reaped)."""
        pid = self.pid()
        if pid is None:
            return False
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            self.pid()  # reap and forget
            return False
        return True

    def stop(self) -> bool:
        """Stop the live process and remove its pid file; True if one was running."""
        if self.pid() is None:
            return False
        p, self._proc = self._proc, None
        terminate(p.pid, p.popen, self.stop_timeout)
        _unlink(self.spec.pid_file)
        log.info("%s stopped (pid %d)", self.spec.name, p.pid)
        return True

    # -- internals ----------------------------------------------------------------------------
    def _failed(self, reset: bool = False) -> None:
        self.failures = 1 if reset else self.failures + 1
        self._failed_at = self.clock()

    def _wait_ready(self, popen: subprocess.Popen, offset: int) -> None:
        spec = self.spec
        deadline = time.monotonic() + self.start_timeout
        while True:
            if popen.poll() is not None:
                _unlink(spec.pid_file)
                raise SupervisorError("ProcessStartFailed", f"{spec.name} exited with "
                                      f"{popen.returncode}: {self._tail(offset)}")
            if spec.child_writes_pid_file:
                if (read_text(spec.pid_file) or "").strip() == str(popen.pid):
                    return  # dnsmasq-style: written once it is ready (its sockets are bound)
            elif cmdline(popen.pid) == list(spec.argv):
                # The program itself runs (past nsenter's exec): adoptable from now on.
                _write_pid(spec.pid_file, popen.pid)
                return
            if time.monotonic() > deadline:
                terminate(popen.pid, popen, self.stop_timeout)
                raise SupervisorError("ProcessStartFailed", f"{spec.name} not ready in "
                                      f"{self.start_timeout:.0f} s: {self._tail(offset)}")
            time.sleep(POLL)

    def _tail(self, offset: int) -> str:
        return read_tail(self.spec.log_file, offset) if self.spec.log_file else ""

    def _adopt(self) -> Optional[_Proc]:
        """A process an earlier agent left running: its pid file names it and its command line
        is exactly spec.argv."""
        text = (read_text(self.spec.pid_file) or "").strip()
        if not text.isdigit():
            return None
        pid = int(text)
        if cmdline(pid) != list(self.spec.argv) or not pid_alive(pid):
            return None
        log.info("adopted %s (pid %d)", self.spec.name, pid)
        return _Proc(pid)


# -- process and file helpers (also for callers reading their child's log) ---------------------

def cmdline(pid: int) -> Optional[list[str]]:
    """The argv of process `pid` as /proc shows it; None when it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().rstrip(b"\0").split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return None
    return [a.decode(errors="replace") for a in argv]


def pid_alive(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def terminate(pid: int, popen: Optional[subprocess.Popen], timeout: float) -> None:
    """SIGTERM, then SIGKILL after timeout; our own child is reaped (no zombie left behind)."""
    for sig in (_signal.SIGTERM, _signal.SIGKILL):
        if popen is not None:
            if popen.poll() is not None:
                return
            popen.send_signal(sig)
            try:
                popen.wait(timeout)
                return
            except subprocess.TimeoutExpired:
                continue
        if not pid_alive(pid):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(POLL)
    if popen is not None:
        popen.wait(timeout)  # after SIGKILL


def file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def read_tail(path: str, offset: int, limit: int = 2000) -> str:
    """What was appended to `path` after `offset` (at most `limit` bytes), stripped."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(limit).decode(errors="replace").strip()
    except FileNotFoundError:
        return ""


def read_text(path: str) -> Optional[str]:
    """A small file's text (a pid file, a config); None when it is missing or not text."""
    try:
        with open(path) as f:
            return f.read()
    except (FileNotFoundError, UnicodeDecodeError):
        return None


def _write_pid(path: str, pid: int) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{pid}\n")
    os.replace(tmp, path)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
