"""The controller on PostgreSQL (a throw-away server from tests/functional/pg.py, unix socket
only): migrations to head on an empty database match the models, step-by-step upgrade keeps
existing rows, and the controller's functional scenarios (tests/functional/test_controller_*.py)
re-run unchanged against PostgreSQL through the fake-agent `Cloud` harness. Placement is also run
without the in-process placement lock, as several controller processes would, to show that
`SELECT ... FOR UPDATE` on the hosts alone keeps 50 concurrent launches against capacity for 10 at
exactly 10, and that client-token duplicates still converge on one reservation.

Skipped (with the reason) when the PostgreSQL server binaries or psycopg are missing."""
from __future__ import annotations

import contextlib
import functools
import inspect
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.functional import (test_controller_api, test_controller_hosts,
                              test_controller_lifecycle, test_controller_placement)
from tests.functional.fake_agent import Cloud
from tests.functional.pg import PostgresServer, why_unavailable

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def postgres():
    reason = why_unavailable()
    if reason:
        pytest.skip(f"PostgreSQL tests need a server and a driver: {reason}")
    with PostgresServer() as server:
        yield server


@pytest.fixture
def pg_url(postgres) -> str:
    """A fresh, empty database for one test."""
    return postgres.create_database(icu_locale=os.environ.get("KUMO_TEST_PG_ICU_LOCALE"))


@contextlib.contextmanager
def pg_cloud(tmp_path, url: str, **overrides):
    c = Cloud(tmp_path, database_url=url, **overrides)
    try:
        yield c
    finally:
        c.close()


# -- migrations -------------------------------------------------------------------------------------

