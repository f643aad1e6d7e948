"""bench/bench_failover.py --smoke (two controllers on a throw-away PostgreSQL, leader kills,
the change feed's wake-up) still runs and prints its result lines; skipped without PostgreSQL
(tests/functional/pg.py)."""
from __future__ import annotations

import pytest

from bench.smoke import run_smoke
from tests.functional.pg import why_unavailable

pytestmark = pytest.mark.slow


def test_bench_failover_smoke():
    reason = why_unavailable()
    if reason:
        pytest.skip(f"needs PostgreSQL: {reason}")
    run_smoke("bench_failover.py", timeout=300, expect=[
        r"one controller describe .*median .*p95 .*req/s",
        r"two controllers run-instances .*median .*p95 .*req/s",
        r"two vs one all .*throughput",
        r"takeover n=2 +median \d+ ms +p95 \d+ ms +max \d+ ms",
        r"wake periodic tick +n=3 +median \d+ ms",
        r"wake change feed +n=3 +median \d+ ms"])
