"""The benchmarks that need neither root nor a lab still run: each one's smoke mode (bench/*.py
--smoke) exits 0 and prints its result lines, its same-run baseline and its comparison. Their
numbers are not judged here (bench/RESULTS.md records real runs).
"""
from __future__ import annotations

import shutil

import pytest

from bench.smoke import run_smoke

NUM = r"[0-9.]+"


def test_bench_scheduler_smoke():
    run_smoke("bench_scheduler.py", timeout=120, expect=[
        rf"^kumo scheduler \(spread\) +50 decisions in +{NUM} ms = +{NUM} decisions/s wall",
        r"^baseline: naive same policy +50 decisions in .*overbooked hosts: 0$",
        r"^baseline: sort-only policy +50 decisions in .*overbooked hosts: 0$",
        r"^placements identical to naive same-policy baseline: \d+/50$",
        r"^count=10000 on 50 hosts: NoValidHost after placing \d+ \(expected\)$",
        r"^speed-up vs naive same-policy: .*target >= 500 decisions/s: (PASS|FAIL)$",
    ])


@pytest.mark.slow
def test_bench_network_docs_smoke():
    run_smoke("bench_network_docs.py", timeout=300, expect=[
        r"^50 instances in one VPC on 3 hosts",
        rf"^  full rebuild \(baseline\) +{NUM} ms",
        rf"^  inputs fingerprint +{NUM} ms .*less than the baseline",
        rf"^  idle tick +{NUM} ms .*less than the baseline",
        rf"^  tick after a change +{NUM} ms",
    ])


@pytest.mark.slow
def test_bench_describe_smoke():
    run_smoke("bench_describe.py", timeout=300, expect=[
        r"^inserted 300 instances",
        r"^  kumo API  GET /v1/instances page +median",
        r"^  baseline raw SQL page \(LIMIT/OFFSET\) median",
        r"^  baseline raw SQL whole account +median",
        r"^  API / raw page: \d+x",
        r"^  service list_instances \(ORM\) +" + NUM,
        r"^target: 100-instance page under 50 ms \(median and p95\): (PASS|FAIL)",
    ])


@pytest.mark.skipif(not (shutil.which("qemu-img") and shutil.which("qemu-io")),
                    reason="qemu-img / qemu-io missing (package qemu-utils)")
def test_bench_root_disk_smoke():
    run_smoke("bench_root_disk.py", timeout=300, expect=[
        r"^  kumo ensure_root_disk +16 MiB .* 512 MiB .* ratio",
        r"^  overlay only \(qemu-img create\) +16 MiB",
        r"^  baseline copy-qcow2 \(convert\) +16 MiB",
        r"^  baseline copy-raw \(convert -S 0\) +16 MiB",
        r"^overlay O\(1\) in image size .*: (PASS|FAIL)",
        r"^kumo overlay vs baseline copy-raw \(convert -S 0\) at 512 MiB: \d+x faster",
    ])


def test_bench_autoscaling_smoke():
    run_smoke("bench_autoscaling.py", timeout=180, expect=[
        rf"^  kumo tick \(policies \+ schedules\) +median +{NUM} ms .* \d+ SQL statements/tick",
        r"^  tick result: .*desired capacity unchanged: True \(OK\)$",
        rf"^  baseline: one SELECT of every group's avg CPU \(sqlite3\) +median +{NUM} ms",
        rf"^  baseline: same tick, no policies or schedules +median +{NUM} ms",
        r"^  tick / one-SELECT floor: \d+x; tick / structure-only tick: [0-9.]+x$",
        r"^target: a 20-group tick within the 2 s interval: (PASS|FAIL)$",
        rf"^  kumo metrics.ingest +{NUM} s = +{NUM} samples/s",
        rf"^  baseline plain executemany +{NUM} s = +{NUM} samples/s .*kumo / baseline time",
        rf"^  metric_rollup.maintain: \d+ raw rows -> \d+ rollup rows .* = {NUM} raw rows/s",
        rf"^  store: {NUM} bytes per raw row, {NUM} bytes per rollup row",
        rf"^  10,000 instances after retention .* total {NUM} GiB$",
        r"^  ingest checks \(nothing rejected, everything rolled up\): OK$",
    ])


def test_bench_billing_smoke():
    run_smoke("bench_billing.py", timeout=120, expect=[
        r"^account bill: 20 instances x 10 transitions in 1 account\(s\): 120 usage intervals",
        rf"^  kumo bills \(1 bill\(s\)\) +{NUM} s  peak traced +{NUM} MiB",
        rf"^  open bill, settled days kept: first read +{NUM} s, second read +{NUM} s .*: "
        r"identical$",
        rf"^  baseline SQL SUM +{NUM} s  peak traced +{NUM} MiB",
        rf"^  kumo / baseline: {NUM}x time",
        r"^  instance seconds: kumo \d+ baseline \d+: identical$",
        rf"^  metering backfill at start-up \(20 running instances\): +{NUM} s, opened 0$",
        r"^site bills: 100 instances x 4 transitions in 5 account\(s\)",
        r"^max RSS \d+ MiB",
    ])
