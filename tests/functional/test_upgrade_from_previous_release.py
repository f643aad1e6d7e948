"""Upgrading a controller with data in it (issue 14, "Operations"): the database a previous
release wrote (tests/data/upgrade/release-0016, made by that release's own API with
tests/data/upgrade/make_fixture.py) is opened by this release, which migrates it at start
(0016 -> head), and then everything the users had is there, means what it meant, and works
with what this release added.

On SQLite (the fixture as written) and on PostgreSQL, production's database: there the
release-0016 database is built for real (`_release_0016_on_postgres`): the migrations up to 0016
(unchanged since that release) make its schema, every row of the fixture is copied in, and the
controller then upgrades it at start exactly as it upgrades the SQLite file.
"""
from __future__ import annotations

import gzip
import json
import shutil
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import JSON, Boolean, DateTime, MetaData, make_url, null, text
from sqlmodel import select

from controller import db_migrate
from controller.db import Database
from controller.ids import utcnow
from controller.models.billing import UsageInterval
from controller.services import metering_backfill
from tests.functional.fake_agent import Cloud
from tests.functional.pg import postgres

_FIXTURES = (postgres,)  # pytest finds `postgres` by its name in this module
FIXTURE = Path(__file__).resolve().parents[1] / "data" / "upgrade" / "release-0016"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def upgraded(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("upgrade")
    state = tmp / "controller"
    state.mkdir()
    with gzip.open(FIXTURE / "kumo.db.gz") as src, open(state / "kumo.db", "wb") as dst:
        shutil.copyfileobj(src, dst)
    shutil.copy(FIXTURE / "admin.key", state / "admin.key")
    expected = json.loads((FIXTURE / "expected.json").read_text())
    url = f"sqlite:///{state / 'kumo.db'}"
    server = None
    if request.param == "postgresql":
        server = request.getfixturevalue("postgres")  # skips where no server can run
        sqlite_file = tmp / "release-0016.db"
        (state / "kumo.db").rename(sqlite_file)  # the controller must not find it
        url = server.create_database("kumo_upgrade")
        _release_0016_on_postgres(sqlite_file, url, expected["release_head"])
    db = Database(url)
    assert db.engine.dialect.name == request.param
    assert _revision(db) == expected["release_head"]
    db.dispose()
    # create_app migrates to this release's head
    cloud = Cloud(tmp, **({"database_url": url} if server else {}))
    try:
        assert cloud.db.engine.dialect.name == request.param
        yield cloud, expected
    finally:
        cloud.close()
        if server is not None:
            _drop_database(server, url)


def _release_0016_on_postgres(sqlite_file: Path, url: str, release_head: str) -> None:
    """Make on an empty PostgreSQL database what release 0016 would have had there: its schema
    by this repository's migrations up to `release_head` (files 0001-0016 are those of the
    release, unedited since), then every row of the release's SQLite database, table by table
    in foreign-key order, with SQLite's storage turned into PostgreSQL's types (0/1 booleans,
    ISO datetime text, JSON text), and each id sequence moved past the ids copied."""
    db = Database(url)
    try:
        cfg = db_migrate.alembic_config(db.url)
        with db.engine.connect() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, release_head)
            conn.commit()
        meta = MetaData()
        meta.reflect(db.engine)
        src = sqlite3.connect(sqlite_file)
        try:
            assert src.execute("SELECT version_num FROM alembic_version").fetchall() == \
                [(release_head,)]
            src_tables = {r[0] for r in src.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%'")}
            # Same schema at the release's head on both: every table and column has a home.
            assert src_tables == set(meta.tables), src_tables ^ set(meta.tables)
            copied = 0
            with db.engine.connect() as conn:
                for table in meta.sorted_tables:
                    if table.name == "alembic_version":  # written by the migrations above
                        continue
                    cur = src.execute(f'SELECT * FROM "{table.name}"')
                    names = [d[0] for d in cur.description]
                    assert set(names) == set(table.columns.keys()), table.name
                    rows = [{n: _to_pg(table.columns[n].type, v) for n, v in zip(names, row)}
                            for row in cur]
                    if rows:
                        conn.execute(table.insert(), rows)
                        copied += len(rows)
                    for col in table.primary_key.columns:
                        seq = conn.execute(text("SELECT pg_get_serial_sequence(:t, :c)"),
                                           {"t": table.name, "c": col.name}).scalar()
                        if seq:  # the next id the database hands out follows the copied ones
                            conn.execute(text(
                                f'SELECT setval(:s, COALESCE((SELECT MAX("{col.name}") '
                                f'FROM "{table.name}"), 0) + 1, false)'), {"s": seq})
                conn.commit()
            assert copied > 100  # the fixture's ~130 rows, not an empty schema
        finally:
            src.close()
    finally:
        db.dispose()


def _to_pg(type_, value):
    if value is None:  # SQL NULL stays NULL (a JSON column would otherwise store JSON null)
        return null() if isinstance(type_, JSON) else None
    if isinstance(type_, Boolean):
        return bool(value)
    if isinstance(type_, DateTime):
        value = datetime.fromisoformat(value) if isinstance(value, str) else value
        # UtcDateTime keeps naive UTC; a zoned column would get the zone written out.
        return value.replace(tzinfo=timezone.utc) if type_.timezone else value
    if isinstance(type_, JSON):
        return json.loads(value)
    return value


def _drop_database(server, url: str) -> None:
    from psycopg import sql
    name = make_url(url).database
    with server.connect(autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def _revision(db) -> str:
    with db.engine.connect() as conn:
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()


def test_migrated_to_head_with_every_row_kept(upgraded):
    cloud, exp = upgraded
    assert _revision(cloud.db) == ScriptDirectory.from_config(
        db_migrate.alembic_config(str(cloud.db.engine.url))).get_current_head()
    names = {a["name"] for a in cloud.admin.get("/v1/accounts").json()["items"]}
    assert {"alice", "bob"} <= names
    alice = cloud.client(exp["accounts"]["alice"]["api_key"])  # old keys still sign in
    bob = cloud.client(exp["accounts"]["bob"]["api_key"])
    mine = {i["instance_id"]: i for i in alice.get(
        "/v1/instances", params={"max_results": 1000}).json()["items"]}
    for role in ("web", "stopped"):
        iid = exp["instances"][role]
        assert mine[iid]["state"] == exp["states"][iid]
        # Instances from before issue 12 keep booting from their NoCloud seed.
        assert mine[iid]["nocloud_seed"] is True
    web = mine[exp["instances"]["web"]]
    assert web["tags"] == {"Name": "web-1"} and web["key_name"] == "alice-key"
    assert web["public_ip"] == exp["public_ip"]
    assert web["security_group_ids"] == [exp["security_groups"]["web"]]
    stopped = mine[exp["instances"]["stopped"]]
    assert (stopped["instance_type"], stopped["vcpus"]) == ("t3.small", 2)
    # Accounts stay apart after the upgrade.
    assert bob.get(f"/v1/instances/{exp['instances']['web']}").status_code == 404
    assert bob.get(f"/v1/instances/{exp['instances']['bob']}").json()["state"] == "running"
    assert bob.get(f"/v1/instances/{exp['instances']['terminated']}").json()["state"] == \
        "terminated"

    [kp] = alice.get("/v1/key-pairs").json()["items"]
    assert (kp["name"], kp["fingerprint"]) == (exp["key_pair"]["name"],
                                                exp["key_pair"]["fingerprint"])
    assert alice.get(f"/v1/vpcs/{exp['vpc_id']}").status_code == 200
    subnets = {s["subnet_id"] for s in alice.get(
        "/v1/subnets", params={"vpc_id": exp["vpc_id"]}).json()["items"]}
    assert subnets == set(exp["subnets"])
    rt = alice.get(f"/v1/route-tables/{exp['route_table_id']}").json()
    assert {"destination_cidr_block": "0.0.0.0/0", "target": exp["internet_gateway_id"],
            "state": "active"} in rt["routes"], rt
    eip = alice.get(f"/v1/elastic-ips/{exp['allocation_id']}").json()
    assert eip["instance_id"] == exp["instances"]["web"]
    db_group = alice.get(f"/v1/security-groups/{exp['security_groups']['db']}").json()
    assert [(r["from_port"], r["peer_group_id"]) for r in db_group["ingress_rules"]] == \
        [(5432, exp["security_groups"]["web"])]
    web_group = alice.get(f"/v1/security-groups/{exp['security_groups']['web']}").json()
    assert sorted((r["from_port"], r["cidr_ipv4"]) for r in web_group["ingress_rules"]) == \
        [(22, "192.0.2.0/24"), (443, "0.0.0.0/0")]
    group = alice.get(f"/v1/autoscaling-groups/{exp['autoscaling_group']}").json()
    assert (group["min_size"], group["max_size"]) == (1, 3)
    assert alice.get(f"/v1/alarms/{exp['alarm']}").status_code == 200
    assert alice.get(f"/v1/launch-templates/{exp['launch_template']}").status_code == 200


def test_old_rows_work_with_this_release(upgraded):
    """The hosts come back (new agents, this release's heartbeat), the stopped instance starts,
    a new instance launches into the old subnet with the old group and key, and this release's
    additions (billing, metadata options) answer for the old rows."""
    cloud, exp = upgraded
    alice = cloud.client(exp["accounts"]["alice"]["api_key"])
    cloud.add_host("h1")
    cloud.add_host("h2")
    stopped = exp["instances"]["stopped"]
    assert alice.post(f"/v1/instances/{stopped}/start").status_code == 200
    new = cloud.launch(alice, key_name="alice-key", subnet_id=exp["subnets"][0],
                       security_group_ids=[exp["security_groups"]["web"]])
    cloud.converge(4)
    for iid in (stopped, new):
        inst = cloud.instance(alice, iid)
        assert inst["state"] == "running", inst
    assert cloud.instance(alice, new)["metadata_options"]["http_tokens"] in ("optional",
                                                                            "required")
    usage = alice.get("/v1/usage", params={"start": "2026-01-01T00:00:00Z",
                                           "end": "2100-01-01T00:00:00Z"})
    assert usage.status_code == 200, usage.text


def test_what_was_billable_before_metering_is_metered_from_the_upgrade(upgraded):
    """Metering began after release 0016: at start the controller opens, from then, the
    intervals the hooks would have opened (services/metering_backfill.py), once."""
    cloud, exp = upgraded
    inst = exp["instances"]
    with cloud.db.session() as s:
        rows = {(r.resource_id, r.usage_type): r for r in s.exec(
            select(UsageInterval).where(UsageInterval.ended_at == None))}  # noqa: E711
        assert metering_backfill.backfill(s, utcnow()) == 0  # idempotent: a restart adds none
    assert rows[(inst["web"], "instance-hours")].dimension == "t3.nano"
    assert rows[(inst["bob"], "instance-hours")].account_id == exp["accounts"]["bob"][
        "account_id"]
    assert rows[(inst["web"], "volume-gib-month")].kind == "root-volume"
    assert (exp["allocation_id"], "public-ipv4-hours") in rows
    assert not [k for k in rows if k[0] == inst["terminated"]]
