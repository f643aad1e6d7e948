"""The lab's process supervisor on harmless local processes (sleep): start, PID-reuse guard,
SIGTERM then SIGKILL, reaping."""

import os
import time

from lab import procs
from lab.state import ProcRecord


def test_start_alive_stop(tmp_path):
    rec = procs.start("sleeper", ["sleep", "30"], tmp_path / "log" / "s.log", env={"X": "1"})
    try:
        assert procs.alive(rec)
        assert rec.start_time == procs.start_time(rec.pid)
        assert "starting sleeper" in (tmp_path / "log" / "s.log").read_text()
    finally:
        procs.stop(rec, timeout=5)
    assert not procs.alive(rec)
    assert not os.path.exists(f"/proc/{rec.pid}")  # reaped, not a zombie


def test_stale_pid_is_not_ours(tmp_path):
    rec = procs.start("sleeper", ["sleep", "30"], tmp_path / "s.log")
    try:
        other = ProcRecord("x", rec.pid, rec.start_time + 1, [], "")
        assert not procs.alive(other)
        procs.stop(other, timeout=0.1)  # must not signal a process that is not the recorded one
        assert procs.alive(rec)
    finally:
        procs.stop(rec, timeout=5)


def test_sigkill_after_timeout(tmp_path):
    rec = procs.start("stubborn", ["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"], tmp_path / "s.log")
    time.sleep(0.2)
    t = time.monotonic()
    procs.stop(rec, timeout=0.5)
    assert not procs.alive(rec)
    assert time.monotonic() - t < 4


def test_stop_of_a_dead_process_is_fine(tmp_path):
    rec = procs.start("quick", ["true"], tmp_path / "s.log")
    time.sleep(0.3)
    procs.stop(rec, timeout=0.5)
    assert not procs.alive(rec)
