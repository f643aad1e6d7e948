"""Pure pieces of the controller: image checks, spec building,
pagination tokens, key fingerprints, settings defaults, error bodies."""
from __future__ import annotations

import base64
import hashlib
import subprocess
from datetime import datetime, timezone

import pytest

from controller.errors import InvalidParameter
from agent.contract.v1 import vpc_bridge
from agent.network import names
from controller.services import pagination
from controller.services.image_check import check, detect_format
from controller.services.key_pairs import fingerprint
from controller.settings import Settings
from controller.specs import build, image_url


def _qcow2(path, size="16M", *extra):
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *extra, str(path), size], check=True)
    return path


def test_image_check_accepts_plain_qcow2(tmp_path):
    p = _qcow2(tmp_path / "a.qcow2")
    facts = check(p, "qcow2", 1024**3)
    assert facts.virtual_size == 16 * 1024**2 and facts.format == "qcow2"
    assert facts.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()
    assert facts.size == p.stat().st_size


@pytest.mark.parametrize("case,code", [
    ("raw", "InvalidImage.FormatMismatch"),
    ("backing", "InvalidImage.BackingFile"),
    ("datafile", "InvalidImage.DataFile"),
    ("huge", "InvalidImage.VirtualSize"),
    ("corrupt", "InvalidImage"),
    ("missing", "InvalidImage.NotFound"),
])
def test_image_check_refuses(tmp_path, case, code):
    p = tmp_path / "x"
    if case == "raw":
        p.write_bytes(b"QFI" + b"\0" * 1000)
    elif case == "backing":
        base = _qcow2(tmp_path / "base")
        _qcow2(p, "16M", "-b", str(base), "-F", "qcow2")
    elif case == "datafile":
        _qcow2(p, "16M", "-o", f"data_file={tmp_path / 'd.raw'}")
    elif case == "huge":
        _qcow2(p, "2G")
    elif case == "corrupt":
        p.write_bytes(b"QFI\xfb" + b"\xff" * 1000)
    with pytest.raises(InvalidParameter) as err:
        check(p, "qcow2", 1024**3)
    assert err.value.code == code


def test_detect_format_never_trusts_the_name(tmp_path):
    p = tmp_path / "disguised.qcow2"
    p.write_bytes(b"\0" * 512)
    assert detect_format(p) == "raw"


def test_the_contract_names_the_vpc_bridge_the_dataplane_creates():
    for vni in (1, 0xabc, (1 << 24) - 1):
        assert vpc_bridge(vni) == names.bridge(vni)
    with pytest.raises(ValueError):
        vpc_bridge(0)


def test_pagination_roundtrip_and_errors():
    from types import SimpleNamespace

    from controller.models import Event
    events = pagination.Order(Event.seq)
    assert events.position(None) is None
    assert events.position(events.token(SimpleNamespace(seq=250))) == (250,)
    for bad in ("!!", "bm9wZQ", events.token(SimpleNamespace(seq="250"))):
        with pytest.raises(InvalidParameter):
            events.position(bad)


def test_fingerprint_matches_ssh_keygen_style():
    blob = b"\x00\x00\x00\x0bssh-ed25519" + b"\x00\x00\x00\x20" + b"\x01" * 32
    line = "ssh-ed25519 " + base64.b64encode(blob).decode()
    want = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    assert fingerprint(line) == "SHA256:" + want


def test_settings_defaults_and_urls(tmp_path, monkeypatch):
    monkeypatch.setenv("KUMO_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("KUMO_AGENT_SOCKET", str(tmp_path / "a.sock"))
    s = Settings()
    assert s.resolved_database_url() == f"sqlite:///{tmp_path}/kumo.db"
    assert s.resolved_agent_facing_url() == f"unix:{tmp_path}/a.sock"
    assert s.listen_host_port() == ("127.0.0.1", 8787)
    assert image_url("unix:/x.sock", "ami-0123456789abcdef0") == "/v1/images/ami-0123456789abcdef0/file"
    assert image_url("http://c:1/", "ami-0123456789abcdef0") == \
        "http://c:1/v1/images/ami-0123456789abcdef0/file"


def test_spec_from_instance():
    from controller.models import Host, Image, Instance, Subnet, Vpc
    from controller.specs import vpc_nic
    now = datetime.now(timezone.utc)
    host = Host(host_id="h1", hypervisor="qemu", architecture="x86_64", vcpus=4, memory_mib=4096,
                disk_bytes=10**12, agent_url="unix:/a.sock", created_at=now)
    img = Image(image_id="ami-0123456789abcdef0", name="kumo-tiny", owner_account_id="acct-1",
                path="/x", virtual_size=3 * 1024**3 + 1, size=10, sha256="a" * 64,
                ready_marker="KUMO-READY", created_at=now)
    inst = Instance(instance_id="i-0123456789abcdef0", reservation_id="r-1", account_id="acct-1",
                    image_id=img.image_id, instance_type="t3.nano", vcpus=1, memory_mib=256,
                    root_disk_gib=3, private_ip="10.200.7.10", mac="52:54:00:aa:bb:cc",
                    hostname="ip-10-200-7-10", generation=4, power="stopped", reboot_nonce=2,
                    ssh_public_key="ssh-ed25519 AAAA", created_at=now, updated_at=now)
    vpc = Vpc(vpc_id="vpc-0123456789abcdef0", account_id="acct-1", cidr_block="10.200.0.0/16",
              vni=0xabc, created_at=now)
    subnet = Subnet(subnet_id="subnet-0123456789abcdef0", account_id="acct-1", vpc_id=vpc.vpc_id,
                    cidr_block="10.200.7.0/24", created_at=now)
    spec = build(inst, img, host, "unix:/c.sock", vpc_nic(inst, vpc, subnet))
    assert spec.generation == 4 and spec.power == "stopped" and spec.reboot_nonce == 2
    # Never smaller than the image, even when the GiB rounding says otherwise.
    assert spec.root_disk_bytes == img.virtual_size
    nic = spec.nics[0]
    assert str(nic.address) == "10.200.7.10/24" and str(nic.gateway) == "10.200.7.1"
    assert "router" not in nic.model_dump()  # the dataplane's distributed router holds .1
    assert nic.bridge == "kb-000abc" and spec.ssh_authorized_keys == ["ssh-ed25519 AAAA"]
    assert spec.image.url == "/v1/images/ami-0123456789abcdef0/file"


def test_migrations_match_models(tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    import controller.models  # noqa: F401
    from controller import db_migrate
    from controller.db import Database

    db = Database(f"sqlite:///{tmp_path}/m.db")
    db_migrate.upgrade(db)
    db_migrate.upgrade(db)  # idempotent at head
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    db.dispose()
    assert diff == []


def test_migrations_upgrade_step_by_step(tmp_path):
    from alembic import command
    from sqlalchemy import inspect

    from controller import db_migrate
    from controller.db import Database

    db = Database(f"sqlite:///{tmp_path}/s.db")
    cfg = db_migrate.alembic_config(db.url)
    with db.engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.commit()
    assert "reboot_pending" not in {c["name"] for c in inspect(db.engine).get_columns("instance")}
    db_migrate.upgrade(db)
    assert "reboot_pending" in {c["name"] for c in inspect(db.engine).get_columns("instance")}
    db.dispose()
