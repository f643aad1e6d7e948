"""The cloud's own health in the Prometheus text format (GET /metrics): hosts up/down, instances
by state, reconcile lag, and metric ingest. Computed from the database at each scrape (plus the
process's ingest counters), rendered with prometheus_client into a fresh registry, so nothing
global is registered and two apps in one process never share numbers.
"""
from __future__ import annotations

from datetime import datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import func, select

from controller.db import Database
from controller.ids import utcnow
from controller.models.host import Host
from controller.models.instance import Instance
from controller.services.metrics import IngestCounters

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
INSTANCE_STATES = ("pending", "running", "stopping", "stopped", "shutting-down", "terminated")


class _Snapshot:
    """One scrape's numbers, read in one transaction."""

    def __init__(self, db: Database, now: datetime):
        with db.session(notify=False) as s:
            self.hosts = s.execute(select(Host.host_id, Host.state, Host.enabled)).all()
            self.instances = dict(s.execute(select(Instance.state, func.count())
                                            .group_by(Instance.state)).all())
            # Desired generations the agents have not acknowledged yet: how far the cloud is
            # behind what users asked for. Lag = age of the oldest such change.
            pending = (select(func.count(), func.min(Instance.updated_at))
                       .where(Instance.generation > Instance.acked_generation,
                              Instance.state != "terminated"))
            self.pending, oldest = s.execute(pending).one()
        if isinstance(oldest, str):
            oldest = datetime.fromisoformat(oldest)
        if oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=now.tzinfo)
        self.lag = max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0


class _Collector:
    def __init__(self, snap: _Snapshot, counters: IngestCounters):
        self.snap, self.counters = snap, counters

    def collect(self):
        snap = self.snap
        up = GaugeMetricFamily("kumo_host_up", "1 when the host's agent heartbeats in time.",
                               labels=["host_id", "enabled"])
        for host_id, state, enabled in snap.hosts:
            up.add_metric([host_id, str(bool(enabled)).lower()], 1.0 if state == "up" else 0.0)
        yield up
        hosts = GaugeMetricFamily("kumo_hosts", "Hosts by state.", labels=["state"])
        for state in ("up", "down"):
            hosts.add_metric([state], float(sum(1 for h in snap.hosts if h[1] == state)))
        yield hosts
        inst = GaugeMetricFamily("kumo_instances", "Instances by state (terminated ones until "
                                 "they are purged).", labels=["state"])
        for state in sorted(set(INSTANCE_STATES) | set(snap.instances)):
            inst.add_metric([state], float(snap.instances.get(state, 0)))
        yield inst
        yield GaugeMetricFamily("kumo_reconcile_pending_instances",
                                "Instances whose desired generation no agent acknowledged yet.",
                                value=float(snap.pending))
        yield GaugeMetricFamily("kumo_reconcile_lag_seconds",
                                "Age of the oldest desired change not acknowledged by an agent.",
                                value=snap.lag)
        c = self.counters
        with c.lock:
            accepted, rejected, batches = c.accepted, c.rejected, c.batches
            dropped = dict(c.agent_dropped)
        yield CounterMetricFamily("kumo_metric_samples_ingested",
                                  "Metric samples stored since the controller started.",
                                  value=float(accepted))
        yield CounterMetricFamily("kumo_metric_samples_rejected",
                                  "Metric samples refused (unknown instance, time out of range).",
                                  value=float(rejected))
        yield CounterMetricFamily("kumo_metric_batches", "Metric batches received.",
                                  value=float(batches))
        agent = CounterMetricFamily("kumo_agent_metric_samples_dropped",
                                    "Samples an agent dropped from its full buffer (its total).",
                                    labels=["host_id"])
        for host_id in sorted(dropped):
            agent.add_metric([host_id], float(dropped[host_id]))
        yield agent


def render(db: Database, counters: IngestCounters) -> bytes:
    """The exposition text of the cloud's health now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(_Snapshot(db, utcnow()), counters))
    return generate_latest(registry)
