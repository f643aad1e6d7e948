"""agent/supervisor.py with real, harmless child processes (sleep, sh): start and readiness, the
pid file, adoption by a second supervisor (the restarted agent) and what it refuses to adopt,
crash detection, restart with backoff, a child left in the wrong namespace, signal and stop.
Every process a test starts is ended by its PID at the latest in the fixture's teardown, which
asserts that none is left (no zombie either)."""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import time
from pathlib import Path

import pytest

from agent import netns, supervisor
from agent.supervisor import ChildSpec, Supervised, SupervisorError, pid_alive

SLEEP = shutil.which("sleep") or "/bin/sleep"
SH = shutil.which("sh") or "/bin/sh"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def procs():
    """Pids to end by PID after the test; asserts that none is left (nor a zombie of ours)."""
    pids: set[int] = set()
    sups: list[Supervised] = []
    yield pids, sups
    for sup in sups:
        pid = sup.pid()
        if pid is not None:
            pids.add(pid)
        sup.stop()
    for pid in pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while [p for p in pids if pid_alive(p)] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not [p for p in pids if pid_alive(p)], "processes left running"
    for sup in sups:  # our own children are reaped: nothing left in /proc at all
        p = sup._proc
        assert p is None or p.popen is None or p.popen.returncode is not None


def sleep_spec(tmp_path: Path, **kw) -> ChildSpec:
    # A unique duration: no other process on the machine has this command line.
    argv = (SLEEP, f"3600.{secrets.randbelow(10**9):09d}")
    return ChildSpec(name="test sleeper", argv=argv, pid_file=str(tmp_path / "child.pid"),
                     log_file=str(tmp_path / "child.log"), **kw)


def make(procs, spec: ChildSpec, **kw) -> Supervised:
    sup = Supervised(spec, **kw)
    procs[1].append(sup)
    return sup


