"""Leadership: which controller process runs the reconciler and the other background loops.

Every controller process serves the API (which only writes the database); exactly one, the
holder of the leader lease (controller/lease.py), runs the loops the app's lifespan hands to
`Leadership` (reconciler, metric rollups, Auto Scaling, alarms, budgets). The others try to take
the lease every `renew_s` and start the loops the moment they get it.

Two never act together, because the holder stops first:
- `Elector` (a synchronous state machine, driven by tests with fake clocks) keeps `valid_until`
  on the holder's monotonic clock: the start of its last successful renewal + TTL - margin. A
  renewal that fails or hangs does not move it; a compare-and-set that finds the lease taken
  over ends leadership at once.
- `Leadership.run` stops the loops as soon as `valid_until` passes, even while a renewal is
  still hanging (the step runs in a thread under a timeout that ends at `valid_until`). The
  lease ends `margin` later, and only then can another controller take it (with epoch + 1).
- A pass already running in a worker thread cannot be interrupted, so its commits are fenced:
  the loops run with this leadership in a context variable (inherited by their tasks and their
  asyncio.to_thread workers), and `fence_commit` (the database's before-commit hook) refuses the
  commit of such a transaction once leadership is no longer valid (NotLeader: rolled back).
  Agent calls the reconciler makes from its own thread pool are not fenced; they need not be:
  specs and network documents carry generations (an equal re-send is ignored, an older one
  refused with StaleGeneration) and deletes of what is gone succeed.

What a takeover may repeat, and why it is harmless (each pass is level-triggered and restart
safe, so a takeover is just a restart of the loops elsewhere):
- reconciler: re-pushes specs/documents the agents have not acknowledged (generation-checked),
  re-applies deadlines to rows read in the same transaction;
- Auto Scaling: an interrupted launch is resent with its client token (one instance, not two);
  scheduled actions record `last_occurrence` with the change; target tracking reads current
  capacity in its transaction;
- alarms: `evaluated_until_ms` commits with the state change and its actions (one per period);
- metric rollups: raw rows are claimed and merged by upsert, then deleted in one transaction;
- budgets: the "exceeded" event is looked up before it is appended, in one transaction;
- volume and snapshot syncs: volume specs carry generations; snapshots move pending -> completed
  on the node's answer for the snapshot's own id.
- image captures (in the reconciler's tick): one idempotent phase at a time, recorded per
  capture, so a takeover resumes where the last leader was (services/image_capture.py).
On PostgreSQL every application transaction holds one advisory lock (controller/db.py), so even
overlapping passes would run their transactions one after the other, each re-reading state.
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from datetime import datetime
from typing import Callable

from controller.controller_registry import Registry
from controller.lease import Lease
from controller.periodic import Loops

log = logging.getLogger(__name__)


class NotLeader(RuntimeError):
    """A background loop's transaction after its controller lost the lease (rolled back)."""


_FENCE: contextvars.ContextVar["Elector | None"] = contextvars.ContextVar("kumo_leader_fence",
                                                                         default=None)


def fence_commit(_session=None) -> None:
    """Before-commit hook (Database.before_commit): refuse the commit of a background loop's
    transaction once its leadership has ended. API requests carry no fence and always pass."""
    elector = _FENCE.get()
    if elector is not None and not elector.valid():
        raise NotLeader("this controller no longer holds the leader lease")


def margin_for(ttl_s: float, renew_s: float) -> float:
    """How long before its lease ends a holder stops: one renewal period (at least a fifth of
    the TTL, at most half of it). Also the clock skew between controllers it tolerates."""
    return min(max(renew_s, ttl_s * 0.2), ttl_s * 0.5)


