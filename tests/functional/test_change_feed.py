"""The change feed (controller/change_feed.py) between two controller apps on one real
PostgreSQL (a throw-away server, tests/functional/pg.py), each a `Cloud` (fake agents over
httpx.MockTransport) with its lifespan running (leader lease, background loops):
- with a 30 s reconcile interval on the leader, a launch through the NON-leader's API reaches
  the leader's reconciler (the fake agent gets the instance's PUT) within 2 s; the same with
  the feed off waits for the periodic tick (negative control);
- a rolled-back write, a notify=False write and a read-only session send nothing; a committed
  write sends one notification (positive control), with the writer's controller id;
- the listener's connection (pg_stat_activity, application_name kumo-change-feed) exists only
  while its controller leads: gone after the lease is taken away, and after shutdown.
Skipped without PostgreSQL.
"""
from __future__ import annotations

import contextlib
import time

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text, update

from controller import change_feed
from controller.models.instance_type import InstanceType
from tests.functional.fake_agent import Cloud
from tests.functional.pg import postgres  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow

SLOW_TICK = dict(reconcile_interval_s=30, leader_lease_ttl_s=2.0, leader_renew_interval_s=0.3)


def _wait(pred, timeout: float, what: str, every: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def _leads(cloud: Cloud) -> bool:
    lead = getattr(cloud.app.state, "kumo_leadership", None)
    return lead is not None and lead.loops is not None


def _listeners(pg_url: str) -> int:
    with psycopg.connect(change_feed.conninfo(pg_url), autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                            (change_feed.APPLICATION_NAME,)).fetchone()[0]


@contextlib.contextmanager
def _pair(tmp_path, url: str, **overrides):
    """Cloud a (leads: its lifespan starts first; it has the fake agent) and Cloud b (serves
    the API only), both running their lifespans; closed at the end."""
    a = Cloud(tmp_path, database_url=url, **SLOW_TICK, **overrides)
    b = Cloud(tmp_path, database_url=url, **SLOW_TICK, **overrides)
    b.agents = a.agents  # either one can reach the fake agents
    try:
        with TestClient(a.app), contextlib.ExitStack() as stack:
            _wait(lambda: _leads(a), 10, "a leads")
            stack.enter_context(TestClient(b.app))
            a.add_host("host-1")
            a.image()
            yield a, b
    finally:
        b.close()
        a.close()


def _placed_after_launch(a: Cloud, b: Cloud, timeout: float) -> float | None:
    """Launch through b (not the leader); seconds from its 201 until a's agent got the PUT."""
    assert not _leads(b) and _leads(a)
    time.sleep(0.5)  # the leader's start-up ticks are over: only a wake-up can act now
    agent = a.agents[next(iter(a.agents))]
    iid = b.launch(b.admin)
    t = time.monotonic()
    try:
        _wait(lambda: iid in agent.specs, timeout, "the PUT", every=0.005)
    except AssertionError:
        return None
    return time.monotonic() - t


def test_launch_through_non_leader_wakes_leader(postgres, tmp_path):  # noqa: F811
    url = postgres.create_database(prefix="feed")
    with _pair(tmp_path, url) as (a, b):
        assert _listeners(url) == 1  # the leader's only
        took = _placed_after_launch(a, b, timeout=5)
        assert took is not None and took < 2.0, took
        print(f"non-leader 201 -> leader's PUT: {took * 1000:.0f} ms (reconcile interval 30 s)")
        # a launch through the leader itself is as prompt (its in-process wake-up)
        agent = a.agents[next(iter(a.agents))]
        iid = a.launch(a.admin)
        _wait(lambda: iid in agent.specs, 2, "the leader's own launch")


def test_without_feed_non_leader_write_waits_for_tick(postgres, tmp_path):  # noqa: F811
    """Negative control: the same launch with the feed off is not placed within 2.5 s."""
    url = postgres.create_database(prefix="nofeed")
    with _pair(tmp_path, url, change_feed=False) as (a, b):
        assert _listeners(url) == 0
        assert _placed_after_launch(a, b, timeout=2.5) is None


def test_notify_only_on_commit_of_a_write(postgres, tmp_path):  # noqa: F811
    url = postgres.create_database(prefix="notify")
    b = Cloud(tmp_path, database_url=url)  # no lifespan: only its sessions are used
    try:
        db, me = b.db, b.app.state.kumo_controller_id
        # an ORM bulk UPDATE (a write as Database sees it) that changes nothing
        write = update(InstanceType).values(vcpus=InstanceType.vcpus)
        with psycopg.connect(change_feed.conninfo(url), autocommit=True) as conn:
            conn.execute(f"LISTEN {change_feed.CHANNEL}")

            def heard(wait_s: float) -> list[str]:
                return [n.payload for n in conn.notifies(timeout=wait_s)]

            with pytest.raises(RuntimeError), db.session() as s:
                s.execute(write)
                raise RuntimeError("roll back")
            with db.session(notify=False) as s:
                s.execute(write)
            with db.session() as s:
                s.execute(text("SELECT 1"))
            assert heard(0.5) == []
            with db.session() as s:  # positive control
                s.execute(write)
            assert heard(1.0) == [me]
    finally:
        b.close()


def test_listener_stops_with_leadership_and_shutdown(postgres, tmp_path):  # noqa: F811
    url = postgres.create_database(prefix="stop")
    with _pair(tmp_path, url) as (a, b):
        _wait(lambda: _listeners(url) == 1, 5, "the listener")
        tasks = {t.get_name() for t in a.app.state.kumo_leadership.loops.tasks}
        assert "kumo-change-feed" in tasks
        # Take the lease away (another holder, next epoch, for a minute): a's renewal fails and
        # it stops its loops, the listener with them; b cannot take it either.
        with psycopg.connect(change_feed.conninfo(url), autocommit=True) as conn:
            conn.execute("UPDATE controller_lease SET holder = 'ctl-thief', epoch = epoch + 1, "
                         "expires_at = now() at time zone 'utc' + interval '60 s'")
        _wait(lambda: not _leads(a), 5, "a stops leading")
        _wait(lambda: _listeners(url) == 0, 5, "the listener's connection closed")
        assert not _leads(b)
        # The lease runs out: b takes over and listens; then both shut down.
        with psycopg.connect(change_feed.conninfo(url), autocommit=True) as conn:
            conn.execute("UPDATE controller_lease SET expires_at = now() at time zone 'utc' "
                         "- interval '1 s'")
        _wait(lambda: _leads(a) or _leads(b), 10, "a new leader")
        _wait(lambda: _listeners(url) == 1, 5, "the new leader's listener")
    assert _listeners(url) == 0


def _listener_pids(pg_url: str) -> list[int]:
    with psycopg.connect(change_feed.conninfo(pg_url), autocommit=True) as conn:
        return [r[0] for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
            (change_feed.APPLICATION_NAME,))]


def test_listener_reconnects_and_wakes_after_its_connection_breaks(postgres, tmp_path):  # noqa: F811
    """The listening connection is cut (pg_terminate_backend) just before a launch through the
    non-leader: whether its notification was heard or missed, the leader acts within seconds
    (the wake-up after reconnecting), not at its 30 s tick; a new connection listens again."""
    url = postgres.create_database(prefix="cut")
    with _pair(tmp_path, url) as (a, b):
        [old] = _wait(lambda: _listener_pids(url), 5, "the listener")
        time.sleep(0.5)
        with psycopg.connect(change_feed.conninfo(url), autocommit=True) as conn:
            assert conn.execute("SELECT pg_terminate_backend(%s)", (old,)).fetchone()[0]
        agent = a.agents[next(iter(a.agents))]
        iid = b.launch(b.admin)
        _wait(lambda: iid in agent.specs, 5, "the PUT after the cut")
        [new] = _wait(lambda: _listener_pids(url), 5, "a new listening connection")
        assert new != old
        took = _placed_after_launch(a, b, timeout=5)  # and it hears again
        assert took is not None and took < 2.0, took
