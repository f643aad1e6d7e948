"""The leader lease (controller/lease.py), the elector and the loops it runs
(controller/leadership.py), the controller registry and `GET /v1/admin/status`'s service, with
two contenders on one SQLite database file and an injected clock (wall and monotonic together)."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from controller import db_migrate
from controller.controller_registry import Registry
from controller.db import Database
from controller.lease import Lease, lease_engine
from controller.leadership import (Elector, Leadership, NotLeader, _FENCE, fence_commit,
                                   margin_for)
from controller.models import Account
from controller.services import controller_status
from controller.settings import Settings

TTL, RENEW = 5.0, 1.0


class Clock:
    """Wall and monotonic time that move together, only when told."""

    def __init__(self):
        self.wall = datetime(2026, 12, 1, tzinfo=timezone.utc)
        self.mono = 1000.0

    def now(self) -> datetime:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += timedelta(seconds=seconds)
        self.mono += seconds


@pytest.fixture
def env(tmp_path):
    url = f"sqlite:///{tmp_path / 'kumo.db'}"
    db = Database(url)
    db_migrate.upgrade(db)
    engine = lease_engine(url)
    clock = Clock()

    def contender(name: str) -> Elector:
        lease = Lease(engine, name, TTL, clock=clock.now)
        return Elector(lease, TTL, margin_for(TTL, RENEW), monotonic=clock.monotonic)

    yield db, engine, clock, contender
    engine.dispose()
    db.dispose()


def test_one_leads_and_the_other_takes_over_after_expiry_with_a_higher_epoch(env):
    _, _, clock, contender = env
    a, b = contender("ctl-a"), contender("ctl-b")
    a.step()
    b.step()
    assert a.valid() and a.epoch == 1
    assert not b.valid() and b.epoch is None
    for _ in range(10):  # a keeps renewing: b never gets in
        clock.advance(RENEW)
        a.step()
        b.step()
        assert a.valid() and not b.valid()
    assert a.lease.read().epoch == 1  # renewals never bump the epoch
    # a dies (stops renewing): b takes over only once the lease has ended
    clock.advance(TTL - 0.1)
    b.step()
    assert not b.valid()
    clock.advance(0.2)
    b.step()
    assert b.valid() and b.epoch == 2
    state = b.lease.read()
    assert (state.holder, state.epoch) == ("ctl-b", 2)


def test_a_stale_holder_cannot_renew_after_a_takeover(env):
    _, _, clock, contender = env
    a, b = contender("ctl-a"), contender("ctl-b")
    a.step()
    clock.advance(TTL + 0.1)  # a was paused (GC, a stopped VM...) past its lease
    b.step()
    assert b.epoch == 2
    assert not a.lease.renew(1)  # compare-and-set on (holder, epoch) fails
    a.step()  # its elector sees it, and does not take the lease back while b holds it
    assert not a.valid() and a.epoch is None
    assert b.lease.read().holder == "ctl-b"
    assert b.lease.release(2) and not a.lease.release(1)


def test_a_leader_whose_renewals_fail_stops_before_anyone_can_take_over(env):
    _, _, clock, contender = env
    a, b = contender("ctl-a"), contender("ctl-b")
    a.step()
    assert a.valid()

    def broken(epoch):
        raise OSError("database unreachable")

    a.lease.renew = broken
    margin = margin_for(TTL, RENEW)
    clock.advance(TTL - margin - 0.01)
    with pytest.raises(OSError):
        a.step()
    assert a.valid()  # still within what its last successful renewal allows
    clock.advance(0.02)
    assert not a.valid()  # a stops acting here...
    b.step()
    assert b.epoch is None  # ...while its lease still holds everyone else off
    clock.advance(margin)
    b.step()
    assert b.valid() and b.epoch == 2


def test_racing_contenders_only_one_wins(env):
    """Both read the same expired lease; the second compare-and-set finds the epoch moved."""
    _, _, clock, contender = env
    a, b = contender("ctl-a"), contender("ctl-b")
    a.step()
    clock.advance(TTL + 1)
    seen = b.lease.read()
    a.lease.holder = "ctl-c"  # a restarted controller (a new id) wins the race first
    assert a.lease.try_acquire() == 2
    b.lease._ensure_row = lambda: seen  # b decides on what it read before
    assert b.lease.try_acquire() is None
    assert b.lease.read().holder == "ctl-c"


def test_release_lets_the_next_contender_in_at_once(env):
    _, _, _, contender = env
    a, b = contender("ctl-a"), contender("ctl-b")
    a.step()
    a.release()
    assert not a.valid()
    b.step()
    assert b.valid() and b.epoch == 2


def _leadership(elector: Elector, started: list) -> Leadership:
    def start_loops(loops):
        async def work():
            started.append(_FENCE.get())  # the loop runs under the fence
            await asyncio.sleep(3600)
        loops.start("work", work())
    return Leadership(elector, None, start_loops, RENEW)


def test_loops_start_on_gaining_and_stop_on_losing_the_lease(env):
    _, _, clock, contender = env
    a, b = contender("ctl-a"), contender("ctl-b")

    async def scenario():
        started_a, started_b = [], []
        la, lb = _leadership(a, started_a), _leadership(b, started_b)
        a.step()
        b.step()
        await la.sync()
        await lb.sync()
        await asyncio.sleep(0)
        assert la.loops is not None and lb.loops is None
        assert started_a == [a]
        task = la.loops.tasks[0]
        a.lease.renew = lambda epoch: (_ for _ in ()).throw(OSError("unreachable"))
        clock.advance(TTL - margin_for(TTL, RENEW))  # a's own deadline: stop at once
        await la.sync()
        assert la.loops is None and task.cancelled()
        clock.advance(margin_for(TTL, RENEW))
        b.step()
        await lb.sync()
        await asyncio.sleep(0)
        assert lb.loops is not None and started_b == [b] and b.epoch == 2
        await lb.loops.stop()

    asyncio.run(scenario())


def test_a_lost_leaders_loop_cannot_commit(env):
    db, _, clock, contender = env
    db.before_commit(fence_commit)
    a = contender("ctl-a")
    a.step()
    token = _FENCE.set(a)
    try:
        with db.session() as s:  # while leading: commits
            s.add(Account(account_id="acc-1", name="one", api_key_hash="x", is_admin=False,
                          created_at=clock.now()))
        clock.advance(TTL)
        with pytest.raises(NotLeader), db.session() as s:
            s.add(Account(account_id="acc-2", name="two", api_key_hash="y", is_admin=False,
                          created_at=clock.now()))
    finally:
        _FENCE.reset(token)
    with db.session() as s:  # outside the loops (API requests): no fence
        assert s.get(Account, "acc-1") is not None and s.get(Account, "acc-2") is None


def test_registry_and_admin_status(env):
    db, engine, clock, contender = env
    a, b = contender("ctl-a"), contender("ctl-b")
    ra = Registry(engine, "ctl-a", "http://127.0.0.1:8787", clock=clock.now)
    rb = Registry(engine, "ctl-b", None, clock=clock.now, forget_after_s=60)
    a.step()
    b.step()
    ra.beat(clock.now())
    rb.beat()
    settings = Settings(leader_lease_ttl_s=TTL, leader_renew_interval_s=RENEW)
    st = controller_status.status(db, settings, "ctl-b", now=clock.now())
    assert st.leader.controller_id == "ctl-a" and st.leader.epoch == 1
    assert st.leader.since == clock.now()
    assert [(c.controller_id, c.leader, c.alive) for c in st.controllers] == [
        ("ctl-a", True, True), ("ctl-b", False, True)]
    assert st.reconcile.last_pass_at == clock.now() and st.reconcile.last_pass_age_s == 0
    assert st.reconcile.unacknowledged_instances == 0
    clock.advance(TTL + 1)  # a died: nobody leads until b's next step
    rb.beat()
    st = controller_status.status(db, settings, "ctl-b", now=clock.now())
    assert st.leader.controller_id is None
    assert {c.controller_id: c.alive for c in st.controllers} == {"ctl-a": False, "ctl-b": True}
    b.step()
    st = controller_status.status(db, settings, "ctl-b", now=clock.now())
    assert st.leader.controller_id == "ctl-b" and st.leader.epoch == 2
    clock.advance(61)  # forgotten by the registry after forget_after_s
    rb.beat()
    st = controller_status.status(db, settings, "ctl-b", now=clock.now())
    assert [c.controller_id for c in st.controllers] == ["ctl-b"]


def test_a_stop_during_a_step_leaves_after_that_step(env):
    """Stopping run() while a step's thread is still beating: the thread is not cancelled with
    the wait, so leaving first would let that beat put the registry row back (a stopped
    controller listed as alive) and the step renew the released lease. run() lets it end."""
    import threading
    db, engine, clock, contender = env
    a = contender("ctl-a")
    registry = Registry(engine, "ctl-a", None, clock=clock.now)
    in_beat, finish = threading.Event(), threading.Event()
    real_beat = registry.beat

    def slow_beat(*args):
        in_beat.set()
        finish.wait(5)
        real_beat(*args)
    registry.beat = slow_beat
    leadership = Leadership(a, registry, lambda loops: None, RENEW)

    async def scenario():
        task = asyncio.ensure_future(leadership.run())
        while not in_beat.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.sleep(0.05)
        finish.set()  # the beat completes only after the stop began
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    settings = Settings(leader_lease_ttl_s=TTL, leader_renew_interval_s=RENEW)
    st = controller_status.status(db, settings, "ctl-x", now=clock.now())
    assert st.controllers == [] and st.leader.controller_id is None
