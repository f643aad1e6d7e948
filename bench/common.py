"""Small helpers shared by the benchmarks in bench/: statistics, a machine note, free ports, the
smoke-mode exit rule and the lab a benchmark runs on.

Benchmarks are scripts (not pytest tests); each prints its numbers next to a baseline measured in
the same run, so results are comparable across (loaded, shared) machines. Each has a `--smoke`
mode: the smallest run through the same code paths, which the test suite runs (bench/smoke.py)
to prove the benchmark still works, never to judge its numbers.
"""
from __future__ import annotations

import math
import os
import platform
import secrets
import shutil
import socket
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def percentile(xs: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100): no interpolation, always an observed value."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = max(1, math.ceil(p / 100 * len(s)))
    return s[k - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


def machine_note() -> str:
    """One line: date, CPU count, load average, Python, kernel; the context of the numbers."""
    load = os.getloadavg()
    return (f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; {os.cpu_count()} CPUs; "
            f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
            f"python {platform.python_version()}; kernel {platform.release()}")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the root namespace's loopback only)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_root() -> None:
    if os.geteuid() != 0:
        sys.exit("this benchmark needs root (lab namespaces, libvirtd)")


SMOKE_HELP = ("smoke run: the smallest run through the same code paths (seconds), printing the "
              "same result and baseline lines; a missed timing target does not fail it")


def exit_status(checks_ok: bool, target_ok: bool, smoke: bool) -> int:
    """The process's exit status: 1 when a correctness check failed, or when the timing target
    was missed in a real run. A smoke run's few, tiny samples on a shared machine judge nothing,
    so there only the checks count."""
    if smoke and checks_ok and not target_ok:
        print("smoke run: the target above is reported, not judged (too few, too small samples)")
    return 0 if checks_ok and (target_ok or smoke) else 1


@contextmanager
def bench_lab(lab_state: Path | None, hosts: int) -> Iterator:
    """The lab a benchmark runs on. With `lab_state`: a running lab (its state dir, as
    `python -m lab up` or the test suite's session fixture made it), used as it is and left
    running. Without: a lab of the benchmark's own (prefix `kb` + 6 hex, a free port on
    127.0.0.1, a temporary state dir), brought up with `hosts` hosts and always torn down."""
    from lab import Lab
    from lab import state as lab_state_file
    if lab_state is not None:
        found = lab_state_file.load(lab_state)
        if found is None or len(found.hosts) < hosts:
            raise SystemExit(f"{lab_state}: no running lab with at least {hosts} host(s)")
        lab = Lab(lab_state, prefix=found.prefix)
        print(f"lab {lab.prefix} (running, {len(found.hosts)} hosts); controller {lab.url}",
              flush=True)
        yield lab
        return
    state = Path(tempfile.mkdtemp(prefix="kumo-bench-lab-"))
    # Not 0700: the agents' DHCP servers drop to the dnsmasq user and read files under it.
    state.chmod(0o755)
    lab = Lab(state, prefix="kb" + secrets.token_hex(3), listen=f"127.0.0.1:{free_port()}")
    try:
        t = time.time()
        lab.up(hosts=hosts)
        print(f"lab {lab.prefix} up with {hosts} host(s) in {time.time() - t:.1f} s; "
              f"controller {lab.url}", flush=True)
        yield lab
    finally:
        try:
            lab.down()
        finally:
            shutil.rmtree(state, ignore_errors=True)
