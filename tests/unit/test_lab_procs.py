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


# Main thread exits (a zombie in /proc/PID/stat) while another thread still runs for EXIT_AFTER s:
# the shape of a libvirtd after SIGTERM, whose workers take a second or two to finish.
EXIT_AFTER = 1.0
LINGER = f"""
import ctypes, os, signal, sys, threading, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # its exit is under way: SIGTERM changes nothing
def late():
    time.sleep({EXIT_AFTER})
    os._exit(0)
threading.Thread(target=late).start()
sys.stdout.flush()
ctypes.CDLL(None).pthread_exit(None)
"""


def _leader_state(pid: int) -> str:
    raw = open(f"/proc/{pid}/stat").read()
    return raw[raw.rfind(")") + 2]


def test_a_process_still_exiting_is_alive_and_stop_waits_for_it(tmp_path):
    import sys
    rec = procs.start("linger", [sys.executable, "-c", LINGER], tmp_path / "s.log")
    deadline = time.monotonic() + 5
    while _leader_state(rec.pid) != "Z" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _leader_state(rec.pid) == "Z"
    assert procs.phase(rec.pid, rec.start_time) == "exiting"
    assert procs.alive(rec)  # its main thread is a zombie, but the process has not exited
    t = time.monotonic()
    procs.stop(rec, timeout=5)
    assert not os.path.exists(f"/proc/{rec.pid}"), "stop returned before the process exited"
    assert time.monotonic() - t < 5  # by its own exit, no SIGKILL needed


def test_end_waits_for_every_process(tmp_path):
    recs = [procs.start(f"s{i}", ["sh", "-c", "trap 'sleep 0.3; exit 0' TERM; while :; do sleep 0.05; done"],
                        tmp_path / f"{i}.log") for i in range(3)]
    time.sleep(0.2)
    assert procs.end(recs, timeout=5) == []
    assert not [r.pid for r in recs if os.path.exists(f"/proc/{r.pid}")]


def test_netns_mates_never_sweeps_our_own_namespace(tmp_path):
    # A process in our (here: the machine's) namespace: its "mates" would be everything, so none.
    rec = procs.start("sleeper", ["sleep", "30"], tmp_path / "s.log")
    try:
        assert procs.netns_mates(rec) == []
    finally:
        procs.stop(rec, timeout=5)
    assert procs.netns_mates(rec) == []  # not alive: nothing either
