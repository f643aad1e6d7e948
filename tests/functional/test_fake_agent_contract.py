"""The controller's FakeAgent (tests/functional/fake_agent.py) answers what the real agent app
(agent/app.py on fake drivers) answers: the same sequence of instance and network PUTs/DELETEs
is sent to both and every status and error code must match. Before the fake used
agent/contract/generations.py it answered 200 to a changed spec at an accepted generation (the
real agent: 409 IdempotentParameterMismatch) and accepted network documents the real agent
refuses with 400."""
from __future__ import annotations

import json

import httpx
import pytest
from fastapi.testclient import TestClient

from agent.app import create_app
from agent.drivers.fake import FakeDataplane, FakeHypervisor, FakeStorage
from tests.functional.agent_harness import TOKEN, make_spec, settings_for
from tests.functional.fake_agent import FakeAgent
from tests.unit.test_network_firewall_sync import sg_doc
from tests.unit.test_network_service import I1, spec_doc

UNDERLAY = "172.31.0.11"
I = make_spec(1, instance_id=I1, nics=[{"mac": "52:54:00:00:00:01", "bridge": "kb-00002a",
                                          "address": "10.0.1.10/24", "gateway": "10.0.1.1"}])


def _bad_rule(doc: dict) -> dict:
    doc["security_groups"][0]["rules"].append(
        {"rule_id": "sgr-00000000000000009", "direction": "ingress", "protocol": "tcp",
         "from_port": 90, "to_port": 80, "cidr": "0.0.0.0/0"})
    return doc


# (method, path, body): one agent's life as the controller could drive it.
STEPS = [
    ("PUT", f"/v1/instances/{I1}", I),
    ("PUT", f"/v1/instances/{I1}", I),                                   # re-send: no-op
    ("PUT", f"/v1/instances/{I1}", I | {"vcpus": 2}),                    # same gen, changed
    ("PUT", f"/v1/instances/{I1}", I | {"generation": 3}),
    ("PUT", f"/v1/instances/{I1}", I | {"generation": 2}),               # stale
    ("PUT", f"/v1/instances/{I1}", I | {"hostname": "other"}),           # other, gen 1 < 3
    ("PUT", "/v1/instances/i-00000000000000002", I),                     # id != URL
    ("DELETE", f"/v1/instances/{I1}", None),
    ("DELETE", f"/v1/instances/{I1}", None),                             # already gone
    ("PUT", f"/v1/instances/{I1}", I | {"generation": 3}),               # tombstone
    ("PUT", f"/v1/instances/{I1}", I | {"generation": 4}),               # after it: fine
    ("PUT", "/v1/network", spec_doc(2)),
    ("PUT", "/v1/network", spec_doc(2)),                                 # re-send: no-op
    ("PUT", "/v1/network", spec_doc(2, internet=False)),                 # same gen, changed
    ("PUT", "/v1/network", spec_doc(1)),                                 # stale
    ("PUT", "/v1/network", spec_doc(3, cidr="10.0.0.0/30")),             # dataplane refuses
    ("PUT", "/v1/network", spec_doc(3, vni=0)),                          # schema refuses
    ("PUT", "/v1/network", _bad_rule(sg_doc(3))),                        # firewall refuses
    ("PUT", "/v1/network", sg_doc(3) | {"security_groups": []}),         # unknown group
    ("PUT", "/v1/network", sg_doc(3)),
    ("GET", "/v1/network", None),
]


def _outcome(status: int, body: bytes) -> tuple[int, str | None, int | None]:
    doc = json.loads(body) if body else None
    code = doc["error"]["code"] if status >= 400 else None
    gen = doc.get("generation") if isinstance(doc, dict) and status < 300 else None
    return status, code, gen


def _real(tmp_path) -> list[tuple]:
    settings = settings_for(tmp_path, underlay_ip=UNDERLAY)
    app = create_app(settings, FakeHypervisor(), FakeStorage(tmp_path), dataplane=FakeDataplane())
    out = []
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        for method, path, body in STEPS:
            r = client.request(method, path, json=body)
            out.append(_outcome(r.status_code, r.content))
    return out


def _fake() -> list[tuple]:
    agent = FakeAgent("h1", token=TOKEN, underlay_ip=UNDERLAY)
    out = []
    for method, path, body in STEPS:
        req = httpx.Request(method, agent.url + path, json=body,
                            headers={"Authorization": f"Bearer {TOKEN}"})
        r = agent.handle(req)
        out.append(_outcome(r.status_code, r.read()))
    return out


def test_fake_agent_answers_what_the_agent_answers(tmp_path):
    real, fake = _real(tmp_path), _fake()
    assert real[0] == (200, None, 1) and real[11] == (200, None, 2), real  # valid documents
    for step, r, f in zip(STEPS, real, fake):
        assert f == r, f"{step[0]} {step[1]}: real agent {r}, fake {f}"
    # The sequence exercises what it claims to (so the comparison cannot pass vacuously).
    codes = [c for _, c, _ in real]
    for code in ("StaleGeneration", "IdempotentParameterMismatch", "InvalidParameterValue",
                 "InvalidPermission.Malformed", "InvalidGroup.NotFound"):
        assert code in codes, code


@pytest.mark.parametrize("kind", ["instance", "network"])
def test_fake_agent_refuses_a_changed_document_at_the_same_generation(kind):
    agent = FakeAgent("h1", underlay_ip=UNDERLAY)
    path, doc, changed = ((f"/v1/instances/{I1}", I, I | {"memory_mib": 256})
                          if kind == "instance" else
                          ("/v1/network", spec_doc(1), spec_doc(1, internet=False)))

    def put(body):
        return agent.handle(httpx.Request("PUT", agent.url + path, json=body,
                                          headers={"Authorization": f"Bearer {agent.token}"}))

    assert put(doc).status_code == 200
    r = put(changed)
    assert r.status_code == 409
    assert json.loads(r.read())["error"]["code"] == "IdempotentParameterMismatch"
    kept = agent.specs[I1] if kind == "instance" else agent.network
    assert kept.model_dump(mode="json") == type(kept).model_validate(doc).model_dump(mode="json")
