"""The level-triggered reconcile loop of one host.

Every `resync_interval` (and at once when kicked after a PUT/DELETE) each accepted instance that
is not already being worked on and not waiting out its backoff is handed to a worker thread,
which converges it with the planner. One instance's failure becomes an ErrorInfo on its observed
state and a growing backoff; it never stops the others. Domains and instance directories named
like Kumo instances that no accepted spec wants (orphans) are torn down; then cached images no
accepted spec uses (running or stopped: a stopped instance's overlay still needs its base) are
pruned from the host's image cache.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from agent.contract.v1 import INSTANCE_ID_RE, AttachedVolume, ErrorInfo, InstanceObserved
from agent.drivers.base import DriverError
from agent.reconcile.planner import Aborted, execute
from agent.reconcile.readiness import check_ready
from agent.reconcile.steps import Drivers, InstanceContext, attached_volumes, steps_for
from agent.state import Backoff, StateStore

log = logging.getLogger(__name__)


class Reconciler:
    """Owns the background loop, the per-instance locks, errors and backoff."""

    def __init__(self, store: StateStore, drivers: Drivers, *, shutdown_timeout: float = 30.0,
                 resync_interval: float = 2.0, readiness_interval: float = 0.1,
                 max_backoff: float = 60.0, workers: int = 4,
                 clock: Callable[[], float] = time.time,
                 on_change: Callable[[], None] | None = None):
        self.store = store
        self.drivers = drivers
        self.shutdown_timeout = shutdown_timeout
        self.resync_interval = resync_interval
        self.readiness_interval = readiness_interval
        self.max_backoff = max_backoff
        self.workers = workers
        self.clock = clock
        self.on_change = on_change or (lambda: None)
        self._mu = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._inflight: set[str] = set()
        self._pending: set[str] = set()
        self._errors: dict[str, ErrorInfo] = {}
        self._backoff: dict[str, Backoff] = {}
        self._last: dict[str, InstanceObserved] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._readiness_thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._pass_error: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        self._pool = ThreadPoolExecutor(max_workers=self.workers,
                                        thread_name_prefix="kumo-reconcile")
        self._thread = threading.Thread(target=self._main, name="kumo-reconcile-loop",
                                        daemon=True)
        self._thread.start()
        self._readiness_thread = threading.Thread(target=self._watch_readiness,
                                                  name="kumo-readiness", daemon=True)
        self._readiness_thread.start()
        self._wake.set()  # first pass right away: repair drift that happened while we were down

    def stop(self, timeout: float = 10.0) -> None:
        """Stop between steps; guests are left exactly as they are.

        Waits (up to `timeout`) for workers to finish the driver call they are in and save
        their runtime records, so a new agent over the same state dir sees what was done."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._readiness_thread is not None:
            self._readiness_thread.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        while time.monotonic() < deadline:
            with self._mu:
                if not self._inflight:
                    break
            time.sleep(0.01)

    def kick(self, instance_id: str | None = None) -> None:
        """Reconcile now (the instance at once, even if it was backing off)."""
        with self._mu:
            if instance_id is not None:
                self._backoff.pop(instance_id, None)
                if instance_id in self._inflight:
                    self._pending.add(instance_id)
        self._wake.set()

    def _main(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.resync_interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self._dispatch()
                self.sweep_orphans()
                self.prune_images()
                self._pass_error = None
            except Exception as e:  # the loop itself must survive anything a driver does
                if str(e) != self._pass_error:  # once per distinct failure, not every second
                    log.exception("reconcile pass failed")
                self._pass_error = str(e)

    def _watch_readiness(self) -> None:
        """Scan the consoles of guests that are booting, much more often than the resync pass,
        so "booted" is reported within ~readiness_interval of the guest printing its marker."""
        while not self._stop.wait(self.readiness_interval):
            try:
                for iid in self.store.specs():
                    if self._check_readiness(iid):
                        self._publish(iid)
            except Exception:  # never let the watcher die; the resync pass checks too
                log.exception("readiness scan failed")

    def _check_readiness(self, iid: str) -> bool:
        lock = self._lock_for(iid)
        if not lock.acquire(blocking=False):
            return False  # a worker is reconciling it and checks readiness itself
        try:
            spec, rt = self.store.spec(iid), self.store.runtime(iid)
            if spec is None or rt.booted or rt.applied_power != "running":
                return False
            console = self.drivers.storage.instance_dir(iid) / "console.log"
            if not check_ready(rt, console, spec.image.ready_marker, self.clock()):
                return False
            self.store.save_runtime(iid)
            return True
        finally:
            lock.release()

    def _dispatch(self) -> None:
        now = time.monotonic()
        for iid in self.store.specs():
            with self._mu:
                b = self._backoff.get(iid)
                if iid in self._inflight or (b is not None and b.next_attempt > now):
                    continue
                self._inflight.add(iid)
            try:
                fut = self._pool.submit(self._worker, iid)
            except RuntimeError:  # pool shut down: we are stopping
                with self._mu:
                    self._inflight.discard(iid)
                return
            fut.add_done_callback(lambda f, i=iid: f.cancelled() and self._forget_inflight(i))

    def _forget_inflight(self, iid: str) -> None:
        with self._mu:
            self._inflight.discard(iid)

    def _worker(self, iid: str) -> None:
        try:
            self.reconcile_now(iid)
        except Exception:
            log.exception("reconcile of %s failed unexpectedly", iid)
        finally:
            with self._mu:
                self._inflight.discard(iid)
                again = iid in self._pending
                self._pending.discard(iid)
            if again:
                self._wake.set()

    def _lock_for(self, iid: str) -> threading.Lock:
        with self._mu:
            return self._locks.setdefault(iid, threading.Lock())

    # -- one instance ------------------------------------------------------------------------
    def reconcile_now(self, iid: str) -> InstanceObserved | None:
        """Converge one instance synchronously and return its observed state."""
        with self._lock_for(iid):
            spec = self.store.spec(iid)
            if spec is None:
                return None
            rt = self.store.runtime(iid)
            ctx = InstanceContext(spec=spec, rt=rt, drivers=self.drivers,
                                  shutdown_timeout=self.shutdown_timeout, clock=self.clock,
                                  save=lambda: self.store.save_runtime(iid))
            error: ErrorInfo | None = None
            try:
                self._bookkeep(ctx)
                execute(ctx, steps_for,
                        should_abort=lambda: self._stop.is_set() or self.store.spec(iid) is not spec,
                        on_step=lambda step: self.store.save_runtime(iid))
                if rt.defined_key is None and ctx.status().power != "absent":
                    rt.defined_key = ctx.plan_key()  # adopted a matching domain
                if ctx.status().power == "running":
                    check_ready(rt, ctx.console_log(), spec.image.ready_marker, self.clock())
            except Aborted:
                with self._mu:
                    self._pending.add(iid)
                return self.observed(iid)
            except DriverError as e:
                error = ErrorInfo(code=e.code, message=str(e), retryable=e.retryable)
            except Exception as e:  # a bug or an untranslated library error: keep going
                log.exception("reconcile of %s", iid)
                error = ErrorInfo(code="InternalError", message=f"{type(e).__name__}: {e}",
                                  retryable=True)
            finally:
                self.store.save_runtime(iid)
            self._record_result(iid, error)
        return self._publish(iid)

    def _bookkeep(self, ctx: InstanceContext) -> None:
        """Align the runtime record with facts that need no action."""
        rt, st = ctx.rt, ctx.status()
        if rt.boot_intent_offset is not None and st.power == "running":
            # An agent (maybe a previous process) started this domain and died before recording
            # the boot: it is our boot, and readiness counts from where it began.
            ctx.record_boot(rt.boot_intent_offset)
        elif rt.applied_power is None and st.power == "running":
            # A running domain we have no record of (runtime lost): adopt it, don't reboot it.
            rt.applied_power = "running"
            rt.applied_reboot_nonce = ctx.spec.reboot_nonce
            rt.console_offset = rt.console_scan_pos = ctx.console_size()
        if ctx.spec.power == "stopped" and st.power in ("shutoff", "absent") \
                and rt.applied_power != "stopped":
            ctx.record_stopped()

    def _record_result(self, iid: str, error: ErrorInfo | None) -> None:
        with self._mu:
            if error is None:
                self._errors.pop(iid, None)
                self._backoff.pop(iid, None)
                return
            self._errors[iid] = error
            b = self._backoff.setdefault(iid, Backoff())
            b.failures += 1
            delay = (min(self.max_backoff, 0.5 * 2 ** (b.failures - 1)) if error.retryable
                     else self.max_backoff)
            b.next_attempt = time.monotonic() + delay
        log.warning("instance %s: %s: %s (retry in %.1fs)", iid, error.code, error.message, delay)

    def _publish(self, iid: str) -> InstanceObserved | None:
        obs = self.observed(iid)
        with self._mu:
            changed = self._last.get(iid) != obs
            if obs is None:
                self._last.pop(iid, None)
            else:
                self._last[iid] = obs
        if changed:
            self.on_change()
        return obs

    # -- observed state ----------------------------------------------------------------------
    def error(self, iid: str) -> ErrorInfo | None:
        with self._mu:
            return self._errors.get(iid)

    def observed(self, iid: str) -> InstanceObserved | None:
        """What the host has for an accepted instance (live power from the hypervisor)."""
        spec = self.store.spec(iid)
        if spec is None:
            return None
        rt = self.store.runtime(iid)
        err = self.error(iid)
        volumes: list[AttachedVolume] = []
        try:
            st = self.drivers.hypervisor.status(iid)
            power, vcpus, mem = st.power, st.vcpus, st.memory_mib
            volumes = attached_volumes(spec, st.disks)
        except DriverError as e:
            power, vcpus, mem = "error", None, None
            err = err or ErrorInfo(code=e.code, message=str(e), retryable=e.retryable)
        if power == "absent":
            power = "error" if err is not None and not err.retryable else "building"
        running = power == "running"
        return InstanceObserved(
            instance_id=iid, generation=spec.generation, power=power,
            booted=rt.booted and running, boot_count=rt.boot_count,
            boot_started_at=rt.boot_started_at if running else None,
            booted_at=rt.booted_at if running and rt.booted else None,
            vcpus=vcpus, memory_mib=mem, error=err, volumes=volumes)

    def observed_all(self) -> list[InstanceObserved]:
        out = []
        for iid in sorted(self.store.specs()):
            obs = self.observed(iid)
            if obs is not None:
                out.append(obs)
        return out

    # -- deletion and orphans ----------------------------------------------------------------
    def _teardown(self, iid: str) -> None:
        hv = self.drivers.hypervisor
        hv.destroy(iid)
        hv.undefine(iid)
        self.drivers.storage.remove_instance(iid)

    def delete(self, iid: str) -> None:
        """Tear down an instance whose spec was already removed. Raises DriverError on failure
        (the orphan sweep keeps retrying meanwhile)."""
        with self._lock_for(iid):  # waits for a worker, which aborts at its next step
            if self.store.spec(iid) is not None:
                return  # re-created meanwhile by a newer PUT
            with self._mu:
                self._errors.pop(iid, None)
                self._backoff.pop(iid, None)
                self._last.pop(iid, None)
            self._teardown(iid)
        self.on_change()

    def sweep_orphans(self) -> list[str]:
        """Remove Kumo domains and instance dirs that no accepted spec wants."""
        wanted = set(self.store.specs())
        found = {d.name for d in self.drivers.hypervisor.list_domains()}
        found |= set(self.drivers.storage.list_instance_dirs())
        removed = []
        for iid in sorted(found - wanted):
            if not INSTANCE_ID_RE.match(iid):
                continue  # never touch what is not named like ours
            with self._mu:
                if iid in self._inflight:
                    continue
                self._inflight.add(iid)
            try:
                with self._lock_for(iid):
                    if self.store.spec(iid) is not None:
                        continue
                    log.info("removing orphan %s", iid)
                    self._teardown(iid)
                    removed.append(iid)
            except DriverError as e:
                log.warning("orphan %s: %s: %s", iid, e.code, e)
            finally:
                with self._mu:
                    self._inflight.discard(iid)
        if removed:
            self.on_change()
        return removed

    def wanted_images(self) -> set[tuple[str, str]]:
        """(image_id, sha256) of every accepted spec, whatever its power: a stopped instance's
        overlay still backs onto its image."""
        return {(s.image.image_id, s.image.sha256) for s in self.store.specs().values()}

    def prune_images(self) -> list[tuple[str, str]]:
        """Drop cached images no accepted spec uses. Runs after the orphan sweep, so the
        overlays of deleted instances are gone first (an orphan whose teardown failed keeps
        its overlay, and Storage keeps the image that overlay backs onto).

        A spec accepted after `keep` was computed is safe: Storage re-reads the wanted set
        (`recheck`) under the image's lock, the same lock the spec's worker takes to look the
        image up, so the lookup either comes first (and the recheck sees the spec, which the
        PUT stored before kicking the worker) or comes after the deletion (and downloads the
        image again)."""
        removed = self.drivers.storage.prune_images(self.wanted_images(),
                                                    recheck=self.wanted_images)
        for image_id, sha256 in removed:
            log.info("pruned cached image %s (sha256 %s): no accepted spec uses it",
                     image_id, sha256)
        return removed
