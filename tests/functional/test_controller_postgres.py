"""The controller on PostgreSQL (a throw-away server from tests/functional/pg.py, unix socket
only, one fresh database per test):
- migrations to head on an empty database match the models; 0001 -> head keeps existing rows;
  dropping host.net_index (0007) keeps the hosts, and its downgrade numbers them again;
- every scenario of tests/functional/test_controller_{api,lifecycle,placement,hosts}.py re-runs
  unchanged against PostgreSQL through the fake-agent `Cloud` harness (accounts and isolation,
  launch/describe/stop/start/reboot/terminate, client tokens, 50 launches for 10 slots, ...);
- concurrency as several controller processes would see it: placement without the in-process
  lock (exactly 10 of 50 placed, duplicate client tokens -> one reservation), concurrent updates
  of one instance lose nothing, concurrent first heartbeats register every host once, the
  hosts' FOR UPDATE alone orders a placement's usage sum after the previous placement, and four
  controller processes starting together on one empty database all start.

Skipped (with the reason) when the PostgreSQL server binaries or psycopg are missing. Set
KUMO_TEST_PG_ICU_LOCALE=en-US to run on databases with a linguistic collation instead of "C"."""
from __future__ import annotations

import contextlib
import inspect
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.functional import (test_controller_api, test_controller_hosts,
                              test_controller_lifecycle, test_controller_placement,
                              test_controller_with_agent)
from tests.functional.fake_agent import Cloud
from tests.functional.pg import postgres  # noqa: F401 (fixture)
from tests.functional.test_controller_with_agent import procs  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow




@pytest.fixture
def pg_url(postgres) -> str:
    """A fresh, empty database for one test."""
    return postgres.create_database(icu_locale=os.environ.get("KUMO_TEST_PG_ICU_LOCALE"))


@contextlib.contextmanager
def _cloud(tmp_path, url: str | None, **overrides):
    """A Cloud on `url` (None: the default SQLite file), closed at the end."""
    c = Cloud(tmp_path, database_url=url, **overrides)
    try:
        yield c
    finally:
        c.close()


# -- migrations -----------------------------------------------------------------------------------

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


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_dropping_host_net_index_keeps_hosts(backend, request, tmp_path):
    """0006 -> 0007 on a database with hosts: the column and its unique constraint go, the
    hosts stay; 0007 -> 0006 numbers them again 1.. in registration order, unique."""
    from alembic import command
    from sqlalchemy import inspect as sa_inspect, text
    from sqlalchemy.exc import IntegrityError

    from controller import db_migrate
    from controller.db import Database

    url = (request.getfixturevalue("pg_url") if backend == "postgresql"
           else f"sqlite:///{tmp_path}/kumo.db")
    db = Database(url)
    cfg = db_migrate.alembic_config(db.url)

    def migrate(step, revision):
        with db.engine.connect() as conn:
            cfg.attributes["connection"] = conn
            step(cfg, revision)
            conn.commit()
    try:
        migrate(command.upgrade, "0006")
        with db.engine.begin() as conn:
            for k, (host_id, day) in enumerate([("host-b", 1), ("host-a", 2)], start=5):
                conn.execute(text(
                    "INSERT INTO host (host_id, state, enabled, hypervisor, architecture, vcpus, "
                    "memory_mib, disk_bytes, versions, agent_url, contract, net_index, created_at, "
                    "network_generation, network_acked) VALUES (:h, 'up', true, 'qemu', 'x86_64', "
                    "2, 2048, 1, '{}', 'unix:/a.sock', 'v1', :k, :t, 0, 0)"),
                    {"h": host_id, "k": k, "t": f"2026-01-0{day} 00:00:00"})
        migrate(command.upgrade, "0007")
        inspector = sa_inspect(db.engine)
        assert "net_index" not in {c["name"] for c in inspector.get_columns("host")}
        assert all("net_index" not in u["column_names"]
                   for u in inspector.get_unique_constraints("host"))
        with db.engine.connect() as conn:
            assert sorted(conn.execute(text("SELECT host_id FROM host")).scalars()) == \
                ["host-a", "host-b"]
        migrate(command.downgrade, "0006")
        with db.engine.connect() as conn:
            rows = conn.execute(text("SELECT host_id, net_index FROM host ORDER BY host_id")).all()
        assert [tuple(r) for r in rows] == [("host-a", 2), ("host-b", 1)]
        with pytest.raises(IntegrityError):  # unique again
            with db.engine.begin() as conn:
                conn.execute(text("UPDATE host SET net_index = 1"))
        migrate(command.upgrade, "head")
    finally:
        db.dispose()


# -- the functional scenarios, unchanged, on PostgreSQL -------------------------------------------

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
    made: list[Cloud] = []

    def cloud_on_pg(*args, **overrides):
        made.append(Cloud(*args, **{"database_url": pg_url, **overrides}))
        return made[-1]

    monkeypatch.setattr(mod, "Cloud", cloud_on_pg)
    params = set(inspect.signature(fn).parameters) - set(kwargs)
    if "cloud" not in params:
        assert params == {"tmp_path"}, f"{name}: teach this runner about {params}"
        fn(tmp_path, **kwargs)
        # Guard against a scenario that built its Cloud some other way (silently on SQLite).
        assert made and {c.app.state.kumo.db.engine.dialect.name for c in made} == {"postgresql"}
        return
    assert params == {"cloud"}, f"{name}: teach this runner about {params}"
    overrides, with_host = _FIXTURES[mod]
    with _cloud(tmp_path, pg_url, **overrides) as cloud:
        assert cloud.app.state.kumo.db.engine.dialect.name == "postgresql"
        cloud.image()
        if with_host:
            cloud.add_host("host-1")
        fn(cloud, **kwargs)


