"""Database change listeners (controller/db.py): called once after each commit that wrote
something, after it is visible to other connections; never for reads, rollbacks, savepoints
on their own, or sessions opened with notify=False."""
from __future__ import annotations

import pytest
from sqlalchemy import delete, text, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from controller.db import Database
from controller.models import InstanceType


@pytest.fixture
def db(tmp_path):
    d = Database(f"sqlite:///{tmp_path}/k.db")
    InstanceType.__table__.create(d.engine)
    yield d
    d.dispose()


@pytest.fixture
def calls(db):
    seen: list[int] = []

    def listener():
        # What the reconciler will read: the change must already be committed.
        with db.engine.connect() as conn:
            seen.append(conn.execute(text("SELECT count(*) FROM instance_type")).scalar())
    db.on_change(listener)
    return seen


def _type(name: str, vcpus: int = 1) -> InstanceType:
    return InstanceType(name=name, vcpus=vcpus, memory_mib=512)


def test_a_commit_that_wrote_calls_the_listeners_once_after_it(db, calls):
    with db.session() as s:
        s.add(_type("t3.a"))
        s.flush()
        s.add(_type("t3.b"))
    assert calls == [2]


def test_reads_and_changes_without_a_difference_call_nothing(db, calls):
    with db.session(notify=False) as s:
        s.add(_type("t3.a", vcpus=2))
    with db.session() as s:
        list(s.exec(select(InstanceType)))
    with db.session() as s:
        row = s.get(InstanceType, "t3.a")
        row.vcpus = 2  # the value it has
        s.add(row)
    assert calls == []
    with db.session() as s:
        s.get(InstanceType, "t3.a").vcpus = 3
    assert calls == [1]


def test_a_rollback_calls_nothing(db, calls):
    with pytest.raises(RuntimeError):
        with db.session() as s:
            s.add(_type("t3.a"))
            s.flush()
            raise RuntimeError("refused")
    with db.session() as s:
        assert s.exec(select(InstanceType)).all() == []
    assert calls == []


def test_savepoints_wait_for_the_outer_commit(db, calls):
    with db.session() as s:
        with s.begin_nested():
            s.add(_type("t3.a"))
        assert calls == []  # released, not committed
    assert calls == [1]
    # A savepoint rolled back keeps the enclosing transaction's writes (and their wake-up).
    with db.session() as s:
        s.add(_type("t3.b"))
        s.flush()
        with pytest.raises(IntegrityError):
            with s.begin_nested():
                s.add(_type("t3.a"))  # taken
                s.flush()
    assert calls == [1, 2]


def test_bulk_statements_count_as_writes(db, calls):
    with db.session(notify=False) as s:
        s.add(_type("t3.a"))
    with db.session() as s:
        s.exec(update(InstanceType).values(vcpus=4))
    with db.session() as s:
        s.exec(delete(InstanceType))
    assert calls == [1, 0]


def test_notify_false_and_a_failing_listener_leave_the_commit_alone(db, calls):
    with db.session(notify=False) as s:
        s.add(_type("t3.z"))
    assert calls == []

    def broken():
        raise RuntimeError("listener bug")
    db.on_change(broken)
    with db.session() as s:
        s.add(_type("t3.a"))
    assert calls == [2]
    with db.session() as s:
        assert s.get(InstanceType, "t3.a") is not None


def test_a_disposed_database_and_what_its_listeners_reach_are_freed(tmp_path):
    """SQLAlchemy holds session event listeners strongly in a class-level registry: dispose()
    removes ours, or a Database (and the app its on_change listeners reach) lives forever."""
    import gc
    import weakref

    class Reached:  # stands for the reconciler/app an on_change listener keeps alive
        def wake(self) -> None:
            pass

    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    reached = Reached()
    db.on_change(reached.wake)
    db.before_commit(lambda s: None)
    with db.session() as s:
        s.exec(text("SELECT 1"))
    refs = weakref.ref(db), weakref.ref(reached)
    db.dispose()
    del db, reached
    gc.collect()
    assert [r() for r in refs] == [None, None]
