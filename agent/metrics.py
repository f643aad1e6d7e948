"""The metrics sampler: per-instance samples from the hypervisor, buffered and pushed in batches.

Every `metrics_interval` seconds, in its own thread (like the heartbeat), it reads
Hypervisor.stats() for every domain, turns two consecutive samples of one run into one
MetricSample (agent/drivers/stats.py does the arithmetic; a restart in between yields nothing),
appends it to a bounded buffer and POSTs the oldest samples in batches to the controller's
`/v1/agent/metrics` (agent/contract/metrics_v1.py). While the controller is away the buffer
keeps the newest `metrics_buffer_samples`: the oldest are dropped first, and counted
(MetricsBatch.dropped_total). A batch leaves the buffer only once the controller stored it.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Callable

import httpx

from agent.contract import transport
from agent.contract.metrics_v1 import MAX_BATCH_SAMPLES, MetricsAck, MetricsBatch, MetricSample
from agent.contract.v1 import INSTANCE_ID_RE
from agent.drivers.stats import DomainStats, counter_deltas, cpu_utilization
from agent.settings import AgentSettings

log = logging.getLogger(__name__)

#: Batches sent per tick at most: a long backlog drains over a few ticks, and sampling goes on.
MAX_BATCHES_PER_TICK = 20


def to_sample(prev: DomainStats, cur: DomainStats) -> MetricSample | None:
    """The sample of what `cur`'s instance did since `prev`; None unless both are of one run
    of an instance (a domain named like an instance id) and time went forward."""
    if not INSTANCE_ID_RE.match(cur.name):
        return None
    cpu = cpu_utilization(prev, cur)
    d = counter_deltas(prev, cur)
    if cpu is None or d is None:
        return None
    return MetricSample(instance_id=cur.name, timestamp=cur.sampled_at_wall, interval=d.seconds,
                        values={"CPUUtilization": round(cpu * 100.0, 3),
                                "NetworkIn": d.net_in_bytes, "NetworkOut": d.net_out_bytes,
                                "NetworkPacketsIn": d.net_in_packets,
                                "NetworkPacketsOut": d.net_out_packets,
                                "DiskReadBytes": d.disk_read_bytes,
                                "DiskWriteBytes": d.disk_write_bytes,
                                "DiskReadOps": d.disk_read_ops, "DiskWriteOps": d.disk_write_ops})


class SampleBuffer:
    """A bounded FIFO of samples: adding to a full buffer drops the oldest (counted in
    `dropped`). Thread-safe: the API may read its size while the sampler fills it."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.dropped = 0
        self._items: collections.deque[MetricSample] = collections.deque()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def add(self, sample: MetricSample) -> None:
        with self._lock:
            if len(self._items) >= self.capacity:
                self._items.popleft()
                self.dropped += 1
            self._items.append(sample)

    def peek(self, n: int) -> list[MetricSample]:
        """The `n` oldest samples, left in the buffer (removed by remove() once sent)."""
        with self._lock:
            return [self._items[i] for i in range(min(n, len(self._items)))]

    def remove(self, batch: list[MetricSample]) -> None:
        """Forget a sent batch. Samples dropped meanwhile (the buffer overflowed while the
        batch was in flight) were the oldest, so only the ones still at the head go."""
        with self._lock:
            sent = {id(s) for s in batch}
            while self._items and id(self._items[0]) in sent:
                self._items.popleft()


class Sampler:
    """Background sampler and sender of metrics."""

    def __init__(self, settings: AgentSettings, hypervisor,
                 client_factory: Callable[[], httpx.Client] | None = None, tls=None):
        self.settings = settings
        self.hypervisor = hypervisor
        self.buffer = SampleBuffer(settings.metrics_buffer_samples)
        self.batch_size = min(settings.metrics_batch_samples, MAX_BATCH_SAMPLES)
        self.sent = 0          # samples the controller stored
        self.failures = 0      # POSTs that failed
        self.last_error: str | None = None
        self._last: dict[str, DomainStats] = {}
        # `tls`: the host's client SSL context (auth "mtls"), else the shared token.
        self._client_factory = client_factory or (lambda: transport.client(
            settings.controller_url, None if tls is not None else settings.token,
            timeout=min(10.0, max(2.0, self.interval)), tls=tls))
        self._client: httpx.Client | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def interval(self) -> float:
        return self.settings.metrics_interval

    def start(self) -> None:
        if not self.settings.controller_url or self.interval <= 0:
            log.info("metrics sampler disabled (no controller_url or metrics_interval 0)")
            return
        self._thread = threading.Thread(target=self._main, name="kumo-metrics", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._client is not None:
            self._client.close()

    def sample_once(self) -> int:
        """Read every domain's counters; buffer one sample per instance that ran through the
        whole interval. Returns the number of samples buffered."""
        stats = self.hypervisor.stats()
        seen: dict[str, DomainStats] = {}
        added = 0
        for cur in stats:
            if not cur.active:
                continue  # no counters; the next run starts a fresh pair
            seen[cur.name] = cur
            prev = self._last.get(cur.name)
            sample = to_sample(prev, cur) if prev is not None else None
            if sample is not None:
                self.buffer.add(sample)
                added += 1
        # Domains gone or stopped are forgotten: a sample never spans a run it did not see.
        self._last = seen
        return added

    def flush(self) -> int:
        """POST the buffered samples, oldest first, until the buffer is empty, a POST fails or
        MAX_BATCHES_PER_TICK were sent. Returns the samples the controller stored."""
        stored = 0
        for _ in range(MAX_BATCHES_PER_TICK):
            batch = self.buffer.peek(self.batch_size)
            if not batch:
                break
            body = MetricsBatch(host_id=self.settings.host_id, samples=batch,
                                dropped_total=self.buffer.dropped, sent_at=time.time())
            if self._client is None:
                self._client = self._client_factory()
            r = self._client.post("/v1/agent/metrics", json=body.model_dump(mode="json"))
            r.raise_for_status()
            ack = MetricsAck.model_validate(r.json())
            # Rejected samples (an instance the controller forgot) are answered too: the batch
            # is done either way, and resending it would be refused again.
            self.buffer.remove(batch)
            stored += ack.accepted
        self.sent += stored
        return stored

    def tick(self) -> None:
        try:
            self.sample_once()
        except Exception as e:  # a hypervisor hiccup: next tick
            log.warning("metrics: stats failed: %s", e)
        try:
            self.flush()
            self.last_error = None
        except Exception as e:  # unreachable, 5xx, garbage: samples stay buffered, retried
            self.failures += 1
            if self.last_error != str(e):
                log.warning("metrics to %s failed: %s", self.settings.controller_url, e)
            self.last_error = str(e)
            if self._client is not None:
                self._client.close()
                self._client = None

    def _main(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.tick()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
