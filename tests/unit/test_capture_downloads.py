"""services/capture_downloads.py: downloads run beside the caller's pass, are collected once,
and partial upload files nobody writes any more are swept."""
from __future__ import annotations

import os
import threading
import time

import pytest

from controller.services.capture_downloads import Downloads, sweep_partial_uploads


def test_a_quick_download_is_collected_in_the_pass_that_starts_it():
    d = Downloads()
    done = d.poll(("s", "ami-1"), lambda: 42)
    assert done is not None and done.result() == 42
    assert d.running() == 0


def test_a_slow_download_runs_on_and_is_collected_once():
    d, gate, calls = Downloads(), threading.Event(), []

    def slow():
        calls.append(1)
        gate.wait(5)
        return "file"
    assert d.poll(("s", "ami-1"), slow, wait=0.01) is None  # the pass moves on
    assert d.poll(("s", "ami-1"), slow, wait=0.01) is None  # still running: not started again
    assert d.running() == 1 and len(calls) == 1
    gate.set()
    done = d.poll(("s", "ami-1"), slow, wait=5)
    assert done.result() == "file" and len(calls) == 1
    # Collected: a later poll under the key starts a new download (the phase moved on, or a
    # failed one is tried again).
    assert d.poll(("s", "ami-1"), lambda: "again").result() == "again"


def test_a_failed_download_raises_for_the_collector():
    d = Downloads()

    def boom():
        raise RuntimeError("agent went away")
    done = d.poll(("s", "ami-1"), boom)
    with pytest.raises(RuntimeError, match="agent went away"):
        done.result()


def test_keys_of_two_stores_do_not_meet():
    d = Downloads()
    assert d.poll(("a", "ami-1"), lambda: "a").result() == "a"
    assert d.poll(("b", "ami-1"), lambda: "b").result() == "b"


def test_sweep_partial_uploads(tmp_path):
    old, fresh = tmp_path / "upload-tmp-1.part", tmp_path / "upload-tmp-2.part"
    keep = tmp_path / "ami-1.qcow2"
    for p in (old, fresh, keep):
        p.write_bytes(b"x")
    past = time.time() - 7200
    os.utime(old, (past, past))
    os.utime(keep, (past, past))
    assert sweep_partial_uploads(tmp_path) == 1
    assert not old.exists() and fresh.exists() and keep.exists()
    assert sweep_partial_uploads(tmp_path / "missing") == 0