def test_controller_and_agent_processes_on_postgres(pg_url, tmp_path, request):
    """test_controller_with_agent's end-to-end scenario (`python -m controller` and
    `python -m agent` over unix sockets) with KUMO_DATABASE_URL pointing at PostgreSQL."""
    procs = request.getfixturevalue("procs")

    def start(env: dict, module: str, log):
        if module == "controller":
            env = {**env, "KUMO_DATABASE_URL": pg_url}
        return procs(env, module, log)

    test_controller_with_agent.test_controller_and_agent_processes(tmp_path, start)
    assert not (tmp_path / "ctl" / "kumo.db").exists()  # no SQLite file: it ran on PostgreSQL
    from sqlalchemy import create_engine, text
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            states = conn.execute(text("SELECT state FROM instance")).scalars().all()
        assert states == ["terminated"]
    finally:
        engine.dispose()


# -- placement without the in-process lock (= several controller processes) ---------------------

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
    with _cloud(tmp_path, pg_url, cpu_overcommit=1.0) as c:
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


# -- read-modify-write of one instance from concurrent requests ----------------------------------

@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_reboots_lose_no_update(backend, request, tmp_path):
    """Every reboot bumps reboot_nonce and generation. Concurrent requests on one controller
    (no placement lock involved) must not overwrite each other's bumps (they did on PostgreSQL
    before controller/db.py serialised transactions: 2 of 20 survived)."""
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    with _cloud(tmp_path, url) as cloud:
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


def test_concurrent_first_heartbeats_register_every_host_once(pg_url, tmp_path):
    """First heartbeats of many hosts at once: each registers (read-then-insert of its host row
    under the transaction lock; racing inserts would answer 500), exactly once, up."""
    from tests.functional.fake_agent import FakeAgent

    with _cloud(tmp_path, pg_url) as cloud:
        agents = [FakeAgent(f"host-{k}") for k in range(12)]
        for a in agents:
            cloud.agents[a.url] = a
        results = _concurrently(len(agents), lambda i: cloud.agent_client.post(
            "/v1/agent/heartbeat", json=agents[i].heartbeat_request().model_dump(mode="json")))
        assert {r.status_code for r in results} == {200}, [r.text for r in results][:3]
        from controller.models import Host
        from sqlmodel import select
        with cloud.app.state.kumo.db.session() as s:
            registered = [(h.host_id, h.state) for h in s.exec(select(Host))]
        assert sorted(registered) == sorted((a.host_id, "up") for a in agents)


def test_host_lock_alone_orders_usage_after_previous_placement(pg_url, tmp_path):
    """capacity.host_states on its own, without the engine's transaction lock (a plain engine):
    a second placement blocks on the hosts' FOR UPDATE until the first commits, and then sums
    usage that includes the first one's instance (the sum used to run before the lock)."""
    from sqlalchemy import create_engine
    from sqlmodel import Session

    from controller.ids import utcnow
    from controller.models import Instance
    from controller.services.capacity import host_states

    with _cloud(tmp_path, pg_url) as cloud:
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


_START_ONE = """
import sys
from pathlib import Path
from controller.app import close_app, create_app
from controller.settings import Settings
import time
print("ready", flush=True)
go = Path(sys.argv[3])
deadline = time.monotonic() + 60
while not go.exists() and time.monotonic() < deadline:  # start together, imports done
    time.sleep(0.005)
app = create_app(Settings(state_dir=Path(sys.argv[1]), database_url=sys.argv[2],
                          reconcile_interval_s=0))
close_app(app)
"""


def test_controllers_starting_together_on_one_empty_database(pg_url, tmp_path):
    """Several controller processes sharing one PostgreSQL database start at once on an empty
    database: migrations, the admin account and the instance-type seed each happen exactly once,
    and every process starts."""
    import subprocess
    import sys
    from pathlib import Path

    from sqlmodel import func, select

    from controller.db import Database
    from controller.models import Account, InstanceType

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUMO_")}
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _START_ONE, str(tmp_path / f"c{i}"),
                               pg_url, str(go)], cwd=root, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(4)]
    for p in procs:  # every interpreter has imported everything (or died: EOF)
        p.stdout.readline()
    go.touch()
    outs = []
    for p in procs:
        try:
            outs.append((p.wait(timeout=120), p.stdout.read()))
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdout.close()
    assert [rc for rc, _ in outs] == [0] * 4, "\n".join(out[-3000:] for _, out in outs)
    assert len(list(tmp_path.glob("c*/admin.key"))) == 1  # by whichever created the admin
    db = Database(pg_url)
    try:
        with db.session() as s:
            assert s.exec(select(func.count()).select_from(Account)).one() == 1
            names = list(s.exec(select(InstanceType.name)))
        assert names and len(names) == len(set(names))
    finally:
        db.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize("field,value", [("architecture", "x" * 17),
                                         ("agent_url", "http://h/" + "a" * 4096)])
def test_oversized_host_fields_are_refused_cleanly(backend, field, value, request, tmp_path):
    """Values longer than their column: a clear 400 on both backends (PostgreSQL used to raise
    a DataError, a 500; SQLite stored them)."""
    from tests.functional.fake_agent import FakeAgent

    url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    with _cloud(tmp_path, url) as cloud:
        agent = FakeAgent("host-1")
        agent.info = agent.info.model_copy(update={field: value})
        r = cloud.agent_client.post("/v1/agent/heartbeat",
                                    json=agent.heartbeat_request().model_dump(mode="json"))
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "InvalidParameterValue"
        assert cloud.admin.get("/v1/hosts").json()["items"] == []
