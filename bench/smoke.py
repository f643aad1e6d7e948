"""How the test suite runs a benchmark's smoke mode (tests/functional/test_bench_smoke.py,
tests/lab/test_bench_smoke_lab.py): as its own process, the way a developer runs it, so its
argument parsing, set-up, clean-up and exit status are what is tested.

A smoke run passes when the benchmark exits 0 and printed every result line it is expected to
print (its measurements, its same-run baseline and its comparison); the numbers on those lines
are never judged.
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def run_smoke(script: str, *args: str, expect: list[str], timeout: float = 600) -> str:
    """Run `bench/<script> --smoke ARGS`; assert exit 0 and a line matching every regex in
    `expect` (re.search per line). Returns the output, after printing how long it took."""
    argv = [sys.executable, str(BENCH / script), "--smoke", *args]
    t = time.monotonic()
    r = subprocess.run(argv, cwd=BENCH.parent, capture_output=True, text=True, timeout=timeout)
    took = time.monotonic() - t
    out = r.stdout
    print(f"{script} --smoke: exit {r.returncode} after {took:.1f} s")
    assert r.returncode == 0, (f"{' '.join(argv)} exited {r.returncode}\n--- stdout\n{out[-4000:]}"
                               f"\n--- stderr\n{r.stderr[-4000:]}")
    lines = out.splitlines()
    missing = [rx for rx in expect if not any(re.search(rx, line) for line in lines)]
    assert not missing, f"{script} --smoke printed no line matching {missing}:\n{out[-4000:]}"
    return out