def wait_dead(sup: Supervised, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while sup.pid() is not None:
        assert time.monotonic() < deadline, "child did not exit"
        time.sleep(0.02)


def test_start_writes_the_pid_file_and_stop_ends_the_child(tmp_path, procs):
    sup = make(procs, sleep_spec(tmp_path))
    assert sup.pid() is None and sup.stop() is False and sup.signal(signal.SIGTERM) is False
    pid = sup.start()
    procs[0].add(pid)
    assert sup.pid() == pid and sup.in_place()
    assert Path(sup.spec.pid_file).read_text().strip() == str(pid)
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert f.read().rstrip(b"\0").split(b"\0") == [a.encode() for a in sup.spec.argv]
    with pytest.raises(SupervisorError) as e:
        sup.start()
    assert e.value.code == "ProcessAlreadyRunning"
    assert sup.ensure() == "running" and sup.pid() == pid
    assert sup.stop() is True
    assert not os.path.exists(f"/proc/{pid}")  # reaped, not even a zombie
    assert not os.path.exists(sup.spec.pid_file)
    assert sup.pid() is None and sup.stop() is False and sup.failures == 0  # not a crash


def test_a_new_supervisor_adopts_the_running_child(tmp_path, procs):
    spec = sleep_spec(tmp_path)
    first = make(procs, spec)
    pid = first.start()
    procs[0].add(pid)
    again = make(procs, spec)  # as after an agent restart: same spec, no Popen
    assert again.pid() == pid and again.in_place() and again.ensure() == "running"
    assert again.signal(0) is True
    assert again.stop() is True
    assert not pid_alive(pid)  # dead; its parent (the first supervisor) still has to reap it
    assert first.pid() is None  # reaped now
    assert not os.path.exists(f"/proc/{pid}")
    assert first.pid() is None and again.pid() is None


@pytest.mark.parametrize("content", ["self", "garbage", "", "999999999"])
def test_a_pid_file_naming_another_process_is_not_trusted(tmp_path, procs, content):
    spec = sleep_spec(tmp_path)
    Path(spec.pid_file).write_text(f"{os.getpid()}\n" if content == "self" else content)
    sup = make(procs, spec)
    assert sup.pid() is None and sup.stop() is False
    assert pid_alive(os.getpid())  # stop() never signalled the stranger
    procs[0].add(sup.start())  # a start replaces the stale pid file
    assert Path(spec.pid_file).read_text().strip() == str(sup.pid())


def test_another_program_under_the_same_pid_file_is_not_adopted(tmp_path, procs):
    spec = sleep_spec(tmp_path)
    other = make(procs, ChildSpec(name="other", argv=(SLEEP, "3599.5"), pid_file=spec.pid_file))
    procs[0].add(other.start())
    assert make(procs, spec).pid() is None  # the pid is alive, but its cmdline is not ours


def test_a_crash_is_detected_and_restarted_with_backoff(tmp_path, procs):
    clock = Clock()
    sup = make(procs, sleep_spec(tmp_path), clock=clock, backoff_base=1.0, backoff_max=4.0,
               stable_after=30.0)
    assert [sup.backoff(n) for n in range(7)] == [0, 0, 1, 2, 4, 4, 4]
    assert sup.ensure() == "started"
    first = sup.pid()
    procs[0].add(first)
    os.kill(first, signal.SIGKILL)  # crash 1: restarted at once
    wait_dead(sup)
    assert sup.failures == 1 and sup.retry_in() == 0
    assert sup.ensure() == "restarted"
    second = sup.pid()
    procs[0].add(second)
    assert second != first
    os.kill(second, signal.SIGKILL)  # crash 2, soon after the start: back off 1 s
    wait_dead(sup)
    assert sup.failures == 2 and sup.retry_in() == 1.0
    with pytest.raises(SupervisorError) as e:
        sup.ensure()
    assert e.value.code == "ProcessBackoff" and sup.pid() is None
    clock.now += 1.0
    assert sup.ensure() == "restarted"
    third = sup.pid()
    procs[0].add(third)
    clock.now += 30.0  # it lived long enough: the next crash counts as the first again
    os.kill(third, signal.SIGKILL)
    wait_dead(sup)
    assert sup.failures == 1 and sup.retry_in() == 0
    procs[0].add(sup.start())
    sup.failures = 5
    sup.reset_backoff()
    assert sup.retry_in() == 0


def test_a_child_that_exits_at_start_is_a_clear_failure(tmp_path, procs):
    clock = Clock()
    spec = ChildSpec(name="broken daemon", argv=(SH, "-c", "echo 'no config here' >&2; exit 3"),
                     pid_file=str(tmp_path / "b.pid"), log_file=str(tmp_path / "b.log"),
                     child_writes_pid_file=True)
    sup = make(procs, spec, clock=clock)
    with pytest.raises(SupervisorError) as e:
        sup.start()
    assert e.value.code == "ProcessStartFailed"
    assert "broken daemon exited with 3: no config here" in str(e.value)
    assert sup.pid() is None and sup.failures == 1
    with pytest.raises(SupervisorError) as e:  # the second failure in a row...
        sup.start()
    with pytest.raises(SupervisorError) as e:  # ...makes the third wait
        sup.start()
    assert e.value.code == "ProcessBackoff"


def test_a_child_that_never_gets_ready_is_ended(tmp_path, procs):
    marker = f"3600.{secrets.randbelow(10**9):09d}"
    spec = ChildSpec(name="slow daemon", argv=(SLEEP, marker), pid_file=str(tmp_path / "s.pid"),
                     child_writes_pid_file=True)
    sup = make(procs, spec, start_timeout=0.3, stop_timeout=2.0)
    with pytest.raises(SupervisorError) as e:
        sup.start()
    assert e.value.code == "ProcessStartFailed" and "not ready in" in str(e.value)
    assert not _running_with(marker)


def test_a_child_writing_its_own_pid_file_is_ready_when_it_did(tmp_path, procs):
    pid_file = tmp_path / "w.pid"
    # sh writes its own pid ($$), then becomes sleep: the pid stays the child's.
    spec = ChildSpec(name="writer", argv=(SH, "-c", f'sleep 0.2; echo $$ > {pid_file}; '
                                                     f'exec {SLEEP} 3600'),
                     pid_file=str(pid_file), child_writes_pid_file=True)
    sup = make(procs, spec)
    t0 = time.monotonic()
    pid = sup.start()
    procs[0].add(pid)
    assert time.monotonic() - t0 >= 0.15 and pid_file.read_text().strip() == str(pid)


def test_a_child_in_the_wrong_namespace_is_stopped_and_started_again(tmp_path, procs,
                                                                      monkeypatch):
    # No namespace is created: entering one is replaced by running in place, and the check
    # whether the child is in it answers what the test says.
    monkeypatch.setattr(netns, "exec_argv", lambda name, argv, *a: list(argv))
    where = {"ok": True}
    monkeypatch.setattr(netns, "pid_in", lambda pid, name, *a: where["ok"])
    sup = make(procs, sleep_spec(tmp_path, netns="kumo-test-ns"))
    assert sup.ensure() == "started"
    first = sup.pid()
    procs[0].add(first)
    assert sup.in_place() and sup.ensure() == "running"
    where["ok"] = False  # e.g. the namespace was deleted and re-created under it
    assert not sup.in_place()
    assert sup.ensure() == "restarted"
    procs[0].add(sup.pid())
    assert sup.pid() != first and not os.path.exists(f"/proc/{first}")
    assert sup.failures == 0  # a deliberate stop, not a crash


def test_signal_reaches_the_child(tmp_path, procs):
    sup = make(procs, sleep_spec(tmp_path))
    pid = sup.start()
    procs[0].add(pid)
    assert sup.signal(signal.SIGTERM) is True
    wait_dead(sup)
    assert sup.signal(signal.SIGTERM) is False and sup.failures == 1


def test_spec_validation():
    with pytest.raises(ValueError):
        ChildSpec(name="x", argv=(), pid_file="/tmp/x.pid")
    with pytest.raises(ValueError):
        ChildSpec(name="x", argv=("true",), pid_file="/tmp/x.pid", netns="bad/ns")
    assert supervisor.read_tail("/nonexistent", 0) == ""
    assert supervisor.file_size("/nonexistent") == 0 and supervisor.read_text("/nonexistent") is None


def _running_with(marker: str) -> bool:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker.encode() in f.read() and pid_alive(int(entry)):
                    return True
        except OSError:
            continue
    return False
