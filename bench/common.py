"""Small helpers shared by the benchmarks in bench/: statistics, a machine note, free ports.

Benchmarks are scripts (not pytest tests); each prints its numbers next to a baseline measured in
the same run, so results are comparable across (loaded, shared) machines.
"""
from __future__ import annotations

import math
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path

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