def test_migrations_to_head_match_models(pg_url):
    """Same check as tests/unit/test_controller_units.py::test_migrations_match_models."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import inspect as sa_inspect
    from sqlmodel import SQLModel

    import controller.models  # noqa: F401
    from controller import db_migrate
    from controller.db import Database

    db = Database(pg_url)
    try:
        assert db.engine.dialect.name == "postgresql"
        db_migrate.upgrade(db)
        db_migrate.upgrade(db)  # idempotent at head
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
            version = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        assert diff == []
        assert version == _head()
        cols = {c["name"]: c for c in sa_inspect(db.engine).get_columns("host")}
        # Byte counts above 2 GiB need 64-bit columns on PostgreSQL (SQLite never cared).
        assert cols["disk_bytes"]["type"].__class__.__name__ == "BIGINT"
    finally:
        db.dispose()


def _head() -> str:
    from alembic.script import ScriptDirectory

    from controller import db_migrate
    return ScriptDirectory.from_config(db_migrate.alembic_config("sqlite://")).get_current_head()


def test_migrations_step_by_step_keep_rows(pg_url):
    """0001 -> head on a database that already holds an instance: the new NOT NULL column gets
    its server default on existing rows (PostgreSQL enforces NOT NULL on ALTER TABLE ADD)."""
    from alembic import command
    from sqlalchemy import text

    from controller import db_migrate
    from controller.db import Database

    db = Database(pg_url)
    try:
        cfg = db_migrate.alembic_config(db.url)
        with db.engine.connect() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0001")
            conn.commit()
        now = "2026-01-01 00:00:00"
        with db.engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO account (name, account_id, is_admin, api_key_hash, created_at) "
                "VALUES ('a', 'acct-1', false, 'h', :now)"), {"now": now})
            conn.execute(text(
                "INSERT INTO instance (instance_id, reservation_id, image_id, instance_type, "
                "vcpus, memory_mib, root_disk_gib, tags, state, instance_status, system_status, "
                "created_at, updated_at, account_id, user_data_b64, generation, "
                "acked_generation, power, reboot_nonce, observed_booted, observed_boot_count, "
                "reboot_boot_count) VALUES ('i-1', 'r-1', 'ami-1', 't3.nano', 1, 512, 1, '{}', "
                "'running', 'ok', 'ok', :now, :now, 'acct-1', '', 1, 1, 'running', 0, true, "
                "1, 0)"), {"now": now})
        db_migrate.upgrade(db)
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT reboot_pending FROM instance")).scalar() is False
    finally:
        db.dispose()


# -- the functional scenarios, unchanged, on PostgreSQL -----------------------------------------------

# How each source module's `cloud` fixture builds its Cloud (overrides, add host-1?).
_FIXTURES = {
    test_controller_api: ({}, True),
    test_controller_lifecycle: ({}, False),
    test_controller_placement: ({"cpu_overcommit": 1.0}, False),
}


def _scenarios():
    mods = (test_controller_api, test_controller_lifecycle, test_controller_placement,
            test_controller_hosts)
    for mod in mods:
        short = mod.__name__.removeprefix("tests.functional.test_controller_")
        for name, fn in inspect.getmembers(mod, inspect.isfunction):
            if not name.startswith("test_") or fn.__module__ != mod.__name__:
                continue
            marks = [m for m in getattr(fn, "pytestmark", []) if m.name == "parametrize"]
            if marks:  # expand the source's own parametrisation
                (argnames, argvalues), = [m.args for m in marks]
                names = [a.strip() for a in argnames.split(",")] if isinstance(argnames, str) \
                    else list(argnames)
                for k, values in enumerate(argvalues):
                    values = values.values if hasattr(values, "values") else values
                    kwargs = dict(zip(names, values if len(names) > 1 else (values,)))
                    yield pytest.param(mod, name, kwargs, id=f"{short}::{name}[{k}]")
            else:
                yield pytest.param(mod, name, {}, id=f"{short}::{name}")


@pytest.mark.parametrize("mod,name,kwargs", list(_scenarios()))
def test_scenario_on_postgres(mod, name, kwargs, pg_url, tmp_path, monkeypatch):
    """Runs tests/functional/test_controller_<mod>.py::<name> with every Cloud on PostgreSQL."""
    fn = getattr(mod, name)
    # Scenarios that build their own Cloud(tmp_path, ...) get the PostgreSQL URL injected; a
    # scenario building two Clouds on one tmp_path shares one database, as it shares one SQLite
    # file today.
    monkeypatch.setattr(mod, "Cloud", functools.partial(Cloud, database_url=pg_url))
    params = inspect.signature(fn).parameters
    if "cloud" not in params:
        fn(tmp_path, **kwargs)
        return
    overrides, with_host = _FIXTURES[mod]
    with pg_cloud(tmp_path, pg_url, **overrides) as cloud:
        assert cloud.app.state.kumo.db.engine.dialect.name == "postgresql"
        cloud.image()
        if with_host:
            cloud.add_host("host-1")
        fn(cloud, **kwargs)


# -- placement without the in-process lock (= several controller processes) ----------------------------

class _NoLock:
    """Stands in for instances._placement_lock: nothing serialises launches but the database."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture
def multi_process_cloud(pg_url, tmp_path, monkeypatch):
    from controller.services import instances

    monkeypatch.setattr(instances, "_placement_lock", _NoLock())
    with pg_cloud(tmp_path, pg_url, cpu_overcommit=1.0) as c:
        c.image()
        yield c


def _concurrently(n: int, fn) -> list:
    """Run fn(i) for i in range(n) on n threads released together (maximum overlap)."""
    barrier = threading.Barrier(n)

    def go(i):
        barrier.wait(timeout=30)
        return fn(i)

    with ThreadPoolExecutor(n) as ex:
        return list(ex.map(go, range(n)))


