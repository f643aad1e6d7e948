"""The agent's HTTP surface on fake drivers: auth, PUT/GET/DELETE semantics, errors, console,
persistence of accepted specs, host info."""
from __future__ import annotations

import json
import time

import pytest


from tests.functional.agent_harness import TOKEN, make_spec, running_agent, wait_for


@pytest.fixture
def agent(tmp_path):
    with running_agent(tmp_path) as client:
        yield client


def _power(client, iid):
    return client.get(f"/v1/instances/{iid}").json()["power"]


# -- auth ----------------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": f"Basic {TOKEN}"},
                                     {"Authorization": TOKEN}])
def test_requests_without_the_token_are_rejected(agent, headers):
    for method, path in [("GET", "/v1/host"), ("GET", "/v1/instances"),
                         ("PUT", f"/v1/instances/{make_spec()['instance_id']}"),
                         ("DELETE", f"/v1/instances/{make_spec()['instance_id']}")]:
        r = agent.request(method, path, headers={"Authorization": ""} | headers,
                          json=make_spec() if method == "PUT" else None)
        assert r.status_code == 401, (method, path)
        assert r.json()["error"]["code"] == "AuthFailure"
    assert agent.hv.domains == {}


def test_an_agent_without_a_configured_token_refuses_everything(tmp_path):
    with running_agent(tmp_path, token="") as client:
        r = client.get("/v1/host", headers={"Authorization": "Bearer "})
        assert r.status_code == 401


def test_host_info(agent):
    r = agent.get("/v1/host")
    assert r.status_code == 200
    host = r.json()
    assert host["host_id"] == "test-host"
    assert host["agent_url"] == "http://127.0.0.1:8788"
    assert host["hypervisor"] == "qemu"
    assert host["vcpus"] >= 1 and host["memory_mib"] > 0 and host["disk_bytes"] > 0
    assert host["contract"] == "v1" and "agent" in host["versions"]


# -- PUT -----------------------------------------------------------------------------------

def test_put_is_idempotent(agent):
    spec = make_spec()
    iid = spec["instance_id"]
    r = agent.put(f"/v1/instances/{iid}", json=spec)
    assert r.status_code == 200
    assert r.json()["generation"] == 1
    wait_for(lambda: _power(agent, iid) == "running")
    calls = list(agent.hv.calls)
    storage_calls = list(agent.storage.calls)
    for _ in range(3):
        r = agent.put(f"/v1/instances/{iid}", json=spec)
        assert r.status_code == 200 and r.json()["power"] == "running"
    time.sleep(0.3)  # several resync passes
    assert agent.hv.calls == calls
    assert agent.storage.calls == storage_calls
    assert agent.get(f"/v1/instances/{iid}").json()["boot_count"] == 1


def test_lower_generation_is_refused_and_changes_nothing(agent, tmp_path):
    spec = make_spec(generation=3)
    iid = spec["instance_id"]
    assert agent.put(f"/v1/instances/{iid}", json=spec).status_code == 200
    r = agent.put(f"/v1/instances/{iid}", json=make_spec(generation=2, power="stopped"))
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "StaleGeneration"
    saved = json.loads((tmp_path / "agent-state" / "specs" / f"{iid}.json").read_text())
    assert saved["generation"] == 3 and saved["power"] == "running"
    wait_for(lambda: _power(agent, iid) == "running")


def test_same_generation_with_different_content_is_a_conflict(agent):
    iid = make_spec()["instance_id"]
    assert agent.put(f"/v1/instances/{iid}", json=make_spec()).status_code == 200
    r = agent.put(f"/v1/instances/{iid}", json=make_spec(vcpus=2))
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "IdempotentParameterMismatch"
    assert agent.app_.state.store.spec(iid).vcpus == 1


def test_accepted_spec_is_persisted_atomically(agent, tmp_path):
    spec = make_spec()
    agent.put(f"/v1/instances/{spec['instance_id']}", json=spec)
    specs = tmp_path / "agent-state" / "specs"
    assert [p.name for p in specs.iterdir()] == [f"{spec['instance_id']}.json"]  # no temp files
    assert json.loads((specs / f"{spec['instance_id']}.json").read_text())["hostname"] == "web-1"


