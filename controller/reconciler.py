"""The reconciler: a background loop (started in the app lifespan) that makes agents match the
database and the database match the clock.

Each tick: mark silent hosts down; apply transitional-state deadlines; purge long-terminated
instances; make the storage node match the volumes (controller/volume_sync.py, before the
instance specs, which carry the volumes' exports); rebuild every host's VPC dataplane document (services/host_networks.py) when its inputs
changed, and push those the host has not acknowledged; push desired specs whose generation the agent has not
acknowledged; delete domains of
shutting-down instances (and orphans agents report); fold each answer into the instance. Work is
per object: one failure is logged and never stops the loop (nova's _sync_power_states habit).
Agent calls happen outside database transactions.

The loop runs a tick every `reconcile_interval_s` and also as soon as `wake()` is called: the
app registers it as the database's change listener (controller/db.py), so every commit that
changed something wakes it, whoever made the change (an API request, or the controller's own
services), and a new spec or network change reaches its agents without waiting for the next
tick. Wake-ups during a tick coalesce into one more tick. The reconciler's own writes (and the
agents' heartbeats) commit with notify=False: their consequences are this loop's work already,
and a loop woken by its own writes would never rest. The periodic tick stays the
level-triggered safety net. Ticks only load the rows that need work.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, or_
from sqlmodel import select

from agent.contract.v1 import InstanceSpec, NetworkSpec
from controller import specs
from controller.agents import AgentError, AgentPool, StaleGeneration
from controller.db import Database
from controller.ids import utcnow
from controller.models import ClientToken, Host, Image, Instance, Subnet, Vpc
from controller.services import (capture_downloads, host_networks, hosts, image_capture,
                                 instance_metadata,
                                 images, lifecycle, volume_attachments)
from controller.settings import Settings
from controller.storage import StorageClient
from controller.snapshot_sync import sync_snapshots
from controller.volume_sync import VolumeSync

log = logging.getLogger(__name__)

#: Longest wait between retries of one object after repeated agent failures.
MAX_BACKOFF_S = 30.0
#: Host network documents are rebuilt when their inputs' fingerprint changes, and at least this
#: often regardless (the level-triggered safety net, should an input ever escape the fingerprint).
NETWORK_FULL_REBUILD_S = 60.0


@dataclass(frozen=True)
class Work:
    kind: str  # "put" | "delete" | "orphan" | "network"
    instance_id: str  # for "network": the host id
    agent_url: str
    generation: int = 0
    spec: InstanceSpec | NetworkSpec | None = None
    host_id: str | None = None  # whose certificate the agent at agent_url must present


class Reconciler:
    def __init__(self, db: Database, settings: Settings, pool: AgentPool,
                 storage: StorageClient | None = None):
        self.db, self.settings, self.pool, self.storage = db, settings, pool, storage
        self._tick_lock = threading.Lock()
        self._orphans: dict[str, set[str]] = {}
        self._orphans_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="kumo-reconcile")
        # Volumes on the storage node (skipped silently without a storage service).
        self.volumes = VolumeSync(db, settings, storage, self._executor)
        # Per-object retry backoff after agent failures: (instance id, kind, generation) ->
        # (failures, not before). A new generation or action starts afresh.
        self._backoff: dict[tuple, tuple[int, float]] = {}
        self._backoff_lock = threading.Lock()
        # Set by run_forever: the loop's event loop and the event wake() sets from any thread.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        # The host network documents of the last rebuild: (inputs fingerprint, monotonic time,
        # host id -> NetworkSpec). Ticks run under _tick_lock, so no lock of its own.
        self._networks: tuple[str, float, dict[str, NetworkSpec]] | None = None
        self.network_rebuilds = 0
        #: When the last tick ended (`kumo admin status` shows the leader's).
        self.last_tick_at = None

    def wake(self) -> None:
        """Run a tick now (thread-safe; a no-op when the background loop is not running)."""
        loop, event = self._loop, self._wakeup
        if loop is None or event is None:
            return
        try:
            loop.call_soon_threadsafe(event.set)
        except RuntimeError:  # the loop has closed
            pass

    def note_orphans(self, host_id: str, instance_ids: set[str]) -> None:
        if instance_ids:
            with self._orphans_lock:
                self._orphans.setdefault(host_id, set()).update(instance_ids)

    # -- one pass ---------------------------------------------------------------------------
    def tick(self) -> dict:
        """One full pass; returns counters (tests and logs use them)."""
        with self._tick_lock:
            stats = {"pushed": 0, "deleted": 0, "errors": 0, "networks": 0}
            try:
                hosts.check_liveness(self.db, self.settings.heartbeat_timeout_s)
            except Exception:
                log.exception("host liveness check failed")
                stats["errors"] += 1
            stats["errors"] += self._deadlines_and_purge()
            try:  # images being made from instances, and files of deregistered images
                image_capture.advance(self.db, self.settings, self.pool)
                images.sweep_image_files(self.db, self.settings)
                capture_downloads.sweep_partial_uploads(image_capture.images_dir(self.settings))
            except Exception:
                log.exception("image capture / image file sweep failed")
                stats["errors"] += 1
            if self.storage is not None:
                # Snapshots first: one asked for before its volume's delete is taken before it.
                try:
                    stats["errors"] += sync_snapshots(self.db, self.settings, self.storage)
                except Exception:
                    log.exception("snapshot sync failed")
                    stats["errors"] += 1
                try:
                    vstats = self.volumes.run()
                except Exception:
                    log.exception("volume sync failed")
                    vstats = {"volumes": 0, "errors": 1}
                stats["volumes"] = vstats["volumes"]
                stats["errors"] += vstats["errors"]
            planned = self._plan()
            with self._backoff_lock:  # forget objects that no longer need work
                wanted = {self._key(w) for w in planned}
                self._backoff = {k: v for k, v in self._backoff.items() if k in wanted}
            work = [w for w in planned if self._due(w)]
            for ok, kind in self._executor.map(self._do, work):
                if ok and kind == "network":
                    stats["networks"] += 1
                elif ok and kind == "put":
                    stats["pushed"] += 1
                elif ok:
                    stats["deleted"] += 1
                else:
                    stats["errors"] += 1
            self.last_tick_at = utcnow()
            return stats

    def _deadlines_and_purge(self) -> int:
        errors = 0
        now = utcnow()
        with self.db.session(notify=False) as s:
            due = or_(Instance.state_deadline <= now, Instance.status_deadline <= now)
            ids = list(s.exec(select(Instance.instance_id)
                              .where(Instance.state != "terminated", due)))
        for iid in ids:
            try:
                with self.db.session(notify=False) as s:
                    inst = s.get(Instance, iid)
                    if inst is not None:
                        lifecycle.apply_deadlines(s, inst, self.settings, now)
            except Exception:
                log.exception("deadline check failed for %s", iid)
                errors += 1
        cutoff = now - timedelta(seconds=self.settings.terminated_retention_s)
        try:
            with self.db.session(notify=False) as s:
                s.exec(delete(Instance).where(Instance.state == "terminated",
                                              Instance.terminated_at < cutoff))
                live = select(Instance.reservation_id).distinct()
                s.exec(delete(ClientToken).where(ClientToken.reservation_id.not_in(live),
                                                 ClientToken.created_at < cutoff))
        except Exception:
            log.exception("purge failed")
            errors += 1
        return errors

    def _plan_networks(self) -> list[Work]:
        """Network documents the hosts have not acknowledged (rebuilt from the database)."""
        work = []
        try:
            with self.db.session(notify=False) as s:
                docs, fresh = self._network_documents(s)
                for host in s.exec(select(Host)):
                    spec = docs.get(host.host_id)
                    if (spec is not None and host.state == "up"
                            and host.network_acked != spec.generation):
                        work.append(Work("network", host.host_id, host.agent_url,
                                         spec.generation, spec, host.host_id))
            if fresh is not None:  # committed: later ticks may reuse it
                self._networks = fresh
        except Exception:
            log.exception("building the hosts' network documents failed")
        return work

    def _network_documents(self, s) -> tuple[dict[str, NetworkSpec], tuple | None]:
        """Every host's NetworkSpec: the last rebuild's while the inputs are unchanged (and it is
        younger than NETWORK_FULL_REBUILD_S), else a rebuild, returned also as the new cache entry
        for the caller to keep once its transaction has committed."""
        now = time.monotonic()
        fingerprint = host_networks.inputs_fingerprint(s)
        last = self._networks
        if last is not None and last[0] == fingerprint and now - last[1] < NETWORK_FULL_REBUILD_S:
            return last[2], None
        docs = host_networks.refresh(s)
        self.network_rebuilds += 1
        # Keyed on the fingerprint read BEFORE the rebuild: whatever changed since (a commit
        # between two statements on PostgreSQL, or refresh() placing a NAT gateway) makes the
        # next tick's fingerprint differ and rebuild again. Extra rebuilds, never a missed one.
        return docs, (fingerprint, now, docs)

    def _plan(self) -> list[Work]:
        work: list[Work] = self._plan_networks()
        url = self.settings.resolved_agent_facing_url()
        with self.db.session(notify=False) as s:
            host_map = {h.host_id: h for h in s.exec(select(Host))}
            # Only rows with work: an unacknowledged spec, or a domain to delete. (Deadlines and
            # the purge select their own rows; host liveness is per host.)
            q = select(Instance).where(
                Instance.state != "terminated",
                or_(Instance.state == "shutting-down",
                    Instance.generation != Instance.acked_generation))
            for inst in s.exec(q):
                host = host_map.get(inst.host_id) if inst.host_id else None
                if inst.state == "shutting-down":
                    if host is None:
                        lifecycle.transition(s, inst, "terminated", self.settings,
                                             reason="never placed on a host")
                    elif host.state == "up":
                        work.append(Work("delete", inst.instance_id, host.agent_url,
                                         host_id=host.host_id))
                    continue
                if host is None or host.state != "up" or inst.generation == inst.acked_generation:
                    continue
                attachments = volume_attachments.attachments_of(s, inst.instance_id)
                if specs.volumes_pending(attachments):
                    # Not ready: a spec without the volume would be acknowledged without it.
                    # The volume sync records the export (earlier in a tick), then it goes.
                    continue
                image = s.get(Image, inst.image_id)
                try:
                    nic = None
                    if inst.vpc_id and inst.subnet_id and inst.mac and inst.private_ip:
                        nic = specs.vpc_nic(inst, s.get(Vpc, inst.vpc_id),
                                            s.get(Subnet, inst.subnet_id))
                    # Optional spec fields go only to agents that understand them (an
                    # older agent refuses unknown fields): see specs.build.
                    metadata = (instance_metadata.wire(s, inst,
                                                       self.settings.availability_zone,
                                                       self.settings.state_dir)
                                if "instance-metadata" in (host.extensions or []) else None)
                    spec = specs.build(inst, image, host, url, nic,
                                       specs.spec_volumes(
                                           attachments,
                                           "volumes-rbd-cephx" in (host.extensions or [])),
                                       metadata)
                except Exception as exc:  # e.g. an image row gone: fail this instance only
                    log.exception("cannot build spec for %s", inst.instance_id)
                    inst.observed_error = f"SpecError: {exc}"[:1024]
                    s.add(inst)
                    continue
                work.append(Work("put", inst.instance_id, host.agent_url, inst.generation, spec,
                                 host.host_id))
            with self._orphans_lock:
                orphans, self._orphans = self._orphans, {}
            for host_id, ids in orphans.items():
                host = host_map.get(host_id)
                if host is None:
                    continue
                # A report older than a move back to this host (a start placed the instance
                # there again since, services/instance_moves.py) is no orphan any more: deleting
                # it would race the new spec's PUT.
                mine = set(s.exec(select(Instance.instance_id).where(
                    Instance.host_id == host_id, Instance.state != "terminated",
                    Instance.instance_id.in_(ids)))) if ids else set()
                work += [Work("orphan", iid, host.agent_url, host_id=host.host_id)
                         for iid in sorted(ids - mine)]
        return work

    @staticmethod
    def _key(w: Work) -> tuple:
        return (w.instance_id, w.kind, w.generation)

    def _due(self, w: Work) -> bool:
        with self._backoff_lock:
            entry = self._backoff.get(self._key(w))
        return entry is None or time.monotonic() >= entry[1]

    def _failed(self, w: Work) -> None:
        with self._backoff_lock:
            # Forget entries of other generations/actions of this instance.
            for k in [k for k in self._backoff if k[0] == w.instance_id and k != self._key(w)]:
                del self._backoff[k]
            failures = self._backoff.get(self._key(w), (0, 0.0))[0] + 1
            delay = min(MAX_BACKOFF_S, 0.5 * 2 ** (failures - 1))
            self._backoff[self._key(w)] = (failures, time.monotonic() + delay)

    def _do(self, w: Work) -> tuple[bool, str]:
        try:
            if w.kind == "network":
                self._push_network(w)
            elif w.kind == "put":
                self._push(w)
            else:
                self.pool.for_url(w.agent_url, w.host_id).delete_instance(w.instance_id)
                if w.kind == "delete":
                    self._deleted(w.instance_id)
            with self._backoff_lock:
                self._backoff.pop(self._key(w), None)
            return True, w.kind
        except AgentError as exc:
            log.warning("%s %s via %s failed: %s", w.kind, w.instance_id, w.agent_url, exc)
            if w.kind != "network":
                self._note_error(w.instance_id, exc)
        except Exception:
            log.exception("%s %s failed", w.kind, w.instance_id)
        self._failed(w)
        return False, w.kind

    def _push(self, w: Work) -> None:
        client = self.pool.for_url(w.agent_url, w.host_id)
        try:
            obs = client.put_instance(w.spec)
        except StaleGeneration:
            # The agent accepted a newer generation than ours: learn it and supersede next tick.
            current = client.get_instance(w.instance_id)
            with self.db.session(notify=False) as s:
                inst = s.get(Instance, w.instance_id)
                if inst is not None and current is not None:
                    inst.generation = max(inst.generation, current.generation + 1)
                    s.add(inst)
            raise
        with self.db.session(notify=False) as s:
            inst = s.get(Instance, w.instance_id)
            if inst is None or inst.state in ("shutting-down", "terminated"):
                return
            inst.last_pushed_at = utcnow()
            lifecycle.apply_observed(s, inst, obs, self.settings)
            volume_attachments.apply_observed_volumes(s, inst, obs)

    def _push_network(self, w: Work) -> None:
        client = self.pool.for_url(w.agent_url, w.host_id)
        try:
            obs = client.put_network(w.spec)
        except StaleGeneration:
            # The agent holds a newer generation (e.g. this database was restored): move past it.
            current = client.get_network()
            with self.db.session(notify=False) as s:
                host = s.get(Host, w.instance_id)
                if host is not None and current.generation >= host.network_generation:
                    host.network_generation = current.generation + 1
                    s.add(host)
            # The kept documents carry the old generation: rebuild them at the next tick
            # (not after NETWORK_FULL_REBUILD_S) so the host gets the restored network at once.
            self._networks = None
            raise
        with self.db.session(notify=False) as s:
            host = s.get(Host, w.instance_id)
            if host is not None and obs.generation >= w.generation:
                host.network_acked = max(host.network_acked, w.generation)
                s.add(host)

    def _deleted(self, instance_id: str) -> None:
        with self.db.session(notify=False) as s:
            inst = s.get(Instance, instance_id)
            if inst is not None and inst.state == "shutting-down":
                lifecycle.transition(s, inst, "terminated", self.settings,
                                     reason="host deleted the domain")

    def _note_error(self, instance_id: str, exc: AgentError) -> None:
        try:
            with self.db.session(notify=False) as s:
                inst = s.get(Instance, instance_id)
                if inst is not None and inst.state != "terminated":
                    inst.observed_error = f"{exc.code}: {exc.message}"[:1024]
                    s.add(inst)
        except Exception:
            log.exception("could not record agent error for %s", instance_id)

    # -- background loop --------------------------------------------------------------------
    async def run_forever(self) -> None:
        interval = self.settings.reconcile_interval_s
        self._wakeup = event = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        try:
            while True:
                # Cleared before the tick: a wake-up during it (a commit this tick's queries may
                # have missed) runs one more tick right after; a burst of them coalesces.
                event.clear()
                try:
                    await asyncio.to_thread(self.tick)
                except Exception:
                    log.exception("reconciler tick failed")
                try:
                    await asyncio.wait_for(event.wait(), timeout=interval)
                except TimeoutError:
                    pass
                # Python 3.11's wait_for returns instead of raising when the task is cancelled
                # just as the event is set: honour that cancellation, or a stop waits forever.
                if asyncio.current_task().cancelling():
                    raise asyncio.CancelledError
        finally:
            self._loop = self._wakeup = None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self.storage is not None:
            self.storage.close()
