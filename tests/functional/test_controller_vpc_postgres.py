"""The VPC networking and security group scenarios (tests/functional/test_controller_vpc*.py,
test_controller_security_groups.py) re-run unchanged on
PostgreSQL (a throw-away server from tests/functional/pg.py). There, unlike SQLite's BEGIN
IMMEDIATE, concurrent transactions really interleave: the IPAM concurrency scenario shows the
unique constraint on (subnet_id, address) plus savepoint retries keep every address distinct.

Skipped (with the reason) when the PostgreSQL server binaries or psycopg are missing."""
from __future__ import annotations

import functools
import inspect

import pytest

from tests.functional import (test_controller_security_groups, test_controller_vpc,
                              test_controller_vpc_ips)
from tests.functional.fake_agent import Cloud
from tests.functional.pg import postgres  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow
# SQLite-specific (it builds its own SQLite database); test_controller_postgres.py already checks
# that PostgreSQL migrated to head (0003 included) matches the models.
_SKIP = {"test_migration_0003_downgrades_and_upgrades",
         "test_migration_0005_gives_existing_vpcs_a_default_group"}




def _scenarios():
    for mod in (test_controller_vpc, test_controller_vpc_ips, test_controller_security_groups):
        short = mod.__name__.removeprefix("tests.functional.test_controller_")
        for name, fn in inspect.getmembers(mod, inspect.isfunction):
            if name.startswith("test_") and fn.__module__ == mod.__name__ and name not in _SKIP:
                yield pytest.param(mod, name, id=f"{short}::{name}")


@pytest.mark.parametrize("mod,name", list(_scenarios()))
def test_vpc_scenario_on_postgres(mod, name, postgres, tmp_path, monkeypatch):
    url = postgres.create_database()
    fn = getattr(mod, name)
    monkeypatch.setattr(mod, "Cloud", functools.partial(Cloud, database_url=url), raising=False)
    params = inspect.signature(fn).parameters
    if "cloud" not in params:
        fn(tmp_path)
        return
    cloud = Cloud(tmp_path, database_url=url)
    try:
        assert cloud.app.state.kumo.db.engine.dialect.name == "postgresql"
        cloud.image()
        cloud.add_host("host-1")
        if "monkeypatch" in params:
            fn(cloud, monkeypatch)
        else:
            fn(cloud)
    finally:
        cloud.close()