class Elector:
    """One contender's view: take the lease when free, renew it while held, know until when
    (monotonic) acting on it is safe."""

    def __init__(self, lease: Lease, ttl_s: float, margin_s: float,
                 monotonic: Callable[[], float] = time.monotonic):
        self.lease, self.ttl_s, self.margin_s, self.monotonic = lease, ttl_s, margin_s, monotonic
        self.epoch: int | None = None
        self.since: datetime | None = None
        self.valid_until = 0.0
        self._step_lock = threading.Lock()

    @property
    def holder(self) -> str:
        return self.lease.holder

    def valid(self) -> bool:
        return self.epoch is not None and self.monotonic() < self.valid_until

    def time_left(self) -> float:
        return self.valid_until - self.monotonic() if self.epoch is not None else 0.0

    def step(self) -> None:
        """Renew (holder) or try to take (contender) the lease, once. Raises what the database
        raised (the caller logs it); leadership then lasts at most until valid_until."""
        if not self._step_lock.acquire(blocking=False):
            return  # the previous step still hangs in another thread
        try:
            epoch = self.epoch
            if epoch is not None and not self.valid():
                self._lose("its lease ran out before a renewal succeeded")
                epoch = None
            started = self.monotonic()
            if epoch is not None:
                if self.lease.renew(epoch):
                    if self.epoch == epoch:
                        self.valid_until = max(self.valid_until, started + self.ttl_s - self.margin_s)
                else:
                    self._lose("its lease was taken over")
                return
            epoch = self.lease.try_acquire()
            if epoch is not None:
                self.valid_until = started + self.ttl_s - self.margin_s
                self.since = self.lease.clock()
                self.epoch = epoch
        finally:
            self._step_lock.release()

    def _lose(self, why: str) -> None:
        if self.epoch is not None:
            log.warning("controller %s stops leading (epoch %d): %s", self.holder, self.epoch, why)
        self.epoch = None
        self.since = None

    def release(self) -> None:
        epoch, self.epoch = self.epoch, None
        if epoch is not None:
            self.lease.release(epoch)


class Leadership:
    """The async side: run Elector.step every renew_s, start the loops on gaining the lease and
    stop them the moment it is no longer safe to act; release the lease on a clean stop."""

    def __init__(self, elector: Elector, registry: Registry | None,
                 start_loops: Callable[[Loops], None], renew_s: float,
                 last_pass: Callable[[], datetime | None] = lambda: None):
        self.elector, self.registry, self.start_loops = elector, registry, start_loops
        self.renew_s, self.last_pass = renew_s, last_pass
        self.loops: Loops | None = None
        self._loops_epoch: int | None = None
        self.takeovers = 0

    def _step(self) -> None:
        try:
            self.elector.step()
        finally:
            if self.registry is not None:
                try:
                    self.registry.beat(self.last_pass() if self.elector.valid() else None)
                except Exception:
                    log.warning("controller registry update failed", exc_info=True)

    async def sync(self) -> None:
        """Start the loops when we lead and they are not running, stop them when we don't."""
        e = self.elector
        if self.loops is not None and (not e.valid() or e.epoch != self._loops_epoch):
            loops, self.loops = self.loops, None
            await loops.stop()
            log.warning("controller %s stopped its background loops", e.holder)
        if self.loops is None and e.valid():
            loops = Loops()
            token = _FENCE.set(e)  # inherited by the loops' tasks and their worker threads
            try:
                self.start_loops(loops)
            finally:
                _FENCE.reset(token)
            self.loops, self._loops_epoch = loops, e.epoch
            self.takeovers += 1
            log.info("controller %s leads (epoch %s): background loops started", e.holder, e.epoch)

    async def run(self) -> None:
        step: asyncio.Future | None = None
        try:
            while True:
                await self.sync()
                # A holder's step may take until valid_until at most: a hanging renewal must
                # not keep the loops running past it.
                limit = self.elector.time_left() if self.elector.epoch is not None else \
                    max(self.renew_s, self.elector.ttl_s)
                # asyncio.wait, not wait_for: on Python 3.11 wait_for returns the result when the
                # task is cancelled just as the step finishes, swallowing the cancellation, and
                # this loop would never stop (a shutdown hung on it). wait neither swallows it
                # nor cancels the step (a thread cannot be cancelled anyway).
                step = asyncio.ensure_future(asyncio.to_thread(self._step))
                done, _ = await asyncio.wait({step}, timeout=max(limit, 0.01))
                if not done:
                    log.warning("leader lease step timed out")
                elif step.exception() is not None:
                    log.warning("leader lease step failed", exc_info=step.exception())
                await self.sync()
                pause = self.renew_s
                if self.elector.epoch is not None:
                    pause = min(pause, max(self.elector.time_left(), 0.0))
                await asyncio.sleep(pause)
        finally:
            if self.loops is not None:
                await self.loops.stop()
                self.loops = None
            if step is not None and not step.done():
                # Cancelling the wait does not stop the thread: a step still running would
                # beat (put our registry row back) or renew the lease after _leave. Let it end.
                await asyncio.wait({step}, timeout=self.elector.ttl_s)
            await asyncio.to_thread(self._leave)

    def _leave(self) -> None:
        try:
            self.elector.release()
        except Exception:
            log.warning("leader lease release failed", exc_info=True)
        if self.registry is not None:
            try:
                self.registry.leave()
            except Exception:
                log.warning("controller registry removal failed", exc_info=True)
