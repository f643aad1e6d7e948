"""Backup and restore of the controller (controller/backup.py, `kumo admin backup|restore`;
issue 14): a backup of a controller with data, restored onto a fresh controller, gives back the
accounts, keys, instances and secrets, and the agents (which kept their guests) reconcile to it;
on SQLite and on PostgreSQL (pg_dump/pg_restore against a throw-away server); a security group
rule made after the backup leaves the host's network document. Damaged backups and non-empty
targets are refused before anything changes. (With the lab's real controller and agents:
tests/lab/test_restore_lab.py.)
"""
from __future__ import annotations

import os
import tarfile
import time

import pytest
from typer.testing import CliRunner

from controller import backup as backups
from controller.cli.main import app as cli
from controller.settings import Settings
from tests.functional.fake_agent import AGENT_TOKEN, Cloud
from tests.functional.pg import postgres  # noqa: F401 (fixture)


def _settings(tmp, **overrides) -> Settings:
    """The Settings Cloud(tmp) builds, for restoring before its controller starts."""
    base = dict(state_dir=tmp / "controller", agent_token=AGENT_TOKEN, reconcile_interval_s=0,
                agent_facing_url="http://controller.test:8787", heartbeat_timeout_s=30)
    return Settings(**{**base, **overrides})


def _scenario(tmp_path, **db):
    """Cloud A with data, backed up; an instance launched after the backup; A lost; B restored
    from the backup with A's agents. Returns (B, what A had)."""
    a = Cloud(tmp_path / "a", **db.get("a", {}))
    try:
        a.image()
        a.add_host("h1")
        a.add_host("h2")
        alice_key = a.admin.post("/v1/accounts", json={"name": "alice"}).json()["api_key"]
        alice = a.client(alice_key)
        kept = a.launch_running(alice, tags={"Name": "kept"})
        backup_file = tmp_path / "kumo.backup"
        manifest = backups.create(a.settings, backup_file)
        assert oct(backup_file.stat().st_mode & 0o777) == "0o600"
        later = a.launch_running(alice)  # not in the backup
        agents = a.agents
        admin_key = a.admin_key
    finally:
        a.close()
    report = backups.restore(_settings(tmp_path / "b", **db.get("b", {})), backup_file)
    assert report.images_missing == [f["file"] for f in manifest["images"]]
    b = Cloud(tmp_path / "b", **db.get("b", {}))
    return b, dict(alice_key=alice_key, kept=kept, later=later, agents=agents,
                   admin_key=admin_key, report=report)


def _check_restored(b: Cloud, had: dict) -> None:
    assert b.admin_key == had["admin_key"]
    alice = b.client(had["alice_key"])
    assert b.instance(alice, had["kept"])["tags"] == {"Name": "kept"}
    assert alice.get(f"/v1/instances/{had['later']}").status_code == 404
    # The agents survived the controller: they come back to the restored one and reconcile
    # to it: the instance the backup knows keeps running, the later one is an orphan and goes.
    b.agents.update(had["agents"])
    b.converge(4)
    on_hosts = {iid for ag in had["agents"].values() for iid in ag.specs}
    assert had["kept"] in on_hosts and had["later"] not in on_hosts
    assert b.instance(alice, had["kept"])["state"] == "running"


def test_restore_onto_a_fresh_controller_on_sqlite(tmp_path):
    b, had = _scenario(tmp_path)
    try:
        assert had["report"].database == "sqlite" and "admin.key" in had["report"].files
        assert oct((tmp_path / "b" / "controller" / "admin.key").stat().st_mode & 0o777) == \
            "0o600"
        _check_restored(b, had)
    finally:
        b.close()


def test_restore_onto_a_fresh_controller_on_postgresql(tmp_path, postgres):  # noqa: F811
    a_url, b_url = postgres.create_database(), postgres.create_database()
    b, had = _scenario(tmp_path, a={"database_url": a_url}, b={"database_url": b_url})
    try:
        assert had["report"].database == "postgresql"
        _check_restored(b, had)
    finally:
        b.close()


