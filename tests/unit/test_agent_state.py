"""Agent state: atomic persistence of accepted specs, runtime records and tombstones."""
from __future__ import annotations

import json

import pytest

from agent.contract.v1 import InstanceSpec
from agent.reconcile.readiness import check_ready
from agent.state import Runtime, StateError, StateStore, atomic_write_json


def spec(gen=1, n=1) -> InstanceSpec:
    return InstanceSpec.model_validate({
        "instance_id": f"i-{n:017x}", "generation": gen, "power": "running", "vcpus": 1,
        "memory_mib": 128, "root_disk_bytes": 1 << 30, "hostname": "h",
        "image": {"image_id": "ami-0000000000000000a", "url": "file:///x", "sha256": "a" * 64,
                  "virtual_size": 1 << 30}})


def test_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path):
    p = tmp_path / "d" / "x.json"
    atomic_write_json(p, {"a": 1})
    atomic_write_json(p, {"a": 2})
    assert json.loads(p.read_text()) == {"a": 2}
    assert [q.name for q in p.parent.iterdir()] == ["x.json"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    p = tmp_path / "x.json"
    atomic_write_json(p, {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(p, {"a": object()})
    assert json.loads(p.read_text()) == {"a": 1}
    assert [q.name for q in tmp_path.iterdir()] == ["x.json"]


def test_specs_and_runtime_survive_a_reload(tmp_path):
    store = StateStore(tmp_path)
    store.put_spec(spec(gen=4))
    rt = store.runtime("i-00000000000000001")
    rt.boot_count, rt.applied_power, rt.booted = 2, "running", True
    store.save_runtime("i-00000000000000001")
    again = StateStore(tmp_path)
    assert again.spec("i-00000000000000001") == spec(gen=4)
    assert again.runtime("i-00000000000000001") == rt


def test_remove_leaves_a_tombstone_and_no_runtime(tmp_path):
    store = StateStore(tmp_path)
    store.put_spec(spec(gen=5))
    store.runtime("i-00000000000000001").boot_count = 1
    store.save_runtime("i-00000000000000001")
    assert store.remove_spec("i-00000000000000001") == spec(gen=5)
    assert store.remove_spec("i-00000000000000001") is None  # already gone: fine
    again = StateStore(tmp_path)
    assert again.specs() == {}
    assert again.deleted_generation("i-00000000000000001") == 5
    assert not any((tmp_path / "agent-state" / "runtime").iterdir())
    # A save racing with the delete must not resurrect the record.
    store.save_runtime("i-00000000000000001")
    assert not any((tmp_path / "agent-state" / "runtime").iterdir())
    again.put_spec(spec(gen=6))
    assert again.deleted_generation("i-00000000000000001") is None


def test_a_corrupt_spec_stops_the_agent_but_a_corrupt_runtime_does_not(tmp_path):
    store = StateStore(tmp_path)
    store.put_spec(spec())
    store.runtime("i-00000000000000001").boot_count = 2
    store.save_runtime("i-00000000000000001")
    (tmp_path / "agent-state" / "runtime" / "i-00000000000000001.json").write_text("{broken")
    again = StateStore(tmp_path)
    assert again.runtime("i-00000000000000001") == Runtime()
    (tmp_path / "agent-state" / "specs" / "i-00000000000000001.json").write_text("{broken")
    with pytest.raises(StateError):
        StateStore(tmp_path)


def test_runtime_ignores_unknown_keys():
    assert Runtime.from_dict({"boot_count": 3, "from_the_future": 1}).boot_count == 3


# -- readiness -------------------------------------------------------------------------------

def test_ready_marker_only_after_the_boot_offset(tmp_path):
    log = tmp_path / "console.log"
    log.write_bytes(b"KUMO-READY old boot\n")
    rt = Runtime(console_offset=log.stat().st_size, console_scan_pos=log.stat().st_size)
    assert check_ready(rt, log, "KUMO-READY", 1.0) is False
    with open(log, "ab") as f:
        f.write(b"booting\nKUMO-RE")
    assert check_ready(rt, log, "KUMO-READY", 2.0) is False
    with open(log, "ab") as f:
        f.write(b"ADY instance-id=i-1\n")  # the marker was split across two checks
    assert check_ready(rt, log, "KUMO-READY", 3.0) is True
    assert rt.booted and rt.booted_at == 3.0
    assert check_ready(rt, log, "KUMO-READY", 4.0) is False  # already booted
    assert rt.booted_at == 3.0


def test_ready_after_the_log_was_truncated(tmp_path):
    log = tmp_path / "console.log"
    log.write_bytes(b"x" * 100)
    rt = Runtime(console_offset=100, console_scan_pos=100)
    log.write_bytes(b"KUMO-READY\n")
    assert check_ready(rt, log, "KUMO-READY", 1.0) is True


def test_no_marker_or_no_log_never_ready(tmp_path):
    rt = Runtime()
    assert check_ready(rt, tmp_path / "missing.log", "KUMO-READY", 1.0) is False
    (tmp_path / "c.log").write_text("KUMO-READY\n")
    assert check_ready(rt, tmp_path / "c.log", None, 1.0) is False
    assert not rt.booted