@pytest.mark.parametrize("path_id,body,code", [
    ("i-123", make_spec(), "InvalidInstanceID.Malformed"),
    (make_spec(2)["instance_id"], make_spec(1), "InvalidParameterValue"),
    (make_spec()["instance_id"], make_spec(vcpus=0), "InvalidParameterValue"),
    (make_spec()["instance_id"], make_spec(hostname="a;rm -rf /"), "InvalidParameterValue"),
    (make_spec()["instance_id"], {**make_spec(), "surprise": 1}, "InvalidParameterValue"),
])
def test_bad_input_is_a_400_with_a_stable_code(agent, path_id, body, code):
    r = agent.put(f"/v1/instances/{path_id}", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == code
    assert r.json()["error"]["retryable"] is False
    assert agent.app_.state.store.specs() == {}


def test_invalid_user_data_is_reported_not_crashed(agent):
    spec = make_spec(user_data_b64="***not base64***")
    iid = spec["instance_id"]
    assert agent.put(f"/v1/instances/{iid}", json=spec).status_code == 200
    obs = wait_for(lambda: (o := agent.get(f"/v1/instances/{iid}").json())["error"] and o)
    assert obs["error"]["code"] == "InvalidUserData"
    assert obs["error"]["retryable"] is False
    assert obs["power"] == "error"


# -- GET / DELETE / console ----------------------------------------------------------------

def test_unknown_instance_is_404(agent):
    iid = make_spec(9)["instance_id"]
    for path in (f"/v1/instances/{iid}", f"/v1/instances/{iid}/console"):
        r = agent.get(path)
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "InstanceNotFound"


def test_list_instances(agent):
    for n in (1, 2):
        agent.put(f"/v1/instances/{make_spec(n)['instance_id']}", json=make_spec(n))
    ids = [o["instance_id"] for o in agent.get("/v1/instances").json()]
    assert ids == [make_spec(1)["instance_id"], make_spec(2)["instance_id"]]


def test_delete_is_idempotent_and_removes_everything(agent, tmp_path):
    spec = make_spec()
    iid = spec["instance_id"]
    agent.put(f"/v1/instances/{iid}", json=spec)
    wait_for(lambda: _power(agent, iid) == "running")
    assert (tmp_path / "instances" / iid).is_dir()
    r = agent.delete(f"/v1/instances/{iid}")
    assert r.status_code == 204
    assert iid not in agent.hv.domains
    assert not (tmp_path / "instances" / iid).exists()
    assert not (tmp_path / "agent-state" / "specs" / f"{iid}.json").exists()
    assert agent.get(f"/v1/instances/{iid}").status_code == 404
    assert agent.delete(f"/v1/instances/{iid}").status_code == 204
    never = make_spec(7)["instance_id"]
    assert agent.delete(f"/v1/instances/{never}").status_code == 204


def test_a_late_put_cannot_resurrect_a_deleted_instance(agent):
    spec = make_spec(generation=2)
    iid = spec["instance_id"]
    agent.put(f"/v1/instances/{iid}", json=spec)
    agent.delete(f"/v1/instances/{iid}")
    r = agent.put(f"/v1/instances/{iid}", json=make_spec(generation=2))
    assert r.status_code == 409 and r.json()["error"]["code"] == "StaleGeneration"
    time.sleep(0.2)
    assert iid not in agent.hv.domains


def test_delete_failure_is_retryable_and_the_sweep_finishes_it(agent):
    from agent.drivers.base import DriverError
    spec = make_spec()
    iid = spec["instance_id"]
    agent.put(f"/v1/instances/{iid}", json=spec)
    wait_for(lambda: _power(agent, iid) == "running")
    agent.hv.fail("undefine", iid, DriverError("libvirt went away", code="HypervisorError"))
    r = agent.delete(f"/v1/instances/{iid}")
    assert r.status_code == 503
    assert r.json()["error"] == {"code": "HypervisorError", "retryable": True,
                                 "message": r.json()["error"]["message"]}
    wait_for(lambda: iid not in agent.hv.domains)  # the orphan sweep retried
    assert agent.get(f"/v1/instances/{iid}").status_code == 404


def test_console_output_and_tail(agent):
    spec = make_spec()
    iid = spec["instance_id"]
    agent.put(f"/v1/instances/{iid}", json=spec)
    wait_for(lambda: _power(agent, iid) == "running")
    agent.hv.write_console(iid, "hello from ttyS0")
    agent.hv.write_console(iid, "last line \xe9")
    out = agent.get(f"/v1/instances/{iid}/console").json()
    assert out["instance_id"] == iid
    assert out["output"] == "hello from ttyS0\nlast line \xe9\n"
    tail = agent.get(f"/v1/instances/{iid}/console", params={"tail_bytes": 5}).json()["output"]
    assert tail == "e \xe9\n"  # the last 5 bytes: "e", " ", two bytes of "\xe9", "\n"
    assert agent.get(f"/v1/instances/{iid}/console",
                     params={"tail_bytes": -1}).status_code == 400