def test_no_overbooking_without_process_lock(multi_process_cloud):
    cloud = multi_process_cloud
    cloud.add_host("host-1", vcpus=10, memory_mib=100000)
    user = cloud.account("alice")
    results = _concurrently(50, lambda _: cloud.run(user))
    placed = [r for r in results if r.status_code == 201]
    refused = [r for r in results if r.status_code != 201]
    assert len(placed) == 10, [r.text for r in refused if r.status_code != 503][:3]
    assert {r.status_code for r in refused} == {503}
    assert {r.json()["error"]["code"] for r in refused} == {"InsufficientInstanceCapacity"}
    items = user.get("/v1/instances").json()["items"]
    assert len(items) == 10
    assert len({i["private_ip"] for i in items}) == 10 and len({i["mac"] for i in items}) == 10
    assert cloud.admin.get("/v1/hosts/host-1").json()["vcpus_used"] == 10


def test_no_overbooking_across_hosts_without_process_lock(multi_process_cloud):
    """Two hosts of 5 vCPUs, multi-instance launches: still exactly 10 vCPUs placed."""
    cloud = multi_process_cloud
    cloud.add_host("host-1", vcpus=5, memory_mib=100000)
    cloud.add_host("host-2", vcpus=5, memory_mib=100000)
    user = cloud.account("alice")
    results = _concurrently(30, lambda i: cloud.run(user, min_count=1, max_count=1 + i % 3))
    placed = sum(len(r.json()["instances"]) for r in results if r.status_code == 201)
    assert {r.status_code for r in results} <= {201, 503}
    assert placed == 10
    hosts = {h["host_id"]: h for h in cloud.admin.get("/v1/hosts").json()["items"]}
    assert hosts["host-1"]["vcpus_used"] == 5 and hosts["host-2"]["vcpus_used"] == 5
    items = user.get("/v1/instances").json()["items"]
    assert len({i["private_ip"] for i in items}) == 10


def test_concurrent_duplicate_client_tokens_without_process_lock(multi_process_cloud):
    cloud = multi_process_cloud
    cloud.add_host("host-1")
    user = cloud.account("alice")
    results = _concurrently(12, lambda _: cloud.run(user, client_token="same"))
    assert {r.status_code for r in results} == {201}, [r.text for r in results][:3]
    assert len({r.json()["reservation_id"] for r in results}) == 1
    assert len({r.json()["instances"][0]["instance_id"] for r in results}) == 1
    assert len(user.get("/v1/instances").json()["items"]) == 1


def test_concurrent_mismatched_client_tokens_without_process_lock(multi_process_cloud):
    cloud = multi_process_cloud
    cloud.add_host("host-1")
    user = cloud.account("alice")
    results = _concurrently(8, lambda i: cloud.run(user, client_token="t",
                                                   tags={"n": str(i % 2)}))
    ok = [r for r in results if r.status_code == 201]
    bad = [r for r in results if r.status_code != 201]
    assert ok and len({r.json()["reservation_id"] for r in ok}) == 1
    assert all(r.json()["error"]["code"] == "IdempotentParameterMismatch" for r in bad), \
        [r.text for r in bad]
    assert len(user.get("/v1/instances").json()["items"]) == 1


# -- read-modify-write of one instance from concurrent requests ---------------------------------------

@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_reboots_lose_no_update(backend, request, tmp_path):
    """Every reboot bumps reboot_nonce and generation. Concurrent requests on one controller
    (no placement lock involved) must not overwrite each other's bumps (they did on PostgreSQL
    before controller/db.py serialised transactions: 2 of 20 survived)."""
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    with pg_cloud(tmp_path, url) as cloud:
        cloud.image()
        cloud.add_host("host-1")
        user = cloud.account("alice")
        r = cloud.run(user)
        assert r.status_code == 201, r.text
        iid = r.json()["instances"][0]["instance_id"]
        cloud.converge()
        db = cloud.app.state.kumo.db
        from controller.models import Instance
        with db.session() as s:
            before = s.get(Instance, iid)
        n = 20
        results = _concurrently(n, lambda _: user.post(f"/v1/instances/{iid}/reboot"))
        assert {r.status_code for r in results} == {200}, [r.text for r in results][:3]
        with db.session() as s:
            after = s.get(Instance, iid)
        assert after.reboot_nonce - before.reboot_nonce == n
        assert after.generation - before.generation == n


