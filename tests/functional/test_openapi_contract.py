"""The OpenAPI document is the contract: schemathesis fuzzes every operation of the in-process
controller with valid and invalid requests (as the admin, or the agent on the agent's
operations; then a few as an ordinary account and with a wrong key), and each answer must be no
server error, have a status the operation declares, a body matching the schema declared for that
status, and the declared content type.

Bounded (about 20 s of CPU): a few examples per operation, derandomized so a failure reproduces,
no example database. The error declarations themselves are checked directly too (fast)."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (content_type_conformance,
                                               response_schema_conformance,
                                               status_code_conformance)

from tests.functional.fake_agent import AGENT_TOKEN, Cloud

CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance,
          content_type_conformance]
AGENT_OPERATIONS = {("POST", "/v1/agent/heartbeat"), ("GET", "/v1/images/{image_id}/file")}
ERROR_REF = "#/components/schemas/ErrorResponse"


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    # A storage URL (never reached: no reconciler runs here) so volume creation is accepted
    # instead of answering 503 StorageUnavailable, which the server-error check would flag.
    c = Cloud(tmp_path_factory.mktemp("openapi"), storage_url="unix:/nonexistent")
    c.image()
    c.add_host("host-1")
    yield c
    c.close()


#: Examples per operation: valid and invalid requests as the admin (the agent on the agent's
#: operations), and a few valid ones as an ordinary account (403s, other accounts' 404s) and
#: with a wrong key (401s).
MAX_EXAMPLES = 20
FEW = 3
DERANDOMIZE = True


def _fuzz(operation, mode: GenerationMode, key: str, examples: int) -> str | None:
    """The failures of `examples` requests to `operation`, or None."""
    @settings(max_examples=examples, deadline=None, derandomize=DERANDOMIZE, database=None,
              phases=[Phase.generate, Phase.shrink], print_blob=False,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(mode))
    def call(case):
        case.call_and_validate(headers={"Authorization": f"Bearer {key}"}, checks=CHECKS)

    try:
        call()
    except Unsatisfiable:
        return None  # nothing of the operation can be made invalid
    except (Exception, FailureGroup) as exc:
        return f"{operation.label} ({mode.value}, {examples} examples): {exc}"
    return None


@pytest.mark.slow
def test_every_operation_answers_as_declared(cloud):
    api = schemathesis.openapi.from_asgi("/openapi.json", cloud.app)
    user_key = cloud.account("fuzz-user").headers["authorization"].removeprefix("Bearer ")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 60
    failures = []
    for op in operations:
        agent = (op.method.upper(), op.path) in AGENT_OPERATIONS
        key = AGENT_TOKEN if agent else cloud.admin_key
        runs = [(GenerationMode.POSITIVE, key, MAX_EXAMPLES),
                (GenerationMode.POSITIVE, "not-a-key", 1)]
        if op.query or op.body:  # a string in the path alone cannot be made invalid
            runs.append((GenerationMode.NEGATIVE, key, MAX_EXAMPLES))
        if not agent:
            runs.append((GenerationMode.POSITIVE, user_key, FEW))
        failures += [f for f in (_fuzz(op, *run) for run in runs) if f]
    assert not failures, "\n\n".join(failures)


def test_error_answers_are_declared_with_the_error_body(cloud):
    doc = cloud.admin.get("/openapi.json").json()
    assert "HTTPValidationError" not in str(doc)  # validation errors answer 400, Kumo's body
    error = doc["components"]["schemas"]["ErrorResponse"]
    assert error["required"] == ["error"]
    assert set(doc["components"]["schemas"]["ErrorDetail"]["properties"]) == {
        "code", "message", "retryable"}
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            errors = {s: r for s, r in op["responses"].items() if int(s) >= 400}
            assert {"401", "500"} <= set(errors), (method, path)
            if "{" in path:
                assert "404" in errors, (method, path)
            if method != "get":
                assert "409" in errors, (method, path)
            for status, answer in errors.items():
                assert answer["content"]["application/json"]["schema"] == {"$ref": ERROR_REF}, (
                    method, path, status)
    ops = doc["paths"]
    assert "403" in ops["/v1/accounts"]["post"]["responses"]  # admin only
    assert "403" not in ops["/v1/vpcs"]["post"]["responses"]
    assert "400" not in ops["/v1/account"]["get"]["responses"]  # nothing to be invalid
    assert {"404", "503"} <= set(ops["/v1/instances"]["post"]["responses"])
    assert "503" in ops["/v1/instances/{instance_id}/console"]["get"]["responses"]


def test_validation_errors_answer_400_with_the_error_body(cloud):
    r = cloud.admin.post("/v1/vpcs", json={})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "MissingParameter"
    r = cloud.admin.get("/v1/vpcs", params={"max_results": "x"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "InvalidParameterValue"