def test_damaged_backups_and_used_targets_are_refused(tmp_path):
    a = Cloud(tmp_path / "a")
    try:
        a.admin.post("/v1/accounts", json={"name": "alice"})
        good = tmp_path / "good.backup"
        backups.create(a.settings, good)
    finally:
        a.close()
    target = _settings(tmp_path / "b")
    # A member changed after the backup was made.
    bad = tmp_path / "bad.backup"
    with tarfile.open(good) as src, tarfile.open(bad, "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()
            if m.name == "state/admin.key":
                data = b"x" + data[1:]
            dst.addfile(m, __import__("io").BytesIO(data))
    with pytest.raises(backups.BackupError) as e:
        backups.restore(target, bad)
    assert e.value.code == "BackupCorrupt"
    assert not (tmp_path / "b" / "controller").exists()  # nothing was written
    (tmp_path / "junk").write_bytes(b"not a tar")
    with pytest.raises(backups.BackupError) as e:
        backups.restore(target, tmp_path / "junk")
    assert e.value.code == "BackupUnreadable"
    # A controller that already has a database is not overwritten unless asked.
    used = Cloud(tmp_path / "c")
    used.close()
    with pytest.raises(backups.BackupError) as e:
        backups.restore(_settings(tmp_path / "c"), good)
    assert e.value.code == "DatabaseNotEmpty"
    assert backups.restore(_settings(tmp_path / "c"), good, force=True).database == "sqlite"


def test_cli_backup_and_restore(tmp_path, monkeypatch):
    a = Cloud(tmp_path / "a")
    a.close()
    runner = CliRunner()
    monkeypatch.setenv("KUMO_STATE_DIR", str(tmp_path / "a" / "controller"))
    out = tmp_path / "cli.backup"
    r = runner.invoke(cli, ["-o", "json", "admin", "backup", str(out)])
    assert r.exit_code == 0, r.output
    assert '"database": "sqlite"' in r.output and out.exists()
    monkeypatch.setenv("KUMO_STATE_DIR", str(tmp_path / "b"))
    r = runner.invoke(cli, ["-o", "json", "admin", "restore", str(out)])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "b" / "kumo.db").exists() and (tmp_path / "b" / "admin.key").exists()
    r = runner.invoke(cli, ["admin", "restore", str(out)])  # now it has a database
    assert r.exit_code == 1 and "DatabaseNotEmpty" in r.output
    assert not os.environ.get("KUMO_DATABASE_URL")


def _ports_rules(agent) -> set[tuple]:
    """(group, protocol, from port, cidr) of every rule in the host's network document."""
    return {(g.group_id, r.protocol, r.from_port, str(r.cidr))
            for g in agent.network.security_groups for r in g.rules}


def test_network_changes_after_the_backup_leave_the_hosts(tmp_path, monkeypatch):
    """A security group rule made after the backup reached its host (a network document of a
    newer generation than the backup knows). After the restore the host is sent the backup's
    document again, at a generation above the one it holds, so the rule leaves its firewall."""
    from controller import reconciler as reconciler_module
    a = Cloud(tmp_path / "a")
    try:
        a.image()
        host = a.add_host("h1", underlay_ip="192.0.2.11")
        alice = a.client(a.admin.post("/v1/accounts", json={"name": "alice"}).json()["api_key"])
        a.launch_running(alice)
        a.converge()
        backup_file = tmp_path / "kumo.backup"
        backups.create(a.settings, backup_file)
        rules_at_backup, gen_at_backup = _ports_rules(host), host.network.generation
        [group] = [g for g in alice.get("/v1/security-groups").json()["items"] if g["is_default"]]
        r = alice.post(f"/v1/security-groups/{group['group_id']}/ingress", json={"rules": [
            {"protocol": "tcp", "from_port": 47211, "to_port": 47211,
             "cidr_ipv4": "198.51.100.0/24"}]})
        assert r.status_code == 200, r.text
        a.converge()
        assert (group["group_id"], "tcp", 47211, "198.51.100.0/24") in _ports_rules(host)
        held = host.network.generation
        assert held > gen_at_backup
    finally:
        a.close()
    backups.restore(_settings(tmp_path / "b"), backup_file)
    b = Cloud(tmp_path / "b")
    try:
        b.agents[host.url] = host
        # The reconciler reuses its host documents for up to NETWORK_FULL_REBUILD_S (60 s)
        # while their inputs are unchanged; the generation it learns from the host's refusal
        # (StaleGeneration) is in the next rebuild: make every tick one, not wait a minute.
        monkeypatch.setattr(reconciler_module, "NETWORK_FULL_REBUILD_S", 0.0)
        for _ in range(6):
            b.converge(1)
            if host.network.generation > held:
                break
            time.sleep(0.6)  # the refused push's backoff (0.5 s)
        assert host.network.generation > held
        assert _ports_rules(host) == rules_at_backup
    finally:
        b.close()