def test_concurrent_new_hosts_get_distinct_slices(pg_url, tmp_path):
    """First heartbeats of many hosts at once: each gets its own network slice (net_index is
    read-then-insert; racing inserts would hit the unique constraint and answer 500)."""
    from tests.functional.fake_agent import FakeAgent

    with pg_cloud(tmp_path, pg_url) as cloud:
        agents = [FakeAgent(f"host-{k}") for k in range(12)]
        for a in agents:
            cloud.agents[a.url] = a
        results = _concurrently(len(agents), lambda i: cloud.agent_client.post(
            "/v1/agent/heartbeat", json=agents[i].heartbeat_request().model_dump(mode="json")))
        assert {r.status_code for r in results} == {200}, [r.text for r in results][:3]
        from controller.models import Host
        from sqlmodel import select
        with cloud.app.state.kumo.db.session() as s:
            slices = [h.net_index for h in s.exec(select(Host))]
        assert sorted(slices) == list(range(1, 13))


def test_host_lock_alone_orders_usage_after_previous_placement(pg_url, tmp_path):
    """capacity.host_states on its own, without the engine's transaction lock (a plain engine):
    a second placement blocks on the hosts' FOR UPDATE until the first commits, and then sums
    usage that includes the first one's instance (the sum used to run before the lock)."""
    from sqlalchemy import create_engine
    from sqlmodel import Session

    from controller.ids import utcnow
    from controller.models import Instance
    from controller.services.capacity import host_states

    with pg_cloud(tmp_path, pg_url) as cloud:
        cloud.add_host("host-1", vcpus=10, memory_mib=100000)
        user = cloud.account("alice")
        acct = user.get("/v1/account").json()["account_id"]
    plain = create_engine(pg_url, isolation_level="READ COMMITTED")
    try:
        seen: dict = {}
        first = Session(plain)
        assert host_states(first)[0].vcpus_used == 0  # holds the host row lock now

        def second():
            with Session(plain) as s:
                seen["used"] = host_states(s)[0].vcpus_used
                s.rollback()

        t = threading.Thread(target=second)
        t.start()
        t.join(0.5)
        assert t.is_alive(), "the second placement did not wait for the host lock"
        now = utcnow()
        first.add(Instance(instance_id="i-00000000000000001", reservation_id="r-1",
                           account_id=acct, image_id="ami-1", instance_type="t3.micro", vcpus=2,
                           memory_mib=1024, root_disk_gib=1, host_id="host-1", state="pending",
                           created_at=now, updated_at=now))
        first.commit()
        first.close()
        t.join(10)
        assert seen["used"] == 2
    finally:
        plain.dispose()


def test_controllers_starting_together_on_one_empty_database(pg_url, tmp_path):
    """Several controller processes sharing one PostgreSQL database start at once: migrations,
    the admin account and the instance-type seed each happen exactly once, and all start."""
    from sqlmodel import func, select

    from controller.app import close_app, create_app
    from controller.models import Account, InstanceType
    from controller.settings import Settings

    n = 4
    apps = _concurrently(n, lambda i: create_app(Settings(
        state_dir=tmp_path / f"c{i}", database_url=pg_url, reconcile_interval_s=0)))
    try:
        keys = [p for p in tmp_path.glob("c*/admin.key")]
        assert len(keys) == 1  # written by whichever process created the admin
        db = apps[0].state.kumo.db
        with db.session() as s:
            assert s.exec(select(func.count()).select_from(Account)).one() == 1
            assert s.exec(select(func.count()).select_from(InstanceType)).one() > 0
            names = list(s.exec(select(InstanceType.name)))
        assert len(names) == len(set(names))
    finally:
        for app in apps:
            close_app(app)
