"""A per-instance token-bucket rate limit for the metadata service.

This module owns only the arithmetic: RateLimiter.allow(key) says whether one more request of
that key (the instance id) fits. server.py decides what happens when it does not (429, as EC2's
throttling answers). Buckets are per instance so one guest hammering the service cannot starve
the others on its host; the clock is monotonic seconds and injectable for tests. Buckets of
keys not seen for a while are dropped, so the table cannot grow without bound.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """`rate` requests per second sustained, bursts of up to `burst`, per key."""

    def __init__(self, rate: float = 50.0, burst: int = 100,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 4096) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    def allow(self, key: str) -> bool:
        """Take one token from key's bucket; False when it is empty."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._forget_full(now)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        else:
            elapsed = max(0.0, now - bucket.stamp)
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate)
            bucket.stamp = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def _forget_full(self, now: float) -> None:
        # A bucket that would be full again carries no state worth keeping.
        refill = self.burst / self.rate
        for key in [k for k, b in self._buckets.items() if now - b.stamp >= refill]:
            del self._buckets[key]
        if len(self._buckets) >= self._max_keys:  # all busy: forget the oldest
            oldest = min(self._buckets, key=lambda k: self._buckets[k].stamp)
            del self._buckets[oldest]
